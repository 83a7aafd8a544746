//! An anonymous TLS connection flood against the CA service (a separate attacker process,
//! `tls_flood.py`, 2,000 idle connections): without limits the CA holds every connection
//! until it runs out of descriptors and a node's renewal is no longer served; with the
//! default limits it holds at most `max_unauthenticated` of them (and
//! `max_unauthenticated_per_source` from one address), refuses and counts the rest, serves
//! renewals throughout, and closes the anonymous ones at the end of their lifetime.
//!
//! Its own test binary: it lowers the process's open-file limit to 1,024 (a common default
//! for a daemon), which must not reach other tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use identityd_certs::service::limits::Limits;
use identityd_certs::service::{
    CaClient, CaServer, CaServerOptions, Denied, JoinToken, WorkloadRequest, tokens,
};
use identityd_certs::{Bundle, Ca, CaOptions, Svid, TrustDomain};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const HOUR: Duration = Duration::from_secs(3600);
const FLOOD: usize = 2000;

struct Ca1 {
    dir: tempfile::TempDir,
    ca_dir: PathBuf,
    server: CaServer,
    addr: String,
    bundle: Bundle,
    _stop: oneshot::Sender<()>,
}

async fn start(limits: Limits) -> Ca1 {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let td = TrustDomain::new("lab.local").unwrap();
    let ca = Ca::init(&ca_dir, td, CaOptions::default(), SystemTime::now()).unwrap();
    let bundle = ca.bundle(SystemTime::now());
    let authorize = |_: &str, _: &WorkloadRequest| -> Result<(), Denied> { Ok(()) };
    let server = CaServer::new(
        Arc::new(Mutex::new(ca)),
        &ca_dir,
        Arc::new(authorize),
        CaServerOptions {
            limits,
            ..CaServerOptions::default()
        },
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let s = server.clone();
    tokio::spawn(async move {
        let _ = s
            .serve_with_shutdown(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    Ca1 {
        dir,
        ca_dir,
        server,
        addr,
        bundle,
        _stop: stop,
    }
}

impl Ca1 {
    async fn join(&self, node: &str) -> Svid {
        let path = self.dir.path().join(format!("{node}.token"));
        tokens::mint_to_file(&self.ca_dir, node, &path, HOUR, SystemTime::now()).unwrap();
        let tok = JoinToken::read(&path).unwrap();
        CaClient::join(&self.addr, node, &tok, &self.bundle)
            .await
            .unwrap_or_else(|e| panic!("join {node}: {e}"))
            .svid
    }

    /// A node's renewal over a new mTLS connection, given 5 s.
    async fn renew(&self, svid: &Svid) -> Result<Svid, String> {
        let attempt = async {
            let c = CaClient::connect_mtls(&self.addr, svid, &self.bundle)
                .await
                .map_err(|e| e.to_string())?;
            c.renew_node(svid).await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .unwrap_or_else(|_| Err("no answer within 5 s".to_owned()))
    }
}

/// The attacker process: `count` idle TLS connections, from many source addresses or one.
/// Returns it (holding them until killed) and how many it holds.
fn flood(addr: &str, count: usize, spread: bool) -> (Child, usize) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls_flood.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(addr).arg(count.to_string());
    if spread {
        cmd.arg("--spread");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (the attacker) must be installed: scripts/bootstrap installs it");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let held = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("attacker output: {line:?}"));
    (child, held)
}

fn refused(c: &identityd_certs::service::CounterSnapshot, reason: &str) -> u64 {
    c.connections_refused
        .iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, n)| *n)
}

/// Lowers this process's soft open-file limit with util-linux `prlimit` (this crate has no
/// unsafe code for a direct setrlimit).
fn limit_open_files(n: u64) {
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={n}:"),
        ])
        .output()
        .expect("prlimit (util-linux) must be installed");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_connection_flood_never_stops_node_renewals() {
    limit_open_files(1024);

    // Without limits: the CA accepts every connection and keeps it; it runs out of
    // descriptors and a node's renewal is no longer served (in this test the node's client
    // shares the CA's process and its limit too).
    let unlimited = Limits {
        max_connections: 1 << 20,
        max_handshakes: 1 << 20,
        max_handshakes_per_source: 1 << 20,
        max_unauthenticated: 1 << 20,
        max_unauthenticated_per_source: 1 << 20,
        unauthenticated_lifetime: HOUR,
        ..Limits::default()
    };
    let ca = start(unlimited).await;
    let node = ca.join("node-a").await;
    ca.renew(&node).await.expect("renewal before the flood");
    let (mut attacker, held) = flood(&ca.addr, FLOOD, true);
    let during = ca.renew(&node).await;
    let open = ca.server.counters().unauthenticated_connections;
    let _ = attacker.kill();
    let _ = attacker.wait();
    eprintln!("without limits: attacker holds {held}, CA has {open} open, renewal: {during:?}");
    assert!(
        held > 900 && during.is_err(),
        "without limits the flood takes the CA's descriptors and stops renewals: held {held}, renewal {during:?}"
    );
    drop(ca);

    // With the default limits (a short lifetime to see it end): renewals are served
    // throughout, the rest of the flood is refused and counted.
    let limits = Limits {
        unauthenticated_lifetime: Duration::from_secs(20),
        ..Limits::default()
    };
    let cap = limits.max_unauthenticated;
    let per_source = limits.max_unauthenticated_per_source;
    let ca = start(limits).await;
    let node = ca.join("node-a").await;
    let (mut spread, held) = flood(&ca.addr, FLOOD, true);
    let renewed = ca.renew(&node).await;
    let c = ca.server.counters();
    eprintln!(
        "with limits: attacker holds {held}, CA has {} open, refused {:?}, renewal ok: {}",
        c.unauthenticated_connections,
        c.connections_refused,
        renewed.is_ok()
    );
    assert!(renewed.is_ok(), "renewal during the flood: {renewed:?}");
    assert!(
        held <= cap && c.unauthenticated_connections <= cap as u64,
        "at most {cap} anonymous connections held: attacker {held}, CA {}",
        c.unauthenticated_connections
    );
    assert!(
        refused(&c, "unauthenticated") >= (FLOOD - cap) as u64,
        "the rest is refused and counted: {:?}",
        c.connections_refused
    );
    assert_eq!(c.node_renewals, 1, "{c:?}");

    // One source address gets no more than its share.
    let _ = spread.kill();
    let _ = spread.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut one, held_one) = flood(&ca.addr, 200, false);
    let c = ca.server.counters();
    assert!(
        held_one <= per_source && refused(&c, "per_source") >= (200 - per_source) as u64,
        "one address holds at most {per_source}: held {held_one}, refused {:?}",
        c.connections_refused
    );
    assert!(
        ca.renew(&node).await.is_ok(),
        "renewal beside one address's flood"
    );

    // Anonymous connections end with their lifetime, held or not.
    tokio::time::sleep(Duration::from_secs(21)).await;
    let c = ca.server.counters();
    let _ = one.kill();
    let _ = one.wait();
    assert_eq!(
        c.unauthenticated_connections, 0,
        "every anonymous connection was closed at the end of its lifetime"
    );
    ca.join("node-b").await;
}
