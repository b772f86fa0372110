//! One circuit at a relay: its owner task.
//!
//! The decisions about cells (this hop's crypto layer, RELAY_EARLY, forwarding, EXTEND checks,
//! the next hop's CREATED, the reasons told on teardown) are the sans-IO [`RelayHop`] state
//! machine's (`allium_proto::circuit`). The task feeds it the cells of both links and owns what
//! has I/O: the links, the exit streams, the onion-service tables and the directory cache. A
//! cell this hop can authenticate is handled here, any other is forwarded — and at the last hop
//! a cell that does not authenticate destroys the circuit. DESTROY travels both ways.

use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_net::cell_queue::CellReceiver;
use allium_net::channel::{Channel, Unsent};
use allium_net::link::{LinkError, PeerInfo};
use allium_net::limits::bucket::TokenBucket;
use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_net::metrics::{stream_failure, METRICS};
use allium_net::reactor::{self, CircuitEnd, LinkGone, Streams};
use allium_net::stream::{Holding, Incoming, StreamMux};
use allium_proto::cell::{self, Cell, CellCmd, DestroyReason, PAYLOAD_LEN};
use allium_proto::circuit::{Fault, FromNext, FromPrev, HandshakeRead, HandshakeReader, RelayHop, Side};
use allium_proto::ids::RelayId;
use allium_proto::policy::is_private;
use allium_proto::relay_msg::{EndReason, ExtendTarget, RelayMsg};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use allium_proto::crypto::kdf::HopKeys;
use allium_proto::relay_msg::introduce_status;

use crate::hs_points::{CircKey, HsEvent};
use crate::RelayCtx;

mod exit;
mod extend;
mod hooks;
mod hs;

use exit::{ResolveResult, Resolves};
pub use hooks::{Injection, INJECT_AFTER};
use hs::{is_hs_msg, Hs, HsRole};

/// Why the circuit ends. A DESTROY from one side is passed to the other side only; a local
/// decision is told to both ([`RelayHop::teardown`]).
struct Close(DestroyReason, Side);

impl Close {
    /// The machine's fault on a cell from `from`.
    fn of(fault: Fault, from: Side) -> Self {
        if fault.is_peer_fault() {
            tracing::debug!("closing circuit: {fault}");
        }
        let (reason, side) = Side::of(&fault, from);
        Close(reason, side)
    }
}

/// A circuit past its CREATE handshake, before its task runs.
pub(crate) struct Accepted {
    pub ctx: Arc<RelayCtx>,
    pub prev: Channel,
    pub prev_id: u32,
    pub prev_rx: CellReceiver,
    /// This hop's state machine: crypto layer, RELAY_EARLY gate, forwarding, the next hop.
    pub hop: RelayHop,
    /// This hop's keys (ESTABLISH_INTRO is signed over a binding of them).
    pub hop_keys: HopKeys,
    /// The windows and increments the client chose in its CREATE (used if streams end here).
    pub flow: allium_proto::flow::FlowParams,
}

/// A circuit's end at this relay, as the reactor drives it ([`reactor::CircuitEnd`]).
struct RelayCircuit {
    ctx: Arc<RelayCtx>,
    prev: Channel,
    prev_id: u32,
    hop: RelayHop,
    hop_keys: HopKeys,
    /// The next hop once its CREATE went out.
    next: Option<Next>,
    /// The link to the next hop being opened for an EXTEND.
    extending: Option<PendingExtend>,
    resolves: Resolves,
    resolve_rx: mpsc::Receiver<ResolveResult>,
    hs: Hs,
    hs_rx: mpsc::Receiver<HsEvent>,
    /// A circuit that ends here with nothing on it (no next hop, no stream, no onion-service
    /// role) and moved no cell for this long is closed (`circuit_idle_timeout_secs`).
    idle_limit: Duration,
    last_touch: Instant,
    /// Relay cells forwarded (for the corrupting test hook).
    forwarded: u64,
    /// Relay cells forwarded toward the exit (for a test hook).
    forwarded_out: u64,
    /// Relay cells forwarded toward the client (for a test hook).
    forwarded_in: u64,
    /// This circuit's BEGIN rate (made at the first BEGIN).
    begins: Option<TokenBucket>,
    /// Bodies of the message being sent (kept, so that sending allocates nothing).
    outbuf: Vec<[u8; PAYLOAD_LEN]>,
}

/// What the relay's circuit end waits for beside its previous hop's cells and its streams.
enum Extra {
    /// A cell from the next hop, or its queue closed.
    Next(Option<Cell>),
    /// The link for an EXTEND opened, or could not be.
    Extended(Result<Channel, LinkError>),
    /// Something another circuit task handed to this one (onion services).
    Hs(HsEvent),
    /// A RESOLVE answered.
    Resolved(ResolveResult),
}

struct Next {
    chan: Channel,
    id: u32,
    rx: CellReceiver,
}

struct PendingExtend {
    task: JoinHandle<Result<Channel, LinkError>>,
    htype: u16,
    hdata: Vec<u8>,
}

impl Accepted {
    /// Runs the circuit's task until the circuit ends, then tears it down.
    pub async fn run(self) {
        let Accepted { ctx, prev, prev_id, mut prev_rx, hop, hop_keys, flow } = self;
        let limits = &ctx.limits;
        let mut streams = Streams { mux: StreamMux::new(flow), incoming: Incoming::new(limits.max_streams_per_circuit) };
        streams.mux.set_mem(prev_rx.held_mem());
        streams.mux.set_max_streams(limits.max_streams_per_circuit);
        let (resolve_tx, resolve_rx) = mpsc::channel::<ResolveResult>(limits.max_resolves_per_circuit);
        let (key, tx, hs_rx) = ctx.hs.new_circuit();
        let idle_limit = limits.circuit_idle_timeout();
        let mut c = RelayCircuit {
            prev,
            prev_id,
            hop,
            hop_keys,
            next: None,
            extending: None,
            resolves: Resolves { tx: resolve_tx, in_flight: Default::default() },
            resolve_rx,
            hs: Hs { key, tx, role: None },
            hs_rx,
            idle_limit,
            last_touch: Instant::now(),
            forwarded: 0,
            forwarded_out: 0,
            forwarded_in: 0,
            begins: None,
            outbuf: Vec::new(),
            ctx,
        };
        let Err(Close(reason, side)) = reactor::run(&mut c, &mut prev_rx, &mut streams).await else { unreachable!("a relay circuit ends only by closing") };
        c.teardown(reason, side);
    }
}

impl RelayCircuit {
    fn teardown(self, reason: DestroyReason, side: Side) {
        let mut c = self;
        tracing::debug!("circuit closing: {reason:?}");
        // Forget it as an introduction or rendezvous circuit; a joined peer is destroyed too.
        c.ctx.hs.circuit_closed(c.hs.key, reason);
        // Which reason goes where is the machine's (THREATS A17, docs/PROTOCOL.md "Circuit
        // teardown"): CLOSING is queued without waiting (lost, and the client sees only
        // DESTROY's fixed reason, if the link's queue is full).
        let t = c.hop.teardown(reason, side, c.prev.peer.is_none());
        if let Some(body) = t.closing {
            let _ = c.prev.try_send(Cell { circ_id: c.prev_id, cmd: CellCmd::Relay, payload: *body });
        }
        match t.prev {
            Some(r) => c.prev.destroy_in_order(c.prev_id, r),
            None => c.prev.close_circuit(c.prev_id),
        }
        if let Some(n) = c.next.take() {
            match t.next {
                Some(r) => n.chan.destroy(n.id, r),
                None => n.chan.close_circuit(n.id),
            }
        }
        if let Some(p) = c.extending.take() {
            p.task.abort();
        }
    }

    /// Whether nothing is on this circuit: no next hop, no stream, no onion-service role, no
    /// RESOLVE (it expires when idle).
    fn is_empty(&self, streams: &Streams) -> bool {
        self.next.is_none() && self.extending.is_none() && streams.mux.is_empty() && self.hs.role.is_none() && self.resolves.in_flight.is_empty()
    }

    async fn on_prev_cell(&mut self, mut cell: Cell, streams: &mut Streams) -> Result<(), Close> {
        // The cell is modified in place (its command, early or not, unchanged) and forwarded as is: no copies of its body.
        match self.hop.from_prev(&mut cell).map_err(|f| Close::of(f, Side::Prev))? {
            FromPrev::Nothing => Ok(()),
            FromPrev::Forward => {
                if self.hook_stopped(true) {
                    return Ok(());
                }
                self.hook_corrupt(&mut cell.payload);
                let n = self.next.as_ref().expect("the machine forwards only to an open next hop");
                cell.circ_id = n.id;
                match forward_now(&n.chan, cell)? {
                    // Queued: a turn of the task's budget, as a wait on the queue would take.
                    None => tokio::task::coop::consume_budget().await,
                    Some(cell) => {
                        n.chan.send(cell).await.map_err(|_| Close(DestroyReason::ChannelClosed, Side::Local))?;
                    }
                }
                Ok(())
            }
            // A joined rendezvous circuit: the cell is for the other end. It goes backward on
            // the joined circuit, which adds its own Kb_layer (PROTOCOL, "Rendezvous").
            FromPrev::Unrecognized if !self.hop.has_next() && self.hs.role == Some(HsRole::Rend) => {
                let peer = self.ctx.hs.rend.lock().unwrap_or_else(|e| e.into_inner()).peer(&self.hs.key);
                match peer {
                    Some(p) if self.ctx.hs.deliver(p, HsEvent::Cell(Box::new(cell.payload))) => Ok(()),
                    Some(_) => Err(Close(DestroyReason::ResourceLimit, Side::Local)),
                    None => {
                        tracing::info!("a relay cell failed authentication at an unjoined rendezvous point: destroying the circuit");
                        Err(Close(DestroyReason::Protocol, Side::Local))
                    }
                }
            }
            // The last hop (or one still extending) got a cell nobody can authenticate:
            // it was altered on the way. Never forward or deliver it.
            FromPrev::Unrecognized => {
                tracing::info!("a relay cell failed authentication at the last hop: destroying the circuit");
                Err(Close::of(RelayHop::unrecognized_fault(), Side::Local))
            }
            FromPrev::Extend { target, htype, hdata } => {
                if !streams.mux.is_empty() {
                    return Err(Close(DestroyReason::Protocol, Side::Local));
                }
                self.start_extend(target, htype, hdata)
            }
            // Onion-service messages (stream 0, at the last hop only: the machine checked).
            FromPrev::Msg { msg, .. } if is_hs_msg(&msg) => self.handle_hs_msg(msg).await,
            FromPrev::Msg { stream, msg } => self.handle_msg(stream, msg, streams).await,
        }
    }

    async fn on_next_cell(&mut self, mut cell: Cell) -> Result<(), Close> {
        let open = !self.hop.next_is_creating();
        match cell.cmd {
            CellCmd::Destroy => crate::test_hooks::record_destroy_from_next(&self.ctx.id, cell.payload[0]),
            CellCmd::Relay if open && self.hook_stopped(false) => return Ok(()),
            CellCmd::Relay if open => self.hook_corrupt(&mut cell.payload),
            CellCmd::RelayEarly => tracing::info!("RELAY_EARLY from the next hop: destroying the circuit"),
            _ => {}
        }
        match self.hop.from_next(&mut cell, Instant::now()).map_err(|f| Close::of(f, Side::Next))? {
            FromNext::Nothing => Ok(()),
            FromNext::Extended(body) => self.send_body(*body).await,
            FromNext::Forward => {
                cell.circ_id = self.prev_id;
                let inject = self.hook_inject();
                if matches!(inject, Some(Injection::MarkEarly)) {
                    cell.cmd = CellCmd::RelayEarly;
                }
                match forward_now(&self.prev, cell)? {
                    // Queued: a turn of the task's budget, as a wait on the queue would take.
                    None => tokio::task::coop::consume_budget().await,
                    Some(cell) => {
                        self.prev.send(cell).await.map_err(|_| Close(DestroyReason::ChannelClosed, Side::Local))?;
                    }
                }
                match inject {
                    Some(Injection::Message(m)) => self.send_back(0, &m).await,
                    _ => Ok(()),
                }
            }
        }
    }

    /// Sends a body the machine sealed toward the client.
    async fn send_body(&mut self, body: [u8; PAYLOAD_LEN]) -> Result<(), Close> {
        self.prev.send(Cell { circ_id: self.prev_id, cmd: CellCmd::Relay, payload: body }).await.map_err(|_| Close(DestroyReason::ChannelClosed, Side::Local))
    }

    /// Sends a message this hop originates toward the client.
    async fn send_back(&mut self, stream_id: u16, msg: &RelayMsg) -> Result<(), Close> {
        let mut bodies = std::mem::take(&mut self.outbuf);
        bodies.clear();
        self.hop.originate_into(stream_id, msg, &mut bodies).map_err(|f| Close::of(f, Side::Local))?;
        for body in bodies.drain(..) {
            // The path of every DATA cell an exit sends: queued at once when there is room.
            let cell = Cell { circ_id: self.prev_id, cmd: CellCmd::Relay, payload: body };
            match forward_now(&self.prev, cell)? {
                // Queued: a turn of the task's budget, as a wait on the queue would take.
                None => tokio::task::coop::consume_budget().await,
                Some(cell) => {
                    self.prev.send(cell).await.map_err(|_| Close(DestroyReason::ChannelClosed, Side::Local))?;
                }
            }
        }
        self.outbuf = bodies;
        Ok(())
    }

    async fn send_all(&mut self, msgs: Vec<(u16, RelayMsg)>) -> Result<(), Close> {
        for (id, m) in msgs {
            self.send_back(id, &m).await?;
        }
        Ok(())
    }

}

/// Queues a forwarded cell on `chan` at once if its writer queue has room (not moving the cell
/// into a future, as awaiting [`Channel::send`] would); gives it back if the queue is full, for
/// the caller to `send` (which waits for room).
fn forward_now(chan: &Channel, cell: Cell) -> Result<Option<Cell>, Close> {
    match chan.try_send(cell) {
        Ok(()) => Ok(None),
        Err(Unsent::Full(cell)) => Ok(Some(cell)),
        Err(Unsent::Closed) => Err(Close(DestroyReason::ChannelClosed, Side::Local)),
    }
}

impl CircuitEnd for RelayCircuit {
    type Error = Close;
    type Extra = Extra;

    async fn on_cell(&mut self, cell: Result<Cell, LinkGone>, streams: &mut Streams) -> Result<(), Close> {
        match cell {
            Ok(c) => self.on_prev_cell(c, streams).await,
            Err(LinkGone { reclaimed: true }) => Err(Close(DestroyReason::ResourceLimit, Side::Local)),
            Err(LinkGone { reclaimed: false }) => Err(Close(DestroyReason::ChannelClosed, Side::Prev)),
        }
    }

    async fn send_stream(&mut self, msgs: Vec<(u16, RelayMsg)>) -> Result<(), Close> {
        self.send_all(msgs).await
    }

    async fn next_extra(&mut self) -> Extra {
        tokio::select! {
            c = recv_next(&mut self.next) => Extra::Next(c),
            r = join_extend(&mut self.extending) => Extra::Extended(r),
            Some(ev) = self.hs_rx.recv() => Extra::Hs(ev),
            Some(r) = self.resolve_rx.recv() => Extra::Resolved(r),
            else => std::future::pending().await,
        }
    }

    async fn on_extra(&mut self, ev: Extra, _streams: &mut Streams) -> Result<(), Close> {
        match ev {
            Extra::Next(Some(c)) => {
                self.on_next_cell(c).await?;
                // Cells already waiting from the next hop go in the same turn (as the
                // reactor does for the previous hop's).
                for _ in 1..allium_net::reactor::CELL_BATCH {
                    let Some(c) = self.next.as_mut().and_then(|n| n.rx.try_recv()) else { break };
                    self.on_next_cell(c).await?;
                }
                Ok(())
            }
            Extra::Next(None) if self.next.as_ref().is_some_and(|n| n.rx.reclaimed()) => Err(Close(DestroyReason::ResourceLimit, Side::Local)),
            Extra::Next(None) => Err(Close(DestroyReason::ChannelClosed, Side::Next)),
            Extra::Extended(r) => self.extended_link(r).await,
            Extra::Hs(ev) => self.on_hs_event(ev).await,
            Extra::Resolved((id, result)) => {
                // The stream id is free again once RESOLVED is sent.
                self.resolves.in_flight.remove(&id);
                self.send_back(id, &RelayMsg::Resolved { result, ext: Default::default() }).await
            }
        }
    }

    /// Idle expiry (only a circuit with nothing on it), and the time cap of the next hop's
    /// CREATED while it is reassembled (the machine's).
    fn next_deadline(&self, streams: &Streams) -> Option<Instant> {
        let idle = self.is_empty(streams).then_some(self.last_touch + self.idle_limit);
        idle.into_iter().chain(self.hop.next_deadline()).min()
    }

    async fn on_deadline(&mut self, now: Instant, streams: &mut Streams) -> Result<(), Close> {
        if self.hop.next_deadline().is_some_and(|d| now >= d) {
            // The next hop began its CREATED and never finished it: our own reason, told to the client.
            return Err(Close(DestroyReason::Timeout, Side::Local));
        }
        if self.is_empty(streams) && now >= self.last_touch + self.idle_limit {
            LimitCounters::hit(&LIMITS.idle_circuits_closed);
            return Err(Close(DestroyReason::Finished, Side::Local));
        }
        Ok(())
    }

    fn touched(&mut self) {
        self.last_touch = Instant::now();
    }

    fn answered(&mut self, refused: Option<EndReason>) {
        match refused {
            None => METRICS.streams_opened.inc(),
            Some(reason) => METRICS.streams_failed.inc(stream_failure(reason)),
        }
    }
}

async fn recv_next(next: &mut Option<Next>) -> Option<Cell> {
    match next {
        Some(n) => n.rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn join_extend(p: &mut Option<PendingExtend>) -> Result<Channel, LinkError> {
    match p {
        Some(p) => match (&mut p.task).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout),
        },
        None => std::future::pending().await,
    }
}

/// Waits for the rest of a multi-cell CREATE, within the reassembly time cap.
pub(crate) async fn read_create(first: &Cell, rx: &mut CellReceiver) -> Result<(cell::CreateHeader, Vec<u8>), DestroyReason> {
    let (hdr, mut read) = HandshakeReader::create(&first.payload, Instant::now()).map_err(|_| DestroyReason::Protocol)?;
    loop {
        match read {
            HandshakeRead::Done(msg) => return Ok((hdr, msg)),
            HandshakeRead::More(r) => {
                let deadline = tokio::time::Instant::from_std(r.deadline());
                let c = tokio::time::timeout_at(deadline, rx.recv()).await.map_err(|_| DestroyReason::Timeout)?.ok_or(DestroyReason::ChannelClosed)?;
                read = r.push(&c, Instant::now()).map_err(|_| DestroyReason::Protocol)?;
            }
        }
    }
}
