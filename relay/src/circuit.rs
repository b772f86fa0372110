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
use allium_net::channel::Channel;
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

/// Opens stream `id` on `mux`: false (counted) if the circuit already carries
/// `limits.max_streams_per_circuit` streams, which is answered END RESOURCELIMIT; a stream id
/// in use is the peer's protocol violation.
fn open_stream(mux: &mut StreamMux, id: u16) -> Result<bool, Close> {
    match mux.open(id) {
        Ok(()) => Ok(true),
        Err(allium_net::stream::StreamError::TooManyStreams) => {
            LimitCounters::hit(&LIMITS.streams_per_circuit);
            METRICS.streams_failed.inc(stream_failure(EndReason::ResourceLimit));
            Ok(false)
        }
        Err(_) => Err(Close(DestroyReason::Protocol, Side::Local)),
    }
}


type ResolveResult = (u16, Result<Vec<std::net::IpAddr>, EndReason>);

/// RESOLVEs being answered: their stream ids (in use until RESOLVED is sent) and where the
/// resolver tasks report.
struct Resolves {
    tx: mpsc::Sender<ResolveResult>,
    in_flight: std::collections::HashSet<u16>,
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

/// Cells forwarded toward the client before the `inject_from_middle` test hook acts.
pub const INJECT_AFTER: u64 = 200;

/// What the `inject_from_middle` test hook does.
#[derive(Debug, Clone)]
pub enum Injection {
    /// Sends the client this message of the hop's own.
    Message(RelayMsg),
    /// Forwards the cell toward the client as RELAY_EARLY (the 2014 signal, THREATS A16).
    MarkEarly,
}

/// What this circuit is to the onion-service tables (docs/PROTOCOL.md, "Onion services").
#[derive(Clone, Copy, PartialEq, Eq)]
enum HsRole {
    /// A service's introduction circuit (sent ESTABLISH_INTRO).
    Intro,
    /// A client's circuit to an introduction point (sent INTRODUCE1).
    Introducing,
    /// A rendezvous circuit (sent ESTABLISH_RENDEZVOUS or RENDEZVOUS1).
    Rend,
}

/// This circuit's name in [`crate::hs_points::HsPoints`] and where other circuits reach it.
struct Hs {
    key: CircKey,
    tx: mpsc::Sender<HsEvent>,
    role: Option<HsRole>,
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
                n.chan.send(cell).await.map_err(|_| Close(DestroyReason::ChannelClosed, Side::Local))
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

    async fn handle_msg(&mut self, stream_id: u16, msg: RelayMsg, streams: &mut Streams) -> Result<(), Close> {
        let Streams { mux, incoming } = streams;
        let resolves = &mut self.resolves;
        // The machine refused streams on stream 0 or at a hop that is not the last.
        match msg {
            RelayMsg::Begin { host, port, .. } => {
                if resolves.in_flight.contains(&stream_id) {
                    return Err(Close(DestroyReason::Protocol, Side::Local));
                }
                if !self.ctx.exit.policy.is_exit() {
                    METRICS.streams_failed.inc(stream_failure(EndReason::ExitPolicy));
                    return self.send_back(stream_id, &RelayMsg::End(EndReason::ExitPolicy)).await;
                }
                // THREATS A26: a rate per circuit, and a cap on the exit's open connections.
                let limits = &self.ctx.limits;
                let bucket = self.begins.get_or_insert_with(|| TokenBucket::new(limits.begin_rate_per_circuit, limits.begin_burst_per_circuit, Instant::now()));
                if !bucket.take(Instant::now()) {
                    LimitCounters::hit(&LIMITS.begin_rate);
                    METRICS.streams_failed.inc(stream_failure(EndReason::ResourceLimit));
                    return self.send_back(stream_id, &RelayMsg::End(EndReason::ResourceLimit)).await;
                }
                let Ok(slot) = self.ctx.exit_conns.clone().try_acquire_owned() else {
                    LimitCounters::hit(&LIMITS.exit_connections);
                    METRICS.streams_failed.inc(stream_failure(EndReason::ResourceLimit));
                    return self.send_back(stream_id, &RelayMsg::End(EndReason::ResourceLimit)).await;
                };
                if !open_stream(mux, stream_id)? {
                    return self.send_back(stream_id, &RelayMsg::End(EndReason::ResourceLimit)).await;
                }
                let rules = self.ctx.exit.clone();
                let s = incoming.offer(stream_id, port, host);
                // The connection holds its place under `max_exit_connections` and in the
                // open-streams gauge for as long as the stream lives.
                tokio::spawn(async move {
                    match rules.open(&s.host, s.port).await {
                        Ok((sock, ip)) => {
                            if let Some(stream) = s.accept(Some(ip)).await {
                                stream.splice(Holding { sock, guard: (slot, METRICS.streams_open.open()) }, Vec::new());
                            }
                        }
                        Err(reason) => s.refuse(reason),
                    }
                });
                Ok(())
            }
            RelayMsg::BeginDir { .. } => {
                // Any relay is a directory cache: the stream ends here, at this hop.
                if resolves.in_flight.contains(&stream_id) {
                    return Err(Close(DestroyReason::Protocol, Side::Local));
                }
                if !open_stream(mux, stream_id)? {
                    return self.send_back(stream_id, &RelayMsg::End(EndReason::ResourceLimit)).await;
                }
                let (ours, theirs) = tokio::io::duplex(crate::dir_cache::PIPE_BUFFER);
                tokio::spawn(crate::dir_cache::serve(theirs, self.ctx.dir.clone()));
                let step = self.send_back(stream_id, &RelayMsg::Connected { addr: None, ext: Default::default() }).await;
                mux.attach(stream_id, ours);
                step
            }
            RelayMsg::Resolve { host, .. } => {
                // A fresh stream id, answered by RESOLVED on it; no CONNECTED, no END.
                if !resolves.in_flight.insert(stream_id) {
                    return Err(Close(DestroyReason::Protocol, Side::Local));
                }
                let over = resolves.in_flight.len() > self.ctx.limits.max_resolves_per_circuit;
                if !self.ctx.exit.policy.is_exit() || over {
                    let reason = if self.ctx.exit.policy.is_exit() { EndReason::ResourceLimit } else { EndReason::ExitPolicy };
                    if self.ctx.exit.policy.is_exit() {
                        LimitCounters::hit(&LIMITS.resolves_per_circuit);
                    }
                    resolves.in_flight.remove(&stream_id);
                    return self.send_back(stream_id, &RelayMsg::Resolved { result: Err(reason), ext: Default::default() }).await;
                }
                let rules = self.ctx.exit.clone();
                let tx = resolves.tx.clone();
                tokio::spawn(async move {
                    let r = rules.resolve_for_client(&host).await;
                    let _ = tx.send((stream_id, r)).await;
                });
                Ok(())
            }
            RelayMsg::Drop => Ok(()),
            m @ (RelayMsg::Data(_) | RelayMsg::DataToken { .. } | RelayMsg::Sendme { .. } | RelayMsg::Xoff | RelayMsg::Xon | RelayMsg::End(_)) => {
                if matches!(m, RelayMsg::End(_)) {
                    incoming.forget(stream_id);
                }
                let out = mux.handle_msg(stream_id, m).map_err(|e| {
                    tracing::debug!("stream protocol violation: {e}");
                    Close(DestroyReason::Protocol, Side::Local)
                })?;
                self.send_all(out).await
            }
            _ => Err(Close(DestroyReason::Protocol, Side::Local)),
        }
    }

    /// ESTABLISH_INTRO, INTRODUCE1, ESTABLISH_RENDEZVOUS or RENDEZVOUS1 at the last hop.
    async fn handle_hs_msg(&mut self, msg: RelayMsg) -> Result<(), Close> {
        let (key, tx) = (self.hs.key, self.hs.tx.clone());
        let protocol = || Close(DestroyReason::Protocol, Side::Local);
        let role = match msg {
            RelayMsg::EstablishIntro { .. } => HsRole::Intro,
            RelayMsg::Introduce1(_) => HsRole::Introducing,
            _ => HsRole::Rend,
        };
        // One role per circuit; the tables refuse a second message of the same role.
        if self.hs.role.is_some_and(|r| r != role) {
            return Err(protocol());
        }
        self.hs.role = Some(role);
        let points = self.ctx.hs.clone();
        let now = allium_net::keys::unix_now();
        match msg {
            m @ RelayMsg::EstablishIntro { .. } => {
                let r = points.intro.lock().unwrap_or_else(|e| e.into_inner()).establish(key, &m, &self.hop_keys, crate::hs_points::mono_ms());
                let (reply, _old) = r.map_err(|e| {
                    tracing::debug!("ESTABLISH_INTRO refused: {e}");
                    match e {
                        allium_proto::hs::intro_point::IntroPointError::Full => {
                            LimitCounters::hit(&LIMITS.intro_circuits_full);
                            Close(DestroyReason::ResourceLimit, Side::Local)
                        }
                        _ => protocol(),
                    }
                })?;
                points.register(key, &tx);
                self.send_back(0, &reply).await
            }
            RelayMsg::Introduce1(body) => {
                let r = points.intro.lock().unwrap_or_else(|e| e.into_inner()).introduce1(key, &body, crate::hs_points::mono_ms());
                let action = r.map_err(|e| {
                    tracing::debug!("INTRODUCE1 refused: {e}");
                    protocol()
                })?;
                if matches!(action.ack, RelayMsg::IntroduceAck { status: introduce_status::RATE_LIMITED, .. }) {
                    LimitCounters::hit(&LIMITS.intro_rate_limited);
                }
                let mut ack = action.ack;
                if let Some((svc, intro2)) = action.forward {
                    if self.ctx.duplicate_introduce2 {
                        tracing::info!("test hook: forwarding an INTRODUCE2 twice");
                        points.deliver(svc, HsEvent::Originate(intro2.clone()));
                    }
                    if points.deliver(svc, HsEvent::Originate(intro2)) {
                        METRICS.onion_introductions.inc();
                    } else {
                        ack = RelayMsg::IntroduceAck { status: introduce_status::CANNOT_RELAY, ext: Default::default() };
                    }
                }
                self.send_back(0, &ack).await
            }
            RelayMsg::EstablishRendezvous { cookie, .. } => {
                // Reachable before it is filed, so that an expiry can destroy it.
                points.register(key, &tx);
                let r = points.rend.lock().unwrap_or_else(|e| e.into_inner()).establish(key, &cookie, now);
                let reply = r.map_err(|e| {
                    tracing::debug!("ESTABLISH_RENDEZVOUS refused: {e}");
                    match e {
                        allium_proto::hs::rend_point::RendPointError::Full => {
                            LimitCounters::hit(&LIMITS.rendezvous_cookies_full);
                            Close(DestroyReason::ResourceLimit, Side::Local)
                        }
                        _ => protocol(),
                    }
                })?;
                self.send_back(0, &reply).await
            }
            RelayMsg::Rendezvous1 { cookie, hdata, .. } => {
                // Reachable before the join, so that the client's cells and DESTROY find it.
                points.register(key, &tx);
                let r = points.rend.lock().unwrap_or_else(|e| e.into_inner()).rendezvous1(key, &cookie, &hdata, now);
                let (client, rend2) = r.map_err(|e| {
                    tracing::debug!("RENDEZVOUS1 refused: {e}");
                    protocol()
                })?;
                if points.deliver(client, HsEvent::Originate(rend2)) {
                    METRICS.onion_rendezvous.inc();
                    Ok(())
                } else {
                    Err(Close(DestroyReason::ResourceLimit, Side::Local))
                }
            }
            _ => Err(protocol()),
        }
    }

    /// Something another circuit task handed to this one.
    async fn on_hs_event(&mut self, ev: HsEvent) -> Result<(), Close> {
        match ev {
            HsEvent::Originate(msg) => self.send_back(0, &msg).await,
            HsEvent::Cell(mut body) => {
                self.hop.forward_back(&mut body).map_err(|f| Close::of(f, Side::Local))?;
                self.prev.send(Cell { circ_id: self.prev_id, cmd: CellCmd::Relay, payload: *body }).await.map_err(|_| Close(DestroyReason::ChannelClosed, Side::Local))
            }
            // Told to both sides of this circuit, as a local decision.
            HsEvent::Destroy(reason) => Err(Close(reason, Side::Local)),
        }
    }

    fn start_extend(&mut self, target: ExtendTarget, htype: u16, hdata: Vec<u8>) -> Result<(), Close> {
        let id = RelayId(target.identity);
        if id == self.ctx.id || target.identity == [0; 32] || self.prev.peer == Some(id) {
            return Err(Close(DestroyReason::Protocol, Side::Local));
        }
        let listed = self.ctx.dir.listed_relay(&id);
        extend_allowed(&target, listed, self.ctx.testnet, self.ctx.dir.has_consensus()).map_err(|why| {
            tracing::debug!("EXTEND refused: {why}");
            let reason = if why == NOT_DIALLABLE { DestroyReason::ConnectFailed } else { DestroyReason::OrIdentity };
            Close(reason, Side::Local)
        })?;
        let peer = PeerInfo { addr: target.addr, identity: id, link_key: target.link_key };
        let ctx = self.ctx.clone();
        let task = tokio::spawn(async move { ctx.pool.get(&peer).await });
        self.extending = Some(PendingExtend { task, htype, hdata });
        Ok(())
    }

    async fn extended_link(&mut self, r: Result<Channel, LinkError>) -> Result<(), Close> {
        let p = self.extending.take().expect("extend in progress");
        let chan = r.map_err(|e| {
            tracing::debug!("extend failed: {e}");
            Close(DestroyReason::ConnectFailed, Side::Local)
        })?;
        let (id, rx) = chan.open_circuit().map_err(|_| Close(DestroyReason::ConnectFailed, Side::Local))?;
        for c in cell::create_cells(id, p.htype, &p.hdata) {
            chan.send(c).await.map_err(|_| Close(DestroyReason::ConnectFailed, Side::Local))?;
        }
        self.next = Some(Next { chan, id, rx });
        self.hop.creating();
        Ok(())
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
                self.prev.send(cell).await.map_err(|_| Close(DestroyReason::ChannelClosed, Side::Local))?;
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
            self.send_body(body).await?;
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

    /// Test-only fault: once `INJECT_AFTER` cells went toward the client, send it a message of
    /// this hop's own (which only the last hop may send), or mark the cell RELAY_EARLY.
    fn hook_inject(&mut self) -> Option<Injection> {
        self.forwarded_in += 1;
        if self.forwarded_in == INJECT_AFTER {
            if let Some(i) = self.ctx.inject_from_middle.clone() {
                tracing::info!("test hook: sending the client a message from a middle hop");
                return Some(i);
            }
        }
        None
    }

    /// Test-only fault: true once this relay has stopped forwarding on this circuit (it drops
    /// the cell); `outbound` counts a cell toward the exit.
    fn hook_stopped(&mut self, outbound: bool) -> bool {
        self.forwarded_out += u64::from(outbound);
        if let Some(after) = self.ctx.stop_forwarding_after {
            if self.forwarded_out > after {
                return true;
            }
        }
        false
    }

    /// Test-only fault: flip a byte of every forwarded relay cell after the first N.
    fn hook_corrupt(&mut self, body: &mut [u8; PAYLOAD_LEN]) {
        self.forwarded += 1;
        if let Some(after) = self.ctx.corrupt_after {
            if self.forwarded > after {
                body[(self.forwarded as usize * 7) % PAYLOAD_LEN] ^= 0x01;
            }
        }
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
            Extra::Next(Some(c)) => self.on_next_cell(c).await,
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

const NOT_DIALLABLE: &str = "port 0, or a private address outside a test network";

/// Whether a relay may extend to `target` (THREATS A11): never to port 0 or (outside a test
/// network) a private address; only to the address and link key its consensus lists for that
/// identity (`listed`). A test network's relay that holds no consensus at all (relays run in a
/// test process) takes the EXTEND as it is (docs/PROTOCOL.md, "Test networks").
fn extend_allowed(target: &ExtendTarget, listed: Option<(std::net::SocketAddr, [u8; 32])>, testnet: bool, has_consensus: bool) -> Result<(), &'static str> {
    if target.addr.port() == 0 || (!testnet && is_private(target.addr.ip())) {
        return Err(NOT_DIALLABLE);
    }
    match listed {
        Some((addr, key)) if addr == target.addr && key == target.link_key => Ok(()),
        Some(_) => Err("its address or link key is not the consensus's for that relay"),
        None if testnet && !has_consensus => Ok(()),
        None => Err("the relay is not in the consensus"),
    }
}

/// The onion-service messages a relay takes (commands 20, 22, 25, 27).
fn is_hs_msg(m: &RelayMsg) -> bool {
    matches!(m, RelayMsg::EstablishIntro { .. } | RelayMsg::Introduce1(_) | RelayMsg::EstablishRendezvous { .. } | RelayMsg::Rendezvous1 { .. })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `dangerous_testnet` unlocks for EXTEND (a private target; extending with no
    /// consensus at all) stays refused without it; port 0 is refused everywhere.
    #[test]
    fn extends_follow_the_consensus_and_testnet_unlocks_only_what_it_lists() {
        let target = |a: &str| ExtendTarget { addr: a.parse().unwrap(), identity: [1; 32], link_key: [2; 32] };
        let private = target("10.0.0.1:9001");
        let public = target("192.0.2.10:9001");
        // No consensus held: only a test network extends as told, and never to port 0.
        assert!(extend_allowed(&private, None, false, false).is_err());
        assert!(extend_allowed(&public, None, false, false).is_err());
        assert!(extend_allowed(&private, None, true, false).is_ok());
        assert!(extend_allowed(&target("127.0.0.1:0"), None, true, false).is_err());
        // A consensus held: the listed address and link key only, on any network.
        let listed = Some((public.addr, public.link_key));
        assert!(extend_allowed(&public, listed, false, true).is_ok());
        assert!(extend_allowed(&public, Some((public.addr, [3; 32])), false, true).is_err());
        assert!(extend_allowed(&public, None, true, true).is_err(), "unlisted, with a consensus");
        assert!(extend_allowed(&private, Some((private.addr, private.link_key)), false, true).is_err(), "private outside a test network");
    }
}
