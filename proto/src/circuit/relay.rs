//! One relay's hop of a circuit as a state machine (docs/PROTOCOL.md, "Circuits").
//!
//! [`RelayHop`] owns the hop's crypto layer, the RELAY_EARLY gate for cells from the previous
//! hop, the reassembly of the client's messages to this hop, and the state of the next hop:
//! none, being created (its CREATED reassembled and answered to the client as EXTENDED), or
//! open (cells forwarded both ways). What a message to this hop *does* (streams at an exit,
//! onion-service points, a directory cache) is the owner's.

use std::time::Instant;

use super::fault::Fault;
use super::handshake::{HandshakeRead, HandshakeReader};
use crate::cell::{Cell, CellCmd, DestroyReason, MAX_HANDSHAKE_LEN, PAYLOAD_LEN};
use crate::crypto::cell_crypto::{Recognized, RelayCrypto};
use crate::crypto::kdf::HopKeys;
use crate::early::EarlyGate;
use crate::relay_msg::{self, Direction, ExtendTarget, MsgAssembler, RelayMsg, RELAY_PLAINTEXT_LEN};

/// What a cell from the previous hop (toward the client) gave.
#[derive(Debug)]
pub enum FromPrev {
    /// A fragment of a longer message.
    Nothing,
    /// Not for this hop: forward the cell (its body now without this hop's layer, its command
    /// unchanged) to the next hop.
    Forward,
    /// Not for this hop, and no next hop to forward it to. At a joined rendezvous point the
    /// cell's body belongs to the other circuit of the join; anywhere else it was altered on
    /// the way and the owner destroys the circuit ([`RelayHop::unrecognized_fault`]).
    Unrecognized,
    /// A message for this hop.
    Msg { stream: u16, msg: RelayMsg },
    /// A valid EXTEND (stream 0, in RELAY_EARLY cells, no next hop yet, a handshake that fits
    /// a CREATE): the owner checks the target against the consensus, opens a link, sends the
    /// CREATE cells for `hdata` and calls [`RelayHop::creating`].
    Extend { target: ExtendTarget, htype: u16, hdata: Vec<u8> },
}

/// What a cell from the next hop (toward the exit) gave.
#[derive(Debug)]
pub enum FromNext {
    /// Nothing to send (a fragment of CREATED).
    Nothing,
    /// Forward the cell (its body now with this hop's layer added) to the previous hop.
    Forward,
    /// Send this body to the previous hop in a RELAY cell: the EXTENDED that answers the
    /// client's EXTEND, once the next hop's CREATED is complete.
    Extended(Box<[u8; PAYLOAD_LEN]>),
}

/// The next hop's state.
#[derive(Debug)]
enum Next {
    None,
    /// CREATE sent; its CREATED not complete yet.
    Creating(Option<HandshakeReader>),
    Open,
}

/// One relay's hop of a circuit (see the module docs).
pub struct RelayHop {
    crypto: RelayCrypto,
    early: EarlyGate,
    asm: MsgAssembler,
    next: Next,
    /// Whether an EXTEND was accepted and its link is being opened.
    extending: bool,
}

impl std::fmt::Debug for RelayHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHop").field("next", &self.next).finish_non_exhaustive()
    }
}

impl RelayHop {
    /// The hop after a successful CREATE handshake with `keys`; `early` counts the RELAY_EARLY
    /// cells the previous hop may send ([`EarlyGate::from_client`] at the first hop).
    pub fn new(keys: &HopKeys, early: EarlyGate) -> Self {
        RelayHop { crypto: RelayCrypto::new(keys), early, asm: MsgAssembler::default(), next: Next::None, extending: false }
    }

    /// Whether the circuit goes on past this hop (extended or being extended).
    pub fn has_next(&self) -> bool {
        self.extending || !matches!(self.next, Next::None)
    }

    /// Whether the next hop is being created (its CREATED not yet answered as EXTENDED).
    pub fn next_is_creating(&self) -> bool {
        matches!(self.next, Next::Creating(_))
    }

    /// When the CREATED being reassembled is abandoned, if one is.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.next {
            Next::Creating(Some(r)) => Some(r.deadline()),
            _ => None,
        }
    }

    /// A relay cell (RELAY or RELAY_EARLY) from the previous hop. DESTROY is the owner's.
    pub fn from_prev(&mut self, cell: &mut Cell) -> Result<FromPrev, Fault> {
        let early = match cell.cmd {
            CellCmd::Relay => false,
            CellCmd::RelayEarly => true,
            CellCmd::Destroy => return Err(Fault::Destroyed(DestroyReason::from_u8(cell.payload[0]))),
            c => return Err(Fault::protocol(format!("unexpected {c:?} cell from the previous hop"))),
        };
        self.early.on_cell(early).map_err(Fault::protocol)?;
        match self.crypto.decrypt_outbound(&mut cell.payload)? {
            Recognized::NotForUs if matches!(self.next, Next::Open) => Ok(FromPrev::Forward),
            Recognized::NotForUs => Ok(FromPrev::Unrecognized),
            Recognized::ForUs => {
                let pt: &[u8; RELAY_PLAINTEXT_LEN] = cell.payload[..RELAY_PLAINTEXT_LEN].try_into().expect("493 bytes");
                let Some((hdr, body)) = self.asm.push(pt).map_err(Fault::protocol)? else { return Ok(FromPrev::Nothing) };
                let msg = RelayMsg::decode_cell(&hdr, &body, Direction::Outbound).map_err(Fault::protocol)?;
                self.for_us(hdr.stream_id, msg)
            }
        }
    }

    /// The checks every hop makes on a message for it, whatever the owner does with it.
    fn for_us(&mut self, stream: u16, msg: RelayMsg) -> Result<FromPrev, Fault> {
        let extended = self.has_next();
        match msg {
            RelayMsg::Extend { target, htype, hdata, .. } => {
                if stream != 0 || extended {
                    return Err(Fault::protocol("EXTEND on a stream, or on a circuit already extended"));
                }
                if !self.early.extend_allowed() {
                    return Err(Fault::protocol("EXTEND not in RELAY_EARLY cells"));
                }
                if hdata.len() > MAX_HANDSHAKE_LEN {
                    return Err(Fault::protocol("EXTEND handshake longer than a CREATE carries"));
                }
                self.extending = true;
                Ok(FromPrev::Extend { target, htype, hdata })
            }
            // Streams and onion-service messages end at the last hop only.
            RelayMsg::Begin { .. } | RelayMsg::BeginDir { .. } | RelayMsg::Resolve { .. } if stream == 0 || extended => {
                Err(Fault::protocol("a stream opened on stream 0 or at a hop that is not the last"))
            }
            RelayMsg::EstablishIntro { .. } | RelayMsg::Introduce1(_) | RelayMsg::EstablishRendezvous { .. } | RelayMsg::Rendezvous1 { .. } if stream != 0 || extended => {
                Err(Fault::protocol("an onion-service message on a stream or at a hop that is not the last"))
            }
            msg => Ok(FromPrev::Msg { stream, msg }),
        }
    }

    /// The fault of a cell nobody could authenticate at the end of the circuit: it was altered
    /// on the way, and is never forwarded or delivered.
    pub fn unrecognized_fault() -> Fault {
        Fault::protocol("a relay cell failed authentication at the last hop")
    }

    /// The owner sent the CREATE for the accepted EXTEND; the next hop's cells now come to
    /// [`RelayHop::from_next`]. (If the link could not be opened, the owner ends the circuit.)
    pub fn creating(&mut self) {
        self.extending = false;
        self.next = Next::Creating(None);
    }

    /// A cell from the next hop. A DESTROY is returned as [`Fault::Destroyed`].
    pub fn from_next(&mut self, cell: &mut Cell, now: Instant) -> Result<FromNext, Fault> {
        let read = match (cell.cmd, &mut self.next) {
            (CellCmd::Destroy, _) => return Err(Fault::Destroyed(DestroyReason::from_u8(cell.payload[0]))),
            (CellCmd::Created, Next::Creating(None)) => HandshakeReader::created(&cell.payload, now),
            (CellCmd::Continue, Next::Creating(r @ Some(_))) => r.take().expect("matched").push(cell, now),
            // Only ever a signal toward the client (THREATS A16).
            (CellCmd::RelayEarly, _) => return Err(Fault::protocol("RELAY_EARLY from the next hop")),
            (CellCmd::Relay, Next::Open) => {
                self.crypto.forward_inbound(&mut cell.payload)?;
                return Ok(FromNext::Forward);
            }
            (c, _) => return Err(Fault::protocol(format!("unexpected {c:?} cell from the next hop"))),
        };
        match read.map_err(Fault::protocol)? {
            HandshakeRead::More(r) => {
                self.next = Next::Creating(Some(r));
                Ok(FromNext::Nothing)
            }
            HandshakeRead::Done(reply) => {
                self.next = Next::Open;
                let mut cells = self.originate(0, &RelayMsg::Extended { hdata: reply, ext: Default::default() })?;
                Ok(FromNext::Extended(Box::new(cells.remove(0))))
            }
        }
    }

    /// Bodies of the cells (RELAY, toward the previous hop) that carry `msg`, a message this
    /// hop originates on stream `stream`.
    pub fn originate(&mut self, stream: u16, msg: &RelayMsg) -> Result<Vec<[u8; PAYLOAD_LEN]>, Fault> {
        let mut out = Vec::new();
        self.originate_into(stream, msg, &mut out)?;
        Ok(out)
    }

    /// [`RelayHop::originate`] appending to `out` (a buffer the owner reuses, so that the
    /// per-cell path allocates nothing more).
    pub fn originate_into(&mut self, stream: u16, msg: &RelayMsg, out: &mut Vec<[u8; PAYLOAD_LEN]>) -> Result<(), Fault> {
        for pt in relay_msg::encode_plaintexts(stream, msg) {
            let mut body = [0u8; PAYLOAD_LEN];
            body[..RELAY_PLAINTEXT_LEN].copy_from_slice(&pt);
            self.crypto.originate_inbound(&mut body)?;
            out.push(body);
        }
        Ok(())
    }

    /// Adds this hop's layer to a body from further along: the next hop's, or at a joined
    /// rendezvous point the other circuit's.
    pub fn forward_back(&mut self, body: &mut [u8; PAYLOAD_LEN]) -> Result<(), Fault> {
        Ok(self.crypto.forward_inbound(body)?)
    }
}

/// Where the end of a circuit came from, at a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A DESTROY from the previous hop, or its link closed.
    Prev,
    /// A DESTROY from the next hop, or its link closed.
    Next,
    /// This relay's own decision (a fault of the previous hop's cells, a limit, an expiry).
    Local,
}

impl Side {
    /// The side a [`Fault`] from [`RelayHop::from_prev`] or [`RelayHop::from_next`] puts
    /// the end on, and the reason: a DESTROY received is that side's; anything else is ours.
    pub fn of(fault: &Fault, from: Side) -> (DestroyReason, Side) {
        match fault {
            Fault::Destroyed(r) => (*r, from),
            f => (f.destroy_reason(), Side::Local),
        }
    }
}

/// What a relay sends when a circuit ends (docs/PROTOCOL.md, "Circuit teardown").
#[derive(Debug)]
pub struct Teardown {
    /// A CLOSING body to queue toward the client before the DESTROY: this relay's own reason,
    /// end to end, when the previous hop is a relay (which must not learn it).
    pub closing: Option<Box<[u8; PAYLOAD_LEN]>>,
    /// The DESTROY reason toward the previous hop; `None` when the previous hop ended it (the
    /// circuit is only forgotten there).
    pub prev: Option<DestroyReason>,
    /// The DESTROY reason toward the next hop, if there is one and it did not end it.
    pub next: Option<DestroyReason>,
}

impl RelayHop {
    /// How the end (`reason`, from `side`) is told: a reason of this relay's own (its decision,
    /// its link to the next hop closed, or the next hop refused our CREATE — which it tells
    /// only us) reaches the client end to end; a DESTROY passed on from the next hop, and every
    /// DESTROY toward another relay, carries the fixed reason DESTROYED, so no relay tells a
    /// non-adjacent one why (THREATS A17). `prev_is_client`: this is the first hop.
    pub fn teardown(&mut self, reason: DestroyReason, side: Side, prev_is_client: bool) -> Teardown {
        let mut closing = None;
        let prev = (side != Side::Prev).then(|| {
            let own = side == Side::Local || reason == DestroyReason::ChannelClosed || self.next_is_creating();
            if own && !prev_is_client {
                closing = self.originate(0, &RelayMsg::Closing { reason }).ok().and_then(|mut v| v.pop()).map(Box::new);
            }
            if own && prev_is_client {
                reason
            } else {
                DestroyReason::Destroyed
            }
        });
        let next = match side {
            _ if matches!(self.next, Next::None) => None,
            Side::Prev => Some(DestroyReason::Destroyed),
            Side::Local => Some(reason),
            Side::Next => None,
        };
        Teardown { closing, prev, next }
    }
}
