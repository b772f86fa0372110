//! Streams multiplexed on one circuit end (the client's, the exit's, or an onion service's):
//! the queues and the stream tasks, kept by the circuit task in a [`StreamMux`]. The flow and
//! congestion control decisions are the sans-IO [`StreamFlow`]'s (`allium_proto::circuit`);
//! the mux carries them out.
//!
//! An open stream leaves the mux as a value, a [`DataStream`] (`data.rs`): whoever holds it —
//! the SOCKS front end, the exit that connected the destination, the onion service that
//! connected its target, or a program using it in place — moves its bytes, and reports the
//! cells it consumed; only then does the mux acknowledge them with circuit SENDMEs, and send
//! XON to a stream it had sent XOFF. Streams the other end opens are answered through
//! [`Incoming`] (`incoming.rs`), one piece of code for exits and onion services.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_proto::circuit::streams::{is_data, DataIn, Out, StreamFlow};
use allium_proto::flow::{FlowError, FlowParams, SENDME_TOKEN_LEN};
use allium_proto::relay_msg::{EndReason, RelayMsg, MAX_BODY_PER_CELL};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use crate::limits::memquota::{Held, HeldMem, CELL_MEM};
use data::{Pause, ReadGate, StreamTasks, WriterMsg};
pub use allium_proto::circuit::streams::{StreamError, MAX_STREAMS};
pub use data::{DataStream, Holding, HoldingWrite, StreamSocket};
pub use incoming::{Answer, Incoming, IncomingStream, Reply};

mod data;
mod incoming;

/// How long a stream's writer may go on delivering what it holds after its circuit closed
/// (then it is stopped and its memory freed; at once if the memory budget closed the circuit).
pub const DRAIN_GRACE: Duration = Duration::from_secs(60);

/// What stream tasks tell the circuit task.
#[derive(Debug)]
pub enum StreamEvent {
    /// Bytes read from the socket. `more`: the read filled the buffer, so more may be waiting;
    /// a partly filled last cell is then held back to be filled by the next read (so that a
    /// partial DATA cell means "nothing more ready", as the stall rule reads it).
    Data { id: u16, data: Vec<u8>, more: bool },
    /// The reader found nothing more ready after a read with `more`: send what is held back.
    Drained { id: u16 },
    Eof { id: u16 },
    /// The writer consumed `cells` DATA cells.
    Consumed { id: u16, cells: u32 },
    WriteFailed { id: u16 },
}

/// One open stream's I/O side.
struct Stream {
    writer: mpsc::UnboundedSender<WriterMsg>,
    /// The stream's ends, until [`StreamMux::take_stream`] hands them out.
    ends: Option<DataStream>,
    tasks: Arc<StreamTasks>,
    /// Set while the other end holds this stream back (XOFF).
    paused: Arc<Pause>,
}

/// The streams of one circuit end: their flow control ([`StreamFlow`]) and their tasks.
pub struct StreamMux {
    flow: StreamFlow<Held>,
    streams: HashMap<u16, Stream>,
    /// DATA cells queued for the congestion window, which the readers wait on.
    gate: Arc<ReadGate>,
    /// Where stream data this circuit holds is charged (the node's memory budget).
    mem: Option<Arc<HeldMem>>,
    /// Writers of closed streams still delivering what they hold.
    draining: Vec<AbortHandle>,
    events_tx: mpsc::UnboundedSender<StreamEvent>,
    events_rx: mpsc::UnboundedReceiver<StreamEvent>,
}

impl Default for StreamMux {
    fn default() -> Self {
        Self::new(FlowParams::default())
    }
}

impl StreamMux {
    /// The streams of a circuit whose ends agreed on `flow` (in the circuit handshake).
    pub fn new(flow: FlowParams) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        StreamMux {
            flow: StreamFlow::new(flow, Instant::now()),
            streams: HashMap::new(),
            gate: Arc::new(ReadGate { cells: Default::default(), cap: (flow.cc.cwnd_init as usize).into(), room: Arc::new(Notify::new()) }),
            mem: None,
            draining: Vec::new(),
            events_tx,
            events_rx,
        }
    }

    /// Streams this circuit may carry at once (at least one); over it [`Self::open`] refuses.
    pub fn set_max_streams(&mut self, n: usize) {
        self.flow.set_max_streams(n);
    }

    /// Charges the stream data this circuit holds (read and not yet sent, received and not yet
    /// written) to `mem`, the circuit's share of the node's memory budget.
    pub fn set_mem(&mut self, mem: Arc<HeldMem>) {
        self.mem = Some(mem);
    }

    /// Waits for the next event from a stream task.
    pub async fn next_event(&mut self) -> StreamEvent {
        // The mux holds a sender, so the channel never closes while it exists.
        self.events_rx.recv().await.expect("mux holds a sender")
    }

    pub fn len(&self) -> usize {
        self.flow.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flow.is_empty()
    }

    /// Picks an unused stream id (client side).
    pub fn alloc_id(&mut self) -> Option<u16> {
        self.flow.alloc_id()
    }

    /// Registers a stream; DATA for it is queued until its [`DataStream`]
    /// ([`Self::take_stream`]) is spliced to a socket.
    pub fn open(&mut self, id: u16) -> Result<(), StreamError> {
        self.flow.open(id, Instant::now())?;
        let (writer, rx) = mpsc::unbounded_channel();
        let paused: Arc<Pause> = Arc::default();
        let tasks: Arc<StreamTasks> = Arc::default();
        let ends = DataStream::new(id, rx, paused.clone(), self.gate.clone(), self.events_tx.clone(), tasks.clone());
        self.streams.insert(id, Stream { writer, ends: Some(ends), tasks, paused });
        Ok(())
    }

    /// The open stream `id` as a value, once: whoever holds it splices it to a socket.
    pub fn take_stream(&mut self, id: u16) -> Option<DataStream> {
        self.streams.get_mut(&id)?.ends.take()
    }

    /// Splices open stream `id` to `sock` ([`DataStream::splice`]).
    pub fn attach<S: StreamSocket>(&mut self, id: u16, sock: S) {
        if let Some(ds) = self.take_stream(id) {
            ds.splice(sock, Vec::new());
        }
    }

    /// Handles DATA, SENDME, XOFF, XON or END from the other end. Returns messages to send back.
    pub fn handle_msg(&mut self, id: u16, msg: RelayMsg) -> Result<Out, StreamError> {
        let now = Instant::now();
        match msg {
            RelayMsg::Sendme { token } if id == 0 => {
                let out = self.flow.on_circuit_sendme(token.as_ref(), now)?;
                self.gate.set_cap(self.flow.cwnd() as usize);
                Ok(self.sent(out))
            }
            // Streams have no SENDMEs: XON and XOFF pace them.
            RelayMsg::Sendme { .. } => Err(FlowError::UnexpectedSendme.into()),
            RelayMsg::Xoff | RelayMsg::Xon => {
                if let Some(pause) = self.flow.on_pause(id, msg == RelayMsg::Xoff, now)? {
                    if let Some(s) = self.streams.get(&id) {
                        s.paused.set(pause);
                    }
                }
                Ok(vec![])
            }
            RelayMsg::Data(_) | RelayMsg::DataToken { .. } => {
                let (d, token) = match msg {
                    RelayMsg::DataToken { data, token } => (data, Some(token)),
                    RelayMsg::Data(d) => (d, None),
                    _ => unreachable!(),
                };
                let filled = d.len() + token.map_or(0, |_| SENDME_TOKEN_LEN);
                match self.flow.on_data(id, filled, token, now)? {
                    DataIn::Dropped(out) => Ok(out),
                    DataIn::Deliver => {
                        let s = self.streams.get(&id).expect("open in the flow, open here");
                        let held = self.mem.as_ref().map(|m| m.hold(CELL_MEM));
                        if s.writer.send(WriterMsg::Data(d, held)).is_err() {
                            // Its DataStream was dropped: nobody will consume it.
                            return Ok(self.flow.undeliverable());
                        }
                        Ok(self.flow.delivered(id))
                    }
                }
            }
            RelayMsg::End(_) => {
                if self.flow.on_end(id)? {
                    if let Some(s) = self.streams.remove(&id) {
                        self.retire(s);
                    }
                }
                Ok(vec![])
            }
            _ => Err(StreamError::UnknownStream),
        }
    }

    /// Whether `id` is a stream this end closed (its late cells are ignored).
    pub fn was_closed(&self, id: u16) -> bool {
        self.flow.was_closed(id)
    }

    /// Streams that made no progress for `limit` although the other end owes them something
    /// ([`StreamFlow::stalled`]).
    pub fn stalled(&self, now: Instant, limit: Duration) -> Vec<u16> {
        self.flow.stalled(now, limit)
    }

    /// Handles an event from a stream task. Returns messages to send.
    pub fn handle_event(&mut self, ev: StreamEvent) -> Out {
        let now = Instant::now();
        // Only reads queue cells (charged to the memory budget, a token drawn where due).
        let mem = &self.mem;
        let mut hold = || mem.as_ref().map(|m| m.hold(CELL_MEM));
        match ev {
            StreamEvent::Data { id, data, more } => {
                // The reader counted these cells at the gate when it read them.
                let read_for = data.len().div_ceil(MAX_BODY_PER_CELL);
                let Some((cells, out)) = self.flow.on_read(id, &data, more, now, &mut rand::thread_rng(), &mut hold) else {
                    self.gate.sub(read_for);
                    return vec![];
                };
                // Held-back bytes and a token's 16 bytes change the count: correct the gate.
                if cells >= read_for {
                    self.gate.add(cells - read_for);
                } else {
                    self.gate.sub(read_for - cells);
                }
                self.sent(out)
            }
            StreamEvent::Drained { id } => {
                let Some((cells, out)) = self.flow.on_drained(id, now, &mut rand::thread_rng(), &mut hold) else { return vec![] };
                self.gate.add(cells);
                self.sent(out)
            }
            StreamEvent::Consumed { id, cells } => self.flow.on_consumed(id, cells),
            StreamEvent::Eof { id } => self.close(id, EndReason::Done),
            StreamEvent::WriteFailed { id } => self.close(id, EndReason::ConnReset),
        }
    }

    /// Closes a stream from our side: bytes held back and queued DATA go first, then END.
    pub fn close(&mut self, id: u16, reason: EndReason) -> Out {
        let mem = &self.mem;
        let mut hold = || mem.as_ref().map(|m| m.hold(CELL_MEM));
        let Some((cells, out)) = self.flow.close(id, reason, Instant::now(), &mut rand::thread_rng(), &mut hold) else { return vec![] };
        self.gate.add(cells);
        if let Some(s) = self.streams.remove(&id) {
            self.retire(s);
        }
        self.sent(out)
    }

    /// DATA cells leaving the queue free their place at the readers' gate.
    fn sent(&self, out: Out) -> Out {
        let data = out.iter().filter(|(_, m)| is_data(m)).count();
        if data > 0 {
            self.gate.sub(data);
        }
        out
    }

    /// A stream left the table: its reader stops, its writer delivers what it holds and ends.
    fn retire(&mut self, mut s: Stream) {
        if let Some(ends) = s.ends.take() {
            ends.discard();
        }
        let _ = s.writer.send(WriterMsg::End);
        self.draining.retain(|w| !w.is_finished());
        self.draining.extend(s.tasks.close());
        // A program writing to it in place stops waiting (its write fails).
        s.paused.set(false);
        self.gate.room.notify_waiters();
    }
}

impl Drop for StreamMux {
    fn drop(&mut self) {
        let mut writers = std::mem::take(&mut self.draining);
        for s in self.streams.values() {
            writers.extend(s.tasks.close());
            s.paused.set(false);
        }
        self.gate.room.notify_waiters();
        // Writers deliver what they hold to slow sockets for a while, not forever: a
        // destination that never reads must not keep the memory once the circuit is gone.
        writers.retain(|w| !w.is_finished());
        if writers.is_empty() {
            return;
        }
        if self.mem.as_ref().is_some_and(|m| m.reclaimed()) {
            writers.iter().for_each(AbortHandle::abort);
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(DRAIN_GRACE).await;
                writers.iter().for_each(AbortHandle::abort);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use allium_proto::congestion::CcParams;
    use allium_proto::flow::{SendmeToken, TokenSender};

    /// A circuit window of `w` cells, a SENDME per `inc`, an initial congestion window of
    /// `cwnd`, XOFF after `xoff` cells.
    fn flow(w: u32, inc: u32, cwnd: u32, xoff: u32) -> FlowParams {
        FlowParams { circuit_window: w, circuit_sendme_inc: inc, xoff_cells: xoff, cc: CcParams { cwnd_init: cwnd, ..CcParams::default() } }
    }

    fn sendmes_in(out: &[(u16, RelayMsg)]) -> Vec<u16> {
        out.iter().filter(|(_, m)| matches!(m, RelayMsg::Sendme { .. })).map(|(id, _)| *id).collect()
    }

    /// The tokens of the DATA cells in `out`, in order.
    fn tokens_in(out: &[(u16, RelayMsg)]) -> Vec<SendmeToken> {
        out.iter().filter_map(|(_, m)| if let RelayMsg::DataToken { token, .. } = m { Some(*token) } else { None }).collect()
    }

    /// The circuit SENDME that acknowledges the DATA cell that carried `token`.
    fn circuit_sendme(token: SendmeToken) -> RelayMsg {
        RelayMsg::Sendme { token: Some(token) }
    }

    /// The other end of the circuit sending DATA: a token where one is due.
    struct Peer(TokenSender);

    impl Peer {
        fn new(flow: &FlowParams) -> Self {
            Peer(TokenSender::new(flow))
        }
        fn data(&mut self, d: Vec<u8>) -> RelayMsg {
            let token = self.0.due().then(rand::random);
            self.0.on_data(token);
            match token {
                Some(token) => RelayMsg::DataToken { data: d, token },
                None => RelayMsg::Data(d),
            }
        }
        /// Sends `n` DATA cells of `len` bytes to `mux` on stream `id`; what the mux answered.
        fn fill(&mut self, mux: &mut StreamMux, id: u16, n: u32, len: usize) -> Vec<(u16, RelayMsg)> {
            (0..n).flat_map(|_| mux.handle_msg(id, self.data(vec![1; len])).unwrap()).collect()
        }
    }

    /// `limits.max_streams_per_circuit`: once the circuit carries that many streams another is
    /// refused (as too many, not as a protocol violation), and a closed one makes room.
    #[tokio::test]
    async fn streams_over_the_cap_are_refused_until_one_closes() {
        let mut mux = StreamMux::default();
        mux.set_max_streams(3);
        for id in 1..=3 {
            mux.open(id).unwrap();
        }
        assert!(matches!(mux.open(4), Err(StreamError::TooManyStreams)));
        assert_eq!(mux.alloc_id(), None, "nor does this end pick an id");
        assert!(matches!(mux.open(2), Err(StreamError::DuplicateStream)));
        let _ = mux.close(2, EndReason::Done);
        mux.open(4).unwrap();
        assert_eq!(MAX_STREAMS, StreamMux::default().flow.max_streams(), "the default");
    }

    #[tokio::test]
    async fn sendmes_only_after_consumption_and_the_circuit_window_is_enforced() {
        let f = flow(200, 50, 100, 5000);
        let mut mux = StreamMux::new(f);
        let mut peer = Peer::new(&f);
        mux.open(1).unwrap();
        assert!(peer.fill(&mut mux, 1, 200, 10).is_empty(), "no SENDME on receipt");
        assert!(matches!(mux.handle_msg(1, peer.data(vec![1])), Err(StreamError::Flow(FlowError::WindowExceeded))));
        assert!(mux.handle_event(StreamEvent::Consumed { id: 1, cells: 49 }).is_empty());
        let out = mux.handle_event(StreamEvent::Consumed { id: 1, cells: 1 });
        assert_eq!(sendmes_in(&out), vec![0], "a circuit SENDME after 50 consumed cells");
        assert!(matches!(out[0].1, RelayMsg::Sendme { token: Some(_) }), "a circuit SENDME carries its token");
        assert!(matches!(mux.handle_msg(9, RelayMsg::Data(vec![1])), Err(StreamError::UnknownStream)));
        // Streams have no SENDMEs.
        assert!(matches!(mux.handle_msg(1, RelayMsg::Sendme { token: None }), Err(StreamError::Flow(FlowError::UnexpectedSendme))));
    }

    /// A read that filled its buffer keeps its partly filled last cell back for the next read,
    /// so every DATA cell of a transfer is full but the last one sent before the source ran dry
    /// (a receiver reads a full last cell as "more is owed": the stall rule). The tail goes out
    /// when the reader finds nothing more ready, or with END.
    #[tokio::test]
    async fn a_read_that_filled_its_buffer_holds_back_its_partial_cell() {
        let f = flow(1000, 100, 1000, 5000);
        let body = |out: &[(u16, RelayMsg)]| -> Vec<usize> {
            out.iter()
                .filter_map(|(_, m)| match m {
                    RelayMsg::Data(d) => Some(d.len()),
                    RelayMsg::DataToken { data, .. } => Some(data.len() + SENDME_TOKEN_LEN),
                    _ => None,
                })
                .collect()
        };
        let mut mux = StreamMux::new(f);
        mux.open(1).unwrap();
        let half = MAX_BODY_PER_CELL / 2;
        let out = mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; MAX_BODY_PER_CELL + half], more: true });
        assert_eq!(body(&out), [MAX_BODY_PER_CELL], "the half cell is held back");
        let out = mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; MAX_BODY_PER_CELL - half], more: true });
        assert_eq!(body(&out), [MAX_BODY_PER_CELL], "and filled by the next read");
        let out = mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; 10], more: true });
        assert!(body(&out).is_empty());
        assert_eq!(body(&mux.handle_event(StreamEvent::Drained { id: 1 })), [10], "nothing more ready: it goes out");
        assert!(mux.handle_event(StreamEvent::Drained { id: 1 }).is_empty(), "nothing held");
        let out = mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; 20], more: false });
        assert_eq!(body(&out), [20], "a read that did not fill its buffer is sent whole");
        mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; 30], more: true });
        let out = mux.close(1, EndReason::Done);
        assert_eq!(body(&out), [30], "held bytes go before END");
        assert!(matches!(out.last(), Some((1, RelayMsg::End(_)))));
    }

    /// THREATS A27(b): a circuit SENDME must echo the token of the DATA cell that completed the
    /// increment it acknowledges; a forged one (no token, a guessed one) is a violation, and the
    /// token cells are sent and parsed where due.
    #[tokio::test]
    async fn a27_forged_circuit_sendmes_are_refused() {
        let f = flow(100, 10, 100, 500);
        let mut mux = StreamMux::new(f);
        mux.open(1).unwrap();
        let out = mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; MAX_BODY_PER_CELL * 120], more: false });
        assert_eq!(out.len(), 100);
        let tokens = tokens_in(&out);
        assert_eq!(tokens.len(), 10, "one token per increment");
        for (i, (_, m)) in out.iter().enumerate() {
            assert_eq!(matches!(m, RelayMsg::DataToken { .. }), (i + 1) % 10 == 0, "cell {}", i + 1);
        }
        assert!(matches!(mux.handle_msg(0, RelayMsg::Sendme { token: None }), Err(StreamError::Flow(FlowError::BadSendmeToken))));
        let (mut guessed, _) = mux_sending(f);
        assert!(matches!(guessed.handle_msg(0, circuit_sendme([0; SENDME_TOKEN_LEN])), Err(StreamError::Flow(FlowError::BadSendmeToken))));
        let mut out_of_order = mux_sending(f);
        let later = tokens_in(&out_of_order.1)[1];
        assert!(matches!(out_of_order.0.handle_msg(0, circuit_sendme(later)), Err(StreamError::Flow(FlowError::BadSendmeToken))));
        assert_eq!(mux.handle_msg(0, circuit_sendme(tokens[0])).unwrap().len(), 10, "the right token opens the window (to its limit of 100)");
    }

    /// A mux that has sent a circuit window of DATA on stream 1, and what it sent.
    fn mux_sending(f: FlowParams) -> (StreamMux, Vec<(u16, RelayMsg)>) {
        let mut mux = StreamMux::new(f);
        mux.open(1).unwrap();
        let out = mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; MAX_BODY_PER_CELL * f.circuit_window as usize], more: false });
        (mux, out)
    }

    /// The cells that carry tokens give up 16 bytes of stream data: every byte arrives, and the
    /// gate counts the extra cell.
    #[tokio::test]
    async fn token_cells_carry_stream_bytes_and_the_gate_counts_the_extra_cell() {
        let f = flow(1000, 10, 1000, 500);
        let mut tx = StreamMux::new(f);
        tx.open(1).unwrap();
        let data: Vec<u8> = (0..MAX_BODY_PER_CELL * 40).map(|i| i as u8).collect();
        tx.gate.add(40);
        let out = tx.handle_event(StreamEvent::Data { id: 1, data: data.clone(), more: false });
        assert_eq!(out.len(), 41, "four tokens of 16 bytes need one more cell");
        assert_eq!(tx.gate.cells.load(std::sync::atomic::Ordering::Relaxed), 0, "the gate counted the extra cell and its sending");
        let mut rx = StreamMux::new(f);
        rx.open(1).unwrap();
        let mut got = Vec::new();
        for (id, m) in out {
            match &m {
                RelayMsg::Data(d) | RelayMsg::DataToken { data: d, .. } => got.extend_from_slice(d),
                _ => unreachable!(),
            }
            rx.handle_msg(id, m).unwrap();
        }
        assert_eq!(got, data);
        assert_eq!(rx.flow.recv_remaining(), 1000 - 41);
    }

    /// The limits are the circuit's agreed ones, not the defaults: the receiver's circuit
    /// window, the sender's initial congestion window.
    #[tokio::test]
    async fn agreed_parameters_are_enforced() {
        let f = flow(100, 10, 60, 5000);
        let mut mux = StreamMux::new(f);
        mux.open(1).unwrap();
        let mut peer = Peer::new(&f);
        peer.fill(&mut mux, 1, 100, 1);
        assert!(matches!(mux.handle_msg(1, peer.data(vec![1])), Err(StreamError::Flow(FlowError::WindowExceeded))));
        let out = mux.handle_event(StreamEvent::Consumed { id: 1, cells: 20 });
        assert_eq!(sendmes_in(&out), vec![0, 0], "a circuit SENDME per 10 cells");
        let mut sender = StreamMux::new(f);
        sender.open(2).unwrap();
        let out = sender.handle_event(StreamEvent::Data { id: 2, data: vec![7u8; MAX_BODY_PER_CELL * 150], more: false });
        assert_eq!(out.len(), 60, "the initial congestion window of 60 bounds what is sent");
    }

    /// However many streams a circuit has, its readers stop reading once a congestion window's
    /// worth of DATA waits for it (THREATS A27: a client that never sends a circuit SENDME
    /// cannot make an exit read every stream into memory).
    #[tokio::test]
    async fn readers_stop_when_a_congestion_window_of_data_waits() {
        let f = flow(200, 10, 100, 500);
        let mut mux = StreamMux::new(f);
        let mut sources = Vec::new();
        for id in 1..=8 {
            let (ours, mut theirs) = tokio::io::duplex(1 << 20);
            mux.open(id).unwrap();
            mux.attach(id, ours);
            theirs.write_all(&vec![7u8; 50 * MAX_BODY_PER_CELL]).await.unwrap();
            sources.push(theirs);
        }
        let (mut sent, mut tokens) = (0, Vec::new());
        while let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), mux.next_event()).await {
            let out = mux.handle_event(ev);
            sent += out.iter().filter(|(_, m)| is_data(m)).count();
            tokens.extend(tokens_in(&out));
        }
        let waiting = mux.flow.queued_data();
        assert_eq!(sent, 100, "the congestion window bounds what is sent");
        // Eight streams could read 400 cells; once 100 wait, the readers wait too (a cell that
        // carries a SENDME token can add one cell per increment of 10).
        assert!(waiting <= 110, "{waiting} DATA cells read and waiting");
        // A circuit SENDME lets its 10 cells go, and slow start 10 more; the readers fill the
        // gap again, up to the grown window.
        let out = mux.handle_msg(0, circuit_sendme(tokens[0])).unwrap();
        assert_eq!(out.len(), 20);
        assert_eq!(mux.flow.cwnd(), 110);
        while let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), mux.next_event()).await {
            mux.handle_event(ev);
        }
        assert!(mux.flow.queued() <= 121 && mux.flow.queued() >= 90, "{} waiting", mux.flow.queued());
    }

    #[tokio::test]
    async fn end_waits_behind_data_when_the_congestion_window_is_closed() {
        let mut mux = StreamMux::default();
        mux.open(1).unwrap();
        let cwnd = FlowParams::default().cc.cwnd_init as usize;
        let data = vec![7u8; MAX_BODY_PER_CELL * (cwnd + 3)];
        let out = mux.handle_event(StreamEvent::Data { id: 1, data, more: false });
        assert_eq!(out.len(), cwnd, "the congestion window bounds what is sent");
        assert!(mux.close(1, EndReason::Done).is_empty(), "END must not overtake queued DATA");
        let out2 = mux.handle_msg(0, circuit_sendme(tokens_in(&out)[0])).unwrap();
        let (end, data) = out2.split_last().unwrap();
        assert!(!data.is_empty() && data.iter().all(|(_, m)| is_data(m)), "the queued DATA first");
        assert!(matches!(end, (1, RelayMsg::End(EndReason::Done))));
        // A late DATA, XON or XOFF for the closed stream is ignored, not a violation.
        assert!(mux.handle_msg(1, RelayMsg::Data(vec![1])).is_ok());
        assert!(mux.handle_msg(1, RelayMsg::Xoff).is_ok());
    }

    /// The cell that takes the congestion window's last slot is always full: a partly filled
    /// one waits for the next SENDME (it would tell the receiver "nothing more ready" although
    /// the window, not the source, stops the sender), and meanwhile counts as waiting for the
    /// window. A full one takes the slot.
    #[tokio::test]
    async fn a_partly_filled_cell_never_closes_the_congestion_window() {
        // Window 100, increment 10: cells 10, 20, ... carry a 16-byte token.
        let f = flow(1000, 10, 100, 500);
        let fill_but_one = 99 * MAX_BODY_PER_CELL - 9 * SENDME_TOKEN_LEN;
        let later = Instant::now() + Duration::from_secs(21);
        let limit = Duration::from_secs(20);

        let mut mux = StreamMux::new(f);
        mux.open(1).unwrap();
        let out = mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; fill_but_one], more: false });
        assert_eq!(out.iter().filter(|(_, m)| is_data(m)).count(), 99);
        assert_eq!(mux.flow.available(), 1);
        assert!(mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; 10], more: false }).is_empty(), "the partial cell is held");
        assert!(mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; 900], more: false }).is_empty(), "and what follows it");
        assert_eq!(mux.stalled(later, limit), vec![1], "held DATA waits for a circuit SENDME");
        let out = mux.handle_msg(0, circuit_sendme(tokens_in(&out)[0])).unwrap();
        // (The held cell is cell 100, so it carries the increment's token beside its 10 bytes.)
        let sizes: Vec<usize> = out.iter().filter_map(|(_, m)| if let RelayMsg::Data(d) | RelayMsg::DataToken { data: d, .. } = m { Some(d.len()) } else { None }).collect();
        assert_eq!(sizes, [10, MAX_BODY_PER_CELL, 900 - MAX_BODY_PER_CELL], "the SENDME lets it go first, then what followed");

        let mut full = StreamMux::new(f);
        full.open(1).unwrap();
        full.handle_event(StreamEvent::Data { id: 1, data: vec![7; fill_but_one], more: false });
        let out = full.handle_event(StreamEvent::Data { id: 1, data: vec![7; MAX_BODY_PER_CELL - SENDME_TOKEN_LEN], more: false });
        assert_eq!(tokens_in(&out).len(), 1, "cell 100, full with its token, takes the last slot");
        assert_eq!(full.flow.available(), 0);
    }

    /// A stream is stalled only while the other end owes it something, and only after `limit`.
    #[tokio::test]
    async fn stalled_lists_streams_owed_something_never_idle_ones() {
        let limit = Duration::from_secs(20);
        let later = |d: u64| Instant::now() + Duration::from_secs(d);
        let mut mux = StreamMux::new(flow(1000, 10, 100, 500));
        for id in [1, 2, 3] {
            mux.open(id).unwrap();
        }
        assert!(mux.stalled(later(3600), limit).is_empty(), "fresh streams owe nothing");
        // 1: the other end's last DATA filled its cell (mid-transfer).
        let mut peer = Peer::new(mux.flow.params());
        mux.handle_msg(1, peer.data(vec![1; MAX_BODY_PER_CELL])).unwrap();
        // 2: its last DATA was a short one (end of a burst): idle, not stalled.
        mux.handle_msg(2, peer.data(vec![1; MAX_BODY_PER_CELL])).unwrap();
        mux.handle_msg(2, peer.data(vec![1; 10])).unwrap();
        // 3: our DATA waits behind the congestion window; a circuit SENDME is owed.
        let out = mux.handle_event(StreamEvent::Data { id: 3, data: vec![7; MAX_BODY_PER_CELL * 110], more: false });
        assert_eq!(mux.flow.available(), 0);
        assert!(mux.stalled(later(19), limit).is_empty(), "not before the limit");
        assert_eq!(mux.stalled(later(21), limit), vec![1, 3]);
        // Progress clears each: a short DATA for 1, a circuit SENDME for 3.
        mux.handle_msg(1, peer.data(vec![1; 3])).unwrap();
        mux.handle_msg(0, circuit_sendme(tokens_in(&out)[0])).unwrap();
        assert!(mux.stalled(later(21), limit).is_empty());
    }

    /// An application that stops reading is not a stall: once the other end has used our
    /// window, or we sent XOFF, it is us who hold it back, and nothing is owed.
    #[tokio::test]
    async fn a_stream_whose_application_stopped_reading_is_not_stalled() {
        let limit = Duration::from_secs(20);
        let f = flow(200, 50, 100, 50);
        let mut mux = StreamMux::new(f);
        mux.open(1).unwrap();
        let out = Peer::new(&f).fill(&mut mux, 1, 60, MAX_BODY_PER_CELL);
        assert_eq!(out, vec![(1, RelayMsg::Xoff)]);
        assert!(mux.stalled(Instant::now() + Duration::from_secs(60), limit).is_empty());
    }

    /// XOFF once more than the threshold of a stream's cells wait for its application, XON once
    /// half of them were written.
    #[tokio::test]
    async fn xoff_when_the_application_falls_behind_and_xon_once_it_catches_up() {
        let f = flow(1000, 10, 100, 50);
        let mut mux = StreamMux::new(f);
        mux.open(1).unwrap();
        let mut peer = Peer::new(&f);
        assert!(peer.fill(&mut mux, 1, 50, 100).is_empty(), "50 waiting: no XOFF yet");
        assert_eq!(peer.fill(&mut mux, 1, 1, 100), vec![(1, RelayMsg::Xoff)]);
        assert!(peer.fill(&mut mux, 1, 5, 100).is_empty(), "one XOFF");
        let xon = |out: Vec<(u16, RelayMsg)>| out.iter().filter(|(_, m)| *m == RelayMsg::Xon).count();
        assert_eq!(xon(mux.handle_event(StreamEvent::Consumed { id: 1, cells: 30 })), 0, "26 still wait");
        assert_eq!(xon(mux.handle_event(StreamEvent::Consumed { id: 1, cells: 1 })), 1, "25 wait: XON");
        assert_eq!(xon(mux.handle_event(StreamEvent::Consumed { id: 1, cells: 25 })), 0, "one XON");
        // XON and XOFF belong to streams.
        assert!(matches!(mux.handle_msg(0, RelayMsg::Xoff), Err(StreamError::UnknownStream)));
        assert!(matches!(mux.handle_msg(7, RelayMsg::Xon), Err(StreamError::UnknownStream)));
    }

    /// A stream the other end paused reads nothing from its socket until XON.
    #[tokio::test]
    async fn xoff_pauses_the_reader_and_xon_resumes_it() {
        let mut mux = StreamMux::default();
        mux.open(1).unwrap();
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        mux.attach(1, ours);
        assert!(mux.handle_msg(1, RelayMsg::Xoff).unwrap().is_empty());
        theirs.write_all(b"held back").await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), mux.next_event()).await.is_err(), "nothing read while paused");
        mux.handle_msg(1, RelayMsg::Xon).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), mux.next_event()).await.expect("read after XON");
        assert!(matches!(ev, StreamEvent::Data { id: 1, ref data, .. } if data == b"held back"), "{ev:?}");
    }

    /// DATA queued behind a closed congestion window is owed a circuit SENDME.
    #[tokio::test]
    async fn data_behind_a_closed_congestion_window_is_owed_a_sendme() {
        let limit = Duration::from_secs(20);
        let mut mux = StreamMux::new(flow(100, 10, 100, 500));
        mux.open(1).unwrap();
        mux.open(2).unwrap();
        let out = mux.handle_event(StreamEvent::Data { id: 1, data: vec![7; MAX_BODY_PER_CELL * 101], more: false });
        assert_eq!(out.len(), 100);
        let t = Instant::now() + Duration::from_secs(21);
        assert_eq!(mux.stalled(t, limit), vec![1], "stream 1 waits for the circuit window; stream 2 owes nothing");
        mux.handle_msg(0, circuit_sendme(tokens_in(&out)[0])).unwrap();
        assert!(mux.stalled(t - Duration::from_secs(2), limit).is_empty(), "a circuit SENDME is progress");
    }

    /// Every DATA cell handed to a writer is reported consumed: an empty one, and those a
    /// writer discards after its socket failed (else the circuit window would shrink for good).
    #[tokio::test]
    async fn every_cell_given_to_a_writer_is_counted_even_empty_or_after_a_failure() {
        let f = flow(100, 5, 100, 500);
        let mut mux = StreamMux::new(f);
        mux.open(1).unwrap();
        let (ours, theirs) = tokio::io::duplex(1024);
        mux.attach(1, ours);
        let mut peer = Peer::new(&f);
        mux.handle_msg(1, peer.data(Vec::new())).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), mux.next_event()).await.expect("an event");
        assert!(matches!(ev, StreamEvent::Consumed { id: 1, cells: 1 }), "{ev:?}");
        // The application goes away; five more cells arrive.
        drop(theirs);
        for _ in 0..5 {
            mux.handle_msg(1, peer.data(vec![1; 10])).unwrap();
        }
        let (mut consumed, mut failed) = (0, false);
        let mut sendmes = Vec::new();
        while consumed < 5 {
            let ev = tokio::time::timeout(Duration::from_secs(10), mux.next_event()).await.expect("an event");
            match ev {
                StreamEvent::Consumed { cells, .. } => consumed += cells,
                StreamEvent::WriteFailed { .. } => failed = true,
                // The reader sees the application's end too; the mux closes the stream.
                StreamEvent::Eof { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
            sendmes.extend(sendmes_in(&mux.handle_event(ev)));
        }
        assert!(failed, "the writer reported its failure");
        assert!(sendmes.contains(&0), "6 cells consumed in all: a circuit SENDME (every 5) went out");
    }

    /// Early data goes out first, is counted at the gate as read data is, and leaves it when
    /// sent.
    #[tokio::test]
    async fn early_data_is_counted_at_the_gate() {
        let mut mux = StreamMux::default();
        mux.open(1).unwrap();
        let (ours, _theirs) = tokio::io::duplex(1024);
        mux.take_stream(1).expect("the stream's ends").splice(ours, vec![9; MAX_BODY_PER_CELL * 2 + 1]);
        assert!(mux.take_stream(1).is_none(), "handed out once");
        let ev = tokio::time::timeout(Duration::from_secs(10), mux.next_event()).await.expect("an event");
        assert!(matches!(ev, StreamEvent::Data { more: false, .. }), "{ev:?}");
        let out = mux.handle_event(ev);
        assert_eq!(out.len(), 3);
        assert_eq!(mux.gate.cells.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    /// A stream handed out and dropped without a socket ends (END DONE); one the mux closed
    /// first is not ended twice.
    #[tokio::test]
    async fn a_stream_dropped_unjoined_ends() {
        let mut mux = StreamMux::default();
        mux.open(1).unwrap();
        drop(mux.take_stream(1));
        let ev = tokio::time::timeout(Duration::from_secs(10), mux.next_event()).await.expect("an event");
        let out = mux.handle_event(ev);
        assert!(matches!(out.as_slice(), [(1, RelayMsg::End(EndReason::Done))]), "{out:?}");
        assert!(mux.is_empty());
        mux.open(2).unwrap();
        let out = mux.close(2, EndReason::Misc);
        assert_eq!(out.len(), 1);
        // Ends send synchronously when dropped: nothing is waiting.
        assert!(mux.events_rx.try_recv().is_err(), "the closed stream's ends sent nothing");
    }

    /// The bytes of the DATA cells in `out`, in order.
    fn data_bytes(out: &[(u16, RelayMsg)]) -> Vec<u8> {
        out.iter()
            .flat_map(|(_, m)| match m {
                RelayMsg::Data(d) | RelayMsg::DataToken { data: d, .. } => d.clone(),
                _ => vec![],
            })
            .collect()
    }

    /// Polls `f` once with a waker that does nothing: its value if ready without waiting.
    fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    /// A DataStream read in place: what is queued comes in one read, and the cells read are
    /// reported consumed; at END the read gives nothing.
    #[tokio::test]
    async fn a_data_stream_reads_in_place_and_reports_what_it_read() {
        use tokio::io::AsyncReadExt;
        let mut mux = StreamMux::default();
        mux.open(1).unwrap();
        let mut ds = mux.take_stream(1).unwrap();
        mux.handle_msg(1, RelayMsg::Data(vec![1; 100])).unwrap();
        mux.handle_msg(1, RelayMsg::Data(vec![2; 50])).unwrap();
        let mut buf = [0u8; 1024];
        assert_eq!(ds.read(&mut buf).await.unwrap(), 150);
        assert_eq!(&buf[..150], [vec![1u8; 100], vec![2u8; 50]].concat().as_slice());
        let ev = mux.events_rx.try_recv().expect("the cells read were reported");
        assert!(matches!(ev, StreamEvent::Consumed { id: 1, cells: 2 }), "{ev:?}");
        mux.handle_event(ev);
        assert!(ready_now(ds.read(&mut buf)).is_none(), "nothing more queued: the read waits");
        mux.handle_msg(1, RelayMsg::End(EndReason::Done)).unwrap();
        assert_eq!(ds.read(&mut buf).await.unwrap(), 0, "END: the end of the stream");
    }

    /// Writes go out in whole cells; a flush sends the partial last one; shutdown sends END
    /// after them. A write waits while the other end said XOFF, and goes on at XON.
    #[tokio::test]
    async fn a_data_stream_writes_whole_cells_until_a_flush_and_waits_at_xoff() {
        use tokio::io::AsyncWriteExt;
        let mut mux = StreamMux::default();
        mux.open(1).unwrap();
        let mut ds = mux.take_stream(1).unwrap();
        let sent = |mux: &mut StreamMux| {
            let mut out = Vec::new();
            while let Ok(ev) = mux.events_rx.try_recv() {
                out.extend(mux.handle_event(ev));
            }
            out
        };
        ds.write_all(&[5; 1000]).await.unwrap();
        let first = sent(&mut mux);
        assert!(first.iter().all(|(_, m)| is_data(m)) && !first.is_empty());
        let full = data_bytes(&first).len();
        assert!(full < 1000 && 1000 - full < MAX_BODY_PER_CELL, "only whole cells before the flush ({full} bytes)");
        ds.flush().await.unwrap();
        let rest = sent(&mut mux);
        assert_eq!(data_bytes(&rest).len(), 1000 - full, "the flush sent the rest");

        mux.handle_msg(1, RelayMsg::Xoff).unwrap();
        let mut write = Box::pin(ds.write(&[6; 10]));
        assert!(ready_now(write.as_mut()).is_none(), "a write waits at XOFF");
        mux.handle_msg(1, RelayMsg::Xon).unwrap();
        assert_eq!(write.await.unwrap(), 10);
        ds.shutdown().await.unwrap();
        let out = sent(&mut mux);
        assert_eq!(data_bytes(&out), vec![6; 10]);
        assert!(matches!(out.last(), Some((1, RelayMsg::End(EndReason::Done)))), "{out:?}");
    }

    /// A DataStream dropped with DATA unread counts it consumed (the circuit's receive window
    /// is not lost), and DATA arriving after that is counted by the mux.
    #[tokio::test]
    async fn a_dropped_data_stream_gives_back_the_window_of_what_it_never_read() {
        let f = flow(1000, 2, 1000, 500);
        let mut mux = StreamMux::new(f);
        let mut peer = Peer::new(&f);
        mux.open(1).unwrap();
        let ds = mux.take_stream(1).unwrap();
        assert!(sendmes_in(&peer.fill(&mut mux, 1, 3, 10)).is_empty(), "nothing consumed yet");
        drop(ds);
        // One more arrives before the mux hears of the drop.
        let mut sendmes = sendmes_in(&peer.fill(&mut mux, 1, 1, 10));
        while let Ok(ev) = mux.events_rx.try_recv() {
            sendmes.extend(sendmes_in(&mux.handle_event(ev)));
        }
        assert!(mux.is_empty(), "the stream ended");
        assert_eq!(sendmes, vec![0, 0], "4 cells consumed, a circuit SENDME per 2");
    }

    /// A program writing in place is not left waiting when its stream closes: held at XOFF,
    /// its write is woken and fails once the other end ends the stream, and once the circuit
    /// closes.
    #[tokio::test]
    async fn a_write_held_at_xoff_fails_when_the_stream_or_circuit_closes() {
        use tokio::io::AsyncWriteExt;
        let mut mux = StreamMux::default();
        mux.open(1).unwrap();
        mux.open(2).unwrap();
        let one = mux.take_stream(1).unwrap();
        let two = mux.take_stream(2).unwrap();
        mux.handle_msg(1, RelayMsg::Xoff).unwrap();
        mux.handle_msg(2, RelayMsg::Xoff).unwrap();
        // Each write waits in its own task, with a real waker.
        async fn held(mut ds: DataStream) -> tokio::task::JoinHandle<std::io::Result<usize>> {
            let (started, running) = tokio::sync::oneshot::channel();
            let w = tokio::spawn(async move {
                let _ = started.send(());
                ds.write(b"x").await
            });
            running.await.unwrap();
            tokio::task::yield_now().await;
            assert!(!w.is_finished(), "held at XOFF");
            w
        }
        async fn fails(w: tokio::task::JoinHandle<std::io::Result<usize>>) {
            let r = tokio::time::timeout(Duration::from_secs(10), w).await.expect("the write was woken").unwrap();
            assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
        }
        let w1 = held(one).await;
        mux.handle_msg(1, RelayMsg::End(EndReason::Done)).unwrap();
        fails(w1).await;
        let w2 = held(two).await;
        drop(mux);
        fails(w2).await;
    }
}
