//! Token buckets: a rate with a burst, alone ([`TokenBucket`]) or one per address with a
//! defense period for addresses that emptied theirs ([`AddrBuckets`]). Time is passed in, so
//! both are plain state machines.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::conn::AddrKey;

/// `rate` tokens a second, at most `burst` saved; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens in millionths, so slow rates refill smoothly.
    micro: u64,
    rate: u64,
    burst: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket { micro: u64::from(burst) * 1_000_000, rate: rate.into(), burst: burst.into(), last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let add = (dt.as_micros() as u64).saturating_mul(self.rate);
        self.micro = self.micro.saturating_add(add).min(self.burst * 1_000_000);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.micro >= 1_000_000 {
            self.micro -= 1_000_000;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full (it carries no history worth keeping).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.micro >= self.burst * 1_000_000
    }
}

/// One bucket per address. An address that finds its bucket empty is refused everything for
/// the defense period, then starts again with a full bucket.
pub struct AddrBuckets {
    rate: u32,
    burst: u32,
    defense: Duration,
    map: HashMap<AddrKey, Entry>,
}

struct Entry {
    bucket: TokenBucket,
    marked_until: Option<Instant>,
}

/// Entries kept before idle ones (full bucket, no mark) are dropped.
const PRUNE_AT: usize = 4096;

impl AddrBuckets {
    pub fn new(rate: u32, burst: u32, defense: Duration) -> Self {
        AddrBuckets { rate, burst, defense, map: HashMap::new() }
    }

    /// Takes a token for `key`; false while it is marked or when its bucket is empty (which
    /// marks it until `now + defense`).
    pub fn take(&mut self, key: AddrKey, now: Instant) -> bool {
        if self.map.len() >= PRUNE_AT && !self.map.contains_key(&key) {
            self.map.retain(|_, e| e.marked_until.is_some_and(|t| t > now) || !e.bucket.is_full(now));
        }
        let (rate, burst) = (self.rate, self.burst);
        let e = self.map.entry(key).or_insert_with(|| Entry { bucket: TokenBucket::new(rate, burst, now), marked_until: None });
        match e.marked_until {
            Some(t) if now < t => return false,
            Some(_) => {
                e.marked_until = None;
                e.bucket = TokenBucket::new(rate, burst, now);
            }
            None => {}
        }
        if e.bucket.take(now) {
            true
        } else {
            e.marked_until = Some(now + self.defense);
            false
        }
    }

    /// Addresses tracked (bounded by pruning).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 90, t0);
        assert_eq!((0..200).filter(|_| b.take(t0)).count(), 90);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!((0..200).filter(|_| b.take(t1)).count(), 30);
        // Never more than the burst, however long it rested.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..200).filter(|_| b.take(t2)).count(), 90);
        // Time going backwards gives nothing.
        assert!(!b.take(t0));
    }

    #[test]
    fn an_address_that_empties_its_bucket_is_refused_for_the_defense_period() {
        let t0 = Instant::now();
        let mut m = AddrBuckets::new(3, 10, Duration::from_secs(60));
        let a = AddrKey::from("192.0.2.1".parse::<std::net::IpAddr>().unwrap());
        let b = AddrKey::from("192.0.2.2".parse::<std::net::IpAddr>().unwrap());
        assert_eq!((0..20).filter(|_| m.take(a, t0)).count(), 10);
        // Marked: even after the bucket would have refilled.
        assert!(!m.take(a, t0 + Duration::from_secs(30)));
        assert!(m.take(b, t0), "another address is unaffected");
        // The mark expires and the address starts with a full bucket.
        assert_eq!((0..20).filter(|_| m.take(a, t0 + Duration::from_secs(61))).count(), 10);
    }

    #[test]
    fn idle_addresses_are_pruned() {
        let t0 = Instant::now();
        let mut m = AddrBuckets::new(1000, 1, Duration::from_secs(1));
        for i in 0..(PRUNE_AT as u32 + 10) {
            m.take(AddrKey::from(std::net::IpAddr::from(i.to_be_bytes())), t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(m.len() <= PRUNE_AT + 10);
        assert!(m.len() < 100, "entries whose buckets refilled were dropped: {}", m.len());
    }
}
