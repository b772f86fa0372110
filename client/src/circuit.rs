//! One client circuit: built hop by hop, then an owner task that carries streams.
//!
//! The task owns the link's circuit queue, the layered cell crypto for every hop and the
//! streams. A cell that no hop can authenticate, or any protocol violation, destroys the
//! circuit; nothing from such a cell reaches an application.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_net::channel::Channel;
use allium_net::link::PeerInfo;
use allium_net::pool::ChannelPool;
use allium_net::stream::{Answer, DataStream, Incoming, Reply, StreamError, StreamMux};
use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_proto::cell::{self, Cell, CellCmd, DestroyReason, MAX_HANDSHAKE_LEN, PAYLOAD_LEN};
use allium_proto::crypto::cell_crypto::ClientCrypto;
use allium_proto::crypto::kdf::HopKeys;
use allium_proto::crypto::ntor::{self, HTYPE_NTOR};
use allium_proto::doc::ConsensusRelay;
use allium_proto::ext::Extensions;
use allium_proto::flow::FlowParams;
use allium_proto::frag::{Progress, Reassembly};
use allium_proto::early::EarlyMarker;
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::{self, Direction, EndReason, ExtendTarget, MsgAssembler, RelayMsg, RELAY_PLAINTEXT_LEN};
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

/// Streams waiting for CONNECTED, with when their BEGIN was sent.
type PendingStreams = std::collections::HashMap<u16, (Instant, Pending)>;

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

/// The circuit's state after building.
struct Circuit {
    chan: Channel,
    id: u32,
    rx: allium_net::cell_queue::CellReceiver,
    crypto: ClientCrypto,
    asm: Vec<MsgAssembler>,
    /// Which cells go as RELAY_EARLY (docs/PROTOCOL.md, "RELAY_EARLY").
    early: EarlyMarker,
    /// Why a relay said it is destroying the circuit (CLOSING), for when its DESTROY arrives.
    closing: Option<DestroyReason>,
    /// Sent to every hop; the streams use it.
    flow: FlowParams,
    /// The keys of the last hop built so far.
    last_keys: Option<HopKeys>,
    /// Where circuit-level onion-service messages go.
    control_tx: mpsc::Sender<(usize, RelayMsg)>,
    /// Whether a virtual hop was appended (rendezvous circuit).
    virtual_hop: bool,
    /// Where streams from the virtual hop go once this end serves them (an onion service).
    serving: Option<mpsc::Sender<IncomingStream>>,
    /// Shared with every handle: set when the circuit takes no new streams.
    retired: Arc<AtomicBool>,
    /// What [`crate::recovery`] has logged for this circuit.
    logged: crate::recovery::Logged,
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
    let mut circ = match built {
        Ok(c) => c,
        Err(e) => {
            metrics.circuits_failed.inc(match e {
                CircError::Timeout { .. } => "timeout",
                CircError::Destroyed(_) => "destroyed",
                CircError::Link(_) | CircError::Closed => "connect",
                CircError::Protocol(_) => "handshake",
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
    let (tx, rx) = mpsc::channel(64);
    let last_keys = Arc::new(circ.last_keys.clone().expect("at least one hop"));
    let control_rx = circ.control_rx.take().expect("control queue");
    let retired = circ.circ.retired.clone();
    let open = metrics.circuits_open.open();
    tokio::spawn(async move {
        circ.circ.run(rx).await;
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

/// A built circuit and the receiving end of its control queue.
struct Built {
    circ: Circuit,
    last_keys: Option<HopKeys>,
    control_rx: Option<mpsc::Receiver<(usize, RelayMsg)>>,
}

async fn build_inner(pool: &ChannelPool, path: &[&ConsensusRelay], progress: &AtomicUsize, flow: FlowParams) -> Result<Built, CircError> {
    let first = path[0];
    let chan = pool.get(&PeerInfo { addr: first.address, identity: first.identity, link_key: first.link_key }).await?;
    let (id, rx) = chan.open_circuit().map_err(|_| CircError::Closed)?;
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let mut c = Circuit { chan, id, rx, crypto: ClientCrypto::new(), asm: Vec::new(), early: EarlyMarker::default(), closing: None, flow, last_keys: None, control_tx, virtual_hop: false, serving: None, retired: Default::default(), logged: Default::default() };
    let r = c.build_hops(path, progress).await;
    if r.is_err() {
        c.chan.destroy(c.id, DestroyReason::Requested);
    }
    r.map(|_| Built { last_keys: c.last_keys.take(), circ: c, control_rx: Some(control_rx) })
}

impl Circuit {
    async fn build_hops(&mut self, path: &[&ConsensusRelay], progress: &AtomicUsize) -> Result<(), CircError> {
        let mut rng = rand::rngs::OsRng;
        let ext = ext_bytes(self.flow);
        let (state, msg) = ntor::client_start(&mut rng, &path[0].identity, &path[0].onion_key, &ext);
        for c in cell::create_cells(self.id, HTYPE_NTOR, &msg) {
            self.chan.send(c).await.map_err(|_| CircError::Closed)?;
        }
        let reply = self.read_created().await?;
        let (keys, _ext) = state.finish(&reply).map_err(|e| CircError::Protocol(e.to_string()))?;
        self.crypto.add_hop(&keys);
        self.last_keys = Some(keys);
        progress.fetch_add(1, Ordering::Relaxed);
        self.asm.push(MsgAssembler::default());
        for hop in &path[1..] {
            let (state, msg) = ntor::client_start(&mut rng, &hop.identity, &hop.onion_key, &ext);
            let target = ExtendTarget { addr: hop.address, identity: hop.identity.0, link_key: hop.link_key };
            let last = self.crypto.n_hops() - 1;
            self.send(last, 0, &RelayMsg::Extend { target, htype: HTYPE_NTOR, hdata: msg, ext: Extensions::none() }).await?;
            let reply = loop {
                let cell = self.rx.recv().await.ok_or(CircError::Closed)?;
                match self.receive(cell)? {
                    Some((h, _, RelayMsg::Extended { hdata, .. })) if h == last => break hdata,
                    None => continue,
                    Some(_) => return Err(CircError::Protocol("unexpected message while extending".into())),
                }
            };
            let (keys, _ext) = state.finish(&reply).map_err(|e| CircError::Protocol(e.to_string()))?;
            self.crypto.add_hop(&keys);
            self.last_keys = Some(keys);
            progress.fetch_add(1, Ordering::Relaxed);
            self.asm.push(MsgAssembler::default());
        }
        Ok(())
    }

    async fn read_created(&mut self) -> Result<Vec<u8>, CircError> {
        let cell = self.rx.recv().await.ok_or(CircError::Closed)?;
        match cell.cmd {
            CellCmd::Created => {}
            CellCmd::Destroy => return Err(CircError::Destroyed(DestroyReason::from_u8(cell.payload[0]))),
            _ => return Err(CircError::Protocol("expected CREATED".into())),
        }
        let (total, first) = cell::parse_created(&cell.payload).map_err(|e| CircError::Protocol(e.to_string()))?;
        let started = Instant::now();
        let (mut r, mut p) = Reassembly::start(total, MAX_HANDSHAKE_LEN, first, 0).map_err(|e| CircError::Protocol(e.to_string()))?;
        loop {
            match p {
                Progress::Complete(m) => return Ok(m),
                Progress::NeedMore => {
                    let c = self.rx.recv().await.ok_or(CircError::Closed)?;
                    if c.cmd != CellCmd::Continue {
                        return Err(CircError::Protocol("expected CONTINUE".into()));
                    }
                    p = r.push(&c.payload, started.elapsed().as_millis() as u64).map_err(|e| CircError::Protocol(e.to_string()))?;
                }
            }
        }
    }

    /// Encrypts and sends a message to `hop`.
    async fn send(&mut self, hop: usize, stream_id: u16, msg: &RelayMsg) -> Result<(), CircError> {
        let is_extend = matches!(msg, RelayMsg::Extend { .. });
        for pt in relay_msg::encode_plaintexts(stream_id, msg) {
            let mut body = [0u8; PAYLOAD_LEN];
            body[..RELAY_PLAINTEXT_LEN].copy_from_slice(&pt);
            self.crypto.encrypt_outbound(hop, &mut body).map_err(|e| CircError::Protocol(e.to_string()))?;
            let cmd = if self.early.mark(hop, is_extend) { CellCmd::RelayEarly } else { CellCmd::Relay };
            self.chan.send(Cell { circ_id: self.id, cmd, payload: body }).await.map_err(|_| CircError::Closed)?;
        }
        Ok(())
    }

    /// Decrypts one cell from the link: `Some((hop, stream, message))` when a message is
    /// complete. Any failure is fatal for the circuit.
    fn receive(&mut self, cell: Cell) -> Result<Option<(usize, u16, RelayMsg)>, CircError> {
        match cell.cmd {
            CellCmd::Relay => {}
            // Relays pass a fixed reason; the real one came end to end in CLOSING, if at all.
            CellCmd::Destroy => return Err(CircError::Destroyed(self.closing.unwrap_or(DestroyReason::from_u8(cell.payload[0])))),
            // Relays never send it toward the client: it could only be a signal (THREATS A16).
            CellCmd::RelayEarly => return Err(CircError::Protocol("RELAY_EARLY toward the client".into())),
            _ => return Err(CircError::Protocol("unexpected cell command".into())),
        }
        let mut cell = cell;
        let body = &mut cell.payload;
        let hop = self.crypto.decrypt_inbound(body).map_err(|_| CircError::Protocol("relay cell failed authentication".into()))?;
        let pt: &[u8; RELAY_PLAINTEXT_LEN] = body[..RELAY_PLAINTEXT_LEN].try_into().expect("493 bytes");
        let Some((h, b)) = self.asm[hop].push(pt).map_err(|e| CircError::Protocol(e.to_string()))? else { return Ok(None) };
        // A serving end parses what the far end of the join sends as a relay would.
        let dir = if self.serves_hop(hop) { Direction::Outbound } else { Direction::Inbound };
        let msg = RelayMsg::decode_cell(&h, &b, dir).map_err(|e| CircError::Protocol(e.to_string()))?;
        self.check_sender(hop, &msg)?;
        if let RelayMsg::Closing { reason } = msg {
            self.closing = Some(reason);
            return Ok(None);
        }
        Ok(Some((hop, h.stream_id, msg)))
    }

    /// Control messages only from the hop that may send them (THREATS A17): no hop negotiated
    /// padding, so DROP from any hop closes the circuit (it could only be a signal, e.g. from a
    /// hostile exit to a colluding guard); onion-service messages come from the last relay hop
    /// only (a middle hop must not forge an INTRODUCE_ACK or RENDEZVOUS_ESTABLISHED).
    fn check_sender(&self, hop: usize, msg: &RelayMsg) -> Result<(), CircError> {
        let last_relay = self.crypto.n_hops() - 1 - usize::from(self.virtual_hop);
        match msg {
            RelayMsg::Drop => Err(CircError::Protocol("DROP from a hop that negotiated no padding".into())),
            RelayMsg::Closing { .. } if hop > last_relay => Err(CircError::Protocol("CLOSING from beyond the last relay".into())),
            RelayMsg::IntroEstablished { .. } | RelayMsg::Introduce2(_) | RelayMsg::IntroduceAck { .. } | RelayMsg::RendezvousEstablished { .. } | RelayMsg::Rendezvous2 { .. }
                if hop != last_relay =>
            {
                Err(CircError::Protocol("onion-service message from a hop other than the last relay".into()))
            }
            _ => Ok(()),
        }
    }

    async fn send_all(&mut self, msgs: Vec<(u16, RelayMsg)>) -> Result<(), CircError> {
        let last = self.crypto.n_hops() - 1;
        for (id, m) in msgs {
            self.send(last, id, &m).await?;
        }
        Ok(())
    }

    /// Whether `hop` is the virtual hop and this end serves its streams.
    fn serves_hop(&self, hop: usize) -> bool {
        self.serving.is_some() && self.virtual_hop && hop + 1 == self.crypto.n_hops()
    }

    /// Appends the virtual hop. Its streams use the default windows (the two ends of a join
    /// negotiate none, and may hold different consensuses): the circuit's still empty stream
    /// multiplexer is replaced by one with [`FlowParams::default`].
    fn add_virtual_hop(&mut self, keys: &HopKeys, mux: &mut StreamMux) {
        self.crypto.add_hop(keys);
        self.asm.push(MsgAssembler::default());
        self.virtual_hop = true;
        if mux.is_empty() {
            self.flow = FlowParams::default();
            *mux = StreamMux::new(self.flow);
            mux.set_mem(self.rx.held_mem());
        }
    }

    async fn run(mut self, mut begins: mpsc::Receiver<CircRequest>) {
        let mut mux = StreamMux::new(self.flow);
        mux.set_mem(self.rx.held_mem());
        // Streams from the virtual hop waiting for the service's answer, and the answers.
        let mut incoming = Incoming::new(MAX_INCOMING_PENDING);
        let mut pending: PendingStreams = Default::default();
        let mut deadlines = tokio::time::interval(crate::recovery::CHECK_EVERY);
        deadlines.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resolves: std::collections::HashMap<u16, ResolveRequest> = Default::default();
        let mut open = true;
        let result: Result<(), CircError> = loop {
            if !open && mux.is_empty() && pending.is_empty() && resolves.is_empty() {
                break Ok(());
            }
            let step = tokio::select! {
                c = self.rx.recv() => match c {
                    None => Err(CircError::Closed),
                    Some(c) => match self.receive(c) {
                        Err(e) => Err(e),
                        Ok(None) => Ok(()),
                        Ok(Some((hop, 0, msg))) if self.is_control(hop, &msg) => {
                            self.control_tx.try_send((hop, msg)).map_err(|_| CircError::Protocol("circuit-level messages not read".into()))
                        }
                        Ok(Some((hop, sid, RelayMsg::Resolved { result, .. }))) => {
                            if hop != self.crypto.n_hops() - 1 {
                                Err(CircError::Protocol("RESOLVED from a middle hop".into()))
                            } else if let Some(req) = resolves.remove(&sid) {
                                let _ = req.done.send(result);
                                Ok(())
                            } else {
                                Err(CircError::Protocol("RESOLVED for no pending RESOLVE".into()))
                            }
                        }
                        Ok(Some((hop, sid, msg))) if self.serves_hop(hop) => self.on_served_msg(sid, msg, &mut mux, &mut incoming).await,
                        Ok(Some((hop, sid, msg))) => { let last = self.crypto.n_hops() - 1; self.on_msg(hop == last, sid, msg, &mut mux, &mut pending).await }
                    },
                },
                req = begins.recv(), if open => match req {
                    // Every handle is gone: close once the last stream ends.
                    None => { open = false; Ok(()) }
                    Some(CircRequest::Begin(req)) => {
                        let msg = RelayMsg::Begin { host: req.host.clone(), port: req.port, ext: Extensions::none() };
                        self.begin(msg, Pending::App(req), &mut mux, &mut pending).await
                    }
                    Some(CircRequest::BeginDir(done)) => self.begin(RelayMsg::BeginDir { ext: Extensions::none() }, Pending::Dir(done), &mut mux, &mut pending).await,
                    Some(CircRequest::Resolve(req)) => self.resolve(req, &mut mux, &mut resolves).await,
                    Some(CircRequest::Control(msg, done)) => {
                        let last = self.crypto.n_hops() - 1;
                        let r = self.send(last, 0, &msg).await;
                        let _ = done.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                        r
                    }
                    Some(CircRequest::AddVirtualHop(keys, done)) => {
                        self.add_virtual_hop(&keys, &mut mux);
                        let _ = done.send(());
                        Ok(())
                    }
                    Some(CircRequest::ServiceJoin { rendezvous1, keys, streams, max_streams, done }) => {
                        let last = self.crypto.n_hops() - 1;
                        let r = self.send(last, 0, &rendezvous1).await;
                        if r.is_ok() {
                            self.add_virtual_hop(&keys, &mut mux);
                            mux.set_max_streams(max_streams);
                            self.serving = Some(streams);
                        }
                        let _ = done.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                        r
                    }
                },
                (sid, answer) = incoming.next_answer() => self.on_answer(sid, answer, &mut mux, &mut incoming).await,
                _ = deadlines.tick(), if !mux.is_empty() => self.check_deadlines(&mut mux, &mut pending).await,
                ev = mux.next_event() => {
                    let out = mux.handle_event(ev);
                    self.send_all(out).await
                }
            };
            if let Err(e) = step {
                break Err(e);
            }
        };
        if let Err(e) = result {
            match &e {
                // Across a rendezvous join the far end (a client or a service) can be to blame.
                CircError::Protocol(m) if self.virtual_hop => tracing::warn!("closing rendezvous circuit: a relay or the other end broke the protocol ({m})"),
                CircError::Protocol(m) => tracing::warn!("closing circuit: relay broke the protocol ({m})"),
                e => tracing::debug!("circuit closed: {e}"),
            }
            // A queue the memory budget reclaimed is our own resource limit, not a protocol error.
            let reason = if self.rx.reclaimed() { DestroyReason::ResourceLimit } else { DestroyReason::Protocol };
            self.chan.destroy(self.id, reason);
        } else {
            self.chan.destroy(self.id, DestroyReason::Finished);
        }
        for (_, (_, p)) in pending {
            p.fail(EndReason::Destroy);
        }
        for (_, req) in resolves {
            let _ = req.done.send(Err(EndReason::Destroy));
        }
    }

    /// A message from the virtual hop of a circuit this end serves streams on: this end acts as
    /// the exit (BEGIN, DATA, SENDME, END; RESOLVE and BEGIN_DIR are refused).
    async fn on_served_msg(
        &mut self,
        sid: u16,
        msg: RelayMsg,
        mux: &mut StreamMux,
        incoming: &mut Incoming,
    ) -> Result<(), CircError> {
        let last = self.crypto.n_hops() - 1;
        match msg {
            RelayMsg::Begin { host, port, .. } => {
                if sid == 0 {
                    return Err(CircError::Protocol("BEGIN on stream 0".into()));
                }
                match mux.open(sid) {
                    Ok(()) => {}
                    Err(StreamError::TooManyStreams) => {
                        LimitCounters::hit(&LIMITS.streams_per_circuit);
                        return self.send(last, sid, &RelayMsg::End(EndReason::ResourceLimit)).await;
                    }
                    Err(e) => return Err(CircError::Protocol(e.to_string())),
                }
                let serving = self.serving.clone();
                let offered = match &serving {
                    Some(s) if incoming.has_room() => s.try_reserve().ok(),
                    _ => None,
                };
                let Some(permit) = offered else {
                    let out = mux.close(sid, EndReason::ResourceLimit);
                    return self.send_all(out).await;
                };
                permit.send(incoming.offer(sid, port, host));
                Ok(())
            }
            RelayMsg::Resolve { .. } => self.send(last, sid, &RelayMsg::Resolved { result: Err(EndReason::ExitPolicy), ext: Extensions::none() }).await,
            RelayMsg::BeginDir { .. } => self.send(last, sid, &RelayMsg::End(EndReason::ExitPolicy)).await,
            m @ (RelayMsg::Data(_) | RelayMsg::DataToken { .. } | RelayMsg::Sendme { .. } | RelayMsg::Xoff | RelayMsg::Xon | RelayMsg::End(_)) => {
                if matches!(m, RelayMsg::End(_)) {
                    incoming.forget(sid);
                }
                let out = mux.handle_msg(sid, m).map_err(|e| CircError::Protocol(e.to_string()))?;
                self.send_all(out).await
            }
            _ => Err(CircError::Protocol("unexpected message from the far end of a rendezvous".into())),
        }
    }

    /// The service's answer to a stream from the virtual hop: CONNECTED (no address) and the
    /// stream handed over, or END. Dropped if the client ended the stream meanwhile.
    async fn on_answer(&mut self, sid: u16, answer: Answer, mux: &mut StreamMux, incoming: &mut Incoming) -> Result<(), CircError> {
        match incoming.answered(sid, answer, mux) {
            Reply::Connected(msg, handover) => {
                let last = self.crypto.n_hops() - 1;
                self.send(last, sid, &msg).await?;
                handover.give();
                Ok(())
            }
            Reply::End(_, out) => self.send_all(out).await,
            Reply::Nothing => Ok(()),
        }
    }

    /// Whether a stream-0 message from `hop` goes to the control queue.
    fn is_control(&self, hop: usize, msg: &RelayMsg) -> bool {
        let last = self.crypto.n_hops() - 1;
        match msg {
            RelayMsg::IntroEstablished { .. } | RelayMsg::Introduce2(_) | RelayMsg::IntroduceAck { .. } | RelayMsg::RendezvousEstablished { .. } | RelayMsg::Rendezvous2 { .. } => true,
            // Circuit-level data across a rendezvous join (from the far end only).
            RelayMsg::Data(_) => self.virtual_hop && hop == last,
            _ => false,
        }
    }

    /// Sends RESOLVE on a stream id no stream or RESOLVE uses; the id is free again once the
    /// exit's RESOLVED arrives.
    async fn resolve(&mut self, req: ResolveRequest, mux: &mut StreamMux, resolves: &mut std::collections::HashMap<u16, ResolveRequest>) -> Result<(), CircError> {
        let id = (0..64).find_map(|_| mux.alloc_id().filter(|id| !resolves.contains_key(id)));
        let Some(id) = id.filter(|_| resolves.len() < MAX_RESOLVES) else {
            let _ = req.done.send(Err(EndReason::ResourceLimit));
            return Ok(());
        };
        let msg = RelayMsg::Resolve { host: req.host.clone(), ext: Extensions::none() };
        resolves.insert(id, req);
        let last = self.crypto.n_hops() - 1;
        self.send(last, id, &msg).await
    }

    /// Gives up on streams past their deadlines ([`crate::recovery`]): BEGINs without an answer
    /// (the request is retried elsewhere with `Timeout`) and stalled streams; either retires
    /// the circuit. The exit gets END for each.
    async fn check_deadlines(&mut self, mux: &mut StreamMux, pending: &mut PendingStreams) -> Result<(), CircError> {
        use crate::recovery::{GaveUp, BEGIN_TIMEOUT, STALL_TIMEOUT};
        let now = Instant::now();
        let late: Vec<u16> = pending.iter().filter(|(_, (sent, _))| now.duration_since(*sent) >= BEGIN_TIMEOUT).map(|(id, _)| *id).collect();
        let stalled: Vec<u16> = mux.stalled(now, STALL_TIMEOUT).into_iter().filter(|id| !pending.contains_key(id)).collect();
        let gave_up = GaveUp { begins: late.len(), stalled: stalled.len() };
        if !gave_up.any() {
            return Ok(());
        }
        // Counted, logged and the circuit retired before any application hears of it.
        let newly = !self.retired.swap(true, Ordering::Relaxed);
        crate::recovery::record(&gave_up, newly, &mut self.logged);
        let mut out = Vec::new();
        for id in late {
            let (_, req) = pending.remove(&id).expect("listed");
            req.fail(EndReason::Timeout);
            out.extend(mux.close(id, EndReason::Timeout));
        }
        for id in stalled {
            out.extend(mux.close(id, EndReason::Timeout));
        }
        self.send_all(out).await
    }

    /// Opens a stream with `msg` (BEGIN or BEGIN_DIR); `req` waits for CONNECTED or END.
    async fn begin(&mut self, msg: RelayMsg, req: Pending, mux: &mut StreamMux, pending: &mut PendingStreams) -> Result<(), CircError> {
        let Some(id) = mux.alloc_id() else {
            req.fail(EndReason::ResourceLimit);
            return Ok(());
        };
        mux.open(id).map_err(|e| CircError::Protocol(e.to_string()))?;
        pending.insert(id, (Instant::now(), req));
        let last = self.crypto.n_hops() - 1;
        self.send(last, id, &msg).await
    }

    async fn on_msg(&mut self, from_last: bool, sid: u16, msg: RelayMsg, mux: &mut StreamMux, pending: &mut PendingStreams) -> Result<(), CircError> {
        if !from_last {
            return Err(CircError::Protocol("stream message from a middle hop".into()));
        }
        match msg {
            // Too late: the stream was given up and END sent (`check_deadlines`).
            RelayMsg::Connected { .. } if !pending.contains_key(&sid) && mux.was_closed(sid) => Ok(()),
            RelayMsg::Connected { addr, .. } => {
                match pending.remove(&sid).ok_or_else(|| CircError::Protocol("CONNECTED for no pending stream".into()))?.1 {
                    Pending::App(req) => {
                        allium_net::metrics::METRICS.streams_opened.inc();
                        let stream = mux.take_stream(sid).expect("opened with its BEGIN");
                        // A requester gone by now drops the stream, which ends it.
                        let _ = req.done.send(Ok(Connected { stream, addr }));
                    }
                    Pending::Dir(done) => {
                        let (ours, theirs) = tokio::io::duplex(DIR_PIPE_BUFFER);
                        mux.attach(sid, ours);
                        let _ = done.send(Ok(theirs));
                    }
                }
                Ok(())
            }
            RelayMsg::End(reason) if pending.contains_key(&sid) => {
                let (_, req) = pending.remove(&sid).expect("pending");
                let _ = mux.handle_msg(sid, RelayMsg::End(reason));
                allium_net::metrics::METRICS.streams_failed.inc(allium_net::metrics::stream_failure(reason));
                req.fail(reason);
                Ok(())
            }
            m @ (RelayMsg::Data(_) | RelayMsg::DataToken { .. } | RelayMsg::Sendme { .. } | RelayMsg::Xoff | RelayMsg::Xon | RelayMsg::End(_)) => {
                if pending.contains_key(&sid) {
                    return Err(CircError::Protocol("data before CONNECTED".into()));
                }
                let out = mux.handle_msg(sid, m).map_err(|e| CircError::Protocol(e.to_string()))?;
                self.send_all(out).await
            }
            _ => Err(CircError::Protocol("unexpected relay message".into())),
        }
    }
}
