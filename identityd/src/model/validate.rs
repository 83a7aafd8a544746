//! Field-level validation helpers shared by every kind: each failure names the field path, the
//! value and what was expected (`spec.retries.attempts=-1: must be >= 0`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// One rejected field: `PATH=VALUE: REASON`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path in the object, e.g. `spec.rules[0].backendRefs[1].weight`.
    pub path: String,
    /// The offending value as written (may be empty when the field is missing).
    pub value: String,
    /// What was expected.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}: {}", self.path, self.value, self.reason)
    }
}

impl std::error::Error for FieldError {}

/// Collects every field error of one object (validation reports all of them, not just the first).
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    /// Records one failure.
    pub(crate) fn push(
        &mut self,
        path: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) {
        self.0.push(FieldError {
            path: path.into(),
            value: value.to_string(),
            reason: reason.into(),
        });
    }

    /// A required string field must be non-empty.
    pub(crate) fn required(&mut self, path: &str, value: &str) {
        if value.trim().is_empty() {
            self.push(path, "", "required");
        }
    }

    /// Parses a duration string (`2s`, `100ms`, `1h30m`); negative or malformed values fail.
    pub(crate) fn duration(&mut self, path: &str, value: &str) -> Option<Duration> {
        match identityd_certs::duration::parse(value) {
            Ok(d) => Some(d),
            Err(e) => {
                let why = e
                    .split_once(": ")
                    .map_or(e.as_str(), |(_, why)| why)
                    .to_owned();
                self.push(path, value, why);
                None
            }
        }
    }

    /// A duration that must also be strictly positive.
    pub(crate) fn positive_duration(&mut self, path: &str, value: &str) -> Option<Duration> {
        let d = self.duration(path, value)?;
        if d.is_zero() {
            self.push(path, value, "must be greater than zero");
            return None;
        }
        Some(d)
    }

    /// An integer within `min..=max`.
    pub(crate) fn range(&mut self, path: &str, value: i64, min: i64, max: i64) {
        if value < min {
            self.push(path, value, format!("must be >= {min}"));
        } else if value > max {
            self.push(path, value, format!("must be <= {max}"));
        }
    }

    /// A port number (1..=65535).
    pub(crate) fn port(&mut self, path: &str, value: i64) {
        if !(1..=65_535).contains(&value) {
            self.push(path, value, "must be a port number in 1..=65535");
        }
    }

    /// An IP address (v4 or v6).
    pub(crate) fn ip(&mut self, path: &str, value: &str) -> Option<IpAddr> {
        match value.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.push(path, value, "must be an IPv4 or IPv6 address");
                None
            }
        }
    }

    /// A CIDR (`10.244.1.0/24`) with no host bits set.
    pub(crate) fn cidr(&mut self, path: &str, value: &str) -> Option<Cidr> {
        match value.parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(why) => {
                self.push(path, value, why);
                None
            }
        }
    }

    /// A Kubernetes object name (RFC 1123 subdomain: lowercase alphanumerics, `-` and `.`).
    pub(crate) fn dns_subdomain(&mut self, path: &str, value: &str) {
        if let Err(why) = check_dns_subdomain(value) {
            self.push(path, value, why);
        }
    }

    /// Converts into a `Result`.
    pub(crate) fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// Checks an RFC 1123 subdomain (object names, namespaces, hostnames without wildcard).
///
/// # Errors
/// What was expected.
pub fn check_dns_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("required".into());
    }
    if value.len() > 253 {
        return Err("must be at most 253 characters".into());
    }
    for label in value.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(
                "must be lowercase alphanumerics, '-' and '.', each part starting and ending with an alphanumeric"
                    .into(),
            );
        }
    }
    Ok(())
}

/// An IP prefix such as `10.244.1.0/24` or `fd00::/64` (host bits must be zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies inside this prefix.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = mask_v4(self.prefix);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = mask_v6(self.prefix);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

fn mask_v6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix.min(128)))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = "must be a CIDR such as 10.244.1.0/24 or fd00::/64";
        let (a, p) = s.split_once('/').ok_or_else(|| expected.to_owned())?;
        let addr: IpAddr = a.parse().map_err(|_| expected.to_owned())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("prefix length must be 0..={max}"))?;
        let canonical = match addr {
            IpAddr::V4(v) => IpAddr::V4((u32::from(v) & mask_v4(prefix)).into()),
            IpAddr::V6(v) => IpAddr::V6((u128::from(v) & mask_v6(prefix)).into()),
        };
        if canonical != addr {
            return Err(format!(
                "host bits are set (did you mean {canonical}/{prefix}?)"
            ));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_rejects_host_bits() {
        let c: Cidr = "10.244.1.0/24".parse().unwrap();
        assert!(c.contains("10.244.1.7".parse().unwrap()));
        assert!(!c.contains("10.244.2.7".parse().unwrap()));
        assert!("fd00::/64".parse::<Cidr>().is_ok());
        assert!("0.0.0.0/0".parse::<Cidr>().is_ok());
        assert!(
            "10.244.1.1/24"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("10.244.1.0/24")
        );
        assert!("10.244.1.0/33".parse::<Cidr>().is_err());
        assert!("10.244.1.0".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn dns_subdomain() {
        assert!(check_dns_subdomain("shop").is_ok());
        assert!(check_dns_subdomain("a.b-c").is_ok());
        assert!(check_dns_subdomain("Shop").is_err());
        assert!(check_dns_subdomain("-a").is_err());
        assert!(check_dns_subdomain("").is_err());
    }

    #[test]
    fn duration_error_names_field() {
        let mut e = Errors::default();
        assert!(e.duration("spec.timeout", "-5s").is_none());
        assert!(e.duration("spec.timeout", "2s").is_some());
        let msg = e.0[0].to_string();
        assert!(msg.starts_with("spec.timeout=-5s: negative"), "{msg}");
    }
}
