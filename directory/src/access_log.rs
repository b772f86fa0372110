//! The authority's directory port, logging at debug level which address each connection came
//! from (never at info: addresses stay out of ordinary logs). Tests read it to check that
//! clients never contact an authority.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// A listener that logs every accepted connection's peer address at debug level.
pub struct LoggedListener(pub TcpListener);

impl axum::serve::Listener for LoggedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let (io, peer) = axum::serve::Listener::accept(&mut self.0).await;
        tracing::debug!(peer = %peer.ip(), "directory connection");
        (io, peer)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
