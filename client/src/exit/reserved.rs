//! Addresses that are not the public Internet: an exit reaches them only
//! through a rule that names them (see [`super::policy`]).
//!
//! A mixnet user must not be able to turn an exit on the network it stands
//! in — its loopback services, its LAN, a cloud metadata service — so `*`
//! and name rules never reach these, in the spirit of Tor's
//! `ExitPolicyRejectPrivate`:
//!
//! | block | why |
//! |---|---|
//! | `0.0.0.0/8` | "this network"; Linux connects `0.0.0.0` to the host itself |
//! | `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` | private (RFC 1918) |
//! | `100.64.0.0/10` | shared address space (carrier-grade NAT, RFC 6598) |
//! | `127.0.0.0/8` | loopback |
//! | `169.254.0.0/16` | link-local, where cloud metadata services answer |
//! | `192.0.0.0/24` | IETF protocol assignments (DS-Lite, NAT64 discovery) |
//! | `198.18.0.0/15` | benchmarking; used as internal lab and proxy ranges |
//! | `224.0.0.0/4`, `240.0.0.0/4` | multicast; reserved and broadcast |
//! | `::/8` | unspecified, loopback, IPv4-compatible and the rest of IETF-reserved space (NAT64 excepted, below) |
//! | `100::/64` | discard-only |
//! | `fc00::/7` | unique-local |
//! | `fe80::/10`, `fec0::/10` | link-local; the deprecated site-local |
//! | `ff00::/8` | multicast |
//!
//! IPv6 forms that carry an IPv4 address are judged by that address:
//! IPv4-mapped `::ffff:a.b.c.d` *is* the IPv4 address (a dual-stack socket
//! connects there), and the NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`)
//! forms of a reserved IPv4 address are reserved. Documentation ranges
//! (`192.0.2.0/24`, `2001:db8::/32`, ...) are left alone: nothing lives
//! there to protect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address with a prefix length: one address (`/32`, `/128`) or a
/// network. IPv4-mapped IPv6 forms are stored as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    ip: IpAddr,
    len: u8,
}

impl Net {
    /// `None` if `len` is longer than the address.
    pub fn new(ip: IpAddr, len: u8) -> Option<Net> {
        match ip {
            IpAddr::V4(_) if len > 32 => None,
            IpAddr::V6(_) if len > 128 => None,
            // `[::ffff:10.0.0.0]/104` is `10.0.0.0/8`; a shorter prefix
            // reaches beyond the mapped block and stays IPv6.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if len >= 96 => Some(Net {
                    ip: IpAddr::V4(v4),
                    len: len - 96,
                }),
                _ => Some(Net { ip, len }),
            },
            IpAddr::V4(_) => Some(Net { ip, len }),
        }
    }

    /// The single address `ip`.
    pub fn host(ip: IpAddr) -> Net {
        let ip = canonical(ip);
        let len = if ip.is_ipv4() { 32 } else { 128 };
        Net { ip, len }
    }

    /// Does the network hold `ip` (compared in canonical form)?
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (canonical(ip), self.ip) {
            (IpAddr::V4(a), IpAddr::V4(n)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(a) & mask == u32::from(n) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(n)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(n) & mask
            }
            _ => false,
        }
    }

    /// Is every address of `self` in `outer`? This is what "a rule names a
    /// reserved network explicitly" means: `10.0.0.0/8` and `10.1.2.3` lie
    /// within `10.0.0.0/8`; `0.0.0.0/0` and `10.0.0.0/7` do not.
    pub fn within(&self, outer: &Net) -> bool {
        self.len >= outer.len && outer.contains(self.ip)
    }
}

/// The address a connection to `ip` really goes to: IPv4-mapped IPv6 is
/// the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

const V4: [(Ipv4Addr, u8); 11] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    // Reserved, and the limited broadcast 255.255.255.255.
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

const V6: [(Ipv6Addr, u8); 6] = [
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 8),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

const NAT64: Net = Net {
    ip: IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)),
    len: 96,
};
const SIX_TO_FOUR: Net = Net {
    ip: IpAddr::V6(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0)),
    len: 16,
};

fn v4_block(ip: Ipv4Addr) -> Option<Net> {
    V4.iter()
        .map(|&(n, len)| Net {
            ip: IpAddr::V4(n),
            len,
        })
        .find(|n| n.contains(IpAddr::V4(ip)))
}

/// The IPv6 form of a reserved IPv4 block inside a prefix that embeds an
/// IPv4 address at bit `at` (`64:ff9b::10.0.0.0/104` for `10.0.0.0/8`).
fn embedded(prefix: Net, at: u8, v6: Ipv6Addr) -> Option<Net> {
    let shift = 128 - u32::from(at) - 32;
    let v4 = Ipv4Addr::from(((u128::from(v6) >> shift) & u128::from(u32::MAX)) as u32);
    let block = v4_block(v4)?;
    let IpAddr::V4(b) = block.ip else {
        return None;
    };
    let IpAddr::V6(p) = prefix.ip else {
        return None;
    };
    let ip = u128::from(p) | (u128::from(u32::from(b)) << shift);
    Some(Net {
        ip: IpAddr::V6(Ipv6Addr::from(ip)),
        len: at + block.len,
    })
}

/// The reserved block holding `ip`, if any (the most specific form for
/// embedded IPv4, so that a rule naming `64:ff9b::10.0.0.0/104` counts as
/// naming it).
pub fn block(ip: IpAddr) -> Option<Net> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_block(v4),
        IpAddr::V6(v6) => {
            let ip = IpAddr::V6(v6);
            if NAT64.contains(ip) {
                embedded(NAT64, 96, v6)
            } else if SIX_TO_FOUR.contains(ip) {
                embedded(SIX_TO_FOUR, 16, v6)
            } else {
                V6.iter()
                    .map(|&(n, len)| Net {
                        ip: IpAddr::V6(n),
                        len,
                    })
                    .find(|n| n.contains(ip))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserved_and_public() {
        for r in [
            "0.0.0.0",
            "0.1.2.3",
            "10.9.8.7",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "100::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(block(ip(r)).is_some(), "{r} must be reserved");
        }
        for p in [
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.169.0.0",
            "198.20.0.0",
            "223.255.255.255",
            "::ffff:1.1.1.1",
            "64:ff9b::1.1.1.1",
            "2002:101:101::1",
            "2606:4700:4700::1111",
            "2a00:1450::1",
        ] {
            assert_eq!(block(ip(p)), None, "{p} is public");
        }
    }

    #[test]
    fn nets_and_mapped_forms() {
        let ten = Net::new(ip("10.0.0.0"), 8).unwrap();
        assert!(Net::new(ip("10.1.2.3"), 32).unwrap().within(&ten));
        assert!(!Net::new(ip("10.0.0.0"), 7).unwrap().within(&ten));
        assert!(!Net::new(ip("0.0.0.0"), 0).unwrap().within(&ten));
        // Mapped rule forms are IPv4 rules.
        assert_eq!(Net::new(ip("::ffff:10.0.0.0"), 104), Some(ten));
        assert_eq!(
            Net::new(ip("::ffff:127.0.0.1"), 128),
            Some(Net::host(ip("127.0.0.1")))
        );
        assert!(ten.contains(ip("::ffff:10.2.3.4")));
        assert!(Net::new(ip("1.2.3.4"), 33).is_none());
        assert!(Net::new(ip("::"), 129).is_none());
        // The embedded block is the narrow one.
        let b = block(ip("64:ff9b::10.1.1.1")).unwrap();
        assert_eq!(b, Net::new(ip("64:ff9b::10.0.0.0"), 104).unwrap());
        let b = block(ip("2002:7f00:1::5")).unwrap();
        assert_eq!(b, Net::new(ip("2002:7f00::"), 24).unwrap());
        assert_eq!(canonical(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
    }
}
