//! The authority's directory port: connections within the `[limits]` (in all and per address;
//! closed when they stop moving bytes), each logged at debug level with its peer address (never
//! at info: addresses stay out of ordinary logs). Tests read it to check that clients never
//! contact an authority.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use allium_net::limits::conn::ConnLimiter;
use allium_net::level_io::LevelIo;
use allium_net::limits::timed_io::TimedIo;
use tokio::net::{TcpListener, TcpStream};

/// A listener that admits connections under `limiter`, times out idle ones and logs each.
pub struct LoggedListener {
    pub listener: TcpListener,
    pub limiter: Arc<ConnLimiter>,
    pub idle: Duration,
}

impl axum::serve::Listener for LoggedListener {
    type Io = TimedIo<LevelIo<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let (io, peer) = axum::serve::Listener::accept(&mut self.listener).await;
            match self.limiter.try_admit(peer.ip()) {
                Ok(permit) => {
                    tracing::debug!(peer = %peer.ip(), "directory connection");
                    return (TimedIo::new(LevelIo(io), self.idle, Some(permit)), peer);
                }
                Err(e) => tracing::debug!(peer = %peer.ip(), "directory connection closed at once: {e}"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}
