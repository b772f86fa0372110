//! Downloads through a test network with real round-trip times (`--link-delay-ms 10`: every
//! link holds its outbound data 10 ms, so a 3-hop circuit's round trip is 60 ms): every byte of
//! every 1 MiB download arrives, one at a time and 8 at once on 8 circuits. The stall this
//! guards against ("Downloads stall at ~400 KB") was seen only with real latency.

use std::thread;

use crate::support::http::{http_get_via_socks_as, pseudo_random, FileServer};
use crate::support::testnet::Testnet;

/// Rounds of 8 simultaneous downloads (each round 8 fresh isolation classes, so 8 circuits).
const PARALLEL_ROUNDS: usize = 3;
/// Downloads one after another (each its own isolation class).
const SERIAL: usize = 4;

#[test]
fn downloads_complete_byte_exact_at_10_ms_per_link() {
    let file = pseudo_random(1 << 20, 71);
    let server = FileServer::start(vec![("/1m", file.clone())]);
    let port = server.addr().port();
    let net = Testnet::start(&["--link-delay-ms", "10"]);
    let socks = net.socks;
    let mut failures = Vec::new();
    for i in 0..SERIAL {
        match fetch(socks, port, format!("serial{i}")) {
            Ok(body) if body == file => {}
            Ok(body) => failures.push(format!("serial {i}: {} bytes, not the file", body.len())),
            Err(e) => failures.push(format!("serial {i}: {e}")),
        }
    }
    for round in 0..PARALLEL_ROUNDS {
        let handles: Vec<_> = (0..8).map(|i| thread::spawn(move || (i, fetch(socks, port, format!("r{round}s{i}"))))).collect();
        for h in handles {
            let (i, r) = h.join().expect("fetch thread");
            match r {
                Ok(body) if body == file => {}
                Ok(body) => failures.push(format!("round {round} stream {i}: {} bytes, not the file", body.len())),
                Err(e) => failures.push(format!("round {round} stream {i}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} downloads failed: {failures:?}; client log:\n{}", failures.len(), SERIAL + 8 * PARALLEL_ROUNDS, net.log_tail(30));
}

/// One 1 MiB GET in isolation class `user`.
fn fetch(socks: std::net::SocketAddr, port: u16, user: String) -> Result<Vec<u8>, String> {
    http_get_via_socks_as(socks, Some((&user, "pw")), "127.0.0.1", port, "/1m").map_err(|e| format!("{e:?}"))
}
