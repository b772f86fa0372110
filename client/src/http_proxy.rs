//! The optional HTTP CONNECT front end (`client.http_connect_listen`): parse the request head
//! with the sans-IO parser, then open the stream exactly as for SOCKS and answer with an HTTP
//! status (200 once connected; see `allium_proto::http_connect::status_for` for failures).

use std::sync::Arc;

use allium_proto::http_connect::{self, Parsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::socks::{serve_request, within_request_timeout, AppRequest, Front};
use crate::ClientState;


/// Accepts application connections forever.
pub async fn serve(listener: TcpListener, state: Arc<ClientState>) -> Result<(), crate::ClientError> {
    // The permit covers the request; once a stream carries the socket, the circuit's stream
    // cap bounds it.
    let limiter = state.app_conns.clone();
    allium_net::accept::accept_forever(listener, "HTTP CONNECT", limiter, |sock, permit| {
        let state = state.clone();
        async move {
            let r = handle(sock, state).await;
            drop(permit);
            r
        }
    })
    .await;
    Err("the HTTP CONNECT listener stopped accepting".into())
}

async fn handle(mut sock: TcpStream, state: Arc<ClientState>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let Some((req, early)) = within_request_timeout(state.limits.request_timeout(), read_request(&mut sock)).await? else {
        return Ok(());
    };
    // The Proxy-Authorization value isolates like SOCKS credentials (its own tag, so it never
    // equals a SOCKS credential).
    let credentials = match req.proxy_auth {
        None => Vec::new(),
        Some(a) => [&[3u8][..], &a].concat(),
    };
    serve_request(sock, state, AppRequest { target: req.target, resolve: false, credentials, early, front: Front::Http }).await
}

/// Reads the request head; returns the request and any bytes after it. On a malformed request
/// answers with its status and returns `None`.
async fn read_request(sock: &mut TcpStream) -> std::io::Result<Option<(http_connect::HttpConnectRequest, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        match http_connect::parse(&buf) {
            Ok(Parsed::NeedMore) => {}
            Ok(Parsed::Done { request, consumed }) => {
                buf.drain(..consumed);
                return Ok(Some((request, buf)));
            }
            Err(e) => {
                tracing::debug!("malformed HTTP CONNECT request: {e}");
                sock.write_all(&e.reply()).await?;
                sock.shutdown().await?;
                return Ok(None);
            }
        }
    }
}
