//! The handles to a running client circuit ([`CircHandle`]) and what they ask its task.

use super::*;

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
pub(super) enum CircRequest {
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

/// Circuit-level messages from the hops: `(hop index, message)`.
pub(super) type ControlRx = Arc<tokio::sync::Mutex<mpsc::Receiver<(usize, RelayMsg)>>>;

/// A stream waiting for CONNECTED.
pub(super) enum Pending {
    /// An application's stream to an exit destination.
    App(BeginRequest),
    /// A directory stream this node reads itself.
    Dir(oneshot::Sender<DirStreamResult>),
}

impl Pending {
    pub(super) fn fail(self, reason: EndReason) {
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
    pub(super) tx: mpsc::Sender<CircRequest>,
    pub exit: Arc<ConsensusRelay>,
    pub built_at: Instant,
    /// The keys shared with the last hop of the built path (ESTABLISH_INTRO signs a binding of
    /// them, docs/PROTOCOL.md "Introduction points").
    pub(super) last_keys: Arc<HopKeys>,
    pub(super) control_rx: ControlRx,
    /// Relays on the built path, first hop first.
    pub(super) path: Arc<[RelayId]>,
    /// Set by the circuit task when it gave up on a stream ([`crate::recovery`]): the circuit
    /// takes no new streams.
    pub(super) retired: Arc<AtomicBool>,
}

impl CircHandle {
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the circuit has closed.
    pub async fn closed(&self) {
        self.tx.closed().await
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
