//! The authority's directory port: its own accept loop and HTTP/1 connections serving the
//! router ([`crate::server`]). Connections are admitted within the `[limits]` (in all and per
//! address), closed when they stop moving bytes (`dir_idle_timeout_secs`) and when a request's
//! head (request line and headers) is not complete `dir_header_timeout_secs` after its first
//! byte (a slow-loris client that trickles a header byte now and then, THREATS A24). Each is
//! logged at debug level with its peer address (never at info: addresses stay out of ordinary
//! logs). Tests read it to check that clients never contact an authority.
//!
//! The head deadline starts at a request's first byte, not when the connection starts waiting
//! for one: a silent connection, or a kept-alive one between requests, is left to the idle
//! timeout, so it is neither closed sooner than before nor counted as a slow head.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use allium_net::level_io::LevelIo;
use allium_net::limits::conn::ConnLimiter;
use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_net::limits::timed_io::TimedIo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// The directory port: a listener, the connection limits and the timeouts.
pub struct DirPort {
    pub listener: TcpListener,
    pub limiter: Arc<ConnLimiter>,
    /// A connection that moves no byte for this long is closed.
    pub idle: Duration,
    /// A request head not complete this long after its first byte closes its connection.
    pub header_timeout: Duration,
}

impl DirPort {
    /// Accepts connections forever and serves `app` on each, in a task of its own. A connection
    /// over the limiter's caps is closed at once; accept errors (e.g. out of file descriptors) are
    /// counted (`accept_errors`), logged at most once a minute and retried after a short pause,
    /// as on the other listeners. When this future is
    /// dropped, open connections finish the request they are serving and close.
    pub async fn serve(self, app: Router) -> Infallible {
        let mut errors = allium_net::accept::AcceptErrors::new("directory port");
        // Connections watch the receiver: once it is dropped with this future, they shut down
        // gracefully.
        let (alive, _alive_rx) = tokio::sync::watch::channel(());
        loop {
            let (sock, peer) = match self.listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Counted (`accept_errors`), logged at most once a minute, then a pause.
                    errors.failed(&e).await;
                    continue;
                }
            };
            match self.limiter.try_admit(peer.ip()) {
                Ok(permit) => {
                    tracing::debug!(peer = %peer.ip(), "directory connection");
                    let io = HeadDeadline::new(TimedIo::new(LevelIo(sock), self.idle, Some(permit)), self.header_timeout);
                    tokio::spawn(serve_connection(io, app.clone(), alive.clone(), peer.ip()));
                }
                Err(e) => tracing::debug!(peer = %peer.ip(), "directory connection closed at once: {e}"),
            }
        }
    }
}

/// Serves HTTP/1 requests on one connection until it closes (or, once `alive` has no
/// receiver, until the request being served is answered).
async fn serve_connection(io: HeadDeadline<TimedIo<LevelIo<TcpStream>>>, app: Router, alive: tokio::sync::watch::Sender<()>, peer: IpAddr) {
    let state = io.state.clone();
    let svc = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        // The head is complete: no deadline while the request is read and answered.
        state.store(REQUEST, Ordering::SeqCst);
        let call = hyper::service::Service::call(&svc, req);
        let state = state.clone();
        async move {
            let r = call.await;
            // The next bytes start the next request's head.
            state.store(IDLE, Ordering::SeqCst);
            r
        }
    });
    let mut conn = std::pin::pin!(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service));
    let mut stopping = std::pin::pin!(alive.closed());
    let mut shutting_down = false;
    let r = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = &mut stopping, if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = r {
        tracing::debug!(peer = %peer, "directory connection ended: {e}");
    }
}

/// Where a connection is between requests: waiting for a request's first byte, reading its
/// head (the deadline runs), or serving it.
const IDLE: u8 = 0;
const HEAD: u8 = 1;
const REQUEST: u8 = 2;
/// The deadline passed: the connection is failing.
const EXPIRED: u8 = 3;

/// `inner`, failing with `TimedOut` (and counted in `dir_header_timeouts`) when a request's
/// head is not complete `timeout` after its first byte was read. The service marks the head
/// complete (`REQUEST`) when it is called, and the connection idle again once it answered.
struct HeadDeadline<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    state: Arc<AtomicU8>,
}

impl<S> HeadDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        HeadDeadline { inner, timeout, deadline: Box::pin(tokio::time::sleep(timeout)), state: Arc::new(AtomicU8::new(IDLE)) }
    }

    /// True (once, counted) if a head is being read and its deadline has passed; registers
    /// for a wake-up at the deadline otherwise.
    fn head_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.state.load(Ordering::SeqCst) != HEAD || self.deadline.as_mut().poll(cx).is_pending() {
            return false;
        }
        if self.state.compare_exchange(HEAD, EXPIRED, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            LimitCounters::hit(&LIMITS.dir_header_timeouts);
        }
        true
    }
}

fn head_timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "request head not complete within dir_header_timeout_secs")
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadDeadline<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.head_expired(cx) || me.state.load(Ordering::SeqCst) == EXPIRED {
            return Poll::Ready(Err(head_timed_out()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && me.state.compare_exchange(IDLE, HEAD, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    // A request's first byte: its head has `timeout` to arrive.
                    let at = Instant::now() + me.timeout;
                    me.deadline.as_mut().reset(at);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if me.head_expired(cx) {
                    Poll::Ready(Err(head_timed_out()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The deadline runs from a head's first byte: silence before it is not timed (that is the
    /// idle timeout's business), nor is a request being served; a head that trickles past the
    /// deadline fails and is counted once.
    #[tokio::test]
    async fn head_deadline_runs_from_the_first_byte_until_the_head_is_complete() {
        const T: Duration = Duration::from_millis(200);
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = HeadDeadline::new(server, T);
        let mut buf = [0u8; 16];

        // Silent for longer than the deadline: still waiting.
        assert!(tokio::time::timeout(3 * T, io.read(&mut buf)).await.is_err(), "silence is not timed");

        // A head begins, then is complete (the service is called): not timed while served.
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 8);
        io.state.store(REQUEST, Ordering::SeqCst);
        assert!(tokio::time::timeout(3 * T, io.read(&mut buf)).await.is_err(), "a request being served is not timed");

        // Idle again, then a head that trickles: fails once T has passed since its first byte.
        io.state.store(IDLE, Ordering::SeqCst);
        let before = LIMITS.dir_header_timeouts.load(Ordering::Relaxed);
        let start = Instant::now();
        client.write_all(b"G").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        let trickled = async {
            loop {
                tokio::time::sleep(T / 4).await;
                let _ = client.write_all(b"E").await;
                if let Err(e) = io.read(&mut buf).await {
                    break e;
                }
            }
        };
        let err = tokio::time::timeout(Duration::from_secs(30), trickled).await.expect("the slow head failed");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= T, "not before the deadline");
        assert!(io.read(&mut buf).await.is_err(), "it stays failed");
        assert_eq!(LIMITS.dir_header_timeouts.load(Ordering::Relaxed), before + 1, "counted once");
    }
}
