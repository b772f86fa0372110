//! How loudly to log a condition that is expected for a while and trouble when it lasts (a peer
//! authority not up yet, no consensus during bootstrap, no usable guard in a new network's
//! first consensus), and rate-limiting an error that repeats (a state file that cannot be
//! written).

use std::time::{Duration, Instant};

/// Consecutive failures of one thing: the first `quiet` are expected (log them at info), later
/// ones are trouble (warn). A success resets the streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureStreak {
    failures: u32,
    quiet: u32,
}

impl FailureStreak {
    /// A streak whose first `quiet` failures are expected.
    pub const fn new(quiet: u32) -> Self {
        FailureStreak { failures: 0, quiet }
    }

    /// Records a failure; true if it should be logged as a warning.
    pub fn fail(&mut self) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.failures > self.quiet
    }

    /// Records a success; true if the streak it ends had been warned about (log the recovery).
    pub fn succeed(&mut self) -> bool {
        let warned = self.failures > self.quiet;
        self.failures = 0;
        warned
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// At most one report per interval; the reports in between are counted, not logged.
#[derive(Debug, Clone)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(every: Duration) -> Self {
        RateLimit { every, last: None, suppressed: 0 }
    }

    /// At `now`: `Some(n)` if a report is due (`n`: how many were suppressed since the last
    /// one), `None` if this one is to be suppressed.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Forgets the last report (after the condition cleared): the next one is logged at once.
    pub fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streak_is_quiet_then_warns_and_resets() {
        let mut s = FailureStreak::new(2);
        assert!(!s.fail());
        assert!(!s.fail());
        assert!(s.fail());
        assert!(s.fail());
        assert_eq!(s.failures(), 4);
        assert!(s.succeed(), "the recovery of a warned streak is reported");
        assert!(!s.fail(), "a success starts a new quiet period");
        assert!(!s.succeed());
        let mut never_quiet = FailureStreak::new(0);
        assert!(never_quiet.fail());
    }

    #[test]
    fn rate_limit_counts_what_it_suppresses() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(60));
        assert_eq!(r.check(t0), Some(0));
        assert_eq!(r.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(59)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(r.check(t0 + Duration::from_secs(61)), None);
        r.reset();
        assert_eq!(r.check(t0 + Duration::from_secs(62)), Some(0));
    }
}
