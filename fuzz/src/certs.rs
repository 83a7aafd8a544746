//! One-input functions for the parsers of `identityd-certs`: SPIFFE IDs and trust domains, CSRs
//! as the CA checks them, and the CA service's request messages.
//!
//! Each returns `Ok(())` when the input is accepted and `Err(message)` when it is rejected; it
//! panics when a promise of the crate breaks (a rejection without a message, an accepted ID
//! that does not print as its input, an issued SVID for another ID, a token in `Debug` output).

use std::time::{Duration, SystemTime};

use identityd_certs::service::{self, CaServerOptions, JoinToken, RESERVED_PREFIX, pb};
use identityd_certs::{Ca, CaOptions, SpiffeId, TrustDomain, id, serving, verify_svid};
use prost::Message;

/// Trust domain of the fixture CA.
pub const TRUST_DOMAIN: &str = "fuzz.local";
/// The workload ID the `csr` target asks for (seed CSRs carry it as their URI SAN).
pub const WORKLOAD_ID: &str = "spiffe://fuzz.local/ns/fuzz/sa/seed";
/// The DNS name the `csr` target asks a serving certificate for.
pub const SERVING_NAME: &str = "web.fuzz.example";
/// The node that calls `RenewNode` in the `ca_request` target.
pub const NODE_NAME: &str = "fuzz-node";

/// A rejection's message, which must say something.
fn said(message: String) -> String {
    assert!(!message.trim().is_empty(), "a rejection without a message");
    message
}

/// SPIFFE ID text (lossy UTF-8) through [`SpiffeId::parse`] and [`TrustDomain::new`].
///
/// # Errors
/// The parser's message when [`SpiffeId::parse`] rejects the input.
///
/// # Panics
/// When an accepted ID does not round-trip (text, parts, trust domain).
pub fn spiffe_id(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    let td = TrustDomain::new(&text);
    match &td {
        Ok(td) => {
            assert!(td.as_str().len() <= id::MAX_TRUST_DOMAIN_LEN, "{td}");
            assert_eq!(TrustDomain::new(td.as_str()).as_ref(), Ok(td));
            assert_eq!(SpiffeId::parse(&td.id().to_string()), Ok(td.id()));
            if !text.starts_with("spiffe://") {
                assert_eq!(td.as_str(), text, "a bare trust domain is kept as given");
            }
        }
        Err(e) => {
            said(e.to_string());
        }
    }
    match SpiffeId::parse(&text) {
        Ok(parsed) => {
            let printed = parsed.to_string();
            assert_eq!(printed, text, "an accepted ID prints as its input");
            assert!(printed.len() <= id::MAX_ID_LEN);
            let segments: Vec<&str> = parsed.segments().collect();
            assert_eq!(
                SpiffeId::from_parts(parsed.trust_domain().clone(), &segments).as_ref(),
                Ok(&parsed),
                "an ID rebuilt from its parts is the same ID"
            );
            assert_eq!(
                td.is_ok(),
                parsed.is_trust_domain_id(),
                "TrustDomain::new accepts exactly the IDs without a path"
            );
            Ok(())
        }
        Err(e) => Err(said(e.to_string())),
    }
}

/// A CA in a temporary folder, shared by the inputs of one process.
pub struct Fixture {
    _dir: tempfile::TempDir,
    ca: Ca,
    workload: SpiffeId,
    node: SpiffeId,
    now: SystemTime,
    options: CaServerOptions,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("trust_domain", self.ca.trust_domain())
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// A fresh CA for [`TRUST_DOMAIN`].
    ///
    /// # Panics
    /// When the CA cannot be created.
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder for the fuzz CA");
        let td = TrustDomain::new(TRUST_DOMAIN).expect("fixture trust domain");
        let now = SystemTime::now();
        let ca = Ca::init(
            &dir.path().join("ca"),
            td.clone(),
            CaOptions::default(),
            now,
        )
        .expect("fixture CA");
        Self {
            _dir: dir,
            ca,
            workload: SpiffeId::parse(WORKLOAD_ID).expect("fixture workload ID"),
            node: service::node_id(&td, NODE_NAME).expect("fixture node ID"),
            now,
            options: CaServerOptions::default(),
        }
    }

    /// Signs an SVID for `id` from `csr` and checks what came out: a chain that verifies
    /// against the CA's bundle as exactly `id`.
    fn sign(&self, csr: &[u8], id: &SpiffeId, ttl: Duration) -> Result<(), String> {
        match self.ca.sign_csr(csr, id, ttl, self.now) {
            Ok(chain) => {
                let got = verify_svid(&chain, &self.ca.bundle(self.now), self.now)
                    .unwrap_or_else(|e| panic!("an issued SVID does not verify: {e}"));
                assert_eq!(&got, id, "the CA issued an SVID for another ID");
                Ok(())
            }
            Err(e) => Err(said(e.to_string())),
        }
    }

    /// Signs a serving certificate for `names` from `csr`; it must never pass as an SVID.
    fn sign_serving(&self, csr: &[u8], names: &[String], ttl: Duration) -> Result<(), String> {
        match self.ca.sign_serving_csr(csr, names, ttl, self.now) {
            Ok(chain) => {
                assert!(!chain.is_empty(), "an empty serving chain");
                assert!(
                    verify_svid(&chain, &self.ca.bundle(self.now), self.now).is_err(),
                    "a serving certificate verifies as an SVID"
                );
                Ok(())
            }
            Err(e) => Err(said(e.to_string())),
        }
    }

    /// A request's lifetime as the CA service reads `ttl_seconds` (0: the default).
    fn ttl(&self, ttl_seconds: u64) -> Duration {
        if ttl_seconds == 0 {
            self.options.default_workload_ttl
        } else {
            Duration::from_secs(ttl_seconds)
        }
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// CSR DER through [`Ca::sign_csr`] (for [`WORKLOAD_ID`]) and [`Ca::sign_serving_csr`] (for
/// [`SERVING_NAME`]). Accepted when either signs.
///
/// # Errors
/// Both rejections when neither signs.
///
/// # Panics
/// When an issued certificate is not what was asked for.
pub fn csr(fx: &Fixture, data: &[u8]) -> Result<(), String> {
    let ttl = Duration::from_secs(3600);
    let svid = fx.sign(data, &fx.workload, ttl);
    let serving = fx.sign_serving(data, &[SERVING_NAME.to_owned()], ttl);
    match (svid, serving) {
        (Err(a), Err(b)) => Err(format!("svid: {a}; serving: {b}")),
        _ => Ok(()),
    }
}

/// Decodes `M` and checks prost's own promises: it re-encodes to what `encoded_len` says and
/// decodes back to the same message.
fn decode<M: Message + Default + PartialEq>(bytes: &[u8]) -> Result<M, String> {
    let m = M::decode(bytes).map_err(|e| said(format!("protobuf: {e}")))?;
    let again = m.encode_to_vec();
    assert_eq!(again.len(), m.encoded_len(), "encoded_len disagrees");
    let back = M::decode(again.as_slice()).expect("a re-encoded message decodes");
    assert!(back == m, "a re-encoded message decodes to another message");
    Ok(m)
}

/// A CA service request: the first byte picks the message (0 `JoinRequest`, 1 `SignRequest`,
/// 2 `SignServingRequest`, 3 `RenewNodeRequest`, modulo 4), the rest is its protobuf
/// encoding. The handlers' checks are private to the service, so this runs the public pieces
/// they run, in their order: token and node name, SPIFFE ID and reserved paths, DNS names,
/// then the CA's CSR checks (`RenewNode` as node [`NODE_NAME`]; every workload is authorized).
///
/// # Errors
/// The first check that rejects the request.
///
/// # Panics
/// When a check's promise breaks (see [`csr`]) or a join token shows in `Debug` output.
pub fn ca_request(fx: &Fixture, data: &[u8]) -> Result<(), String> {
    let Some((&which, message)) = data.split_first() else {
        return Err("empty input: no message selector byte".to_owned());
    };
    match which % 4 {
        0 => join(fx, message),
        1 => sign_workload(fx, message),
        2 => sign_serving(fx, message),
        _ => {
            let r: pb::RenewNodeRequest = decode(message)?;
            fx.sign(&r.csr_der, &fx.node, fx.options.node_svid_ttl)
        }
    }
}

/// Whether `token` can be looked for in `Debug` output without matching its field names.
fn searchable(token: &str) -> bool {
    token.len() >= 12
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn join(fx: &Fixture, message: &[u8]) -> Result<(), String> {
    let r: pb::JoinRequest = decode(message)?;
    if searchable(&r.token) {
        let probe = pb::JoinRequest {
            node_name: String::new(),
            ..r.clone()
        };
        assert!(
            !format!("{probe:?}").contains(&r.token),
            "JoinRequest's Debug shows the token"
        );
    }
    let token = JoinToken::parse(&r.token).map_err(|e| said(format!("token: {e}")))?;
    if searchable(token.expose_secret()) {
        assert!(
            !format!("{token:?}").contains(token.expose_secret()),
            "JoinToken's Debug shows the token"
        );
    }
    let id = service::node_id(fx.ca.trust_domain(), &r.node_name)
        .map_err(|e| said(format!("node_name {:?}: {e}", r.node_name)))?;
    assert_eq!(service::node_name_of(&id), Some(r.node_name.as_str()));
    fx.sign(&r.csr_der, &id, fx.options.node_svid_ttl)
}

fn sign_workload(fx: &Fixture, message: &[u8]) -> Result<(), String> {
    let r: pb::SignRequest = decode(message)?;
    let id = SpiffeId::parse(&r.spiffe_id)
        .map_err(|e| said(format!("spiffe_id {:?}: {e}", r.spiffe_id)))?;
    if id == service::gateway_id(fx.ca.trust_domain()) {
        return Err(format!("{id}: the gateway identity is not authorized here"));
    }
    if id.segments().next() == Some(RESERVED_PREFIX) {
        return Err(format!(
            "spiffe_id {id}: the path /{RESERVED_PREFIX}/ is reserved"
        ));
    }
    fx.sign(&r.csr_der, &id, fx.ttl(r.ttl_seconds))
}

fn sign_serving(fx: &Fixture, message: &[u8]) -> Result<(), String> {
    let r: pb::SignServingRequest = decode(message)?;
    serving::check_dns_names(&r.dns_names).map_err(|e| said(e.to_string()))?;
    fx.sign_serving(&r.csr_der, &r.dns_names, fx.ttl(r.ttl_seconds))
}
