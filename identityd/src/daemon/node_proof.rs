//! Authentic node objects: a node signs what it publishes about itself, peers configure only
//! what verifies and keep the last version they verified.
//!
//! The proof (`IdentitydNode.spec.proof`) is an ECDSA signature by the node's own node SVID
//! (`spiffe://<td>/identityd/node/<name>`, issued by the CA after the node joined) over a
//! canonical encoding of the object's name, a generation, and every field peers act on: pod
//! CIDRs, underlay addresses, the WireGuard key(s) and port, the IPsec key epoch.
//!
//! - [`ProofSigner`] (the publishing node): signs when the content or its node SVID changed,
//!   with a generation above every earlier one (persisted, 0600, atomic).
//! - [`VerifiedNodes`] (every peer): verifies each object once, on acceptance, against the
//!   live trust bundle; keeps the last verified version per node, also across restarts
//!   (`<stateDir>/verified-nodes.json`), so a CA outage, an expired node SVID or an unsigned or
//!   older object written over a good one never unconfigures the node it names. A node whose
//!   object is deleted is forgotten (removal, as for Kubernetes nodes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use identityd_certs::fsutil::write_atomic;
use identityd_certs::{Bundle, Svid, TrustDomain};
use serde::{Deserialize, Serialize};

use crate::model::identityd::NodeProof;
use crate::model::{ClusterState, IdentitydNode, IdentitydNodeSpec};

/// The context label at the start of every signed encoding (domain separation).
pub const PROOF_CONTEXT: &str = "identityd node proof v1";

/// The canonical encoding the signature covers: the context label, a NUL, then JSON with a
/// fixed field order (`proof` itself excluded).
#[must_use]
pub fn canonical(name: &str, spec: &IdentitydNodeSpec, generation: i64) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Wg<'a> {
        public_key: &'a str,
        port: i64,
        next_public_key: Option<&'a str>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Content<'a> {
        name: &'a str,
        generation: i64,
        #[serde(rename = "podCIDRs")]
        pod_cidrs: &'a [String],
        underlay_addresses: &'a [String],
        wireguard: Option<Wg<'a>>,
        ipsec_key_epoch: Option<i64>,
    }
    let content = Content {
        name,
        generation,
        pod_cidrs: &spec.pod_cidrs,
        underlay_addresses: &spec.underlay_addresses,
        wireguard: spec.wireguard.as_ref().map(|w| Wg {
            public_key: &w.public_key,
            port: w.port,
            next_public_key: w.next_public_key.as_deref(),
        }),
        ipsec_key_epoch: spec.ipsec.as_ref().map(|i| i.key_epoch),
    };
    let mut out = PROOF_CONTEXT.as_bytes().to_vec();
    out.push(0);
    out.extend(serde_json::to_vec(&content).unwrap_or_default());
    out
}

/// Why an object's proof was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The object carries no proof.
    #[error("spec.proof is missing")]
    Missing,
    /// A proof field cannot be read.
    #[error("spec.proof.{field}: {reason}")]
    Malformed {
        /// The field (`certificateChain`, `signature`, `generation`).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The signer is another identity than this node's.
    #[error("spec.proof.certificateChain: signed by {signer}, not by {expected}")]
    WrongSigner {
        /// The identity the object needs.
        expected: String,
        /// The identity that signed.
        signer: String,
    },
    /// The signature or the chain does not verify.
    #[error("spec.proof: {0}")]
    Signature(#[from] identityd_certs::signed::SignedError),
    /// No trust bundle to verify against.
    #[error("no trust bundle to verify proofs against")]
    NoBundle,
}

/// Verifies `node`'s proof against `bundle` at `now`; returns its generation.
///
/// # Errors
/// [`ProofError`]: missing, unreadable, another signer, or a signature/chain that fails.
pub fn verify(
    node: &IdentitydNode,
    td: &TrustDomain,
    bundle: &Bundle,
    now: SystemTime,
) -> Result<i64, ProofError> {
    let proof = node.spec.proof.as_ref().ok_or(ProofError::Missing)?;
    if proof.generation < 1 {
        return Err(ProofError::Malformed {
            field: "generation",
            reason: format!("{} is not positive", proof.generation),
        });
    }
    let chain = identityd_certs::bundle::certs_from_pem(&proof.certificate_chain).map_err(|e| {
        ProofError::Malformed {
            field: "certificateChain",
            reason: e.to_string(),
        }
    })?;
    let signature = B64
        .decode(proof.signature.trim())
        .map_err(|e| ProofError::Malformed {
            field: "signature",
            reason: format!("not base64: {e}"),
        })?;
    let name = &node.metadata.name;
    let expected =
        identityd_certs::service::node_id(td, name).map_err(|e| ProofError::Malformed {
            field: "certificateChain",
            reason: format!("no node identity for the name {name:?}: {e}"),
        })?;
    let message = canonical(name, &node.spec, proof.generation);
    let signer = identityd_certs::signed::verify(&chain, bundle, now, &message, &signature)?;
    if signer != expected {
        return Err(ProofError::WrongSigner {
            expected: expected.to_string(),
            signer: signer.to_string(),
        });
    }
    Ok(proof.generation)
}

/// Signs `spec` (its `proof` ignored) as node `name` with `svid` at `generation`.
///
/// # Errors
/// The signing key cannot be used.
pub fn sign(
    name: &str,
    spec: &IdentitydNodeSpec,
    generation: i64,
    svid: &Svid,
) -> Result<NodeProof, identityd_certs::Error> {
    let sig = identityd_certs::signed::sign(svid, &canonical(name, spec, generation))?;
    Ok(NodeProof {
        generation,
        certificate_chain: svid.chain_pem(),
        signature: B64.encode(sig),
    })
}

/// The publishing side: keeps one proof per content and node SVID.
#[derive(Debug)]
pub struct ProofSigner {
    name: String,
    svid_dir: PathBuf,
    generation_file: PathBuf,
    /// The node SVID last read (and its directory's modification time).
    svid: Option<(SystemTime, Svid)>,
    /// The content (encoded at generation 0) and leaf of the last proof, and the proof.
    last: Option<(Vec<u8>, Vec<u8>, NodeProof)>,
    /// Why the last attempt made no proof (logged once per reason).
    last_error: Option<String>,
}

impl ProofSigner {
    /// A signer for node `name` with its node SVID in `<stateDir>/node-svid` and its
    /// generation in `<stateDir>/node-proof-generation`.
    #[must_use]
    pub fn new(name: &str, state_dir: &Path) -> Self {
        Self {
            name: name.to_owned(),
            svid_dir: state_dir.join("node-svid"),
            generation_file: state_dir.join("node-proof-generation"),
            svid: None,
            last: None,
            last_error: None,
        }
    }

    fn current_svid(&mut self, now: SystemTime) -> Option<&Svid> {
        let mtime = std::fs::metadata(self.svid_dir.join("svid.pem"))
            .or_else(|_| std::fs::metadata(&self.svid_dir))
            .and_then(|m| m.modified())
            .ok();
        if mtime.is_some() && self.svid.as_ref().map(|(t, _)| Some(*t)) != Some(mtime) {
            self.svid = Svid::read_from_dir(&self.svid_dir)
                .ok()
                .map(|s| (mtime.unwrap_or(now), s));
        }
        self.svid
            .as_ref()
            .map(|(_, s)| s)
            .filter(|s| s.not_after() > now)
    }

    /// The proof for `spec`: the last one when neither the content nor the node SVID changed,
    /// else a new signature at a new generation. `None` while the node has no valid node SVID
    /// (it has not joined the CA yet): the object is published unsigned and peers do not
    /// configure it until it is signed.
    pub fn proof_for(&mut self, spec: &IdentitydNodeSpec, now: SystemTime) -> Option<NodeProof> {
        let content = canonical(&self.name, spec, 0);
        let Some(svid) = self.current_svid(now).cloned() else {
            // The same content keeps its proof (peers that verified it keep it; a node SVID
            // being renewed or expired changes nothing they act on).
            if let Some((c, _, p)) = &self.last
                && *c == content
            {
                return Some(p.clone());
            }
            self.note_error("no valid node SVID yet (the node has not joined the CA)");
            return None;
        };
        let leaf = svid.leaf().as_ref().to_vec();
        if let Some((c, l, p)) = &self.last
            && *c == content
            && *l == leaf
        {
            return Some(p.clone());
        }
        let previous = std::fs::read_to_string(&self.generation_file)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0)
            .max(self.last.as_ref().map_or(0, |(_, _, p)| p.generation));
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let generation = now_ms.max(previous.saturating_add(1));
        // The generation is on disk before any object carries it: a restart never signs an
        // older one.
        if let Err(e) = write_atomic(
            &self.generation_file,
            generation.to_string().as_bytes(),
            0o600,
        ) {
            self.note_error(&format!("{}: {e}", self.generation_file.display()));
            return self.last.as_ref().map(|(_, _, p)| p.clone());
        }
        match sign(&self.name, spec, generation, &svid) {
            Ok(p) => {
                tracing::info!(generation, "IdentitydNode signed with the node SVID");
                self.last = Some((content, leaf, p.clone()));
                self.last_error = None;
                Some(p)
            }
            Err(e) => {
                self.note_error(&format!("signing: {e}"));
                None
            }
        }
    }

    fn note_error(&mut self, e: &str) {
        if self.last_error.as_deref() != Some(e) {
            tracing::warn!(error = %e, "IdentitydNode published without a proof");
            self.last_error = Some(e.to_owned());
        }
    }
}

/// One node's last verified version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Verified {
    generation: i64,
    node: IdentitydNode,
}

/// The verifying side: the last verified version of every other node.
#[derive(Debug, Default)]
pub struct VerifiedNodes {
    by_name: BTreeMap<String, Verified>,
    file: Option<PathBuf>,
    /// Problems of the latest refresh, by node.
    problems: BTreeMap<String, String>,
    /// The cluster state version and verified set the cached view was made from.
    view: Option<(u64, u64, std::sync::Arc<ClusterState>)>,
    /// Bumped whenever `by_name` changes.
    epoch: u64,
}

impl VerifiedNodes {
    /// Loads the verified set kept in `file` (absent or unreadable: empty, with a warning).
    #[must_use]
    pub fn load(file: PathBuf) -> Self {
        let by_name = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "unreadable verified-nodes file; starting empty");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Self {
            by_name,
            file: Some(file),
            ..Self::default()
        }
    }

    /// Verifies every other node's object in `state` that is not already the verified version,
    /// keeps what verifies (a newer generation replaces an older one), and forgets nodes whose
    /// objects are gone. Returns whether the verified set changed.
    pub fn refresh(
        &mut self,
        state: &ClusterState,
        own: &str,
        td: &TrustDomain,
        bundle: Option<&Bundle>,
        now: SystemTime,
    ) -> bool {
        let mut changed = false;
        self.problems.clear();
        let before = self.by_name.len();
        self.by_name.retain(|n, _| state.nodes.contains_key(n));
        changed |= self.by_name.len() != before;
        for (name, node) in &state.nodes {
            if name == own {
                continue;
            }
            let kept = self.by_name.get(name);
            if kept.is_some_and(|v| v.node.spec == node.spec) {
                // The verified version itself (status changes need no new proof).
                if kept.is_some_and(|v| v.node != *node) {
                    let v = self.by_name.get_mut(name).expect("present");
                    v.node = node.clone();
                    changed = true;
                }
                continue;
            }
            let result = bundle
                .ok_or(ProofError::NoBundle)
                .and_then(|b| verify(node, td, b, now));
            let keeping = kept.map_or_else(
                || "the node is not configured".to_owned(),
                |v| {
                    format!(
                        "keeping the last verified version (generation {})",
                        v.generation
                    )
                },
            );
            match result {
                Ok(g) if kept.is_none_or(|v| g > v.generation) => {
                    self.by_name.insert(
                        name.clone(),
                        Verified {
                            generation: g,
                            node: node.clone(),
                        },
                    );
                    changed = true;
                }
                Ok(g) => {
                    self.problems.insert(
                        name.clone(),
                        format!(
                            "IdentitydNode {name}: spec.proof.generation={g} is not newer than the \
                             verified generation {} (a replayed object?); {keeping}",
                            kept.map_or(0, |v| v.generation)
                        ),
                    );
                }
                Err(e) => {
                    self.problems.insert(
                        name.clone(),
                        format!("IdentitydNode {name}: {e}; {keeping}"),
                    );
                }
            }
        }
        if changed {
            self.epoch += 1;
            self.save();
        }
        changed
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        match serde_json::to_vec(&self.by_name) {
            Ok(json) => {
                if let Err(e) = write_atomic(file, &json, 0o600) {
                    tracing::warn!(file = %file.display(), error = %e, "saving the verified nodes");
                }
            }
            Err(e) => tracing::warn!(error = %e, "encoding the verified nodes"),
        }
    }

    /// Why objects were not accepted in the latest refresh, one line per node.
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        self.problems.values().cloned().collect()
    }

    /// `state` with every other node's object replaced by its last verified version (nodes
    /// never verified left out); this node's own object as it is. Cached per state version and
    /// verified set.
    pub fn view(
        &mut self,
        state: &std::sync::Arc<ClusterState>,
        own: &str,
    ) -> std::sync::Arc<ClusterState> {
        if let Some((v, e, s)) = &self.view
            && *v == state.version()
            && *e == self.epoch
        {
            return std::sync::Arc::clone(s);
        }
        let mut s = ClusterState::clone(state);
        s.nodes = state
            .nodes
            .iter()
            .filter_map(|(n, node)| {
                if n == own {
                    return Some((n.clone(), node.clone()));
                }
                self.by_name.get(n).map(|v| (n.clone(), v.node.clone()))
            })
            .collect();
        let s = std::sync::Arc::new(s);
        self.view = Some((state.version(), self.epoch, std::sync::Arc::clone(&s)));
        s
    }

    /// The verified generation of `node`, if any.
    #[must_use]
    pub fn generation(&self, node: &str) -> Option<i64> {
        self.by_name.get(node).map(|v| v.generation)
    }
}

#[cfg(test)]
mod tests;
