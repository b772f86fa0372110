//! An HSDir's descriptor cache, sans-IO: what it accepts, keeps, replaces and drops.
//!
//! Descriptors are filed under their blinded key (unique to one service and period). An upload is
//! accepted when it parses, its signature verifies under the blinded key it names, its period is
//! acceptable at `now` ([`HsDescriptor::period_acceptable`]) and, if a descriptor for that key is
//! held, [`should_replace`] says so — and only when the caller's ring says this HSDir is
//! responsible for the blinded key in the descriptor's period (checked before the signature, so
//! junk for other HSDirs costs no public-key work). Each is kept until `stored_at + lifetime`. The
//! cache holds at most a configured number of descriptors and bytes; when full (after dropping
//! expired ones) the descriptors stored longest ago are evicted to make room: an upload is never
//! refused for space, so a flood cannot lock real services out (THREATS A30, issue "Holds its
//! ground"; real services re-upload and so stay).

use std::collections::HashMap;

use super::desc::{should_replace, HsDescError, HsDescriptor};
use super::TimePeriod;

/// Default most descriptors held.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// Default most bytes of descriptor text held.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// What an accepted upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// No descriptor was held for this blinded key.
    New,
    /// It replaced one with a lower revision.
    Replaced,
    /// The same revision is held already (a no-op).
    AlreadyHeld,
}

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(#[from] HsDescError),
    #[error("descriptor is for a period that is not current (or adjacent) here")]
    WrongPeriod,
    #[error("a descriptor with a higher revision is held")]
    Older,
    #[error("descriptor is larger than the whole cache")]
    Full,
    #[error("this HSDir is not responsible for that blinded key in that period")]
    NotResponsible,
}

#[derive(Debug, Clone)]
struct Entry {
    desc: HsDescriptor,
    text: String,
    expires: u64,
    /// Order of storing (the smallest is evicted first).
    seq: u64,
}

/// The cache of one HSDir.
#[derive(Debug, Clone)]
pub struct HsDirStore {
    period_len: u64,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    entries: HashMap<[u8; 32], Entry>,
    next_seq: u64,
    evicted: u64,
}

impl HsDirStore {
    /// An empty cache for a network whose periods last `period_len` seconds.
    pub fn new(period_len: u64, max_entries: usize, max_bytes: usize) -> Self {
        HsDirStore { period_len, max_entries, max_bytes, bytes: 0, entries: HashMap::new(), next_seq: 0, evicted: 0 }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of descriptor text held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The network's period length changed (a consensus set another `hs-period-secs`): later
    /// uploads are checked against it.
    pub fn set_period_len(&mut self, period_len: u64) {
        self.period_len = period_len;
    }

    /// Descriptors evicted for room so far.
    pub fn evictions(&self) -> u64 {
        self.evicted
    }

    /// Handles an upload received at `now`. `responsible(blinded key, period)`: whether this
    /// HSDir is on the ring of that period for that key.
    pub fn offer(&mut self, text: &str, now: u64, responsible: impl Fn(&[u8; 32], TimePeriod) -> bool) -> Result<Stored, StoreError> {
        let unverified = HsDescriptor::parse(text)?;
        if !responsible(unverified.claimed_blinded_key(), unverified.claimed_period()) {
            return Err(StoreError::NotResponsible);
        }
        let desc = unverified.verify_self_signed()?;
        if !desc.period_acceptable(now, self.period_len) {
            return Err(StoreError::WrongPeriod);
        }
        self.expire(now);
        let outcome = match self.entries.get(&desc.blinded_key) {
            Some(old) if should_replace(&old.desc, &desc) => Stored::Replaced,
            Some(old) if old.desc.period == desc.period && old.desc.revision == desc.revision => return Ok(Stored::AlreadyHeld),
            Some(_) => return Err(StoreError::Older),
            None => Stored::New,
        };
        if text.len() > self.max_bytes || self.max_entries == 0 {
            return Err(StoreError::Full);
        }
        if let Some(old) = self.entries.remove(&desc.blinded_key) {
            self.bytes -= old.text.len();
        }
        while self.entries.len() >= self.max_entries || self.bytes + text.len() > self.max_bytes {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.seq).map(|(k, _)| *k) else { break };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.text.len();
                self.evicted += 1;
            }
        }
        self.bytes += text.len();
        let expires = desc.expires_at(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(desc.blinded_key, Entry { desc, text: text.to_string(), expires, seq });
        Ok(outcome)
    }

    /// The descriptor text held for `blinded_key` at `now`, if any.
    pub fn get(&self, blinded_key: &[u8; 32], now: u64) -> Option<&str> {
        self.entries.get(blinded_key).filter(|e| now < e.expires).map(|e| e.text.as_str())
    }

    /// Drops every descriptor whose lifetime is over at `now`.
    pub fn expire(&mut self, now: u64) {
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let keep = now < e.expires;
            if !keep {
                freed += e.text.len();
            }
            keep
        });
        self.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hs::blind::{BlindedKey, TimePeriod};
    use ed25519_dalek::SigningKey;

    const L: u64 = 86_400;

    fn upload(seed: u8, revision: u64, lifetime: u64, period: TimePeriod) -> String {
        let key = BlindedKey::derive(&SigningKey::from_bytes(&[seed; 32]), period);
        HsDescriptor { blinded_key: key.public(), period, revision, lifetime_secs: lifetime, encrypted: vec![seed; 100] }.encode_signed(&key)
    }

    fn any(_: &[u8; 32], _: TimePeriod) -> bool {
        true
    }

    fn key_of(text: &str) -> [u8; 32] {
        *HsDescriptor::parse(text).unwrap().claimed_blinded_key()
    }

    #[test]
    fn store_replace_refuse_expire() {
        let p = TimePeriod { number: 20_000, length_secs: L };
        let now = p.start() + 10;
        let mut s = HsDirStore::new(L, 10, 1 << 20);
        let d1 = upload(1, 1, 3600, p);
        assert_eq!(s.offer(&d1, now, any), Ok(Stored::New));
        assert_eq!(s.offer(&d1, now, any), Ok(Stored::AlreadyHeld));
        assert_eq!(s.get(&key_of(&d1), now), Some(d1.as_str()));
        let d2 = upload(1, 2, 3600, p);
        assert_eq!(s.offer(&d2, now + 1, any), Ok(Stored::Replaced));
        assert_eq!(s.offer(&d1, now + 2, any), Err(StoreError::Older), "older revision refused");
        assert_eq!(s.get(&key_of(&d1), now + 2), Some(d2.as_str()));
        // A bad signature is refused.
        let forged = d2.replace("revision 2", "revision 3");
        assert!(matches!(s.offer(&forged, now, any), Err(StoreError::Invalid(HsDescError::BadSignature))));
        // Periods too far from now are refused.
        let far = upload(2, 1, 3600, TimePeriod { number: 20_002, length_secs: L });
        assert_eq!(s.offer(&far, now, any), Err(StoreError::WrongPeriod));
        let next = upload(2, 1, 3600, p.next());
        assert_eq!(s.offer(&next, now, any), Ok(Stored::New));
        // Expiry: lifetime counted from when it was stored.
        assert_eq!(s.get(&key_of(&d2), now + 1 + 3599), Some(d2.as_str()));
        assert_eq!(s.get(&key_of(&d2), now + 1 + 3600), None);
        s.expire(now + 1 + 3600);
        assert_eq!(s.len(), 0);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn bounded_by_evicting_the_longest_stored_never_by_refusing() {
        let p = TimePeriod { number: 20_000, length_secs: L };
        let now = p.start();
        let one = upload(1, 1, 60, p).len();
        let mut s = HsDirStore::new(L, 2, 1 << 20);
        assert_eq!(s.offer(&upload(1, 1, 60, p), now, any), Ok(Stored::New));
        assert_eq!(s.offer(&upload(2, 1, 60, p), now, any), Ok(Stored::New));
        assert_eq!(s.offer(&upload(3, 1, 60, p), now, any), Ok(Stored::New), "full: the longest stored makes room");
        assert_eq!(s.evictions(), 1);
        assert!(s.get(&key_of(&upload(1, 1, 60, p)), now).is_none());
        // Replacing a held key evicts nothing and refreshes its place.
        assert_eq!(s.offer(&upload(2, 2, 60, p), now, any), Ok(Stored::Replaced));
        assert_eq!(s.evictions(), 1);
        assert_eq!(s.offer(&upload(4, 1, 60, p), now, any), Ok(Stored::New));
        assert!(s.get(&key_of(&upload(3, 1, 60, p)), now).is_none(), "3 was stored before 2's replacement");
        assert!(s.get(&key_of(&upload(2, 2, 60, p)), now).is_some());
        let mut s = HsDirStore::new(L, 100, one * 2);
        for i in 1..=5 {
            assert_eq!(s.offer(&upload(i, 1, 60, p), now, any), Ok(Stored::New));
        }
        assert_eq!(s.len(), 2);
        assert!(s.bytes() <= one * 2);
        let mut tiny = HsDirStore::new(L, 100, one - 1);
        assert_eq!(tiny.offer(&upload(1, 1, 60, p), now, any), Err(StoreError::Full));
    }

    #[test]
    fn only_keys_this_hsdir_is_responsible_for_are_stored_and_before_any_signature_check() {
        let p = TimePeriod { number: 20_000, length_secs: L };
        let now = p.start();
        let mut s = HsDirStore::new(L, 100, 1 << 20);
        let d = upload(1, 1, 60, p);
        assert_eq!(s.offer(&d, now, |_, _| false), Err(StoreError::NotResponsible));
        // A forged descriptor for a key it is not responsible for is refused as such: the
        // responsibility check comes first.
        let forged = d.replace("revision 1", "revision 9");
        assert_eq!(s.offer(&forged, now, |_, _| false), Err(StoreError::NotResponsible));
        let k = key_of(&d);
        assert_eq!(s.offer(&d, now, |key, period| *key == k && period == p), Ok(Stored::New));
    }
}
