//! The exit policy: which targets an exit connects to.
//!
//! A rule is `HOST:PORTS`:
//!
//! * `HOST` — `*` (anything public), `*.example.org` (strict subdomains),
//!   `example.org` (that name, case-insensitive), an IP address
//!   (`127.0.0.1`, `[::1]`) or a network (`10.0.0.0/8`, `[fd00::]/8`).
//! * `PORTS` — `*`, `443`, `8000-8100`, or a comma list of those.
//!
//! A target is allowed if any rule matches. Name rules match the name the
//! client asked for; `*` and address rules match the address the client
//! asked for, or the addresses a name resolves to. The exit connects only
//! to a resolved address that some rule allows, so a name cannot smuggle a
//! connection to an address the operator did not allow.
//!
//! Reserved addresses — loopback, private, shared, link-local,
//! unique-local, multicast, unspecified ([`super::reserved`] lists them) —
//! and the exit host's own addresses are reached only by an address rule
//! that lies within them (`127.0.0.1:8000`, `10.0.0.0/8:*`): never by `*`,
//! a name rule, or a wide network such as `0.0.0.0/0`. A name that is an IP
//! literal (`"127.0.0.1"`, `"[::1]"`) is that address ([`normalize`]).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::reserved::{self, Net};
use crate::stream::Target;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Suffix(String),
    Name(String),
    Net(Net),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    host: Host,
    ports: Vec<(u16, u16)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid exit rule {rule:?}: {why} (expected HOST:PORTS, e.g. '*.example.org:443', '10.0.0.0/8:*', '[::1]:80-90')"
)]
pub struct RuleError {
    rule: String,
    why: &'static str,
}

fn parse_ports(s: &str) -> Result<Vec<(u16, u16)>, &'static str> {
    if s == "*" {
        return Ok(vec![(0, u16::MAX)]);
    }
    s.split(',')
        .map(|p| match p.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<u16>(), b.parse::<u16>());
                match (a, b) {
                    (Ok(a), Ok(b)) if a <= b => Ok((a, b)),
                    _ => Err("bad port range"),
                }
            }
            None => p.parse::<u16>().map(|n| (n, n)).map_err(|_| "bad port"),
        })
        .collect()
}

/// An IP address, bare or in brackets (`::1`, `[::1]`, `127.0.0.1`).
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(s);
    IpAddr::from_str(s).ok()
}

fn parse_net(s: &str) -> Option<Net> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let ip = parse_ip(ip)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    Net::new(ip, len.unwrap_or(max))
}

impl FromStr for Rule {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let err = |why| RuleError {
            rule: s.to_owned(),
            why,
        };
        let (host, ports) = s.rsplit_once(':').ok_or_else(|| err("no ':PORTS'"))?;
        let ports = parse_ports(ports).map_err(err)?;
        let host = if host == "*" {
            Host::Any
        } else if let Some(net) = parse_net(host) {
            Host::Net(net)
        } else if let Some(sfx) = host.strip_prefix("*.") {
            if !crate::stream::frame::valid_name(sfx) || sfx.contains('*') {
                return Err(err("bad domain"));
            }
            Host::Suffix(sfx.to_ascii_lowercase())
        } else if crate::stream::frame::valid_name(host) && !host.contains(['*', '[', ']', '/']) {
            Host::Name(host.to_ascii_lowercase())
        } else {
            return Err(err("bad host"));
        };
        Ok(Rule { host, ports })
    }
}

impl Rule {
    fn port_ok(&self, port: u16) -> bool {
        self.ports.iter().any(|(a, b)| (*a..=*b).contains(&port))
    }

    fn matches_name(&self, name: &str, port: u16) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.port_ok(port)
            && match &self.host {
                Host::Any => true,
                Host::Name(n) => *n == name,
                Host::Suffix(s) => name.ends_with(&format!(".{s}")),
                Host::Net(..) => false,
            }
    }
}

/// A target with an IP-literal name turned into that address, and an
/// IPv4-mapped IPv6 address into IPv4: the form the policy judges and the
/// exit connects to. Browsers send `http://127.0.0.1:8000/` as the name
/// `"127.0.0.1"`; it must fare exactly as the address does.
pub fn normalize(target: Target) -> Target {
    match target {
        Target::Name(n, port) => match parse_ip(&n) {
            Some(ip) => Target::Ip(SocketAddr::new(reserved::canonical(ip), port)),
            None => Target::Name(n, port),
        },
        Target::Ip(a) => Target::Ip(SocketAddr::new(reserved::canonical(a.ip()), a.port())),
    }
}

/// An allow-list of rules. Empty allows nothing.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    /// The exit host's own addresses, reserved like loopback.
    own: Vec<IpAddr>,
}

impl Policy {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            own: Vec::new(),
        }
    }

    /// The same rules, with `own` as the exit host's addresses.
    pub fn with_own_addresses(mut self, own: impl IntoIterator<Item = IpAddr>) -> Self {
        self.own = own.into_iter().map(reserved::canonical).collect();
        self.own.sort_unstable();
        self.own.dedup();
        self
    }

    pub fn own_addresses(&self) -> &[IpAddr] {
        &self.own
    }

    /// Is `ip` reserved or one of the exit's own (reachable only through a
    /// rule that names it)?
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        let ip = reserved::canonical(ip);
        reserved::block(ip).is_some() || self.own.contains(&ip)
    }

    /// Before resolving: may the client ask for `target` at all? An address
    /// is judged in full here; a name passes if a name rule or `*` allows it,
    /// or an address rule might allow what it resolves to.
    pub fn allows_target(&self, target: &Target) -> bool {
        match normalize(target.clone()) {
            Target::Ip(a) => self.allows_address(None, a.ip(), a.port()),
            Target::Name(n, p) => self.rules.iter().any(|r| match r.host {
                Host::Net(_) => r.port_ok(p),
                _ => r.matches_name(&n, p),
            }),
        }
    }

    /// Does a name rule or `*` allow the name itself? (If not, only an
    /// address rule could, so a name that does not resolve is refused
    /// rather than unreachable.)
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        self.rules.iter().any(|r| r.matches_name(name, port))
    }

    /// After resolving `name`: may the exit connect to its address `ip`?
    pub fn allows_resolved(&self, name: &str, ip: IpAddr, port: u16) -> bool {
        self.allows_address(Some(name), ip, port)
    }

    /// `*`, or a name rule for `name` (the operator trusts that name's
    /// DNS), allows a public address; an address rule allows what it holds,
    /// and a reserved or own address only if the rule lies within its block.
    fn allows_address(&self, name: Option<&str>, ip: IpAddr, port: u16) -> bool {
        let ip = reserved::canonical(ip);
        let block = reserved::block(ip);
        let own = self.own.contains(&ip);
        let public = block.is_none() && !own;
        let named = |net: &Net| {
            block.is_some_and(|b| net.within(&b)) || (own && net.within(&Net::host(ip)))
        };
        self.rules.iter().any(|r| {
            r.port_ok(port)
                && match &r.host {
                    Host::Net(net) => net.contains(ip) && (public || named(net)),
                    Host::Any => public,
                    Host::Name(_) | Host::Suffix(_) => {
                        public && name.is_some_and(|n| r.matches_name(n, port))
                    }
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> Policy {
        Policy::new(rules.iter().map(|r| r.parse().unwrap()).collect())
    }

    fn name(n: &str, p: u16) -> Target {
        Target::Name(n.into(), p)
    }

    #[test]
    fn rules_parse_and_match() {
        let names = policy(&["*.example.org:443", "example.net:80,8000-8100"]);
        assert!(names.allows_target(&name("www.example.org", 443)));
        assert!(names.allows_target(&name("WWW.Example.ORG.", 443)));
        assert!(!names.allows_target(&name("example.org", 443)));
        assert!(!names.allows_target(&name("www.example.org", 80)));
        assert!(names.allows_target(&name("example.net", 8050)));
        assert!(!names.allows_target(&name("example.net", 8101)));
        // Name rules do not match addresses.
        assert!(!names.allows_target(&Target::Ip("1.2.3.4:443".parse().unwrap())));

        let addrs = policy(&["127.0.0.1:*", "[::1]:22", "10.0.0.0/8:80", "1.2.3.0/24:443"]);
        assert!(addrs.allows_target(&Target::Ip("127.0.0.1:9".parse().unwrap())));
        assert!(addrs.allows_target(&Target::Ip("[::1]:22".parse().unwrap())));
        assert!(!addrs.allows_target(&Target::Ip("[::1]:23".parse().unwrap())));
        assert!(addrs.allows_target(&Target::Ip("10.200.0.1:80".parse().unwrap())));
        assert!(!addrs.allows_target(&Target::Ip("11.0.0.1:80".parse().unwrap())));
        assert!(addrs.allows_target(&Target::Ip("1.2.3.4:443".parse().unwrap())));
        assert!(!addrs.allows_target(&Target::Ip("1.2.4.4:443".parse().unwrap())));
        // A name passes on ports an address rule has, to be resolved and
        // judged by its addresses.
        let p = policy(&["10.0.0.0/8:80"]);
        assert!(p.allows_target(&name("intranet.example", 80)));
        assert!(!p.allows_target(&name("intranet.example", 81)));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addr(s: &str) -> Target {
        Target::Ip(s.parse().unwrap())
    }

    #[test]
    fn resolved_addresses() {
        let p = policy(&["10.0.0.0/8:*"]);
        assert!(!p.allows_resolved("evil.example", ip("127.0.0.1"), 80));
        assert!(p.allows_resolved("ok.example", ip("10.1.1.1"), 80));
        // A name rule trusts the name's DNS for public addresses only.
        let p = policy(&["example.org:443"]);
        assert!(p.allows_resolved("example.org", ip("93.184.215.14"), 443));
        assert!(!p.allows_resolved("example.org", ip("93.184.215.14"), 80));
        assert!(!p.allows_resolved("other.org", ip("93.184.215.14"), 443));
    }

    /// The test: a name resolving to 127.0.0.1 is refused under
    /// `*:80` and allowed under an explicit `127.0.0.0/8:80`.
    #[test]
    fn a_name_resolving_to_loopback() {
        let any = policy(&["*:80"]);
        assert!(any.allows_target(&name("rebind.example", 80)));
        assert!(!any.allows_resolved("rebind.example", ip("127.0.0.1"), 80));
        assert!(any.allows_resolved("rebind.example", ip("1.2.3.4"), 80));
        let lo = policy(&["127.0.0.0/8:80"]);
        assert!(lo.allows_target(&name("rebind.example", 80)));
        assert!(lo.allows_resolved("rebind.example", ip("127.0.0.1"), 80));
        assert!(!lo.allows_resolved("rebind.example", ip("127.0.0.1"), 81));
        assert!(!lo.allows_resolved("rebind.example", ip("1.2.3.4"), 80));
        let both = policy(&["*:80", "127.0.0.0/8:80"]);
        assert!(both.allows_resolved("rebind.example", ip("127.0.0.1"), 80));
        // A name rule for the name does not reach loopback either.
        let named = policy(&["localhost:*"]);
        assert!(named.allows_target(&name("localhost", 80)));
        assert!(!named.allows_resolved("localhost", ip("127.0.0.1"), 80));
        assert!(!named.allows_resolved("localhost", ip("::1"), 80));
    }

    #[test]
    fn reserved_addresses_need_a_rule_that_names_them() {
        let wide = policy(&[
            "*:*",
            "*.example.org:*",
            "0.0.0.0/0:*",
            "[::]/0:*",
            "10.0.0.0/7:*",
            "[::ffff:0:0]/96:*",
        ]);
        for r in [
            "127.0.0.1",
            "0.0.0.0",
            "10.0.0.1",
            "100.64.1.1",
            "169.254.169.254",
            "172.20.0.1",
            "192.168.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:192.168.0.1",
            "64:ff9b::127.0.0.1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
        ] {
            assert!(!wide.allows_resolved("x.example.org", ip(r), 80), "{r}");
            let t = Target::Ip(SocketAddr::new(ip(r), 80));
            assert!(!wide.allows_target(&t), "{r}");
            assert!(wide.is_reserved(ip(r)), "{r}");
        }
        for p in ["1.1.1.1", "::ffff:1.1.1.1", "2606:4700::1111"] {
            assert!(wide.allows_resolved("x.example.org", ip(p), 80), "{p}");
            assert!(!wide.is_reserved(ip(p)), "{p}");
        }
        // Rules within the block reach it, in any of the address's forms.
        let p = policy(&[
            "127.0.0.1:*",
            "192.168.0.0/16:80",
            "[fd00::]/8:443",
            "[::ffff:169.254.169.254]:80",
        ]);
        assert!(p.allows_target(&addr("127.0.0.1:9")));
        assert!(p.allows_target(&addr("[::ffff:127.0.0.1]:9")));
        assert!(!p.allows_target(&addr("127.0.0.2:9")));
        assert!(p.allows_target(&addr("192.168.7.7:80")));
        assert!(p.allows_target(&addr("[fd00::7]:443")));
        assert!(!p.allows_target(&addr("[fc00::7]:443")));
        assert!(p.allows_target(&addr("169.254.169.254:80")));
    }

    #[test]
    fn the_exits_own_addresses() {
        let p = policy(&["*:*", "203.0.113.0/24:*", "198.51.100.7:22"]).with_own_addresses([
            ip("203.0.113.5"),
            ip("198.51.100.7"),
            ip("::ffff:8.8.4.4"),
        ]);
        assert!(!p.allows_target(&addr("203.0.113.5:80")));
        assert!(p.allows_target(&addr("203.0.113.6:80")));
        assert!(!p.allows_resolved("me.example", ip("203.0.113.5"), 443));
        assert!(!p.allows_target(&addr("8.8.4.4:53")));
        // Named exactly: allowed, on the named port only.
        assert!(p.allows_target(&addr("198.51.100.7:22")));
        assert!(!p.allows_target(&addr("198.51.100.7:80")));
        assert_eq!(p.own_addresses().len(), 3);
    }

    #[test]
    fn ip_literal_names_are_addresses() {
        // The bug the issue names: "127.0.0.1" as a name was refused under
        // `127.0.0.1:*` while the address was allowed.
        let p = policy(&["127.0.0.1:*", "[::1]:22"]);
        assert!(p.allows_target(&name("127.0.0.1", 8000)));
        assert!(p.allows_target(&name("[::1]", 22)));
        assert!(p.allows_target(&name("::1", 22)));
        assert!(!p.allows_target(&name("::1", 23)));
        // ... and `*` refuses the literal as it refuses the address.
        let any = policy(&["*:*"]);
        assert!(!any.allows_target(&name("127.0.0.1", 80)));
        assert!(!any.allows_target(&name("::ffff:10.0.0.1", 80)));
        assert!(any.allows_target(&name("1.1.1.1", 80)));
        assert_eq!(normalize(name("127.0.0.1", 80)), addr("127.0.0.1:80"));
        assert_eq!(normalize(name("[::1]", 80)), addr("[::1]:80"));
        assert_eq!(normalize(addr("[::ffff:10.0.0.1]:80")), addr("10.0.0.1:80"));
        // Not literals: left as names for the resolver (whose answers are
        // checked like any other).
        for n in ["127.1", "2130706433", "localhost", "127.0.0.1.", "[::1"] {
            assert_eq!(normalize(name(n, 80)), name(n, 80), "{n}");
        }
    }

    #[test]
    fn names_under_address_rules() {
        let p = policy(&["127.0.0.1:*", "*.example.org:443"]);
        // An address rule lets a name be resolved; its address decides.
        assert!(p.allows_target(&name("localhost", 80)));
        assert!(!p.allows_name("localhost", 80));
        assert!(p.allows_name("a.example.org", 443));
        let p = policy(&["example.net:80"]);
        assert!(!p.allows_target(&name("example.org", 80)));
    }

    #[test]
    fn bad_rules_are_refused() {
        for r in [
            "",
            "host",
            "*.:80",
            "a b:80",
            "1.2.3.4/33:80",
            "x:99999",
            "x:9-1",
            "*.*.org:1",
        ] {
            assert!(r.parse::<Rule>().is_err(), "{r}");
        }
        assert!(!Policy::default().allows_target(&name("a", 1)));
    }
}
