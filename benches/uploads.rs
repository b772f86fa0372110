//! `cargo bench --bench uploads`: 500 relays upload their descriptors to the authorities at the
//! same instant (issue 18 point 3: in a 500-relay simulation 157 uploads timed out at 15 s).
//!
//! Starts `allium testnet`, makes 500 descriptors signed by fresh identities (each relay its own
//! address in 127.200.0.0/16, no exit), and posts them all at once, each from its own source
//! address in 127.201.0.0/16 (as separate hosts would), to every authority's directory port
//! (1,500 uploads on a machine that also runs the three authorities). Prints how many were accepted within the relays' upload time-out, the latency
//! percentiles, and every kind of failure. Traffic stays on 127.0.0.0/8; the run is bounded by
//! the time-out.

use std::net::SocketAddr;
use std::time::Duration;

#[allow(dead_code)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

use support::testnet::Testnet;

#[path = "common/dir_http.rs"]
mod dir_http;
#[path = "common/upload_burst.rs"]
mod upload_burst;

/// Simultaneous uploads.
const RELAYS: usize = 500;
/// How long a relay waits for an upload's answer (`allium_directory::publish::PUBLISH_TIMEOUT`).
const TIMEOUT: Duration = allium_directory::publish::PUBLISH_TIMEOUT;

fn main() {
    eprintln!("uploads: starting allium testnet");
    let net = Testnet::start(&[]);
    let auths: Vec<SocketAddr> = net.with_role("authority").map(|n| n.addr).collect();
    eprintln!("uploads: posting {RELAYS} descriptors at once to each of {} authorities", auths.len());
    let results = upload_burst::all_at_once(&auths, &(0..RELAYS).collect::<Vec<_>>(), TIMEOUT);
    // Each relay's uploads are consecutive in `results`, one per authority.
    let majority = auths.len() / 2 + 1;
    let listed = results.chunks(auths.len()).filter(|r| r.iter().filter(|(_, r)| matches!(r, Ok(200))).count() >= majority).count();
    let mut ok: Vec<f64> = results.iter().filter(|(_, r)| matches!(r, Ok(200))).map(|(d, _)| d.as_secs_f64() * 1e3).collect();
    ok.sort_by(f64::total_cmp);
    let mut failures: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, r) in &results {
        match r {
            Ok(200) => {}
            Ok(status) => *failures.entry(format!("HTTP {status}")).or_default() += 1,
            Err(e) => *failures.entry(e.clone()).or_default() += 1,
        }
    }
    let pct = |q: f64| ok.get(((q * ok.len() as f64).ceil() as usize).clamp(1, ok.len().max(1)) - 1).copied().unwrap_or(f64::NAN);
    println!();
    println!("Allium descriptor uploads: {RELAYS} relays at once, each to all {} authorities ({} s time-out)", auths.len(), TIMEOUT.as_secs());
    println!("uploads accepted within it         {} of {}", ok.len(), results.len());
    println!("relays accepted by a majority      {listed} of {RELAYS}");
    println!("latency of accepted uploads        median {:.0} ms, p99 {:.0} ms, max {:.0} ms", pct(0.5), pct(0.99), pct(1.0));
    println!("failures                           {}", if failures.is_empty() { "none".to_string() } else { format!("{failures:?}") });
    drop(net);
}
