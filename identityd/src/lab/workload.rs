//! The lab's pod workload (a small HTTP server) and client, so the lab needs no other tools.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves HTTP on `listen`: every request gets `pod=<name> peer=<addr>` and the request's
/// headers (so a server behind Envoy shows `x-forwarded-client-cert`).
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
