//! A Linux TUN interface opened with raw ioctls: `IFF_TUN | IFF_NO_PI`, optionally persistent
//! (`TUNSETPERSIST`) so the interface and its routes outlive the process.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
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
}

impl Tun {
    /// Creates (or attaches to an existing persistent) TUN interface `name`. With `persist`,
    /// the interface stays after the process exits, so routes through it stay too and
    /// packets are dropped rather than re-routed while the daemon restarts.
    ///
    /// # Errors
    /// When `/dev/net/tun` cannot be opened or an ioctl fails.
    pub fn open(name: &str, persist: bool) -> Result<Self, TunError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TunError::Open)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
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
        let len = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(libc::IFNAMSIZ);
        Ok(Self {
            file,
            name: String::from_utf8_lossy(&req.name[..len]).into_owned(),
        })
    }

    /// The interface name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet into `buf`.
    ///
    /// # Errors
    /// I/O errors from the TUN fd.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet.
    ///
    /// # Errors
    /// I/O errors from the TUN fd.
    pub fn write(&self, pkt: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(pkt)
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
