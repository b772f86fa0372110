//! Streams opened by hand on a client circuit (no SOCKS in between).

use std::net::SocketAddr;
use std::time::Duration;

use allium_client::circuit::{BeginRequest, CircHandle};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// Opens a stream to `target` on `c`; returns the application's end of it once CONNECTED.
pub async fn begin(c: &CircHandle, target: SocketAddr) -> Result<TcpStream, String> {
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = TcpStream::connect(app.local_addr().unwrap()).await.unwrap();
    let (theirs, _) = app.accept().await.unwrap();
    begin_on(c, target, ours, theirs).await
}

/// [`begin`] with the smallest socket buffers the kernel allows between the client and the
/// application: an application that does not read makes the client stop consuming (and
/// acknowledging) DATA after a few cells, instead of after the kernel's megabytes.
pub async fn begin_small_buffers(c: &CircHandle, target: SocketAddr) -> Result<TcpStream, String> {
    let listener = TcpSocket::new_v4().unwrap();
    listener.set_send_buffer_size(4096).unwrap();
    listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let app = listener.listen(4).unwrap();
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let ours = sock.connect(app.local_addr().unwrap()).await.unwrap();
    let (theirs, _) = app.accept().await.unwrap();
    begin_on(c, target, ours, theirs).await
}

async fn begin_on(c: &CircHandle, target: SocketAddr, ours: TcpStream, theirs: TcpStream) -> Result<TcpStream, String> {
    let (done, rx) = oneshot::channel();
    let req = BeginRequest { host: target.ip().to_string(), port: target.port(), done };
    c.begin(req).await.map_err(|_| "the circuit closed".to_string())?;
    match tokio::time::timeout(Duration::from_secs(60), rx).await {
        Ok(Ok(Ok(connected))) => {
            connected.stream.splice(theirs, vec![]);
            Ok(ours)
        }
        other => Err(format!("BEGIN failed: {:?}", other.map(|r| r.map(|r| r.map(|_| ()))))),
    }
}

