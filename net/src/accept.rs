//! Accepting TCP connections: one task per connection, within a [`ConnLimiter`].

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::limits::conn::{ConnLimiter, ConnPermit};
use crate::limits::counters::{LimitCounters, LIMITS};
use crate::log_rate::RateLimit;

/// How often an accept error (e.g. out of file descriptors) is logged at most.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Connections the kernel completes and queues for a listener before the node accepts them
/// (capped by the system's `net.core.somaxconn`). The standard library's 128 overflowed when
/// 500 relays uploaded their descriptors at once: handshakes were dropped and retried a second
/// later, and under load some connections were reset (issue 18).
pub const LISTEN_BACKLOG: u32 = 4096;

/// What a listener does when `accept` fails (typically out of file descriptors): counts it
/// (`accept_errors`), logs it at most once a minute, and pauses before the next accept, so a
/// failing listener neither floods the log nor spins.
pub struct AcceptErrors {
    what: &'static str,
    logged: RateLimit,
}

impl AcceptErrors {
    /// For the listener named `what` in the log ("inbound link", "metrics", ...).
    pub fn new(what: &'static str) -> Self {
        AcceptErrors { what, logged: RateLimit::new(ACCEPT_ERROR_LOG_EVERY) }
    }

    /// Counts and maybe logs `e`, then pauses.
    pub async fn failed(&mut self, e: &std::io::Error) {
        LimitCounters::hit(&LIMITS.accept_errors);
        if self.logged.check(Instant::now()).is_some() {
            let so_far = LIMITS.accept_errors.load(std::sync::atomic::Ordering::Relaxed);
            tracing::warn!("{} accept failed: {e} (logged at most once a minute; {so_far} so far)", self.what);
        }
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }
}

/// The pause after an accept error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A listener on `addr` with [`LISTEN_BACKLOG`] (address reuse as tokio's `bind` sets it).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections forever. A connection over `limiter`'s caps is closed at once (and
/// counted); any other is handed to `handle` with its permit, in a task of its own, and a
/// connection that ends in an error is logged at debug level (it is the peer's business).
/// Accept errors are counted, logged at most once a minute, and retried after a short pause.
pub async fn accept_forever<F, Fut, E>(listener: TcpListener, what: &'static str, limiter: Arc<ConnLimiter>, handle: F)
where
    F: Fn(TcpStream, ConnPermit) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display,
{
    let mut errors = AcceptErrors::new(what);
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let permit = match limiter.try_admit(peer.ip()) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!("{what} connection closed at once: {e}");
                        drop(sock);
                        continue;
                    }
                };
                let conn = handle(sock, permit);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("{what} connection ended: {e}");
                    }
                });
            }
            Err(e) => errors.failed(&e).await,
        }
    }
}
