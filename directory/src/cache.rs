//! The consensus a client (or relay) keeps: saved in its data directory, loaded at start, and
//! used for a bounded grace after it expires while no newer one can be had.
//!
//! Rules (times in unix seconds, `now` is always passed in):
//! - A consensus is **live** while `valid-after ≤ now ≤ valid-until`.
//! - After `valid-until` it may still be used during the **grace**: [`GRACE_SECS`] (24 h) on a
//!   real network, `6 × interval` on a test network (the interval is `fresh-until −
//!   valid-after`), never more than 24 h. Every failed fetch then logs a warning saying how long
//!   ago it expired and how much grace is left. Beyond the grace it is dropped: the node has no
//!   consensus and says so.
//! - A consensus whose `valid-after` is in the future is not used; when authorities serve one
//!   more than [`SKEW_TOLERANCE_SECS`] ahead, the node says its clock is probably behind.
//! - The kept consensus is written to `data_dir/cached-consensus` through
//!   `data_dir/.cached-consensus.tmp` (written, synced, renamed), and loaded at start when its
//!   signatures verify (with the signing-key certificates checked at its `valid-after`, see
//!   `UnverifiedConsensus::dangerously_skip_time_check`) and it is live or in its grace.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use allium_proto::doc::{Consensus, ConsensusError};
use allium_proto::ids::RelayId;

use crate::fetch::{FetchAttemptError, FetchError};
use crate::netdir::NetDir;

/// Grace after `valid-until` on a real network (and the most on any network).
pub const GRACE_SECS: u64 = 24 * 3600;
/// On a test network the grace is this many voting intervals.
pub const TESTNET_GRACE_INTERVALS: u64 = 6;
/// How far ahead of the local clock a served consensus's `valid-after` may be before the node
/// reports a skewed clock.
pub const SKEW_TOLERANCE_SECS: u64 = 60;
/// The file name in the data directory.
pub const CACHE_FILE: &str = "cached-consensus";
/// The microdescriptors held for the saved consensus, beside it.
pub const MICRODESC_FILE: &str = "cached-microdescs";

/// Where a consensus stands at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usability {
    /// `valid-after` is `ahead_secs` in the future.
    NotYetValid { ahead_secs: u64 },
    /// Inside its validity interval.
    Live,
    /// Expired `expired_secs` ago; usable for `left_secs` more.
    Grace { expired_secs: u64, left_secs: u64 },
    /// Expired longer ago than the grace.
    TooOld { expired_secs: u64 },
}

impl Usability {
    pub fn usable(self) -> bool {
        matches!(self, Usability::Live | Usability::Grace { .. })
    }
}

/// The grace for a consensus with this interval.
pub fn grace_secs(testnet: bool, interval_secs: u64) -> u64 {
    if testnet {
        interval_secs.saturating_mul(TESTNET_GRACE_INTERVALS).min(GRACE_SECS)
    } else {
        GRACE_SECS
    }
}

/// Where a consensus with these times stands at `now`.
pub fn usability(valid_after: u64, valid_until: u64, grace: u64, now: u64) -> Usability {
    if now < valid_after {
        Usability::NotYetValid { ahead_secs: valid_after - now }
    } else if now <= valid_until {
        Usability::Live
    } else {
        let expired_secs = now - valid_until;
        if expired_secs <= grace {
            Usability::Grace { expired_secs, left_secs: grace - expired_secs }
        } else {
            Usability::TooOld { expired_secs }
        }
    }
}

/// A skew diagnostic for a failed fetch: `Some` when authorities served a consensus that is not
/// valid yet by more than [`SKEW_TOLERANCE_SECS`] (this clock is behind), or when every
/// authority that answered served an expired one (their clocks, or ours, are off, or they
/// stopped publishing).
pub fn skew_hint(err: &FetchError) -> Option<String> {
    let FetchError::AllFailed(attempts) = err else { return None };
    let ahead = attempts
        .iter()
        .filter_map(|a| match a.error {
            FetchAttemptError::Verify(ConsensusError::NotYetValid { valid_after, now }) => Some(valid_after.saturating_sub(now)),
            _ => None,
        })
        .max();
    if let Some(s) = ahead.filter(|&s| s > SKEW_TOLERANCE_SECS) {
        return Some(format!("an authority served a consensus that becomes valid only in {s} s: this machine's clock is probably behind"));
    }
    let answered: Vec<_> = attempts.iter().filter(|a| !matches!(a.error, FetchAttemptError::Http(_))).collect();
    let all_expired = !answered.is_empty()
        && answered.iter().all(|a| matches!(a.error, FetchAttemptError::Verify(ConsensusError::Expired { .. })));
    all_expired.then(|| {
        "every authority that answered served an expired consensus: they may have stopped publishing, or this machine's clock is ahead".to_string()
    })
}

/// The kept consensus and its file.
#[derive(Debug)]
pub struct ConsensusCache {
    dir: PathBuf,
    testnet: bool,
    current: Option<Arc<NetDir>>,
    /// Since when (Unix seconds) fetches failed with no consensus kept, and whether one was
    /// kept before (then it is trouble at once, not bootstrap).
    no_consensus_since: Option<u64>,
    lost: bool,
}

/// How long fetches may fail before the first consensus (bootstrap: the sources may still be
/// starting) before it is a warning.
pub const NO_CONSENSUS_WARN_SECS: u64 = 60;

impl ConsensusCache {
    /// An empty cache saving into `data_dir`.
    pub fn new(data_dir: &Path, testnet: bool) -> Self {
        ConsensusCache { dir: data_dir.to_path_buf(), testnet, current: None, no_consensus_since: None, lost: false }
    }

    /// Loads the saved consensus if its signatures verify, its parameters are in bounds and it
    /// is live or in its grace at `now`; otherwise logs why it was ignored and starts empty.
    pub fn load(data_dir: &Path, authorities: &[RelayId], testnet: bool, now: u64) -> Self {
        let mut c = Self::new(data_dir, testnet);
        let path = data_dir.join(CACHE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return c,
            Err(e) => {
                tracing::warn!("ignoring the saved consensus: {e}");
                return c;
            }
        };
        let nd = Consensus::parse(&text)
            .map_err(|e| e.to_string())
            .and_then(|u| u.dangerously_skip_time_check(authorities).map_err(|e| e.to_string()))
            .and_then(|c| NetDir::new(c, Default::default()).map_err(|e| e.to_string()))
            .map(|mut nd| {
                // Microdescriptors that do not match the consensus are simply not taken.
                if let Ok(mds) = std::fs::read_to_string(data_dir.join(MICRODESC_FILE)) {
                    nd.add_microdescs(&mds);
                }
                nd
            });
        match nd {
            Ok(nd) => {
                let u = c.usability_of(&nd, now);
                if u.usable() {
                    tracing::info!(valid_after = %allium_proto::time::Utc(nd.valid_after()), relays = nd.relays().len(), "loaded the saved consensus");
                    c.current = Some(Arc::new(nd));
                } else {
                    tracing::warn!("ignoring the saved consensus: {u:?}");
                }
            }
            Err(e) => tracing::warn!("ignoring the saved consensus: {e}"),
        }
        c
    }

    fn usability_of(&self, nd: &NetDir, now: u64) -> Usability {
        usability(nd.valid_after(), nd.valid_until(), grace_secs(self.testnet, nd.interval_secs()), now)
    }

    /// Where the kept consensus stands at `now` (`None`: nothing kept).
    pub fn status(&self, now: u64) -> Option<Usability> {
        self.current.as_ref().map(|nd| self.usability_of(nd, now))
    }

    /// The kept consensus, whatever its time (e.g. to reuse its microdescriptors).
    pub fn current(&self) -> Option<Arc<NetDir>> {
        self.current.clone()
    }

    /// The kept consensus if usable at `now`.
    pub fn usable(&self, now: u64) -> Option<Arc<NetDir>> {
        self.current.clone().filter(|nd| self.usability_of(nd, now).usable())
    }

    /// Keeps a freshly verified consensus (unless an older one than the kept one) and saves it.
    /// Returns the consensus now kept.
    pub fn store(&mut self, nd: NetDir) -> Arc<NetDir> {
        if let Some(cur) = self.current.as_ref().filter(|c| c.valid_after() > nd.valid_after()) {
            return cur.clone();
        }
        let saved = save(&self.dir, CACHE_FILE, nd.consensus_text()).and_then(|()| save(&self.dir, MICRODESC_FILE, &nd.microdescs().all_text()));
        if let Err(e) = saved {
            tracing::warn!("cannot save the consensus in the data directory: {e}");
        }
        let nd = Arc::new(nd);
        self.current = Some(nd.clone());
        self.no_consensus_since = None;
        nd
    }

    /// A failed fetch at `now` with no consensus kept: true if it is to be a warning (fetches
    /// have failed for [`NO_CONSENSUS_WARN_SECS`], or a consensus was kept and lost), false
    /// while bootstrapping (sources not up yet, or not holding a consensus yet).
    fn no_consensus_is_trouble(&mut self, now: u64) -> bool {
        let since = *self.no_consensus_since.get_or_insert(now);
        self.lost || now.saturating_sub(since) >= NO_CONSENSUS_WARN_SECS
    }

    /// After a failed fetch at `now`: logs what the node is doing about it (loudly in the grace
    /// and beyond) and returns the consensus to keep using, if any.
    pub fn fetch_failed(&mut self, err: &FetchError, now: u64) -> Option<Arc<NetDir>> {
        if let Some(h) = skew_hint(err) {
            tracing::warn!("clock skew? {h}");
        }
        match self.status(now) {
            None if self.no_consensus_is_trouble(now) => {
                let secs = now.saturating_sub(self.no_consensus_since.unwrap_or(now));
                tracing::warn!("no consensus: every fetch failed for {secs} s: {err}")
            }
            None => tracing::info!("no consensus yet (bootstrapping; retrying): {err}"),
            Some(Usability::Live) => tracing::debug!("consensus fetch failed (keeping the current one): {err}"),
            Some(Usability::Grace { expired_secs, left_secs }) => tracing::warn!(
                "the consensus expired {expired_secs} s ago and no newer one can be had; still using it for at most {left_secs} s more: {err}"
            ),
            Some(u @ (Usability::TooOld { .. } | Usability::NotYetValid { .. })) => {
                tracing::error!("no usable consensus ({u:?}; grace over): not building circuits until one can be fetched: {err}");
                self.current = None;
                self.lost = true;
            }
        }
        self.usable(now)
    }
}

/// Writes `text` to `dir/name` atomically (temporary file, sync, rename).
pub fn save(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netdir::tests::{netdir as signed_netdir, relay};
    use allium_proto::doc::{ConsensusMeta, Lifetime, RelayFlags};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("allium-cache-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn netdir(va: u64, i: u64) -> (NetDir, Vec<RelayId>) {
        let lt = Lifetime::new(va, va + i, va + 3 * i).unwrap();
        signed_netdir(lt, ConsensusMeta::default(), vec![relay(1, RelayFlags::RUNNING | RelayFlags::VALID, 1, &[])], va)
    }

    fn failure() -> FetchError {
        FetchError::AllFailed(vec![])
    }

    #[test]
    fn usability_rule() {
        assert_eq!(usability(100, 130, 60, 99), Usability::NotYetValid { ahead_secs: 1 });
        assert_eq!(usability(100, 130, 60, 100), Usability::Live);
        assert_eq!(usability(100, 130, 60, 130), Usability::Live);
        assert_eq!(usability(100, 130, 60, 131), Usability::Grace { expired_secs: 1, left_secs: 59 });
        assert_eq!(usability(100, 130, 60, 190), Usability::Grace { expired_secs: 60, left_secs: 0 });
        assert_eq!(usability(100, 130, 60, 191), Usability::TooOld { expired_secs: 61 });
        assert_eq!(grace_secs(false, 3600), 24 * 3600);
        assert_eq!(grace_secs(true, 10), 60);
        assert_eq!(grace_secs(true, 86_400), 24 * 3600, "never beyond 24 h");
    }

    #[test]
    fn kept_across_restart_used_in_grace_and_dropped_after() {
        let d = dir("restart");
        let (nd, ids) = netdir(1000, 10); // valid until 1030, grace 60 s on a testnet
        let mut c = ConsensusCache::new(&d, true);
        c.store(nd);
        assert!(d.join(CACHE_FILE).exists() && !d.join(format!(".{CACHE_FILE}.tmp")).exists());
        // Restart: loaded while live or in grace.
        let c2 = ConsensusCache::load(&d, &ids, true, 1020);
        assert_eq!(c2.status(1020), Some(Usability::Live));
        let mut c3 = ConsensusCache::load(&d, &ids, true, 1050);
        assert!(c3.usable(1050).is_some(), "in grace after a restart");
        assert!(c3.fetch_failed(&failure(), 1089).is_some(), "still in grace");
        assert!(c3.fetch_failed(&failure(), 1091).is_none(), "grace over: dropped");
        assert_eq!(c3.status(1091), None);
        // Too old at start, or on a real network with a longer grace.
        assert!(ConsensusCache::load(&d, &ids, true, 1091).usable(1091).is_none());
        assert!(ConsensusCache::load(&d, &ids, false, 1091).usable(1091).is_some());
        // Wrong authorities or a corrupt file: ignored.
        assert!(ConsensusCache::load(&d, &[RelayId([9; 32])], true, 1020).usable(1020).is_none());
        let text = std::fs::read_to_string(d.join(CACHE_FILE)).unwrap();
        std::fs::write(d.join(CACHE_FILE), &text[..text.len() - 10]).unwrap();
        assert!(ConsensusCache::load(&d, &ids, true, 1020).usable(1020).is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Bootstrap: fetches failing before the first consensus (sources starting, 404 "no
    /// consensus yet") are not warnings until they last [`NO_CONSENSUS_WARN_SECS`]; a stored
    /// consensus resets that; losing a kept one is trouble at once.
    #[test]
    fn no_consensus_during_bootstrap_is_not_a_warning_until_it_lasts() {
        let d = dir("bootstrap");
        let mut c = ConsensusCache::new(&d, true);
        assert!(!c.no_consensus_is_trouble(1000));
        assert!(!c.no_consensus_is_trouble(1000 + NO_CONSENSUS_WARN_SECS - 1));
        assert!(c.no_consensus_is_trouble(1000 + NO_CONSENSUS_WARN_SECS));
        assert!(c.fetch_failed(&failure(), 1100).is_none());
        c.store(netdir(1000, 10).0);
        // Later restarts of the count begin from the failure after a store.
        c.current = None;
        assert!(!c.no_consensus_is_trouble(2000));
        // A consensus kept and dropped after its grace: a warning from the first failure.
        let mut c = ConsensusCache::new(&d, true);
        c.store(netdir(1000, 10).0);
        assert!(c.fetch_failed(&failure(), 1091).is_none(), "grace over: dropped");
        assert!(c.no_consensus_is_trouble(1092));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn newer_consensus_replaces_older_only() {
        let d = dir("newer");
        let mut c = ConsensusCache::new(&d, true);
        c.store(netdir(1010, 10).0);
        assert_eq!(c.store(netdir(1000, 10).0).valid_after(), 1010);
        assert_eq!(c.store(netdir(1020, 10).0).valid_after(), 1020);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn skew_is_reported() {
        use crate::fetch::FetchAttempt;
        let att = |error| FetchAttempt { source: "a".into(), error };
        let ahead = FetchError::AllFailed(vec![att(FetchAttemptError::Verify(ConsensusError::NotYetValid { valid_after: 5000, now: 1000 }))]);
        assert!(skew_hint(&ahead).unwrap().contains("clock is probably behind"));
        let slight = FetchError::AllFailed(vec![att(FetchAttemptError::Verify(ConsensusError::NotYetValid { valid_after: 1030, now: 1000 }))]);
        assert!(skew_hint(&slight).is_none());
        let expired = FetchError::AllFailed(vec![
            att(FetchAttemptError::Verify(ConsensusError::Expired { valid_until: 10, now: 1000 })),
            att(FetchAttemptError::Http("connection refused".into())),
        ]);
        assert!(skew_hint(&expired).unwrap().contains("clock is ahead"));
    }
}
