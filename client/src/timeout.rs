//! The circuit-build timeout, learned from recent build times (sans-IO).
//!
//! Rule:
//! - fewer than [`MIN_SAMPLES`] successful builds recorded: [`INITIAL`] (60 s, generous; a
//!   test network may start lower, `client.dangerous_initial_build_timeout_ms`);
//! - otherwise: the 95th percentile of the last [`WINDOW`] successful build times × [`FACTOR`]
//!   (2), at least [`FLOOR`] (1.5 s) and at most [`INITIAL`];
//! - after [`RESET_AFTER_TIMEOUTS`] builds in a row time out, the network probably changed (or
//!   the client's link did): the samples are dropped and the timeout is [`INITIAL`] again.
//!
//! A build abandoned on timeout is retried on a new path; each further attempt for the same
//! request doubles its allowance (capped at [`INITIAL`]), so a briefly slow network still gets
//! its circuit while a black-holed relay costs one short timeout.

use std::collections::VecDeque;
use std::time::Duration;

pub const INITIAL: Duration = Duration::from_secs(60);
pub const FLOOR: Duration = Duration::from_millis(1500);
pub const MIN_SAMPLES: usize = 20;
pub const WINDOW: usize = 100;
pub const PERCENTILE: f64 = 0.95;
pub const FACTOR: u32 = 2;
pub const RESET_AFTER_TIMEOUTS: u32 = 3;

/// Recent build times and the timeout they give.
#[derive(Debug, Clone)]
pub struct TimeoutLearner {
    /// The timeout until enough samples are held ([`INITIAL`] unless a test network says).
    initial: Duration,
    samples: VecDeque<Duration>,
    timeouts_in_a_row: u32,
    /// Successful builds recorded in total (for logging).
    total: u64,
}

impl Default for TimeoutLearner {
    fn default() -> Self {
        Self::new()
    }
}

impl TimeoutLearner {
    pub fn new() -> Self {
        Self::with_initial(INITIAL)
    }

    /// A learner whose timeout before learning is `initial` (at most [`INITIAL`]).
    pub fn with_initial(initial: Duration) -> Self {
        TimeoutLearner { initial: initial.min(INITIAL), samples: VecDeque::new(), timeouts_in_a_row: 0, total: 0 }
    }

    /// Samples currently held.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// True once the timeout comes from samples rather than [`INITIAL`].
    pub fn learned(&self) -> bool {
        self.samples.len() >= MIN_SAMPLES
    }

    /// The timeout for a first build attempt.
    pub fn timeout(&self) -> Duration {
        if !self.learned() {
            return self.initial;
        }
        let mut v: Vec<Duration> = self.samples.iter().copied().collect();
        v.sort_unstable();
        let idx = ((PERCENTILE * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        (v[idx] * FACTOR).clamp(FLOOR, INITIAL)
    }

    /// The timeout for attempt `n` (0-based) of one request: doubled per attempt, capped.
    pub fn timeout_for_attempt(&self, n: usize) -> Duration {
        self.timeout().saturating_mul(1 << n.min(6)).min(INITIAL)
    }

    /// A build finished in `d`. Returns true when this sample made the timeout learned (the
    /// first time, or again after a reset), or every [`MIN_SAMPLES`] builds after: a moment to
    /// log it.
    pub fn record_success(&mut self, d: Duration) -> bool {
        self.timeouts_in_a_row = 0;
        self.samples.push_back(d);
        if self.samples.len() > WINDOW {
            self.samples.pop_front();
        }
        self.total += 1;
        self.learned() && (self.samples.len() == MIN_SAMPLES || self.total.checked_rem(MIN_SAMPLES as u64) == Some(0))
    }

    /// A build was abandoned at its timeout. Returns true if this reset the learner (back to
    /// its initial timeout).
    pub fn record_timeout(&mut self) -> bool {
        self.timeouts_in_a_row += 1;
        if self.timeouts_in_a_row >= RESET_AFTER_TIMEOUTS && !self.samples.is_empty() {
            self.samples.clear();
            self.timeouts_in_a_row = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn generous_until_enough_samples() {
        let mut t = TimeoutLearner::new();
        assert_eq!(t.timeout(), INITIAL);
        for i in 0..MIN_SAMPLES - 1 {
            assert!(!t.record_success(ms(100 + i as u64)));
            assert_eq!(t.timeout(), INITIAL);
        }
        assert!(t.record_success(ms(100)), "the 20th sample is worth a log line");
        assert!(t.learned());
        assert!(t.timeout() < INITIAL);
    }

    #[test]
    fn percentile_times_factor() {
        let mut t = TimeoutLearner::new();
        // 1..=100 × 100 ms: the 95th percentile is 9.5 s; × 2 = 19 s.
        for i in 1..=100 {
            t.record_success(ms(100 * i));
        }
        assert_eq!(t.timeout(), ms(19_000));
        // Only the last WINDOW samples count: 100 fast builds replace them.
        for _ in 0..100 {
            t.record_success(ms(1000));
        }
        assert_eq!(t.timeout(), ms(2000));
    }

    #[test]
    fn floor_and_ceiling() {
        let mut t = TimeoutLearner::new();
        for _ in 0..30 {
            t.record_success(ms(5));
        }
        assert_eq!(t.timeout(), FLOOR);
        let mut slow = TimeoutLearner::new();
        for _ in 0..30 {
            slow.record_success(Duration::from_secs(50));
        }
        assert_eq!(slow.timeout(), INITIAL);
    }

    #[test]
    fn attempts_double_their_allowance() {
        let mut t = TimeoutLearner::new();
        for _ in 0..30 {
            t.record_success(ms(1000));
        }
        assert_eq!(t.timeout_for_attempt(0), ms(2000));
        assert_eq!(t.timeout_for_attempt(1), ms(4000));
        assert_eq!(t.timeout_for_attempt(2), ms(8000));
        assert_eq!(t.timeout_for_attempt(10), INITIAL);
    }

    #[test]
    fn timeouts_in_a_row_reset_to_initial() {
        let mut t = TimeoutLearner::new();
        for _ in 0..30 {
            t.record_success(ms(10));
        }
        assert!(!t.record_timeout());
        t.record_success(ms(10));
        assert!(!t.record_timeout());
        assert!(!t.record_timeout());
        assert_eq!(t.timeout(), FLOOR, "two timeouts in a row keep the learned value");
        assert!(t.record_timeout());
        assert_eq!(t.timeout(), INITIAL);
    }

    #[test]
    fn a_test_network_may_start_lower() {
        let mut t = TimeoutLearner::with_initial(ms(3000));
        assert_eq!(t.timeout(), ms(3000));
        assert_eq!(t.timeout_for_attempt(1), ms(6000));
        for _ in 0..30 {
            t.record_success(ms(10));
        }
        assert_eq!(t.timeout(), FLOOR);
        for _ in 0..RESET_AFTER_TIMEOUTS {
            t.record_timeout();
        }
        assert_eq!(t.timeout(), ms(3000), "a reset goes back to the configured initial value");
        assert_eq!(TimeoutLearner::with_initial(Duration::from_secs(600)).timeout(), INITIAL);
    }
}
