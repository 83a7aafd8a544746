//! Wire messages of `identityd.ca.v1` (see `certs/proto/identityd.ca.v1.proto`), written by hand
//! with `prost` derives: the build machines have no `protoc`, and five messages do not justify a
//! build script. A unit test pins the encoding of each field number.

/// Fully-qualified gRPC service name.
pub const SERVICE: &str = "identityd.ca.v1.CaService";
/// `Join` method path.
pub const JOIN: &str = "/identityd.ca.v1.CaService/Join";
/// `SignWorkload` method path.
pub const SIGN_WORKLOAD: &str = "/identityd.ca.v1.CaService/SignWorkload";
/// `RenewNode` method path.
pub const RENEW_NODE: &str = "/identityd.ca.v1.CaService/RenewNode";
/// `SignServing` method path.
pub const SIGN_SERVING: &str = "/identityd.ca.v1.CaService/SignServing";
/// `Bundle` method path.
pub const BUNDLE: &str = "/identityd.ca.v1.CaService/Bundle";

/// Exchanges a join token for a node SVID. Holds the token: `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct JoinRequest {
    /// The node's name (`spiffe://<td>/identityd/node/<node_name>`).
    #[prost(string, tag = "1")]
    pub node_name: String,
    /// The single-use join token (base64url).
    #[prost(string, tag = "2")]
    pub token: String,
    /// PKCS#10 CSR (DER) for the node ID.
    #[prost(bytes = "vec", tag = "3")]
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("node_name", &self.node_name)
            .field("token", &"<redacted>")
            .field("csr_len", &self.csr_der.len())
            .finish()
    }
}

/// Asks for a workload SVID.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignRequest {
    /// PKCS#10 CSR (DER).
    #[prost(bytes = "vec", tag = "1")]
    pub csr_der: Vec<u8>,
    /// The SPIFFE ID asked for.
    #[prost(string, tag = "2")]
    pub spiffe_id: String,
    /// The pod's namespace.
    #[prost(string, tag = "3")]
    pub pod_namespace: String,
    /// The pod's name.
    #[prost(string, tag = "4")]
    pub pod_name: String,
    /// Requested lifetime; 0 means the server's default.
    #[prost(uint64, tag = "5")]
    pub ttl_seconds: u64,
}

/// Asks for a serving certificate for an ingress object's hostnames.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignServingRequest {
    /// PKCS#10 CSR (DER) with the DNS names as SANs.
    #[prost(bytes = "vec", tag = "1")]
    pub csr_der: Vec<u8>,
    /// The DNS names asked for.
    #[prost(string, repeated, tag = "2")]
    pub dns_names: Vec<String>,
    /// The object's kind (`Gateway` or `Ingress`).
    #[prost(string, tag = "3")]
    pub kind: String,
    /// The object's namespace.
    #[prost(string, tag = "4")]
    pub namespace: String,
    /// The object's name.
    #[prost(string, tag = "5")]
    pub name: String,
    /// Requested lifetime; 0 means the server's default.
    #[prost(uint64, tag = "6")]
    pub ttl_seconds: u64,
}

/// Renews the caller's node SVID.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RenewNodeRequest {
    /// PKCS#10 CSR (DER) for the caller's node ID.
    #[prost(bytes = "vec", tag = "1")]
    pub csr_der: Vec<u8>,
}

/// An issued chain and the current bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SvidResponse {
    /// The chain (DER), leaf first.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub chain_der: Vec<Vec<u8>>,
    /// The trust bundle as PEM.
    #[prost(string, tag = "2")]
    pub bundle_pem: String,
}

/// Asks for the trust bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BundleRequest {}

/// The trust bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BundleResponse {
    /// PEM.
    #[prost(string, tag = "1")]
    pub bundle_pem: String,
    /// SPIFFE bundle (JWKS).
    #[prost(string, tag = "2")]
    pub jwks: String,
    /// SPIFFE bundle sequence number.
    #[prost(uint64, tag = "3")]
    pub sequence: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The hand-written messages encode with the field numbers and wire types of the .proto.
    #[test]
    fn field_numbers_match_the_proto() {
        let m = SignRequest {
            csr_der: vec![0xAA],
            spiffe_id: "a".into(),
            pod_namespace: "b".into(),
            pod_name: "c".into(),
            ttl_seconds: 7,
        };
        // tag = field << 3 | wire type (2 = length-delimited, 0 = varint)
        assert_eq!(
            m.encode_to_vec(),
            [
                0x0a, 1, 0xAA, 0x12, 1, b'a', 0x1a, 1, b'b', 0x22, 1, b'c', 0x28, 7
            ]
        );
        let s = SignServingRequest {
            csr_der: vec![0xAB],
            dns_names: vec!["h".into(), "i".into()],
            kind: "G".into(),
            namespace: "n".into(),
            name: "x".into(),
            ttl_seconds: 9,
        };
        assert_eq!(
            s.encode_to_vec(),
            [
                0x0a, 1, 0xAB, 0x12, 1, b'h', 0x12, 1, b'i', 0x1a, 1, b'G', 0x22, 1, b'n', 0x2a, 1,
                b'x', 0x30, 9
            ]
        );
        let j = JoinRequest {
            node_name: "n".into(),
            token: "t".into(),
            csr_der: vec![1],
        };
        assert_eq!(
            j.encode_to_vec(),
            [0x0a, 1, b'n', 0x12, 1, b't', 0x1a, 1, 1]
        );
        let r = SvidResponse {
            chain_der: vec![vec![1], vec![2]],
            bundle_pem: "p".into(),
        };
        assert_eq!(r.encode_to_vec(), [0x0a, 1, 1, 0x0a, 1, 2, 0x12, 1, b'p']);
        let b = BundleResponse {
            bundle_pem: "p".into(),
            jwks: "j".into(),
            sequence: 3,
        };
        assert_eq!(b.encode_to_vec(), [0x0a, 1, b'p', 0x12, 1, b'j', 0x18, 3]);
        assert_eq!(
            RenewNodeRequest { csr_der: vec![9] }.encode_to_vec(),
            [0x0a, 1, 9]
        );
    }

    #[test]
    fn join_request_debug_hides_the_token() {
        let j = JoinRequest {
            node_name: "n1".into(),
            token: "s3cr3t-token".into(),
            csr_der: vec![],
        };
        let d = format!("{j:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert!(d.contains("n1"), "{d}");
    }
}
