//! `cargo bench --bench scale`: a hundred relays on one machine (issue 16 point 4).
//!
//! Starts `allium testnet --relays 100 --exits 10 --clients 10` (each node its own process on
//! its own loopback address) and prints: the time until it is ready (every client has carried
//! a stream), the share of 200 concurrent 100 KB fetches that succeed (20 per client, each on its
//! own circuit), the total RSS of every node and the authorities' CPU per voting round. Traffic
//! stays on 127.0.0.0/8; every fetch is bounded in time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

#[path = "common/procfs.rs"]
mod procfs;

use support::http::{concurrent_fetches, pseudo_random, FileServer};
use support::testnet::Testnet;

const RELAYS: &str = "100";
const EXITS: &str = "10";
const CLIENTS: usize = 10;
/// Concurrent fetches per client (each in its own isolation class, so on its own circuit).
const FETCHES_PER_CLIENT: usize = 20;
/// The test network's voting interval (`allium testnet` votes every 10 s).
const VOTING_INTERVAL: Duration = Duration::from_secs(10);
/// Voting rounds over which the authorities' CPU is measured.
const ROUNDS: u32 = 3;

fn main() {
    let file = pseudo_random(100_000, 9);
    let server = FileServer::start(vec![("/100k", file.clone())]);
    let port = server.addr().port();

    eprintln!("scale: starting allium testnet with {RELAYS} relays and {CLIENTS} clients");
    let started = Instant::now();
    let clients = CLIENTS.to_string();
    let net = Testnet::start(&["--relays", RELAYS, "--exits", EXITS, "--clients", &clients]);
    let ready = started.elapsed();

    let ticks = procfs::clock_ticks();
    let authorities: Vec<u32> = net.with_role("authority").map(|n| n.pid).collect();
    let auth_cpu = || authorities.iter().filter_map(|&p| procfs::cpu_seconds(p, ticks)).sum::<f64>();

    let socks: Vec<SocketAddr> = net.with_role("client").map(|n| n.addr).collect();
    eprintln!("scale: {} concurrent fetches through {} clients", socks.len() * FETCHES_PER_CLIENT, socks.len());
    let t = Instant::now();
    let failures = concurrent_fetches(&socks, FETCHES_PER_CLIENT, port, "/100k", &file);
    let fetch_wall = t.elapsed();
    let total_fetches = socks.len() * FETCHES_PER_CLIENT;
    let ok = total_fetches - failures.len();

    eprintln!("scale: authority CPU over {ROUNDS} voting rounds");
    let cpu0 = auth_cpu();
    std::thread::sleep(VOTING_INTERVAL * ROUNDS);
    let per_round = (auth_cpu() - cpu0) / f64::from(ROUNDS) / authorities.len().max(1) as f64;

    let rss: Vec<(String, f64)> = net.nodes.iter().filter_map(|n| procfs::rss_mib(n.pid).map(|m| (n.role.clone(), m))).collect();
    let total: f64 = rss.iter().map(|(_, m)| m).sum();
    let by_role = |role: &str| {
        let v: Vec<f64> = rss.iter().filter(|(r, _)| r == role).map(|(_, m)| *m).collect();
        format!("{role} {:.1} MiB ({} nodes)", v.iter().sum::<f64>() / v.len().max(1) as f64, v.len())
    };

    println!();
    println!("Allium at scale: 3 authorities, {RELAYS} relays ({EXITS} exits), {CLIENTS} clients, 1 onion service on one machine");
    println!("time to ready (every client carried a stream)     {:.1} s", ready.as_secs_f64());
    println!("concurrent 100 KB fetches that succeeded         {ok} of {total_fetches} ({:.0}%) in {:.1} s", 100.0 * ok as f64 / total_fetches.max(1) as f64, fetch_wall.as_secs_f64());
    println!("total RSS of every node                          {:.0} MiB over {} processes", total, rss.len());
    println!("mean RSS by role                                 {}", ["authority", "relay", "exit", "client"].map(by_role).join(", "));
    println!("authority CPU per voting round                   {:.3} s (mean of {} authorities over {ROUNDS} rounds of {} s)", per_round, authorities.len(), VOTING_INTERVAL.as_secs());
    let mut errors: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in &failures {
        // Grouped by what went wrong, without which client and fetch.
        *errors.entry(e.split_once(": ").map_or(e.as_str(), |(_, why)| why)).or_default() += 1;
    }
    if !errors.is_empty() {
        println!("failed fetches                                   {errors:?}");
    }
    drop(net);
}
