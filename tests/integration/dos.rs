//! THREATS A23–A26: one attacker address cannot exhaust a relay. Each relay runs in this
//! process (real TCP on loopback, real links and handshakes) with a `[limits]` section sized
//! for the test; the attacker binds 127.0.0.66 and an honest client 127.0.0.77. Counts and
//! times are small (the flood benchmark carries the big sizes); every assertion is about
//! behaviour — refused, closed, still served — never speed.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use allium_client::circuit::{self, BeginRequest, CircError, ResolveRequest};
use allium_net::cell_queue::CellReceiver;
use allium_net::channel::Channel;
use allium_net::limits::memquota::MemQuota;
use allium_net::limits::LIMITS;
use allium_net::link::{self, PeerInfo};
use allium_net::pool::ChannelPool;
use allium_proto::cell::{self, Cell, CellCmd, DestroyReason};
use allium_proto::crypto::ntor::{self, HTYPE_NTOR};
use allium_proto::doc::ConsensusRelay;
use allium_proto::ext::Extensions;
use allium_proto::flow::FlowParams;
use allium_proto::relay_msg::EndReason;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 66));
const HONEST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 77));

async fn relay(name: &str, limits: &str, extra: &str) -> ConsensusRelay {
    relay_with_dir(name, limits, extra).await.0
}

/// [`relay`], and its data directory (to wait on its status).
async fn relay_with_dir(name: &str, limits: &str, extra: &str) -> (ConsensusRelay, PathBuf) {
    crate::support::inproc::start_relay(name, &format!("{extra}\n[limits]\n{limits}\n")).await
}

/// A24: 120 connections from one address; beyond its 20 the relay closes them at once, and
/// another address still builds circuits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a24_connection_flood_from_one_address_is_closed_at_once() {
    let (r, dir) = relay_with_dir("a24", "max_connections_per_address = 20", "").await;
    let before = LIMITS.connections_per_address.load(Ordering::Relaxed);
    let mut socks = Vec::new();
    for _ in 0..120 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(ATTACKER, 0)).unwrap();
        socks.push(
            s.connect(r.address)
                .await
                .expect("TCP connect (the kernel accepts before the relay decides)"),
        );
    }
    // A refused connection is closed by the relay without a byte: EOF (or a reset). An
    // admitted one waits for our handshake (10 s): nothing to read within 3 s. All are read
    // at once.
    let reads: Vec<_> = socks
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                let closed =
                    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => true,
                        Ok(Ok(_)) => panic!("the relay sent bytes before any handshake"),
                        Err(_) => false,
                    };
                (closed, s)
            })
        })
        .collect();
    let mut closed = 0;
    let mut socks = Vec::new();
    for r in reads {
        let (c, s) = r.await.unwrap();
        closed += usize::from(c);
        socks.push(s);
    }
    assert_eq!(
        closed, 100,
        "exactly the connections beyond the per-address cap are closed at once"
    );
    assert!(
        LIMITS.connections_per_address.load(Ordering::Relaxed) >= before + 100,
        "each refusal is counted"
    );
    // Another address is served while the attacker holds its 20.
    let pool = ChannelPool::new(HONEST, None);
    for i in 0..5 {
        circuit::build(&pool, &[&r])
            .await
            .unwrap_or_else(|e| panic!("honest build {i} during the flood: {e}"));
    }
    // Once the attacker's connections close (the relay frees their places when it sees them
    // close: only the honest link is left), its places are free again.
    drop(socks);
    let pool = ChannelPool::new(ATTACKER, None);
    builds_again(&pool, &r, &dir, "or_connections<=1", "the attacker's address was never admitted again").await;
}

/// A24, `max_connections` (over all addresses): with 3 links held on the OR port from three
/// addresses, a connection from a fourth is closed at once without a byte (counted); once one
/// of the links closes, a new one is served. (The handshake timeout is set far beyond the
/// test's wait, so an end of file can only be the cap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a24_or_connections_beyond_the_total_cap_are_closed_at_once() {
    let (r, dir) = relay_with_dir("a24total", "max_connections = 3\nlink_handshake_timeout_secs = 120", "").await;
    let mut held = Vec::new();
    for a in 1..=3u8 {
        held.push(raw_link(IpAddr::from([127, 0, 2, a]), &r).await);
    }
    let (d, why) = (dir.clone(), "3 links never counted".to_string());
    tokio::task::spawn_blocking(move || crate::support::wait_status(&d, "or_connections>=3", Duration::from_secs(30), &why)).await.unwrap();
    let before = LIMITS.connections_total.load(Ordering::Relaxed);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from([127, 0, 2, 4]), 0)).unwrap();
    let mut fourth = socket.connect(r.address).await.expect("the kernel accepts the connection");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(60), fourth.read(&mut buf)).await.expect("a 4th connection was held");
    assert!(matches!(read, Ok(0) | Err(_)), "a 4th connection got {read:?}");
    assert!(LIMITS.connections_total.load(Ordering::Relaxed) > before, "counted");
    held.pop().expect("a link").close();
    let (d, why) = (dir.clone(), "a closed link never freed its place".to_string());
    tokio::task::spawn_blocking(move || crate::support::wait_status(&d, "or_connections<=2", Duration::from_secs(30), &why)).await.unwrap();
    let again = raw_link(IpAddr::from([127, 0, 2, 5]), &r).await;
    assert_ne!(create_answer(&again, &create_message(&r)).await.cmd, CellCmd::Destroy, "a new link is served");
}

/// A24 on the application ports: SOCKS and HTTP CONNECT share one connection limiter. An
/// address holding `max_connections_per_address` connections (3 here, each still sending its
/// request, which may take 10 minutes) has its next ones closed at once without a byte, on
/// either port, and counted; once one of its connections closes, it is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a24_application_ports_close_connections_beyond_the_per_address_cap() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let (socks, http, dir) = crate::support::inproc::start_client("a24app", "[limits]\nmax_connections_per_address = 3\nrequest_timeout_secs = 600").await;
    let mut held = vec![TcpStream::connect(socks).await.unwrap(), TcpStream::connect(socks).await.unwrap(), TcpStream::connect(http).await.unwrap()];
    let (d, why) = (dir.clone(), "3 connections never counted".to_string());
    tokio::task::spawn_blocking(move || crate::support::wait_status(&d, "app_connections>=3", Duration::from_secs(30), &why)).await.unwrap();
    let before = LIMITS.connections_per_address.load(Ordering::Relaxed);
    for (port, name) in [(socks, "SOCKS"), (http, "HTTP CONNECT")] {
        let mut extra = TcpStream::connect(port).await.unwrap();
        let mut buf = [0u8; 16];
        // Closed at once: well before the 10-minute request timeout.
        let read = tokio::time::timeout(Duration::from_secs(60), extra.read(&mut buf)).await.unwrap_or_else(|_| panic!("a 4th {name} connection was held"));
        assert!(matches!(read, Ok(0) | Err(_)), "a 4th {name} connection got {read:?}");
    }
    assert!(LIMITS.connections_per_address.load(Ordering::Relaxed) >= before + 2, "counted");
    // One held connection goes; once the client has let it go, a new one is served: the
    // SOCKS5 greeting is answered.
    drop(held.pop());
    let (d, why) = (dir.clone(), "a closed connection never freed its place".to_string());
    tokio::task::spawn_blocking(move || crate::support::wait_status(&d, "app_connections<=2", Duration::from_secs(30), &why)).await.unwrap();
    let mut again = TcpStream::connect(socks).await.unwrap();
    again.write_all(&[5, 1, 0]).await.unwrap();
    let mut reply = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(60), again.read_exact(&mut reply)).await.expect("no SOCKS reply").expect("closed");
    assert_eq!(reply, [5, 0], "the SOCKS5 greeting answered");
}

/// A23: an address holding 4 links sends CREATEs far faster than its rate: it gets its burst
/// (plus the rate over the time taken), then only DESTROY(RESOURCELIMIT), for the defense
/// period; an honest address builds throughout; the mark expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a23_create_flood_gets_its_burst_then_resource_limit() {
    let r = relay("a23", "create_rate_per_address = 1\ncreate_burst_per_address = 20\ncreate_min_links = 3\ncreate_defense_secs = 3", "").await;
    let before = LIMITS.create_rate.load(Ordering::Relaxed);
    let pools: Vec<ChannelPool> = (0..4).map(|_| ChannelPool::new(ATTACKER, None)).collect();
    // Open the 4 links first (each pool dials its own).
    let mut circs = Vec::new();
    let started = Instant::now();
    let (mut built, mut refused) = (0u32, 0u32);
    for i in 0..120 {
        match circuit::build(&pools[i % 4], &[&r]).await {
            Ok(c) => {
                built += 1;
                circs.push(c);
            }
            Err(CircError::Destroyed(DestroyReason::ResourceLimit)) => refused += 1,
            Err(e) => panic!("CREATE {i}: expected CREATED or DESTROY(RESOURCELIMIT), got {e}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // The first 3 CREATEs come before the address holds 3 links (not yet limited), then the
    // burst of 20, then 1 per second of the flood; once marked, nothing.
    let most = 3 + 20 + secs.ceil() as u32;
    assert!(
        built <= most,
        "{built} CREATED in {secs:.1} s (at most {most})"
    );
    assert!(refused >= 120 - most, "{refused} refused");
    assert!(LIMITS.create_rate.load(Ordering::Relaxed) >= before + u64::from(refused));
    // Marked: refused even at a slow pace.
    assert!(matches!(
        circuit::build(&pools[0], &[&r]).await,
        Err(CircError::Destroyed(DestroyReason::ResourceLimit))
    ));
    // An honest address is unaffected.
    let honest = ChannelPool::new(HONEST, None);
    for i in 0..10 {
        circuit::build(&honest, &[&r])
            .await
            .unwrap_or_else(|e| panic!("honest build {i} during the flood: {e}"));
    }
    // The mark expires after the defense period (3 s): it was set before the check above, so
    // once that long has passed since, the address builds again (the passing of time is what
    // is tested here, not a wait for something to happen).
    tokio::time::sleep(Duration::from_secs(3)).await;
    circuit::build(&pools[1], &[&r]).await.unwrap_or_else(|e| panic!("the mark did not expire after the defense period: {e}"));
    drop(circs);
}

/// A23 (replays): a CREATE whose handshake message the relay has seen before is answered
/// DESTROY(PROTOCOL) and counted (`create_replays`), on the link it came on and on any other,
/// before any public-key work (no CREATED comes back); a fresh message is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a23_a_replayed_create_is_refused_on_any_link_and_counted() {
    let r = relay("a23replay", "", "").await;
    let is_replay_refusal = |c: &Cell| c.cmd == CellCmd::Destroy && DestroyReason::from_u8(c.payload[0]) == DestroyReason::Protocol;
    let attacker = raw_link(ATTACKER, &r).await;
    let captured = create_message(&r);
    let first = create_answer(&attacker, &captured).await;
    assert_ne!(first.cmd, CellCmd::Destroy, "a fresh CREATE was refused");
    let before = LIMITS.create_replays.load(Ordering::Relaxed);
    let again = create_answer(&attacker, &captured).await;
    assert!(is_replay_refusal(&again), "a replay on the same link got {:?}", again.cmd);
    // Another link, from another address: the relay remembers messages, not links.
    let other = raw_link(HONEST, &r).await;
    let elsewhere = create_answer(&other, &captured).await;
    assert!(is_replay_refusal(&elsewhere), "a replay on another link got {:?}", elsewhere.cmd);
    assert!(LIMITS.create_replays.load(Ordering::Relaxed) >= before + 2, "replays counted");
    // Fresh messages on the same links are answered.
    assert_ne!(create_answer(&other, &create_message(&r)).await.cmd, CellCmd::Destroy, "a fresh CREATE after the replays was refused");
    assert_ne!(create_answer(&attacker, &create_message(&r)).await.cmd, CellCmd::Destroy, "the replaying link cannot build any more");
}

/// A link of our own to `r` from `from`, for sending CREATE cells by hand.
async fn raw_link(from: IpAddr, r: &ConsensusRelay) -> Channel {
    let peer = PeerInfo { addr: r.address, identity: r.identity, link_key: r.link_key };
    Channel::spawn(link::connect(from, &peer, None).await.expect("a link"), None, &MemQuota::default_budget())
}

/// A fresh ntor CREATE message for `r`, as a client makes it.
fn create_message(r: &ConsensusRelay) -> Vec<u8> {
    let mut ext = Vec::new();
    Extensions(vec![FlowParams::default().to_extension()]).encode(&mut ext);
    ntor::client_start(&mut rand::rngs::OsRng, &r.identity, &r.onion_key, &ext).1
}

/// Sends `msg` as a CREATE on a new circuit of `chan`.
async fn send_create(chan: &Channel, msg: &[u8]) -> CellReceiver {
    let (id, rx) = chan.open_circuit().expect("a circuit id");
    for c in cell::create_cells(id, HTYPE_NTOR, msg) {
        chan.send(c).await.expect("the link is open");
    }
    rx
}

/// The answer to a CREATE carrying `msg` on a new circuit of `chan`.
async fn create_answer(chan: &Channel, msg: &[u8]) -> Cell {
    first_answer(send_create(chan, msg).await).await
}

async fn first_answer(mut rx: CellReceiver) -> Cell {
    tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("no answer to a CREATE").expect("the link closed")
}

/// A client link holds at most its circuit cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a23_a_client_link_holds_at_most_its_circuit_cap() {
    let (r, dir) = relay_with_dir("a23cap", "max_circuits_per_client_link = 8", "").await;
    let pool = ChannelPool::new(ATTACKER, None);
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(circuit::build(&pool, &[&r]).await.expect("within the cap"));
    }
    match circuit::build(&pool, &[&r]).await {
        Err(CircError::Destroyed(DestroyReason::ResourceLimit)) => {}
        other => panic!("a 9th circuit on one client link: {:?}", other.err()),
    }
    // Closing one frees its place.
    drop(open.pop());
    builds_again(&pool, &r, &dir, "client_circuits<=7", "a closed circuit never freed its place").await;
}

/// A23 (circuits per address): links of their own do not give one address more circuits than
/// `max_circuits_per_address` over all of them; a closed circuit frees its place, and another
/// address is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a23_an_address_holds_at_most_its_circuit_cap_over_all_its_links() {
    let (r, dir) = relay_with_dir("a23addr", "max_circuits_per_client_link = 8\nmax_circuits_per_address = 10", "").await;
    // Two links from one address (one pool each), under the rate limit's link count.
    let (first, second) = (ChannelPool::new(ATTACKER, None), ChannelPool::new(ATTACKER, None));
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(circuit::build(&first, &[&r]).await.expect("within the link cap"));
    }
    for _ in 0..2 {
        open.push(circuit::build(&second, &[&r]).await.expect("within the address cap"));
    }
    let before = LIMITS.circuits_per_address.load(Ordering::Relaxed);
    match circuit::build(&second, &[&r]).await {
        Err(CircError::Destroyed(DestroyReason::ResourceLimit)) => {}
        other => panic!("an 11th circuit from one address, its link holding 2: {:?}", other.err()),
    }
    assert!(LIMITS.circuits_per_address.load(Ordering::Relaxed) > before, "counted");
    circuit::build(&ChannelPool::new(HONEST, None), &[&r]).await.unwrap_or_else(|e| panic!("another address was refused: {e}"));
    // Once that circuit and one of the attacker's have closed, the attacker has a place again.
    drop(open.pop());
    builds_again(&second, &r, &dir, "client_circuits<=9", "a closed circuit never freed its place").await;
}

/// A25: a burst of CREATEs from many addresses against a tiny handshake queue: every CREATE is
/// answered (CREATED, or DESTROY(RESOURCELIMIT) when the queue is over capacity), nothing hangs,
/// and a circuit opened before the burst still carries a directory stream afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a25_handshake_burst_is_answered_or_refused_never_queued_without_bound() {
    let r = relay(
        "a25",
        "handshake_queue = 2\nhandshake_queue_delay_ms = 5",
        "",
    )
    .await;
    let existing = circuit::build(&ChannelPool::new(HONEST, None), &[&r])
        .await
        .expect("a circuit before the burst");
    let mut tasks = Vec::new();
    for a in 0..40u8 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let pool = ChannelPool::new(IpAddr::from([127, 0, 1, a + 1]), None);
            let mut outcomes = Vec::new();
            for _ in 0..5 {
                outcomes.push(circuit::build(&pool, &[&r]).await.map(|_| ()));
            }
            outcomes
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        for o in tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("every CREATE answered")
            .unwrap()
        {
            match o {
                Ok(()) => ok += 1,
                Err(CircError::Destroyed(DestroyReason::ResourceLimit)) => refused += 1,
                Err(e) => panic!("a CREATE got neither CREATED nor DESTROY(RESOURCELIMIT): {e}"),
            }
        }
    }
    assert_eq!(ok + refused, 200);
    eprintln!("a25: {ok} CREATED, {refused} refused by the handshake queue");
    // 100 CREATEs arriving together on one link: the queue of 2 cannot hold them, so the
    // excess is refused at once with DESTROY(RESOURCELIMIT) and counted, never queued; every
    // one is answered.
    let counted = || LIMITS.handshake_queue_full.load(Ordering::Relaxed) + LIMITS.handshake_queue_delay.load(Ordering::Relaxed);
    let counted_before = counted();
    let burst = raw_link(IpAddr::from([127, 0, 1, 99]), &r).await;
    let messages: Vec<Vec<u8>> = (0..100).map(|_| create_message(&r)).collect();
    let mut waiting = Vec::new();
    for m in &messages {
        waiting.push(send_create(&burst, m).await);
    }
    let (mut created, mut limited) = (0, 0);
    for rx in waiting {
        let c = first_answer(rx).await;
        match c.cmd {
            CellCmd::Destroy => {
                assert_eq!(DestroyReason::from_u8(c.payload[0]), DestroyReason::ResourceLimit, "a refused CREATE's reason");
                limited += 1;
            }
            _ => created += 1,
        }
    }
    eprintln!("a25 one-link burst: {created} CREATED, {limited} refused");
    assert!(limited > 0, "100 CREATEs at once against a handshake queue of 2: none refused");
    assert!(counted() >= counted_before + limited, "refusals counted");
    let mut dir = existing
        .begin_dir()
        .await
        .expect("the circuit opened before the burst still opens streams");
    use tokio::io::AsyncWriteExt;
    dir.write_all(b"GET /allium/v1/consensus HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = dir.read_to_end(&mut resp).await;
    assert!(
        resp.starts_with(b"HTTP/1.0 "),
        "a directory answer on the old circuit: {:?}",
        String::from_utf8_lossy(&resp[..resp.len().min(60)])
    );
}

/// A26: one circuit sends 60 BEGINs at once to an exit whose per-circuit burst is 10: the rest
/// get END(RESOURCELIMIT); another circuit still opens streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a26_begin_flood_on_one_circuit_gets_resource_limit() {
    let (target, r, pool, c) =
        exit_circuit("a26", "begin_rate_per_circuit = 1\nbegin_burst_per_circuit = 10").await;
    let before = LIMITS.begin_rate.load(Ordering::Relaxed);
    let started = Instant::now();
    let outcomes = begin_many(&c, target.addr(), 60).await;
    let secs = started.elapsed().as_secs_f64();
    let (connected, limited) = connected_and_limited(&outcomes);
    assert_eq!(
        connected + limited,
        60,
        "every BEGIN was CONNECTED or END(RESOURCELIMIT): {outcomes:?}"
    );
    assert!(
        connected <= 10 + secs.ceil() as usize,
        "{connected} connected in {secs:.1} s"
    );
    assert!(LIMITS.begin_rate.load(Ordering::Relaxed) >= before + limited as u64);
    another_circuit_opens_streams(&pool, &r, &target, 3).await;
}

/// `limits.max_streams_per_circuit`: BEGINs beyond the streams a circuit may carry get END
/// RESOURCELIMIT (counted), the circuit stays usable, and another circuit is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a26_streams_beyond_the_circuit_cap_get_resource_limit() {
    let (target, r, pool, c) = exit_circuit("a26s", "max_streams_per_circuit = 4").await;
    let before = LIMITS.streams_per_circuit.load(Ordering::Relaxed);
    // All 10 stay open until every answer is in: at most 4 are CONNECTED.
    let outcomes = begin_many(&c, target.addr(), 10).await;
    assert_eq!(
        connected_and_limited(&outcomes),
        (4, 6),
        "4 CONNECTED, the rest END(RESOURCELIMIT): {outcomes:?}"
    );
    assert!(LIMITS.streams_per_circuit.load(Ordering::Relaxed) >= before + 6);
    another_circuit_opens_streams(&pool, &r, &target, 4).await;
}

/// `limits.max_exit_connections`: the exit opens at most 3 outbound connections in all; the
/// BEGINs beyond them, on any circuit, get END RESOURCELIMIT (counted) while they are open, and
/// once they close the exit connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a26_exit_connections_beyond_the_cap_get_resource_limit() {
    let target = crate::support::http::FileServer::start(vec![("/x", b"x".to_vec())]);
    let (r, dir) = relay_with_dir("a26x", "max_exit_connections = 3", "[exit]\nenabled = true\npolicy = [\"accept *:*\"]").await;
    let pool = ChannelPool::new(HONEST, None);
    let (first, second) = (circuit::build(&pool, &[&r]).await.expect("a circuit"), circuit::build(&pool, &[&r]).await.expect("a circuit"));
    let before = LIMITS.exit_connections.load(Ordering::Relaxed);
    // Held open (their application sockets with them) while the second circuit asks.
    let (outcomes, held) = begin_many_held(&first, target.addr(), 5).await;
    assert_eq!(connected_and_limited(&outcomes), (3, 2), "3 CONNECTED, then END(RESOURCELIMIT): {outcomes:?}");
    assert_eq!(connected_and_limited(&begin_many(&second, target.addr(), 1).await), (0, 1), "the cap is the exit's, not the circuit's");
    assert!(LIMITS.exit_connections.load(Ordering::Relaxed) >= before + 3, "counted");
    // The held streams close: their connections free their places.
    drop(held);
    let (d, why) = (dir.clone(), "closed streams never freed their exit connections".to_string());
    tokio::task::spawn_blocking(move || crate::support::wait_status(&d, "exit_connections<=0", Duration::from_secs(30), &why)).await.unwrap();
    assert_eq!(connected_and_limited(&begin_many(&second, target.addr(), 3).await), (3, 0), "the exit connects again");
}

/// `limits.max_resolves_per_circuit`: with 4 RESOLVEs waiting on the exit's resolver, the next
/// 6 on that circuit are answered RESOLVED RESOURCELIMIT at once (counted); once the resolver
/// answers, the 4 get their addresses and their places are free again; another circuit was
/// never limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a26_resolves_beyond_the_circuit_cap_get_resource_limit() {
    let (_target, r, pool, c) = exit_circuit("a26r", "max_resolves_per_circuit = 4").await;
    let before = LIMITS.resolves_per_circuit.load(Ordering::Relaxed);
    allium_relay::test_hooks::hold_resolves(&r.identity, true);
    let mut waiting = Vec::new();
    for _ in 0..10 {
        waiting.push(resolve(&c).await);
    }
    for w in waiting.split_off(4) {
        assert_eq!(answer(w).await, Err(EndReason::ResourceLimit), "a RESOLVE beyond the 4 in flight");
    }
    assert!(LIMITS.resolves_per_circuit.load(Ordering::Relaxed) >= before + 6);
    let other = circuit::build(&pool, &[&r]).await.expect("another circuit");
    let held_elsewhere = resolve(&other).await;
    allium_relay::test_hooks::hold_resolves(&r.identity, false);
    let localhost = Ok(vec![IpAddr::from([127, 0, 0, 1])]);
    for w in waiting {
        assert_eq!(answer(w).await, localhost, "a RESOLVE within the cap is answered");
    }
    assert_eq!(answer(held_elsewhere).await, localhost, "the other circuit's RESOLVE");
    for _ in 0..4 {
        let w = resolve(&c).await;
        assert_eq!(answer(w).await, localhost, "answered RESOLVEs give their places back");
    }
}

type ResolveAnswer = Result<Vec<IpAddr>, EndReason>;

/// Sends RESOLVE localhost on `c` (the exit never asks a resolver for it).
async fn resolve(c: &circuit::CircHandle) -> oneshot::Receiver<ResolveAnswer> {
    let (done, rx) = oneshot::channel();
    assert!(c.resolve(ResolveRequest { host: "localhost".into(), done }).await.is_ok(), "the circuit closed");
    rx
}

async fn answer(w: oneshot::Receiver<ResolveAnswer>) -> ResolveAnswer {
    tokio::time::timeout(Duration::from_secs(60), w)
        .await
        .expect("a RESOLVE answered")
        .expect("the circuit answered")
}

/// A file server, an exit in this process with the `[limits]` given, and an honest client's
/// circuit to it.
async fn exit_circuit(
    name: &str,
    limits: &str,
) -> (
    crate::support::http::FileServer,
    ConsensusRelay,
    ChannelPool,
    circuit::CircHandle,
) {
    let target = crate::support::http::FileServer::start(vec![("/x", b"x".to_vec())]);
    let r = relay(name, limits, "[exit]\nenabled = true\npolicy = [\"accept *:*\"]").await;
    let pool = ChannelPool::new(HONEST, None);
    let c = circuit::build(&pool, &[&r])
        .await
        .expect("a circuit to the exit");
    (target, r, pool, c)
}

/// How many BEGINs were CONNECTED and how many got END(RESOURCELIMIT).
fn connected_and_limited(outcomes: &[Result<(), EndReason>]) -> (usize, usize) {
    let connected = outcomes.iter().filter(|o| o.is_ok()).count();
    let limited = outcomes
        .iter()
        .filter(|o| **o == Err(EndReason::ResourceLimit))
        .count();
    (connected, limited)
}

/// A fresh circuit to `r` opens `n` streams to `target`: the limit that acted was another
/// circuit's.
async fn another_circuit_opens_streams(
    pool: &ChannelPool,
    r: &ConsensusRelay,
    target: &crate::support::http::FileServer,
    n: usize,
) {
    let other = circuit::build(pool, &[r]).await.expect("another circuit");
    assert!(
        begin_many(&other, target.addr(), n)
            .await
            .iter()
            .all(|o| o.is_ok()),
        "another circuit is unaffected"
    );
}

/// Sends `n` BEGINs to `target` on `c` at once (each with an application socket of its own)
/// and returns how each ended.
async fn begin_many(c: &circuit::CircHandle, target: SocketAddr, n: usize) -> Vec<Result<(), EndReason>> {
    begin_many_held(c, target, n).await.0
}

/// [`begin_many`], and the application ends of the streams, which keep them open until dropped.
async fn begin_many_held(c: &circuit::CircHandle, target: SocketAddr, n: usize) -> (Vec<Result<(), EndReason>>, Vec<tokio::net::TcpStream>) {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut waits = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..n {
        let ours = tokio::net::TcpStream::connect(app.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = app.accept().await.unwrap();
        keep.push(ours);
        let (done, rx) = oneshot::channel();
        let req = BeginRequest { host: target.ip().to_string(), port: target.port(), done };
        assert!(c.begin(req).await.is_ok(), "the circuit closed");
        waits.push((rx, theirs));
    }
    let mut out = Vec::new();
    for (w, theirs) in waits {
        out.push(
            match tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("a BEGIN answered")
                .expect("the circuit answered")
            {
                Ok(c) => {
                    c.stream.splice(theirs, vec![]);
                    Ok(())
                }
                Err(reason) => Err(reason),
            },
        );
    }
    (out, keep)
}

/// A24 at an authority's directory port (a real test network): 60 silent connections from
/// one address. Beyond the per-address cap (50) they are closed at once; the rest are closed
/// once they have been silent for `dir_idle_timeout_secs` (15 s), and the directory keeps
/// answering another address meanwhile.
#[test]
fn a24_directory_port_closes_silent_connections() {
    let net = crate::support::testnet::Testnet::start(&[]);
    let auth = net
        .with_role("authority")
        .next()
        .expect("an authority")
        .addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let mut reads = Vec::new();
        for _ in 0..60 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::new(ATTACKER, 0)).unwrap();
            let mut s = s.connect(auth).await.expect("TCP connect");
            reads.push(tokio::spawn(async move {
                let mut b = [0u8; 1];
                // Silent: wait for the authority to close it (EOF or reset), up to 90 s.
                let r = tokio::time::timeout(Duration::from_secs(90), s.read(&mut b)).await;
                assert!(
                    matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                    "a silent directory connection got {r:?}"
                );
                Instant::now()
            }));
        }
        // Another address is answered while they are open.
        let honest = tokio::net::TcpSocket::new_v4().unwrap();
        honest.bind(SocketAddr::new(HONEST, 0)).unwrap();
        let mut h = honest.connect(auth).await.unwrap();
        use tokio::io::AsyncWriteExt;
        h.write_all(b"GET /allium/v1/consensus HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), h.read_to_end(&mut resp))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            resp.starts_with(b"HTTP/1."),
            "{:?}",
            String::from_utf8_lossy(&resp[..resp.len().min(80)])
        );
        let mut closed_at: Vec<Duration> = Vec::new();
        for r in reads {
            closed_at.push(
                r.await
                    .expect("every silent connection is closed")
                    .duration_since(started),
            );
        }
        closed_at.sort();
        // 10 closed at once (well before the idle timeout), 50 after it.
        assert!(
            closed_at[9] < Duration::from_secs(14),
            "the 10 over the cap were not closed at once: {closed_at:?}"
        );
        assert!(
            closed_at[10] >= Duration::from_secs(14),
            "a connection under the cap closed before its idle timeout: {closed_at:?}"
        );
    });
}

/// Idle state expires: a circuit on which nothing moved for `circuit_idle_timeout_secs` is
/// destroyed by the relay, and a link left without circuits is closed after
/// `link_idle_timeout_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_circuits_and_links_are_closed() {
    let r = relay(
        "idle",
        "circuit_idle_timeout_secs = 1\nlink_idle_timeout_secs = 2",
        "",
    )
    .await;
    let (circuits, links) = (
        LIMITS.idle_circuits_closed.load(Ordering::Relaxed),
        LIMITS.idle_links_closed.load(Ordering::Relaxed),
    );
    let peer = allium_net::link::PeerInfo {
        addr: r.address,
        identity: r.identity,
        link_key: r.link_key,
    };
    let link = allium_net::link::connect(HONEST, &peer, None)
        .await
        .expect("a link");
    let chan = allium_net::channel::Channel::spawn(link, None, &allium_net::limits::memquota::MemQuota::default_budget());
    let pool = ChannelPool::new(HONEST, None);
    let c = circuit::build(&pool, &[&r]).await.expect("a circuit");
    // The relay destroys the idle circuit: the circuit task ends and its control channel closes.
    tokio::time::timeout(Duration::from_secs(60), c.recv_control())
        .await
        .expect("the idle circuit was never destroyed");
    assert!(c.is_closed());
    // The link `chan` never carried a circuit: the relay closes it.
    tokio::time::timeout(Duration::from_secs(60), chan.closed())
        .await
        .expect("the idle link was never closed");
    assert!(LIMITS.idle_circuits_closed.load(Ordering::Relaxed) > circuits);
    assert!(LIMITS.idle_links_closed.load(Ordering::Relaxed) > links);
}

/// Waits (on the relay's status, within 30 s) until `freed` holds — the relay frees a place
/// asynchronously once it sees a connection or circuit close — then builds a 1-hop circuit on
/// `pool`, which must succeed.
async fn builds_again(pool: &ChannelPool, r: &ConsensusRelay, dir: &Path, freed: &str, what: &str) {
    let (dir, freed, why) = (dir.to_path_buf(), freed.to_string(), what.to_string());
    tokio::task::spawn_blocking(move || crate::support::wait_status(&dir, &freed, Duration::from_secs(30), &why)).await.unwrap();
    circuit::build(pool, &[r]).await.unwrap_or_else(|e| panic!("{what}: {e}"));
}
