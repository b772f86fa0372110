//! A client's circuit as a state machine (docs/PROTOCOL.md, "Circuits" and "Streams").
//!
//! [`ClientCircuit`] owns the hops' keys and crypto layers, the reassembly of each hop's
//! messages, which cells go as RELAY_EARLY, the handshake of the hop being added, the streams
//! waiting for CONNECTED or RESOLVED, and the rendezvous virtual hop. It decides which hop may
//! send what: any cell that no hop can authenticate, and any message from a hop that may not
//! send it, is a [`Fault`] that ends the circuit; nothing from such a cell is returned.
//!
//! Stream data itself (windows, buffers, the application's side) is the owner's stream
//! multiplexer's: this machine hands it [`Event::Stream`] and [`Event::Served`] messages.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::{CryptoRng, RngCore};

use super::fault::Fault;
use super::handshake::{HandshakeRead, HandshakeReader};
use crate::cell::{self, Cell, CellCmd, DestroyReason, PAYLOAD_LEN};
use crate::crypto::cell_crypto::ClientCrypto;
use crate::crypto::kdf::HopKeys;
use crate::crypto::ntor::{self, NtorClient, HTYPE_NTOR};
use crate::early::EarlyMarker;
use crate::ext::Extensions;
use crate::ids::RelayId;
use crate::relay_msg::{self, Direction, EndReason, ExtendTarget, MsgAssembler, RelayMsg, RELAY_PLAINTEXT_LEN};

/// Most streams remembered after this end gave up waiting for their CONNECTED (a late
/// CONNECTED or END for one of them is ignored, until its END; beyond this many the oldest is
/// forgotten and its late CONNECTED is a protocol violation). Late DATA still goes to the
/// owner's stream table, which counts it against the circuit's window.
const MAX_ABANDONED: usize = 256;

/// A relay to add as the next hop: where it is and the onion key to handshake with.
#[derive(Debug, Clone)]
pub struct HopTarget {
    pub target: ExtendTarget,
    pub onion_key: [u8; 32],
}

impl HopTarget {
    fn identity(&self) -> RelayId {
        RelayId(self.target.identity)
    }
}

/// What a cell from the circuit's link gave the owner.
#[derive(Debug)]
pub enum Event {
    /// Nothing to do (a fragment of a longer message; a CLOSING noted for the DESTROY).
    Nothing,
    /// The hop being added answered: the circuit now has `hops` hops.
    Extended { hops: usize },
    /// A circuit-level message: onion-service messages from the last relay, and DATA on
    /// stream 0 from the far end of a rendezvous join. `hop` sent it.
    Control { hop: usize, msg: RelayMsg },
    /// The exit's answer to a RESOLVE; the stream id is free again.
    Resolved { stream: u16, result: Result<Vec<IpAddr>, EndReason> },
    /// The exit connected a stream this end began.
    Connected { stream: u16, addr: Option<IpAddr> },
    /// The exit refused a stream this end began (END before CONNECTED).
    Refused { stream: u16, reason: EndReason },
    /// DATA, SENDME, XON, XOFF or END for an open stream, from the last hop.
    Stream { stream: u16, msg: RelayMsg },
    /// A message from the virtual hop this end serves streams for (an onion service): BEGIN,
    /// DATA, SENDME, XON, XOFF or END. This end acts as the exit.
    Served { stream: u16, msg: RelayMsg },
    /// Cells this machine answered with itself (a served RESOLVE or BEGIN_DIR is refused).
    Send(Vec<Cell>),
}

/// The hop being added.
#[derive(Debug)]
struct Adding {
    ntor: NtorClient,
    /// Only for the first hop: the CREATED reply waiting for CONTINUE cells.
    created: Option<HandshakeReader>,
    /// Whether this is the first hop (answered by CREATED, not EXTENDED).
    first: bool,
}

/// A client's circuit (see the module docs).
pub struct ClientCircuit {
    id: u32,
    crypto: ClientCrypto,
    asm: Vec<MsgAssembler>,
    early: EarlyMarker,
    /// The handshake extension sent to every hop (the circuit's flow-control parameters).
    ext: Vec<u8>,
    adding: Option<Adding>,
    last_keys: Option<HopKeys>,
    /// Why a relay said it is destroying the circuit (CLOSING), for when its DESTROY arrives.
    closing: Option<DestroyReason>,
    /// Whether a virtual hop was appended (a rendezvous circuit).
    virtual_hop: bool,
    /// Whether this end serves the virtual hop's streams (an onion service).
    serving: bool,
    /// Streams waiting for CONNECTED, with when their BEGIN went out.
    pending: HashMap<u16, Instant>,
    /// Streams given up before their CONNECTED came (oldest first).
    abandoned: VecDeque<u16>,
    /// Stream ids RESOLVE is waiting on.
    resolves: HashSet<u16>,
}

impl std::fmt::Debug for ClientCircuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCircuit").field("id", &self.id).field("hops", &self.crypto.n_hops()).finish_non_exhaustive()
    }
}

impl ClientCircuit {
    /// A circuit with no hop yet on circuit id `id`; `ext` is the handshake extension every hop
    /// receives.
    pub fn new(id: u32, ext: Vec<u8>) -> Self {
        ClientCircuit {
            id,
            crypto: ClientCrypto::new(),
            asm: Vec::new(),
            early: EarlyMarker::default(),
            ext,
            adding: None,
            last_keys: None,
            closing: None,
            virtual_hop: false,
            serving: false,
            pending: HashMap::new(),
            abandoned: VecDeque::new(),
            resolves: HashSet::new(),
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Hops with keys (relays, and the virtual hop once added).
    pub fn n_hops(&self) -> usize {
        self.crypto.n_hops()
    }

    /// The index of the last hop (the exit, or the virtual hop).
    fn last(&self) -> usize {
        self.n_hops() - 1
    }

    /// The keys shared with the last hop added.
    pub fn last_keys(&self) -> Option<&HopKeys> {
        self.last_keys.as_ref()
    }

    /// Starts adding `hop` after the last: the CREATE cells for the first hop, the EXTEND to
    /// the last hop otherwise. The answer comes as [`Event::Extended`].
    pub fn extend<R: RngCore + CryptoRng>(&mut self, rng: &mut R, hop: &HopTarget) -> Result<Vec<Cell>, Fault> {
        assert!(self.adding.is_none() && !self.virtual_hop, "one hop at a time, before any virtual hop");
        let (ntor, msg) = ntor::client_start(rng, &hop.identity(), &hop.onion_key, &self.ext);
        let first = self.n_hops() == 0;
        let cells = if first {
            cell::create_cells(self.id, HTYPE_NTOR, &msg)
        } else {
            let extend = RelayMsg::Extend { target: hop.target.clone(), htype: HTYPE_NTOR, hdata: msg, ext: Extensions::none() };
            self.encode(self.last(), 0, &extend)?
        };
        self.adding = Some(Adding { ntor, created: None, first });
        Ok(cells)
    }

    /// Encrypts `msg` on stream `stream_id` for `hop`: the cells to send, RELAY_EARLY where
    /// docs/PROTOCOL.md ("RELAY_EARLY") says so.
    pub fn encode(&mut self, hop: usize, stream_id: u16, msg: &RelayMsg) -> Result<Vec<Cell>, Fault> {
        let mut out = Vec::new();
        self.encode_into(hop, stream_id, msg, &mut out)?;
        Ok(out)
    }

    /// [`ClientCircuit::encode`] appending to `out` (a buffer the owner reuses, so that the
    /// per-cell path allocates nothing more).
    pub fn encode_into(&mut self, hop: usize, stream_id: u16, msg: &RelayMsg, out: &mut Vec<Cell>) -> Result<(), Fault> {
        let is_extend = matches!(msg, RelayMsg::Extend { .. });
        for pt in relay_msg::encode_plaintexts(stream_id, msg) {
            let mut body = [0u8; PAYLOAD_LEN];
            body[..RELAY_PLAINTEXT_LEN].copy_from_slice(&pt);
            self.crypto.encrypt_outbound(hop, &mut body)?;
            let cmd = if self.early.mark(hop, is_extend) { CellCmd::RelayEarly } else { CellCmd::Relay };
            out.push(Cell { circ_id: self.id, cmd, payload: body });
        }
        Ok(())
    }

    /// [`ClientCircuit::encode`] for the last hop.
    pub fn encode_last(&mut self, stream_id: u16, msg: &RelayMsg) -> Result<Vec<Cell>, Fault> {
        self.encode(self.last(), stream_id, msg)
    }

    /// [`ClientCircuit::encode_into`] for the last hop.
    pub fn encode_last_into(&mut self, stream_id: u16, msg: &RelayMsg, out: &mut Vec<Cell>) -> Result<(), Fault> {
        self.encode_into(self.last(), stream_id, msg, out)
    }

    /// Sends BEGIN or BEGIN_DIR on stream `id` (allocated by the owner's stream table) to the
    /// last hop; the answer is [`Event::Connected`] or [`Event::Refused`].
    pub fn begin(&mut self, id: u16, msg: &RelayMsg, now: Instant) -> Result<Vec<Cell>, Fault> {
        debug_assert!(matches!(msg, RelayMsg::Begin { .. } | RelayMsg::BeginDir { .. }));
        let cells = self.encode_last(id, msg)?;
        self.pending.insert(id, now);
        Ok(cells)
    }

    /// Sends RESOLVE for `host` on stream `id`; the answer is [`Event::Resolved`].
    pub fn resolve(&mut self, id: u16, host: &str) -> Result<Vec<Cell>, Fault> {
        let cells = self.encode_last(id, &RelayMsg::Resolve { host: host.to_string(), ext: Extensions::none() })?;
        self.resolves.insert(id);
        Ok(cells)
    }

    /// Whether stream id `id` waits for a RESOLVED (the owner allocates no stream on it).
    pub fn resolving(&self, id: u16) -> bool {
        self.resolves.contains(&id)
    }

    /// Whether stream `id` waits for CONNECTED.
    pub fn is_pending(&self, id: u16) -> bool {
        self.pending.contains_key(&id)
    }

    /// The streams whose BEGIN has waited `limit` or longer by `now`, given up: the owner
    /// ends them (END TIMEOUT) and retries elsewhere. A late answer to one is ignored.
    pub fn late_begins(&mut self, now: Instant, limit: Duration) -> Vec<u16> {
        let mut late: Vec<u16> = self.pending.iter().filter(|(_, sent)| now.saturating_duration_since(**sent) >= limit).map(|(id, _)| *id).collect();
        late.sort_unstable();
        for id in &late {
            self.pending.remove(id);
            if self.abandoned.len() == MAX_ABANDONED {
                self.abandoned.pop_front();
            }
            self.abandoned.push_back(*id);
        }
        late
    }

    /// When the owner must call back: the earliest BEGIN reaching `begin_limit`, or the
    /// time cap of a CREATED still being reassembled.
    pub fn next_deadline(&self, begin_limit: Duration) -> Option<Instant> {
        let begins = self.pending.values().map(|sent| *sent + begin_limit);
        let created = self.adding.as_ref().and_then(|a| a.created.as_ref()).map(|r| r.deadline());
        begins.chain(created).min()
    }

    /// Appends a hop whose keys were agreed end to end (the rendezvous virtual hop); later
    /// messages to the last hop go to it.
    pub fn add_virtual_hop(&mut self, keys: &HopKeys) {
        assert!(self.adding.is_none() && !self.virtual_hop, "one virtual hop, after the relays");
        self.crypto.add_hop(keys);
        self.asm.push(MsgAssembler::default());
        self.last_keys = Some(keys.clone());
        self.virtual_hop = true;
    }

    /// From now on this end serves the virtual hop's streams ([`Event::Served`]).
    pub fn serve(&mut self) {
        assert!(self.virtual_hop, "a service serves the virtual hop's streams");
        self.serving = true;
    }

    /// Whether a virtual hop was added.
    pub fn has_virtual_hop(&self) -> bool {
        self.virtual_hop
    }

    /// A cell from the link for this circuit.
    pub fn handle_cell(&mut self, cell: Cell, now: Instant) -> Result<Event, Fault> {
        match cell.cmd {
            // Relays pass a fixed reason; the real one came end to end in CLOSING, if at all.
            CellCmd::Destroy => Err(Fault::Destroyed(self.closing.unwrap_or(DestroyReason::from_u8(cell.payload[0])))),
            CellCmd::Created | CellCmd::Continue if self.adding.as_ref().is_some_and(|a| a.first) => self.on_created(&cell, now),
            CellCmd::Relay if self.n_hops() > 0 => self.on_relay(cell),
            // Relays never send it toward the client: it could only be a signal (THREATS A16).
            CellCmd::RelayEarly => Err(Fault::protocol("RELAY_EARLY toward the client")),
            _ => Err(Fault::protocol(format!("unexpected {:?} cell", cell.cmd))),
        }
    }

    fn on_created(&mut self, cell: &Cell, now: Instant) -> Result<Event, Fault> {
        let adding = self.adding.as_mut().expect("checked");
        let read = match (cell.cmd, adding.created.take()) {
            (CellCmd::Created, None) => HandshakeReader::created(&cell.payload, now),
            (CellCmd::Continue, Some(r)) => r.push(cell, now),
            _ => return Err(Fault::protocol("CREATED out of order")),
        };
        match read.map_err(Fault::protocol)? {
            HandshakeRead::More(r) => {
                adding.created = Some(r);
                Ok(Event::Nothing)
            }
            HandshakeRead::Done(reply) => self.finish_hop(&reply),
        }
    }

    fn finish_hop(&mut self, reply: &[u8]) -> Result<Event, Fault> {
        let adding = self.adding.take().expect("a hop being added");
        let (keys, _ext) = adding.ntor.finish(reply).map_err(Fault::protocol)?;
        self.crypto.add_hop(&keys);
        self.asm.push(MsgAssembler::default());
        self.last_keys = Some(keys);
        Ok(Event::Extended { hops: self.n_hops() })
    }

    fn on_relay(&mut self, mut cell: Cell) -> Result<Event, Fault> {
        let hop = self.crypto.decrypt_inbound(&mut cell.payload)?;
        let pt: &[u8; RELAY_PLAINTEXT_LEN] = cell.payload[..RELAY_PLAINTEXT_LEN].try_into().expect("493 bytes");
        let Some((h, body)) = self.asm[hop].push(pt).map_err(Fault::protocol)? else { return Ok(Event::Nothing) };
        // A serving end parses what the far end of the join sends as a relay would.
        let dir = if self.serves_hop(hop) { Direction::Outbound } else { Direction::Inbound };
        let msg = RelayMsg::decode_cell(&h, &body, dir).map_err(Fault::protocol)?;
        self.check_sender(hop, &msg)?;
        self.route(hop, h.stream_id, msg)
    }

    /// Whether `hop` is the virtual hop and this end serves its streams.
    fn serves_hop(&self, hop: usize) -> bool {
        self.serving && hop == self.last()
    }

    /// The last hop that is a relay.
    fn last_relay(&self) -> usize {
        self.last() - usize::from(self.virtual_hop)
    }

    /// Control messages only from the hop that may send them (THREATS A17): no hop negotiated
    /// padding, so DROP from any hop closes the circuit (it could only be a signal, e.g. from a
    /// hostile exit to a colluding guard); onion-service messages come from the last relay hop
    /// only (a middle hop must not forge an INTRODUCE_ACK or RENDEZVOUS_ESTABLISHED).
    fn check_sender(&self, hop: usize, msg: &RelayMsg) -> Result<(), Fault> {
        let last_relay = self.last_relay();
        match msg {
            RelayMsg::Drop => Err(Fault::protocol("DROP from a hop that negotiated no padding")),
            RelayMsg::Closing { .. } if hop > last_relay => Err(Fault::protocol("CLOSING from beyond the last relay")),
            m if is_hs_msg(m) && hop != last_relay => Err(Fault::protocol("onion-service message from a hop other than the last relay")),
            _ => Ok(()),
        }
    }

    fn route(&mut self, hop: usize, sid: u16, msg: RelayMsg) -> Result<Event, Fault> {
        let last = self.last();
        match msg {
            RelayMsg::Closing { reason } => {
                self.closing = Some(reason);
                Ok(Event::Nothing)
            }
            RelayMsg::Extended { hdata, .. } if self.adding.as_ref().is_some_and(|a| !a.first) && hop == last && sid == 0 => self.finish_hop(&hdata),
            _ if self.adding.is_some() => Err(Fault::protocol("unexpected message while extending")),
            m if sid == 0 && is_hs_msg(&m) => Ok(Event::Control { hop, msg: m }),
            // Circuit-level data across a rendezvous join (from the far end only).
            m @ RelayMsg::Data(_) if sid == 0 && self.virtual_hop && hop == last => Ok(Event::Control { hop, msg: m }),
            m if self.serves_hop(hop) => self.route_served(sid, m),
            _ if hop != last => Err(Fault::protocol("stream message from a middle hop")),
            RelayMsg::Resolved { result, .. } => {
                if !self.resolves.remove(&sid) {
                    return Err(Fault::protocol("RESOLVED for no pending RESOLVE"));
                }
                Ok(Event::Resolved { stream: sid, result })
            }
            RelayMsg::Connected { addr, .. } => {
                if self.pending.remove(&sid).is_some() {
                    Ok(Event::Connected { stream: sid, addr })
                } else if self.abandoned.contains(&sid) {
                    Ok(Event::Nothing)
                } else {
                    Err(Fault::protocol("CONNECTED for no pending stream"))
                }
            }
            RelayMsg::End(reason) if self.pending.remove(&sid).is_some() => Ok(Event::Refused { stream: sid, reason }),
            RelayMsg::End(_) if self.forget_abandoned(sid) => Ok(Event::Nothing),
            // Stream 0 carries the circuit's own SENDMEs: the owner's stream table takes them.
            m if is_stream_msg(&m) => {
                if self.pending.contains_key(&sid) {
                    return Err(Fault::protocol("data before CONNECTED"));
                }
                Ok(Event::Stream { stream: sid, msg: m })
            }
            _ => Err(Fault::protocol("unexpected relay message")),
        }
    }

    /// A message from the virtual hop of a circuit this end serves: it acts as the exit (BEGIN
    /// and stream messages; RESOLVE and BEGIN_DIR are refused).
    fn route_served(&mut self, sid: u16, msg: RelayMsg) -> Result<Event, Fault> {
        match msg {
            RelayMsg::Begin { .. } if sid == 0 => Err(Fault::protocol("BEGIN on stream 0")),
            RelayMsg::Resolve { .. } => {
                let refusal = RelayMsg::Resolved { result: Err(EndReason::ExitPolicy), ext: Extensions::none() };
                Ok(Event::Send(self.encode_last(sid, &refusal)?))
            }
            RelayMsg::BeginDir { .. } => Ok(Event::Send(self.encode_last(sid, &RelayMsg::End(EndReason::ExitPolicy))?)),
            m @ RelayMsg::Begin { .. } => Ok(Event::Served { stream: sid, msg: m }),
            m if is_stream_msg(&m) => Ok(Event::Served { stream: sid, msg: m }),
            _ => Err(Fault::protocol("unexpected message from the far end of a rendezvous")),
        }
    }

    fn forget_abandoned(&mut self, sid: u16) -> bool {
        match self.abandoned.iter().position(|id| *id == sid) {
            Some(i) => {
                self.abandoned.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Onion-service messages a client or service receives (circuit-level, stream 0).
fn is_hs_msg(m: &RelayMsg) -> bool {
    matches!(m, RelayMsg::IntroEstablished { .. } | RelayMsg::Introduce2(_) | RelayMsg::IntroduceAck { .. } | RelayMsg::RendezvousEstablished { .. } | RelayMsg::Rendezvous2 { .. })
}

/// Messages that belong to an open stream's flow.
fn is_stream_msg(m: &RelayMsg) -> bool {
    matches!(m, RelayMsg::Data(_) | RelayMsg::DataToken { .. } | RelayMsg::Sendme { .. } | RelayMsg::Xoff | RelayMsg::Xon | RelayMsg::End(_))
}
