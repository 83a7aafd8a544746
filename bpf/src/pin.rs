//! bpffs and interface helpers: the pin directory (mounting bpffs on `/sys/fs/bpf` when the
//! machine has not), interface indexes in the calling thread's network namespace.

use std::ffi::CString;
use std::path::Path;

use crate::Error;

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted by convention.
pub const BPFFS: &str = "/sys/fs/bpf";

fn io(op: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Io { op, source }
}

fn cstr(p: &Path) -> Result<CString, Error> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Io {
        op: "converting a path",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"),
    })
}

/// Whether `p` (which must exist) is on a bpf filesystem.
///
/// # Errors
/// When `statfs` fails.
pub fn is_bpffs(p: &Path) -> Result<bool, Error> {
    let c = cstr(p)?;
    // SAFETY: an all-zero `statfs` is a valid value of this plain C struct.
    #[allow(unsafe_code)]
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statfs that outlives
    // the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    if rc != 0 {
        return Err(io("statfs")(std::io::Error::last_os_error()));
    }
    #[allow(clippy::useless_conversion)]
    // Reason: f_type is i64 or u32 depending on the libc target.
    Ok(i64::from(st.f_type) == BPF_FS_MAGIC)
}

/// Makes sure bpffs is mounted on `/sys/fs/bpf` (mounting it when it is not).
///
/// # Errors
/// When the mount fails (no `CAP_SYS_ADMIN`).
pub fn ensure_bpffs() -> Result<(), Error> {
    let root = Path::new(BPFFS);
    if root.exists() && is_bpffs(root)? {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(io("creating /sys/fs/bpf"))?;
    let target = cstr(root)?;
    let fstype = CString::new("bpf").unwrap_or_default();
    let opts = CString::new("mode=0700").unwrap_or_default();
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io("mounting bpffs on /sys/fs/bpf")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Creates `dir` (and its parents) on bpffs, mounting bpffs on `/sys/fs/bpf` first when `dir`
/// is below it and it is not mounted.
///
/// # Errors
/// When bpffs cannot be mounted, the directory cannot be created, or it is not on bpffs.
pub fn ensure_dir(dir: &Path) -> Result<(), Error> {
    if dir.starts_with(BPFFS) {
        ensure_bpffs()?;
    }
    std::fs::create_dir_all(dir).map_err(io("creating the pin directory"))?;
    if !is_bpffs(dir)? {
        return Err(Error::Io {
            op: "checking the pin directory",
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not on a bpf filesystem", dir.display()),
            ),
        });
    }
    Ok(())
}

/// Removes one pin (a link pin: the link detaches once no fd holds it).
///
/// # Errors
/// When it exists and cannot be removed.
pub fn remove_file(p: &Path) -> Result<(), Error> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing a pin")(e)),
    }
}

/// Removes a pin directory and everything pinned in it.
///
/// # Errors
/// When it exists and cannot be removed.
pub fn remove_tree(p: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing a pin directory")(e)),
    }
}

/// The index of interface `name` in the calling thread's network namespace.
///
/// # Errors
/// When there is no such interface.
pub fn ifindex(name: &str) -> Result<u32, Error> {
    let c = CString::new(name).map_err(|_| Error::Io {
        op: "interface name",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "contains NUL"),
    })?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    #[allow(unsafe_code)]
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(Error::Io {
            op: "looking up the interface",
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no interface `{name}` in this network namespace"),
            ),
        });
    }
    Ok(idx)
}
