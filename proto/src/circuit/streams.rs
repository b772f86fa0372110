//! The flow and congestion control of the streams on one circuit end, without I/O
//! (docs/PROTOCOL.md, "Flow control").
//!
//! [`StreamFlow`] decides, for the client's, the exit's or an onion service's end: which
//! stream ids are open, when DATA from the other end is within the circuit's receive window
//! and its SENDME tokens are right, when to send XOFF and XON, how read bytes become DATA cells
//! (and which cell carries a token), what the congestion window lets out now and in what order
//! (END waits behind its DATA), which circuit SENDMEs are due, and which streams stalled. Every
//! call that can make data or credit available returns what can be sent *now*, so nothing is
//! left queued while the window allows it (the stranded-data bug of the stalled-downloads
//! issue cannot hide in a missed wake-up; `tests.rs` checks it over every interleaving).
//!
//! The owner (`allium-net`'s `StreamMux`) moves the bytes: it hands DATA to the stream's
//! application side, reads from it, and tells this machine what was consumed. `H` is what the
//! owner attaches to each queued DATA cell (its charge to the memory budget).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::congestion::CongestionWindow;
use crate::flow::{FlowError, FlowParams, RecvWindow, SendmeToken, TokenReceiver, TokenSender, SENDME_TOKEN_LEN};
use crate::relay_msg::{EndReason, RelayMsg, MAX_BODY_PER_CELL};

/// Streams one circuit may carry at once unless [`StreamFlow::set_max_streams`] says otherwise.
pub const MAX_STREAMS: usize = 1024;

/// Messages to send to the other end, in order: `(stream id, message)`.
pub type Out = Vec<(u16, RelayMsg)>;

/// A protocol violation by the other end of the circuit.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Flow(#[from] FlowError),
    #[error("message for a stream that was never opened")]
    UnknownStream,
    #[error("stream id already in use")]
    DuplicateStream,
    #[error("too many streams on one circuit")]
    TooManyStreams,
}

/// What to do with a DATA cell from the other end.
#[derive(Debug, PartialEq, Eq)]
pub enum DataIn {
    /// Hand it to the stream's application side, then call [`StreamFlow::delivered`] (or
    /// [`StreamFlow::undeliverable`] if that side is gone).
    Deliver,
    /// For a stream this end closed: dropped, its window given back (these SENDMEs are due).
    Dropped(Out),
}

/// A message waiting for the congestion window, with the owner's charge for it.
#[derive(Debug, Clone)]
struct Queued<H> {
    id: u16,
    msg: RelayMsg,
    _hold: Option<H>,
}

/// One stream's flow state.
#[derive(Debug, Clone)]
struct FlowStream {
    /// Cells handed to the application side and not yet consumed.
    unwritten: u32,
    /// We sent XOFF and owe XON once the application catches up.
    xoff_sent: bool,
    /// When the other end last moved this stream forward (DATA, XON or XOFF for it), or when
    /// it was opened.
    last_progress: Instant,
    /// The other end's last DATA filled its cell: it had more ready than one cell holds, so
    /// more DATA is owed (a sender's last cell of a burst is partly empty, see `carry`).
    last_data_full: bool,
    /// Read bytes held back (less than a cell): the tail of a read that filled its buffer,
    /// sent with the next read's bytes or when the reader finds nothing more ready.
    carry: Vec<u8>,
}

/// The streams of one circuit end (see the module docs).
#[derive(Debug, Clone)]
pub struct StreamFlow<H> {
    streams: HashMap<u16, FlowStream>,
    /// Ids closed by us whose late cells are ignored rather than treated as violations.
    closed: HashSet<u16>,
    /// Open streams whose last DATA cell we sent was partly filled (usually none: a partial
    /// cell ends a burst, and the stream's next full cell takes it out).
    after_partial: HashSet<u16>,
    circ_send: CongestionWindow,
    circ_recv: RecvWindow,
    /// The tokens circuit-level SENDMEs must echo, ours and the other end's.
    tokens_out: TokenSender,
    tokens_in: TokenReceiver,
    /// Messages waiting for the congestion window, in order (END waits behind its DATA).
    queue: VecDeque<Queued<H>>,
    /// DATA cells in `queue`.
    queued_data: usize,
    next_id: u16,
    flow: FlowParams,
    /// When the last circuit-level SENDME arrived (or the machine was made).
    last_circ_sendme: Instant,
    max_streams: usize,
}

impl<H> StreamFlow<H> {
    /// The streams of a circuit whose ends agreed on `flow` (in the circuit handshake).
    pub fn new(flow: FlowParams, now: Instant) -> Self {
        StreamFlow {
            streams: HashMap::new(),
            closed: HashSet::new(),
            after_partial: HashSet::new(),
            circ_send: CongestionWindow::new(flow.circuit_window, flow.circuit_sendme_inc, flow.cc),
            circ_recv: RecvWindow::circuit(&flow),
            tokens_out: TokenSender::new(&flow),
            tokens_in: TokenReceiver::new(&flow),
            queue: VecDeque::new(),
            queued_data: 0,
            next_id: 1,
            flow,
            last_circ_sendme: now,
            max_streams: MAX_STREAMS,
        }
    }

    pub fn params(&self) -> &FlowParams {
        &self.flow
    }

    /// Streams this circuit may carry at once (at least one); over it [`Self::open`] refuses.
    pub fn set_max_streams(&mut self, n: usize) {
        self.max_streams = n.max(1);
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The congestion window, in cells.
    pub fn cwnd(&self) -> u32 {
        self.circ_send.cwnd()
    }

    /// DATA cells waiting for the congestion window.
    pub fn queued_data(&self) -> usize {
        self.queued_data
    }

    /// Messages waiting (DATA and the ENDs behind it).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Cells the congestion window lets out now.
    pub fn available(&self) -> u32 {
        self.circ_send.available()
    }

    /// Cells the other end may still send before a circuit SENDME.
    pub fn recv_remaining(&self) -> u32 {
        self.circ_recv.remaining()
    }

    /// Streams this circuit may carry at once.
    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// Whether a queued message could go now (never true between calls: every call sends
    /// what the window allows).
    pub fn could_send(&self) -> bool {
        match self.queue.front() {
            None => false,
            Some(q) if !is_data(&q.msg) => true,
            Some(q) => self.window_admits(q.id, &q.msg).is_some(),
        }
    }

    /// Picks an unused stream id (client side).
    pub fn alloc_id(&mut self) -> Option<u16> {
        if self.streams.len() >= self.max_streams {
            return None;
        }
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.streams.contains_key(&id) {
                self.closed.remove(&id);
                return Some(id);
            }
        }
    }

    /// Opens stream `id` (chosen by this end, or by the other end's BEGIN).
    pub fn open(&mut self, id: u16, now: Instant) -> Result<(), StreamError> {
        if id == 0 || self.streams.contains_key(&id) {
            return Err(StreamError::DuplicateStream);
        }
        if self.streams.len() >= self.max_streams {
            return Err(StreamError::TooManyStreams);
        }
        self.closed.remove(&id);
        self.streams.insert(id, FlowStream { unwritten: 0, xoff_sent: false, last_progress: now, last_data_full: false, carry: Vec::new() });
        Ok(())
    }

    /// Whether `id` is a stream this end closed (its late cells are ignored).
    pub fn was_closed(&self, id: u16) -> bool {
        self.closed.contains(&id)
    }

    /// A circuit-level SENDME: the window opens; what it lets out.
    pub fn on_circuit_sendme(&mut self, token: Option<&SendmeToken>, now: Instant) -> Result<Out, StreamError> {
        self.tokens_out.on_sendme(token)?;
        self.circ_send.on_sendme(now)?;
        self.last_circ_sendme = now;
        Ok(self.flush(now))
    }

    /// XOFF (`pause`) or XON for stream `id`: `Some(pause)` for the owner to apply to the
    /// stream's reader, `None` for a stream this end already closed.
    pub fn on_pause(&mut self, id: u16, pause: bool, now: Instant) -> Result<Option<bool>, StreamError> {
        if id == 0 {
            return Err(StreamError::UnknownStream);
        }
        match self.streams.get_mut(&id) {
            Some(s) => {
                s.last_progress = now;
                Ok(Some(pause))
            }
            None => self.late(id).map(|_| None),
        }
    }

    /// DATA for stream `id` with `filled` bytes of body (data and token) and its token, if any.
    pub fn on_data(&mut self, id: u16, filled: usize, token: Option<SendmeToken>, now: Instant) -> Result<DataIn, StreamError> {
        self.circ_recv.on_data()?;
        self.tokens_in.on_data(token)?;
        match self.streams.get_mut(&id) {
            Some(s) => {
                s.last_progress = now;
                s.last_data_full = filled == MAX_BODY_PER_CELL;
                Ok(DataIn::Deliver)
            }
            None => {
                // Counted as consumed so the circuit window is not lost.
                self.late(id)?;
                let k = self.circ_recv.on_consumed(1);
                Ok(DataIn::Dropped(self.circuit_sendmes(k)))
            }
        }
    }

    /// The DATA cell of [`DataIn::Deliver`] was handed to the application side: XOFF if the
    /// stream now holds more unconsumed cells than `xoff_cells`.
    pub fn delivered(&mut self, id: u16) -> Out {
        let xoff = self.flow.xoff_cells;
        match self.streams.get_mut(&id) {
            Some(s) => {
                s.unwritten += 1;
                if s.unwritten > xoff && !s.xoff_sent {
                    s.xoff_sent = true;
                    return vec![(id, RelayMsg::Xoff)];
                }
                vec![]
            }
            None => vec![],
        }
    }

    /// The DATA cell of [`DataIn::Deliver`] could not be handed over (nobody will consume it):
    /// its window is given back.
    pub fn undeliverable(&mut self) -> Out {
        let k = self.circ_recv.on_consumed(1);
        self.circuit_sendmes(k)
    }

    /// END from the other end: true if the stream was open (the owner retires it).
    pub fn on_end(&mut self, id: u16) -> Result<bool, StreamError> {
        if self.streams.remove(&id).is_some() {
            self.after_partial.remove(&id);
            self.closed.insert(id);
            Ok(true)
        } else {
            self.late(id).map(|_| false)
        }
    }

    /// The application side of `id` consumed `cells` DATA cells: circuit SENDMEs that are now
    /// due, and XON if the stream caught up after an XOFF.
    pub fn on_consumed(&mut self, id: u16, cells: u32) -> Out {
        let k = self.circ_recv.on_consumed(cells);
        let mut out = self.circuit_sendmes(k);
        let xoff = self.flow.xoff_cells;
        if let Some(s) = self.streams.get_mut(&id) {
            s.unwritten = s.unwritten.saturating_sub(cells);
            if s.xoff_sent && s.unwritten <= xoff / 2 {
                s.xoff_sent = false;
                out.push((id, RelayMsg::Xon));
            }
        }
        out
    }

    /// Bytes read from stream `id`'s application side (with `more`: the read filled its buffer,
    /// so a partly filled last cell is held back for the next read). Returns the DATA cells
    /// queued (`None` for a stream no longer open) and what can be sent now.
    pub fn on_read(&mut self, id: u16, data: &[u8], more: bool, now: Instant, rng: &mut dyn RngCore, hold: &mut dyn FnMut() -> Option<H>) -> Option<(usize, Out)> {
        let s = self.streams.get_mut(&id)?;
        let cells = if s.carry.is_empty() {
            // The usual case: the cells are cut from the read itself, not from a copy.
            self.queue_data(id, data, more, rng, hold)
        } else {
            let mut bytes = std::mem::take(&mut s.carry);
            bytes.extend_from_slice(data);
            self.queue_data(id, &bytes, more, rng, hold)
        };
        Some((cells, self.flush(now)))
    }

    /// The reader of `id` found nothing more ready after a read with `more`: the held-back
    /// bytes go. Returns the cells queued and what can be sent now.
    pub fn on_drained(&mut self, id: u16, now: Instant, rng: &mut dyn RngCore, hold: &mut dyn FnMut() -> Option<H>) -> Option<(usize, Out)> {
        self.on_read(id, &[], false, now, rng, hold)
    }

    /// Closes stream `id` from this end: held-back bytes and queued DATA go first, then END.
    /// Returns the DATA cells queued from held-back bytes and what can be sent now; `None` if
    /// the stream was not open.
    pub fn close(&mut self, id: u16, reason: EndReason, now: Instant, rng: &mut dyn RngCore, hold: &mut dyn FnMut() -> Option<H>) -> Option<(usize, Out)> {
        let bytes = std::mem::take(&mut self.streams.get_mut(&id)?.carry);
        let cells = self.queue_data(id, &bytes, false, rng, hold);
        self.streams.remove(&id);
        self.after_partial.remove(&id);
        self.closed.insert(id);
        self.queue.push_back(Queued { id, msg: RelayMsg::End(reason), _hold: None });
        Some((cells, self.flush(now)))
    }

    /// Streams that made no progress for `limit` although the other end owes them something:
    /// a SENDME (our DATA waits for the congestion window) or more DATA (its last DATA cell was
    /// full: it was in the middle of sending, and neither our circuit window nor an XOFF holds
    /// it back). A stream that is merely idle — its last DATA a partly filled cell, nothing of
    /// ours waiting — is never listed, nor one whose application stopped reading (then our
    /// windows or XOFF hold the other end back), nor one the other end paused with XOFF.
    pub fn stalled(&self, now: Instant, limit: Duration) -> Vec<u16> {
        let blocked: HashSet<u16> = if self.queue.front().is_some_and(|q| self.window_holds(&q.msg)) {
            self.queue.iter().filter(|q| is_data(&q.msg)).map(|q| q.id).collect()
        } else {
            HashSet::new()
        };
        let circuit_open = self.circ_recv.remaining() > 0;
        let mut out: Vec<u16> = self
            .streams
            .iter()
            .filter(|(id, s)| {
                let waits_window = blocked.contains(id);
                let since = if waits_window { s.last_progress.max(self.last_circ_sendme) } else { s.last_progress };
                (waits_window || (s.last_data_full && circuit_open && !s.xoff_sent)) && now.saturating_duration_since(since) >= limit
            })
            .map(|(id, _)| *id)
            .collect();
        out.sort_unstable();
        out
    }

    fn late(&self, id: u16) -> Result<(), StreamError> {
        if self.closed.contains(&id) {
            Ok(())
        } else {
            Err(StreamError::UnknownStream)
        }
    }

    /// Queues `bytes` of stream `id` as DATA cells (the cell completing an increment of the
    /// circuit window carries a token); with `more`, a partly filled last cell is held back in
    /// the stream's `carry` instead. Returns the cells queued.
    fn queue_data(&mut self, id: u16, bytes: &[u8], more: bool, rng: &mut dyn RngCore, hold: &mut dyn FnMut() -> Option<H>) -> usize {
        let plan = self.tokens_out.plan(bytes.len());
        let keep = match plan.last() {
            Some(&(len, token)) if more && len < MAX_BODY_PER_CELL - if token { SENDME_TOKEN_LEN } else { 0 } => len,
            _ => 0,
        };
        let (bytes, carried) = bytes.split_at(bytes.len() - keep);
        if let Some(s) = self.streams.get_mut(&id) {
            s.carry = carried.to_vec();
        }
        let mut rest = bytes;
        let mut cells = 0;
        for (len, due) in plan {
            if rest.is_empty() {
                break;
            }
            // The cell that completes an increment of the circuit window carries a fresh
            // token, in 16 bytes taken from the stream's bytes.
            let token: Option<SendmeToken> = due.then(|| {
                let mut t = [0u8; SENDME_TOKEN_LEN];
                rng.fill_bytes(&mut t);
                t
            });
            let (chunk, tail) = rest.split_at(len);
            rest = tail;
            self.tokens_out.on_data(token);
            let msg = match token {
                Some(token) => RelayMsg::DataToken { data: chunk.to_vec(), token },
                None => RelayMsg::Data(chunk.to_vec()),
            };
            cells += 1;
            self.queue.push_back(Queued { id, msg, _hold: hold() });
        }
        self.queued_data += cells;
        cells
    }

    /// `k` circuit-level SENDMEs, each echoing the token of the increment it acknowledges.
    fn circuit_sendmes(&mut self, k: u32) -> Out {
        (0..k)
            .filter_map(|_| {
                let token = self.tokens_in.next_sendme();
                debug_assert!(token.is_some(), "a SENDME is due only after its token arrived");
                token.map(|t| (0, RelayMsg::Sendme { token: Some(t) }))
            })
            .collect()
    }

    /// Whether the congestion window holds back `msg` (a DATA cell): when it is closed, and
    /// when only its last cell is left and `msg` is partly filled. A partly filled cell tells
    /// the receiver "nothing more was ready" (the stall rule), so the cell that closes the
    /// window is always full: a sender stopped by its window, whatever its source did just
    /// before, leaves its receiver owed DATA. An increment's token cell is in flight whenever
    /// one slot is left (at least two increments are), so a SENDME opens the window again.
    /// Whether DATA cell `msg` of stream `id` may go now: within the congestion window (see
    /// [`Self::window_holds`]), or one cell past it. A window that shrank below what is in
    /// flight (a SENDME's Vegas step) may have closed right after a partly filled cell; the
    /// stream's next cell then goes anyway if it is full (within the circuit window), so that
    /// the last cell the receiver gets says "more is owed" here too.
    fn window_admits(&self, id: u16, msg: &RelayMsg) -> Option<Admit> {
        let filled = data_filled(msg)?;
        if self.circ_send.available() > 0 {
            return (!self.window_holds(msg)).then_some(Admit::Within);
        }
        (filled == MAX_BODY_PER_CELL && self.after_partial.contains(&id) && self.circ_send.below_max()).then_some(Admit::Past)
    }

    fn window_holds(&self, msg: &RelayMsg) -> bool {
        let Some(filled) = data_filled(msg) else { return false };
        match self.circ_send.available() {
            0 => true,
            1 => filled < MAX_BODY_PER_CELL,
            _ => false,
        }
    }

    /// Sends what the congestion window allows, in order.
    fn flush(&mut self, now: Instant) -> Out {
        let mut out = Vec::new();
        while let Some(q) = self.queue.front() {
            if let Some(filled) = data_filled(&q.msg) {
                let token = matches!(q.msg, RelayMsg::DataToken { .. });
                let taken = match self.window_admits(q.id, &q.msg) {
                    None => false,
                    Some(Admit::Within) => self.circ_send.take(now, token),
                    Some(Admit::Past) => self.circ_send.take_past(now, token),
                };
                if !taken {
                    break;
                }
                // Per cell: only a partial cell, or a full one while some stream's last was
                // partial, touches the set.
                if filled < MAX_BODY_PER_CELL {
                    if self.streams.contains_key(&q.id) {
                        self.after_partial.insert(q.id);
                    }
                } else if !self.after_partial.is_empty() {
                    self.after_partial.remove(&q.id);
                }
                self.queued_data -= 1;
            }
            let q = self.queue.pop_front().expect("front exists");
            out.push((q.id, q.msg));
        }
        out
    }
}

/// How a DATA cell is let through the congestion window ([`StreamFlow::window_admits`]).
enum Admit {
    Within,
    Past,
}

/// How much of its cell a DATA message fills (its bytes and token), or None for another message.
pub(crate) fn data_filled(m: &RelayMsg) -> Option<usize> {
    match m {
        RelayMsg::Data(d) => Some(d.len()),
        RelayMsg::DataToken { data, .. } => Some(data.len() + SENDME_TOKEN_LEN),
        _ => None,
    }
}

/// Whether `m` is a DATA cell (with or without a SENDME token): what the windows count.
pub fn is_data(m: &RelayMsg) -> bool {
    matches!(m, RelayMsg::Data(_) | RelayMsg::DataToken { .. })
}
