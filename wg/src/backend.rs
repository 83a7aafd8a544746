//! Backends behind one trait: the userspace device (boringtun over TUN, the tested path) and
//! the kernel WireGuard module, chosen only when the module exists.
//!
//! The kernel backend is detection only: on a kernel with the module it reports that kernel
//! configuration is not built yet; on a kernel without it (these machines) it says so. It never
//! pretends to work.

use std::collections::BTreeMap;
use std::path::Path;

use rtnetlink::LinkWireguard;

use crate::device::{ApplyReport, Device};
use crate::key::PublicKey;
use crate::plan::PeerConfig;
use crate::routes::Netlink;
use crate::uapi::PeerStatus;

/// Why a backend cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// This kernel has no WireGuard module.
    #[error(
        "kernel WireGuard is not available: {evidence}; use the userspace backend (boringtun over TUN)"
    )]
    KernelModuleMissing {
        /// What was checked and what it answered.
        evidence: String,
    },
    /// The module exists, but identityd does not configure kernel WireGuard yet.
    #[error(
        "kernel WireGuard module is present but identityd's kernel backend (generic-netlink configuration) is not built yet; use the userspace backend"
    )]
    KernelBackendNotBuilt,
}

/// What a WireGuard backend offers the node daemon.
pub trait WireGuardBackend: Send + Sync {
    /// The interface name.
    fn interface(&self) -> &str;
    /// The node's public key as configured in the backend.
    fn public_key(&self) -> PublicKey;
    /// Makes the peers equal to `desired`, changing only what differs.
    fn apply_peers(&self, desired: &BTreeMap<PublicKey, PeerConfig>) -> ApplyReport;
    /// Live peer state.
    fn peer_status(&self) -> Vec<PeerStatus>;
}

impl WireGuardBackend for Device {
    fn interface(&self) -> &str {
        Device::interface(self)
    }
    fn public_key(&self) -> PublicKey {
        Device::public_key(self)
    }
    fn apply_peers(&self, desired: &BTreeMap<PublicKey, PeerConfig>) -> ApplyReport {
        Device::apply_peers(self, desired)
    }
    fn peer_status(&self) -> Vec<PeerStatus> {
        Device::peer_status(self)
    }
}

/// Where `/sys/module/wireguard` would be when the module is loaded or built in.
pub const SYS_MODULE: &str = "/sys/module/wireguard";

/// Checks for kernel WireGuard without side effects: `/sys/module/wireguard`.
///
/// # Errors
/// [`BackendError::KernelModuleMissing`] naming what was checked.
pub fn kernel_module_present() -> Result<(), BackendError> {
    if Path::new(SYS_MODULE).exists() {
        Ok(())
    } else {
        Err(BackendError::KernelModuleMissing {
            evidence: format!("{SYS_MODULE} does not exist"),
        })
    }
}

/// Asks the kernel directly: creates (and deletes) a link of kind `wireguard` named `probe`
/// in the current network namespace. This also catches a module that would be auto-loaded.
/// Needs `CAP_NET_ADMIN` and a Tokio runtime.
///
/// # Errors
/// [`BackendError::KernelModuleMissing`] with the kernel's answer.
pub async fn probe_kernel(nl: &Netlink, probe: &str) -> Result<(), BackendError> {
    let h = nl.handle();
    match h
        .link()
        .add(LinkWireguard::new(probe).build())
        .execute()
        .await
    {
        Ok(()) => {
            if let Ok((index, _, _)) = nl.link(probe).await {
                let _ = h.link().del(index).execute().await;
            }
            Ok(())
        }
        Err(e) => Err(BackendError::KernelModuleMissing {
            evidence: format!("RTM_NEWLINK kind=wireguard answered: {e}"),
        }),
    }
}

/// Which backend to use for a requested mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendMode {
    /// Kernel when present and supported, otherwise userspace.
    #[default]
    Auto,
    /// Always the userspace device.
    Userspace,
    /// The kernel module; an error when it is missing.
    Kernel,
}

/// Resolves `mode` to a backend choice; `Ok(())` means "use the userspace device".
///
/// # Errors
/// For [`BackendMode::Kernel`]: why kernel WireGuard cannot be used here.
pub fn choose(mode: BackendMode) -> Result<(), BackendError> {
    match mode {
        BackendMode::Userspace | BackendMode::Auto => Ok(()),
        BackendMode::Kernel => {
            kernel_module_present()?;
            Err(BackendError::KernelBackendNotBuilt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_mode_says_why_it_cannot_run_here() {
        let e = choose(BackendMode::Kernel).unwrap_err();
        if Path::new(SYS_MODULE).exists() {
            assert_eq!(e, BackendError::KernelBackendNotBuilt);
        } else {
            assert!(
                e.to_string()
                    .contains("/sys/module/wireguard does not exist"),
                "{e}"
            );
        }
        assert_eq!(choose(BackendMode::Auto), Ok(()));
    }
}
