//! A tiny HTTP/1.0 file server (in-memory files, one thread per connection) that records the
//! peer address of every connection, and an HTTP GET through SOCKS5.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::socks::socks5_connect;

/// `len` deterministic pseudo-random bytes (splitmix64 seeded with `seed`).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The file server. Stops accepting when dropped.
pub struct FileServer {
    addr: SocketAddr,
    files: Arc<HashMap<String, Vec<u8>>>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    /// Serves `files` (path → body) on 127.0.0.1 at an ephemeral port.
    pub fn start(files: Vec<(&str, Vec<u8>)>) -> FileServer {
        Self::start_on("127.0.0.1:0", files)
    }

    /// Serves `files` on `bind` (e.g. `"[::1]:0"`).
    pub fn start_on(bind: &str, files: Vec<(&str, Vec<u8>)>) -> FileServer {
        let listener = TcpListener::bind(bind).expect("bind the file server");
        let addr = listener.local_addr().unwrap();
        let files: Arc<HashMap<String, Vec<u8>>> = Arc::new(files.into_iter().map(|(p, b)| (p.to_string(), b)).collect());
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, p, st) = (files.clone(), peers.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(peer) = conn.peer_addr() {
                    p.lock().unwrap().push(peer);
                }
                let f = f.clone();
                std::thread::spawn(move || serve(conn, &f));
            }
        });
        FileServer { addr, files, peers, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The body served at `path`.
    pub fn file(&self, path: &str) -> &[u8] {
        self.files.get(path).unwrap_or_else(|| panic!("no file {path}"))
    }

    /// The peer address of every connection accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve(mut conn: TcpStream, files: &HashMap<String, Vec<u8>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let result = match (method, files.get(path)) {
        ("GET", Some(body)) => conn
            .write_all(format!("HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes())
            // In 64 KiB pieces, as common servers write, then close at once: the exit must
            // deliver everything it read before it reports the end of the stream.
            .and_then(|_| body.chunks(64 * 1024).try_for_each(|c| conn.write_all(c))),
        _ => conn.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    };
    let _ = result;
    let _ = conn.shutdown(Shutdown::Write);
}

/// Why [`http_get_via_socks`] failed.
#[derive(Debug)]
pub enum GetError {
    /// The SOCKS5 CONNECT failed with this reply code (or `socks::NO_REPLY`): no stream opened.
    Connect(u8),
    /// The stream opened but the response was wrong or incomplete.
    Transfer(String),
}

/// `GET path` from `host:port` through the SOCKS5 proxy; the body on a 200 whose length matches
/// its Content-Length.
pub fn http_get_via_socks(socks: SocketAddr, host: &str, port: u16, path: &str) -> Result<Vec<u8>, GetError> {
    http_get_via_socks_as(socks, None, host, port, path)
}

/// [`http_get_via_socks`] with SOCKS5 credentials `user` (its isolation class).
pub fn http_get_via_socks_as(socks: SocketAddr, user: Option<(&str, &str)>, host: &str, port: u16, path: &str) -> Result<Vec<u8>, GetError> {
    let mut s = socks5_connect(socks, host, port, user).map_err(GetError::Connect)?;
    let t = |msg: String| GetError::Transfer(msg);
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| t(e.to_string()))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n").as_bytes())
        .map_err(|e| t(format!("sending the request: {e}")))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| t(format!("reading the response after {} bytes: {e}", resp.len())))?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| t(format!("no complete HTTP header in {} bytes", resp.len())))?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let body = resp[split + 4..].to_vec();
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(t(format!("HTTP status line {status:?}")));
    }
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().to_string()))
        .ok_or_else(|| t("no Content-Length".to_string()))?;
    let length: usize = length.parse().map_err(|_| t(format!("bad Content-Length {length:?}")))?;
    if length != body.len() {
        return Err(t(format!("body is {} bytes, Content-Length says {length}", body.len())));
    }
    Ok(body)
}

/// Fetches `path` (whose body must be `want`) through `socks`: `serial` downloads one after
/// another, then `rounds` rounds of 8 at once, each download in its own isolation class (so on
/// its own circuit). Returns what went wrong with each failed download; empty when every byte
/// of every download arrived.
pub fn download_rounds(socks: SocketAddr, port: u16, path: &'static str, want: &[u8], serial: usize, rounds: usize) -> Vec<String> {
    let check = |what: String, r: Result<Vec<u8>, GetError>| match r {
        Ok(body) if body == want => None,
        Ok(body) => Some(format!("{what}: {} bytes, not the file", body.len())),
        Err(e) => Some(format!("{what}: {e:?}")),
    };
    let fetch = move |user: String| http_get_via_socks_as(socks, Some((&user, "pw")), "127.0.0.1", port, path);
    let mut failures: Vec<String> = (0..serial).filter_map(|i| check(format!("serial {i}"), fetch(format!("serial{i}")))).collect();
    for round in 0..rounds {
        let handles: Vec<_> = (0..8).map(|i| std::thread::spawn(move || fetch(format!("r{round}s{i}")))).collect();
        for (i, h) in handles.into_iter().enumerate() {
            failures.extend(check(format!("round {round} stream {i}"), h.join().expect("fetch thread")));
        }
    }
    failures
}

/// Fetches `path` (whose body must be `want`) `per_client` times through each of `socks`, all
/// at once, each fetch in its own isolation class (so on its own circuit). Returns what went
/// wrong with each failed fetch; empty when every byte of every fetch arrived.
pub fn concurrent_fetches(socks: &[SocketAddr], per_client: usize, port: u16, path: &str, want: &[u8]) -> Vec<String> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = socks
            .iter()
            .enumerate()
            .flat_map(|(c, s)| (0..per_client).map(move |i| (c, i, *s)))
            .map(|(c, i, s)| {
                scope.spawn(move || match http_get_via_socks_as(s, Some((&format!("fetch-{c}-{i}"), "x")), "127.0.0.1", port, path) {
                    Ok(body) if body == want => None,
                    Ok(body) => Some(format!("client {c} fetch {i}: {} bytes, not the file", body.len())),
                    Err(e) => Some(format!("client {c} fetch {i}: {e:?}")),
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().expect("fetch thread")).collect()
    })
}
