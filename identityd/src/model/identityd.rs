//! The `identityd.io/v1alpha1` kinds: `IdentitydNode`, `KeyRotation`, `TrafficPolicy`,
//! `AuthorizationPolicy`.
//!
//! Unlike the standard kinds, their specs refuse unknown fields: a misspelt `deny:` in an
//! authorization policy must be an error, not a silently ignored key.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{Condition, ObjectMeta, validate_conditions};
use super::validate::Errors;

/// API group/version of the identityd kinds.
pub const IDENTITYD_API_VERSION: &str = "identityd.io/v1alpha1";
/// Default WireGuard UDP port (DESIGN.md, shared constants).
pub const DEFAULT_WIREGUARD_PORT: u16 = 51871;

/// OpenAPI pattern of duration strings (`30s`, `100ms`, `1h30m`); the model's validation is the
/// authority, the pattern only stops obvious typos at `kubectl apply`.
const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";
/// OpenAPI pattern of a CIDR (`10.244.1.0/24`, `fd00::/64`).
const CIDR_PATTERN: &str = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$";
/// OpenAPI pattern of a base64 WireGuard public key (32 bytes).
const WG_KEY_PATTERN: &str = r"^[A-Za-z0-9+/]{43}=$";

fn default_api_version() -> String {
    IDENTITYD_API_VERSION.to_owned()
}

// ---------------------------------------------------------------------------------------------
// IdentitydNode

/// A node as published by its daemon (cluster-scoped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentitydNode {
    /// `identityd.io/v1alpha1`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// `IdentitydNode`.
    pub kind: String,
    /// Metadata; `name` is the node name.
    pub metadata: ObjectMeta,
    /// What the node announces.
    pub spec: IdentitydNodeSpec,
    /// What the node reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<IdentitydNodeStatus>,
}

/// `IdentitydNode.spec`.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[kube(
    group = "identityd.io",
    version = "v1alpha1",
    kind = "IdentitydNode",
    root = "IdentitydNodeCrd",
    doc = "A node as published by its identityd daemon: pod CIDRs, underlay addresses, WireGuard public key and port, IPsec key epoch.",
    status = "IdentitydNodeStatus",
    shortname = "idn",
    category = "identityd",
    printcolumn = r#"{"name":"PodCIDR","type":"string","jsonPath":".spec.podCIDRs[0]"}"#,
    printcolumn = r#"{"name":"Underlay","type":"string","jsonPath":".spec.underlayAddresses[0]"}"#,
    printcolumn = r#"{"name":"WGPort","type":"integer","jsonPath":".spec.wireguard.port","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct IdentitydNodeSpec {
    /// Pod CIDRs of the node (`10.244.1.0/24`).
    #[serde(default, rename = "podCIDRs")]
    #[schemars(inner(regex(pattern = CIDR_PATTERN)))]
    pub pod_cidrs: Vec<String>,
    /// Underlay (node) addresses other nodes reach it on; at least one.
    #[serde(default)]
    #[schemars(required, length(min = 1))]
    pub underlay_addresses: Vec<String>,
    /// WireGuard public key and port (absent when the node does not run WireGuard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardSpec>,
    /// IPsec key state (absent when the node does not run IPsec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsec: Option<IpsecSpec>,
    /// The node's proof that the fields above come from it: a signature by its node SVID
    /// (`spiffe://<td>/identityd/node/<name>`) over them and a generation. Peers configure
    /// only verified versions and keep the last one they verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<NodeProof>,
}

/// `IdentitydNode.spec.proof`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeProof {
    /// Increases with every version the node signs (milliseconds since the Unix epoch at
    /// signing, or one more than the previous generation): an older version is a replay.
    #[schemars(range(min = 1))]
    pub generation: i64,
    /// The node SVID's certificate chain (PEM, leaf first).
    #[schemars(length(max = 16384))]
    pub certificate_chain: String,
    /// Base64 ECDSA P-256/SHA-256 signature (DER) over the canonical encoding of the name,
    /// generation, pod CIDRs, underlay addresses, WireGuard and IPsec fields.
    #[schemars(length(max = 256))]
    pub signature: String,
}

/// `IdentitydNode.spec.wireguard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireguardSpec {
    /// Base64 Curve25519 public key (32 bytes).
    #[schemars(length(min = 44, max = 44), regex(pattern = WG_KEY_PATTERN))]
    pub public_key: String,
    /// UDP listen port (default 51871).
    #[serde(default = "default_wg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i64,
    /// The key the node is rotating to (base64), published beside `publicKey` while a
    /// `KeyRotation` runs: peers map both keys to this node and handshake to this one; the
    /// node answers on both. Removed when the node retires its old key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 44, max = 44), regex(pattern = WG_KEY_PATTERN))]
    pub next_public_key: Option<String>,
}

fn default_wg_port() -> i64 {
    i64::from(DEFAULT_WIREGUARD_PORT)
}

impl WireguardSpec {
    /// The decoded public key (valid objects always decode).
    #[must_use]
    pub fn public_key_bytes(&self) -> Option<[u8; 32]> {
        let v = base64::engine::general_purpose::STANDARD
            .decode(self.public_key.trim())
            .ok()?;
        v.try_into().ok()
    }

    /// The decoded next key, when one is announced and valid.
    #[must_use]
    pub fn next_public_key_bytes(&self) -> Option<[u8; 32]> {
        let v = base64::engine::general_purpose::STANDARD
            .decode(self.next_public_key.as_deref()?.trim())
            .ok()?;
        v.try_into().ok()
    }

    /// The port (valid objects always fit).
    #[must_use]
    pub fn port_u16(&self) -> u16 {
        u16::try_from(self.port).unwrap_or(DEFAULT_WIREGUARD_PORT)
    }
}

/// `IdentitydNode.spec.ipsec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpsecSpec {
    /// Current key epoch (increases on every rotation).
    #[schemars(range(min = 0, max = 4_294_967_295_i64))]
    pub key_epoch: i64,
}

/// `IdentitydNode.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentitydNodeStatus {
    /// Generation of the spec last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (`Ready`, `DatapathReady`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// SHA-256 fingerprints (hex) of the trust bundle roots the node's Envoy validates peers
    /// with (as Envoy acknowledged them). A CA rollover signs under a new root only once
    /// every node lists it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_roots: Vec<String>,
}

impl IdentitydNode {
    /// A node object with the right apiVersion/kind.
    #[must_use]
    pub fn new(name: impl Into<String>, spec: IdentitydNodeSpec) -> Self {
        Self {
            api_version: default_api_version(),
            kind: "IdentitydNode".into(),
            metadata: ObjectMeta::cluster(name),
            spec,
            status: None,
        }
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        for (i, c) in self.spec.pod_cidrs.iter().enumerate() {
            errs.cidr(&format!("spec.podCIDRs[{i}]"), c);
        }
        if self.spec.underlay_addresses.is_empty() {
            errs.push(
                "spec.underlayAddresses",
                "[]",
                "at least one underlay address is required",
            );
        }
        for (i, a) in self.spec.underlay_addresses.iter().enumerate() {
            errs.ip(&format!("spec.underlayAddresses[{i}]"), a);
        }
        if let Some(wg) = &self.spec.wireguard {
            if wg.public_key_bytes().is_none() {
                errs.push(
                    "spec.wireguard.publicKey",
                    &wg.public_key,
                    "must be a base64 WireGuard public key (32 bytes)",
                );
            }
            errs.port("spec.wireguard.port", wg.port);
            if let Some(next) = &wg.next_public_key {
                if wg.next_public_key_bytes().is_none() {
                    errs.push(
                        "spec.wireguard.nextPublicKey",
                        next,
                        "must be a base64 WireGuard public key (32 bytes)",
                    );
                } else if next.trim() == wg.public_key.trim() {
                    errs.push(
                        "spec.wireguard.nextPublicKey",
                        next,
                        "must differ from spec.wireguard.publicKey",
                    );
                }
            }
        }
        if let Some(ipsec) = &self.spec.ipsec {
            errs.range(
                "spec.ipsec.keyEpoch",
                ipsec.key_epoch,
                0,
                i64::from(u32::MAX),
            );
        }
        if let Some(st) = &self.status {
            validate_conditions(errs, "status.conditions", &st.conditions);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KeyRotation

/// What a `KeyRotation` rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RotationTarget {
    /// Node WireGuard keys.
    Wireguard,
    /// IPsec SAs (new epoch).
    Ipsec,
    /// The CA (rollover with two roots in the bundle).
    Ca,
}

impl FromStr for RotationTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wireguard" => Ok(Self::Wireguard),
            "ipsec" => Ok(Self::Ipsec),
            "ca" => Ok(Self::Ca),
            _ => Err("must be one of wireguard, ipsec, ca".into()),
        }
    }
}

impl fmt::Display for RotationTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Wireguard => "wireguard",
            Self::Ipsec => "ipsec",
            Self::Ca => "ca",
        })
    }
}

/// `KeyRotation.status.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RotationPhase {
    /// Accepted, not started.
    Pending,
    /// New keys installed on some nodes.
    InProgress,
    /// Done on every selected node.
    Completed,
    /// Gave up; see the conditions.
    Failed,
}

impl FromStr for RotationPhase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Pending" => Ok(Self::Pending),
            "InProgress" => Ok(Self::InProgress),
            "Completed" => Ok(Self::Completed),
            "Failed" => Ok(Self::Failed),
            _ => Err("must be one of Pending, InProgress, Completed, Failed".into()),
        }
    }
}

impl fmt::Display for RotationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
        })
    }
}

/// A requested key rotation (cluster-scoped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotation {
    /// `identityd.io/v1alpha1`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// `KeyRotation`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// What to rotate.
    pub spec: KeyRotationSpec,
    /// Progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<KeyRotationStatus>,
}

/// `KeyRotation.spec`.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[kube(
    group = "identityd.io",
    version = "v1alpha1",
    kind = "KeyRotation",
    root = "KeyRotationCrd",
    doc = "A requested key rotation (wireguard, ipsec or ca) with its progress in status.phase.",
    status = "KeyRotationStatus",
    shortname = "keyrot",
    shortname = "kr",
    category = "identityd",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct KeyRotationSpec {
    /// `wireguard`, `ipsec` or `ca` (see [`KeyRotationSpec::target`]).
    #[schemars(extend("enum" = ["wireguard", "ipsec", "ca"]))]
    pub target: String,
    /// Only nodes whose `IdentitydNode` labels match (all nodes when empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// How long old keys stay valid next to the new ones (duration string, e.g. `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub overlap_window: Option<String>,
    /// `wireguard`: how long the selected nodes have to confirm every step (duration string,
    /// default 10m); a node that has not retired its old key by then makes the rotation
    /// Failed, naming it, and nodes still announcing withdraw their next key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub deadline: Option<String>,
}

impl KeyRotationSpec {
    /// The parsed target (always `Some` on validated objects).
    #[must_use]
    pub fn target(&self) -> Option<RotationTarget> {
        self.target.parse().ok()
    }

    /// The parsed overlap window (`None` when absent or invalid).
    #[must_use]
    pub fn overlap_window(&self) -> Option<Duration> {
        self.overlap_window
            .as_deref()
            .and_then(|s| identityd_certs::duration::parse(s).ok())
    }

    /// The parsed deadline (`None` when absent or invalid).
    #[must_use]
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
            .as_deref()
            .and_then(|s| identityd_certs::duration::parse(s).ok())
    }
}

/// One selected node's progress in a `wireguard` rotation (`KeyRotation.status.nodes[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRotationStatus {
    /// The node.
    pub name: String,
    /// `Pending` (nothing reported yet), `Announced`, `Switched` or `Retired`.
    #[schemars(extend("enum" = ["Pending", "Announced", "Switched", "Retired"]))]
    pub step: String,
    /// What the node reported.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// `KeyRotation.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotationStatus {
    /// `Pending`, `InProgress`, `Completed` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Pending", "InProgress", "Completed", "Failed"]))]
    pub phase: Option<String>,
    /// The step every selected node has reached. `wireguard`: `Announced` (next keys
    /// published), `Switched` (every peer handshook to them), `Retired` (old keys removed).
    /// `ca`: `Announced` (the new root in the bundle, the old one signing), `Switched` (every
    /// node's Envoy trusts the new root; it signs now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Announced", "Switched", "Retired"]))]
    pub step: Option<String>,
    /// When the rotation went InProgress (RFC 3339; the deadline counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Each selected node's step (`ca`: `Pending` until its Envoy trusts the new root, then
    /// `Trusted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeRotationStatus>,
    /// `ca`: SHA-256 fingerprint (hex) of the new root. Once the rotation is Completed it
    /// signs every new SVID, and nodes renew the SVIDs signed under another root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_root: Option<String>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Generation of the spec last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl KeyRotationStatus {
    /// The parsed phase (`None` when absent).
    #[must_use]
    pub fn phase(&self) -> Option<RotationPhase> {
        self.phase.as_deref().and_then(|p| p.parse().ok())
    }
}

impl KeyRotation {
    /// A rotation object with the right apiVersion/kind.
    #[must_use]
    pub fn new(name: impl Into<String>, target: RotationTarget) -> Self {
        Self {
            api_version: default_api_version(),
            kind: "KeyRotation".into(),
            metadata: ObjectMeta::cluster(name),
            spec: KeyRotationSpec {
                target: target.to_string(),
                ..KeyRotationSpec::default()
            },
            status: None,
        }
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        if let Err(why) = self.spec.target.parse::<RotationTarget>() {
            errs.push("spec.target", &self.spec.target, why);
        }
        if let Some(w) = &self.spec.overlap_window {
            errs.duration("spec.overlapWindow", w);
        }
        if let Some(d) = &self.spec.deadline {
            errs.duration("spec.deadline", d);
        }
        if let Some(st) = &self.status {
            if let Some(p) = &st.phase
                && let Err(why) = p.parse::<RotationPhase>()
            {
                errs.push("status.phase", p, why);
            }
            validate_conditions(errs, "status.conditions", &st.conditions);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policy target references

/// `targetRef` of a policy (Gateway API `LocalPolicyTargetReference` shape).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    /// API group: `""` (core) for Service, `gateway.networking.k8s.io` for routes.
    #[serde(default)]
    pub group: String,
    /// `Service`, `HTTPRoute`, `GRPCRoute` or `Gateway` (TrafficPolicy: a Gateway's listeners
    /// get its rate limit and its retries/timeout as a fallback; AuthorizationPolicy: `Service`
    /// only).
    #[schemars(extend("enum" = ["Service", "HTTPRoute", "GRPCRoute", "Gateway"]))]
    pub kind: String,
    /// Target name, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// For a Gateway: only the listener of this name (all of its listeners when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

impl PolicyTargetRef {
    fn check(&self, errs: &mut Errors, allowed: &[&str]) {
        if !allowed.contains(&self.kind.as_str()) {
            errs.push(
                "spec.targetRef.kind",
                &self.kind,
                format!("must be one of {}", allowed.join(", ")),
            );
        } else {
            let want = if self.kind == "Service" {
                ""
            } else {
                GATEWAY_GROUP
            };
            let group = if self.group == "core" {
                ""
            } else {
                self.group.as_str()
            };
            if group != want {
                errs.push(
                    "spec.targetRef.group",
                    &self.group,
                    format!("must be {want:?} for kind {}", self.kind),
                );
            }
            if let Some(sn) = &self.section_name
                && self.kind != "Gateway"
            {
                errs.push(
                    "spec.targetRef.sectionName",
                    sn,
                    "only a Gateway target has sections (listeners)",
                );
            }
        }
        errs.dns_subdomain("spec.targetRef.name", &self.name);
    }
}

// ---------------------------------------------------------------------------------------------
// TrafficPolicy

/// Retries, timeouts, circuit breaking, outlier detection and local rate limiting for a Service
/// or a route (namespaced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// `identityd.io/v1alpha1`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// `TrafficPolicy`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: TrafficPolicySpec,
    /// Conditions written by the proxy reconciler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PolicyStatus>,
}

/// `TrafficPolicy.spec`.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[kube(
    group = "identityd.io",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    root = "TrafficPolicyCrd",
    doc = "Retries, timeouts, circuit breaking, outlier detection and local rate limiting for a Service, HTTPRoute or GRPCRoute.",
    status = "PolicyStatus",
    namespaced,
    shortname = "tp",
    category = "identityd",
    printcolumn = r#"{"name":"TargetKind","type":"string","jsonPath":".spec.targetRef.kind"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct TrafficPolicySpec {
    /// Service, HTTPRoute or GRPCRoute in the same namespace.
    pub target_ref: PolicyTargetRef,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Request timeout (duration string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Circuit breaker thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Outlier detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Local (per-Envoy) token-bucket rate limit; over budget requests get 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<LocalRateLimit>,
}

/// `spec.retries`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Number of retries (0 disables).
    #[schemars(range(min = 0, max = 100))]
    pub attempts: i64,
    /// Timeout per attempt (duration string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub per_try_timeout: Option<String>,
    /// Envoy retry-on conditions (`5xx`, `connect-failure`, `unavailable`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("items" = {"type": "string", "enum": [
        "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
        "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
        "retriable-headers", "http3-post-connect-failure", "cancelled", "deadline-exceeded",
        "internal", "resource-exhausted", "unavailable"
    ]}))]
    pub retry_on: Vec<String>,
    /// Back-off between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// `spec.retries.backoff`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    /// First back-off interval (duration string).
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub base_interval: String,
    /// Cap (duration string; Envoy's default is 10× the base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_interval: Option<String>,
}

/// `spec.circuitBreaker`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Max upstream connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4_294_967_295_i64))]
    pub max_connections: Option<i64>,
    /// Max requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4_294_967_295_i64))]
    pub max_pending_requests: Option<i64>,
    /// Max concurrent requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4_294_967_295_i64))]
    pub max_requests: Option<i64>,
    /// Max concurrent retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4_294_967_295_i64))]
    pub max_retries: Option<i64>,
}

/// `spec.outlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection.
    #[serde(
        default,
        rename = "consecutive5xx",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 4_294_967_295_i64))]
    pub consecutive_5xx: Option<i64>,
    /// Base ejection time (duration string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub base_ejection_time: Option<String>,
    /// Max % of hosts ejected (0..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<i64>,
    /// Analysis interval (duration string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
}

/// `spec.localRateLimit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRateLimit {
    /// Bucket size and tokens added per interval.
    #[schemars(range(min = 1, max = 4_294_967_295_i64))]
    pub tokens: i64,
    /// Refill interval (duration string).
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub fill_interval: String,
}

/// Retry-on values Envoy understands (HTTP and gRPC): the Envoy crate's list, one definition.
pub use identityd_envoy::l7::RETRY_ON;

/// `status` of the policy kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Conditions (`Accepted`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl TrafficPolicy {
    /// A policy object with the right apiVersion/kind.
    #[must_use]
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        spec: TrafficPolicySpec,
    ) -> Self {
        Self {
            api_version: default_api_version(),
            kind: "TrafficPolicy".into(),
            metadata: ObjectMeta::namespaced(namespace, name),
            spec,
            status: None,
        }
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        let s = &self.spec;
        s.target_ref
            .check(errs, &["Service", "HTTPRoute", "GRPCRoute", "Gateway"]);
        if let Some(r) = &s.retries {
            errs.range("spec.retries.attempts", r.attempts, 0, 100);
            if let Some(t) = &r.per_try_timeout {
                errs.positive_duration("spec.retries.perTryTimeout", t);
            }
            for (i, on) in r.retry_on.iter().enumerate() {
                if !RETRY_ON.contains(&on.as_str()) {
                    errs.push(
                        format!("spec.retries.retryOn[{i}]"),
                        on,
                        format!("must be one of {}", RETRY_ON.join(", ")),
                    );
                }
            }
            if let Some(b) = &r.backoff {
                let base =
                    errs.positive_duration("spec.retries.backoff.baseInterval", &b.base_interval);
                if let Some(m) = &b.max_interval {
                    let max = errs.positive_duration("spec.retries.backoff.maxInterval", m);
                    if let (Some(base), Some(max)) = (base, max)
                        && max < base
                    {
                        errs.push(
                            "spec.retries.backoff.maxInterval",
                            m,
                            format!("must be >= baseInterval ({})", b.base_interval),
                        );
                    }
                }
            }
        }
        if let Some(t) = &s.timeout {
            errs.duration("spec.timeout", t);
        }
        if let Some(cb) = &s.circuit_breaker {
            for (field, v) in [
                ("maxConnections", cb.max_connections),
                ("maxPendingRequests", cb.max_pending_requests),
                ("maxRequests", cb.max_requests),
                ("maxRetries", cb.max_retries),
            ] {
                if let Some(v) = v {
                    errs.range(
                        &format!("spec.circuitBreaker.{field}"),
                        v,
                        0,
                        i64::from(u32::MAX),
                    );
                }
            }
        }
        if let Some(od) = &s.outlier_detection {
            if let Some(v) = od.consecutive_5xx {
                errs.range(
                    "spec.outlierDetection.consecutive5xx",
                    v,
                    1,
                    i64::from(u32::MAX),
                );
            }
            if let Some(t) = &od.base_ejection_time {
                errs.positive_duration("spec.outlierDetection.baseEjectionTime", t);
            }
            if let Some(t) = &od.interval {
                errs.positive_duration("spec.outlierDetection.interval", t);
            }
            if let Some(p) = od.max_ejection_percent {
                errs.range("spec.outlierDetection.maxEjectionPercent", p, 0, 100);
            }
        }
        if let Some(rl) = &s.local_rate_limit {
            errs.range(
                "spec.localRateLimit.tokens",
                rl.tokens,
                1,
                i64::from(u32::MAX),
            );
            errs.positive_duration("spec.localRateLimit.fillInterval", &rl.fill_interval);
        }
        if let Some(st) = &self.status {
            validate_conditions(errs, "status.conditions", &st.conditions);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AuthorizationPolicy

/// Identity-based access rules for a Service (namespaced). Evaluation (by the proxy
/// translation): a request matching any `deny` rule is refused; otherwise, if `allow` is
/// non-empty, it must match one `allow` rule; with no `allow` rules everything not denied passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// `identityd.io/v1alpha1`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// `AuthorizationPolicy`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The rules.
    pub spec: AuthorizationPolicySpec,
    /// Conditions written by the proxy reconciler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PolicyStatus>,
}

/// `AuthorizationPolicy.spec`.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[kube(
    group = "identityd.io",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    root = "AuthorizationPolicyCrd",
    doc = "Identity-based allow/deny rules (SPIFFE IDs, namespaces, service accounts, paths, methods) for a Service.",
    status = "PolicyStatus",
    namespaced,
    shortname = "authzpol",
    category = "identityd",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct AuthorizationPolicySpec {
    /// The Service (same namespace) the rules protect.
    pub target_ref: PolicyTargetRef,
    /// Requests matching one of these are allowed (when non-empty, all others are denied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AuthorizationRule>,
    /// Requests matching one of these are denied (checked first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<AuthorizationRule>,
}

/// One rule: every present part must match (an empty list matches anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Who is calling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<RuleFrom>,
    /// What is called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<RuleTo>,
}

/// `from`: caller identities (any entry of any list matches).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// Exact SPIFFE IDs (`spiffe://td/ns/shop/sa/web`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spiffe_ids: Vec<String>,
    /// Caller namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Caller service accounts, `namespace/name` or `name` (policy's namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
}

/// `to`: request attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// Paths: exact (`/api/v1`) or prefix with a trailing `*` (`/api/*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^/[^*]*\*?$")))]
    pub paths: Vec<String>,
    /// HTTP methods (`GET`, `POST`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("items" = {"type": "string", "enum": [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"
    ]}))]
    pub methods: Vec<String>,
}

/// HTTP methods accepted in rules and route matches.
pub const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl AuthorizationPolicy {
    /// A policy object with the right apiVersion/kind.
    #[must_use]
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        spec: AuthorizationPolicySpec,
    ) -> Self {
        Self {
            api_version: default_api_version(),
            kind: "AuthorizationPolicy".into(),
            metadata: ObjectMeta::namespaced(namespace, name),
            spec,
            status: None,
        }
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        self.spec.target_ref.check(errs, &["Service"]);
        for (list, rules) in [("allow", &self.spec.allow), ("deny", &self.spec.deny)] {
            for (i, r) in rules.iter().enumerate() {
                let p = format!("spec.{list}[{i}]");
                if let Some(f) = &r.from {
                    for (j, id) in f.spiffe_ids.iter().enumerate() {
                        if let Err(e) = identityd_certs::SpiffeId::parse(id) {
                            errs.push(
                                format!("{p}.from.spiffeIds[{j}]"),
                                id,
                                format!("must be a SPIFFE ID: {e}"),
                            );
                        }
                    }
                    for (j, ns) in f.namespaces.iter().enumerate() {
                        errs.dns_subdomain(&format!("{p}.from.namespaces[{j}]"), ns);
                    }
                    for (j, sa) in f.service_accounts.iter().enumerate() {
                        let path = format!("{p}.from.serviceAccounts[{j}]");
                        let ok = match sa.split_once('/') {
                            Some((ns, name)) => {
                                super::validate::check_dns_subdomain(ns).is_ok()
                                    && super::validate::check_dns_subdomain(name).is_ok()
                            }
                            None => super::validate::check_dns_subdomain(sa).is_ok(),
                        };
                        if !ok {
                            errs.push(
                                path,
                                sa,
                                "must be NAMESPACE/NAME or NAME of a service account",
                            );
                        }
                    }
                }
                if let Some(t) = &r.to {
                    for (j, path) in t.paths.iter().enumerate() {
                        let star = path.find('*');
                        if !path.starts_with('/') || star.is_some_and(|s| s != path.len() - 1) {
                            errs.push(
                                format!("{p}.to.paths[{j}]"),
                                path,
                                "must start with '/' and may only end with '*' (prefix match)",
                            );
                        }
                    }
                    for (j, m) in t.methods.iter().enumerate() {
                        if !HTTP_METHODS.contains(&m.as_str()) {
                            errs.push(
                                format!("{p}.to.methods[{j}]"),
                                m,
                                format!("must be one of {}", HTTP_METHODS.join(", ")),
                            );
                        }
                    }
                }
            }
        }
        if let Some(st) = &self.status {
            validate_conditions(errs, "status.conditions", &st.conditions);
        }
    }
}
