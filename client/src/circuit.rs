//! One client circuit: built hop by hop, then an owner task that carries streams.
//!
//! The decisions about cells (crypto, reassembly, which hop may send what, pending BEGINs) are
//! the sans-IO [`ClientCircuit`] state machine's (`allium_proto::circuit`); this task feeds it
//! the link's cells and the time, and owns what has I/O: the link's circuit queue, the stream
//! table and the handles' requests. A cell that no hop can authenticate, or any protocol
//! violation, destroys the circuit; nothing from such a cell reaches an application.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_net::channel::Channel;
use allium_net::link::PeerInfo;
use allium_net::pool::ChannelPool;
use allium_net::cell_queue::CellReceiver;
use allium_net::reactor::{self, CircuitEnd, LinkGone, Streams};
use allium_net::stream::{DataStream, Incoming, StreamError, StreamMux};
use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_proto::cell::{Cell, DestroyReason};
use allium_proto::circuit::{ClientCircuit, Event, Fault, HopTarget};
use allium_proto::crypto::kdf::HopKeys;
use allium_proto::doc::ConsensusRelay;
use allium_proto::ext::Extensions;
use allium_proto::flow::FlowParams;
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::{EndReason, ExtendTarget, RelayMsg};
use tokio::sync::{mpsc, oneshot};

/// Most RESOLVEs one circuit has in flight (the exit answers more with RESOURCELIMIT).
const MAX_RESOLVES: usize = 32;

/// Buffer of the in-process pipe behind a directory stream.
const DIR_PIPE_BUFFER: usize = 64 * 1024;

/// How long building a whole circuit may take before it is abandoned.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a circuit failed.
#[derive(Debug, thiserror::Error)]
pub enum CircError {
    #[error("could not open a link to the first hop: {0}")]
    Link(#[from] allium_net::link::LinkError),
    #[error("link closed")]
    Closed,
    #[error("circuit destroyed by a relay ({0:?})")]
    Destroyed(DestroyReason),
    #[error("relay broke the protocol: {0}")]
    Protocol(String),
    #[error("local limit: {0}")]
    Local(&'static str),
    #[error("circuit build timed out ({hops_done} hops had answered)")]
    Timeout {
        /// Hops that had answered when the build was abandoned (0: the guard never did).
        hops_done: usize,
    },
}

/// A stream request handed to the circuit task.
pub struct BeginRequest {
    pub host: String,
    pub port: u16,
    /// The open stream once the exit answered CONNECTED, or its refusal (DESTROY if the
    /// circuit died first, TIMEOUT if no answer came in time: [`crate::recovery`]).
    pub done: oneshot::Sender<Result<Connected, EndReason>>,
}

/// A stream the exit connected: the requester splices it to its socket
/// ([`DataStream::splice`]); dropped, the stream ends.
pub struct Connected {
    pub stream: DataStream,
    /// The address the exit reports, if any.
    pub addr: Option<IpAddr>,
}

/// A name to resolve through the exit (RESOLVE on a fresh stream id, answered by RESOLVED).
pub struct ResolveRequest {
    pub host: String,
    /// The exit's addresses, or why it could not resolve (DESTROY if the circuit died first).
    pub done: oneshot::Sender<Result<Vec<IpAddr>, EndReason>>,
}

/// A directory stream to the circuit's last hop: the pipe to read and write it through, or why
/// the hop refused (DESTROY if the circuit died first).
pub type DirStreamResult = Result<tokio::io::DuplexStream, EndReason>;

/// A stream the far end of a rendezvous circuit asked this service for: BEGIN on the virtual
/// hop (docs/PROTOCOL.md, "Onion services" → "Service streams"). The circuit task does not wait
/// for the answer: `accept(None)` sends CONNECTED (no address) and gives the stream, `refuse`
/// sends END; dropped unanswered, it is END MISC.
pub use allium_net::stream::IncomingStream;

/// What the circuit task is asked to do.
enum CircRequest {
    Begin(BeginRequest),
    Resolve(ResolveRequest),
    BeginDir(oneshot::Sender<DirStreamResult>),
    /// A circuit-level message (stream 0) to the last hop.
    Control(RelayMsg, oneshot::Sender<Result<(), String>>),
    /// Appends a hop whose keys come from elsewhere (the rendezvous virtual hop).
    AddVirtualHop(Box<HopKeys>, oneshot::Sender<()>),
    /// The service's join at the rendezvous point, in one step so that no cell of the client
    /// can arrive in between: send RENDEZVOUS1 to the last hop, append the virtual hop, serve.
    ServiceJoin { rendezvous1: RelayMsg, keys: Box<HopKeys>, streams: mpsc::Sender<IncomingStream>, max_streams: usize, done: oneshot::Sender<Result<(), String>> },
}

/// Most streams waiting for the service's answer (connect) on one rendezvous circuit; more
/// are answered END RESOURCELIMIT.
const MAX_INCOMING_PENDING: usize = 64;

/// Most circuit-level messages waiting for [`CircHandle::recv_control`]; a relay sending more
/// than that unread closes the circuit.
const CONTROL_QUEUE: usize = 64;

/// Circuit-level messages from the hops: `(hop index, message)`.
type ControlRx = Arc<tokio::sync::Mutex<mpsc::Receiver<(usize, RelayMsg)>>>;

/// A stream waiting for CONNECTED.
enum Pending {
    /// An application's stream to an exit destination.
    App(BeginRequest),
    /// A directory stream this node reads itself.
    Dir(oneshot::Sender<DirStreamResult>),
}

impl Pending {
    fn fail(self, reason: EndReason) {
        match self {
            Pending::App(req) => {
                let _ = req.done.send(Err(reason));
            }
            Pending::Dir(done) => {
                let _ = done.send(Err(reason));
            }
        }
    }
}

/// A cheap handle to a running circuit.
#[derive(Clone)]
pub struct CircHandle {
    tx: mpsc::Sender<CircRequest>,
    pub exit: Arc<ConsensusRelay>,
    pub built_at: Instant,
    /// The keys shared with the last hop of the built path (ESTABLISH_INTRO signs a binding of
    /// them, docs/PROTOCOL.md "Introduction points").
    last_keys: Arc<HopKeys>,
    control_rx: ControlRx,
    /// Relays on the built path, first hop first.
    path: Arc<[RelayId]>,
    /// Set by the circuit task when it gave up on a stream ([`crate::recovery`]): the circuit
    /// takes no new streams.
    retired: Arc<AtomicBool>,
}

impl CircHandle {
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Whether new streams may use this circuit: it is open and has not given up on a stream
    /// (no CONNECTED in time, or a stall: [`crate::recovery`]).
    pub fn takes_streams(&self) -> bool {
        !self.is_closed() && !self.retired.load(Ordering::Relaxed)
    }

    /// Opens a stream; the circuit task answers through `req.done`.
    pub async fn begin(&self, req: BeginRequest) -> Result<(), BeginRequest> {
        self.tx.send(CircRequest::Begin(req)).await.map_err(|e| match e.0 {
            CircRequest::Begin(r) => r,
            _ => unreachable!("sent a BEGIN"),
        })
    }

    /// Resolves a name through the exit; the circuit task answers through `req.done`.
    pub async fn resolve(&self, req: ResolveRequest) -> Result<(), ResolveRequest> {
        self.tx.send(CircRequest::Resolve(req)).await.map_err(|e| match e.0 {
            CircRequest::Resolve(r) => r,
            _ => unreachable!("sent a RESOLVE"),
        })
    }

    /// How many relays the circuit was built through: the hop index of the last relay is one
    /// less, that of a virtual hop (added later) this many.
    pub fn path_len(&self) -> usize {
        self.path.len()
    }

    /// The relays the circuit was built through, first hop first.
    pub fn path(&self) -> &[RelayId] {
        &self.path
    }

    /// The keys this circuit shares with the last hop it was built to.
    pub fn last_hop_keys(&self) -> &HopKeys {
        &self.last_keys
    }

    /// Sends a circuit-level message (stream 0) to the circuit's last hop: the last relay, or
    /// the virtual hop once one was added. Answers come through [`CircHandle::recv_control`].
    pub async fn send_control(&self, msg: RelayMsg) -> Result<(), CircError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(CircRequest::Control(msg, tx)).await.map_err(|_| CircError::Closed)?;
        rx.await.map_err(|_| CircError::Closed)?.map_err(CircError::Protocol)
    }

    /// The next circuit-level onion-service message from a hop (INTRO_ESTABLISHED, INTRODUCE2,
    /// INTRODUCE_ACK, RENDEZVOUS_ESTABLISHED, RENDEZVOUS2, and, once a virtual hop was added,
    /// DATA on stream 0 from it), with the index of the hop that sent it; `None` once the
    /// circuit has closed.
    pub async fn recv_control(&self) -> Option<(usize, RelayMsg)> {
        self.control_rx.lock().await.recv().await
    }

    /// [`CircHandle::send_control`] then [`CircHandle::recv_control`].
    pub async fn control(&self, msg: RelayMsg) -> Result<(usize, RelayMsg), CircError> {
        self.send_control(msg).await?;
        self.recv_control().await.ok_or(CircError::Closed)
    }

    /// Appends one more hop after the last, with keys agreed end to end (the rendezvous
    /// virtual hop, `allium_proto::hs::rendezvous`; a service passes `service_end_keys`).
    /// Later messages to the last hop go to it.
    pub async fn add_virtual_hop(&self, keys: HopKeys) -> Result<(), CircError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(CircRequest::AddVirtualHop(Box::new(keys), tx)).await.map_err(|_| CircError::Closed)?;
        rx.await.map_err(|_| CircError::Closed)
    }

    /// The service's side of a rendezvous, atomically: sends `rendezvous1` (RENDEZVOUS1) to the
    /// last hop, appends the virtual hop with `keys` (`rendezvous::service_end_keys`) and
    /// serves streams from it to `streams` (see [`IncomingStream`]), at most `max_streams` at
    /// once (more BEGINs get END RESOURCELIMIT).
    pub async fn join_as_service(&self, rendezvous1: RelayMsg, keys: HopKeys, streams: mpsc::Sender<IncomingStream>, max_streams: usize) -> Result<(), CircError> {
        let (done, rx) = oneshot::channel();
        let req = CircRequest::ServiceJoin { rendezvous1, keys: Box::new(keys), streams, max_streams, done };
        self.tx.send(req).await.map_err(|_| CircError::Closed)?;
        rx.await.map_err(|_| CircError::Closed)?.map_err(CircError::Protocol)
    }

    /// Opens a directory stream (BEGIN_DIR) to the circuit's last hop.
    pub async fn begin_dir(&self) -> DirStreamResult {
        let (tx, rx) = oneshot::channel();
        self.tx.send(CircRequest::BeginDir(tx)).await.map_err(|_| EndReason::Destroy)?;
        rx.await.unwrap_or(Err(EndReason::Destroy))
    }
}

/// The circuit's owner task: drives its [`ClientCircuit`] state machine with the link's cells,
/// the handles' requests, the stream table's events and the clock, and carries out what it
/// decides. Decisions about cells (which hop may send what, crypto, reassembly) are the
/// machine's; streams' bytes are the [`StreamMux`]'s; this task only moves values between them.
struct Circuit {
    chan: Channel,
    /// The circuit's share of the memory budget (its link queue's), charged for stream data.
    mem: Arc<allium_net::limits::memquota::HeldMem>,
    machine: ClientCircuit,
    /// Sent to every hop; the streams use it.
    flow: FlowParams,
    /// Where circuit-level onion-service messages go.
    control_tx: mpsc::Sender<(usize, RelayMsg)>,
    /// Where streams from the virtual hop go once this end serves them (an onion service).
    serving: Option<mpsc::Sender<IncomingStream>>,
    /// Shared with every handle: set when the circuit takes no new streams.
    retired: Arc<AtomicBool>,
    /// What [`crate::recovery`] has logged for this circuit.
    logged: crate::recovery::Logged,
    /// The handles' requests, while any handle is left.
    requests: Option<mpsc::Receiver<CircRequest>>,
    /// Requests waiting for CONNECTED or RESOLVED.
    pending: std::collections::HashMap<u16, Pending>,
    resolves: std::collections::HashMap<u16, ResolveRequest>,
    /// When streams are next checked for deadlines ([`crate::recovery`]).
    next_check: Instant,
    /// Cells of the message being sent (kept, so that sending allocates nothing).
    outbuf: Vec<Cell>,
}

/// Builds a circuit through `path` (guard first, at least one hop) and starts its task.
pub async fn build(pool: &ChannelPool, path: &[&ConsensusRelay]) -> Result<CircHandle, CircError> {
    build_within(pool, path, BUILD_TIMEOUT, FlowParams::default()).await
}

/// [`build`] with a caller-chosen timeout (the client's learned one, see `timeout.rs`).
/// and flow-control parameters (sent to every hop, see [`FlowParams`]).
pub async fn build_within(pool: &ChannelPool, path: &[&ConsensusRelay], limit: Duration, flow: FlowParams) -> Result<CircHandle, CircError> {
    let last = *path.last().expect("a path has at least one hop");
    let started = Instant::now();
    let progress = AtomicUsize::new(0);
    let built = tokio::time::timeout(limit, build_inner(pool, path, &progress, flow))
        .await
        .map_err(|_| CircError::Timeout { hops_done: progress.load(Ordering::Relaxed) })
        .and_then(|r| r);
    let metrics = &allium_net::metrics::METRICS;
    let (circ, rx, control_rx) = match built {
        Ok(c) => c,
        Err(e) => {
            metrics.circuits_failed.inc(match e {
                CircError::Timeout { .. } => "timeout",
                CircError::Destroyed(_) => "destroyed",
                CircError::Link(_) | CircError::Closed => "connect",
                CircError::Protocol(_) | CircError::Local(_) => "handshake",
            });
            return Err(e);
        }
    };
    metrics.circuits_opened.inc();
    metrics.circuit_build.observe(started.elapsed());
    let hops: Vec<String> = path.iter().map(|r| r.identity.short()).collect();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if hops.len() == 1 {
        tracing::debug!("one-hop directory circuit to {} ready in {ms:.1} ms", hops[0]);
    } else {
        tracing::debug!("circuit built in {ms:.1} ms through {}", hops.join(" "));
    }
    let (tx, requests) = mpsc::channel(64);
    let mut circ = circ;
    circ.requests = Some(requests);
    let last_keys = Arc::new(circ.machine.last_keys().expect("at least one hop").clone());
    let retired = circ.retired.clone();
    let open = metrics.circuits_open.open();
    tokio::spawn(async move {
        circ.run(rx).await;
        drop(open);
    });
    Ok(CircHandle { tx, exit: Arc::new(last.clone()), built_at: Instant::now(), last_keys, control_rx: Arc::new(tokio::sync::Mutex::new(control_rx)), path: path.iter().map(|r| r.identity).collect(), retired })
}

/// The client data of every hop's handshake: the circuit's flow-control parameters.
fn ext_bytes(flow: FlowParams) -> Vec<u8> {
    let mut v = Vec::new();
    Extensions(vec![flow.to_extension()]).encode(&mut v);
    v
}

/// What the circuit machine needs to add `relay` as a hop.
fn hop_target(relay: &ConsensusRelay) -> HopTarget {
    HopTarget { target: ExtendTarget { addr: relay.address, identity: relay.identity.0, link_key: relay.link_key }, onion_key: relay.onion_key }
}

/// A built circuit, its link queue and the receiving end of its control queue.
type Built = (Circuit, CellReceiver, mpsc::Receiver<(usize, RelayMsg)>);

async fn build_inner(pool: &ChannelPool, path: &[&ConsensusRelay], progress: &AtomicUsize, flow: FlowParams) -> Result<Built, CircError> {
    let first = path[0];
    let chan = pool.get(&PeerInfo { addr: first.address, identity: first.identity, link_key: first.link_key }).await?;
    let (id, mut rx) = chan.open_circuit().map_err(|_| CircError::Closed)?;
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let machine = ClientCircuit::new(id, ext_bytes(flow));
    let mut c = Circuit {
        chan,
        mem: rx.held_mem(),
        machine,
        flow,
        control_tx,
        serving: None,
        retired: Default::default(),
        logged: Default::default(),
        requests: None,
        pending: Default::default(),
        resolves: Default::default(),
        next_check: Instant::now() + crate::recovery::CHECK_EVERY,
        outbuf: Vec::new(),
    };
    let r = c.build_hops(&mut rx, path, progress).await;
    if r.is_err() {
        c.chan.destroy(id, DestroyReason::Requested);
    }
    r.map(|_| (c, rx, control_rx))
}

impl From<Fault> for CircError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Protocol(m) => CircError::Protocol(m),
            Fault::Destroyed(r) => CircError::Destroyed(r),
            Fault::Local(m) => CircError::Local(m),
        }
    }
}

impl Circuit {
    async fn build_hops(&mut self, rx: &mut CellReceiver, path: &[&ConsensusRelay], progress: &AtomicUsize) -> Result<(), CircError> {
        let mut rng = rand::rngs::OsRng;
        for hop in path {
            let cells = self.machine.extend(&mut rng, &hop_target(hop))?;
            self.send_cells(cells).await?;
            loop {
                let cell = rx.recv().await.ok_or(CircError::Closed)?;
                match self.machine.handle_cell(cell, Instant::now())? {
                    Event::Extended { .. } => break,
                    Event::Nothing => continue,
                    _ => return Err(CircError::Protocol("unexpected message while extending".into())),
                }
            }
            progress.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn send_cells(&mut self, cells: Vec<Cell>) -> Result<(), CircError> {
        for c in cells {
            self.chan.send(c).await.map_err(|_| CircError::Closed)?;
        }
        Ok(())
    }

    /// Encrypts and sends a message to `hop`.
    async fn send(&mut self, hop: usize, stream_id: u16, msg: &RelayMsg) -> Result<(), CircError> {
        let cells = self.machine.encode(hop, stream_id, msg)?;
        self.send_cells(cells).await
    }

    /// Encrypts and sends a message to the last hop (through the reused buffer: the path of
    /// every DATA cell).
    async fn send_last(&mut self, stream_id: u16, msg: &RelayMsg) -> Result<(), CircError> {
        let mut cells = std::mem::take(&mut self.outbuf);
        cells.clear();
        self.machine.encode_last_into(stream_id, msg, &mut cells)?;
        for c in cells.drain(..) {
            self.chan.send(c).await.map_err(|_| CircError::Closed)?;
        }
        self.outbuf = cells;
        Ok(())
    }

    async fn send_all(&mut self, msgs: Vec<(u16, RelayMsg)>) -> Result<(), CircError> {
        for (id, m) in msgs {
            self.send_last(id, &m).await?;
        }
        Ok(())
    }

    /// Appends the virtual hop. Its streams use the default windows (the two ends of a join
    /// negotiated nothing); a circuit that carries no stream yet starts its table afresh.
    fn add_virtual_hop(&mut self, keys: &HopKeys, mux: &mut StreamMux) {
        self.machine.add_virtual_hop(keys);
        if mux.is_empty() {
            self.flow = FlowParams::default();
            *mux = StreamMux::new(self.flow);
            mux.set_mem(self.mem.clone());
        }
    }

    /// Drives the circuit with the reactor until it ends, then tears it down.
    async fn run(mut self, mut rx: CellReceiver) {
        let mut s = Streams { mux: StreamMux::new(self.flow), incoming: Incoming::new(MAX_INCOMING_PENDING) };
        s.mux.set_mem(self.mem.clone());
        let result = reactor::run(&mut self, &mut rx, &mut s).await;
        // Handles see the circuit closed (`is_closed`) before its control queue ends.
        self.requests = None;
        match result {
            Err(CircError::Destroyed(r)) => {
                tracing::debug!("circuit destroyed ({r:?})");
                self.chan.close_circuit(self.machine.id());
            }
            Err(e) => {
                match &e {
                    // Across a rendezvous join the far end (a client or a service) can be to blame.
                    CircError::Protocol(m) if self.machine.has_virtual_hop() => tracing::warn!("closing rendezvous circuit: a relay or the other end broke the protocol ({m})"),
                    CircError::Protocol(m) => tracing::warn!("closing circuit: relay broke the protocol ({m})"),
                    e => tracing::debug!("circuit closed: {e}"),
                }
                // A queue the memory budget reclaimed is our own resource limit, not a protocol error.
                let reason = if rx.reclaimed() { DestroyReason::ResourceLimit } else { DestroyReason::Protocol };
                self.chan.destroy(self.machine.id(), reason);
            }
            Ok(()) => self.chan.destroy(self.machine.id(), DestroyReason::Finished),
        }
        for (_, p) in self.pending.drain() {
            p.fail(EndReason::Destroy);
        }
        for (_, req) in self.resolves.drain() {
            let _ = req.done.send(Err(EndReason::Destroy));
        }
    }

    /// Carries out what the machine made of a cell.
    async fn on_event(&mut self, ev: Event, s: &mut Streams) -> Result<(), CircError> {
        match ev {
            Event::Nothing | Event::Extended { .. } => Ok(()),
            Event::Send(cells) => self.send_cells(cells).await,
            Event::Control { hop, msg } => self.control_tx.try_send((hop, msg)).map_err(|_| CircError::Protocol("circuit-level messages not read".into())),
            Event::Resolved { stream, result } => {
                if let Some(req) = self.resolves.remove(&stream) {
                    let _ = req.done.send(result);
                }
                Ok(())
            }
            Event::Connected { stream, .. } | Event::Refused { stream, .. } if !self.pending.contains_key(&stream) => Ok(()),
            Event::Connected { stream, addr } => {
                match self.pending.remove(&stream).expect("checked") {
                    Pending::App(req) => {
                        allium_net::metrics::METRICS.streams_opened.inc();
                        let data = s.mux.take_stream(stream).expect("opened with its BEGIN");
                        // A requester gone by now drops the stream, which ends it.
                        let _ = req.done.send(Ok(Connected { stream: data, addr }));
                    }
                    Pending::Dir(done) => {
                        let (ours, theirs) = tokio::io::duplex(DIR_PIPE_BUFFER);
                        s.mux.attach(stream, ours);
                        let _ = done.send(Ok(theirs));
                    }
                }
                Ok(())
            }
            Event::Refused { stream, reason } => {
                let req = self.pending.remove(&stream).expect("checked");
                let _ = s.mux.handle_msg(stream, RelayMsg::End(reason));
                allium_net::metrics::METRICS.streams_failed.inc(allium_net::metrics::stream_failure(reason));
                req.fail(reason);
                Ok(())
            }
            Event::Stream { stream, msg } => {
                let out = s.mux.handle_msg(stream, msg).map_err(|e| CircError::Protocol(e.to_string()))?;
                self.send_all(out).await
            }
            Event::Served { stream, msg: RelayMsg::Begin { host, port, .. } } => self.on_served_begin(stream, host, port, s).await,
            Event::Served { stream, msg } => {
                if matches!(msg, RelayMsg::End(_)) {
                    s.incoming.forget(stream);
                }
                let out = s.mux.handle_msg(stream, msg).map_err(|e| CircError::Protocol(e.to_string()))?;
                self.send_all(out).await
            }
        }
    }

    /// A handle's request.
    async fn on_request(&mut self, req: CircRequest, s: &mut Streams) -> Result<(), CircError> {
        match req {
            CircRequest::Begin(req) => {
                let msg = RelayMsg::Begin { host: req.host.clone(), port: req.port, ext: Extensions::none() };
                self.begin(msg, Pending::App(req), s).await
            }
            CircRequest::BeginDir(done) => self.begin(RelayMsg::BeginDir { ext: Extensions::none() }, Pending::Dir(done), s).await,
            CircRequest::Resolve(req) => self.resolve(req, s).await,
            CircRequest::Control(msg, done) => {
                let r = self.send_last(0, &msg).await;
                let _ = done.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                r
            }
            CircRequest::AddVirtualHop(keys, done) => {
                self.add_virtual_hop(&keys, &mut s.mux);
                let _ = done.send(());
                Ok(())
            }
            CircRequest::ServiceJoin { rendezvous1, keys, streams, max_streams, done } => {
                let last = self.machine.n_hops() - 1;
                let r = self.send(last, 0, &rendezvous1).await;
                if r.is_ok() {
                    self.add_virtual_hop(&keys, &mut s.mux);
                    self.machine.serve();
                    s.mux.set_max_streams(max_streams);
                    self.serving = Some(streams);
                }
                let _ = done.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                r
            }
        }
    }

    /// A BEGIN from the far end of a rendezvous this end serves: offered to the service
    /// ([`IncomingStream`]), or END RESOURCELIMIT when too many wait or the stream cap is hit.
    async fn on_served_begin(&mut self, sid: u16, host: String, port: u16, s: &mut Streams) -> Result<(), CircError> {
        match s.mux.open(sid) {
            Ok(()) => {}
            Err(StreamError::TooManyStreams) => {
                LimitCounters::hit(&LIMITS.streams_per_circuit);
                return self.send_last(sid, &RelayMsg::End(EndReason::ResourceLimit)).await;
            }
            Err(e) => return Err(CircError::Protocol(e.to_string())),
        }
        let offered = match &self.serving {
            Some(tx) if s.incoming.has_room() => tx.clone().try_reserve_owned().ok(),
            _ => None,
        };
        let Some(permit) = offered else {
            let out = s.mux.close(sid, EndReason::ResourceLimit);
            return self.send_all(out).await;
        };
        permit.send(s.incoming.offer(sid, port, host));
        Ok(())
    }

    /// Sends RESOLVE on a stream id no stream or RESOLVE uses; the id is free again once the
    /// exit's RESOLVED arrives.
    async fn resolve(&mut self, req: ResolveRequest, s: &mut Streams) -> Result<(), CircError> {
        let id = (0..64).find_map(|_| s.mux.alloc_id().filter(|id| !self.machine.resolving(*id)));
        let Some(id) = id.filter(|_| self.resolves.len() < MAX_RESOLVES) else {
            let _ = req.done.send(Err(EndReason::ResourceLimit));
            return Ok(());
        };
        let cells = self.machine.resolve(id, &req.host)?;
        self.resolves.insert(id, req);
        self.send_cells(cells).await
    }

    /// Gives up on streams past their deadlines ([`crate::recovery`]): BEGINs without an answer
    /// (the request is retried elsewhere with `Timeout`) and stalled streams; either retires
    /// the circuit. The exit gets END for each.
    async fn check_deadlines(&mut self, s: &mut Streams) -> Result<(), CircError> {
        use crate::recovery::{GaveUp, BEGIN_TIMEOUT, STALL_TIMEOUT};
        let now = Instant::now();
        let late = self.machine.late_begins(now, BEGIN_TIMEOUT);
        let stalled: Vec<u16> = s.mux.stalled(now, STALL_TIMEOUT).into_iter().filter(|id| !late.contains(id) && !self.machine.is_pending(*id)).collect();
        let gave_up = GaveUp { begins: late.len(), stalled: stalled.len() };
        if !gave_up.any() {
            return Ok(());
        }
        // Counted, logged and the circuit retired before any application hears of it.
        let newly = !self.retired.swap(true, Ordering::Relaxed);
        crate::recovery::record(&gave_up, newly, &mut self.logged);
        let mut out = Vec::new();
        for id in late {
            if let Some(req) = self.pending.remove(&id) {
                req.fail(EndReason::Timeout);
            }
            out.extend(s.mux.close(id, EndReason::Timeout));
        }
        for id in stalled {
            out.extend(s.mux.close(id, EndReason::Timeout));
        }
        self.send_all(out).await
    }

    /// Opens a stream with `msg` (BEGIN or BEGIN_DIR); `req` waits for CONNECTED or END.
    async fn begin(&mut self, msg: RelayMsg, req: Pending, s: &mut Streams) -> Result<(), CircError> {
        // An id a RESOLVE is waiting on is skipped (as `resolve` skips open streams' ids).
        let Some(id) = (0..64).find_map(|_| s.mux.alloc_id().filter(|id| !self.machine.resolving(*id))) else {
            req.fail(EndReason::ResourceLimit);
            return Ok(());
        };
        s.mux.open(id).map_err(|e| CircError::Protocol(e.to_string()))?;
        let cells = self.machine.begin(id, &msg, Instant::now())?;
        self.pending.insert(id, req);
        self.send_cells(cells).await
    }
}

impl CircuitEnd for Circuit {
    type Error = CircError;
    /// A handle's request; `None` once every handle is gone.
    type Extra = Option<CircRequest>;

    async fn on_cell(&mut self, cell: Result<Cell, LinkGone>, streams: &mut Streams) -> Result<(), CircError> {
        let cell = cell.map_err(|_| CircError::Closed)?;
        let ev = self.machine.handle_cell(cell, Instant::now())?;
        self.on_event(ev, streams).await
    }

    async fn send_stream(&mut self, msgs: Vec<(u16, RelayMsg)>) -> Result<(), CircError> {
        self.send_all(msgs).await
    }

    async fn next_extra(&mut self) -> Option<CircRequest> {
        match &mut self.requests {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    async fn on_extra(&mut self, req: Option<CircRequest>, streams: &mut Streams) -> Result<(), CircError> {
        match req {
            Some(req) => self.on_request(req, streams).await,
            // Every handle is gone: close once the last stream ends.
            None => {
                self.requests = None;
                Ok(())
            }
        }
    }

    /// Streams are checked every [`crate::recovery::CHECK_EVERY`] while there are any, and a
    /// BEGIN exactly when it has waited [`crate::recovery::BEGIN_TIMEOUT`] (the machine's).
    fn next_deadline(&self, streams: &Streams) -> Option<Instant> {
        let check = (!streams.mux.is_empty()).then_some(self.next_check);
        check.into_iter().chain(self.machine.next_deadline(crate::recovery::BEGIN_TIMEOUT)).min()
    }

    async fn on_deadline(&mut self, now: Instant, streams: &mut Streams) -> Result<(), CircError> {
        self.next_check = now + crate::recovery::CHECK_EVERY;
        self.check_deadlines(streams).await
    }

    fn finished(&self, streams: &Streams) -> bool {
        self.requests.is_none() && streams.mux.is_empty() && self.pending.is_empty() && self.resolves.is_empty()
    }
}
