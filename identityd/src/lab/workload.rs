//! The lab's pod workloads — a small HTTP server, a Redis-protocol-like TCP server (client
//! speaks first) and an SMTP-like greeter (server speaks first) — and their clients, so the
//! lab needs no other tools.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves HTTP on `listen`: every request gets `pod=<name> peer=<addr>` and the request's
/// headers (so a server behind Envoy shows `x-forwarded-client-cert`); `/delay/<ms>` answers
/// that much later.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(name: String, listen: SocketAddr) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (mut s, peer) = l.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
                match tokio::time::timeout(Duration::from_secs(10), s.read(&mut tmp)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&tmp[..n]),
                    _ => return,
                }
            }
            let req = String::from_utf8_lossy(&buf);
            // `GET /delay/<ms>` answers after that long (timeouts, latency in `identityd stat`).
            if let Some(ms) = req
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.strip_prefix("/delay/"))
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                tokio::time::sleep(Duration::from_millis(ms.min(30_000))).await;
            }
            let headers: String = req
                .lines()
                .skip(1)
                .take_while(|l| !l.is_empty())
                .map(|l| format!("  {l}\n"))
                .collect();
            let body = format!("pod={name} peer={peer}\n{headers}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

/// Port of the lab's client-first TCP protocol (`PING [text]` → `+PONG pod=… peer=… [text]`).
pub const KV_PORT: u16 = 6379;
/// Port of the lab's server-first TCP protocol (`220 pod=… peer=… ready`, then `250 <line>`).
pub const GREETER_PORT: u16 = 2525;

/// Serves the two TCP protocols on `ip`: [`KV_PORT`] and [`GREETER_PORT`].
///
/// # Errors
/// When a port cannot be bound.
pub async fn serve_tcp(name: String, ip: std::net::IpAddr) -> std::io::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let kv = tokio::net::TcpListener::bind(SocketAddr::new(ip, KV_PORT)).await?;
    let greeter = tokio::net::TcpListener::bind(SocketAddr::new(ip, GREETER_PORT)).await?;
    let line_server = |l: tokio::net::TcpListener, name: String, greet: bool| async move {
        loop {
            let Ok((s, peer)) = l.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                if greet
                    && w.write_all(format!("220 pod={name} peer={peer} ready\r\n").as_bytes())
                        .await
                        .is_err()
                {
                    return;
                }
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Ok(Some(line))) =
                    tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
                {
                    let reply = if greet {
                        if line.eq_ignore_ascii_case("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        format!("250 {line}\r\n")
                    } else if let Some(rest) = line.strip_prefix("PING") {
                        format!("+PONG pod={name} peer={peer}{rest}\r\n")
                    } else {
                        "-ERR unknown command\r\n".to_owned()
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    };
    tokio::join!(
        line_server(kv, name.clone(), false),
        line_server(greeter, name, true)
    );
    Ok(())
}

/// The two UDP echo ports of lab pods (NetworkPolicy probes).
pub const UDP_PORTS: [u16; 2] = [7001, 7002];

/// Echoes every datagram on `ip`'s [`UDP_PORTS`], prefixed with `pod=<name> `.
///
/// # Errors
/// When a port cannot be bound.
pub async fn serve_udp(name: String, ip: std::net::IpAddr) -> std::io::Result<()> {
    let mut tasks = Vec::new();
    for port in UDP_PORTS {
        let sock = tokio::net::UdpSocket::bind(SocketAddr::new(ip, port)).await?;
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                let mut reply = format!("pod={name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, peer).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// One probe of `identityd lab probe`: `tcp:IP:PORT` (a lab line server: PING on the KV port,
/// the greeting on the greeter port) or `udp:IP:PORT` (an echo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// `tcp` or `udp`.
    pub udp: bool,
    /// Where.
    pub addr: SocketAddr,
}

impl std::str::FromStr for ProbeTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, addr) = s
            .split_once(':')
            .ok_or_else(|| format!("--target={s}: expected tcp:IP:PORT or udp:IP:PORT"))?;
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            _ => return Err(format!("--target={s}: protocol must be tcp or udp")),
        };
        let addr = addr.parse().map_err(|e| format!("--target={s}: {e}"))?;
        Ok(Self { udp, addr })
    }
}

/// Probes every target at once, each within `timeout`: whether the lab server answered.
pub async fn probe(targets: &[ProbeTarget], timeout: Duration) -> Vec<bool> {
    let one = |t: ProbeTarget| async move {
        let fut = async {
            if t.udp {
                let bind: SocketAddr = if t.addr.is_ipv4() {
                    "0.0.0.0:0".parse().ok()?
                } else {
                    "[::]:0".parse().ok()?
                };
                let s = tokio::net::UdpSocket::bind(bind).await.ok()?;
                s.connect(t.addr).await.ok()?;
                let mut buf = [0u8; 256];
                // A few tries: a lost first datagram (ARP, a handshake) is not a denial.
                for _ in 0..3 {
                    s.send(b"probe").await.ok()?;
                    if let Ok(Ok(n)) = tokio::time::timeout(timeout / 4, s.recv(&mut buf)).await {
                        return Some(buf[..n].ends_with(b"probe"));
                    }
                }
                None
            } else {
                let greeting = t.addr.port() == GREETER_PORT;
                let send = if greeting {
                    Vec::new()
                } else {
                    vec!["PING".to_owned()]
                };
                let lines = tcp_exchange(t.addr, greeting, &send).await.ok()?;
                Some(
                    lines
                        .first()
                        .is_some_and(|l| l.starts_with("+PONG") || l.starts_with("220 ")),
                )
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    };
    futures::future::join_all(targets.iter().cloned().map(one)).await
}

/// A line exchange over plain TCP with `addr`: when `greeting`, first reads the server's
/// greeting line; then sends each of `send` (CRLF-terminated) and reads one line back for
/// each. Returns every line read, in order.
///
/// # Errors
/// No connection within 5 s, or the connection closed (or silent for 5 s) before a line.
pub async fn tcp_exchange(
    addr: SocketAddr,
    greeting: bool,
    send: &[String],
) -> Result<Vec<String>, String> {
    use tokio::io::AsyncBufReadExt as _;
    let s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("{addr}: connect timed out"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let (r, mut w) = s.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    let mut out = Vec::new();
    let mut read_line = async |out: &mut Vec<String>| -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
            Ok(Ok(Some(l))) => {
                out.push(l);
                Ok(())
            }
            Ok(Ok(None)) => Err(format!(
                "{addr}: closed by the peer after {} lines",
                out.len()
            )),
            Ok(Err(e)) => Err(format!("{addr}: {e} after {} lines", out.len())),
            Err(_) => Err(format!(
                "{addr}: no line within 5s after {} lines",
                out.len()
            )),
        }
    };
    if greeting {
        read_line(&mut out).await?;
    }
    for line in send {
        w.write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        read_line(&mut out).await?;
    }
    Ok(out)
}

/// GETs `url` (`http://` or `https://`) with an optional `x-payload` header and `Host`;
/// returns (status, body). Over https the server certificate is verified for `host` (or the
/// URL's authority) against the PEM roots in `ca` (required: the lab's trust bundle).
///
/// # Errors
/// A bad URL, a refused certificate, or no connection within 5 s.
pub async fn get(
    url: &str,
    host: Option<&str>,
    payload: Option<&str>,
    ca: Option<&std::path::Path>,
) -> Result<(u16, String), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "url={url}: only http:// and https:// are supported"
        ));
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| format!("{addr}: connect timed out"))?
    .map_err(|e| format!("{addr}: {e}"))?;
    let host_header = host.unwrap_or(authority);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n");
    if let Some(p) = payload {
        req.push_str(&format!("x-payload: {p}\r\n"));
    }
    req.push_str("\r\n");
    let out = if tls {
        let ca = ca.ok_or("https needs --ca FILE (the trust bundle, PEM)")?;
        let name = host_header
            .split(':')
            .next()
            .unwrap_or(host_header)
            .to_owned();
        let mut st = tls_connect(s, ca, &name).await?;
        exchange(&mut st, &req, &addr).await?
    } else {
        let mut s = s;
        exchange(&mut s, &req, &addr).await?
    };
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn exchange<S>(s: &mut S, req: &str, addr: &str) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| format!("{addr}: no answer within 5s"))?;
    // A TLS peer that closes without close_notify still sent a whole response.
    if let Err(e) = r
        && out.is_empty()
    {
        return Err(e.to_string());
    }
    Ok(out)
}

async fn tls_connect(
    s: tokio::net::TcpStream,
    ca: &std::path::Path,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let pem = std::fs::read_to_string(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in identityd_certs::bundle::certs_from_pem(&pem)
        .map_err(|e| format!("--ca {}: {e}", ca.display()))?
    {
        roots
            .add(c)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let sn = rustls_pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| format!("server name {name:?}: {e}"))?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(sn, s)
        .await
        .map_err(|e| format!("TLS with {name}: {e}"))
}

/// One long-lived kv connection's result ([`stream`]).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StreamReport {
    /// `PING`s sent.
    pub sent: u64,
    /// `+PONG` lines read back, in order (each echoes its number).
    pub replies: u64,
    /// The longest time between two consecutive replies, ms (a retransmission timeout on the
    /// path stalls the stream for ≥ 200 ms).
    pub max_reply_gap_ms: u64,
    /// Gaps between replies of 200 ms or more.
    pub stalls_over_200ms: u64,
    /// Why the stream ended early (a reset, a wrong or missing answer), if it did.
    pub error: Option<String>,
}

/// Keeps one kv connection to `addr` open for `duration`, a `PING <n>` every `interval`, each
/// answer read before the next is sent (so a stall of the path is a stall of the stream).
pub async fn stream(addr: SocketAddr, interval: Duration, duration: Duration) -> StreamReport {
    use tokio::io::AsyncBufReadExt as _;
    let mut r = StreamReport::default();
    let s = match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            r.error = Some(format!("connect {addr}: {e}"));
            return r;
        }
        Err(_) => {
            r.error = Some(format!("connect {addr}: no answer within 5s"));
            return r;
        }
    };
    let _ = s.set_nodelay(true);
    let (rd, mut wr) = s.into_split();
    let mut lines = tokio::io::BufReader::new(rd).lines();
    let end = tokio::time::Instant::now() + duration;
    let mut last = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        r.sent += 1;
        let n = r.sent;
        if let Err(e) = wr.write_all(format!("PING {n}\r\n").as_bytes()).await {
            r.error = Some(format!("PING {n}: {e}"));
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
            Ok(Ok(Some(line))) if line.starts_with("+PONG") && line.ends_with(&format!(" {n}")) => {
                r.replies += 1;
                let now = tokio::time::Instant::now();
                let gap = u64::try_from(now.duration_since(last).as_millis()).unwrap_or(u64::MAX);
                r.max_reply_gap_ms = r.max_reply_gap_ms.max(gap);
                if gap >= 200 {
                    r.stalls_over_200ms += 1;
                }
                last = now;
            }
            Ok(Ok(Some(line))) => {
                r.error = Some(format!("PING {n}: answered {line:?}"));
                break;
            }
            Ok(Ok(None)) => {
                r.error = Some(format!("PING {n}: the connection closed"));
                break;
            }
            Ok(Err(e)) => {
                r.error = Some(format!("PING {n}: {e}"));
                break;
            }
            Err(_) => {
                r.error = Some(format!("PING {n}: no answer within 5s"));
                break;
            }
        }
    }
    r
}

/// What [`load`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// `GET /` with a `Host` header, one request per connection (the lab server closes).
    Http,
    /// The kv protocol: connect, `PING`, read the `+PONG` line, close.
    Tcp,
}

/// An open-loop load run's result: latencies measured from each request's *scheduled* start
/// (so a stall is not hidden by the generator waiting: no coordinated omission).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadReport {
    /// Target rate, requests per second.
    pub rate: u32,
    /// Requests scheduled.
    pub scheduled: usize,
    /// Requests that completed with the expected answer.
    pub ok: usize,
    /// Requests that failed (connect error, wrong answer, timeout).
    pub errors: usize,
    /// The first few error messages.
    pub first_errors: Vec<String>,
    /// Achieved rate of successful requests over the run, per second.
    pub achieved_rate: f64,
    /// Latency percentiles of successful requests, microseconds.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Maximum, µs.
    pub max_us: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a slice of at most millions of samples"
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends requests to `addr` at a fixed `rate` for `duration`, open loop: every request starts
/// at its scheduled time on its own connection, whatever the earlier ones are doing.
pub async fn load(
    addr: SocketAddr,
    kind: LoadKind,
    host: &str,
    rate: u32,
    duration: Duration,
) -> LoadReport {
    let rate = rate.max(1);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let count = usize::try_from((duration.as_secs_f64() * f64::from(rate)).round() as u64)
        .unwrap_or(usize::MAX);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let host = host.to_owned();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let at = start + interval.mul_f64(i as f64);
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let r =
                tokio::time::timeout(Duration::from_secs(5), one_request(addr, kind, &host)).await;
            let took = tokio::time::Instant::now().duration_since(at);
            match r {
                Ok(Ok(())) => Ok(u64::try_from(took.as_micros()).unwrap_or(u64::MAX)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("no answer within 5s".to_owned()),
            }
        }));
    }
    let mut lat = Vec::with_capacity(count);
    let mut first_errors = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(us)) => lat.push(us),
            Ok(Err(e)) => {
                errors += 1;
                if first_errors.len() < 5 {
                    first_errors.push(e);
                }
            }
            Err(e) => {
                errors += 1;
                if first_errors.len() < 5 {
                    first_errors.push(e.to_string());
                }
            }
        }
    }
    let elapsed = tokio::time::Instant::now().duration_since(start);
    lat.sort_unstable();
    LoadReport {
        rate,
        scheduled: count,
        ok: lat.len(),
        errors,
        first_errors,
        achieved_rate: lat.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_us: percentile(&lat, 0.50),
        p90_us: percentile(&lat, 0.90),
        p99_us: percentile(&lat, 0.99),
        max_us: lat.last().copied().unwrap_or(0),
    }
}

async fn one_request(addr: SocketAddr, kind: LoadKind, host: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    // Close with a reset: at thousands of connections per second the generator's side would
    // otherwise hold every port in TIME_WAIT and run out of them (what it would measure is
    // port exhaustion, not the mesh).
    let _ = s.set_zero_linger();
    let (req, want): (String, &[u8]) = match kind {
        LoadKind::Http => (
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            b"HTTP/1.1 200",
        ),
        LoadKind::Tcp => ("PING\r\n".to_owned(), b"+PONG"),
    };
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 4096];
    loop {
        let n = s.read(&mut tmp).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
        if kind == LoadKind::Tcp && buf.contains(&b'\n') {
            break;
        }
    }
    if buf.starts_with(want) {
        Ok(())
    } else {
        Err(format!(
            "unexpected answer: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(60)])
        ))
    }
}
