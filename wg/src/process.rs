//! Waiting for the device process to exit, for the node daemon that supervises it: a pidfd
//! (`pidfd_open`, Linux ≥ 5.3) becomes readable the moment the process exits, whether the
//! daemon started it or adopted it from a previous daemon's pid file, so a crashed device is
//! restarted at once instead of at the next poll.

use std::os::fd::{FromRawFd as _, OwnedFd};

/// Resolves when process `pid` has exited (also when it was already gone). Reaps it if it is
/// a child of this process, so no zombie stays behind.
///
/// # Errors
/// When the kernel has no `pidfd_open` (ENOSYS) or the fd cannot be registered; the caller
/// then falls back to polling.
pub async fn exited(pid: u32) -> std::io::Result<()> {
    let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            reap(raw_pid);
            return Ok(());
        }
        return Err(e);
    }
    let Ok(fd) = i32::try_from(fd) else {
        return Err(std::io::Error::from_raw_os_error(libc::EBADF));
    };
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns `owned` and nothing else closes or replaces the fd while it
    // is registered.
    #[allow(unsafe_code)]
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    }?;
    let _ready = afd.readable().await?;
    reap(raw_pid);
    Ok(())
}

/// Collects the exit status of `pid` if it is this process's child (ECHILD otherwise, ignored).
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a local; WNOHANG never blocks.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_when_a_child_exits_and_reaps_it() {
        let child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("sleep runs");
        let pid = child.id();
        let t = std::time::Instant::now();
        tokio::time::timeout(std::time::Duration::from_secs(5), exited(pid))
            .await
            .expect("exit seen within 5 s")
            .expect("pidfd works");
        assert!(t.elapsed() >= std::time::Duration::from_millis(150));
        // Reaped: no zombie stays behind.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!stat.contains(") Z "), "zombie left: {stat}");
        drop(child);
    }

    #[tokio::test]
    async fn a_process_that_is_gone_resolves_at_once() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let pid = child.id();
        child.wait().expect("waited");
        tokio::time::timeout(std::time::Duration::from_secs(1), exited(pid))
            .await
            .expect("resolves at once")
            .expect("no error");
    }
}
