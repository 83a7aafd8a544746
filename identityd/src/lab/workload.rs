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

/// GETs `url` (http only) with an optional `x-payload` header and `Host`; returns (status, body).
///
/// # Errors
/// A bad URL, or no connection within 5 s.
pub async fn get(
    url: &str,
    host: Option<&str>,
    payload: Option<&str>,
) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("url={url}: only http:// is supported"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| format!("{addr}: connect timed out"))?
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        host.unwrap_or(authority)
    );
    if let Some(p) = payload {
        req.push_str(&format!("x-payload: {p}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| format!("{addr}: no answer within 5s"))?
        .map_err(|e| e.to_string())?;
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
