//! A link's transport messages (`u16 length | body`) read from its socket, cancel-safely: a
//! read that is dropped part-way keeps what it had read, and the next read goes on from there.
//! So a link's reader can wait for a message and a timer at once (to free its buffer when the
//! link goes quiet) without a system call per message to peek first.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The message being read and the buffer it is read into (grown to the largest message seen).
#[derive(Default)]
pub struct FrameReader {
    head: [u8; 2],
    /// Bytes of the current message read: the length's two, then the body's.
    got: usize,
    /// The last read completed a message (the next read starts another).
    done: bool,
    body: Vec<u8>,
}

impl FrameReader {
    /// Reads until a whole message is available as [`FrameReader::frame`]. Cancel-safe.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_next(cx, rd)).await
    }

    fn poll_next<R: AsyncRead + Unpin>(&mut self, cx: &mut Context<'_>, rd: &mut R) -> Poll<io::Result<()>> {
        if std::mem::take(&mut self.done) {
            self.got = 0;
        }
        loop {
            let len = usize::from(u16::from_be_bytes(self.head));
            if self.got >= 2 && self.got == 2 + len {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let dst: &mut [u8] = if self.got < 2 {
                &mut self.head[self.got..]
            } else {
                if self.body.len() < len {
                    self.body.resize(len, 0);
                }
                &mut self.body[self.got - 2..len]
            };
            let mut buf = ReadBuf::new(dst);
            ready!(Pin::new(&mut *rd).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.got += n;
        }
    }

    /// The message the last completed [`FrameReader::next`] read.
    pub fn frame(&self) -> &[u8] {
        &self.body[..usize::from(u16::from_be_bytes(self.head))]
    }

    /// Frees the buffer if no message is part-way read; whether it did.
    pub fn free_if_between_messages(&mut self) -> bool {
        if (self.got > 0 && !self.done) || self.body.capacity() == 0 {
            return false;
        }
        self.body = Vec::new();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Messages split at every byte, with reads cancelled in between, arrive whole and in
    /// order; the buffer is freed only between messages; the end of the stream is an error.
    #[tokio::test]
    async fn messages_arrive_whole_through_cancelled_reads() {
        let (mut w, mut r) = tokio::io::duplex(64);
        let msgs: Vec<Vec<u8>> = vec![vec![1; 300], vec![], vec![2; 5], vec![3; 1000]];
        let sent = msgs.clone();
        let writer = tokio::spawn(async move {
            for m in &sent {
                let mut bytes = (m.len() as u16).to_be_bytes().to_vec();
                bytes.extend_from_slice(m);
                for b in bytes {
                    w.write_all(&[b]).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut fr = FrameReader::default();
        let mut got = Vec::new();
        let mut freed_mid_message = false;
        while got.len() < msgs.len() {
            // Cancel the read whenever it has to wait.
            match std::future::poll_fn(|cx| Poll::Ready(fr.poll_next(cx, &mut r))).await {
                Poll::Ready(res) => {
                    res.unwrap();
                    got.push(fr.frame().to_vec());
                    assert!(fr.free_if_between_messages() || fr.frame().is_empty());
                }
                Poll::Pending => {
                    freed_mid_message |= fr.got > 2 && !fr.done && fr.free_if_between_messages();
                    tokio::task::yield_now().await;
                }
            }
        }
        writer.await.unwrap();
        assert_eq!(got, msgs);
        assert!(!freed_mid_message, "a buffer holding part of a message was freed");
        assert_eq!(fr.next(&mut r).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
