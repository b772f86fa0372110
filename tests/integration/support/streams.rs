//! Streams opened by hand on a client circuit (no SOCKS in between).

use std::net::SocketAddr;
use std::time::Duration;

use allium_client::circuit::{BeginRequest, CircHandle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Opens a stream to `target` on `c`; returns the application's end of it once CONNECTED.
pub async fn begin(c: &CircHandle, target: SocketAddr) -> Result<TcpStream, String> {
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = TcpStream::connect(app.local_addr().unwrap()).await.unwrap();
    let (theirs, _) = app.accept().await.unwrap();
    let (done, rx) = oneshot::channel();
    let req = BeginRequest { host: target.ip().to_string(), port: target.port(), sock: theirs, early_data: vec![], success_reply: vec![], done };
    c.begin(req).await.map_err(|_| "the circuit closed".to_string())?;
    match tokio::time::timeout(Duration::from_secs(60), rx).await {
        Ok(Ok(Ok(_))) => Ok(ours),
        other => Err(format!("BEGIN failed: {:?}", other.map(|r| r.map(|r| r.map(|_| ()).map_err(|(e, _)| e))))),
    }
}

