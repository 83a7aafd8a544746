//! A Linux TUN interface opened with raw ioctls: `IFF_TUN | IFF_NO_PI`, optionally persistent
//! (`TUNSETPERSIST`) so the interface and its routes outlive the process.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;

/// Errors opening or configuring a TUN device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunError {
    /// `/dev/net/tun` could not be opened.
    #[error("open /dev/net/tun (is the tun module loaded, and are we root?)")]
    Open(#[source] std::io::Error),
    /// An ioctl failed.
    #[error("interface {name}: ioctl {op}")]
    Ioctl {
        /// The interface.
        name: String,
        /// Which ioctl.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
const TUN_F_TSO_ECN: libc::c_ulong = 0x08;
const TUN_F_USO4: libc::c_ulong = 0x20;
const TUN_F_USO6: libc::c_ulong = 0x40;
/// A `virtio_net_hdr` saying "plain packet, checksum complete".
const PLAIN_VNET_HDR: [u8; crate::offload::VNET_HDR_LEN] = [0; crate::offload::VNET_HDR_LEN];

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN interface. Reads and writes are whole IP packets.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
    vnet: bool,
    uso: bool,
}

impl Tun {
    /// Creates (or attaches to an existing persistent) TUN interface `name`. With `persist`,
    /// the interface stays after the process exits, so routes through it stay too and
    /// packets are dropped rather than re-routed while the daemon restarts. With `offload`,
    /// every read and write carries a `virtio_net_hdr` and the kernel may hand over TCP
    /// segmentation-offload super-packets and partial checksums (see [`crate::offload`]).
    ///
    /// # Errors
    /// When `/dev/net/tun` cannot be opened or an ioctl fails.
    pub fn open(name: &str, persist: bool, offload: bool) -> Result<Self, TunError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TunError::Open)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI | if offload { IFF_VNET_HDR } else { 0 },
            _pad: [0; 22],
        };
        let n = name.len().min(libc::IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        let ioctl_err = |op| TunError::Ioctl {
            name: name.to_owned(),
            op,
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: `file` is an open /dev/net/tun fd and `req` is a properly sized, initialised
        // `struct ifreq` that outlives the call; the kernel writes only within it.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &raw mut req) };
        if rc < 0 {
            return Err(ioctl_err("TUNSETIFF"));
        }
        if persist {
            // SAFETY: TUNSETPERSIST takes an integer argument, no pointers.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) };
            if rc < 0 {
                return Err(ioctl_err("TUNSETPERSIST"));
            }
        }
        // Always set the offload features: they belong to the (possibly persistent) device, so
        // a previous instance's TSO setting must not outlive a restart without offload.
        let set = |features: libc::c_ulong| {
            // SAFETY: TUNSETOFFLOAD takes an integer argument, no pointers.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, features) };
            rc
        };
        let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        // UDP segmentation offload (Linux ≥ 6.2) first; older kernels refuse the flags.
        let uso = offload && set(tso | TUN_F_USO4 | TUN_F_USO6) == 0;
        let rc = if uso {
            0
        } else {
            set(if offload { tso } else { 0 })
        };
        if rc < 0 {
            if !offload {
                return Err(ioctl_err("TUNSETOFFLOAD(0)"));
            }
            // Reads still carry a vnet header (all plain packets); only speed is lost.
            tracing::warn!(interface = name, error = %std::io::Error::last_os_error(), "TUNSETOFFLOAD failed; no segmentation offload");
        }
        let len = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(libc::IFNAMSIZ);
        Ok(Self {
            file,
            name: String::from_utf8_lossy(&req.name[..len]).into_owned(),
            vnet: offload,
            uso,
        })
    }

    /// Whether the kernel hands over UDP segmentation-offload packets too (TUN USO).
    #[must_use]
    pub fn has_uso(&self) -> bool {
        self.uso
    }

    /// The interface name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether reads and writes carry a `virtio_net_hdr` (offload mode).
    #[must_use]
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet
    }

    /// Reads one packet into `buf` (preceded by a `virtio_net_hdr` in offload mode).
    ///
    /// # Errors
    /// I/O errors from the TUN fd.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one IP packet (a plain vnet header is added in offload mode).
    ///
    /// # Errors
    /// I/O errors from the TUN fd.
    pub fn write(&self, pkt: &[u8]) -> std::io::Result<usize> {
        if self.vnet {
            (&self.file).write_vectored(&[IoSlice::new(&PLAIN_VNET_HDR), IoSlice::new(pkt)])
        } else {
            (&self.file).write(pkt)
        }
    }

    /// Writes one IP packet behind the given vnet header (offload mode only; a coalesced
    /// packet from [`crate::gro`]).
    ///
    /// # Errors
    /// I/O errors from the TUN fd.
    pub fn write_with_hdr(
        &self,
        hdr: &[u8; crate::offload::VNET_HDR_LEN],
        pkt: &[u8],
    ) -> std::io::Result<usize> {
        if self.vnet {
            (&self.file).write_vectored(&[IoSlice::new(hdr), IoSlice::new(pkt)])
        } else {
            (&self.file).write(pkt)
        }
    }

    /// Clears the persistent flag, so the interface goes away when the last fd closes.
    ///
    /// # Errors
    /// When the ioctl fails.
    pub fn unpersist(&self) -> Result<(), TunError> {
        // SAFETY: TUNSETPERSIST takes an integer argument, no pointers.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETPERSIST, 0 as libc::c_ulong) };
        if rc < 0 {
            return Err(TunError::Ioctl {
                name: self.name.clone(),
                op: "TUNSETPERSIST(0)",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}
