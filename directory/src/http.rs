//! Small HTTP client helpers shared by the authority, the publisher and the fetcher: POST and
//! GET with a deadline, capped body reads, and error text without addresses.

use std::time::Duration;

use allium_net::config::AuthorityEntry;

/// A reqwest client whose sockets are bound to `bind` and that never uses a proxy.
///
/// No TCP keepalive: every request is short and bounded by its deadline, and reqwest's default
/// (15 s, with interval and retry count) makes hyper-util log a WARN for every connection on a
/// platform without one of those socket options (two per descriptor upload).
pub(crate) fn client(bind: std::net::IpAddr) -> Result<reqwest::Client, String> {
    builder(bind).build().map_err(|e| describe_reqwest(&e))
}

fn builder(bind: std::net::IpAddr) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .local_address(bind)
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(None)
        .tcp_keepalive_interval(None)
        .tcp_keepalive_retries(None)
}

/// A reqwest error as one line without the URL (which holds an address).
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else if e.is_request() {
        "request failed"
    } else {
        "HTTP error"
    };
    // The innermost cause (e.g. "Connection refused (os error 111)") carries no address.
    let mut src: &dyn std::error::Error = e;
    while let Some(s) = src.source() {
        src = s;
    }
    if std::ptr::addr_eq(src, e as &dyn std::error::Error) {
        kind.to_string()
    } else {
        format!("{kind}: {}", first_line(&src.to_string()))
    }
}

/// The first line of `s`, at most 200 characters.
pub(crate) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

/// Reads a response body, failing once it exceeds `limit` bytes.
pub(crate) async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("response larger than {limit} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe_reqwest(&e))? {
        if out.len() + chunk.len() > limit {
            return Err(format!("response larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Why a POST to a peer failed.
#[derive(Debug)]
pub(crate) enum PostError {
    Transport(String),
    Status(u16, String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Transport(e) => write!(f, "{e}"),
            PostError::Status(c, reason) => write!(f, "HTTP {c}: {reason}"),
        }
    }
}

/// POSTs `body` to `peer` at `path`.
pub(crate) async fn post(http: &reqwest::Client, peer: &AuthorityEntry, path: &str, body: &str, timeout: Duration) -> Result<(), PostError> {
    post_dated(http, peer, path, body, timeout).await.0
}

/// [`post`], also returning the answer's HTTP `Date` header (unix seconds) when it had a
/// well-formed one.
pub(crate) async fn post_dated(
    http: &reqwest::Client,
    peer: &AuthorityEntry,
    path: &str,
    body: &str,
    timeout: Duration,
) -> (Result<(), PostError>, Option<u64>) {
    let url = format!("http://{}{path}", peer.address);
    let resp = match http.post(&url).timeout(timeout).header("content-type", "text/plain").body(body.to_string()).send().await {
        Ok(r) => r,
        Err(e) => return (Err(PostError::Transport(describe_reqwest(&e))), None),
    };
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::clock::parse_http_date);
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return (Ok(()), date);
    }
    let reason = read_capped(resp, 512).await.ok().and_then(|b| String::from_utf8(b).ok()).unwrap_or_default();
    (Err(PostError::Status(status, first_line(&reason))), date)
}

/// GETs `url` and returns the body as text, capped at `limit` bytes.
pub(crate) async fn get_text(http: &reqwest::Client, url: &str, timeout: Duration, limit: usize) -> Result<String, String> {
    let fut = async {
        let resp = http.get(url).send().await.map_err(|e| describe_reqwest(&e))?;
        let status = resp.status().as_u16();
        let body = read_capped(resp, limit).await?;
        let text = String::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())?;
        if status != 200 {
            return Err(format!("HTTP {status}: {}", first_line(&text)));
        }
        Ok(text)
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| "timed out".to_string())?
}


#[cfg(test)]
mod tests {
    use super::*;

    /// The keepalive timer of the client-side socket connected from `local_port` to
    /// `remote_port` on 127.0.0.1, from /proc/net/tcp ("tr" 2 is the keepalive timer).
    fn timer_of(local_port: u16, remote_port: u16) -> Option<String> {
        let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
        text.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            (port(f[1]) == Some(local_port) && port(f[2]) == Some(remote_port)).then(|| f[5].split(':').next().unwrap_or("").to_string())
        })
    }

    /// The HTTP client sets no TCP keepalive (whose socket options hyper-util warns about on
    /// platforms that lack them, once per connection): an idle connection waiting for an answer
    /// runs no keepalive timer. Linux-only check (reads /proc/net/tcp).
    #[tokio::test]
    async fn http_client_sets_no_tcp_keepalive() {
        if !std::path::Path::new("/proc/net/tcp").exists() {
            return;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_port = listener.local_addr().unwrap().port();
        let c = client("127.0.0.1".parse().unwrap()).unwrap();
        let url = format!("http://127.0.0.1:{server_port}/x");
        let req = tokio::spawn(async move { c.get(url).timeout(Duration::from_secs(5)).send().await });
        // Accept and never answer: the client's connection sits idle.
        let (_sock, peer) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let timer = timer_of(peer.port(), server_port).expect("the client's socket is in /proc/net/tcp");
        assert_ne!(timer, "02", "a keepalive timer runs on the client's socket");
        req.abort();
    }
}
