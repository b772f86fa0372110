//! Downloads through a test network with real round-trip times (`--link-delay-ms 10`: every
//! link holds its outbound data 10 ms, so a 3-hop circuit's round trip is 60 ms): every byte of
//! every 1 MiB download arrives, one at a time and 8 at once on 8 circuits. Latency alone did not
//! bring back the stall of "Downloads stall at ~400 KB" on Linux (0 stalls in ~1,160 downloads):
//! it also needed the simulator's 64 KiB sends, which `short_sends.rs` adds.

use crate::support::http::{download_rounds, pseudo_random, FileServer};
use crate::support::testnet::Testnet;

/// Rounds of 8 simultaneous downloads (each round 8 fresh isolation classes, so 8 circuits).
const PARALLEL_ROUNDS: usize = 3;
/// Downloads one after another (each its own isolation class).
const SERIAL: usize = 4;

#[test]
fn downloads_complete_byte_exact_at_10_ms_per_link() {
    let file = pseudo_random(1 << 20, 71);
    let server = FileServer::start(vec![("/1m", file.clone())]);
    let net = Testnet::start(&["--link-delay-ms", "10"]);
    let failures = download_rounds(net.socks, server.addr().port(), "/1m", &file, SERIAL, PARALLEL_ROUNDS);
    assert!(failures.is_empty(), "{} of {} downloads failed: {failures:?}; client log:\n{}", failures.len(), SERIAL + 8 * PARALLEL_ROUNDS, net.log_tail(30));
}
