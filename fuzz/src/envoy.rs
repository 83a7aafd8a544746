//! One-input function for what the xDS server of `identityd-envoy` reads from Envoy: the bytes
//! of a `DiscoveryRequest` (state of the world; the same bytes are also decoded as a
//! `DeltaDiscoveryRequest`). The server's per-request checks are private to its stream loops,
//! so `envoy/tests/fuzz_corpus.rs` sends every decodable seed to a real server as well.

use identityd_envoy::envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
};
use identityd_envoy::server::type_url;
use prost::Message;

/// Decodes `M` and checks prost's promises that hold with maps and floats too: the message
/// re-encodes to `encoded_len` bytes, and those decode to a message of the same length.
fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, String> {
    let m = M::decode(bytes).map_err(|e| format!("protobuf: {e}"))?;
    let again = m.encode_to_vec();
    assert_eq!(again.len(), m.encoded_len(), "encoded_len disagrees");
    let back = M::decode(again.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(
        back.encoded_len(),
        again.len(),
        "a re-encoded message changes"
    );
    Ok(m)
}

/// Discovery request bytes through prost and the server's public type checks.
///
/// # Errors
/// prost's message when the bytes are not a `DiscoveryRequest`.
///
/// # Panics
/// When a decoded request does not re-encode faithfully.
pub fn xds_request(data: &[u8]) -> Result<DiscoveryRequest, String> {
    // Either flavour may arrive on the ADS service; only decoding is shared between them.
    let _ = decode::<DeltaDiscoveryRequest>(data);
    let req: DiscoveryRequest = decode(data)?;
    if type_url::is_wildcard_type(&req.type_url) {
        assert!(
            type_url::ALL.contains(&req.type_url.as_str()),
            "a wildcard type that is not served"
        );
    }
    Ok(req)
}
