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

use std::collections::HashMap;
use std::sync::Mutex;

use allium_proto::ids::RelayId;

/// The refused-push budget of every voter (the caller admits only peers, so it holds at most
/// one entry per authority of the network).
#[derive(Debug)]
pub struct PushBudget {
    interval_ms: u64,
    /// Refused pushes naming one voter allowed in a row.
    burst: u64,
    /// Per voter: the bucket's level in milliseconds of refill time, and when it was last set.
    level: Mutex<HashMap<RelayId, (u64, u64)>>,
}

impl PushBudget {
    /// A budget of `burst` refused pushes per voter, refilled by one per `interval_ms` (the
    /// voting interval).
    pub fn new(interval_ms: u64, burst: u64) -> Self {
        PushBudget { interval_ms: interval_ms.max(1), burst: burst.max(1), level: Mutex::new(HashMap::new()) }
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
}
