//! The onion-service rows: the first fetch from a fresh address and one stream's throughput.
//!
//! A service started now, in a node process of the bench's own (`support::onion::ServiceNode`),
//! has an address no client has seen: once an HSDir stored its descriptor (`allium status`), the first GET
//! of `/1k` through the testnet's client times the descriptor fetch, the introduction, the
//! rendezvous and the stream together. Then `/25000000` on the same (warm) rendezvous circuit.

use std::time::{Duration, Instant};

use crate::support::http::FileServer;
use crate::support::onion::ServiceNode;
use crate::support::testnet::Testnet;
use crate::{list, median, rate_value, Target, PHASE_BUDGET, TRANSFER_TIMEOUT};

/// How long the fresh service may take to publish its descriptor.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(120);
/// Runs of the onion bulk download (the median is reported).
const RUNS: usize = 3;

/// (first-fetch row, throughput row, detail lines).
pub fn measure(net: &Testnet, server: &FileServer) -> (String, String, Vec<String>) {
    let mut notes = Vec::new();
    let svc = ServiceNode::start(net, "hsbench", server.addr());
    let t = Instant::now();
    if let Err(e) = svc.wait_published(PUBLISH_DEADLINE) {
        let why = format!("FAILED: {}", e.lines().next().unwrap_or(""));
        return (why.clone(), why, notes);
    }
    notes.push(format!("fresh onion service published its descriptor {:.2} s after it printed its address", t.elapsed().as_secs_f64()));
    let target = Target { socks: net.socks, server, host: svc.address.clone(), port: 80 };
    let first = match target.get("/1k", "onion", TRANSFER_TIMEOUT) {
        Ok(f) => format!("{:.0} ms", f.total.as_secs_f64() * 1e3),
        Err(e) => format!("FAILED: {e}"),
    };
    let phase = Instant::now();
    let mut runs = Vec::new();
    let mut err = None;
    for _ in 0..RUNS {
        if phase.elapsed() > PHASE_BUDGET {
            break;
        }
        match target.get("/25000000", "onion", TRANSFER_TIMEOUT) {
            Ok(f) => runs.push(f.bytes as f64 / 1e6 / f.total.as_secs_f64()),
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
        }
    }
    notes.push(format!("onion stream runs, 25 MB each (MB/s): {}", list(&runs)));
    if !runs.is_empty() {
        notes.push(format!("onion stream median {:.1} MB/s", median(&runs)));
    }
    drop(svc);
    (first, rate_value(&runs, &err), notes)
}
