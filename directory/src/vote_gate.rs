//! Pushed votes are checked before they are parsed (issue 12 point 6): a vote may be 8 MiB,
//! and anyone can name an authority of the network in its header.
//!
//! - A push identical to the vote already held from the voter it names for the period it names
//!   is answered "unchanged", and a different one "conflict", from its header alone (replaying
//!   a real vote costs a comparison).
//! - Each voter a push may name has a budget of refused pushes: a burst of
//!   `limits.vote_push_burst` (3 by default), refilled
//!   by one per voting interval. Beyond it, pushes naming that voter are refused (429,
//!   `vote_pushes_over_budget`) unparsed. The real voter loses nothing by it: an authority pulls
//!   every vote it lacks from the voter's own address before computing a regular round's
//!   consensus, and pulled votes are not gated.
//! - A push's body is read incrementally: once its header names the voter (within the first
//!   [`crate::server::VOTE_HEADER_PREFIX`] bytes), a push naming no peer is refused (403) with
//!   nothing more read, and at most [`MAX_VOTE_PUSHES_IN_FLIGHT`] pushes naming one voter are
//!   read at a time; one more is refused at once (503, `vote_pushes_in_flight`). So memory for
//!   pushed votes is bounded by peers × [`MAX_VOTE_PUSHES_IN_FLIGHT`] × 8 MiB, however many
//!   connections push.

use std::collections::HashMap;
use std::sync::Mutex;

use allium_proto::ids::RelayId;

/// Pushes naming one voter whose bodies are read at the same time. An honest authority pushes
/// its vote once a period; 2 leaves room for a push of the previous period still arriving.
pub const MAX_VOTE_PUSHES_IN_FLIGHT: usize = 2;

/// The refused-push budget of every voter (the caller admits only peers, so it holds at most
/// one entry per authority of the network), and the pushes naming each being read.
#[derive(Debug)]
pub struct PushBudget {
    interval_ms: u64,
    /// Refused pushes naming one voter allowed in a row.
    burst: u64,
    /// Per voter: the bucket's level in milliseconds of refill time, and when it was last set.
    level: Mutex<HashMap<RelayId, (u64, u64)>>,
    /// Per voter: pushes naming it being read or checked now (no entry: none).
    in_flight: Mutex<HashMap<RelayId, usize>>,
}

/// One push naming `voter` being read; its place is given back when this is dropped.
#[derive(Debug)]
pub struct InFlight<'a> {
    budget: &'a PushBudget,
    voter: RelayId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.budget.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.voter) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.voter);
            }
        }
    }
}

impl PushBudget {
    /// A budget of `burst` refused pushes per voter, refilled by one per `interval_ms` (the
    /// voting interval).
    pub fn new(interval_ms: u64, burst: u64) -> Self {
        PushBudget { interval_ms: interval_ms.max(1), burst: burst.max(1), level: Mutex::new(HashMap::new()), in_flight: Mutex::new(HashMap::new()) }
    }

    /// A place to read a push naming `voter`, or `None` if [`MAX_VOTE_PUSHES_IN_FLIGHT`] such
    /// pushes are being read already.
    pub fn begin(&self, voter: &RelayId) -> Option<InFlight<'_>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(*voter).or_insert(0);
        if *n >= MAX_VOTE_PUSHES_IN_FLIGHT {
            return None;
        }
        *n += 1;
        Some(InFlight { budget: self, voter: *voter })
    }

    fn level_at(&self, voter: &RelayId, now_ms: u64) -> u64 {
        let map = self.level.lock().unwrap_or_else(|e| e.into_inner());
        map.get(voter).map_or(0, |&(level, at)| level.saturating_sub(now_ms.saturating_sub(at)))
    }

    /// Whether a push naming `voter` may be parsed at `now_ms`.
    pub fn allows(&self, voter: &RelayId, now_ms: u64) -> bool {
        self.level_at(voter, now_ms) + self.interval_ms <= self.burst * self.interval_ms
    }

    /// Counts a refused push naming `voter` at `now_ms`.
    pub fn refused(&self, voter: &RelayId, now_ms: u64) {
        let level = self.level_at(voter, now_ms) + self.interval_ms;
        self.level.lock().unwrap_or_else(|e| e.into_inner()).insert(*voter, (level.min(self.burst * self.interval_ms), now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_refusals_in_a_row_then_one_per_interval() {
        let (a, b) = (RelayId([1; 32]), RelayId([2; 32]));
        let budget = PushBudget::new(10_000, 3);
        for t in [0, 1, 2] {
            assert!(budget.allows(&a, t), "refusal {t} is within the burst");
            budget.refused(&a, t);
        }
        assert!(!budget.allows(&a, 3), "the fourth push in a row is refused unparsed");
        assert!(budget.allows(&b, 3), "each voter has its own budget");
        // The level, 29,998 ms at t = 2, drains 1 ms per ms: room for one more at t = 10,000.
        assert!(!budget.allows(&a, 9_999), "refilled by one per interval: not yet");
        assert!(budget.allows(&a, 10_000));
        budget.refused(&a, 10_000);
        assert!(!budget.allows(&a, 10_001), "that one spent it again");
        assert!(budget.allows(&a, 40_000), "three intervals refill the whole burst");
        for t in 40_000..40_003 {
            assert!(budget.allows(&a, t));
            budget.refused(&a, t);
        }
        assert!(!budget.allows(&a, 40_003));
    }

    #[test]
    fn pushes_in_flight_are_capped_per_voter_and_given_back() {
        let (a, b) = (RelayId([1; 32]), RelayId([2; 32]));
        let budget = PushBudget::new(10_000, 3);
        let held: Vec<_> = (0..MAX_VOTE_PUSHES_IN_FLIGHT).map(|_| budget.begin(&a).expect("within the cap")).collect();
        assert!(budget.begin(&a).is_none(), "one more naming the same voter is refused");
        let other = budget.begin(&b).expect("each voter has its own places");
        drop(held);
        assert!(budget.begin(&a).is_some(), "places are given back");
        drop(other);
        assert!(budget.in_flight.lock().unwrap().is_empty(), "nothing left behind");
    }
}
