//! Shared harness of the `l7_*` tests: an xDS server, one real Envoy configured only by it,
//! HTTP backends on loopback addresses, and a small HTTP/1.1 client.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use identityd_envoy::bootstrap::{XdsAddress, XdsFlavour, bootstrap_yaml};
use identityd_envoy::mesh::{Endpoint, MeshConfig, MtlsMode, Service};
use identityd_envoy::server::{XdsCache, XdsServer, serve, type_url};
use identityd_envoy::translate::translate_checked;
use identityd_tests::envoy::Envoy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

pub(crate) const NODE: &str = "l7-node";

pub(crate) fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

pub(crate) fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One Envoy and the xDS server feeding it. Envoy is killed on drop.
pub(crate) struct Harness {
    pub(crate) cache: Arc<XdsCache>,
    pub(crate) envoy: Envoy,
    _tmp: tempfile::TempDir,
}

impl Harness {
    pub(crate) async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let cache = XdsCache::new();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let xds = l.local_addr().unwrap();
        tokio::spawn(serve(
            XdsServer::new(Arc::clone(&cache)),
            None,
            tokio_stream::wrappers::TcpListenerStream::new(l),
        ));
        let envoy = Envoy::start(
            &tmp.path().join("envoy"),
            &bootstrap_yaml(NODE, &XdsAddress::Tcp(xds), 0, XdsFlavour::Sotw),
        );
        Self {
            cache,
            envoy,
            _tmp: tmp,
        }
    }

    /// Validates and translates `mesh`, pushes it, and waits until Envoy ACKed every type.
    pub(crate) async fn push(&self, mesh: &MeshConfig) {
        let snap = translate_checked(mesh).unwrap_or_else(|p| panic!("invalid config: {p:#?}"));
        self.cache.set_snapshot(NODE, snap);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.cache.status(NODE);
            // Secrets are requested by name: the trust bundle of a config without mTLS
            // workloads is never asked for.
            let uses_sds = !mesh.l7.tls_secrets.is_empty() || !mesh.svids.is_empty();
            if !st.is_empty()
                && st.iter().all(|t| {
                    t.accepted == Some(t.version) || (t.type_url == type_url::SECRET && !uses_sds)
                })
            {
                break;
            }
            if let Some(n) = st.iter().find_map(|t| t.nack.clone()) {
                panic!("Envoy NACKed: {n:?}\n{}", self.envoy.log());
            }
            assert!(
                Instant::now() < deadline,
                "Envoy did not ACK in 20s: {st:?}\n{}",
                self.envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Listeners warm (routes, secrets) before they accept connections.
        for l in &mesh.l7.listeners {
            while tokio::net::TcpStream::connect(l.address).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "listener {} never listened on {}\n{}",
                    l.name,
                    l.address,
                    self.envoy.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// The value of the counter whose name ends with `suffix` and contains `contains`.
    pub(crate) fn stat(&self, contains: &str, suffix: &str) -> u64 {
        let (_, body) = self.envoy.admin_get("/stats");
        body.lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| k.contains(contains) && k.ends_with(suffix))
            .map(|(_, v)| v.trim().parse::<u64>().unwrap_or(0))
            .sum()
    }
}

/// A plain mesh config with no workloads (only ingress), `services` and `l7`.
pub(crate) fn ingress_mesh(
    services: Vec<Service>,
    l7: identityd_envoy::l7::L7Config,
) -> MeshConfig {
    MeshConfig {
        trust_domain: "cluster.local".into(),
        services,
        l7,
        ..Default::default()
    }
}

/// A plaintext service `name.ns` on `port` with endpoints `ips` listening on `target_port`.
pub(crate) fn service(
    name: &str,
    ns: &str,
    port: u16,
    target_port: u16,
    ips: &[IpAddr],
) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        port,
        target_port,
        mtls: MtlsMode::Disabled,
        hosts: vec![],
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                ip: *ip,
                id: format!("spiffe://cluster.local/ns/{ns}/sa/{name}"),
                mtls_address: SocketAddr::new(*ip, 15008),
                weight: 1,
            })
            .collect(),
    }
}

/// What a backend does with each request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Behaviour {
    /// 200 with its name as the body.
    Ok,
    /// 503 on odd-numbered requests (1st, 3rd, …), 200 on the others.
    FailOdd,
    /// Always 503.
    Fail,
    /// Sleeps, then 200.
    Slow(Duration),
}

/// An HTTP/1.1 backend (keep-alive, GET without body) on `addr`; answers `<name>` plus the
/// request head as body. Returns its request counter.
pub(crate) async fn backend(addr: SocketAddr, name: &'static str, b: Behaviour) -> Arc<AtomicU64> {
    let l = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind backend {addr}: {e}"));
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    let status = match b {
                        Behaviour::Ok => "200 OK",
                        Behaviour::FailOdd if n % 2 == 1 => "503 Service Unavailable",
                        Behaviour::FailOdd => "200 OK",
                        Behaviour::Fail => "503 Service Unavailable",
                        Behaviour::Slow(d) => {
                            tokio::time::sleep(d).await;
                            "200 OK"
                        }
                    };
                    let body = format!("{name}\n{head}");
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    count
}

/// Binds one port on several loopback addresses (for a service with several endpoints).
pub(crate) fn shared_port(ips: &[IpAddr]) -> u16 {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind(SocketAddr::new(ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if ips[1..]
            .iter()
            .all(|ip| std::net::TcpListener::bind(SocketAddr::new(*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A response: status, head (lower-cased header lines) and body.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

/// One HTTP/1.1 request (new connection, `Connection: close`) from `from` to `to`.
pub(crate) async fn request(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let fail = |e: String| Resp {
        status: 0,
        head: e,
        body: String::new(),
    };
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = match sock.connect(to).await {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return fail(e.to_string());
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Resp {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// GET `path` with `Host: host` from 127.0.0.1.
pub(crate) async fn get(to: SocketAddr, host: &str, path: &str) -> Resp {
    request(ip(1), to, "GET", host, path, &[]).await
}

/// Polls until a GET answers `status` (listeners and clusters warm after the ACK).
pub(crate) async fn wait_status(h: &Harness, to: SocketAddr, host: &str, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(to, host, path).await;
        if r.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{to} {host}{path} never answered {status}; last: {r:?}\n{}",
            h.envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
