//! The test network's built-in web server: the onion service's target when no `--hs-target` is
//! given. HTTP/1.0 on 127.0.0.1 at an ephemeral port; every GET gets [`PAGE`], anything else
//! 405. It only reads the request head (at most [`MAX_HEAD`] bytes) and closes after answering.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The page every GET returns.
pub const PAGE: &str = "Hello from an Allium onion service.\nThis page reached you over a rendezvous circuit: neither side learned the other's address.\n";
/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// A running server; dropping it stops it.
pub struct WebServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WebServer {
    pub async fn start() -> std::io::Result<WebServer> {
        let l = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = l.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                tokio::spawn(serve(sock));
            }
        });
        Ok(WebServer { addr, task })
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut sock: TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = sock.write_all(response(&head).as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// The answer to a request head.
fn response(head: &[u8]) -> String {
    let (status, body) = if head.starts_with(b"GET ") { ("200 OK", PAGE) } else { ("405 Method Not Allowed", "only GET\n") };
    format!("HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_page_to_get_and_refuses_others() {
        let w = WebServer::start().await.unwrap();
        for (req, want) in [("GET / HTTP/1.0\r\n\r\n", "200 OK"), ("POST / HTTP/1.0\r\n\r\n", "405")] {
            let mut s = TcpStream::connect(w.addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            assert!(got.starts_with(&format!("HTTP/1.0 {want}")), "{got}");
            if want == "200 OK" {
                assert!(got.ends_with(PAGE));
            }
        }
    }
}
