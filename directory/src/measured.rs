//! Measured bandwidths: what this authority's bandwidth scanner saw each relay carry
//! (`allium_client::bwscan`, run by an authority with `authority.bandwidth_scan`), kept in its
//! data directory (`bandwidth-measurements`, written atomically after each measurement) so a
//! restart keeps them.
//!
//! An authority that scans votes each relay's weight as `min(self-report capped at bw-cap,
//! measured)`, and `min(self-report capped, bw-unmeasured-cap)` for a relay it has no fresh
//! measurement of (a new relay, or one not measured for [`MAX_AGE_SECS`]). A self-report only
//! caps the weight: a relay claiming more than it carries gets what the scanner saw. The
//! consensus weight is the low median of the listing authorities' weights, so weights are
//! measured once more than half of the authorities scan. File lines:
//! `<fingerprint> <bytes per second> <unix time measured>`.

use std::collections::HashMap;
use std::path::Path;

use allium_proto::ids::RelayId;

/// The file in an authority's data directory.
pub const MEASUREMENTS_FILE: &str = "bandwidth-measurements";
/// Measurements older than this are not used.
pub const MAX_AGE_SECS: u64 = 5 * 86_400;
/// Most relays remembered (the oldest measurements are dropped beyond it).
pub const MAX_MEASURED: usize = 20_000;

/// The latest measurement of each relay: bytes per second, and when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measurements {
    by: HashMap<RelayId, (u64, u64)>,
}

impl Measurements {
    /// Records that `id` carried `bytes_per_sec` at `at`.
    pub fn record(&mut self, id: RelayId, bytes_per_sec: u64, at: u64) {
        self.by.insert(id, (bytes_per_sec, at));
        if self.by.len() > MAX_MEASURED {
            if let Some(oldest) = self.by.iter().min_by_key(|(_, (_, t))| *t).map(|(id, _)| *id) {
                self.by.remove(&oldest);
            }
        }
    }

    /// The measurement of `id` if it is fresh at `now`.
    pub fn get(&self, id: &RelayId, now: u64) -> Option<u64> {
        self.by.get(id).filter(|(_, at)| now.saturating_sub(*at) <= MAX_AGE_SECS).map(|(bw, _)| *bw)
    }

    /// When `id` was last measured.
    pub fn measured_at(&self, id: &RelayId) -> Option<u64> {
        self.by.get(id).map(|(_, at)| *at)
    }

    pub fn len(&self) -> usize {
        self.by.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }

    /// The file text, sorted by fingerprint (written with `crate::cache::save`, atomically).
    pub fn to_text(&self) -> String {
        let mut lines: Vec<String> = self.by.iter().map(|(id, (bw, at))| format!("{} {bw} {at}\n", id.fingerprint())).collect();
        lines.sort();
        lines.concat()
    }

    /// Reads the file text; lines that do not parse are skipped (the file is ours, but a
    /// truncated or edited one must not stop the authority).
    pub fn from_text(text: &str) -> Self {
        let mut m = Measurements::default();
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if let [id, bw, at] = f[..] {
                if let (Ok(id), Ok(bw), Ok(at)) = (id.parse::<RelayId>(), bw.parse(), at.parse()) {
                    m.record(id, bw, at);
                }
            }
        }
        m
    }

    /// The measurements saved in `dir` (none if the file is missing or unreadable).
    pub fn load(dir: &Path) -> Self {
        std::fs::read_to_string(dir.join(MEASUREMENTS_FILE)).map(|t| Self::from_text(&t)).unwrap_or_default()
    }
}

/// The weight a scanning authority votes: the self-report (already capped at `bw-cap`) capped
/// by the measurement, or by `unmeasured_cap` without one.
pub fn measured_weight(capped_self_report: u64, measured: Option<u64>, unmeasured_cap: u64) -> u64 {
    capped_self_report.min(measured.unwrap_or(unmeasured_cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_capped_by_the_measurement_or_the_unmeasured_default() {
        assert_eq!(measured_weight(2_000_000, Some(200_000), 20_000), 200_000, "a claim above what it carried");
        assert_eq!(measured_weight(50_000, Some(200_000), 20_000), 50_000, "the self-report caps");
        assert_eq!(measured_weight(2_000_000, None, 20_000), 20_000, "not measured");
    }

    #[test]
    fn measurements_round_trip_and_expire() {
        let mut m = Measurements::default();
        m.record(RelayId([1; 32]), 123_456, 1000);
        m.record(RelayId([2; 32]), 7, 2000);
        let back = Measurements::from_text(&format!("{}garbage line\n", m.to_text()));
        assert_eq!(back, m);
        assert_eq!(back.get(&RelayId([1; 32]), 1000 + MAX_AGE_SECS), Some(123_456));
        assert_eq!(back.get(&RelayId([1; 32]), 1001 + MAX_AGE_SECS), None, "too old");
        assert_eq!(back.get(&RelayId([3; 32]), 1000), None);
    }
}
