//! Starting a real Envoy (from the project venv) for tests, and talking to its admin API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools;

/// A running Envoy; killed on drop. Its admin API listens on loopback.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    admin: String,
    dir: PathBuf,
}

impl Envoy {
    /// Starts Envoy with the given bootstrap YAML (which must configure `admin` on
    /// `127.0.0.1` port 0, see [`Envoy::minimal_bootstrap`]) and waits for its admin address.
    #[must_use]
    pub fn start(dir: &Path, bootstrap_yaml: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let cfg = dir.join("envoy.yaml");
        let admin_path = dir.join("admin-address");
        let _ = std::fs::remove_file(&admin_path);
        std::fs::write(&cfg, bootstrap_yaml)
            .unwrap_or_else(|e| panic!("write {}: {e}", cfg.display()));
        let log = std::fs::File::create(dir.join("envoy.log")).expect("create envoy.log");
        let child = Command::new(tools::envoy())
            .arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(identityd_envoy::ENVOY_ARGS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start envoy {}: {e}", tools::envoy().display()));
        let mut me = Self {
            child,
            admin: String::new(),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = std::fs::read_to_string(&admin_path)
                && !s.trim().is_empty()
            {
                me.admin = s.trim().to_owned();
                break;
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("envoy exited early ({status}); log:\n{}", me.log());
            }
            assert!(
                Instant::now() < deadline,
                "envoy wrote no admin address in 20s; log:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// A bootstrap with only an admin listener on an ephemeral loopback port.
    #[must_use]
    pub fn minimal_bootstrap(node_id: &str) -> String {
        format!(
            "node: {{ id: {node_id}, cluster: identityd-test }}\n\
             admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n"
        )
    }

    /// The admin API address (`127.0.0.1:PORT`).
    #[must_use]
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// Envoy's stderr so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// GET `path` on the admin API; returns (status, body).
    #[must_use]
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path)
    }

    /// Polls `/ready` until it answers `LIVE` (or panics after `timeout`).
    pub fn wait_live(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.admin_get("/ready");
            if status == 200 && body.trim() == "LIVE" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "envoy not LIVE after {timeout:?}: {status} {body}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET (no keep-alive); returns (status, body). Status 0 when the
/// connection fails.
#[must_use]
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (status, String::new());
    };
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

/// Decodes an HTTP/1.1 chunked body (enough for admin and test servers).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}
