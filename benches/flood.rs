//! `cargo bench --bench flood`: attacks from THREATS A23–A25 and A27 against one relay of a real test
//! network (`allium testnet`, each node its own process), at bounded size, and what the
//! relay does meanwhile (A24 both as idle authenticated links and as connections stalled in the
//! link handshake). For each attack it prints the relay's RSS before, during and after,
//! honest 1-hop circuit build times (median and p99; 40 builds 50 ms apart) during the attack beside idle, the
//! round-trip p99 of a directory request on a circuit opened before the attack beside idle,
//! and what the attacker got. Then (A29) an introduction flood against an onion service: what
//! its introduction points forwarded, the share of honest connections that got through, and
//! the service's CPU and RSS. Then directory attacks against an authority
//! (`flood/directory.rs`): slow connections, descriptors for one address, 8 MiB votes; and
//! 10,000 junk onion descriptors against an HSDir (`flood/hsdir.rs`). Last (A30), peer-chosen
//! circuit ids against random ones in a link's table (`flood/circuit_ids.rs`).
//!
//! The attacker binds addresses in 127.0.3.0/24 to 127.0.5.0/24 (many sources) or 127.0.0.66
//! (one source); the honest client 127.0.0.77. The attacker's tasks run on a runtime of their
//! own whose threads run at nice 10: on a real network the attacker's CPU is not the honest
//! client's, and on this one machine it would otherwise delay the client that measures. A25
//! counts the relay's CPU time, in all and on its handshake threads, to give handshakes per
//! CPU-second. Words after `--` pick attacks by tag (`cargo bench --bench flood -- A25 A27`;
//! tags A24, A23, A25, A27, HSDir, directory, A29, A30). Traffic goes to 127.0.0.0/8 only; every attack is bounded in count
//! and time. Issue targets: RSS ≤ 64 MiB above idle and back within a minute; honest build p99
//! ≤ 3× idle; forwarding p99 ≤ 2× idle; ≥ 6,000 handshakes/s per core.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_client::circuit::{self, CircHandle};
use allium_net::channel::Channel;
use allium_net::link::{self, PeerInfo};
use allium_net::pool::ChannelPool;
use allium_proto::cell::{self, CellCmd, DestroyReason};
use allium_proto::crypto::ntor::{self, HTYPE_NTOR};
use allium_proto::doc::ConsensusRelay;
use allium_proto::ext::Extensions;
use allium_proto::flow::FlowParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[allow(dead_code)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

#[path = "common/dir_http.rs"]
mod dir_http;
#[path = "common/procfs.rs"]
mod procfs;
#[path = "flood/directory.rs"]
mod dir_attacks;
#[path = "flood/hsdir.rs"]
mod hsdir_flood;
#[path = "flood/circuit_ids.rs"]
mod circuit_ids;

const HONEST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77));
/// Honest builds and directory round trips sampled per phase.
const SAMPLES: usize = 40;
/// Time between the honest client's builds: 20 a second, a busy client (Tor clients build a few
/// a minute). Built back to back, the measuring client asked for as many handshakes a second as
/// each attacking address and, the handshake queue being fair between addresses, got the same
/// share: its builds measured the flood's round of 41 addresses (~5 ms), not what an honest client
/// meets.
const HONEST_BUILD_EVERY: Duration = Duration::from_millis(50);
/// Links held open by the link flood (from 40 addresses, 50 each: the per-address default).
const FLOOD_LINKS: usize = 2_000;
/// Circuit ids the one captured CREATE is replayed on.
const REPLAYS: usize = 20_000;
/// How long the handshake flood runs.
const HANDSHAKE_FLOOD: Duration = Duration::from_secs(10);
/// Addresses in the handshake flood, and CREATEs each keeps in flight.
const HANDSHAKE_SOURCES: u8 = 40;
const HANDSHAKE_IN_FLIGHT: usize = 16;
/// Circuits (two 8 MiB downloads each) whose client stops reading its link to the target.
const SNIPER_CIRCUITS: usize = 200;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // The attacker's own runtime, its threads at a lower priority: on a real network it runs on
    // other machines, and here it must not take the CPU of the honest client that measures.
    let attacker = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("attacker")
        .on_thread_start(lower_this_threads_priority)
        .enable_all()
        .build()
        .unwrap();
    let net = support::testnet::Testnet::start(&[]);
    rt.block_on(run(&net, attacker.handle()));
    drop(net);
    // The introduction flood on a network of its own, untouched by the attacks above.
    if wanted("A29") {
        let net = support::testnet::Testnet::start(&[]);
        rt.block_on(intro_flood(&net));
    }
    if wanted("A30") {
        rt.block_on(circuit_ids::run());
    }
}

/// Runs the calling thread at nice 10 (`renice` on its thread id; Linux). Without `renice` the
/// attacker runs at normal priority, which the bench says.
fn lower_this_threads_priority() {
    // "/proc/thread-self" links to "<pid>/task/<tid>".
    let tid = std::fs::read_link("/proc/thread-self").ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let lowered = tid.is_some_and(|tid| {
        std::process::Command::new("renice").args(["-n", "10", "-p", &tid]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
    });
    if !lowered {
        eprintln!("(could not lower the attacker thread's priority: it competes with the honest client at normal priority)");
    }
}

/// Whether to run the attack tagged `tag`: all of them, or those whose tag holds one of the
/// words given after `--` (`cargo bench --bench flood -- A25 A27`).
fn wanted(tag: &str) -> bool {
    let words: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    words.is_empty() || words.iter().any(|w| tag.contains(w.as_str()))
}

async fn run(net: &support::testnet::Testnet, attacker: &tokio::runtime::Handle) {
    let cfg = allium_client::ClientConfig::load(&net.dir.join("client").join("config.toml")).expect("the client's config");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let dir = allium_directory::fetch_consensus(&cfg.network, IpAddr::from([127, 0, 0, 1]), now, None).await.expect("the consensus");
    let target = dir.relays().into_iter().next().expect("a relay").clone();
    let node = net.nodes.iter().find(|n| n.addr == target.address).expect("the target's node");
    let pid = node.pid;
    println!("target: {} (pid {pid}); {} cores", node.name, std::thread::available_parallelism().map_or(1, |n| n.get()));

    let honest = ChannelPool::new(HONEST, None);
    let existing = circuit::build(&honest, &[&target]).await.expect("a circuit before any attack");
    let idle = measure(&honest, &target, &existing).await;
    let idle_rss = rss_mib(pid);
    println!("\nidle: RSS {idle_rss:.1} MiB; honest build {}; directory round trip {}", idle.builds, idle.rtt);
    println!("\n| attack | RSS before / during / after (MiB) | honest build median, p99 (ms) | dir round trip p99 (ms) | attacker got |");
    println!("|---|---|---|---|---|");

    if wanted("A24") {
        // A24: many idle authenticated links, from many addresses (each at its per-address cap)
        // and one address far over it.
        let before = rss_mib(pid);
        let (links, refused) = attacker.spawn(link_flood(target.clone())).await.unwrap();
        let during = measure(&honest, &target, &existing).await;
        let rss_during = rss_mib(pid);
        let open = links.len();
        // A Channel's own tasks hold it open: close each link, not just the handles.
        links.iter().for_each(Channel::close);
        drop(links);
        let after = settle_rss(pid, before).await;
        row("A24 idle links", before, rss_during, after, &during, &format!("{open} links held, {refused} closed at once"));

        // A24, half-open: connections that send 3 bytes of the link preamble and stall, 50 from
        // each of 40 addresses. Each holds a place until the relay's link handshake timeout
        // (`link_handshake_timeout_secs`, 10 s) closes it.
        let before = rss_mib(pid);
        let started = Instant::now();
        let stalled = attacker.spawn(half_open_flood(target.address)).await.unwrap();
        let n = stalled.len();
        let during = measure(&honest, &target, &existing).await;
        let rss_during = rss_mib(pid);
        let (closed, last) = attacker.spawn(closed_by_peer(stalled, started)).await.unwrap();
        let after = settle_rss(pid, before).await;
        row(
            "A24 half-open handshakes",
            before,
            rss_during,
            after,
            &during,
            &format!("{n} connections stalled in the link handshake; {closed} closed by the relay, the last {:.1} s after the flood began", last.as_secs_f64()),
        );
    }

    if wanted("A23") {
        // A23/A25: one captured CREATE replayed on many circuit ids.
        let before = rss_mib(pid);
        let (answered, created) = attacker.spawn(replay_flood(target.clone())).await.unwrap();
        let during = measure(&honest, &target, &existing).await;
        let rss_during = rss_mib(pid);
        let after = settle_rss(pid, before).await;
        row("A23 one CREATE replayed", before, rss_during, after, &during, &format!("{created} CREATED of {answered} answered ({REPLAYS} sent)"));
    }

    if wanted("A25") {
        // A25: fresh, valid CREATEs from 40 addresses (one link each, many in flight), each
        // circuit destroyed once CREATED, for a fixed time. The attacker does no public-key work
        // during the flood (its messages are made beforehand), so the relay's handshake threads
        // set the rate.
        let messages = handshake_messages(&target);
        let before = rss_mib(pid);
        let (cpu_before, hs_cpu_before) = (cpu_secs(pid), thread_cpu_secs(pid, "handshake"));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let started = Instant::now();
        let (links, flood) = attacker.spawn(handshake_flood(target.clone(), messages, stop.clone(), done.clone(), refused.clone())).await.unwrap();
        let during = measure(&honest, &target, &existing).await;
        let rss_during = rss_mib(pid);
        tokio::time::sleep(HANDSHAKE_FLOOD.saturating_sub(started.elapsed())).await;
        stop.store(true, Ordering::Relaxed);
        for t in flood {
            let _ = t.await;
        }
        let secs = started.elapsed().as_secs_f64();
        let (cpu, hs_cpu) = (cpu_secs(pid) - cpu_before, thread_cpu_secs(pid, "handshake") - hs_cpu_before);
        links.iter().for_each(|l| l.close());
        let after = settle_rss(pid, before).await;
        let created = done.load(Ordering::Relaxed) as f64;
        row(
            "A25 handshake flood",
            before,
            rss_during,
            after,
            &during,
            &format!(
                "{:.0} CREATED/s for {secs:.0} s ({} refused); relay CPU {cpu:.1} s, of which handshake threads {hs_cpu:.1} s: {:.0} CREATED per handshake-thread CPU-second, {:.0} per relay CPU-second (links, cells and circuits too)",
                created / secs,
                refused.load(Ordering::Relaxed),
                created / hs_cpu.max(0.01),
                created / cpu.max(0.01)
            ),
        );
    }

    // A27: a client builds circuits through the target to an exit, starts downloads on them and
    // stops reading its link to the target (a proxy in front of it stops taking the target's
    // bytes): the exit fills every circuit's window and the cells pile up at the target.
    // Against another relay than the attacks above (their memory is not all returned to the
    // system), as the first hop.
    let exit = dir.relays().into_iter().find(|r| r.policy.is_exit() && r.identity != target.identity).expect("an exit").clone();
    let second = dir.relays().into_iter().find(|r| !r.policy.is_exit() && r.identity != target.identity).expect("another relay").clone();
    let (first_target, second_target) = (target.identity, second.identity);
    if wanted("A27") {
        let target = second;
        let node = net.nodes.iter().find(|n| n.addr == target.address).expect("the target's node");
        let pid = node.pid;
        let existing = circuit::build(&honest, &[&target]).await.expect("a circuit to the second target");
        let idle = measure(&honest, &target, &existing).await;
        println!("| (second target {}: idle) | {:.1} | {} | {} | |", node.name, rss_mib(pid), idle.builds, idle.rtt);
        let files = support::http::FileServer::start(vec![("/big", support::http::pseudo_random(8 << 20, 27))]);
        let (proxy, stall) = support::proxy::stalling_proxy(target.address).await;
        let via_proxy = ConsensusRelay { address: proxy, ..target.clone() };
        let before = rss_mib(pid);
        let sniper = ChannelPool::new(IpAddr::from([127, 0, 0, 66]), None);
        let (mut held, mut circuits) = (Vec::new(), Vec::new());
        for _ in 0..SNIPER_CIRCUITS {
            let Ok(c) = circuit::build(&sniper, &[&via_proxy, &exit]).await else { continue };
            for _ in 0..2 {
                if let Ok(app) = support::streams::begin(&c, files.addr()).await {
                    held.push(app);
                }
            }
            circuits.push(c);
        }
        stall.send_replace(true);
        let streams = held.len();
        for app in held.iter_mut() {
            let _ = app.write_all(b"GET /big HTTP/1.0\r\n\r\n").await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let during = measure(&honest, &target, &existing).await;
        let rss_during = rss_mib(pid);
        drop((held, circuits));
        let after = settle_rss(pid, before).await;
        // The relay reports the limits that acted once a minute.
        let deadline = Instant::now() + Duration::from_secs(70);
        while !net.node_log(&node.name).contains("oom_") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let acted = net.node_log(&node.name).lines().filter(|l| l.contains("limits acted")).map(|l| l.split("s: ").last().unwrap_or("").to_string()).collect::<Vec<_>>().join("; ");
        let acted = if acted.is_empty() { "none within 70 s".to_string() } else { acted };
        row("A27 stalled reader", before, rss_during, after, &during, &format!("{streams} downloads on {SNIPER_CIRCUITS} circuits stalled (default budget {} MiB); target's limits report: {acted}", allium_net::limits::LimitsConfig::default().max_queued_mib));

        println!("\nidle honest build {}, dir round trip {}", idle.builds, idle.rtt);
    }

    if wanted("HSDir") {
        hsdir_flood::run(net, &dir, &[first_target, second_target]).await;
    }
    if wanted("directory") {
        dir_attacks::run(net, &cfg.network).await;
    }
}

/// Attacker tasks in the introduction flood, and how long it lasts.
const INTRO_ATTACKERS: usize = 24;
const INTRO_FLOOD: Duration = Duration::from_secs(30);

/// A29: a service with the default introduction rate (25/s, burst 200 per point); attackers send
/// valid INTRODUCE1s without proof of work through fresh circuits for `INTRO_FLOOD`, while the
/// test network's client fetches from the service 20 times, each a fresh introduction.
async fn intro_flood(net: &support::testnet::Testnet) {
    let files = support::http::FileServer::start(vec![("/x", b"through the flood".to_vec())]);
    let svc = support::onion::ServiceNode::start(net, "flooded", files.addr());
    let (host, socks) = (svc.address.clone(), net.socks);
    let fetch = move |user: Option<String>| {
        let host = host.clone();
        tokio::task::spawn_blocking(move || support::http::http_get_via_socks_as(socks, user.as_deref().map(|u| (u, "x")), &host, 80, "/x").is_ok())
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while !fetch(None).await.unwrap() {
        assert!(Instant::now() < deadline, "the service never became reachable");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let identity = *allium_proto::hs::OnionAddress::parse(&svc.address).unwrap().identity();
    let mut v = support::visitor::Visitor::new(&net.dir.join("client").join("config.toml")).await;
    let points = v.intro_points(&identity).await;
    let counts = Arc::new(support::visitor::FloodCounts::default());
    let (rss_before, cpu_before) = (rss_mib(svc.pid()), cpu_secs(svc.pid()));
    let started = Instant::now();
    let tasks = support::visitor::flood_introductions(Arc::new(v), identity, points.clone(), INTRO_ATTACKERS, counts.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ok = 0;
    for i in 0..20 {
        ok += usize::from(fetch(Some(format!("honest{i}"))).await.unwrap());
    }
    let rss_during = rss_mib(svc.pid());
    tokio::time::sleep(INTRO_FLOOD.saturating_sub(started.elapsed())).await;
    counts.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(svc.pid()) - cpu_before;
    let rss_after = settle_rss(svc.pid(), rss_before).await;
    let (sent, forwarded) = (counts.sent.load(Ordering::Relaxed), counts.forwarded.load(Ordering::Relaxed));
    let allowed = points.len() as f64 * (200.0 + 25.0 * secs);
    println!(
        "\nA29 introduction flood ({INTRO_ATTACKERS} attackers, {secs:.0} s, {} points at 25/s burst 200): {sent} INTRODUCE1 sent, {forwarded} forwarded (rate + burst allow {allowed:.0}); honest fetches {ok}/20; service CPU {cpu:.1} s ({:.0} % of a core); service RSS {rss_before:.1} / {rss_during:.1} / {rss_after:.1} MiB",
        points.len(),
        100.0 * cpu / secs
    );
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    procfs::cpu_seconds(pid, procfs::clock_ticks()).unwrap_or(0.0)
}

/// CPU seconds the threads of `pid` whose name starts with `prefix` have used (threads that
/// ended are not counted).
fn thread_cpu_secs(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let ticks = procfs::clock_ticks();
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)))
        .filter_map(|t| procfs::stat_seconds(&t.path().join("stat").to_string_lossy(), ticks))
        .sum()
}

struct Phase {
    builds: String,
    rtt: String,
}

fn row(name: &str, before: f64, during: f64, after: f64, p: &Phase, got: &str) {
    println!("| {name} | {before:.1} / {during:.1} / {after:.1} | {} | {} | {got} |", p.builds, p.rtt);
}

/// Honest 1-hop builds and directory round trips on `existing`.
async fn measure(honest: &ChannelPool, target: &ConsensusRelay, existing: &CircHandle) -> Phase {
    let mut builds = Vec::new();
    let mut failed = 0;
    let mut pace = tokio::time::interval(HONEST_BUILD_EVERY);
    for _ in 0..SAMPLES {
        pace.tick().await;
        let t = Instant::now();
        match circuit::build_within(honest, &[target], Duration::from_secs(30), FlowParams::default()).await {
            Ok(_) => builds.push(t.elapsed()),
            Err(_) => failed += 1,
        }
    }
    let mut rtts = Vec::new();
    for _ in 0..SAMPLES {
        let t = Instant::now();
        if let Ok(mut s) = existing.begin_dir().await {
            let _ = s.write_all(b"GET /allium/v1/nothing HTTP/1.0\r\n\r\n").await;
            let mut resp = Vec::new();
            if s.read_to_end(&mut resp).await.is_ok() && !resp.is_empty() {
                rtts.push(t.elapsed());
            }
        }
    }
    let fail = if failed > 0 { format!(" ({failed} failed)") } else { String::new() };
    Phase { builds: format!("{}{fail}", stats(&mut builds)), rtt: stats(&mut rtts) }
}

fn stats(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!("{:.1}, {:.1}", ms(v[v.len() / 2]), ms(v[(v.len() * 99 / 100).min(v.len() - 1)]))
}

fn peer(r: &ConsensusRelay) -> PeerInfo {
    PeerInfo { addr: r.address, identity: r.identity, link_key: r.link_key }
}

/// Opens `FLOOD_LINKS` links from 40 addresses plus 200 more from one address; returns the
/// links held and how many the relay closed (handshake failed).
async fn link_flood(target: ConsensusRelay) -> (Vec<Channel>, usize) {
    let mut tasks = Vec::new();
    let per = FLOOD_LINKS / 40;
    for a in 0..40u8 {
        let p = peer(&target);
        tasks.push(tokio::spawn(async move {
            let ip = IpAddr::from([127, 0, 3, a + 1]);
            let mut v = Vec::new();
            let n = if a == 0 { per + 200 } else { per };
            for _ in 0..n {
                v.push(link::connect(ip, &p, None).await.ok().map(|l| Channel::spawn(l, None, &allium_net::limits::memquota::MemQuota::default_budget())));
            }
            v
        }));
    }
    let mut links = Vec::new();
    let mut refused = 0;
    for t in tasks {
        for l in t.await.unwrap() {
            match l {
                Some(c) => links.push(c),
                None => refused += 1,
            }
        }
    }
    (links, refused)
}

/// `FLOOD_LINKS` connections to `addr` from 40 addresses, each sending 3 of the link preamble's
/// 8 bytes and nothing more.
async fn half_open_flood(addr: std::net::SocketAddr) -> Vec<tokio::net::TcpStream> {
    let mut tasks = Vec::new();
    for a in 0..40u8 {
        tasks.push(tokio::spawn(async move {
            let mut v = Vec::new();
            for _ in 0..FLOOD_LINKS / 40 {
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else { continue };
                if socket.bind(std::net::SocketAddr::new(IpAddr::from([127, 0, 6, a + 1]), 0)).is_err() {
                    continue;
                }
                let Ok(mut s) = socket.connect(addr).await else { continue };
                if s.write_all(b"ALL").await.is_ok() {
                    v.push(s);
                }
            }
            v
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// How many of `conns` the peer closed within 60 s of `since`, and when the last of those
/// closed (after `since`).
async fn closed_by_peer(conns: Vec<tokio::net::TcpStream>, since: Instant) -> (usize, Duration) {
    let deadline = tokio::time::Instant::from_std(since + Duration::from_secs(60));
    let mut waits = tokio::task::JoinSet::new();
    for mut s in conns {
        waits.spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
                    Ok(Ok(_)) => continue,
                    Err(_) => return None,
                }
            }
        });
    }
    let (mut closed, mut last) = (0, Duration::ZERO);
    while let Some(r) = waits.join_next().await {
        if let Ok(Some(at)) = r {
            closed += 1;
            last = last.max(at);
        }
    }
    (closed, last)
}

/// Sends one CREATE's bytes on `REPLAYS` circuit ids over 4 links; returns how many got an
/// answer and how many of those were CREATED.
async fn replay_flood(target: ConsensusRelay) -> (usize, usize) {
    let mut ext = Vec::new();
    Extensions(vec![FlowParams::default().to_extension()]).encode(&mut ext);
    let (_, msg) = ntor::client_start(&mut rand::rngs::OsRng, &target.identity, &target.onion_key, &ext);
    let msg = Arc::new(msg);
    let mut tasks = Vec::new();
    for a in 0..4u8 {
        let (p, msg) = (peer(&target), msg.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(l) = link::connect(IpAddr::from([127, 0, 4, a + 1]), &p, None).await else { return (0, 0) };
            let chan = Channel::spawn(l, None, &allium_net::limits::memquota::MemQuota::default_budget());
            let mut rxs = Vec::new();
            for _ in 0..REPLAYS / 4 {
                let Ok((id, rx)) = chan.open_circuit() else { break };
                for c in cell::create_cells(id, HTYPE_NTOR, &msg) {
                    if chan.send(c).await.is_err() {
                        break;
                    }
                }
                rxs.push(rx);
            }
            let (mut answered, mut created) = (0, 0);
            for mut rx in rxs {
                if let Ok(Some(c)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                    answered += 1;
                    created += usize::from(c.cmd != CellCmd::Destroy);
                }
            }
            (answered, created)
        }));
    }
    let mut sum = (0, 0);
    for t in tasks {
        let (a, c) = t.await.unwrap();
        sum = (sum.0 + a, sum.1 + c);
    }
    sum
}

/// Distinct valid CREATE messages for `target` (the relay refuses a replay), made before the
/// flood: more than `HANDSHAKE_FLOOD` at 12,000 handshakes/s needs.
fn handshake_messages(target: &ConsensusRelay) -> Arc<Vec<Vec<u8>>> {
    let mut ext = Vec::new();
    Extensions(vec![FlowParams::default().to_extension()]).encode(&mut ext);
    let n = 12_000 * HANDSHAKE_FLOOD.as_secs() as usize;
    let made = Instant::now();
    let v: Vec<Vec<u8>> = (0..n).map(|_| ntor::client_start(&mut rand::rngs::OsRng, &target.identity, &target.onion_key, &ext).1).collect();
    println!("(A25: {n} CREATE messages made in {:.1} s before the flood)", made.elapsed().as_secs_f64());
    Arc::new(v)
}

/// `HANDSHAKE_SOURCES` addresses, one link each (so no per-address CREATE rate applies: that
/// needs `create_min_links` links), each keeping `HANDSHAKE_IN_FLIGHT` CREATEs outstanding and
/// destroying each circuit once CREATED, until `stop` or the messages run out.
async fn handshake_flood(target: ConsensusRelay, messages: Arc<Vec<Vec<u8>>>, stop: Arc<std::sync::atomic::AtomicBool>, done: Arc<AtomicU64>, refused: Arc<AtomicU64>) -> (Vec<Arc<Channel>>, Vec<tokio::task::JoinHandle<()>>) {
    let next = Arc::new(AtomicU64::new(0));
    let (mut links, mut tasks) = (Vec::new(), Vec::new());
    for a in 0..HANDSHAKE_SOURCES {
        let Ok(l) = link::connect(IpAddr::from([127, 0, 5, a + 1]), &peer(&target), None).await else { continue };
        let chan = Arc::new(Channel::spawn(l, None, &allium_net::limits::memquota::MemQuota::default_budget()));
        links.push(chan.clone());
        for _ in 0..HANDSHAKE_IN_FLIGHT {
            let (chan, messages, next, stop, done, refused) = (chan.clone(), messages.clone(), next.clone(), stop.clone(), done.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Some(msg) = messages.get(next.fetch_add(1, Ordering::Relaxed) as usize) else { return };
                    let Ok((id, mut rx)) = chan.open_circuit() else { return };
                    for c in cell::create_cells(id, HTYPE_NTOR, msg) {
                        if chan.send(c).await.is_err() {
                            return;
                        }
                    }
                    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                        Ok(Some(c)) if c.cmd == CellCmd::Destroy => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            chan.close_circuit(id);
                        }
                        Ok(Some(_)) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            chan.destroy(id, DestroyReason::Finished);
                        }
                        _ => chan.destroy(id, DestroyReason::Finished),
                    }
                }
            }));
        }
    }
    (links, tasks)
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    procfs::rss_mib(pid).unwrap_or(f64::NAN)
}

/// The RSS once it is back within 8 MiB of `before`, or after 60 s (whichever comes first).
async fn settle_rss(pid: u32, before: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = rss_mib(pid);
        if now <= before + 8.0 || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
