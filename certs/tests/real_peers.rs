//! Independent tools accept what the CA issues: `openssl verify -x509_strict` for both TLS
//! purposes, a Python `cryptography` check of every X.509-SVID rule, and a real rustls mTLS
//! handshake over TCP that refuses other trust domains and IDs not on the allow-list.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use identityd_certs::tls::{
    PeerPolicy, SvidResolver, client_config, peer_id, server_config, server_name, shared,
};
use identityd_certs::{Ca, CaOptions, SpiffeId, Svid, TrustDomain};
use identityd_tests::tools;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HOUR: Duration = Duration::from_secs(3600);

fn ca(dir: &Path, td: &str, intermediate: bool) -> Ca {
    Ca::load_or_init(
        &dir.join(format!("ca-{td}-{intermediate}")),
        TrustDomain::new(td).unwrap(),
        CaOptions {
            intermediate,
            ..CaOptions::default()
        },
        SystemTime::now(),
    )
    .unwrap()
}

fn issue(ca: &Ca, id: &str) -> Svid {
    ca.issue(&SpiffeId::parse(id).unwrap(), HOUR, SystemTime::now())
        .unwrap()
}

/// Writes leaf (svid.pem), intermediates (chain.pem) and bundle (bundle.pem).
fn write(dir: &Path, name: &str, ca: &Ca, svid: &Svid) -> std::path::PathBuf {
    let d = dir.join(name);
    svid.write_to_dir(&d).unwrap();
    let inter: String = svid.chain()[1..]
        .iter()
        .map(|c| identityd_certs::bundle::der_to_pem("CERTIFICATE", c))
        .collect();
    std::fs::write(d.join("intermediates.pem"), inter).unwrap();
    std::fs::write(
        d.join("leaf.pem"),
        identityd_certs::bundle::der_to_pem("CERTIFICATE", svid.leaf()),
    )
    .unwrap();
    std::fs::write(d.join("bundle.pem"), ca.bundle(SystemTime::now()).to_pem()).unwrap();
    d
}

#[test]
fn openssl_verifies_svids_for_client_and_server_purposes() {
    let tmp = tempfile::tempdir().unwrap();
    for intermediate in [false, true] {
        let ca = ca(tmp.path(), "cluster.local", intermediate);
        let svid = issue(&ca, "spiffe://cluster.local/ns/shop/sa/web");
        let d = write(tmp.path(), &format!("web-{intermediate}"), &ca, &svid);
        for purpose in ["sslclient", "sslserver"] {
            let mut cmd = Command::new(tools::openssl());
            cmd.args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
                .arg(d.join("bundle.pem"));
            if intermediate {
                cmd.arg("-untrusted").arg(d.join("intermediates.pem"));
            }
            let out = cmd.arg(d.join("leaf.pem")).output().unwrap();
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK"),
                "openssl verify -purpose {purpose} (intermediate: {intermediate}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // And openssl refuses it against another CA's bundle (the check can fail).
        let other = self::ca(tmp.path(), "other.td", false);
        std::fs::write(
            d.join("other.pem"),
            other.bundle(SystemTime::now()).to_pem(),
        )
        .unwrap();
        let out = Command::new(tools::openssl())
            .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
            .arg(d.join("other.pem"))
            .arg(d.join("leaf.pem"))
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "openssl must reject a foreign bundle"
        );
    }
}

#[test]
fn python_cryptography_checks_every_x509_svid_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/check_x509_svid.py");
    for intermediate in [false, true] {
        let ca = ca(tmp.path(), "cluster.local", intermediate);
        let svid = issue(&ca, "spiffe://cluster.local/ns/shop/sa/web");
        let d = write(tmp.path(), &format!("py-{intermediate}"), &ca, &svid);
        let out = Command::new(tools::python())
            .arg(script)
            .arg(d.join("svid.pem"))
            .arg(d.join("bundle.pem"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("OK spiffe://cluster.local/ns/shop/sa/web"),
            "python check (intermediate: {intermediate}): {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The checker is not vacuous: a root presented as a leaf fails the leaf rules.
        let out = Command::new(tools::python())
            .arg(script)
            .arg(d.join("bundle.pem"))
            .arg(d.join("bundle.pem"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "a CA cert must fail the leaf rules");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("FAIL leaf"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Runs one mTLS exchange; returns (what the client saw as server ID, what the server saw as
/// client ID) or the first error.
async fn exchange(
    server: &Svid,
    server_bundle: identityd_certs::Bundle,
    server_policy: PeerPolicy,
    client: &Svid,
    client_bundle: identityd_certs::Bundle,
    client_policy: PeerPolicy,
) -> Result<(SpiffeId, SpiffeId), String> {
    let scfg = server_config(
        SvidResolver::with(server).unwrap(),
        shared(server_bundle),
        server_policy,
    )
    .unwrap();
    let ccfg = client_config(
        SvidResolver::with(client).unwrap(),
        shared(client_bundle),
        client_policy,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(scfg));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let id = peer_id(tls.get_ref().1.peer_certificates()).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        tls.write_all(b"pong")
            .await
            .map_err(|e| format!("server write: {e}"))?;
        tls.shutdown().await.ok();
        Ok::<_, String>(id)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client_res = async {
        let mut tls = TlsConnector::from(Arc::new(ccfg))
            .connect(server_name(), tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"ping")
            .await
            .map_err(|e| format!("client write: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        assert_eq!(&buf, b"pong");
        peer_id(tls.get_ref().1.peer_certificates()).map_err(|e| e.to_string())
    }
    .await;
    let server_res = server_task.await.unwrap();
    Ok((client_res?, server_res?))
}

#[tokio::test]
async fn rustls_mtls_between_two_svids_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca(tmp.path(), "cluster.local", true);
    let other = ca_other(tmp.path());
    let now = SystemTime::now();
    let web = issue(&ca, "spiffe://cluster.local/ns/shop/sa/web");
    let db = issue(&ca, "spiffe://cluster.local/ns/shop/sa/db");
    let td = TrustDomain::new("cluster.local").unwrap();
    let id = |s: &str| SpiffeId::parse(s).unwrap();

    // Both sides authenticate each other.
    let (seen_by_client, seen_by_server) = exchange(
        &db,
        ca.bundle(now),
        PeerPolicy::AllowList(vec![id("spiffe://cluster.local/ns/shop/sa/web")]),
        &web,
        ca.bundle(now),
        PeerPolicy::TrustDomain(td.clone()),
    )
    .await
    .expect("mTLS handshake between two SVIDs");
    assert_eq!(seen_by_client, id("spiffe://cluster.local/ns/shop/sa/db"));
    assert_eq!(seen_by_server, id("spiffe://cluster.local/ns/shop/sa/web"));

    // A client SVID from another trust domain is refused by the server.
    let stranger = issue(&other, "spiffe://other.td/ns/shop/sa/web");
    let err = exchange(
        &db,
        ca.bundle(now),
        PeerPolicy::TrustDomain(td.clone()),
        &stranger,
        ca.bundle(now),
        PeerPolicy::TrustDomain(td.clone()),
    )
    .await
    .expect_err("foreign trust domain must be refused");
    assert!(err.contains("server") || err.contains("client"), "{err}");

    // An ID not on the server's allow-list is refused.
    let err = exchange(
        &db,
        ca.bundle(now),
        PeerPolicy::AllowList(vec![id("spiffe://cluster.local/ns/shop/sa/web")]),
        &issue(&ca, "spiffe://cluster.local/ns/shop/sa/intruder"),
        ca.bundle(now),
        PeerPolicy::TrustDomain(td.clone()),
    )
    .await
    .expect_err("ID not on the allow-list must be refused");
    assert!(
        err.contains("not allowed") || err.contains("server") || err.contains("client"),
        "{err}"
    );

    // The client refuses a server whose ID is not the one it expects.
    let err = exchange(
        &db,
        ca.bundle(now),
        PeerPolicy::TrustDomain(td.clone()),
        &web,
        ca.bundle(now),
        PeerPolicy::AllowList(vec![id("spiffe://cluster.local/ns/shop/sa/payments")]),
    )
    .await
    .expect_err("client must refuse an unexpected server ID");
    assert!(err.contains("client"), "{err}");
}

fn ca_other(dir: &Path) -> Ca {
    ca(dir, "other.td", false)
}

#[tokio::test]
async fn server_without_svid_refuses_handshakes_until_one_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca(tmp.path(), "cluster.local", false);
    let now = SystemTime::now();
    let td = TrustDomain::new("cluster.local").unwrap();
    let resolver = SvidResolver::new();
    let scfg = Arc::new(
        server_config(
            resolver.clone(),
            shared(ca.bundle(now)),
            PeerPolicy::TrustDomain(td.clone()),
        )
        .unwrap(),
    );
    let client = issue(&ca, "spiffe://cluster.local/c");
    let ccfg = Arc::new(
        client_config(
            SvidResolver::with(&client).unwrap(),
            shared(ca.bundle(now)),
            PeerPolicy::TrustDomain(td),
        )
        .unwrap(),
    );
    let attempt = |scfg: Arc<rustls::ServerConfig>, ccfg: Arc<rustls::ClientConfig>| async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsAcceptor::from(scfg).accept(tcp).await.map(|_| ())
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let c = TlsConnector::from(ccfg)
            .connect(server_name(), tcp)
            .await
            .map(|_| ());
        let s = srv.await.unwrap();
        c.is_ok() && s.is_ok()
    };
    assert!(
        !attempt(scfg.clone(), ccfg.clone()).await,
        "no SVID yet: handshake refused"
    );
    resolver
        .set(&issue(&ca, "spiffe://cluster.local/s"))
        .unwrap();
    assert!(
        attempt(scfg, ccfg).await,
        "after the first SVID arrives, handshakes succeed"
    );
}
