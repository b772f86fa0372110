//! A TCP proxy that can stop reading: a peer that stops taking a node's bytes (THREATS A27).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A TCP proxy to `target` that stops reading `target`'s bytes once the returned flag is set
/// (its receive buffer toward the target is kept small, so the target's writes block soon).
pub async fn stalling_proxy(target: SocketAddr) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stall, stalled) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            let Ok(upstream) = sock.connect(target).await else { continue };
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut uw).await;
            });
            let mut stalled = stalled.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = tokio::select! {
                        r = ur.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => Some(n) },
                        _ = stalled.wait_for(|s| *s) => None,
                    };
                    let Some(n) = n else {
                        // Stalled: hold both sockets open and never read again.
                        return std::future::pending::<()>().await;
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, stall)
}
