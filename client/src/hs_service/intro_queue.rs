//! A service's introductions waiting for a rendezvous build, best proof of work first
//! (THREATS A29), and the proof-of-work effort it suggests in its descriptor.
//!
//! An INTRODUCE2 is ranked by the effort its proof of work proves (checked with one hash,
//! before its x25519 decryption); equal efforts are served oldest first. The queue is bounded:
//! when full, a newcomer displaces the lowest-ranked waiting introduction if it ranks higher,
//! and is dropped otherwise; an introduction that waited longer than the client waits for its
//! rendezvous is dropped when it comes up. While the service is not overloaded the effort it
//! suggests is 0 and the queue stays nearly empty; the suggestion rises (at least
//! [`MIN_SUGGESTED`], doubling) after a period with drops, a half-full queue or introductions
//! arriving at 80 % of what its points forward, and halves after a calm period, back to 0.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use allium_proto::hs::pow::MAX_EFFORT;
use allium_proto::relay_msg::IntroduceBody;

/// An introduction waiting longer than this is dropped (its client has given up on it).
pub const MAX_WAIT: Duration = Duration::from_secs(25);
/// How often the suggested effort is reconsidered.
pub const EFFORT_PERIOD: Duration = Duration::from_secs(20);
/// The lowest effort suggested once the service is overloaded.
pub const MIN_SUGGESTED: u32 = 64;

/// One waiting introduction.
#[derive(Debug)]
pub struct Waiting {
    pub auth_key: [u8; 32],
    pub body: IntroduceBody,
    pub effort: u32,
    at: Instant,
}

/// What became of a pushed introduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued; the lowest-ranked one waiting was dropped for it.
    Displaced,
    /// Not queued: the queue was full of ones ranked at least as high.
    Dropped,
}

/// The queue and its effort controller.
#[derive(Debug)]
pub struct IntroQueue {
    waiting: BTreeMap<(u32, Reverse<u64>), Waiting>,
    seq: u64,
    cap: usize,
    suggested: u32,
    period_start: Instant,
    arrivals: u64,
    dropped: u64,
    longest: usize,
}

impl IntroQueue {
    pub fn new(cap: usize, now: Instant) -> Self {
        IntroQueue { waiting: BTreeMap::new(), seq: 0, cap, suggested: 0, period_start: now, arrivals: 0, dropped: 0, longest: 0 }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The effort the descriptor should suggest (0: none).
    pub fn suggested(&self) -> u32 {
        self.suggested
    }

    /// Queues an introduction proving `effort`.
    pub fn push(&mut self, auth_key: [u8; 32], body: IntroduceBody, effort: u32, now: Instant) -> Pushed {
        self.arrivals += 1;
        self.seq += 1;
        let key = (effort, Reverse(self.seq));
        let mut outcome = Pushed::Queued;
        if self.waiting.len() >= self.cap {
            let lowest = *self.waiting.keys().next().expect("a full queue is not empty");
            if lowest >= key {
                self.dropped += 1;
                return Pushed::Dropped;
            }
            self.waiting.remove(&lowest);
            self.dropped += 1;
            outcome = Pushed::Displaced;
        }
        self.waiting.insert(key, Waiting { auth_key, body, effort, at: now });
        self.longest = self.longest.max(self.waiting.len());
        outcome
    }

    /// The best-ranked introduction that has not waited too long; older ones are dropped
    /// (returned count).
    pub fn pop(&mut self, now: Instant) -> (Option<Waiting>, usize) {
        let mut expired = 0;
        while let Some((_, w)) = self.waiting.pop_last() {
            if now.saturating_duration_since(w.at) <= MAX_WAIT {
                return (Some(w), expired);
            }
            expired += 1;
            self.dropped += 1;
        }
        (None, expired)
    }

    /// Ends an effort period if [`EFFORT_PERIOD`] has passed; `forwarded_per_sec` is what the
    /// service's introduction points forward at most (their rate times their number). Returns
    /// the new suggestion when it changed.
    pub fn tick(&mut self, now: Instant, forwarded_per_sec: u64) -> Option<u32> {
        let elapsed = now.saturating_duration_since(self.period_start);
        if elapsed < EFFORT_PERIOD {
            return None;
        }
        let capacity = forwarded_per_sec as f64 * elapsed.as_secs_f64();
        let overloaded = self.dropped > 0 || self.longest >= self.cap / 2 || self.arrivals as f64 >= 0.8 * capacity;
        let before = self.suggested;
        self.suggested = if overloaded {
            self.suggested.saturating_mul(2).clamp(MIN_SUGGESTED, MAX_EFFORT)
        } else if self.suggested / 2 < MIN_SUGGESTED {
            0
        } else {
            self.suggested / 2
        };
        self.period_start = now;
        (self.arrivals, self.dropped, self.longest) = (0, 0, self.waiting.len());
        (self.suggested != before).then_some(self.suggested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::ext::Extensions;

    fn body(i: u8) -> IntroduceBody {
        IntroduceBody { auth_key: [i; 32], ext: Extensions::none(), encrypted: vec![i; 64] }
    }

    #[test]
    fn best_effort_first_then_oldest_and_a_full_queue_keeps_the_best() {
        let t0 = Instant::now();
        let mut q = IntroQueue::new(3, t0);
        assert_eq!(q.push([1; 32], body(1), 0, t0), Pushed::Queued);
        assert_eq!(q.push([2; 32], body(2), 500, t0), Pushed::Queued);
        assert_eq!(q.push([3; 32], body(3), 0, t0), Pushed::Queued);
        // Full: another without work is dropped; one with work displaces the newest without.
        assert_eq!(q.push([4; 32], body(4), 0, t0), Pushed::Dropped);
        assert_eq!(q.push([5; 32], body(5), 64, t0), Pushed::Displaced);
        let order: Vec<u8> = std::iter::from_fn(|| q.pop(t0).0).map(|w| w.auth_key[0]).collect();
        assert_eq!(order, vec![2, 5, 1], "by effort, then oldest first");
        // Expired introductions are dropped when they come up.
        q.push([6; 32], body(6), 0, t0);
        let (w, expired) = q.pop(t0 + MAX_WAIT + Duration::from_secs(1));
        assert!(w.is_none() && expired == 1);
    }

    #[test]
    fn the_suggested_effort_rises_under_load_and_falls_back_to_zero() {
        let t0 = Instant::now();
        let mut q = IntroQueue::new(4, t0);
        assert_eq!(q.tick(t0 + EFFORT_PERIOD, 10), None, "calm: nothing suggested");
        // A period in which introductions arrive at the points' whole rate.
        let mut t = t0 + EFFORT_PERIOD;
        for _ in 0..200 {
            q.push([1; 32], body(1), 0, t);
            q.pop(t);
        }
        t += EFFORT_PERIOD;
        assert_eq!(q.tick(t, 10), Some(MIN_SUGGESTED));
        // Drops in the next period double it.
        for _ in 0..6 {
            q.push([1; 32], body(1), 0, t);
        }
        while q.pop(t).0.is_some() {}
        t += EFFORT_PERIOD;
        assert_eq!(q.tick(t, 10), Some(2 * MIN_SUGGESTED));
        t += EFFORT_PERIOD;
        assert_eq!(q.tick(t, 10), Some(MIN_SUGGESTED), "calm: halved");
        t += EFFORT_PERIOD;
        assert_eq!(q.tick(t, 10), Some(0), "calm again: dormant");
    }
}
