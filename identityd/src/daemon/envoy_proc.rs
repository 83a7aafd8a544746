//! Supervision of the node's Envoy: started by the daemon, restarted when it dies, left
//! running on shutdown and re-adopted by the next daemon (through `<runDir>/envoy.pid`; it
//! reconnects to the new xDS socket), probed on its loopback admin `/ready`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::daemon::config::DaemonConfig;

pub use identityd_envoy::ENVOY_ARGS;

/// Why Envoy could not be started.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EnvoyError {
    /// The log file.
    #[error("{path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// The binary did not start.
    #[error("starting Envoy {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The I/O error.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
}

/// The node's Envoy process.
#[derive(Debug)]
pub struct EnvoyProcess {
    child: Option<Child>,
    /// An Envoy left running by a previous daemon.
    adopted: Option<u32>,
    pid_file: PathBuf,
    bootstrap: PathBuf,
    binary: PathBuf,
    log: PathBuf,
    admin: PathBuf,
    /// Restarts after Envoy died.
    pub restarts: u32,
}

fn cmdline_has_envoy(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("envoy"))
}

impl EnvoyProcess {
    /// The Envoy of `cfg` (binary, admin socket) with bootstrap `bootstrap`; adopts the one a
    /// previous daemon recorded in `envoy.pid` if it still runs.
    #[must_use]
    pub fn new(cfg: &DaemonConfig, binary: &Path, admin: PathBuf, bootstrap: PathBuf) -> Self {
        let pid_file = cfg.run_dir.join("envoy.pid");
        let adopted = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|pid| cmdline_has_envoy(*pid));
        if let Some(pid) = adopted {
            tracing::info!(pid, "adopting the running Envoy");
        }
        Self {
            child: None,
            adopted,
            pid_file,
            bootstrap,
            binary: binary.to_owned(),
            log: cfg.run_dir.join("envoy.log"),
            admin,
            restarts: 0,
        }
    }

    fn alive(&mut self) -> bool {
        let child = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        child
            || self.adopted.is_some_and(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
            })
    }

    /// Starts Envoy unless it runs; a start after it died counts as a restart. Returns whether
    /// it was (re)started.
    ///
    /// # Errors
    /// When the log cannot be opened or the binary does not start.
    pub fn ensure_running(&mut self) -> Result<bool, EnvoyError> {
        if self.alive() {
            return Ok(false);
        }
        let restarting = self.child.is_some() || self.adopted.is_some();
        self.adopted = None;
        self.child = None;
        // A dead Envoy leaves its admin socket behind; the new one binds a fresh one.
        let _ = std::fs::remove_file(&self.admin);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| EnvoyError::Log {
                path: self.log.clone(),
                source: e.into(),
            })?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.bootstrap)
            .args(ENVOY_ARGS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| EnvoyError::Spawn {
                binary: self.binary.clone(),
                source: e.into(),
            })?;
        tracing::info!(pid = child.id(), restarting, "Envoy started");
        let _ = std::fs::write(&self.pid_file, child.id().to_string());
        self.child = Some(child);
        if restarting {
            self.restarts += 1;
        }
        Ok(true)
    }

    /// Envoy's pid, if one is running or adopted.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id).or(self.adopted)
    }

    /// Asks Envoy's admin `/ready` (its unix socket); `true` when it answers `LIVE` within
    /// 500 ms.
    pub async fn ready(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let probe = async {
            let mut s = tokio::net::UnixStream::connect(&self.admin).await.ok()?;
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            Some(String::from_utf8_lossy(&buf).contains("LIVE"))
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), probe).await,
            Ok(Some(true))
        )
    }

    /// On shutdown Envoy keeps running with its last configuration (no gap); the next daemon
    /// re-adopts it.
    pub fn leave_running(&mut self) {
        if let Some(c) = self.child.take() {
            tracing::info!(pid = c.id(), "leaving Envoy running for the next daemon");
        }
    }
}
