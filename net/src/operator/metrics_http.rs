//! The metrics endpoint (`node.metrics_listen`, loopback only): `GET /metrics` answers the
//! Prometheus text of [`crate::metrics::render`]; anything else gets 404 or 400. One request per
//! connection; at most [`MAX_METRICS_CONNS`] at once, a request head of at most
//! [`MAX_HEAD`] bytes read within [`HEAD_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::keys::unix_now;
use crate::metrics::render;

/// Scrapes served at once; more wait in the backlog.
pub const MAX_METRICS_CONNS: usize = 8;
/// The longest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a scraper has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves scrapes until the listener fails.
pub async fn serve(l: TcpListener, role: &'static str) {
    let mut errors = crate::accept::AcceptErrors::new("metrics");
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let sock = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                errors.failed(&e).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(sock, role).await {
                tracing::debug!("metrics connection ended: {e}");
            }
        });
    }
}

async fn answer(mut sock: TcpStream, role: &'static str) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut sock)).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    let (status, ctype, body) = match request_path(&head) {
        Some("/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(role, unix_now())),
        Some(_) => ("404 Not Found", "text/plain; charset=utf-8", "metrics are at /metrics\n".to_string()),
        None => ("400 Bad Request", "text/plain; charset=utf-8", "bad request\n".to_string()),
    };
    let reply = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    sock.write_all(reply.as_bytes()).await?;
    sock.shutdown().await
}

/// Reads up to the blank line ending the request head (or [`MAX_HEAD`] bytes).
async fn read_head(sock: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while buf.len() < MAX_HEAD && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n.min(MAX_HEAD - buf.len())]);
    }
    Ok(buf)
}

/// The path of a `GET` request line, without a query; None if the head is not a GET.
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if method != "GET" || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some(target.split('?').next().unwrap_or(target))
}

#[cfg(test)]
mod tests {
    use super::request_path;

    #[test]
    fn only_get_request_lines_have_a_path() {
        assert_eq!(request_path(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some("/metrics"));
        assert_eq!(request_path(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Some("/metrics"));
        assert_eq!(request_path(b"POST /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_path(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(request_path(b"\xff\xfe"), None);
    }
}
