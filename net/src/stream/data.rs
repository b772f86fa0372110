//! One stream as a value: [`DataStream`], what the circuit end hands out once a stream is open,
//! and the two tasks that move bytes between it and a socket ([`DataStream::splice`]): a reader
//! that turns what the socket gives into DATA while the other end has not said XOFF and the
//! circuit has room (the `ReadGate`), and a writer that writes queued DATA to the socket,
//! coalescing whatever is queued into one write, then reports how many cells were consumed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use allium_proto::relay_msg::MAX_BODY_PER_CELL;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use super::StreamEvent;
use crate::level_io::LevelIo;
use crate::limits::memquota::Held;

/// Cells a reader takes at most per socket read.
const READ_BATCH: usize = 64;
/// Bytes a writer gathers at most per write.
const WRITE_BATCH: usize = 256 * 1024;

/// A byte stream a circuit stream can be attached to: an application's or destination's TCP
/// socket, or an in-process pipe (a directory stream served or read by this node).
pub trait StreamSocket: Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

/// Read and written through [`LevelIo`]: a short transfer never parks a stream.
impl StreamSocket for TcpStream {
    type Read = LevelIo<OwnedReadHalf>;
    type Write = LevelIo<OwnedWriteHalf>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        let _ = self.set_nodelay(true);
        let (rd, wr) = self.into_split();
        (LevelIo(rd), LevelIo(wr))
    }
}

impl StreamSocket for DuplexStream {
    type Read = ReadHalf<DuplexStream>;
    type Write = WriteHalf<DuplexStream>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// A socket that holds `guard` (e.g. a place under a connection limit) for as long as its
/// write half lives, which is until its stream has closed.
pub struct Holding<S, G> {
    pub sock: S,
    pub guard: G,
}

/// The write half of a [`Holding`] socket.
pub struct HoldingWrite<W, G> {
    inner: W,
    _guard: G,
}

impl<S: StreamSocket, G: Send + Unpin + 'static> StreamSocket for Holding<S, G> {
    type Read = S::Read;
    type Write = HoldingWrite<S::Write, G>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        let (rd, wr) = self.sock.into_halves();
        (rd, HoldingWrite { inner: wr, _guard: self.guard })
    }
}

impl<W: AsyncWrite + Unpin, G: Unpin> AsyncWrite for HoldingWrite<W, G> {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pub(super) enum WriterMsg {
    /// DATA for the socket, charged to the circuit's memory until written.
    Data(Vec<u8>, Option<Held>),
    End,
}


/// DATA cells read from the streams' sockets and not yet sent: readers wait while the
/// congestion window holds back as many as a whole window, so a circuit's streams together
/// never read much more than the circuit can send (however many streams it has).
pub(super) struct ReadGate {
    pub(super) cells: std::sync::atomic::AtomicUsize,
    /// The congestion window, updated as it changes.
    pub(super) cap: std::sync::atomic::AtomicUsize,
    pub(super) room: Arc<Notify>,
}

impl ReadGate {
    /// Cells that may be read now (0: the gate is shut until room is made).
    fn free(&self) -> usize {
        use std::sync::atomic::Ordering;
        self.cap.load(Ordering::Acquire).saturating_sub(self.cells.load(Ordering::Acquire))
    }

    /// Waits until fewer than `cap` cells wait; returns how many more may be read now.
    /// Readers that pass together may each read that many: the cap is exceeded by at most
    /// one read batch per stream reading at the same moment.
    async fn room(&self) -> usize {
        use std::sync::atomic::Ordering;
        wait_for(&self.room, || {
            let (waiting, cap) = (self.cells.load(Ordering::Acquire), self.cap.load(Ordering::Acquire));
            (waiting < cap).then(|| cap - waiting)
        })
        .await
    }

    pub(super) fn add(&self, n: usize) {
        self.cells.fetch_add(n, std::sync::atomic::Ordering::AcqRel);
    }

    pub(super) fn sub(&self, n: usize) {
        let before = self.cells.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
        let cap = self.cap.load(std::sync::atomic::Ordering::Acquire);
        if before >= cap && before - n < cap {
            self.room.notify_waiters();
        }
    }

    /// The congestion window changed to `cap` cells.
    pub(super) fn set_cap(&self, cap: usize) {
        let before = self.cap.swap(cap, std::sync::atomic::Ordering::AcqRel);
        if cap > before {
            self.room.notify_waiters();
        }
    }
}

/// Waits until `check` gives a value, checking again each time `notify` wakes its waiters (the
/// waiter is registered before each check, so a wake-up between check and wait is not lost).
async fn wait_for<T>(notify: &Notify, check: impl Fn() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = check() {
            return v;
        }
        notified.await;
    }
}

/// Whether the other end of a stream said XOFF: its reader waits until XON.
#[derive(Default)]
pub(super) struct Pause {
    on: std::sync::atomic::AtomicBool,
    resume: Arc<Notify>,
}

impl Pause {
    fn is_on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn set(&self, on: bool) {
        self.on.store(on, std::sync::atomic::Ordering::Release);
        if !on {
            self.resume.notify_waiters();
        }
    }

    async fn wait(&self) {
        wait_for(&self.resume, || (!self.is_on()).then_some(())).await
    }
}

/// The tasks moving one stream's bytes, shared by its [`DataStream`] (which starts them) and
/// the mux (which stops the reader when the stream closes and bounds how long the writer
/// drains).
#[derive(Default)]
pub(super) struct StreamTasks {
    inner: Mutex<TaskState>,
}

#[derive(Default)]
struct TaskState {
    /// The stream left the mux: a reader started now would read for nobody.
    closed: bool,
    reader: Option<AbortHandle>,
    writer: Option<AbortHandle>,
}

impl StreamTasks {
    fn is_closed(&self) -> bool {
        self.inner.lock().expect("stream tasks").closed
    }

    /// The stream left the mux: stops its reader; its writer (if any) to be bounded by the
    /// caller.
    pub(super) fn close(&self) -> Option<AbortHandle> {
        let mut t = self.inner.lock().expect("stream tasks");
        t.closed = true;
        if let Some(r) = t.reader.take() {
            r.abort();
        }
        t.writer.clone()
    }
}

/// An open stream of a circuit end. Either spliced to a socket ([`DataStream::splice`]: the
/// front ends, exits and onion services do this, with no copy beyond the socket calls) or read
/// and written in place through [`AsyncRead`] and [`AsyncWrite`] (a Rust program embedding the
/// client). Writes are sent in whole cells; a flush sends the last partial one. Dropped (or
/// shut down), the stream ends with END DONE.
pub struct DataStream {
    id: u16,
    writer_rx: Option<mpsc::UnboundedReceiver<WriterMsg>>,
    paused: Arc<Pause>,
    gate: Arc<ReadGate>,
    events: mpsc::UnboundedSender<StreamEvent>,
    tasks: Arc<StreamTasks>,
    io: InPlace,
}

/// The state of a [`DataStream`] used through `AsyncRead`/`AsyncWrite`.
#[derive(Default)]
struct InPlace {
    /// The DATA being read, and how much of it was.
    reading: Option<(Vec<u8>, usize, Option<Held>)>,
    /// Cells read and not yet reported consumed.
    read_cells: u32,
    /// A write's last partial cell is held by the mux until a flush.
    unflushed: bool,
    /// END DONE sent (shut down).
    ended: bool,
    /// What a blocked write waits for: XON, or room at the gate.
    waiting: Option<(bool, Pin<Box<tokio::sync::futures::OwnedNotified>>)>,
}

impl DataStream {
    pub(super) fn new(id: u16, writer_rx: mpsc::UnboundedReceiver<WriterMsg>, paused: Arc<Pause>, gate: Arc<ReadGate>, events: mpsc::UnboundedSender<StreamEvent>, tasks: Arc<StreamTasks>) -> Self {
        DataStream { id, writer_rx: Some(writer_rx), paused, gate, events, tasks, io: InPlace::default() }
    }

    /// The stream's id on its circuit.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Drops it without ending the stream (the mux already closed it).
    pub(super) fn discard(mut self) {
        self.writer_rx = None;
    }

    /// Carries the stream over `sock` until either side ends it: `early` (bytes the
    /// application sent before the stream opened, e.g. after its SOCKS request) is sent first.
    /// Returns at once; two tasks do the work. A stream that closed meanwhile only delivers
    /// what it had queued (for [`super::DRAIN_GRACE`] at most).
    pub fn splice<S: StreamSocket>(mut self, sock: S, early: Vec<u8>) {
        let rx = self.writer_rx.take().expect("a stream is spliced once");
        let (rd, wr) = sock.into_halves();
        let write = write_loop(self.id, wr, rx, self.events.clone());
        let mut t = self.tasks.inner.lock().expect("stream tasks");
        if t.closed {
            // Closed before it was spliced: deliver what was queued, for a while at most.
            tokio::spawn(tokio::time::timeout(super::DRAIN_GRACE, write));
            return;
        }
        t.writer = Some(tokio::spawn(write).abort_handle());
        t.reader = Some(tokio::spawn(read_loop(self.id, rd, early, self.paused.clone(), self.gate.clone(), self.events.clone())).abort_handle());
    }

    /// Reports the cells read so far as consumed (the mux then acknowledges them).
    fn report_read(&mut self) {
        let cells = std::mem::take(&mut self.io.read_cells);
        if cells > 0 {
            let _ = self.events.send(StreamEvent::Consumed { id: self.id, cells });
        }
    }

    /// Waits (registering `cx`) while the other end said XOFF or the gate is shut; Ready once a
    /// write may go on, or once the stream or its circuit closed (the write then fails).
    fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let blocked_on = if self.events.is_closed() || self.tasks.is_closed() {
                None
            } else if self.paused.is_on() {
                Some((true, &self.paused.resume))
            } else if self.gate.free() == 0 {
                Some((false, &self.gate.room))
            } else {
                None
            };
            let Some((xoff, notify)) = blocked_on else {
                self.io.waiting = None;
                return Poll::Ready(());
            };
            if self.io.waiting.as_ref().is_none_or(|(w, _)| *w != xoff) {
                let mut fut = Box::pin(notify.clone().notified_owned());
                // Registered before the state is checked again: a wake-up in between is kept.
                fut.as_mut().enable();
                self.io.waiting = Some((xoff, fut));
                continue;
            }
            let (_, fut) = self.io.waiting.as_mut().expect("set above");
            match fut.as_mut().poll(cx) {
                Poll::Ready(()) => self.io.waiting = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncRead for DataStream {
    /// What the other end sent, as much as is queued (up to `buf`'s room); `Ok` with nothing
    /// put in `buf` at the end of the stream.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(rx) = this.writer_rx.as_mut() else { return Poll::Ready(Ok(())) };
        let start = buf.filled().len();
        while buf.remaining() > 0 {
            if let Some((d, at, _)) = this.io.reading.as_mut() {
                let n = buf.remaining().min(d.len() - *at);
                buf.put_slice(&d[*at..*at + n]);
                *at += n;
                if *at == d.len() {
                    this.io.reading = None;
                    this.io.read_cells += 1;
                }
                continue;
            }
            match rx.poll_recv(cx) {
                Poll::Ready(Some(WriterMsg::Data(d, held))) => this.io.reading = Some((d, 0, held)),
                Poll::Ready(Some(WriterMsg::End) | None) => break,
                Poll::Pending if buf.filled().len() == start => {
                    this.report_read();
                    return Poll::Pending;
                }
                Poll::Pending => break,
            }
        }
        this.report_read();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DataStream {
    /// Takes as much of `buf` as the circuit has room for (waiting for room, or for XON, when
    /// there is none).
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.io.ended || this.writer_rx.is_none() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.poll_writable(cx).is_pending() {
            return Poll::Pending;
        }
        if this.tasks.is_closed() {
            // The other end ended the stream, or the circuit closed.
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let cells = this.gate.free().min(READ_BATCH);
        let n = buf.len().min(cells * MAX_BODY_PER_CELL);
        this.gate.add(n.div_ceil(MAX_BODY_PER_CELL));
        // `more`: the mux holds a partial last cell back until the flush.
        if this.events.send(StreamEvent::Data { id: this.id, data: buf[..n].to_vec(), more: true }).is_err() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        this.io.unflushed = true;
        Poll::Ready(Ok(n))
    }

    /// Sends a partial last cell held back.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.io.unflushed) {
            let _ = this.events.send(StreamEvent::Drained { id: this.id });
        }
        Poll::Ready(Ok(()))
    }

    /// Ends the stream (END DONE, after what was written); reading goes on until the other end
    /// ends too.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let _ = self.as_mut().poll_flush(cx);
        let this = self.get_mut();
        if !std::mem::replace(&mut this.io.ended, true) {
            let _ = this.events.send(StreamEvent::Eof { id: this.id });
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for DataStream {
    fn drop(&mut self) {
        let Some(mut rx) = self.writer_rx.take() else { return };
        // Not spliced: every cell received and not read counts as consumed, so the circuit's
        // window is not lost (the mux counts those sent after the close itself).
        rx.close();
        if self.io.reading.take().is_some() {
            self.io.read_cells += 1;
        }
        while let Ok(m) = rx.try_recv() {
            if matches!(m, WriterMsg::Data(..)) {
                self.io.read_cells += 1;
            }
        }
        self.report_read();
        if !self.io.ended {
            let _ = self.events.send(StreamEvent::Eof { id: self.id });
        }
    }
}

/// Reads the socket into DATA while the other end has not said XOFF and the gate has room;
/// `early` (bytes the application sent before the stream opened) goes first.
async fn read_loop<R: AsyncRead + Unpin>(id: u16, mut rd: R, early: Vec<u8>, paused: Arc<Pause>, gate: Arc<ReadGate>, tx: mpsc::UnboundedSender<StreamEvent>) {
    if !early.is_empty() {
        gate.add(early.len().div_ceil(MAX_BODY_PER_CELL));
        if tx.send(StreamEvent::Data { id, data: early, more: false }).is_err() {
            return;
        }
    }
    let mut buf = vec![0u8; READ_BATCH * MAX_BODY_PER_CELL];
    // The last read filled its buffer: the mux may hold its tail back until the next read.
    let mut more = false;
    loop {
        paused.wait().await;
        let cells = gate.room().await.min(READ_BATCH);
        let want = cells * MAX_BODY_PER_CELL;
        let mut read = std::pin::pin!(rd.read(&mut buf[..want]));
        let got = match std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx))).await {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => {
                // Nothing more ready now: what the mux held back goes out.
                if more && tx.send(StreamEvent::Drained { id }).is_err() {
                    return;
                }
                read.await
            }
        };
        match got {
            Ok(0) | Err(_) => {
                let _ = tx.send(StreamEvent::Eof { id });
                return;
            }
            Ok(n) => {
                let used = n.div_ceil(MAX_BODY_PER_CELL);
                // Counted now, before the mux sees them, so other readers see them at once.
                gate.add(used);
                more = n == want;
                if tx.send(StreamEvent::Data { id, data: buf[..n].to_vec(), more }).is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes queued DATA to the socket, as much as is queued per write (up to [`WRITE_BATCH`]),
/// and reports the cells consumed.
async fn write_loop<W: AsyncWrite + Unpin>(id: u16, mut wr: W, mut rx: mpsc::UnboundedReceiver<WriterMsg>, tx: mpsc::UnboundedSender<StreamEvent>) {
    let mut buf = Vec::new();
    // The charges of the DATA in `buf`, released once it is written.
    let mut held: Vec<Option<Held>> = Vec::new();
    let mut failed = false;
    loop {
        let mut cells = 0u32;
        let mut end = false;
        if buf.is_empty() {
            match rx.recv().await {
                Some(WriterMsg::Data(d, h)) => {
                    buf.extend_from_slice(&d);
                    held.push(h);
                    cells += 1;
                }
                Some(WriterMsg::End) | None => end = true,
            }
        }
        while !end && buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(WriterMsg::Data(d, h)) => {
                    buf.extend_from_slice(&d);
                    held.push(h);
                    cells += 1;
                }
                Ok(WriterMsg::End) => end = true,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => end = true,
            }
        }
        if !buf.is_empty() && !failed && wr.write_all(&buf).await.is_err() {
            // The socket is gone. Keep taking (and discarding) DATA until the circuit task
            // closes the stream, so every cell it handed over is still counted below.
            failed = true;
            let _ = tx.send(StreamEvent::WriteFailed { id });
        }
        buf.clear();
        held.clear();
        // Written or discarded, every DATA cell (an empty one too) counts as consumed: a cell
        // never counted would shrink the other end's windows for good.
        if cells > 0 {
            let _ = tx.send(StreamEvent::Consumed { id, cells });
        }
        if end {
            if !failed {
                let _ = wr.shutdown().await;
            }
            return;
        }
    }
}
