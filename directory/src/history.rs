//! What an authority remembers about each relay's reachability, across its own restarts: the
//! history the Running, Stable, HSDir and Guard flags are decided by (as Tor's router
//! history). Pure: times are passed in; [`HistoryBook::to_text`] / [`HistoryBook::from_text`]
//! give the file the authority writes atomically after each round of reachability tests.
//!
//! Per relay (by identity):
//! - **first seen**: the first test, whatever its result (*time known* = now − first seen);
//! - **run**: since when it has been up without losing Running (a failed test within the
//!   grace below does not end a run);
//! - **weighted fractional uptime (WFU)**: seconds up over seconds known, each second's weight
//!   decaying by 0.95 every 12 hours;
//! - **weighted mean time between failures (MTBF)**: the mean length of its runs (the current
//!   one included), weighted with the same decay;
//! - **recent results**: the last test, the consecutive failures since the last success and
//!   when the first of them happened.
//!
//! **Running**: the last test succeeded, or the relay was running and its failures are fewer
//! than `running-min-failures` or span less than `running-min-down-secs` (consensus
//! parameters): one lost test does not take a relay out of the consensus.

use std::collections::HashMap;

use allium_proto::ids::RelayId;
use serde::{Deserialize, Serialize};

/// A weight halves... decays by this factor every [`DECAY_SECS`].
const DECAY: f64 = 0.95;
const DECAY_SECS: f64 = 12.0 * 3600.0;
/// Histories of relays not tested for this long are forgotten.
pub const FORGET_AFTER_SECS: u64 = 30 * 86_400;
/// Most relays a history file may hold when read (an authority remembers at most
/// `limits.max_relay_descriptors`: see [`HistoryBook::record`]).
pub const MAX_HISTORIES: usize = 1_000_000;

/// When Running is lost (consensus parameters `running-min-failures`, `running-min-down-secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownRule {
    pub min_failures: u32,
    pub min_down_secs: u64,
}

/// One relay's reachability history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub first_seen: u64,
    /// Start of the current run; None while down (or never up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_since: Option<u64>,
    /// The last test and its result.
    pub last_test: u64,
    pub last_ok: bool,
    /// Consecutive failed tests, and when the first of them failed.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<u64>,
    /// Weighted seconds up, weighted seconds known.
    #[serde(default)]
    pub wfu_up: f64,
    #[serde(default)]
    pub wfu_known: f64,
    /// Weighted sum of finished run lengths, and their weighted count.
    #[serde(default)]
    pub runs_total: f64,
    #[serde(default)]
    pub runs_weight: f64,
    /// Must pass a test before being voted again (its address or link key changed).
    #[serde(default)]
    pub retest: bool,
}

impl History {
    fn new(now: u64) -> Self {
        History {
            first_seen: now,
            run_since: None,
            last_test: now,
            last_ok: false,
            failures: 0,
            failing_since: None,
            wfu_up: 0.0,
            wfu_known: 0.0,
            runs_total: 0.0,
            runs_weight: 0.0,
            retest: false,
        }
    }

    /// Whether the relay counts as Running at `now`.
    pub fn running(&self, now: u64, rule: &DownRule) -> bool {
        if self.retest {
            return false;
        }
        if self.last_ok {
            return true;
        }
        let Some(since) = self.failing_since else { return false };
        self.run_since.is_some() && (self.failures < rule.min_failures || now.saturating_sub(since) < rule.min_down_secs)
    }

    /// Seconds in the current run (0 when down).
    pub fn run_secs(&self, now: u64) -> u64 {
        self.run_since.map_or(0, |s| now.saturating_sub(s))
    }

    /// Seconds since first seen.
    pub fn known_secs(&self, now: u64) -> u64 {
        now.saturating_sub(self.first_seen)
    }

    /// Weighted fractional uptime in per mille (0 before any time is known).
    pub fn wfu_permille(&self) -> u64 {
        if self.wfu_known <= 0.0 {
            return 0;
        }
        (self.wfu_up / self.wfu_known * 1000.0).round().clamp(0.0, 1000.0) as u64
    }

    /// Weighted mean time between failures (seconds), the current run counted.
    pub fn mtbf_secs(&self, now: u64) -> u64 {
        let current = self.run_secs(now) as f64;
        let weight = self.runs_weight + if self.run_since.is_some() { 1.0 } else { 0.0 };
        if weight <= 0.0 {
            return 0;
        }
        ((self.runs_total + current) / weight) as u64
    }

    /// Records a test at `now`.
    fn record(&mut self, ok: bool, now: u64, rule: &DownRule) {
        let elapsed = now.saturating_sub(self.last_test) as f64;
        let d = DECAY.powf(elapsed / DECAY_SECS);
        let was_up = self.running(self.last_test, rule);
        self.wfu_known = self.wfu_known * d + elapsed;
        self.wfu_up = self.wfu_up * d + if was_up { elapsed } else { 0.0 };
        self.runs_total *= d;
        self.runs_weight *= d;
        self.last_test = now;
        self.last_ok = ok;
        if ok {
            self.retest = false;
            self.failures = 0;
            self.failing_since = None;
            self.run_since.get_or_insert(now);
        } else {
            self.failures += 1;
            self.failing_since.get_or_insert(now);
            if !self.running(now, rule) {
                if let Some(start) = self.run_since.take() {
                    // The run ended when the failures began.
                    self.runs_total += self.failing_since.unwrap_or(now).saturating_sub(start) as f64;
                    self.runs_weight += 1.0;
                }
            }
        }
    }
}

/// Every relay's history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryBook {
    relays: HashMap<RelayId, History>,
}

#[derive(Serialize, Deserialize)]
struct HistoryFile {
    version: u32,
    #[serde(default)]
    relay: Vec<StoredHistory>,
}

#[derive(Serialize, Deserialize)]
struct StoredHistory {
    id: String,
    #[serde(flatten)]
    h: History,
}

impl HistoryBook {
    /// Records a reachability test of `id` finished at `now`; past `cap` relays (the
    /// authority's `limits.max_relay_descriptors`: every tested relay sent a descriptor) the
    /// longest untested are forgotten.
    pub fn record(&mut self, id: RelayId, ok: bool, now: u64, rule: &DownRule, cap: usize) {
        self.relays.entry(id).or_insert_with(|| History::new(now)).record(ok, now, rule);
        if self.relays.len() > cap {
            self.forget(now, cap);
        }
    }

    pub fn get(&self, id: &RelayId) -> Option<&History> {
        self.relays.get(id)
    }

    /// Whether `id` was ever tested.
    pub fn tested(&self, id: &RelayId) -> bool {
        self.relays.contains_key(id)
    }

    /// Whether `id` passed its last test (proven reachable where it says it is).
    pub fn proven(&self, id: &RelayId) -> bool {
        self.relays.get(id).is_some_and(|h| h.last_ok && !h.retest)
    }

    /// Requires a successful test before `id` is voted again (its address or key changed); the
    /// rest of its history is kept.
    pub fn require_retest(&mut self, id: &RelayId) {
        if let Some(h) = self.relays.get_mut(id) {
            h.retest = true;
            h.last_ok = false;
        }
    }

    /// Forgets one relay entirely (evicted as never proven).
    pub fn remove(&mut self, id: &RelayId) {
        self.relays.remove(id);
    }

    /// Forgets relays untested for [`FORGET_AFTER_SECS`], then the longest untested past `cap`.
    pub fn forget(&mut self, now: u64, cap: usize) {
        self.relays.retain(|_, h| now.saturating_sub(h.last_test) < FORGET_AFTER_SECS);
        if self.relays.len() > cap {
            let mut by_age: Vec<(u64, RelayId)> = self.relays.iter().map(|(id, h)| (h.last_test, *id)).collect();
            by_age.sort_unstable();
            for (_, id) in by_age.iter().take(self.relays.len() - cap) {
                self.relays.remove(id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.relays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut relay: Vec<StoredHistory> = self.relays.iter().map(|(id, h)| StoredHistory { id: id.fingerprint(), h: h.clone() }).collect();
        relay.sort_by(|a, b| a.id.cmp(&b.id));
        let mut s = String::from("# Allium authority: relay reachability history. Written by the authority; do not edit while it runs.\n");
        s.push_str(&toml::to_string(&HistoryFile { version: 1, relay }).expect("history serialises"));
        s
    }

    /// Parses the file.
    pub fn from_text(text: &str) -> Result<Self, String> {
        let f: HistoryFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if f.version != 1 {
            return Err(format!("unknown version {}", f.version));
        }
        let mut relays = HashMap::new();
        for s in f.relay.into_iter().take(MAX_HISTORIES) {
            let id: RelayId = s.id.parse().map_err(|_| format!("bad relay identity {:?}", s.id))?;
            if !(s.h.wfu_up.is_finite() && s.h.wfu_known.is_finite() && s.h.runs_total.is_finite() && s.h.runs_weight.is_finite()) {
                return Err(format!("relay {}: weights are not numbers", s.id));
            }
            relays.insert(id, s.h);
        }
        Ok(HistoryBook { relays })
    }
}

/// The median of `v` (the lower middle for an even count); None when empty.
pub fn median(mut v: Vec<u64>) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[(v.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `limits.max_relay_descriptors` by default.
    const CAP: usize = 20_000;

    const RULE: DownRule = DownRule { min_failures: 2, min_down_secs: 600 };
    const T0: u64 = 1_800_000_000;
    const ID: RelayId = RelayId([7; 32]);

    #[test]
    fn one_failed_test_keeps_running_several_over_minutes_do_not() {
        let mut b = HistoryBook::default();
        b.record(ID, true, T0, &RULE, CAP);
        b.record(ID, false, T0 + 300, &RULE, CAP);
        let h = b.get(&ID).unwrap();
        assert!(h.running(T0 + 300, &RULE), "one failure");
        assert_eq!(h.run_since, Some(T0));
        b.record(ID, false, T0 + 600, &RULE, CAP);
        assert!(b.get(&ID).unwrap().running(T0 + 600, &RULE), "two failures within 600 s");
        b.record(ID, false, T0 + 900, &RULE, CAP);
        let h = b.get(&ID).unwrap();
        assert!(!h.running(T0 + 900, &RULE), "three failures over 600 s");
        assert_eq!(h.run_since, None);
        assert_eq!(h.mtbf_secs(T0 + 900), 300, "the run ended when the failures began");
        b.record(ID, true, T0 + 1200, &RULE, CAP);
        let h = b.get(&ID).unwrap();
        assert_eq!(h.run_since, Some(T0 + 1200));
        assert!(h.running(T0 + 1200, &RULE));
    }

    #[test]
    fn weighted_uptime_and_time_known() {
        let mut b = HistoryBook::default();
        for i in 0..=10 {
            b.record(ID, i % 5 != 4 || i == 0, T0 + i * 3600, &DownRule { min_failures: 1, min_down_secs: 0 }, CAP);
        }
        let h = b.get(&ID).unwrap();
        assert_eq!(h.known_secs(T0 + 36_000), 36_000);
        // Down in two of the ten hours.
        assert!((790..=810).contains(&h.wfu_permille()), "{}", h.wfu_permille());
    }

    #[test]
    fn the_file_round_trips_and_bad_files_are_refused() {
        let mut b = HistoryBook::default();
        b.record(ID, true, T0, &RULE, CAP);
        b.record(RelayId([9; 32]), false, T0 + 5, &RULE, CAP);
        b.record(ID, true, T0 + 3600, &RULE, CAP);
        b.require_retest(&RelayId([9; 32]));
        let back = HistoryBook::from_text(&b.to_text()).unwrap();
        assert_eq!(back, b);
        assert!(HistoryBook::from_text("version = 2\n").is_err());
        assert!(HistoryBook::from_text("version = 1\n[[relay]]\nid = \"zz\"\nfirst_seen = 1\nlast_test = 1\nlast_ok = true\n").is_err());
        let nan = b.to_text().replacen("wfu_up = 3600.0", "wfu_up = nan", 1);
        assert!(HistoryBook::from_text(&nan).is_err(), "{nan}");
    }

    #[test]
    fn a_changed_address_needs_a_new_test_but_keeps_its_history() {
        let mut b = HistoryBook::default();
        b.record(ID, true, T0, &RULE, CAP);
        b.require_retest(&ID);
        assert!(!b.proven(&ID) && !b.get(&ID).unwrap().running(T0 + 1, &RULE));
        b.record(ID, true, T0 + 60, &RULE, CAP);
        assert!(b.proven(&ID));
        assert_eq!(b.get(&ID).unwrap().first_seen, T0);
    }

    /// The book holds at most `cap` relays: the longest untested go first.
    #[test]
    fn past_its_cap_the_longest_untested_relays_are_forgotten() {
        let mut b = HistoryBook::default();
        for i in 0..5u8 {
            b.record(RelayId([i; 32]), true, T0 + i as u64, &RULE, 3);
        }
        assert_eq!(b.len(), 3);
        assert!(!b.tested(&RelayId([0; 32])) && !b.tested(&RelayId([1; 32])));
        assert!(b.tested(&RelayId([4; 32])));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![5]), Some(5));
        assert_eq!(median(vec![9, 1, 5, 7]), Some(5));
    }
}
