//! Issue 16 point 4: `allium testnet` with a hundred relays and ten clients works on one
//! machine. Every node is its own process on its own loopback address (113 processes, each
//! relay holding links to many others: ports, descriptors and file limits all matter); every
//! client's consensus lists all hundred relays, and 200 concurrent fetches (20 per client, each
//! in its own isolation class, so on its own circuit) all arrive whole. `cargo bench --bench
//! scale` runs the same network and prints its times, memory and authority CPU; this test only
//! checks that it works.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::http::{concurrent_fetches, pseudo_random, FileServer};
use crate::support::testnet::Testnet;

const RELAYS: usize = 100;
const EXITS: usize = 10;
const CLIENTS: usize = 10;
/// Concurrent fetches per client.
const FETCHES_PER_CLIENT: usize = 20;
/// How long every client may take to hold a consensus listing every relay (voting interval
/// 10 s; the network is ready once each client has carried a stream).
const LISTED_DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn a_hundred_relays_and_ten_clients_carry_200_concurrent_fetches() {
    let file = pseudo_random(32_000, 16);
    let server = FileServer::start(vec![("/32k", file.clone())]);
    let port = server.addr().port();
    let (relays, exits, clients) = (RELAYS.to_string(), EXITS.to_string(), CLIENTS.to_string());
    let net = Testnet::start(&["--relays", &relays, "--exits", &exits, "--clients", &clients]);

    let listed = net.with_role("relay").count() + net.with_role("exit").count();
    assert_eq!(listed, RELAYS, "DIR/nodes lists every relay");
    assert_eq!(net.with_role("exit").count(), EXITS);
    let client_nodes: Vec<_> = net.with_role("client").cloned().collect();
    assert_eq!(client_nodes.len(), CLIENTS, "DIR/nodes lists every client");

    // Every client's consensus lists every relay (the node answers once it does).
    let started = Instant::now();
    for c in &client_nodes {
        let left = LISTED_DEADLINE.saturating_sub(started.elapsed());
        crate::support::wait_status(&net.dir.join(&c.name), &format!("relays_in_consensus=={RELAYS}"), left, &format!("{}'s consensus lists all {RELAYS} relays", c.name));
    }

    let socks: Vec<SocketAddr> = client_nodes.iter().map(|n| n.addr).collect();
    let failures = concurrent_fetches(&socks, FETCHES_PER_CLIENT, port, "/32k", &file);
    assert!(
        failures.is_empty(),
        "{} of {} concurrent fetches failed: {:?}\n{}",
        failures.len(),
        CLIENTS * FETCHES_PER_CLIENT,
        &failures[..failures.len().min(10)],
        net.log_tail(20)
    );
}
