//! The stream flow machines of both ends of a circuit wired together in memory: an exit reading
//! two streams' sources and a client consuming them, every event at the same instant, in
//! thousands of seeded orders. Nothing may be left queued while the window allows it (the
//! missed wake-up of the stalled-downloads issue), and every byte arrives.

use std::collections::VecDeque;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::client::Event;
use super::pair::Pair;
use super::streams::{data_filled, DataIn, Out, StreamFlow};
use crate::congestion::CcParams;
use crate::flow::FlowParams;
use crate::relay_msg::{EndReason, RelayMsg, MAX_BODY_PER_CELL};

/// Bytes the exit's reader takes from a source at once (a read that fills it has `more`).
const READ: usize = 1200;

/// Token bytes from a counter: as good as random for the flow rules, and the same in every
/// order of events, so that the exhaustive search recognises a state it has seen.
#[derive(Clone, Debug, Default)]
struct CountingRng(u64);

impl rand::RngCore for CountingRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// One stream's destination at the exit (the bytes it will send) and reader state.
#[derive(Clone, Debug)]
struct Source {
    data: Vec<u8>,
    pos: usize,
    /// The last read filled the buffer: a Drained event is owed once nothing more is ready.
    last_more: bool,
    closed: bool,
    paused: bool,
}

/// One stream's application at the client.
#[derive(Default, Clone, Debug)]
struct Sink {
    got: Vec<u8>,
    unconsumed: u32,
    ended: bool,
}

#[derive(Clone, Debug)]
struct Ends {
    exit: StreamFlow<()>,
    client: StreamFlow<()>,
    to_client: VecDeque<(u16, RelayMsg)>,
    to_exit: VecDeque<(u16, RelayMsg)>,
    src: Vec<(u16, Source)>,
    sink: Vec<(u16, Sink)>,
    now: Instant,
    /// Bytes a read takes at most.
    read: usize,
    /// Picks the order of events (seeded runs).
    rng: StdRng,
    /// Draws the SENDME tokens.
    tokens: CountingRng,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Read(usize),
    Drain(usize),
    Close(usize),
    ToClient,
    Consume(usize),
    ToExit,
}

impl Ends {
    fn new(seed: u64, lens: &[usize]) -> Self {
        let flow = FlowParams { circuit_window: 30, circuit_sendme_inc: 10, xoff_cells: 4, cc: CcParams { cwnd_init: 20, ..CcParams::default() } };
        Self::with(seed, lens, flow, READ)
    }

    fn with(seed: u64, lens: &[usize], flow: FlowParams, read: usize) -> Self {
        let now = Instant::now();
        let mut e = Ends {
            exit: StreamFlow::new(flow, now),
            client: StreamFlow::new(flow, now),
            to_client: VecDeque::new(),
            to_exit: VecDeque::new(),
            src: Vec::new(),
            sink: Vec::new(),
            now,
            read,
            rng: StdRng::seed_from_u64(seed),
            tokens: CountingRng::default(),
        };
        for (i, len) in lens.iter().enumerate() {
            let id = i as u16 + 1;
            e.exit.open(id, now).unwrap();
            e.client.open(id, now).unwrap();
            let data = (0..*len).map(|j| (j * 7 + i * 13) as u8).collect();
            e.src.push((id, Source { data, pos: 0, last_more: false, closed: false, paused: false }));
            e.sink.push((id, Sink::default()));
        }
        e
    }

    fn enabled(&self) -> Vec<Ev> {
        let mut v = Vec::new();
        // The readers wait while the queue holds a congestion window's worth of cells.
        let gate_open = self.exit.queued_data() < self.exit.cwnd() as usize;
        for (i, (_, s)) in self.src.iter().enumerate() {
            let left = s.data.len() - s.pos;
            if s.closed {
                continue;
            }
            if left > 0 && gate_open && !s.paused {
                v.push(Ev::Read(i));
            }
            if left == 0 && s.last_more {
                v.push(Ev::Drain(i));
            }
            if left == 0 && !s.last_more {
                v.push(Ev::Close(i));
            }
        }
        for (i, (_, k)) in self.sink.iter().enumerate() {
            if k.unconsumed > 0 {
                v.push(Ev::Consume(i));
            }
        }
        if !self.to_client.is_empty() {
            v.push(Ev::ToClient);
        }
        if !self.to_exit.is_empty() {
            v.push(Ev::ToExit);
        }
        v
    }

    fn step(&mut self, ev: Ev) {
        self.step_via(ev, None)
    }

    /// [`Ends::step`] with every message the ends send carried over `pair`'s circuit (encoded
    /// into cells, through every hop's crypto layer and back out) instead of handed across.
    fn step_via(&mut self, ev: Ev, mut pair: Option<&mut Pair>) {
        let now = self.now;
        let mut hold = || Some(());
        match ev {
            Ev::Read(i) => {
                let (id, s) = &mut self.src[i];
                let n = self.read.min(s.data.len() - s.pos);
                let bytes = s.data[s.pos..s.pos + n].to_vec();
                s.pos += n;
                s.last_more = n == self.read;
                let (_, out) = self.exit.on_read(*id, &bytes, n == self.read, now, &mut self.tokens, &mut hold).expect("open");
                self.to_client.extend(toward_client(out, pair.as_deref_mut()));
            }
            Ev::Drain(i) => {
                let (id, s) = &mut self.src[i];
                s.last_more = false;
                let (_, out) = self.exit.on_drained(*id, now, &mut self.tokens, &mut hold).expect("open");
                self.to_client.extend(toward_client(out, pair.as_deref_mut()));
            }
            Ev::Close(i) => {
                let (id, s) = &mut self.src[i];
                s.closed = true;
                let (_, out) = self.exit.close(*id, EndReason::Done, now, &mut self.tokens, &mut hold).expect("open");
                self.to_client.extend(toward_client(out, pair.as_deref_mut()));
            }
            Ev::ToClient => {
                let (id, msg) = self.to_client.pop_front().unwrap();
                let out = self.client_gets(id, msg);
                self.to_exit.extend(toward_exit(out, pair.as_deref_mut()));
            }
            Ev::Consume(i) => {
                let (id, k) = &mut self.sink[i];
                k.unconsumed -= 1;
                let out = self.client.on_consumed(*id, 1);
                self.to_exit.extend(toward_exit(out, pair.as_deref_mut()));
            }
            Ev::ToExit => {
                let (id, msg) = self.to_exit.pop_front().unwrap();
                let out = match msg {
                    RelayMsg::Sendme { token } => self.exit.on_circuit_sendme(token.as_ref(), now).expect("a valid SENDME"),
                    RelayMsg::Xoff | RelayMsg::Xon => {
                        if let Some(p) = self.exit.on_pause(id, msg == RelayMsg::Xoff, now).unwrap() {
                            self.src.iter_mut().find(|(s, _)| *s == id).unwrap().1.paused = p;
                        }
                        vec![]
                    }
                    m => panic!("the client sent {m:?}"),
                };
                self.to_client.extend(toward_client(out, pair));
            }
        }
        assert!(!self.exit.could_send(), "{ev:?} left the exit with data the window allows, unsent");
        assert!(!self.client.could_send(), "{ev:?} left the client with a message unsent");
    }

    fn client_gets(&mut self, id: u16, msg: RelayMsg) -> Out {
        let sink = &mut self.sink.iter_mut().find(|(s, _)| *s == id).expect("a known stream").1;
        match msg {
            RelayMsg::Data(_) | RelayMsg::DataToken { .. } => {
                let (d, token) = match msg {
                    RelayMsg::DataToken { data, token } => (data, Some(token)),
                    RelayMsg::Data(d) => (d, None),
                    _ => unreachable!(),
                };
                let filled = d.len() + token.map_or(0, |_| crate::flow::SENDME_TOKEN_LEN);
                match self.client.on_data(id, filled, token, self.now).expect("within the window") {
                    DataIn::Deliver => {
                        sink.got.extend_from_slice(&d);
                        sink.unconsumed += 1;
                        self.client.delivered(id)
                    }
                    DataIn::Dropped(out) => out,
                }
            }
            RelayMsg::End(_) => {
                assert!(self.client.on_end(id).unwrap());
                sink.ended = true;
                vec![]
            }
            m => panic!("the exit sent {m:?}"),
        }
    }
}

#[test]
fn two_streams_in_every_seeded_order_at_one_instant_deliver_every_byte() {
    let mut steps = 0;
    for seed in 0..1500 {
        let mut e = Ends::new(seed, &[23_000, 9_000]);
        loop {
            let en = e.enabled();
            if en.is_empty() {
                break;
            }
            let ev = en[e.rng.gen_range(0..en.len())];
            e.step(ev);
            steps += 1;
            assert!(steps < 50_000_000, "runaway");
        }
        for ((_, s), (_, k)) in e.src.iter().zip(&e.sink) {
            assert!(k.ended, "seed {seed}: a stream never ended ({} of {} bytes)", k.got.len(), s.data.len());
            assert!(k.got == s.data, "seed {seed}: {} of {} bytes, or out of order", k.got.len(), s.data.len());
        }
        assert_eq!(e.exit.queued(), 0, "seed {seed}: messages stranded at the exit");
    }
}

impl Ends {
    /// Every stream complete: all bytes, in order, then END; nothing left queued.
    fn complete(&self) -> bool {
        self.exit.queued() == 0 && self.src.iter().zip(&self.sink).all(|((_, s), (_, k))| k.ended && k.got == s.data)
    }

    /// The state without what does not change behaviour (the order-picking RNG).
    fn key(&self) -> String {
        let mut e = self.clone();
        e.rng = StdRng::seed_from_u64(0);
        format!("{e:?}")
    }
}

/// Every order of every event the harness can produce, for a small transfer whose windows are
/// tiny (SENDMEs, XOFF and XON all happen): a depth-first search over event orders, each state
/// explored once. Every order ends with every byte delivered, and none leaves data the window
/// allows unsent (`step` checks that after each event).
#[test]
fn every_interleaving_of_a_small_two_stream_transfer_delivers_every_byte() {
    let flow = FlowParams { circuit_window: 6, circuit_sendme_inc: 2, xoff_cells: 1, cc: CcParams { cwnd_init: 4, ..CcParams::default() } };
    let start = Ends::with(0, &[1_400, 700], flow, 600);
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![start];
    let (mut states, mut ends) = (0usize, 0usize);
    while let Some(e) = stack.pop() {
        if !seen.insert(e.key()) {
            continue;
        }
        states += 1;
        assert!(states < 3_000_000, "the search did not finish within its bound");
        let en = e.enabled();
        if en.is_empty() {
            ends += 1;
            assert!(e.complete(), "an order of events stopped before every byte arrived: {e:?}");
            continue;
        }
        for ev in en {
            let mut next = e.clone();
            next.step(ev);
            stack.push(next);
        }
    }
    eprintln!("{states} distinct states, {ends} end states");
    assert!(ends >= 1 && states > 100, "the search explored something ({states} states)");
}

/// Carries what the exit sends over `pair`'s circuit: the last hop originates each message, the
/// relays before it forward the cells, and the client's machine reads them (as they were sent,
/// or the test fails). Without a circuit, hands them on as they are.
fn toward_client(out: Out, pair: Option<&mut Pair>) -> Out {
    carry(out, pair, "client", Pair::hop_sends, |p, _| {
        p.events.drain(..).map(|ev| match ev {
            Event::Stream { stream, msg } => (stream, msg),
            ev => panic!("the client's machine gave {ev:?}"),
        }).collect()
    })
}

/// Carries what the client sends over `pair`'s circuit to the exit (see [`toward_client`]).
fn toward_exit(out: Out, pair: Option<&mut Pair>) -> Out {
    carry(out, pair, "exit", Pair::client_sends, |p, exit| {
        p.at_hops.drain(..).map(|(hop, stream, msg)| {
            assert_eq!(hop, exit, "a middle relay read a stream message");
            (stream, msg)
        }).collect()
    })
}

/// What both directions share: `send` each message (naming the exit's hop index), run the
/// circuit, check that no machine found a fault, and that `received` gives what was sent.
fn carry(out: Out, pair: Option<&mut Pair>, to: &str, send: fn(&mut Pair, usize, u16, &RelayMsg), received: impl FnOnce(&mut Pair, usize) -> Out) -> Out {
    let Some(p) = pair else { return out };
    let exit = p.hops.len() - 1;
    for (id, msg) in &out {
        send(p, exit, *id, msg);
    }
    p.run();
    assert!(p.client_fault.is_none() && p.hop_faults.is_empty(), "{:?} {:?}", p.client_fault, p.hop_faults);
    let got = received(p, exit);
    assert_eq!(got, out, "messages changed on the way to the {to}");
    got
}

/// The stream flow machines of both ends over a real circuit of three hops (every message
/// encoded into cells and through each hop's crypto layer both ways), tiny windows so that
/// SENDMEs with their tokens, XOFF and XON all cross it, in seeded orders: every byte arrives.
#[test]
fn two_streams_over_a_three_hop_circuit_deliver_every_byte() {
    for seed in 0..40 {
        let mut p = Pair::built(3);
        let mut e = Ends::new(seed, &[23_000, 9_000]);
        for (id, _) in &e.src {
            super::tests::open_stream(&mut p, *id);
        }
        loop {
            let en = e.enabled();
            if en.is_empty() {
                break;
            }
            let ev = en[e.rng.gen_range(0..en.len())];
            e.step_via(ev, Some(&mut p));
        }
        assert!(e.complete(), "seed {seed}: not every byte arrived over the circuit");
    }
}

/// Hands the exit's DATA to the client, which consumes it at once: the SENDMEs it sends.
fn consume_all(client: &mut StreamFlow<()>, out: &Out, now: Instant) -> Vec<Option<crate::flow::SendmeToken>> {
    let mut sendmes = Vec::new();
    for (id, msg) in out {
        let Some(f) = data_filled(msg) else { continue };
        let token = match msg {
            RelayMsg::DataToken { token, .. } => Some(*token),
            _ => None,
        };
        assert!(matches!(client.on_data(*id, f, token, now).expect("within the window"), DataIn::Deliver));
        let _ = client.delivered(*id);
        for (_, m) in client.on_consumed(*id, 1) {
            if let RelayMsg::Sendme { token } = m {
                sendmes.push(token);
            }
        }
    }
    sendmes
}

/// A congestion window that shrinks below what is in flight (a SENDME's Vegas step) right
/// after a partly filled cell still leaves the receiver a full last cell: the stream's next
/// cell goes one past the window, so the receiver's stall rule sees DATA owed if nothing
/// follows (the stall_recovery test once hung on this: a download whose SENDMEs were lost was
/// never ended, its last cell partly filled).
#[test]
fn a_window_that_shrinks_after_a_partial_cell_still_ends_on_a_full_one() {
    let cc = CcParams { cwnd_init: 40, alpha: 2, beta: 4, gamma: 3, delta: 6 };
    let flow = FlowParams { circuit_window: 100, circuit_sendme_inc: 10, xoff_cells: 1000, cc };
    let t0 = Instant::now();
    let ms = std::time::Duration::from_millis;
    let (mut exit, mut client) = (StreamFlow::<()>::new(flow, t0), StreamFlow::<()>::new(flow, t0));
    exit.open(1, t0).unwrap();
    client.open(1, t0).unwrap();
    let (mut tokens, mut hold) = (CountingRng::default(), || Some(()));
    // A burst that fills the window (40 cells), acknowledged quickly: a short round trip.
    let (_, out) = exit.on_read(1, &[7; 40 * 498], true, t0, &mut tokens, &mut hold).unwrap();
    assert_eq!(out.len(), 40, "the initial window");
    let mut sendmes = consume_all(&mut client, &out, t0).into_iter();
    let out = exit.on_circuit_sendme(sendmes.next().unwrap().as_ref(), t0 + ms(1)).unwrap();
    assert!(consume_all(&mut client, &out, t0 + ms(1)).is_empty());
    // The source drains: a partly filled cell goes, within the window.
    let (_, out) = exit.on_read(1, &[8; 100], false, t0 + ms(2), &mut tokens, &mut hold).unwrap();
    assert!(out.iter().any(|(_, m)| data_filled(m).is_some_and(|f| f < MAX_BODY_PER_CELL)), "a partly filled cell: {out:?}");
    let _ = consume_all(&mut client, &out, t0 + ms(2));
    // A SENDME with a long round trip: slow start ends and the window drops below what is in
    // flight.
    let out = exit.on_circuit_sendme(sendmes.next().unwrap().as_ref(), t0 + ms(2000)).unwrap();
    assert!(out.is_empty());
    assert!(exit.available() == 0, "the window closed (cwnd {})", exit.cwnd());
    // More data: one full cell goes past the closed window, no more.
    let (_, out) = exit.on_read(1, &[9; 5 * 498], true, t0 + ms(2001), &mut tokens, &mut hold).unwrap();
    let sent: Vec<usize> = out.iter().filter_map(|(_, m)| data_filled(m)).collect();
    assert_eq!(sent, vec![MAX_BODY_PER_CELL], "exactly one full cell past the window");
    let _ = consume_all(&mut client, &out, t0 + ms(2001));
    // Nothing more comes: the receiver counts the stream as owed DATA and gives up on it.
    let limit = std::time::Duration::from_secs(20);
    assert_eq!(client.stalled(t0 + ms(2001) + limit, limit), vec![1]);
}
