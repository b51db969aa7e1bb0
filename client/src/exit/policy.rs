//! The exit policy: which targets an exit connects to.
//!
//! A rule is `HOST:PORTS`:
//!
//! * `HOST` — `*` (anything), `*.example.org` (strict subdomains),
//!   `example.org` (that name, case-insensitive), an IP address
//!   (`127.0.0.1`, `[::1]`) or a network (`10.0.0.0/8`, `[fd00::]/8`).
//! * `PORTS` — `*`, `443`, `8000-8100`, or a comma list of those.
//!
//! A target is allowed if any rule matches. Name rules match the name the
//! client asked for; address and network rules match an address the client
//! asked for, and the addresses a name resolves to (every one of them must
//! be allowed by some rule, so a name cannot smuggle a connection to an
//! address the operator did not allow). `*` allows whatever a name resolves
//! to, local addresses included — say `*:443` only on an exit whose network
//! has nothing private to reach.

use std::net::IpAddr;
use std::str::FromStr;

use super::super::stream::Target;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Suffix(String),
    Name(String),
    Net(IpAddr, u8),
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

fn parse_net(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    let ip = IpAddr::from_str(ip).ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((ip, len))
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
        } else if let Some((ip, len)) = parse_net(host) {
            Host::Net(ip, len)
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

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
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

    fn matches_ip(&self, ip: IpAddr, port: u16) -> bool {
        self.port_ok(port)
            && match &self.host {
                Host::Any => true,
                Host::Net(n, len) => in_net(ip, *n, *len),
                _ => false,
            }
    }
}

/// An allow-list of rules. Empty allows nothing.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// Before resolving: may the client ask for `target` at all?
    pub fn allows_target(&self, target: &Target) -> bool {
        match target {
            Target::Ip(a) => self.rules.iter().any(|r| r.matches_ip(a.ip(), a.port())),
            Target::Name(n, p) => self.rules.iter().any(|r| r.matches_name(n, *p)),
        }
    }

    /// After resolving `name`: may the exit connect to its address `ip`?
    /// Yes if an address rule (or `*`) matches `ip`, or a name rule allowed
    /// the name (the operator trusts that name's DNS).
    pub fn allows_resolved(&self, name: &str, ip: IpAddr, port: u16) -> bool {
        self.rules.iter().any(|r| {
            r.matches_ip(ip, port)
                || (matches!(r.host, Host::Name(_) | Host::Suffix(_)) && r.matches_name(name, port))
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
        let p = policy(&[
            "*.example.org:443",
            "example.net:80,8000-8100",
            "127.0.0.1:*",
            "[::1]:22",
            "10.0.0.0/8:80",
        ]);
        assert!(p.allows_target(&name("www.example.org", 443)));
        assert!(p.allows_target(&name("WWW.Example.ORG.", 443)));
        assert!(!p.allows_target(&name("example.org", 443)));
        assert!(!p.allows_target(&name("www.example.org", 80)));
        assert!(p.allows_target(&name("example.net", 8050)));
        assert!(!p.allows_target(&name("example.net", 8101)));
        assert!(p.allows_target(&Target::Ip("127.0.0.1:9".parse().unwrap())));
        assert!(p.allows_target(&Target::Ip("[::1]:22".parse().unwrap())));
        assert!(!p.allows_target(&Target::Ip("[::1]:23".parse().unwrap())));
        assert!(p.allows_target(&Target::Ip("10.200.0.1:80".parse().unwrap())));
        assert!(!p.allows_target(&Target::Ip("11.0.0.1:80".parse().unwrap())));
        // Names do not match address rules.
        assert!(!p.allows_target(&name("localhost", 80)));
    }

    #[test]
    fn resolved_addresses() {
        let p = policy(&["localhost:*"]);
        assert!(p.allows_resolved("localhost", "127.0.0.1".parse().unwrap(), 80));
        let p = policy(&["10.0.0.0/8:*"]);
        assert!(!p.allows_resolved("evil.example", "127.0.0.1".parse().unwrap(), 80));
        assert!(p.allows_resolved("ok.example", "10.1.1.1".parse().unwrap(), 80));
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
