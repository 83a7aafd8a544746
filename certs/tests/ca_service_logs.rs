//! The CA issuance service's logs name nodes, pods and reasons, and never contain a join
//! token or key material; `Debug` of every key or token holder is redacted. (Its own test
//! binary: a global `tracing` subscriber sees every thread, scoped ones race with callsite
//! caching when other tests run in parallel.)

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use identityd_certs::service::{
    CaClient, CaServer, CaServerOptions, Denied, JoinToken, WorkloadRequest, tokens,
};
use identityd_certs::{Ca, CaOptions, SpiffeId, TrustDomain};
use tokio::net::TcpListener;

const HOUR: Duration = Duration::from_secs(3600);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_name_nodes_and_reasons_but_never_tokens_or_keys() {
    let buf = Buf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca_dir: PathBuf = dir.path().join("ca");
    let td = TrustDomain::new("lab.local").unwrap();
    let ca = Ca::init(&ca_dir, td.clone(), CaOptions::default(), SystemTime::now()).unwrap();
    let bundle = ca.bundle(SystemTime::now());
    let authz = move |node: &str, req: &WorkloadRequest| {
        if node == "node-a" && req.pod_name == "web-1" {
            Ok(())
        } else {
            Err(Denied(format!(
                "pod {}/{} is scheduled on node node-b",
                req.pod_namespace, req.pod_name
            )))
        }
    };
    let server = CaServer::new(
        Arc::new(Mutex::new(ca)),
        &ca_dir,
        Arc::new(authz),
        CaServerOptions::default(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await.unwrap() });

    let tok_path = dir.path().join("node-a.token");
    tokens::mint_to_file(&ca_dir, "node-a", &tok_path, HOUR, SystemTime::now()).unwrap();
    let tok = JoinToken::read(&tok_path).unwrap();
    let joined = CaClient::join(&addr, "node-a", &tok, &bundle)
        .await
        .unwrap();
    let _ = CaClient::join(&addr, "node-a", &tok, &bundle).await;
    let client = CaClient::connect_mtls(&addr, &joined.svid, &bundle)
        .await
        .unwrap();
    let web = client
        .sign_workload(
            &id("spiffe://lab.local/ns/shop/sa/web"),
            "shop",
            "web-1",
            HOUR,
        )
        .await
        .unwrap();
    let _ = client
        .sign_workload(
            &id("spiffe://lab.local/ns/shop/sa/db"),
            "shop",
            "db-1",
            HOUR,
        )
        .await;
    // Strings from a request are logged escaped: a newline in them cannot forge a log line.
    let forged = "web-1\nforged-line: node joined";
    let _ = client
        .sign_workload(
            &id("spiffe://lab.local/ns/shop/sa/web"),
            "shop",
            forged,
            HOUR,
        )
        .await;

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("forged-line") && !logs.lines().any(|l| l.starts_with("forged-line")),
        "the request's newline is escaped in the log: {logs}"
    );
    assert!(
        logs.contains("node joined") && logs.contains("node-a"),
        "{logs}"
    );
    assert!(logs.contains("join refused"), "{logs}");
    assert!(logs.contains("scheduled on node node-b"), "{logs}");
    assert!(!logs.contains(tok.expose_secret()), "token in logs: {logs}");
    assert!(!logs.contains("PRIVATE KEY"), "key in logs: {logs}");
    for k in [joined.svid.key(), web.key()] {
        let pem = k.to_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!logs.contains(&body[..40]), "key material in logs");
    }
    // Debug of key holders is redacted.
    for d in [
        format!("{joined:?}"),
        format!("{tok:?}"),
        format!("{client:?}"),
        format!("{server:?}"),
    ] {
        assert!(
            !d.contains(tok.expose_secret()) && !d.contains("PRIVATE"),
            "{d}"
        );
    }
}
