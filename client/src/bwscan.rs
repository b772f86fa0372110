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
//! - authorities take turns ([`Turns`]): with `n` scanning authorities, the one of index `i`
//!   (in the order of their identities) measures only in the windows `k` of `W` milliseconds
//!   (unix time) with `k mod n = i`, and ends each measurement by the end of its window, so two
//!   scanners never share a relay's capacity (a measurement taken while another scanner loads
//!   the same relay would see a fraction of it).
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

/// The windows in which one of several scanners measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turns {
    /// This scanner's index among the scanners.
    pub index: u64,
    pub scanners: u64,
    pub window_ms: u64,
}

impl Turns {
    /// A scanner alone: always its turn.
    pub const ALONE: Turns = Turns { index: 0, scanners: 1, window_ms: 60_000 };

    /// How long its current turn lasts from `now_ms` (unix ms), or `Err(wait)` until its next
    /// turn when it is another scanner's (or less than a quarter of its own window is left).
    pub fn left(&self, now_ms: u64) -> Result<Duration, Duration> {
        let w = self.window_ms.max(1);
        let n = self.scanners.max(1);
        let k = now_ms / w;
        let end = (k + 1) * w;
        if k % n == self.index % n && end - now_ms >= w / 4 {
            return Ok(Duration::from_millis(end - now_ms));
        }
        // The next window of ours after this one.
        let mut next = k + 1;
        while next % n != self.index % n {
            next += 1;
        }
        Err(Duration::from_millis(next * w - now_ms))
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

/// Measures every usable relay of the consensus `next_dir` gives, the least recently tried
/// first (before this process tried one: by `measured_at`, when it was last measured), one at a
/// time, pausing `pause` between relays; each speed goes to `record(relay, bytes per second)`.
/// Measures only in its `turns`. Runs until `next_dir` gives `None`.
pub async fn run<D, Fut>(pool: ChannelPool, turns: Turns, mut next_dir: D, measured_at: impl Fn(&RelayId) -> Option<u64>, mut record: impl FnMut(RelayId, u64), pause: Duration)
where
    D: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Option<NetDir>>>,
{
    let mut tried: HashMap<RelayId, u64> = HashMap::new();
    loop {
        let Some(dir) = next_dir().await else { return };
        let relay = dir.as_ref().and_then(|nd| {
            let relays = usable(nd);
            tried.retain(|id, _| relays.iter().any(|r| r.identity == *id));
            relays.into_iter().min_by_key(|r| tried.get(&r.identity).copied().or_else(|| measured_at(&r.identity)).unwrap_or(0)).cloned()
        });
        let (Some(nd), Some(relay)) = (dir, relay) else {
            tokio::time::sleep(pause.max(Duration::from_secs(1))).await;
            continue;
        };
        let left = match turns.left(unix_now_ms()) {
            Ok(left) => left,
            Err(wait) => {
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        tried.insert(relay.identity, unix_now());
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

    /// Three scanners with 10-s windows: each measures in every third window, never two at
    /// once, and not in the last quarter of its own window.
    #[test]
    fn scanners_take_turns() {
        let t = |index| Turns { index, scanners: 3, window_ms: 10_000 };
        for now in (0..90_000).step_by(500) {
            let mine: Vec<u64> = (0..3).filter(|&i| t(i).left(now).is_ok()).collect();
            assert!(mine.len() <= 1, "at {now}: {mine:?}");
        }
        assert_eq!(t(0).left(30_000), Ok(Duration::from_secs(10)));
        assert_eq!(t(0).left(38_000), Err(Duration::from_secs(22)), "too little left: wait for window 6");
        assert_eq!(t(1).left(30_000), Err(Duration::from_secs(10)));
        assert_eq!(t(2).left(31_000), Err(Duration::from_secs(19)));
        assert_eq!(Turns::ALONE.left(59_000), Err(Duration::from_secs(1)));
        assert!(Turns::ALONE.left(60_000).is_ok());
    }
}
