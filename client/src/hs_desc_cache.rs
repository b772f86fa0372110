//! The client's cache of onion-service descriptors (their decrypted introduction points), by
//! service identity. Sans-IO: times are passed in (unix seconds).
//!
//! An entry is used until the descriptor's lifetime ends (counted from when it was fetched) or
//! the time period changes, whichever comes first. Introduction points that failed are
//! remembered with the entry; once every one has failed the entry is dropped, so the next
//! request fetches the descriptor again (the service may have moved to new points).
//!
//! The cache also remembers the highest revision seen for each blinded key (longer than the
//! entries, up to [`MAX_REVISIONS`] keys), so a hostile HSDir cannot serve an older descriptor
//! once a newer one was seen (THREATS A5).

use std::collections::HashMap;

use allium_proto::hs::{IntroList, IntroPoint, TimePeriod};

/// One cached descriptor.
#[derive(Debug, Clone)]
pub struct CachedDesc {
    pub intro_points: Vec<IntroPoint>,
    /// The period the descriptor is for.
    pub period: TimePeriod,
    /// When it stops being used (fetch time + its lifetime).
    pub expires: u64,
    /// Auth keys of introduction points that failed.
    pub failed: Vec<[u8; 32]>,
    /// The blinded key and revision of the descriptor (0 when not from a descriptor).
    pub blinded: [u8; 32],
    pub revision: u64,
    /// The proof-of-work effort the service suggests (0: none asked, [`allium_proto::hs::pow`]).
    pub suggested_effort: u32,
}

/// Blinded keys whose highest seen revision is remembered.
pub const MAX_REVISIONS: usize = 4096;

impl CachedDesc {
    pub fn new(list: IntroList, period: TimePeriod, fetched_at: u64, lifetime_secs: u64) -> Self {
        let suggested_effort = allium_proto::hs::pow::suggested_effort(&list.ext);
        CachedDesc { intro_points: list.intro_points, period, expires: fetched_at.saturating_add(lifetime_secs), failed: Vec::new(), blinded: [0; 32], revision: 0, suggested_effort }
    }

    /// Whether every introduction point has failed.
    pub fn exhausted(&self) -> bool {
        self.intro_points.iter().all(|p| self.failed.contains(&p.auth_key))
    }
}

/// Descriptors by service identity.
#[derive(Debug, Default)]
pub struct DescCache {
    entries: HashMap<[u8; 32], CachedDesc>,
    /// The highest revision seen for each blinded key.
    highest: HashMap<[u8; 32], u64>,
}

impl DescCache {
    /// The usable entry for `identity` in `period` at `now`; a stale one is dropped.
    pub fn get(&mut self, identity: &[u8; 32], period: TimePeriod, now: u64) -> Option<&CachedDesc> {
        let fresh = self.entries.get(identity).is_some_and(|e| e.period == period && now < e.expires && !e.exhausted());
        if !fresh {
            self.entries.remove(identity);
            return None;
        }
        self.entries.get(identity)
    }

    /// Keeps `desc` for `identity`, and its revision as the highest seen for its blinded key.
    pub fn insert(&mut self, identity: [u8; 32], desc: CachedDesc) {
        if self.highest.len() >= MAX_REVISIONS && !self.highest.contains_key(&desc.blinded) {
            // Forget one other key (most belong to past periods).
            if let Some(k) = self.highest.keys().next().copied() {
                self.highest.remove(&k);
            }
        }
        let h = self.highest.entry(desc.blinded).or_insert(0);
        *h = (*h).max(desc.revision);
        self.entries.insert(identity, desc);
    }

    /// The highest revision seen for `blinded` (0 if none): an older descriptor is refused.
    pub fn highest_revision(&self, blinded: &[u8; 32]) -> u64 {
        self.highest.get(blinded).copied().unwrap_or(0)
    }

    /// Records that the introduction point `auth_key` of `identity`'s descriptor failed. True
    /// if that was the last usable one (the entry is dropped).
    pub fn mark_failed(&mut self, identity: &[u8; 32], auth_key: [u8; 32]) -> bool {
        let Some(e) = self.entries.get_mut(identity) else { return false };
        if !e.failed.contains(&auth_key) {
            e.failed.push(auth_key);
        }
        if e.exhausted() {
            self.entries.remove(identity);
            return true;
        }
        false
    }

    /// Drops `identity`'s entry.
    pub fn remove(&mut self, identity: &[u8; 32]) {
        self.entries.remove(identity);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::ext::Extensions;
    use allium_proto::relay_msg::ExtendTarget;

    fn point(i: u8) -> IntroPoint {
        IntroPoint {
            relay: ExtendTarget { addr: format!("127.0.0.{i}:9001").parse().unwrap(), identity: [i; 32], link_key: [i; 32] },
            onion_key: [i; 32],
            auth_key: [i; 32],
            enc_key: [i; 32],
            ext: Extensions::none(),
        }
    }

    fn desc(n: u8, period: TimePeriod, at: u64, lifetime: u64) -> CachedDesc {
        CachedDesc::new(IntroList { intro_points: (1..=n).map(point).collect(), ext: Extensions::none() }, period, at, lifetime)
    }

    const P: TimePeriod = TimePeriod { number: 10, length_secs: 86_400 };

    #[test]
    fn entries_last_until_their_lifetime_or_the_period_ends() {
        let mut c = DescCache::default();
        c.insert([1; 32], desc(2, P, 1000, 3600));
        assert!(c.get(&[1; 32], P, 1000).is_some());
        assert!(c.get(&[1; 32], P, 4599).is_some());
        assert!(c.get(&[2; 32], P, 1000).is_none(), "another service");
        assert!(c.get(&[1; 32], P, 4600).is_none(), "lifetime over");
        assert!(c.is_empty(), "a stale entry is dropped");
        c.insert([1; 32], desc(2, P, 1000, 3600));
        assert!(c.get(&[1; 32], P.next(), 1001).is_none(), "the period changed");
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn an_entry_whose_points_all_failed_is_dropped() {
        let mut c = DescCache::default();
        c.insert([1; 32], desc(3, P, 0, 3600));
        assert!(!c.mark_failed(&[1; 32], [1; 32]));
        assert!(!c.mark_failed(&[1; 32], [1; 32]), "counted once");
        assert!(!c.mark_failed(&[1; 32], [9; 32]), "not one of its points");
        assert_eq!(c.get(&[1; 32], P, 1).unwrap().failed, vec![[1; 32], [9; 32]]);
        assert!(!c.mark_failed(&[1; 32], [2; 32]));
        assert!(c.mark_failed(&[1; 32], [3; 32]), "the last one");
        assert!(c.get(&[1; 32], P, 1).is_none());
        assert!(!c.mark_failed(&[1; 32], [3; 32]), "no entry any more");
    }

    /// The highest revision seen for a blinded key outlives the entry.
    #[test]
    fn the_highest_revision_is_remembered() {
        let mut c = DescCache::default();
        let mut d = desc(2, P, 0, 10);
        d.blinded = [7; 32];
        d.revision = 500;
        c.insert([1; 32], d.clone());
        assert_eq!(c.highest_revision(&[7; 32]), 500);
        assert!(c.get(&[1; 32], P, 20).is_none(), "entry expired");
        assert_eq!(c.highest_revision(&[7; 32]), 500, "still remembered");
        d.revision = 400;
        c.insert([1; 32], d);
        assert_eq!(c.highest_revision(&[7; 32]), 500, "never goes down");
        assert_eq!(c.highest_revision(&[8; 32]), 0);
    }
}
