//! The circuit state machines wired together in memory ([`super::pair::Pair`]): building,
//! tampering, replays, RELAY_EARLY, windows of reassembly, END semantics, DESTROY propagation
//! and the rendezvous join, all with injected time and a fixed delivery order.

use std::time::Duration;

use super::client::Event;
use super::fault::Fault;
use super::pair::{cross, Pair, To};
use super::relay::Side;
use crate::cell::{Cell, CellCmd, DestroyReason, MAX_HANDSHAKE_LEN};
use crate::crypto::kdf::derive_hop_keys;
use crate::ext::Extensions;
use crate::frag::REASSEMBLY_TIMEOUT_MS;
use crate::hs::rendezvous::service_end_keys;
use crate::relay_msg::{EndReason, RelayMsg};

fn begin(host: &str) -> RelayMsg {
    RelayMsg::Begin { host: host.into(), port: 80, ext: Extensions::none() }
}

fn connected() -> RelayMsg {
    RelayMsg::Connected { addr: None, ext: Extensions::none() }
}

/// Opens stream `id` from the client to the exit (the last hop) and answers it CONNECTED.
pub(super) fn open_stream(p: &mut Pair, id: u16) {
    let cells = p.client.begin(id, &begin("example.test"), p.now).unwrap();
    p.send_from_client(cells);
    p.run();
    let exit = p.hops.len() - 1;
    assert!(matches!(p.at_hops.pop(), Some((h, s, RelayMsg::Begin { .. })) if h == exit && s == id));
    p.hop_sends(exit, id, &connected());
    p.run();
    assert!(matches!(p.events.pop(), Some(Event::Connected { stream, .. }) if stream == id));
}

fn client_protocol_fault(p: &Pair) -> bool {
    matches!(p.client_fault, Some(Fault::Protocol(_)))
}

#[test]
fn a_three_hop_circuit_carries_a_stream_both_ways_and_only_the_exit_reads_it() {
    let mut p = Pair::built(3);
    assert_eq!(p.client.n_hops(), 3);
    open_stream(&mut p, 1);
    p.client_sends(2, 1, &RelayMsg::Data(b"GET /".to_vec()));
    p.run();
    assert_eq!(p.at_hops.len(), 1, "only the exit got a message");
    assert!(matches!(&p.at_hops[0], (2, 1, RelayMsg::Data(d)) if d == b"GET /"));
    p.hop_sends(2, 1, &RelayMsg::Data(b"200".to_vec()));
    p.hop_sends(2, 1, &RelayMsg::End(EndReason::Done));
    p.run();
    assert!(matches!(&p.events[..], [Event::Stream { stream: 1, msg: RelayMsg::Data(d) }, Event::Stream { stream: 1, msg: RelayMsg::End(EndReason::Done) }] if d == b"200"));
    assert!(p.client_fault.is_none() && p.hop_faults.is_empty());
}

#[test]
fn a_cell_altered_toward_the_exit_reaches_no_one_and_the_client_learns_why() {
    let mut p = Pair::built(3);
    p.client_sends(2, 1, &RelayMsg::Data(b"secret".to_vec()));
    assert!(p.step(), "guard forwards");
    let (to, cell) = p.wire.front_mut().unwrap();
    assert_eq!(*to, To::Hop(1));
    cell.payload[100] ^= 1;
    p.run();
    assert!(p.at_hops.is_empty(), "nothing from the altered cell was delivered");
    assert_eq!(p.hop_faults[0], (2, DestroyReason::Protocol, Side::Local));
    // The exit's own reason travels end to end in CLOSING; relays pass DESTROYED.
    assert_eq!(p.client_fault, Some(Fault::Destroyed(DestroyReason::Protocol)));
    assert!(p.hop_faults[1..].iter().all(|(_, r, s)| *r == DestroyReason::Destroyed && *s == Side::Next));
}

#[test]
fn a_cell_altered_toward_the_client_ends_the_circuit_there() {
    let mut p = Pair::built(3);
    open_stream(&mut p, 1);
    p.hop_sends(2, 1, &RelayMsg::Data(b"x".to_vec()));
    p.wire.back_mut().unwrap().1.payload[7] ^= 0x80;
    p.run();
    assert!(client_protocol_fault(&p));
    assert!(p.events.is_empty());
}

#[test]
fn replayed_cells_are_refused_in_both_directions() {
    // Toward the client: the same cell twice.
    let mut p = Pair::built(3);
    open_stream(&mut p, 1);
    p.hop_sends(2, 1, &RelayMsg::Data(b"once".to_vec()));
    // Walk it to the client's doorstep, then deliver it twice.
    while p.wire.front().is_some_and(|(to, _)| *to != To::Client) {
        p.step();
    }
    let (_, cell) = p.wire.pop_front().unwrap();
    p.deliver(To::Client, cell.clone());
    assert_eq!(p.events.len(), 1);
    p.deliver(To::Client, cell);
    assert!(client_protocol_fault(&p), "a replay fails authentication");
    assert_eq!(p.events.len(), 1, "the replay delivered nothing");

    // Toward the exit: a replayed cell is garbage at every hop after the first and is refused
    // at the exit.
    let mut p = Pair::built(3);
    p.client_sends(2, 1, &RelayMsg::Data(b"once".to_vec()));
    let cell = p.wire.front().unwrap().1.clone();
    p.run();
    p.deliver(To::Hop(0), cell);
    p.run();
    assert_eq!(p.at_hops.len(), 1);
    assert_eq!(p.hop_faults[0], (2, DestroyReason::Protocol, Side::Local));
}

#[test]
fn relay_early_bounds_extends_and_never_flows_toward_the_client() {
    // An EXTEND in a plain RELAY cell is refused.
    let mut p = Pair::new(3);
    p.extend(0);
    p.extend(1);
    let target = p.relays[2].target();
    let mut cells = p.client.extend(&mut p.rng, &target).unwrap();
    assert!(cells.iter().all(|c| c.cmd == CellCmd::RelayEarly), "the client sends EXTEND early");
    for c in &mut cells {
        c.cmd = CellCmd::Relay;
    }
    p.send_from_client(cells);
    p.run();
    assert_eq!(p.hop_faults[0], (1, DestroyReason::Protocol, Side::Local));
    assert_eq!(p.client_fault, Some(Fault::Destroyed(DestroyReason::Protocol)));

    // A relay marking a cell toward the client RELAY_EARLY (a signal) ends the circuit there.
    let mut p = Pair::built(3);
    open_stream(&mut p, 1);
    p.hop_sends(2, 1, &RelayMsg::Data(b"x".to_vec()));
    p.wire.back_mut().unwrap().1.cmd = CellCmd::RelayEarly;
    p.run();
    assert!(p.hop_faults.iter().any(|(h, r, _)| *h == 1 && *r == DestroyReason::Protocol), "the middle refuses it from the exit");

    // More early cells than a circuit may carry: the guard refuses the eighth.
    let mut p = Pair::built(1);
    for _ in 0..8 {
        let mut cells = p.client.encode(0, 0, &RelayMsg::Drop).unwrap();
        cells[0].cmd = CellCmd::RelayEarly;
        p.send_from_client(cells);
    }
    p.run();
    assert_eq!(p.hop_faults.len(), 1);
    assert_eq!(p.at_hops.len(), 7, "seven early cells from a client are allowed");
}

#[test]
fn handshake_reassembly_is_capped_in_size_and_time() {
    // A CREATED declaring more than a handshake may hold.
    let mut p = Pair::new(1);
    let target = p.relays[0].target();
    p.client.extend(&mut p.rng, &target).unwrap();
    let mut created = Cell::new(1, CellCmd::Created);
    created.payload[..2].copy_from_slice(&((MAX_HANDSHAKE_LEN + 1) as u16).to_be_bytes());
    p.deliver(To::Client, created);
    assert!(client_protocol_fault(&p));

    // A CREATED whose CONTINUE comes after the time cap.
    let mut p = Pair::new(1);
    p.client.extend(&mut p.rng, &target).unwrap();
    let mut created = Cell::new(1, CellCmd::Created);
    created.payload[..2].copy_from_slice(&1000u16.to_be_bytes());
    p.deliver(To::Client, created);
    assert!(p.client_fault.is_none());
    let deadline = p.client.next_deadline(Duration::from_secs(60)).expect("the reassembly deadline");
    assert_eq!(deadline, p.now + Duration::from_millis(REASSEMBLY_TIMEOUT_MS));
    p.advance(Duration::from_millis(REASSEMBLY_TIMEOUT_MS + 1));
    p.deliver(To::Client, Cell::new(1, CellCmd::Continue));
    assert!(client_protocol_fault(&p));

    // A relay reassembling the next hop's CREATED: anything but CONTINUE in between is refused.
    let mut p = Pair::new(2);
    p.extend(0);
    let target = p.relays[1].target();
    let cells = p.client.extend(&mut p.rng, &target).unwrap();
    p.send_from_client(cells);
    p.step();
    // The harness's next relay answered in one cell; replace it by a CREATED that needs more.
    p.wire.clear();
    let mut created = Cell::new(3, CellCmd::Created);
    created.payload[..2].copy_from_slice(&1000u16.to_be_bytes());
    p.deliver(To::Back(0), created);
    assert!(p.hops[0].next_deadline().is_some());
    p.deliver(To::Back(0), Cell::new(3, CellCmd::Relay));
    assert_eq!(p.hop_faults[0], (0, DestroyReason::Protocol, Side::Local));
    p.run();
    assert_eq!(p.client_fault, Some(Fault::Destroyed(DestroyReason::Protocol)), "the first hop tells the client directly");
}

#[test]
fn end_and_connected_follow_the_stream_rules() {
    let mut p = Pair::built(3);
    // END before CONNECTED is a refusal.
    let cells = p.client.begin(1, &begin("refused.test"), p.now).unwrap();
    p.send_from_client(cells);
    p.run();
    p.hop_sends(2, 1, &RelayMsg::End(EndReason::ExitPolicy));
    p.run();
    assert!(matches!(p.events.pop(), Some(Event::Refused { stream: 1, reason: EndReason::ExitPolicy })));

    // A BEGIN given up on: its late CONNECTED and END are ignored.
    let cells = p.client.begin(3, &begin("slow.test"), p.now).unwrap();
    p.send_from_client(cells);
    p.run();
    assert_eq!(p.client.next_deadline(Duration::from_secs(10)), Some(p.now + Duration::from_secs(10)));
    p.advance(Duration::from_secs(9));
    assert!(p.client.late_begins(p.now, Duration::from_secs(10)).is_empty());
    p.advance(Duration::from_secs(1));
    assert_eq!(p.client.late_begins(p.now, Duration::from_secs(10)), vec![3]);
    p.hop_sends(2, 3, &connected());
    p.hop_sends(2, 3, &RelayMsg::End(EndReason::Done));
    p.run();
    assert!(p.client_fault.is_none() && p.events.is_empty());

    // DATA before CONNECTED is a protocol violation.
    let cells = p.client.begin(5, &begin("eager.test"), p.now).unwrap();
    p.send_from_client(cells);
    p.run();
    p.hop_sends(2, 5, &RelayMsg::Data(b"early".to_vec()));
    p.run();
    assert!(client_protocol_fault(&p));

    // CONNECTED for a stream never begun.
    let mut p = Pair::built(3);
    p.hop_sends(2, 9, &connected());
    p.run();
    assert!(client_protocol_fault(&p));
}

#[test]
fn only_the_last_relay_speaks_for_streams_and_onion_services() {
    let mut p = Pair::built(3);
    open_stream(&mut p, 1);
    p.hop_sends(1, 1, &RelayMsg::Data(b"forged".to_vec()));
    p.run();
    assert!(client_protocol_fault(&p), "stream data from a middle hop");

    let mut p = Pair::built(3);
    p.hop_sends(1, 0, &RelayMsg::RendezvousEstablished { ext: Extensions::none() });
    p.run();
    assert!(client_protocol_fault(&p), "an onion-service message from a middle hop");

    let mut p = Pair::built(3);
    p.hop_sends(2, 0, &RelayMsg::RendezvousEstablished { ext: Extensions::none() });
    p.run();
    assert!(matches!(p.events.pop(), Some(Event::Control { hop: 2, msg: RelayMsg::RendezvousEstablished { .. } })));

    // A stream opened at a hop that is not the last is refused there.
    let mut p = Pair::built(3);
    p.client_sends(1, 4, &begin("middle.test"));
    p.run();
    assert_eq!(p.hop_faults[0], (1, DestroyReason::Protocol, Side::Local));
}

#[test]
fn destroy_travels_both_ways_with_reasons_only_to_neighbours() {
    // The client destroys: every hop passes DESTROYED on and sends nothing back.
    let mut p = Pair::built(3);
    p.deliver(To::Hop(0), Cell::destroy(1, DestroyReason::Requested));
    p.run();
    assert_eq!(p.hop_faults, vec![(0, DestroyReason::Requested, Side::Prev), (1, DestroyReason::Destroyed, Side::Prev), (2, DestroyReason::Destroyed, Side::Prev)]);
    assert!(p.client_fault.is_none(), "nothing came back");

    // The exit runs out of something: the client learns RESOURCELIMIT end to end, the
    // middle and the guard only DESTROYED.
    let mut p = Pair::built(3);
    let t = p.hops[2].teardown(DestroyReason::ResourceLimit, Side::Local, false);
    assert!(t.closing.is_some() && t.next.is_none());
    p.back_from(2, *t.closing.unwrap());
    p.wire.push_back((To::Back(1), Cell::destroy(2, t.prev.unwrap())));
    p.run();
    assert_eq!(p.client_fault, Some(Fault::Destroyed(DestroyReason::ResourceLimit)));
    assert_eq!(p.hop_faults, vec![(1, DestroyReason::Destroyed, Side::Next), (0, DestroyReason::Destroyed, Side::Next)]);

    // A middle's link to the exit closes: the middle's own reason, to the client only.
    let mut p = Pair::built(3);
    let t = p.hops[1].teardown(DestroyReason::ChannelClosed, Side::Next, false);
    assert_eq!((t.prev, t.next), (Some(DestroyReason::Destroyed), None));
    assert!(t.closing.is_some());
    // The guard tells the client directly.
    let t = p.hops[0].teardown(DestroyReason::Timeout, Side::Local, true);
    assert_eq!((t.prev, t.next), (Some(DestroyReason::Timeout), Some(DestroyReason::Timeout)));
    assert!(t.closing.is_none());
}

/// A client circuit and a service circuit, each through two relays, joined at their last
/// relays (the rendezvous point of each side), with the virtual hop on both ends.
fn joined() -> (Pair, Pair) {
    let mut client = Pair::built(2);
    let mut service = Pair::built(2);
    let keys = derive_hop_keys(b"the rendezvous handshake's key seed");
    client.client.add_virtual_hop(&keys);
    service.client.add_virtual_hop(&service_end_keys(&keys));
    service.client.serve();
    client.joined = true;
    service.joined = true;
    (client, service)
}

#[test]
fn the_rendezvous_join_carries_streams_end_to_end() {
    let (mut c, mut s) = joined();
    let cells = c.client.begin(7, &begin("service.test"), c.now).unwrap();
    c.send_from_client(cells);
    c.run();
    assert!(c.at_hops.is_empty(), "the rendezvous point reads nothing");
    cross(&mut c, &mut s);
    s.run();
    assert!(matches!(s.events.pop(), Some(Event::Served { stream: 7, msg: RelayMsg::Begin { .. } })));
    let cells = s.client.encode_last(7, &connected()).unwrap();
    s.send_from_client(cells);
    let cells = s.client.encode_last(7, &RelayMsg::Data(b"hello from the service".to_vec())).unwrap();
    s.send_from_client(cells);
    s.run();
    cross(&mut s, &mut c);
    c.run();
    assert!(matches!(&c.events[..], [Event::Connected { stream: 7, .. }, Event::Stream { stream: 7, msg: RelayMsg::Data(d) }] if d == b"hello from the service"));

    // A RESOLVE across the join is refused by the service end itself.
    let cells = c.client.resolve(9, "x.test").unwrap();
    c.send_from_client(cells);
    c.run();
    cross(&mut c, &mut s);
    s.run();
    s.run();
    assert!(s.events.is_empty(), "answered without the service's involvement");
    cross(&mut s, &mut c);
    c.run();
    assert!(matches!(c.events.last(), Some(Event::Resolved { stream: 9, result: Err(EndReason::ExitPolicy) })));
}

#[test]
fn a_cell_altered_across_the_join_ends_the_receiving_circuit() {
    let (mut c, mut s) = joined();
    let cells = c.client.begin(7, &begin("service.test"), c.now).unwrap();
    c.send_from_client(cells);
    c.run();
    c.unrecognized[0].1[33] ^= 4;
    cross(&mut c, &mut s);
    s.run();
    assert!(client_protocol_fault(&s));
    assert!(s.events.is_empty());
}

/// Two streams' cells from the exit, delivered to the client in every order that keeps each
/// stream's own order (all 70 interleavings of 4 + 4 cells, each delivered at the same
/// instant): every byte arrives, on its stream, in order.
#[test]
fn competing_streams_interleaved_in_the_same_instant_lose_no_byte() {
    let chunk = |s: u16, i: u8| vec![s as u8 * 16 + i; 400];
    for mask in 0u32..256 {
        if mask.count_ones() != 4 {
            continue;
        }
        let mut p = Pair::built(3);
        open_stream(&mut p, 1);
        open_stream(&mut p, 2);
        // Each stream's cells, encrypted by the exit in the order the mask gives (the exit's
        // counter order), then carried to the client.
        let (mut a, mut b) = (0u8, 0u8);
        for bit in 0..8 {
            let (s, i) = if mask & (1 << bit) != 0 { (1, &mut a) } else { (2, &mut b) };
            p.hop_sends(2, s, &RelayMsg::Data(chunk(s, *i)));
            *i += 1;
        }
        p.run();
        assert!(p.client_fault.is_none(), "mask {mask:#b}: {:?}", p.client_fault);
        for s in [1u16, 2] {
            let got: Vec<u8> = p.events.iter().filter_map(|e| match e {
                Event::Stream { stream, msg: RelayMsg::Data(d) } if *stream == s => Some(d.clone()),
                _ => None,
            }).flatten().collect();
            let want: Vec<u8> = (0..4).flat_map(|i| chunk(s, i)).collect();
            assert_eq!(got, want, "mask {mask:#b}, stream {s}");
        }
    }
}
