//! A connection that is closed when it makes no progress for a while (slow or silent peers,
//! THREATS A24), holding its place under a connection limit while it lives.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::conn::ConnPermit;

/// `inner`, failing with `TimedOut` once neither a read nor a write has moved a byte for
/// `idle` while one was wanted.
pub struct TimedIo<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _permit: Option<ConnPermit>,
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, idle: Duration, permit: Option<ConnPermit>) -> Self {
        TimedIo { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)), _permit: permit }
    }

    fn progress(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    fn expired<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no progress: closing a slow or silent connection"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    me.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => me.expired(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    me.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => me.expired(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        match Pin::new(&mut me.inner).poll_flush(cx) {
            Poll::Pending => me.expired(cx),
            r => r,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Real time, with wide margins: a byte every 0.5 s against a 2-s limit (a stall of
    /// 1.5 s would be needed to fail it falsely).
    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut t = TimedIo::new(a, Duration::from_secs(2), None);
        let mut buf = [0u8; 4];
        // Bytes every 0.5 s keep it open past 2 s.
        let talker = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                b.write_all(b"x").await.unwrap();
            }
            b
        });
        for _ in 0..5 {
            assert_eq!(t.read(&mut buf).await.unwrap(), 1);
        }
        let _b = talker.await.unwrap();
        // Then silence: the read fails after 2 s.
        let e = t.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }
}
