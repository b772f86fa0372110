//! Directory attacks from issue 12's table against one authority of the test network: slow or
//! silent connections to its directory port, relay descriptors that all name one address, and
//! 8 MiB "votes" claiming to come from another authority. For each: the authority's RSS before,
//! during and after, its CPU during, honest consensus fetches from it during (median, p99), and
//! what the attacker got. Sources are in 127.0.5.0/24 – 127.0.7.0/24; every attack is bounded in
//! count and time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dir_http::{relay_descriptor, request};
use crate::{cpu_secs, rss_mib, settle_rss, stats};

/// Connections that send half a request header and then nothing (from 20 addresses).
const SLOW_CONNS: usize = 200;
/// How long the bench waits for the authority to close them.
const SLOW_WAIT: Duration = Duration::from_secs(120);
/// Relay descriptors naming one address (each a fresh identity and port).
const ONE_ADDRESS: usize = 2_000;
/// 8 MiB votes posted, one after another.
const BIG_VOTES: usize = 10;
/// Honest consensus fetches per phase.
const FETCHES: usize = 20;
const HONEST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 7, 77));

pub async fn run(net: &crate::support::testnet::Testnet, network: &allium_net::config::NetworkConfig) {
    let auth = net.with_role("authority").next().expect("an authority").clone();
    let (pid, addr) = (auth.pid, auth.addr);
    println!("\ndirectory attacks against {} (pid {pid}, directory port {addr})", auth.name);
    println!("idle: RSS {:.1} MiB; honest consensus fetch {}", rss_mib(pid), fetches(addr).await);
    println!("\n| attack | RSS before / during / after (MiB) | authority CPU during (s) | honest consensus fetch median, p99 (ms) | attacker got |");
    println!("|---|---|---|---|---|");

    // Slow or silent connections: half a header, then nothing.
    let (before, cpu0, started) = (rss_mib(pid), cpu_secs(pid), Instant::now());
    let mut conns = Vec::new();
    let mut refused = 0;
    for i in 0..SLOW_CONNS {
        match slow_conn(IpAddr::V4(Ipv4Addr::new(127, 0, 5, (i % 20 + 1) as u8)), addr).await {
            Ok(s) => conns.push(s),
            Err(_) => refused += 1,
        }
    }
    let during = fetches(addr).await;
    let rss_during = rss_mib(pid);
    let held = conns.len();
    let waits: Vec<_> = conns.into_iter().map(|s| tokio::spawn(closed_after(s, started))).collect();
    let mut closed = Vec::new();
    for w in waits {
        closed.extend(w.await.expect("wait task"));
    }
    let cpu = cpu_secs(pid) - cpu0;
    let after = settle_rss(pid, before).await;
    let last = closed.iter().max().map_or("none".into(), |d| format!("{:.0} s", d.as_secs_f64()));
    row(
        &format!("{SLOW_CONNS} slow connections to the directory port"),
        (before, rss_during, after),
        cpu,
        &during,
        &format!("{held} accepted ({refused} refused at once); {} closed by the authority, the last after {last}; {} still open after {} s", closed.len(), held - closed.len(), SLOW_WAIT.as_secs()),
    );

    // Relay descriptors that all name one address, from 10 source addresses, 20 at a time.
    let held = || crate::support::status_json(&net.dir.join(&auth.name))["descriptors_known"].as_u64().unwrap_or(0);
    let (before, cpu0, held0) = (rss_mib(pid), cpu_secs(pid), held());
    let published = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let flood = tokio::spawn(async move {
        let mut statuses = std::collections::BTreeMap::<String, usize>::new();
        for chunk in (0..ONE_ADDRESS).collect::<Vec<_>>().chunks(20) {
            let posts: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let body = relay_descriptor(&format!("one{i}"), SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 66)), 10_000 + i as u16), published);
                    let from = IpAddr::V4(Ipv4Addr::new(127, 0, 6, (i % 10 + 1) as u8));
                    tokio::spawn(async move { request(from, addr, "POST", "/allium/v1/descriptor", body.as_bytes()).await })
                })
                .collect();
            for p in posts {
                let key = match p.await.expect("post task") {
                    Ok((status, _)) => format!("HTTP {status}"),
                    Err(e) => e,
                };
                *statuses.entry(key).or_default() += 1;
            }
        }
        statuses
    });
    let during = fetches(addr).await;
    let rss_during = rss_mib(pid);
    let statuses = flood.await.expect("descriptor flood");
    let cpu = cpu_secs(pid) - cpu0;
    let honest = relay_descriptor("honest", SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 7, 1)), 9001), published);
    let honest = match request(HONEST, addr, "POST", "/allium/v1/descriptor", honest.as_bytes()).await {
        Ok((status, _)) => format!("HTTP {status}"),
        Err(e) => e,
    };
    let after = settle_rss(pid, before).await;
    row(
        &format!("{ONE_ADDRESS} relay descriptors for one address"),
        (before, rss_during, after),
        cpu,
        &during,
        &format!("{statuses:?}; descriptors held {held0} before, {} after; then an honest relay on another address: {honest}", held()),
    );

    // 8 MiB votes claiming to come from another authority: the authority's own vote with
    // another voter named, and relay lines repeated up to the size limit. First for the current
    // period (the peer's real vote is held), then for a period nobody holds.
    let me = network.authorities.iter().find(|a| a.address == addr).expect("the authority in the network config");
    let peer = network.authorities.iter().find(|a| a.identity != me.identity).expect("another authority");
    for (what, shift) in [("for the current period", 0), ("for a period not held", 1_000_000)] {
        let vote = big_vote(addr, &me.identity.fingerprint(), &peer.identity.fingerprint(), shift).await;
        let (before, cpu0) = (rss_mib(pid), cpu_secs(pid));
        let body = vote.clone();
        let flood = tokio::spawn(async move {
            let mut answers = std::collections::BTreeMap::<String, usize>::new();
            let mut slowest = Duration::ZERO;
            for i in 0..BIG_VOTES {
                let t = Instant::now();
                let from = IpAddr::V4(Ipv4Addr::new(127, 0, 5, 100 + i as u8));
                let key = match request(from, addr, "POST", "/allium/v1/vote", body.as_bytes()).await {
                    Ok((status, why)) => format!("HTTP {status} {}", String::from_utf8_lossy(&why).trim()),
                    Err(e) => e,
                };
                slowest = slowest.max(t.elapsed());
                *answers.entry(key).or_default() += 1;
            }
            (answers, slowest)
        });
        let during = fetches(addr).await;
        let rss_during = rss_mib(pid);
        let (answers, slowest) = flood.await.expect("vote flood");
        let cpu = cpu_secs(pid) - cpu0;
        let after = settle_rss(pid, before).await;
        row(
            &format!("{BIG_VOTES} votes of {:.1} MiB {what}", vote.len() as f64 / (1 << 20) as f64),
            (before, rss_during, after),
            cpu,
            &during,
            &format!("{answers:?}; slowest answer {:.0} ms", slowest.as_secs_f64() * 1e3),
        );
    }
}

fn row(name: &str, (before, during, after): (f64, f64, f64), cpu: f64, fetch: &str, got: &str) {
    println!("| {name} | {before:.1} / {during:.1} / {after:.1} | {cpu:.2} | {fetch} | {got} |");
}

/// `FETCHES` consensus fetches from the honest address, one after another.
async fn fetches(addr: SocketAddr) -> String {
    let mut times = Vec::new();
    let mut failed = 0;
    for _ in 0..FETCHES {
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(30), request(HONEST, addr, "GET", "/allium/v1/consensus", b"")).await {
            Ok(Ok((200, _))) => times.push(t.elapsed()),
            _ => failed += 1,
        }
    }
    let fail = if failed > 0 { format!(" ({failed} failed)") } else { String::new() };
    format!("{}{fail}", stats(&mut times))
}

/// A connection that has sent half a request header.
async fn slow_conn(from: IpAddr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    let mut s = tokio::time::timeout(Duration::from_secs(5), sock.connect(to)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    s.write_all(format!("GET /allium/v1/consensus HTTP/1.1\r\nHost: {to}\r\n").as_bytes()).await?;
    Ok(s)
}

/// How long after `started` the other end closed `s` (reading whatever it sent first), or
/// None if it was still open after `SLOW_WAIT`.
async fn closed_after(mut s: tokio::net::TcpStream, started: Instant) -> Option<Duration> {
    let deadline = tokio::time::Instant::from_std(started + SLOW_WAIT);
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// The authority's own vote for the current consensus with `peer` named as the voter, its
/// valid-after moved `shift` seconds on, padded to just under the vote size limit with relay
/// lines repeated before its signature.
async fn big_vote(addr: SocketAddr, me: &str, peer: &str, shift: u64) -> String {
    let (status, body) = request(HONEST, addr, "GET", "/allium/v1/consensus", b"").await.expect("the consensus");
    assert_eq!(status, 200, "the authority publishes a consensus");
    let text = String::from_utf8_lossy(&body).into_owned();
    let valid_after = allium_proto::doc::Consensus::parse(&text).expect("a consensus").claimed_lifetime().valid_after;
    let (status, body) = request(HONEST, addr, "GET", &format!("/allium/v1/vote/{valid_after}"), b"").await.expect("its vote");
    assert_eq!(status, 200, "the authority serves its vote for the current consensus");
    let vote = String::from_utf8_lossy(&body)
        .replace(&format!("voter {me}"), &format!("voter {peer}"))
        .replace(&format!("valid-after {valid_after}\n"), &format!("valid-after {}\n", valid_after + shift));
    let sig = vote.rfind("\nvote-signature").expect("a signature line") + 1;
    let first_relay = vote.find("\nrelay ").map_or(sig, |i| i + 1);
    let relays = &vote[first_relay..sig];
    let mut out = String::with_capacity(allium_proto::doc::MAX_VOTE_LEN);
    out.push_str(&vote[..sig]);
    while !relays.is_empty() && out.len() + relays.len() + (vote.len() - sig) < allium_proto::doc::MAX_VOTE_LEN - 1024 {
        out.push_str(relays);
    }
    out.push_str(&vote[sig..]);
    out
}
