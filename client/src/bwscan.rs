//! A bandwidth scanner, run by an authority with `authority.bandwidth_scan` (the authority votes
//! the results as weights, see `allium_directory::measured`). It measures each Running relay
//! of the consensus in turn, one at a time, from the authority's host:
//! - a two-hop circuit: the measured relay first, then a *partner*, a relay of the highest
//!   consensus weight other than it (picked at random among those);
//! - a directory stream on the partner fetches [`SCAN_BYTES`] (`GET /allium/v1/bw-test/<n>`):
//!   the bytes cross the measured relay, which cannot tell a measurement from a client;
//! - the speed is the bytes over the time from sending the request to the last byte;
//! - each relay is measured [`ATTEMPTS`] times with different partners and keeps the highest
//!   speed, so a slow partner does not make a fast relay look slow;
//! - scanners share the relays out ([`Turns`]): with `n` scanners (the authorities, sorted by
//!   identity; scanner `i`), unix time is cut into windows of `W` ms; in window `k` scanner `i`
//!   measures only relays whose *bucket* (the first 8 bytes of the identity, big-endian, mod `n`)
//!   satisfies `(bucket + k) mod n = i`, each at most once per window, and ends each measurement
//!   by the window's end. So all scanners work at once but never on the same relay (a relay
//!   measured by two at once would show each only part of its capacity), and every scanner
//!   visits every bucket once in `n` windows.
//!
//! Every relay is measured the same way from the same host, so the speeds compare relays with
//! each other; a relay is never credited with more than it carried here, whatever it claims.
//! Nothing about the relays is logged above debug.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use allium_directory::NetDir;
use allium_net::pool::ChannelPool;
use allium_proto::dir_stream::{encode_request, parse_response, BW_TEST_PATH, MAX_BW_TEST_LEN, MAX_RESPONSE_HEAD_LEN};
use allium_proto::doc::{ConsensusRelay, RelayFlags};
use allium_proto::flow::FlowParams;
use allium_proto::ids::RelayId;
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::circuit;

/// Bytes fetched per measurement.
pub const SCAN_BYTES: usize = MAX_BW_TEST_LEN;
/// Measurements per relay per pass (each with another partner); the highest speed is kept.
pub const ATTEMPTS: usize = 2;
/// Longest one measurement may take (circuit build included); a slower one fails.
pub const MEASURE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("circuit: {0}")]
    Circuit(String),
    #[error("directory stream: {0}")]
    Stream(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("no partner relay")]
    NoPartner,
}

/// Relays worth measuring: Running and Valid.
fn usable(nd: &NetDir) -> Vec<&ConsensusRelay> {
    nd.relays().iter().filter(|r| r.flags.contains(RelayFlags::RUNNING | RelayFlags::VALID)).collect()
}

/// Up to `n` distinct partners for measuring `relay`: the relays of the highest weight other
/// than it, ties in random order.
pub fn partners_for<'a>(nd: &'a NetDir, relay: &RelayId, n: usize) -> Vec<&'a ConsensusRelay> {
    let mut others: Vec<&ConsensusRelay> = usable(nd).into_iter().filter(|r| r.identity != *relay).collect();
    others.shuffle(&mut rand::thread_rng());
    others.sort_by_key(|r| std::cmp::Reverse(r.weight));
    others.truncate(n);
    others
}

/// How scanners share the relays out over time (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turns {
    /// This scanner's index among the scanners.
    pub index: u64,
    pub scanners: u64,
    pub window_ms: u64,
}

impl Turns {
    /// A scanner alone: every relay is its own, in one-minute windows.
    pub const ALONE: Turns = Turns { index: 0, scanners: 1, window_ms: 60_000 };

    /// The window holding `now_ms` (unix ms): its number, and the time left in it.
    pub fn window(&self, now_ms: u64) -> (u64, Duration) {
        let w = self.window_ms.max(1);
        (now_ms / w, Duration::from_millis(w - now_ms % w))
    }

    /// Whether `relay` is this scanner's to measure in window `k`.
    pub fn mine(&self, relay: &RelayId, k: u64) -> bool {
        let n = self.scanners.max(1);
        let bucket = u64::from_be_bytes(relay.0[..8].try_into().expect("8 bytes")) % n;
        (bucket + k % n) % n == self.index % n
    }
}

/// Fetches `bytes` through `[relay, partner]` within `limit`: bytes per second.
pub async fn measure(pool: &ChannelPool, relay: &ConsensusRelay, partner: &ConsensusRelay, bytes: usize, limit: Duration) -> Result<u64, ScanError> {
    let run = async {
        let circ = circuit::build_within(pool, &[relay, partner], limit, FlowParams::default()).await.map_err(|e| ScanError::Circuit(e.to_string()))?;
        let mut s = circ.begin_dir().await.map_err(|r| ScanError::Stream(format!("refused ({r:?})")))?;
        let start = Instant::now();
        s.write_all(&encode_request(&format!("{BW_TEST_PATH}{bytes}"))).await.map_err(|_| ScanError::Stream("closed".into()))?;
        let mut raw = Vec::with_capacity(bytes + 256);
        let limit = (bytes + MAX_RESPONSE_HEAD_LEN + 4) as u64;
        (&mut s).take(limit + 1).read_to_end(&mut raw).await.map_err(|_| ScanError::Stream("failed".into()))?;
        let took = start.elapsed();
        let r = parse_response(&raw, bytes).map_err(|e| ScanError::Stream(e.to_string()))?;
        if r.status != 200 || r.body.len() != bytes {
            return Err(ScanError::Stream(format!("answered {} with {} bytes", r.status, r.body.len())));
        }
        Ok((bytes as f64 / took.as_secs_f64().max(1e-6)) as u64)
    };
    tokio::time::timeout(limit, run).await.map_err(|_| ScanError::Timeout(limit))?
}

/// Measures `relay` [`ATTEMPTS`] times, each with another partner, all by `deadline`: the
/// highest speed.
pub async fn measure_relay(pool: &ChannelPool, nd: &NetDir, relay: &ConsensusRelay, bytes: usize, deadline: Instant) -> Result<u64, ScanError> {
    let partners = partners_for(nd, &relay.identity, ATTEMPTS);
    if partners.is_empty() {
        return Err(ScanError::NoPartner);
    }
    let mut best: Option<u64> = None;
    let mut last_err = None;
    for p in partners {
        let limit = deadline.saturating_duration_since(Instant::now()).min(MEASURE_TIMEOUT);
        if limit.is_zero() {
            break;
        }
        match measure(pool, relay, p, bytes, limit).await {
            Ok(bw) => best = Some(best.map_or(bw, |b| b.max(bw))),
            Err(e) => last_err = Some(e),
        }
    }
    best.ok_or_else(|| last_err.unwrap_or(ScanError::NoPartner))
}

/// Measures the usable relays of the consensus `next_dir` gives that are its own in the current
/// window ([`Turns`]), each once per window, the least recently tried first (before this
/// process tried one: by `measured_at`, when it was last measured), one at a time, pausing
/// `pause` between relays; each speed goes to `record(relay, bytes per second)`. With nothing
/// left to measure in a window (or less than a quarter of it left) it waits for the next. Runs
/// until `next_dir` gives `None`.
pub async fn run<D, Fut>(pool: ChannelPool, turns: Turns, mut next_dir: D, measured_at: impl Fn(&RelayId) -> Option<u64>, mut record: impl FnMut(RelayId, u64), pause: Duration)
where
    D: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Option<NetDir>>>,
{
    // When each relay was last tried (unix seconds) and in which window.
    let mut tried: HashMap<RelayId, (u64, u64)> = HashMap::new();
    loop {
        let Some(dir) = next_dir().await else { return };
        let (k, left) = turns.window(unix_now_ms());
        let relay = dir.as_ref().and_then(|nd| {
            let relays = usable(nd);
            tried.retain(|id, _| relays.iter().any(|r| r.identity == *id));
            relays
                .into_iter()
                .filter(|r| turns.mine(&r.identity, k) && tried.get(&r.identity).is_none_or(|t| t.1 != k))
                .min_by_key(|r| tried.get(&r.identity).map(|t| t.0).or_else(|| measured_at(&r.identity)).unwrap_or(0))
                .cloned()
        });
        let (Some(nd), Some(relay)) = (dir, relay) else {
            tokio::time::sleep(left.max(pause)).await;
            continue;
        };
        if left < Duration::from_millis(turns.window_ms / 4) {
            tokio::time::sleep(left).await;
            continue;
        }
        tried.insert(relay.identity, (unix_now(), k));
        match measure_relay(&pool, &nd, &relay, SCAN_BYTES, Instant::now() + left).await {
            Ok(bw) => {
                tracing::debug!(relay = %relay.identity.short(), bytes_per_sec = bw, "bandwidth measured");
                allium_net::metrics::METRICS.bandwidth_measurements.inc();
                record(relay.identity, bw);
            }
            Err(e) => {
                // Its last measurement, if any, stays until it is too old.
                tracing::debug!(relay = %relay.identity.short(), "bandwidth measurement failed: {e}");
                allium_net::metrics::METRICS.bandwidth_measurement_failures.inc();
            }
        }
        tokio::time::sleep(pause).await;
    }
}

fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In every window each relay belongs to exactly one of three scanners, and over three
    /// consecutive windows every relay belongs to each scanner once.
    #[test]
    fn scanners_share_the_relays_out() {
        let t = |index| Turns { index, scanners: 3, window_ms: 10_000 };
        for i in 0..=255u8 {
            let relay = RelayId([i; 32]);
            for k in 0..9 {
                let owners: Vec<u64> = (0..3).filter(|&s| t(s).mine(&relay, k)).collect();
                assert_eq!(owners.len(), 1, "relay {i}, window {k}: {owners:?}");
            }
            for s in 0..3 {
                assert_eq!((0..3).filter(|&k| t(s).mine(&relay, k)).count(), 1, "relay {i}, scanner {s}");
            }
        }
        assert_eq!(t(0).window(31_000), (3, Duration::from_secs(9)));
        assert!((0..5).all(|k| Turns::ALONE.mine(&RelayId([7; 32]), k)));
    }
}
