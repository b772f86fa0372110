//! THREATS A27 (sniper: a client that stops reading its guard link, or forges SENDMEs) and A28 (an application that
//! reads slowly). A guard and an exit run in this process (real links on loopback) so the test
//! can read the guard's memory budget; the attacker binds 127.0.0.66, an honest client
//! 127.0.0.77. Assertions are about behaviour and bytes held, never speed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_client::circuit::{self, CircHandle};
use allium_net::limits::memquota::MemQuota;
use allium_net::limits::LIMITS;
use allium_net::pool::ChannelPool;
use allium_proto::doc::ConsensusRelay;
use allium_proto::flow::FlowParams;
use allium_proto::relay_msg::RelayMsg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::http::{pseudo_random, FileServer};
use crate::support::proxy::stalling_proxy;
use crate::support::streams::{begin, begin_small_buffers};
use crate::support::inproc::start_relay_with_quota;

const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 66));
const HONEST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 77));
/// Another client, whose circuits share the relays of a test's first.
const OTHER_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 78));
const BODY: usize = 4 << 20;
/// The circuit window A28's circuit asks for.
const WINDOW_CELLS: u32 = 1000;

/// A guard with a `max_queued_mib` budget and an exit, both in this process.
async fn guard_and_exit(name: &str, guard_mib: u64) -> (ConsensusRelay, Arc<MemQuota>, ConsensusRelay, Arc<MemQuota>) {
    let (guard, _, gq) = start_relay_with_quota(&format!("{name}g"), &format!("[limits]\nmax_queued_mib = {guard_mib}\n")).await;
    let (exit, _, eq) = start_relay_with_quota(&format!("{name}e"), "[exit]\nenabled = true\npolicy = [\"accept *:*\"]\n").await;
    (guard, gq, exit, eq)
}

/// A27: a client builds 16 circuits through one guard link, starts two 4 MiB downloads on each,
/// then stops reading the link (a proxy in front of the guard stops taking its bytes). The exit
/// fills both windows of every circuit, and the cells pile up at the guard. Over its 1 MiB
/// budget the guard closes what holds the oldest queued cells, gets back under budget, and an
/// honest client's download through the same guard and exit still arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a27_a_client_that_stops_reading_cannot_make_the_guard_queue_beyond_its_budget() {
    let files = FileServer::start(vec![("/big", pseudo_random(BODY, 27))]);
    let (guard, quota, exit, _) = guard_and_exit("a27", 1).await;
    let (proxy, stall) = stalling_proxy(guard.address).await;
    let via_proxy = ConsensusRelay { address: proxy, ..guard.clone() };

    let circuits = stalled_downloads(&via_proxy, &exit, &files, 16, 2, &stall).await;
    let reclaimed = tokio::time::timeout(Duration::from_secs(60), quota.wait_until(|q| q.closed() > 0)).await;
    assert!(reclaimed.is_ok(), "the guard never reclaimed: {} of {} bytes queued (peak {})", quota.used(), quota.limit(), quota.peak());
    // What it closed is released: the guard is back under budget.
    let under = tokio::time::timeout(Duration::from_secs(30), quota.wait_until(|q| q.used() <= q.limit())).await;
    assert!(under.is_ok(), "still {} of {} bytes queued", quota.used(), quota.limit());
    // Cells charged while a reclaim was already running may pass the budget briefly, never by
    // as much as the attack offered (16 circuits × 1,000 cells ≈ 8 MiB).
    assert!(quota.peak() <= 2 * quota.limit(), "peak {} of a {} budget", quota.peak(), quota.limit());

    let honest = ChannelPool::new(HONEST, None);
    let c = circuit::build(&honest, &[&guard, &exit]).await.expect("an honest circuit");
    let body = fetch(&c, files.addr(), "/big").await;
    assert!(body == files.file("/big"), "the honest download arrived whole ({} bytes)", body.len());
    drop(circuits);
}

/// A27 below the budget: a client builds 32 circuits through one guard link, starts downloads
/// and stops reading the link, with the guard's budget far above what the attack queues
/// (32 × a 500-cell window ≈ 8 MiB, more than the kernel's socket buffers take). The
/// guard's writes to that link make no progress, and after `link_write_timeout_secs` (2 s
/// here) it closes the link (counted): every circuit on it ends and their queued cells are
/// released, where before the link, its circuits and their cells stayed for as long as the
/// attacker held the connection. An honest download through the same guard still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a27_a_link_whose_peer_takes_no_bytes_is_closed_after_the_write_timeout() {
    let files = FileServer::start(vec![("/big", pseudo_random(BODY, 28))]);
    let (guard, _, quota) = start_relay_with_quota("a27wg", "[limits]\nmax_queued_mib = 256\nlink_write_timeout_secs = 2\n").await;
    let (exit, _, _) = start_relay_with_quota("a27we", "[exit]\nenabled = true\npolicy = [\"accept *:*\"]\n").await;
    let (proxy, stall) = stalling_proxy(guard.address).await;
    let via_proxy = ConsensusRelay { address: proxy, ..guard.clone() };
    let closed_before = LIMITS.stalled_links_closed.load(Ordering::SeqCst);

    let circuits = stalled_downloads(&via_proxy, &exit, &files, 32, 1, &stall).await;
    // Cells pile up at the guard, under its budget, until the write timeout closes the link;
    // then everything the attacker's circuits held is released (the exit's link to the guard
    // may still carry a few cells in flight toward circuits that are gone: they are dropped).
    // The link is counted as closed before its circuits' cells are released.
    let stalled_closed = || LIMITS.stalled_links_closed.load(Ordering::SeqCst) > closed_before;
    let released = tokio::time::timeout(Duration::from_secs(90), quota.wait_until(|q| q.used() == 0 && stalled_closed())).await;
    assert!(released.is_ok(), "the stalled link closed: {}; {} bytes still queued (peak {})", stalled_closed(), quota.used(), quota.peak());
    assert!(quota.peak() > 0, "nothing queued at the guard");
    assert_eq!(quota.closed(), 0, "the write timeout acted, not the memory budget");

    let honest = ChannelPool::new(HONEST, None);
    let c = circuit::build(&honest, &[&guard, &exit]).await.expect("an honest circuit");
    let body = fetch(&c, files.addr(), "/big").await;
    assert!(body == files.file("/big"), "the honest download arrived whole ({} bytes)", body.len());
    drop(circuits);
}

/// A28: an application reads a 4 MiB download at ~64 KiB/s for 3 s, then at full speed. While it
/// is still read slowly, another client's circuit through the same relays fetches the whole
/// file. Flow
/// control holds the exit back meanwhile: neither relay ever queues more than two of the
/// circuit's windows (DATA read from the socket and held back for the window, which the stream
/// readers stop at one window, plus cells sent within the window that the link writer has not
/// written yet: on a loaded machine a writer may lag by most of a window; 1.27 windows seen
/// with 8 test networks at once), and the download completes intact. The circuit asks for a window of
/// 1,000 cells (the default is 5,000, which the congestion window reaches only on a path that
/// carries it; on a loaded machine it may grow that far here), so the bound tells: without
/// flow control the exit would take in the whole file, about 8,000 cells (four times the bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a28_a_slow_reader_holds_each_relay_to_its_window_and_completes() {
    let files = FileServer::start(vec![("/big", pseudo_random(BODY, 28))]);
    let (guard, gq, exit, eq) = guard_and_exit("a28", 256).await;
    let pool = ChannelPool::new(HONEST, None);
    let flow = FlowParams { circuit_window: WINDOW_CELLS, ..FlowParams::default() };
    let c = circuit::build_within(&pool, &[&guard, &exit], Duration::from_secs(60), flow).await.expect("a circuit");
    let mut app = begin(&c, files.addr()).await.expect("CONNECTED");
    app.write_all(b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let slow_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < slow_until {
        let n = app.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // What the relays held for the slow stream alone.
    let peaks = [("guard", gq.peak()), ("exit", eq.peak())];
    // Another circuit through the same relays downloads the whole file while this stream is
    // still read slowly: the slow reader costs it nothing but its own window.
    let other = {
        let (files_addr, guard, exit) = (files.addr(), guard.clone(), exit.clone());
        tokio::spawn(async move {
            let c = circuit::build(&ChannelPool::new(OTHER_CLIENT, None), &[&guard, &exit]).await.expect("another circuit");
            fetch(&c, files_addr, "/big").await
        })
    };
    while !other.is_finished() {
        let n = app.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let other_body = tokio::time::timeout(Duration::from_secs(120), other).await.expect("the other download never ended").unwrap();
    assert!(other_body == files.file("/big"), "the other circuit's download arrived whole ({} bytes)", other_body.len());
    app.read_to_end(&mut got).await.unwrap();
    let body = strip_head(&got);
    assert!(body == files.file("/big"), "the download arrived whole ({} bytes)", body.len());
    let window = WINDOW_CELLS as usize * allium_net::limits::memquota::CELL_MEM;
    for (name, peak) in peaks {
        assert!(peak <= 2 * window, "the {name} queued {peak} bytes at most; a window is {window}");
    }
}

/// A27(b): a client that has not read the data cannot acknowledge it. A circuit SENDME must echo
/// the random token of the DATA cell that completed the increment it acknowledges. The client
/// stops consuming (its application does not read, and its socket buffers are tiny) and waits
/// until it holds 150 received cells — so the exit has at least that many unacknowledged and a
/// SENDME that merely fits the window would open it — then sends a forged one: the exit destroys
/// the circuit, and the application's stream ends short of the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a27_a_forged_circuit_sendme_closes_the_circuit() {
    let files = FileServer::start(vec![("/big", pseudo_random(BODY, 127))]);
    let (guard, _, exit, _) = guard_and_exit("a27b", 256).await;
    let attacker = ChannelPool::new(ATTACKER, None);
    let c = circuit::build(&attacker, &[&guard, &exit]).await.expect("a circuit");
    let mut app = begin_small_buffers(&c, files.addr()).await.expect("CONNECTED");
    app.write_all(b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
    let held = attacker.mem_quota();
    let want = 150 * allium_net::limits::memquota::CELL_MEM;
    let holds = tokio::time::timeout(Duration::from_secs(60), held.wait_until(|q| q.used() >= want)).await;
    assert!(holds.is_ok(), "the client holds only {} bytes of unconsumed cells", held.used());
    c.send_control(RelayMsg::Sendme { token: Some(rand::random()) }).await.expect("the SENDME is sent");
    let closed = tokio::time::timeout(Duration::from_secs(60), c.closed()).await;
    assert!(closed.is_ok(), "the exit took a forged SENDME: the circuit is still open");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), app.read_to_end(&mut got)).await.expect("the stream ended");
    assert!(got.len() < BODY, "the whole file arrived although the circuit was destroyed");
}

/// The attacker (127.0.0.66) builds `n` circuits through `via_proxy` to `exit` with `streams`
/// downloads of `/big` each, and from the moment the downloads are asked for its proxy never
/// reads the guard's bytes again. The circuits and the applications' sockets are returned
/// (dropping them does not end the stall: the proxy holds the connection).
async fn stalled_downloads(
    via_proxy: &ConsensusRelay,
    exit: &ConsensusRelay,
    files: &FileServer,
    n: usize,
    streams: usize,
    stall: &tokio::sync::watch::Sender<bool>,
) -> (Vec<CircHandle>, Vec<tokio::net::TcpStream>) {
    let attacker = ChannelPool::new(ATTACKER, None);
    let mut apps = Vec::new();
    let mut circuits = Vec::new();
    for _ in 0..n {
        let c = circuit::build(&attacker, &[via_proxy, exit]).await.expect("an attacker circuit");
        for _ in 0..streams {
            apps.push(begin(&c, files.addr()).await.expect("CONNECTED"));
        }
        circuits.push(c);
    }
    // From here the guard's bytes toward the attacker are never read.
    stall.send_replace(true);
    for app in &mut apps {
        app.write_all(b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
    }
    (circuits, apps)
}

/// `GET path` over a new stream on `c`; the body.
async fn fetch(c: &CircHandle, target: SocketAddr, path: &str) -> Vec<u8> {
    let mut app = begin(c, target).await.expect("CONNECTED");
    app.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), app.read_to_end(&mut got)).await.expect("the download finished").unwrap();
    strip_head(&got).to_vec()
}

fn strip_head(resp: &[u8]) -> &[u8] {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head") + 4;
    &resp[end..]
}
