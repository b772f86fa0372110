//! The service's replay cache for one introduction point (one auth key).
//!
//! A replayed INTRODUCE2 would make the service build another circuit to the rendezvous point
//! the client named, which an observer could count or time. The service keeps, per introduction
//! point, the digests
//!
//! ```text
//! SHA-256("allium-hs-replay-v1" | encrypted part)
//! ```
//!
//! of the INTRODUCE2 encrypted parts it accepted, and refuses one it has seen. It checks after
//! the encrypted part decrypted (a garbage message never enters the cache) and before it acts.
//! The encrypted part's tag covers the cleartext too, so any change that decrypts is a new
//! client message, not a replay.
//!
//! Memory is bounded: at most `max_entries` digests, each kept `ttl_secs`; when full, the oldest
//! is dropped. A dropped or expired digest could be replayed again, so a service keeps
//! `ttl_secs` at least the lifetime of the introduction point and retires the introduction
//! point (new auth and encryption keys, hence a fresh cache) once [`ReplayCache::saturated`]
//! says the cache had to drop an unexpired digest.

use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, VecDeque};

/// Prefix of the digest.
pub const REPLAY_DIGEST_PREFIX: &[u8] = b"allium-hs-replay-v1";
/// Default number of digests per introduction point (about 3 MiB at worst).
pub const DEFAULT_MAX_ENTRIES: usize = 32_768;
/// Default time a digest is kept: as long as an introduction point accepts introductions (its
/// default lifetime of 24 hours plus the 12-hour retirement grace, see [`super::intro_set`]).
pub const DEFAULT_TTL_SECS: u64 = 36 * 3600;

/// The digest of one encrypted part.
pub fn replay_digest(encrypted: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(REPLAY_DIGEST_PREFIX);
    h.update(encrypted);
    h.finalize().into()
}

/// An INTRODUCE2 the service has already accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("replayed INTRODUCE2")]
pub struct Replayed;

/// Seen digests of one introduction point, with expiry and a cap.
#[derive(Debug, Clone)]
pub struct ReplayCache {
    /// Digest → expiry time.
    seen: HashMap<[u8; 32], u64>,
    /// Insertion order with the expiry each entry had then.
    order: VecDeque<([u8; 32], u64)>,
    max_entries: usize,
    ttl_secs: u64,
    dropped_live: u64,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES, DEFAULT_TTL_SECS)
    }
}

impl ReplayCache {
    /// A cache of at most `max_entries` (at least 1) digests kept `ttl_secs` each.
    pub fn new(max_entries: usize, ttl_secs: u64) -> Self {
        ReplayCache { seen: HashMap::new(), order: VecDeque::new(), max_entries: max_entries.max(1), ttl_secs, dropped_live: 0 }
    }

    /// Digests held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether the cap forced out a digest before it expired (retire the introduction point).
    pub fn saturated(&self) -> bool {
        self.dropped_live > 0
    }

    /// Drops expired digests.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(d, exp)) = self.order.front() {
            if exp > now {
                break;
            }
            self.order.pop_front();
            self.remove_if(&d, exp);
        }
    }

    fn remove_if(&mut self, d: &[u8; 32], exp: u64) {
        if self.seen.get(d) == Some(&exp) {
            self.seen.remove(d);
        }
    }

    /// Records the encrypted part of an INTRODUCE2 that decrypted at `now`; refuses it if it was
    /// seen and has not expired.
    pub fn check_and_insert(&mut self, encrypted: &[u8], now: u64) -> Result<(), Replayed> {
        self.expire(now);
        let d = replay_digest(encrypted);
        if let Some(&exp) = self.seen.get(&d) {
            if exp > now {
                return Err(Replayed);
            }
        }
        while self.seen.len() >= self.max_entries {
            let Some((old, exp)) = self.order.pop_front() else { break };
            if self.seen.get(&old) == Some(&exp) {
                self.seen.remove(&old);
                if exp > now {
                    self.dropped_live += 1;
                }
            }
        }
        let exp = now.saturating_add(self.ttl_secs);
        self.seen.insert(d, exp);
        self.order.push_back((d, exp));
        // Stale order entries (from a clock that went back) are bounded too.
        while self.order.len() > 2 * self.max_entries {
            let (old, e) = self.order.pop_front().expect("non-empty");
            self.remove_if(&old, e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replay_rejected_fresh_accepted() {
        let mut c = ReplayCache::new(10, 100);
        assert_eq!(c.check_and_insert(b"one", 1000), Ok(()));
        assert_eq!(c.check_and_insert(b"two", 1001), Ok(()));
        assert_eq!(c.check_and_insert(b"one", 1050), Err(Replayed));
        assert_eq!(c.check_and_insert(b"two", 1100), Err(Replayed));
        assert_eq!(c.len(), 1, "`one` expired at 1100");
    }

    #[test]
    fn expiry_frees_memory() {
        let mut c = ReplayCache::new(10, 100);
        c.check_and_insert(b"one", 1000).unwrap();
        c.check_and_insert(b"two", 1050).unwrap();
        c.expire(1100);
        assert_eq!(c.len(), 1);
        assert_eq!(c.check_and_insert(b"two", 1149), Err(Replayed));
        c.expire(1150);
        assert!(c.is_empty());
        // After expiry (the introduction point should be retired by then) it is accepted again.
        assert_eq!(c.check_and_insert(b"one", 1200), Ok(()));
        assert!(!c.saturated());
    }

    #[test]
    fn cap_drops_oldest_and_reports_saturation() {
        let mut c = ReplayCache::new(3, 1000);
        for (i, m) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            c.check_and_insert(*m, i as u64).unwrap();
        }
        assert_eq!(c.len(), 3);
        assert!(c.saturated());
        assert_eq!(c.check_and_insert(b"d", 10), Err(Replayed));
        assert_eq!(c.check_and_insert(b"c", 10), Err(Replayed));
        assert_eq!(c.check_and_insert(b"a", 10), Ok(()), "the oldest was dropped");
    }

    #[test]
    fn clock_going_back_stays_bounded() {
        let mut c = ReplayCache::new(4, 10);
        for i in 0..100u64 {
            let now = if i % 2 == 0 { 1000 + i } else { 500 };
            let _ = c.check_and_insert(&i.to_be_bytes(), now);
            assert!(c.len() <= 4 && c.order.len() <= 8);
        }
    }

    proptest! {
        #[test]
        fn bounded_and_never_accepts_a_live_duplicate(ops in proptest::collection::vec((0u8..12, 0u64..50), 1..200)) {
            let mut c = ReplayCache::new(5, 20);
            let mut now = 0;
            let mut accepted: Vec<(u8, u64)> = Vec::new();
            for (m, dt) in ops {
                now += dt;
                let r = c.check_and_insert(&[m], now);
                // If it was accepted in the last ttl and the cache never dropped a live entry,
                // it must be refused.
                let live = accepted.iter().any(|&(am, at)| am == m && at + 20 > now);
                if live && !c.saturated() {
                    prop_assert_eq!(r, Err(Replayed));
                }
                if r.is_ok() {
                    accepted.push((m, now));
                }
                prop_assert!(c.len() <= 5);
            }
        }
    }
}
