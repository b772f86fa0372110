//! An in-memory network of circuit state machines with injected time (after quinn-proto's
//! `Pair`): one client circuit through relays' hops, cells carried between them by queues the
//! test controls, so that every delivery order and every tampering is reproducible.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use x25519_dalek::{PublicKey, StaticSecret};

use super::client::{ClientCircuit, Event, HopTarget};
use super::fault::Fault;
use super::handshake::{HandshakeRead, HandshakeReader};
use super::relay::{FromNext, FromPrev, RelayHop, Side};
use crate::cell::{self, Cell, CellCmd, DestroyReason, PAYLOAD_LEN};
use crate::crypto::ntor::{self, OnionKeyPair};
use crate::early::EarlyGate;
use crate::ids::RelayId;
use crate::relay_msg::{ExtendTarget, RelayMsg};

/// A relay of the test network: its identity and onion key.
pub struct TestRelay {
    pub id: RelayId,
    pub onion: StaticSecret,
}

impl TestRelay {
    pub fn new(n: u8) -> Self {
        TestRelay { id: RelayId([n; 32]), onion: StaticSecret::from([n.wrapping_add(100); 32]) }
    }

    pub fn target(&self) -> HopTarget {
        let addr = format!("127.0.0.{}:9001", self.id.0[0]).parse().unwrap();
        HopTarget { target: ExtendTarget { addr, identity: self.id.0, link_key: [0; 32] }, onion_key: PublicKey::from(&self.onion).to_bytes() }
    }

    /// The server side of a CREATE: this relay's hop and the CREATED reply.
    pub fn accept(&self, rng: &mut StdRng, hdata: &[u8], early: EarlyGate) -> Result<(RelayHop, Vec<u8>), Fault> {
        let keys = [OnionKeyPair::from_secret(&self.onion)];
        let out = ntor::server_respond(rng, &self.id, &keys, hdata, &[0, 0]).map_err(Fault::protocol)?;
        Ok((RelayHop::new(&out.keys, early), out.reply))
    }
}

/// Where a cell in flight is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// To hop `n` from its previous hop (the client for 0).
    Hop(usize),
    /// From hop `n + 1` back to hop `n`.
    Back(usize),
    /// From hop 0 back to the client.
    Client,
}

/// A circuit through relays, all in memory.
pub struct Pair {
    pub now: Instant,
    pub rng: StdRng,
    pub relays: Vec<TestRelay>,
    pub client: ClientCircuit,
    pub hops: Vec<RelayHop>,
    /// Cells in flight, delivered in order by [`Pair::step`].
    pub wire: VecDeque<(To, Cell)>,
    /// Messages delivered to a hop: `(hop, stream, message)`.
    pub at_hops: Vec<(usize, u16, RelayMsg)>,
    /// What the client got.
    pub events: Vec<Event>,
    /// The first fault the client hit (it stops taking cells then).
    pub client_fault: Option<Fault>,
    /// Faults at hops: `(hop, reason, side)`; each hop's teardown was put on the wire.
    pub hop_faults: Vec<(usize, DestroyReason, Side)>,
    /// Bodies a hop found for nobody (the last hop's `Unrecognized`).
    pub unrecognized: Vec<(usize, Box<[u8; PAYLOAD_LEN]>)>,
    /// Whether the last hop is a rendezvous point joined to another circuit: its unrecognized
    /// bodies wait in `unrecognized` for the test to carry across instead of ending the circuit.
    pub joined: bool,
}

impl Pair {
    /// A network of `n` relays and a client circuit with no hop yet.
    pub fn new(n: usize) -> Self {
        Pair {
            now: Instant::now(),
            rng: StdRng::seed_from_u64(7),
            relays: (1..=n as u8).map(TestRelay::new).collect(),
            client: ClientCircuit::new(0x8000_0001, vec![0, 0]),
            hops: Vec::new(),
            wire: VecDeque::new(),
            at_hops: Vec::new(),
            events: Vec::new(),
            client_fault: None,
            hop_faults: Vec::new(),
            unrecognized: Vec::new(),
            joined: false,
        }
    }

    /// A circuit built through every relay.
    pub fn built(n: usize) -> Self {
        let mut p = Pair::new(n);
        for i in 0..n {
            p.extend(i);
        }
        p
    }

    /// Adds relay `i` as the next hop and runs the network until the client has it.
    pub fn extend(&mut self, i: usize) {
        let target = self.relays[i].target();
        let cells = self.client.extend(&mut self.rng, &target).expect("extend");
        if i == 0 {
            let created = self.create_first(&cells).expect("first hop");
            for c in created {
                self.wire.push_back((To::Client, c));
            }
        } else {
            self.send_from_client(cells);
        }
        self.run();
        assert!(matches!(self.events.pop(), Some(Event::Extended { hops }) if hops == i + 1), "hop {i} added: {:?}", self.client_fault);
    }

    /// The first relay answers the client's CREATE cells.
    fn create_first(&mut self, cells: &[Cell]) -> Result<Vec<Cell>, Fault> {
        let (hdr, mut read) = HandshakeReader::create(&cells[0].payload, self.now).map_err(Fault::protocol)?;
        assert_eq!(hdr.htype, ntor::HTYPE_NTOR);
        for c in &cells[1..] {
            let HandshakeRead::More(r) = read else { panic!("CONTINUE after a complete CREATE") };
            read = r.push(c, self.now).map_err(Fault::protocol)?;
        }
        let HandshakeRead::Done(msg) = read else { panic!("CREATE incomplete") };
        let (hop, reply) = self.relays[0].accept(&mut self.rng, &msg, EarlyGate::from_client())?;
        self.hops.push(hop);
        Ok(cell::created_cells(cells[0].circ_id, &reply))
    }

    /// Puts cells from the client on the wire to the first hop.
    pub fn send_from_client(&mut self, cells: Vec<Cell>) {
        for c in cells {
            self.wire.push_back((To::Hop(0), c));
        }
    }

    /// Encodes `msg` from the client to `hop` and puts it on the wire.
    pub fn client_sends(&mut self, hop: usize, stream: u16, msg: &RelayMsg) {
        let cells = self.client.encode(hop, stream, msg).expect("encode");
        self.send_from_client(cells);
    }

    /// Hop `hop` originates `msg` toward the client.
    pub fn hop_sends(&mut self, hop: usize, stream: u16, msg: &RelayMsg) {
        for body in self.hops[hop].originate(stream, msg).expect("originate") {
            self.back_from(hop, body);
        }
    }

    /// Puts a body hop `hop` sends toward the client on the wire.
    pub fn back_from(&mut self, hop: usize, body: [u8; PAYLOAD_LEN]) {
        let to = if hop == 0 { To::Client } else { To::Back(hop - 1) };
        self.wire.push_back((to, Cell { circ_id: 1, cmd: CellCmd::Relay, payload: body }));
    }

    /// Delivers every cell in flight, and those they cause, in order.
    pub fn run(&mut self) {
        while self.step() {}
    }

    /// Delivers the next cell in flight; false if none was.
    pub fn step(&mut self) -> bool {
        let Some((to, cell)) = self.wire.pop_front() else { return false };
        self.deliver(to, cell);
        true
    }

    /// Delivers one cell now.
    pub fn deliver(&mut self, to: To, mut cell: Cell) {
        match to {
            To::Client => {
                if self.client_fault.is_some() {
                    return;
                }
                match self.client.handle_cell(cell, self.now) {
                    Ok(Event::Nothing) => {}
                    Ok(Event::Send(cells)) => self.send_from_client(cells),
                    Ok(ev) => self.events.push(ev),
                    Err(f) => self.client_fault = Some(f),
                }
            }
            To::Hop(i) => {
                if self.faulted(i) {
                    return;
                }
                let r = self.hops[i].from_prev(&mut cell);
                match r {
                    Ok(FromPrev::Nothing) => {}
                    Ok(FromPrev::Forward) => self.wire.push_back((To::Hop(i + 1), Cell { circ_id: 2, ..cell })),
                    Ok(FromPrev::Unrecognized) => {
                        self.unrecognized.push((i, Box::new(cell.payload)));
                        if !self.joined {
                            self.hop_fault(i, &RelayHop::unrecognized_fault(), Side::Local);
                        }
                    }
                    Ok(FromPrev::Msg { stream, msg }) => self.at_hops.push((i, stream, msg)),
                    Ok(FromPrev::Extend { target, hdata, .. }) => {
                        let next = self.relays.iter().position(|r| r.id.0 == target.identity).expect("a known relay");
                        assert_eq!(next, i + 1, "the harness extends in order");
                        let (hop, reply) = match self.relays[next].accept(&mut self.rng, &hdata, EarlyGate::from_relay()) {
                            Ok(x) => x,
                            Err(f) => return self.hop_fault(i, &f, Side::Local),
                        };
                        self.hops.push(hop);
                        self.hops[i].creating();
                        for c in cell::created_cells(3, &reply) {
                            self.wire.push_back((To::Back(i), c));
                        }
                    }
                    Err(f) => self.hop_fault(i, &f, Side::Prev),
                }
            }
            To::Back(i) => {
                if self.faulted(i) {
                    return;
                }
                match self.hops[i].from_next(&mut cell, self.now) {
                    Ok(FromNext::Nothing) => {}
                    Ok(FromNext::Forward) => self.back_from(i, cell.payload),
                    Ok(FromNext::Extended(body)) => self.back_from(i, *body),
                    Err(f) => self.hop_fault(i, &f, Side::Next),
                }
            }
        }
    }

    fn faulted(&self, hop: usize) -> bool {
        self.hop_faults.iter().any(|(h, ..)| *h == hop)
    }

    /// Hop `i` ends the circuit: its teardown goes on the wire.
    fn hop_fault(&mut self, i: usize, fault: &Fault, from: Side) {
        let (reason, side) = Side::of(fault, from);
        self.hop_faults.push((i, reason, side));
        let t = self.hops[i].teardown(reason, side, i == 0);
        if let Some(body) = t.closing {
            self.back_from(i, *body);
        }
        let back = if i == 0 { To::Client } else { To::Back(i - 1) };
        if let Some(r) = t.prev {
            self.wire.push_back((back, Cell::destroy(1, r)));
        }
        if let Some(r) = t.next {
            self.wire.push_back((To::Hop(i + 1), Cell::destroy(2, r)));
        }
    }

    /// Moves the clock.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }
}

/// Carries the bodies `from`'s joined last hop could not read across the join: `to`'s last hop
/// adds its layer and sends them toward `to`'s client.
pub fn cross(from: &mut Pair, to: &mut Pair) {
    let last = to.hops.len() - 1;
    for (_, mut body) in std::mem::take(&mut from.unrecognized) {
        to.hops[last].forward_back(&mut body).expect("layer");
        to.back_from(last, *body);
    }
}
