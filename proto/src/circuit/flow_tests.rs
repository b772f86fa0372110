//! The stream flow machines of both ends of a circuit wired together in memory: an exit reading
//! two streams' sources and a client consuming them, every event at the same instant, in
//! thousands of seeded orders. Nothing may be left queued while the window allows it (the
//! missed wake-up of the stalled-downloads issue), and every byte arrives.

use std::collections::VecDeque;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::streams::{DataIn, Out, StreamFlow};
use crate::congestion::CcParams;
use crate::flow::FlowParams;
use crate::relay_msg::{EndReason, RelayMsg};

/// Bytes the exit's reader takes from a source at once (a read that fills it has `more`).
const READ: usize = 1200;

/// One stream's destination at the exit (the bytes it will send) and reader state.
struct Source {
    data: Vec<u8>,
    pos: usize,
    /// The last read filled the buffer: a Drained event is owed once nothing more is ready.
    last_more: bool,
    closed: bool,
    paused: bool,
}

/// One stream's application at the client.
#[derive(Default)]
struct Sink {
    got: Vec<u8>,
    unconsumed: u32,
    ended: bool,
}

struct Ends {
    exit: StreamFlow<()>,
    client: StreamFlow<()>,
    to_client: VecDeque<(u16, RelayMsg)>,
    to_exit: VecDeque<(u16, RelayMsg)>,
    src: Vec<(u16, Source)>,
    sink: Vec<(u16, Sink)>,
    now: Instant,
    rng: StdRng,
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
        let now = Instant::now();
        let mut e = Ends {
            exit: StreamFlow::new(flow, now),
            client: StreamFlow::new(flow, now),
            to_client: VecDeque::new(),
            to_exit: VecDeque::new(),
            src: Vec::new(),
            sink: Vec::new(),
            now,
            rng: StdRng::seed_from_u64(seed),
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
        let now = self.now;
        let mut hold = || Some(());
        match ev {
            Ev::Read(i) => {
                let (id, s) = &mut self.src[i];
                let n = READ.min(s.data.len() - s.pos);
                let bytes = s.data[s.pos..s.pos + n].to_vec();
                s.pos += n;
                s.last_more = n == READ;
                let (_, out) = self.exit.on_read(*id, &bytes, n == READ, now, &mut self.rng, &mut hold).expect("open");
                self.to_client.extend(out);
            }
            Ev::Drain(i) => {
                let (id, s) = &mut self.src[i];
                s.last_more = false;
                let (_, out) = self.exit.on_drained(*id, now, &mut self.rng, &mut hold).expect("open");
                self.to_client.extend(out);
            }
            Ev::Close(i) => {
                let (id, s) = &mut self.src[i];
                s.closed = true;
                let (_, out) = self.exit.close(*id, EndReason::Done, now, &mut self.rng, &mut hold).expect("open");
                self.to_client.extend(out);
            }
            Ev::ToClient => {
                let (id, msg) = self.to_client.pop_front().unwrap();
                let out = self.client_gets(id, msg);
                self.to_exit.extend(out);
            }
            Ev::Consume(i) => {
                let (id, k) = &mut self.sink[i];
                k.unconsumed -= 1;
                let out = self.client.on_consumed(*id, 1);
                self.to_exit.extend(out);
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
                self.to_client.extend(out);
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
