//! Descriptor revision counters that link nothing (docs/PROTOCOL.md, "Publishing").
//!
//! Each period's descriptor gets its own counter, an order-preserving keyed function of the
//! time: `Σ_{i=0}^{off} (1 + w_i)`, where `off` is the seconds since the start of the period
//! before the descriptor's (so it fits `[0, 2L)` while the service publishes for the current and
//! the next period) and `w_i` are 16-bit words of a ChaCha20 stream keyed by
//! `SHA-256("allium-hs-revision-v1" | identity secret | u64be(n) | u64be(L))`. So a revision
//! grows with time within a period but reveals neither the publishing time nor the other
//! period's revision (their keys differ), and an HSDir cannot join the two descriptors by it.
//! A counter never repeats or goes down: the last one used for each period is kept (and saved
//! in the key directory, so a restart with the clock set back still goes up).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use allium_proto::hs::TimePeriod;
use ed25519_dalek::SigningKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

/// Domain separation of a period's revision key.
const KEY_PREFIX: &[u8] = b"allium-hs-revision-v1";
/// Periods whose counters are kept (the current and the next, plus one of slack).
const KEPT: usize = 3;

/// The counter of `period` at `now` (unix seconds), before the never-go-down rule.
pub fn revision_at(identity: &SigningKey, period: TimePeriod, now: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(KEY_PREFIX);
    h.update(identity.to_bytes());
    h.update(period.number.to_be_bytes());
    h.update(period.length_secs.to_be_bytes());
    let mut stream = ChaCha20Rng::from_seed(h.finalize().into());
    let from = period.start().saturating_sub(period.length_secs);
    let off = now.saturating_sub(from).min(2 * period.length_secs - 1);
    (0..=off).map(|_| 1 + u64::from(stream.next_u32() & 0xffff)).sum()
}

/// The last counter used for each recent period, kept in a file.
pub struct Revisions {
    last: BTreeMap<(u64, u64), u64>,
    file: PathBuf,
}

impl Revisions {
    /// Reads `file` (lines `n L revision`); a missing or unreadable file gives none.
    pub fn load(file: &Path) -> Self {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let last = text
            .lines()
            .filter_map(|l| {
                let v: Vec<u64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
                (v.len() == 3).then(|| ((v[0], v[1]), v[2]))
            })
            .collect();
        Revisions { last, file: file.to_path_buf() }
    }

    /// The counter for `period`'s next descriptor: [`revision_at`], or one more than the last
    /// one used for that period if that is not larger.
    pub fn next(&mut self, identity: &SigningKey, period: TimePeriod, now: u64) -> u64 {
        let key = (period.number, period.length_secs);
        let r = revision_at(identity, period, now).max(self.last.get(&key).map_or(0, |l| l.saturating_add(1)));
        self.last.insert(key, r);
        while self.last.len() > KEPT {
            let oldest = *self.last.keys().next().expect("not empty");
            self.last.remove(&oldest);
        }
        r
    }

    /// Saves the counters (a failure is logged: the clock still gives growing counters unless
    /// it goes back).
    pub fn save(&self, name: &str) {
        let text: String = self.last.iter().map(|((n, l), r)| format!("{n} {l} {r}\n")).collect();
        if let Err(e) = crate::state_file::write_atomic(&self.file, &text) {
            tracing::warn!("onion service {name}: cannot save the descriptor revision counters: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: u64 = 3600;

    fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i; 32])
    }

    /// Grows with time within a period; the two periods' counters at one instant share nothing
    /// visible (different keys: not equal, not a fixed offset apart); another service's differ.
    #[test]
    fn revisions_grow_and_link_nothing() {
        let p = TimePeriod { number: 100, length_secs: L };
        let t = p.start() + 1000;
        let a = revision_at(&key(1), p, t);
        assert!(revision_at(&key(1), p, t + 1) > a);
        assert!(revision_at(&key(1), p, t + 600) > revision_at(&key(1), p, t + 599));
        let next = revision_at(&key(1), p.next(), t);
        assert_ne!(a, next);
        let d1 = revision_at(&key(1), p.next(), t + 10) as i128 - revision_at(&key(1), p, t + 10) as i128;
        let d2 = revision_at(&key(1), p.next(), t + 500) as i128 - revision_at(&key(1), p, t + 500) as i128;
        assert_ne!(d1, d2, "no fixed offset between the periods");
        assert_ne!(revision_at(&key(2), p, t), a);
        // Not the time: neither seconds nor milliseconds.
        assert_ne!(a, t);
        assert_ne!(a, t * 1000);
    }

    #[test]
    fn counters_never_repeat_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("allium-revisions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("descriptor_revision");
        let p = TimePeriod { number: 100, length_secs: L };
        let t = p.start() + 1000;
        let mut r = Revisions::load(&f);
        let first = r.next(&key(1), p, t);
        assert_eq!(r.next(&key(1), p, t), first + 1, "same second: one more");
        r.save("t");
        let mut again = Revisions::load(&f);
        assert_eq!(again.next(&key(1), p, t - 500), first + 2, "restart with the clock set back");
        for q in 1..=5 {
            again.next(&key(1), TimePeriod { number: 100 + q, length_secs: L }, t);
        }
        assert_eq!(again.last.len(), KEPT, "old periods are forgotten");
        std::fs::write(&f, "garbage").unwrap();
        assert!(Revisions::load(&f).last.is_empty(), "an unreadable file: the clock decides");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
