//! TCP reads and writes that learn a socket is not ready only from `EWOULDBLOCK`.
//!
//! tokio's own `TcpStream` reads and writes take a *short* transfer (fewer bytes than asked)
//! as proof that the kernel's buffer is empty (read) or full (write): it forgets the socket's
//! readiness and waits for the next edge-triggered epoll event. On Linux that holds. A network
//! stack that accepts at most 64 KiB per `send` while it still has room (Shadow's TCP does,
//! and reports writability only when it changes), or returns part of what it holds, never
//! sends that event: the writer waits forever on a writable socket. A relay's link writer
//! hands the kernel up to 256 KiB at once, so on such a stack a busy link stopped for good
//! part-way through a download ("Downloads stall at ~400 KB", issue 17).
//!
//! [`LevelIo`] asks again after a short transfer and forgets readiness only when the kernel
//! says `EWOULDBLOCK`, which every stack reports the same way. On Linux that costs one extra
//! system call per short transfer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A TCP socket or one half of one.
pub trait TcpHandle {
    fn tcp(&self) -> &TcpStream;
}

impl TcpHandle for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl TcpHandle for OwnedReadHalf {
    fn tcp(&self) -> &TcpStream {
        self.as_ref()
    }
}

impl TcpHandle for OwnedWriteHalf {
    fn tcp(&self) -> &TcpStream {
        self.as_ref()
    }
}

/// `inner` read and written as the module describes.
pub struct LevelIo<T>(pub T);

impl<T> LevelIo<T> {
    pub fn get_ref(&self) -> &T {
        &self.0
    }
}

impl<T: TcpHandle + Unpin> AsyncRead for LevelIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let tcp = self.0.tcp();
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was cleared: the next poll registers for the next event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<T: TcpHandle + AsyncWrite + Unpin> AsyncWrite for LevelIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let tcp = self.0.tcp();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes go through both ways whole and in order, in writes far larger than a socket
    /// buffer (many short writes), and the end of the stream is seen.
    #[tokio::test]
    async fn large_transfers_arrive_whole_and_end() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        let (a, (b, _)) = (a.unwrap(), b.unwrap());
        let (_ar, aw) = a.into_split();
        let (br, _bw) = b.into_split();
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i * 7 + i / 4099) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let mut w = LevelIo(aw);
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        LevelIo(br).read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got == data, "{} bytes of {}", got.len(), data.len());
    }
}
