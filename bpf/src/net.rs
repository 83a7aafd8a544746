//! Addresses as the classifier's maps hold them: IPv6, or IPv4 as an IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`), so one LPM trie and one hash map serve both families.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A CIDR block (`10.244.2.0/24`, `fd00:244:2::/64`). Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CIDR `{value}`: {reason}")]
pub struct CidrError {
    /// The text or value that was given.
    pub value: String,
    /// What was expected.
    pub reason: &'static str,
}

impl Cidr {
    /// A CIDR from an address and a prefix length.
    ///
    /// # Errors
    /// When the prefix is longer than the address (32 for IPv4, 128 for IPv6) or host bits are
    /// set.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let err = |reason| CidrError {
            value: format!("{addr}/{prefix_len}"),
            reason,
        };
        if prefix_len > max {
            return Err(err("prefix length must be at most 32 (IPv4) or 128 (IPv6)"));
        }
        let c = Self { addr, prefix_len };
        let bits = u128::from_be_bytes(c.mapped_addr());
        let mapped_len = c.mapped_prefix_len();
        let host_mask = if mapped_len == 128 {
            0
        } else {
            u128::MAX >> mapped_len
        };
        if bits & host_mask != 0 {
            return Err(err("host bits must be zero (give the network address)"));
        }
        Ok(c)
    }

    /// A single address as a /32 or /128.
    #[must_use]
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    /// The network address.
    #[must_use]
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length (of the address family).
    #[must_use]
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The network address as the maps hold it (IPv4-mapped for IPv4).
    #[must_use]
    pub fn mapped_addr(&self) -> [u8; 16] {
        mapped(self.addr)
    }

    /// The prefix length over the 128-bit mapped address (+96 for IPv4).
    #[must_use]
    pub fn mapped_prefix_len(&self) -> u32 {
        u32::from(self.prefix_len) + if self.addr.is_ipv4() { 96 } else { 0 }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrError {
            value: s.to_owned(),
            reason,
        };
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/PREFIX-LENGTH"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| err("the address is not an IPv4 or IPv6 address"))?;
        let prefix_len: u8 = l
            .parse()
            .map_err(|_| err("the prefix length is not a number 0..=128"))?;
        Self::new(addr, prefix_len).map_err(|e| CidrError {
            value: s.to_owned(),
            reason: e.reason,
        })
    }
}

/// `addr` as the maps hold it: IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
#[must_use]
pub fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`mapped`]: an IPv4-mapped address becomes IPv4.
#[must_use]
pub fn unmapped(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// `Ipv4Addr` convenience for tests and benches: the `i`-th /28 inside 10.0.0.0/8.
#[must_use]
pub fn nth_v4_slash28(i: u32) -> Cidr {
    let base = 0x0a00_0000u32 | ((i & 0x000f_ffff) << 4);
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::from(base)),
        prefix_len: 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6_and_maps_them() {
        let c: Cidr = "10.244.2.0/24".parse().unwrap();
        assert_eq!(c.mapped_prefix_len(), 120);
        assert_eq!(
            c.mapped_addr(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 244, 2, 0]
        );
        assert_eq!(c.to_string(), "10.244.2.0/24");
        let c: Cidr = "fd00:244:2::/64".parse().unwrap();
        assert_eq!(c.mapped_prefix_len(), 64);
        assert_eq!(
            unmapped(mapped("10.1.2.3".parse().unwrap())).to_string(),
            "10.1.2.3"
        );
        assert_eq!(
            unmapped(mapped("fd00::1".parse().unwrap())).to_string(),
            "fd00::1"
        );
    }

    #[test]
    fn refuses_bad_cidrs_naming_the_value() {
        for (s, want) in [
            ("10.244.2.1/24", "host bits"),
            ("10.244.2.0/33", "at most 32"),
            ("10.244.2.0", "ADDRESS/PREFIX-LENGTH"),
            ("nonsense/8", "not an IPv4 or IPv6"),
            ("fd00::/x", "not a number"),
        ] {
            let e = s.parse::<Cidr>().unwrap_err();
            assert!(e.to_string().contains(s), "{e}");
            assert!(e.reason.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn nth_slash28_is_valid_and_distinct() {
        assert_eq!(nth_v4_slash28(0).to_string(), "10.0.0.0/28");
        assert_eq!(nth_v4_slash28(1).to_string(), "10.0.0.16/28");
        assert_eq!(nth_v4_slash28(1_000_000).to_string(), "10.244.36.0/28");
        assert!(Cidr::new(nth_v4_slash28(77).addr(), 28).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn any_valid_cidr_round_trips(bits: u128, len in 0u8..=128, v4: bool) {
            let (addr, len) = if v4 {
                let len = len % 33;
                let b = u32::try_from(bits >> 96).unwrap_or(0);
                let b = if len == 0 { 0 } else { b & (u32::MAX << (32 - u32::from(len))) };
                (IpAddr::V4(Ipv4Addr::from(b)), len)
            } else {
                let b = if len == 0 { 0 } else { bits & (u128::MAX << (128 - u32::from(len))) };
                (IpAddr::V6(Ipv6Addr::from(b)), len)
            };
            let c = Cidr::new(addr, len).unwrap();
            proptest::prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
            proptest::prop_assert_eq!(unmapped(c.mapped_addr()), addr);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC*") {
            let _ = s.parse::<Cidr>();
        }
    }
}
