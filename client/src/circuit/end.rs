//! A client circuit's end, as the reactor drives it: the machine's events carried out, the
//! handles' requests, the streams, the deadlines and the teardown.

use super::*;
use allium_net::channel::Unsent;

/// The circuit's owner task: drives its [`ClientCircuit`] state machine with the link's cells,
/// the handles' requests, the stream table's events and the clock, and carries out what it
/// decides. Decisions about cells (which hop may send what, crypto, reassembly) are the
/// machine's; streams' bytes are the [`StreamMux`]'s; this task only moves values between them.
pub(super) struct Circuit {
    pub(super) chan: Channel,
    /// The circuit's share of the memory budget (its link queue's), charged for stream data.
    pub(super) mem: Arc<allium_net::limits::memquota::HeldMem>,
    pub(super) machine: ClientCircuit,
    /// Sent to every hop; the streams use it.
    pub(super) flow: FlowParams,
    /// Where circuit-level onion-service messages go.
    pub(super) control_tx: mpsc::Sender<(usize, RelayMsg)>,
    /// Where streams from the virtual hop go once this end serves them (an onion service).
    pub(super) serving: Option<mpsc::Sender<IncomingStream>>,
    /// Shared with every handle: set when the circuit takes no new streams.
    pub(super) retired: Arc<AtomicBool>,
    /// What [`crate::recovery`] has logged for this circuit.
    pub(super) logged: crate::recovery::Logged,
    /// The handles' requests, while any handle is left.
    pub(super) requests: Option<mpsc::Receiver<CircRequest>>,
    /// Requests waiting for CONNECTED or RESOLVED.
    pub(super) pending: std::collections::HashMap<u16, Pending>,
    pub(super) resolves: std::collections::HashMap<u16, ResolveRequest>,
    /// When streams are next checked for deadlines ([`crate::recovery`]).
    pub(super) next_check: Instant,
    /// Cells of the message being sent (kept, so that sending allocates nothing).
    pub(super) outbuf: Vec<Cell>,
}

impl Circuit {
    pub(super) async fn build_hops(&mut self, rx: &mut CellReceiver, path: &[&ConsensusRelay], progress: &AtomicUsize) -> Result<(), CircError> {
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
            // Queued at once when the link has room (the cell is not moved into a future).
            match self.chan.try_send(c) {
                Ok(()) => tokio::task::coop::consume_budget().await,
                Err(Unsent::Full(c)) => self.chan.send(c).await.map_err(|_| CircError::Closed)?,
                Err(Unsent::Closed) => return Err(CircError::Closed),
            }
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
    pub(super) async fn run(mut self, mut rx: CellReceiver) {
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
