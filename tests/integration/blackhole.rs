//! THREATS A32: a relay that completes link handshakes but never answers a CREATE or any cell
//! (listed, since reachability tests only need the link) makes builds through it time out; the
//! client abandons them and succeeds on another path, and a black-holed guard is marked down.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::http::{pseudo_random, FileServer};
use crate::support::socks::socks5_connect;
use crate::support::testnet::Testnet;

/// The whole test, network start included, stays under this.
const TEST_BUDGET: Duration = Duration::from_secs(170);

#[test]
fn a32_black_holed_relay_builds_time_out_and_succeed_on_another_path() {
    let started = Instant::now();
    let server = FileServer::start(vec![("/1k", pseudo_random(1024, 32))]);
    // 4 non-exit relays, relay1 the black hole; the client starts from a short build timeout.
    let net = Testnet::start(&["--relays", "6", "--dangerous-test-blackhole-relays", "1"]);
    let client_log = net.dir.join("client").join("log");
    let hole_log = net.dir.join("relay1").join("log");
    for i in 0..10 {
        let user = format!("hole{i}");
        let mut s = socks5_connect(net.socks, "127.0.0.1", server.addr().port(), Some((&user, "pw")))
            .unwrap_or_else(|c| panic!("CONNECT as {user}: reply {c}; client log:\n{}", crate::support::tail(&client_log, 40)));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(b"GET /1k HTTP/1.0\r\n\r\n").unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        assert!(resp.ends_with(server.file("/1k")), "fetch as {user} returned other bytes");
    }
    // The test network's onion-service host is a client too: its builds reach the hole as well.
    // Builds still waiting at the hole when the fetches end are abandoned at their timeout:
    // wait for that on the client and the onion-service host (their status counts builds
    // failed by reason), bounded by the test budget.
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let holed = read(&hole_log).matches("black-holing a circuit").count();
    if holed > 0 {
        let left = TEST_BUDGET.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        let (tx, rx) = std::sync::mpsc::channel();
        for node in ["client", "hs"] {
            let (tx, data) = (tx.clone(), net.dir.join(node));
            std::thread::spawn(move || tx.send(crate::support::try_wait_status(&data, "circuit_failures.timeout>=1", left)));
        }
        drop(tx);
        // The first of the two to see an abandoned build, or both failing to.
        let _ = rx.iter().find(Result::is_ok);
    }
    let abandoned: u64 = ["client", "hs"].iter().map(|n| crate::support::status_json(&net.dir.join(n))["circuit_failures"]["timeout"].as_u64().unwrap_or(0)).sum();
    let log = read(&client_log);
    let guard_down = log.matches("timed out; marking it down").count();
    eprintln!("black hole swallowed {holed} CREATE(s); the client abandoned {abandoned} build(s) and marked a guard down {guard_down} time(s)");
    // Only client builds (the client's and the onion-service host's) send CREATE cells, and
    // nothing answers one at the black hole: each build that reached it was abandoned at its
    // timeout.
    if holed > 0 {
        assert!(abandoned > 0, "builds reached the black hole but none was abandoned; client log:\n{}", crate::support::tail(&client_log, 40));
    }
    assert!(started.elapsed() < TEST_BUDGET, "took {:?}; client log:\n{}", started.elapsed(), crate::support::tail(&client_log, 40));
}
