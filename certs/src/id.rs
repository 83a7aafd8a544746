//! SPIFFE IDs and trust domains, per the SPIFFE-ID specification.
//!
//! `spiffe://<trust-domain>/<path>`: the scheme is exactly `spiffe`; the trust domain is
//! lowercase letters, digits, `.`, `-` and `_` (at most 255 bytes); the path is zero or more
//! `/segment`s of letters, digits, `.`, `-` and `_`, none empty, `.` or `..`; the whole ID is at
//! most 2048 bytes; no port, userinfo, query or fragment. Parse errors name the rule.

use std::fmt;
use std::str::FromStr;

/// Maximum length of a SPIFFE ID in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// Maximum length of a trust domain name in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
const SCHEME: &str = "spiffe://";

/// Why a SPIFFE ID or trust domain was rejected: the rule of the spec that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The input is empty.
    #[error("empty SPIFFE ID")]
    Empty,
    /// The scheme is not exactly `spiffe://`.
    #[error("scheme must be `spiffe://` (lowercase)")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A character outside `[a-z0-9._-]` in the trust domain.
    #[error(
        "trust domain character {ch:?} at byte {at} is not allowed (only lowercase letters, digits, '.', '-', '_')"
    )]
    TrustDomainChar {
        /// The offending character.
        ch: char,
        /// Its byte offset within the trust domain.
        at: usize,
    },
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {0} bytes; at most 255 are allowed")]
    TrustDomainTooLong(usize),
    /// The authority carries a port (`host:port`).
    #[error("a port is not allowed in a SPIFFE ID")]
    Port,
    /// The authority carries userinfo (`user@host`).
    #[error("userinfo is not allowed in a SPIFFE ID")]
    UserInfo,
    /// A `?query` part.
    #[error("a query is not allowed in a SPIFFE ID")]
    Query,
    /// A `#fragment` part.
    #[error("a fragment is not allowed in a SPIFFE ID")]
    Fragment,
    /// An empty path segment (`//` or a trailing `/`).
    #[error("path segment {index} is empty (no '//' and no trailing '/')")]
    EmptySegment {
        /// 0-based index of the segment.
        index: usize,
    },
    /// A `.` or `..` path segment.
    #[error("path segment {index} is {segment:?}; '.' and '..' are not allowed")]
    DotSegment {
        /// 0-based index of the segment.
        index: usize,
        /// `.` or `..`.
        segment: String,
    },
    /// A character outside `[A-Za-z0-9._-]` in the path.
    #[error(
        "path character {ch:?} in segment {index} is not allowed (only letters, digits, '.', '-', '_'; no percent-encoding)"
    )]
    PathChar {
        /// The offending character.
        ch: char,
        /// 0-based index of the segment.
        index: usize,
    },
    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is {0} bytes; at most 2048 are allowed")]
    TooLong(usize),
    /// A trust-domain-only ID was required but this one has a path.
    #[error("expected a SPIFFE ID without a path, got path {0:?}")]
    UnexpectedPath(String),
}

/// A SPIFFE trust domain, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name (`cluster.local`) or a trust-domain ID (`spiffe://cluster.local`).
    ///
    /// # Errors
    /// The rule of the spec that the input breaks.
    pub fn new(s: &str) -> Result<Self, IdError> {
        if s.starts_with(SCHEME) || s.to_ascii_lowercase().starts_with(SCHEME) {
            let id = SpiffeId::parse(s)?;
            if !id.path().is_empty() {
                return Err(IdError::UnexpectedPath(id.path().to_owned()));
            }
            return Ok(id.td);
        }
        validate_trust_domain(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The name, e.g. `cluster.local`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<td>` (used as the SAN of signing certificates).
    #[must_use]
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            td: self.clone(),
            path: String::new(),
        }
    }

    /// `spiffe://<td>/ns/<namespace>/sa/<service_account>` for a Kubernetes workload.
    ///
    /// # Errors
    /// When the namespace or service account is not a valid path segment.
    pub fn workload_id(&self, namespace: &str, service_account: &str) -> Result<SpiffeId, IdError> {
        SpiffeId::from_parts(self.clone(), &["ns", namespace, "sa", service_account])
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SPIFFE ID: `spiffe://<trust-domain><path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    td: TrustDomain,
    /// Empty, or `/seg(/seg)*`.
    path: String,
}

fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong(td.len()));
    }
    if td.contains('@') {
        return Err(IdError::UserInfo);
    }
    if td.contains(':') {
        return Err(IdError::Port);
    }
    for (at, ch) in td.char_indices() {
        if !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '-' | '_')) {
            return Err(IdError::TrustDomainChar { ch, at });
        }
    }
    Ok(())
}

fn validate_segment(seg: &str, index: usize) -> Result<(), IdError> {
    if seg.is_empty() {
        return Err(IdError::EmptySegment { index });
    }
    if seg == "." || seg == ".." {
        return Err(IdError::DotSegment {
            index,
            segment: seg.to_owned(),
        });
    }
    for ch in seg.chars() {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_')) {
            return Err(IdError::PathChar { ch, index });
        }
    }
    Ok(())
}

impl SpiffeId {
    /// Parses a SPIFFE ID.
    ///
    /// # Errors
    /// The rule of the spec that the input breaks.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(s.len()));
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        // Query and fragment are checked before anything else so they get their own error.
        if rest.contains('#') {
            return Err(IdError::Fragment);
        }
        if rest.contains('?') {
            return Err(IdError::Query);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        if !path.is_empty() {
            for (index, seg) in path[1..].split('/').enumerate() {
                validate_segment(seg, index)?;
            }
        }
        Ok(Self {
            td: TrustDomain(td.to_owned()),
            path: path.to_owned(),
        })
    }

    /// Builds an ID from a trust domain and path segments (each validated).
    ///
    /// # Errors
    /// When a segment breaks a path rule, or the result is too long.
    pub fn from_parts(td: TrustDomain, segments: &[&str]) -> Result<Self, IdError> {
        let mut path = String::new();
        for (index, seg) in segments.iter().enumerate() {
            validate_segment(seg, index)?;
            path.push('/');
            path.push_str(seg);
        }
        let len = SCHEME.len() + td.0.len() + path.len();
        if len > MAX_ID_LEN {
            return Err(IdError::TooLong(len));
        }
        Ok(Self { td, path })
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The path (empty, or starting with `/`).
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True when this is a trust domain's own ID (no path).
    #[must_use]
    pub fn is_trust_domain_id(&self) -> bool {
        self.path.is_empty()
    }

    /// The path's segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').skip(1)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.td.0, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_round_trip() {
        for s in [
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/shop/sa/web",
            "spiffe://a-b_c.d/x/Y.z/-_.",
            "spiffe://td/...",
        ] {
            let id = SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.to_string(), s);
        }
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["ns", "shop", "sa", "web"]
        );
        assert!(SpiffeId::parse("spiffe://td").unwrap().is_trust_domain_id());
    }

    #[test]
    fn each_rule_has_its_error() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty),
            ("http://td/x", IdError::WrongScheme),
            ("SPIFFE://td/x", IdError::WrongScheme),
            ("spiffe:/td", IdError::WrongScheme),
            ("spiffe://", IdError::MissingTrustDomain),
            ("spiffe:///path", IdError::MissingTrustDomain),
            (
                "spiffe://Cluster.local",
                IdError::TrustDomainChar { ch: 'C', at: 0 },
            ),
            ("spiffe://td:443/x", IdError::Port),
            ("spiffe://user@td/x", IdError::UserInfo),
            ("spiffe://td/x?a=b", IdError::Query),
            ("spiffe://td/x#frag", IdError::Fragment),
            ("spiffe://td/", IdError::EmptySegment { index: 0 }),
            ("spiffe://td/a//b", IdError::EmptySegment { index: 1 }),
            ("spiffe://td/a/", IdError::EmptySegment { index: 1 }),
            (
                "spiffe://td/a/./b",
                IdError::DotSegment {
                    index: 1,
                    segment: ".".into(),
                },
            ),
            (
                "spiffe://td/..",
                IdError::DotSegment {
                    index: 0,
                    segment: "..".into(),
                },
            ),
            ("spiffe://td/a%20b", IdError::PathChar { ch: '%', index: 0 }),
            ("spiffe://td/a b", IdError::PathChar { ch: ' ', index: 0 }),
        ];
        for (input, want) in cases {
            assert_eq!(
                SpiffeId::parse(input).as_ref(),
                Err(want),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn length_limits() {
        let td = "a".repeat(255);
        assert!(TrustDomain::new(&td).is_ok());
        assert_eq!(
            TrustDomain::new(&"a".repeat(256)),
            Err(IdError::TrustDomainTooLong(256))
        );
        let long = format!("spiffe://td/{}", "a".repeat(2048 - 12));
        assert_eq!(long.len(), 2048);
        assert!(SpiffeId::parse(&long).is_ok());
        let too_long = format!("{long}b");
        assert_eq!(SpiffeId::parse(&too_long), Err(IdError::TooLong(2049)));
    }

    #[test]
    fn trust_domain_forms() {
        assert_eq!(
            TrustDomain::new("spiffe://cluster.local").unwrap().as_str(),
            "cluster.local"
        );
        assert!(matches!(
            TrustDomain::new("spiffe://td/x"),
            Err(IdError::UnexpectedPath(_))
        ));
        let td = TrustDomain::new("cluster.local").unwrap();
        assert_eq!(
            td.workload_id("shop", "web").unwrap().to_string(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert!(matches!(
            td.workload_id("a/b", "web"),
            Err(IdError::PathChar { ch: '/', .. })
        ));
        assert_eq!(td.id().to_string(), "spiffe://cluster.local");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,300}") {
            let _ = SpiffeId::parse(&s);
            let _ = TrustDomain::new(&s);
        }

        #[test]
        fn valid_ids_round_trip(
            td in "[a-z0-9._-]{1,40}",
            segs in proptest::collection::vec("[A-Za-z0-9._-]{1,20}", 0..6),
        ) {
            prop_assume!(segs.iter().all(|s| s != "." && s != ".."));
            let s = format!("spiffe://{td}{}", segs.iter().map(|s| format!("/{s}")).collect::<String>());
            let id = SpiffeId::parse(&s).expect("valid by construction");
            prop_assert_eq!(id.to_string(), s);
            prop_assert_eq!(id.segments().count(), segs.len());
        }

        #[test]
        fn any_accepted_id_obeys_the_rules(s in "spiffe://[a-zA-Z0-9.:@_/%?#-]{0,60}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                let td = id.trust_domain().as_str();
                prop_assert!(!td.is_empty());
                prop_assert!(td.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c)));
                for seg in id.segments() {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                    prop_assert!(seg.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)));
                }
            }
        }
    }
}
