//! The voting schedule: pure functions of the interval and the time.
//!
//! With interval `I` seconds, consensus periods start at every multiple `T` of `I` (unix time).
//! For the consensus with `valid-after T`:
//!
//! | time              | what happens                                                    |
//! |-------------------|-----------------------------------------------------------------|
//! | `T − I/2`         | each authority builds, signs, stores and pushes its vote        |
//! | `T − 3I/8`        | each authority pulls the votes it is still missing              |
//! | `T − I/4`         | each computes the consensus from the votes it has, signs its digest and pushes the signature |
//! | `T`               | each publishes it if more than half of the authorities signed that digest; later matching signatures are still added |
//!
//! The consensus has `fresh-until = T + I` and `valid-until = T + 3I`. Times inside a period
//! are in milliseconds so that short test intervals (2 s) work.
//!
//! Bootstrap rounds (`crate::bootstrap`): while the network has no consensus, authorities do
//! not wait for the next voting time; they vote at once for a `valid-after` of the current
//! second (never a period start), and that consensus is fresh until the first period start
//! whose regular round is still ahead ([`Schedule::lifetime`]).
//!
//! Clock skew: a vote is accepted only within `I/4` of its voting time on the receiver's clock
//! ([`Schedule::skew_tolerance_ms`]); authorities further apart than that do not see each
//! other's votes in time, so the tolerance is also how far off a clock may be for its
//! authority to take part. Every time here saturates instead of overflowing.

use allium_proto::doc::Lifetime;

/// The least clock-skew tolerance for bootstrap votes, however short the interval.
const BOOTSTRAP_MIN_TOLERANCE_MS: u64 = 2_000;

/// The schedule for one voting interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    interval: u64,
}

impl Schedule {
    /// A schedule with `interval_secs` between consensuses (at least 1).
    pub fn new(interval_secs: u64) -> Self {
        Schedule { interval: interval_secs.max(1) }
    }

    pub fn interval_secs(&self) -> u64 {
        self.interval
    }

    fn ms(&self) -> u64 {
        self.interval.saturating_mul(1000)
    }

    /// Whether `t` is a period start (a multiple of the interval).
    pub fn is_period_start(&self, t: u64) -> bool {
        t / self.interval * self.interval == t
    }

    /// The lifetime of the consensus with `valid-after` `t`: fresh until the first period start
    /// whose vote comes after `t` (for a period start `t`, `t + I`), valid two intervals longer.
    /// A bootstrap consensus (see below) starts between period starts and is fresh until the
    /// first regular round that votes after it.
    pub fn lifetime(&self, t: u64) -> Lifetime {
        let fresh = if self.is_period_start(t) {
            t.saturating_add(self.interval)
        } else {
            let next = (t / self.interval).saturating_add(1).saturating_mul(self.interval);
            if self.vote_at_ms(next) > t.saturating_mul(1000) {
                next
            } else {
                next.saturating_add(self.interval)
            }
        };
        Lifetime { valid_after: t, fresh_until: fresh, valid_until: fresh.saturating_add(self.interval.saturating_mul(2)) }
    }

    /// Whether a vote for a bootstrap round with `valid-after` `t` is acceptable at `now_ms`:
    /// `t` is not a period start (those are the regular rounds') and is within the clock-skew
    /// tolerance of now (at least [`BOOTSTRAP_MIN_TOLERANCE_MS`]).
    pub fn accepts_bootstrap_vote_for(&self, t: u64, now_ms: u64) -> bool {
        !self.is_period_start(t) && t.saturating_mul(1000).abs_diff(now_ms) <= self.skew_tolerance_ms().max(BOOTSTRAP_MIN_TOLERANCE_MS)
    }

    /// How far the time of bootstrap round `t` is ahead of `now_ms` (negative: behind).
    pub fn bootstrap_offset_ms(&self, t: u64, now_ms: u64) -> i64 {
        offset(t.saturating_mul(1000), now_ms)
    }

    /// The `valid-after` of a bootstrap round started at `now_ms`: the current second, or the
    /// one before when the current second is a period start (that `valid-after` belongs to the
    /// regular round).
    pub fn bootstrap_valid_after(&self, now_ms: u64) -> u64 {
        let t = now_ms / 1000;
        if self.is_period_start(t) {
            t.saturating_sub(1)
        } else {
            t
        }
    }

    /// When votes for period `t` are made (unix milliseconds).
    pub fn vote_at_ms(&self, t: u64) -> u64 {
        t.saturating_mul(1000).saturating_sub(self.ms() / 2)
    }

    /// When missing votes for period `t` are pulled.
    pub fn pull_at_ms(&self, t: u64) -> u64 {
        t.saturating_mul(1000).saturating_sub(self.ms() * 3 / 8)
    }

    /// When the consensus for period `t` is computed and signed.
    pub fn sign_at_ms(&self, t: u64) -> u64 {
        t.saturating_mul(1000).saturating_sub(self.ms() / 4)
    }

    /// When the consensus for period `t` is published.
    pub fn publish_at_ms(&self, t: u64) -> u64 {
        t.saturating_mul(1000)
    }

    /// The period an authority should work on at `now_ms`: the first period start `t` whose
    /// signing time is still ahead. An authority that starts after `vote_at_ms(t)` votes at once.
    pub fn next_period(&self, now_ms: u64) -> u64 {
        let i = self.interval;
        let mut t = (now_ms / 1000) / i * i;
        // At most two steps: `t ≤ now < t + I`, and `sign_at(t + 2I) > t + I`. The bound also
        // ends the loop where times saturate.
        for _ in 0..2 {
            if self.sign_at_ms(t) > now_ms {
                break;
            }
            t = t.saturating_add(i);
        }
        t
    }

    /// The clock-skew tolerance for votes (milliseconds): a quarter of the interval. A vote is
    /// accepted only while the receiver's clock is within this of the vote's voting time, which
    /// is also as far as two clocks may differ for the authorities to see each other's votes
    /// before they compute the consensus.
    pub fn skew_tolerance_ms(&self) -> u64 {
        self.ms() / 4
    }

    /// Whether a vote for period `t` is acceptable at `now_ms`: `t` is a period start and `now`
    /// is within [`Self::skew_tolerance_ms`] of its voting time, i.e. from
    /// `vote_at_ms(t) − I/4` to just before `sign_at_ms(t)` (a vote arriving later could not
    /// count any more).
    pub fn accepts_vote_for(&self, t: u64, now_ms: u64) -> bool {
        self.is_period_start(t)
            && now_ms >= self.vote_at_ms(t).saturating_sub(self.skew_tolerance_ms())
            && now_ms < self.sign_at_ms(t)
    }

    /// How far the voting time of period `t` is ahead of `now_ms` (negative: behind): for a
    /// vote just received, how far its sender's clock seems to be ahead of ours.
    pub fn vote_offset_ms(&self, t: u64, now_ms: u64) -> i64 {
        offset(self.vote_at_ms(t), now_ms)
    }

    /// How far the signing time of period `t` is ahead of `now_ms` (negative: behind).
    pub fn sign_offset_ms(&self, t: u64, now_ms: u64) -> i64 {
        offset(self.sign_at_ms(t), now_ms)
    }
}

fn offset(a: u64, b: u64) -> i64 {
    (i128::from(a) - i128::from(b)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Who fetches a consensus, for [`refetch_at_ms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetcher {
    /// Relays, which fetch from the authorities and serve it as directory caches.
    Cache,
    /// Clients, which fetch from caches (their guards).
    Client,
}

/// When (unix ms) a node holding a consensus with lifetime `l` fetches the next one: a time
/// drawn uniformly (from `r`, any random value) in its window after fresh-until `FU`, with
/// `I = fresh-until − valid-after`: caches in `[FU, FU + I/8)`, clients in `[FU + I/8,
/// FU + I/2)`. Caches therefore hold the new consensus before clients ask them, and neither
/// the authorities nor the caches see every node at once.
pub fn refetch_at_ms(l: &Lifetime, who: Fetcher, r: u64) -> u64 {
    let fu = l.fresh_until.saturating_mul(1000);
    let i = l.fresh_until.saturating_sub(l.valid_after).max(1).saturating_mul(1000);
    let (start, end) = match who {
        Fetcher::Cache => (0, i / 8),
        Fetcher::Client => (i / 8, i / 2),
    };
    fu.saturating_add(start).saturating_add(r % (end - start).max(1))
}

/// Descriptors older than this (seconds) are left out of votes and dropped: three intervals,
/// but at least 30 s so a loopback test network with a 2 s interval is not racing its relays.
pub fn descriptor_max_age(interval_secs: u64) -> u64 {
    (3 * interval_secs).max(30)
}

/// How often a relay should upload its descriptor for a network with this interval: a third of
/// [`descriptor_max_age`], so two uploads may fail before it drops out of the votes.
pub fn republish_period_secs(interval_secs: u64) -> u64 {
    descriptor_max_age(interval_secs) / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13: refetches of many nodes spread over their window (no herd at fresh-until), and
    /// every cache's window ends before any client's begins.
    #[test]
    fn refetch_times_spread_over_the_window() {
        use rand::Rng;
        let l = Schedule::new(3600).lifetime(1_800_000_000);
        let fu = l.fresh_until * 1000;
        let mut rng = rand::thread_rng();
        for (who, start, end) in [(Fetcher::Cache, fu, fu + 450_000), (Fetcher::Client, fu + 450_000, fu + 1_800_000)] {
            let mut buckets = [0u32; 10];
            for _ in 0..10_000 {
                let t = refetch_at_ms(&l, who, rng.gen());
                assert!((start..end).contains(&t), "{who:?}: {t} outside [{start}, {end})");
                buckets[((t - start) * 10 / (end - start)) as usize] += 1;
            }
            // Uniform: each tenth of the window gets about 1,000 of 10,000 (far from a herd).
            assert!(buckets.iter().all(|b| (700..1300).contains(b)), "{who:?}: {buckets:?}");
        }
        // A 2 s test interval still has windows (milliseconds).
        let short = Schedule::new(2).lifetime(1000);
        assert!(refetch_at_ms(&short, Fetcher::Client, 0) >= 1_002_250);
    }

    /// Issue 13 (fast start): a bootstrap round's valid-after is the current second but never a
    /// period start; its consensus is fresh until the first period start whose round is still
    /// ahead, then valid two intervals more; its votes are accepted near now only.
    #[test]
    fn bootstrap_rounds_start_now_and_hand_over_to_the_regular_schedule() {
        let s = Schedule::new(10);
        let p = 1_700_000_000 / 10 * 10;
        assert_eq!(s.bootstrap_valid_after(p * 1000 + 3_400), p + 3);
        assert_eq!(s.bootstrap_valid_after(p * 1000 + 200), p - 1, "a period start belongs to the regular round");
        // Early in a period: fresh until its end (that round votes at p + 5).
        assert_eq!(s.lifetime(p + 3), Lifetime { valid_after: p + 3, fresh_until: p + 10, valid_until: p + 30 });
        // After the voting time of p + 10 (p + 5): the round for p + 20 takes over.
        assert_eq!(s.lifetime(p + 8), Lifetime { valid_after: p + 8, fresh_until: p + 20, valid_until: p + 40 });
        assert_eq!(s.lifetime(p + 6).fresh_until, p + 20);
        assert_eq!(s.lifetime(p + 4).fresh_until, p + 10);
        // Period starts keep their regular lifetime.
        assert_eq!(s.lifetime(p), Lifetime { valid_after: p, fresh_until: p + 10, valid_until: p + 30 });
        assert!(s.accepts_bootstrap_vote_for(p + 3, (p + 3) * 1000 + 1_900));
        assert!(s.accepts_bootstrap_vote_for(p + 3, (p + 3) * 1000 - 1_900), "a peer's clock a little ahead");
        assert!(!s.accepts_bootstrap_vote_for(p + 3, (p + 3) * 1000 + 2_600), "too old");
        assert!(!s.accepts_bootstrap_vote_for(p + 10, (p + 10) * 1000), "a period start is the regular round's");
        // An hourly schedule tolerates a quarter of its interval.
        let h = Schedule::new(3600);
        let q = 1_700_000_000 / 3600 * 3600;
        assert!(h.accepts_bootstrap_vote_for(q + 100, (q + 100 + 800) * 1000));
    }

    #[test]
    fn hourly_schedule() {
        let s = Schedule::new(3600);
        let t = 1_700_000_000 / 3600 * 3600 + 3600;
        assert!(s.is_period_start(t));
        assert_eq!(s.vote_at_ms(t), (t - 1800) * 1000);
        assert_eq!(s.pull_at_ms(t), (t - 1350) * 1000);
        assert_eq!(s.sign_at_ms(t), (t - 900) * 1000);
        assert_eq!(s.publish_at_ms(t), t * 1000);
        assert_eq!(s.lifetime(t), Lifetime { valid_after: t, fresh_until: t + 3600, valid_until: t + 3 * 3600 });
        // Before the signing time of t, t is next; from it on, the following period.
        assert_eq!(s.next_period((t - 3599) * 1000), t);
        assert_eq!(s.next_period(s.sign_at_ms(t) - 1), t);
        assert_eq!(s.next_period(s.sign_at_ms(t)), t + 3600);
        assert_eq!(s.next_period(t * 1000), t + 3600);
    }

    #[test]
    fn two_second_schedule_uses_milliseconds() {
        let s = Schedule::new(2);
        let t = 1_000_000;
        assert_eq!(s.vote_at_ms(t), t * 1000 - 1000);
        assert_eq!(s.pull_at_ms(t), t * 1000 - 750);
        assert_eq!(s.sign_at_ms(t), t * 1000 - 500);
        assert_eq!(s.next_period((t - 1) * 1000 + 499), t);
        assert_eq!(s.next_period((t - 1) * 1000 + 500), t + 2);
        assert!(!s.is_period_start(t + 1));
    }

    #[test]
    fn next_period_is_always_ahead_of_signing() {
        for i in [2u64, 3, 10, 300, 3600] {
            let s = Schedule::new(i);
            for now in (0..40_000u64).step_by(137).map(|x| 1_600_000_000_000 + x * 7) {
                let t = s.next_period(now);
                assert!(s.is_period_start(t));
                assert!(s.sign_at_ms(t) > now);
                assert!(s.sign_at_ms(t - i) <= now, "a later period was chosen than needed");
            }
        }
    }

    #[test]
    fn vote_window() {
        let s = Schedule::new(10);
        let t = 1_000_000;
        assert_eq!(s.skew_tolerance_ms(), 2_500);
        assert!(s.accepts_vote_for(t, s.vote_at_ms(t)));
        assert!(s.accepts_vote_for(t, s.vote_at_ms(t) - 2_500));
        assert!(!s.accepts_vote_for(t, s.vote_at_ms(t) - 2_501));
        assert!(s.accepts_vote_for(t, s.sign_at_ms(t) - 1));
        assert!(!s.accepts_vote_for(t, s.sign_at_ms(t)));
        assert!(!s.accepts_vote_for(t, t * 1000));
        assert!(!s.accepts_vote_for(t + 1, s.vote_at_ms(t)));
        assert_eq!(s.vote_offset_ms(t + 600, s.vote_at_ms(t)), 600_000);
        assert_eq!(s.vote_offset_ms(t - 600, s.vote_at_ms(t)), -600_000);
        assert_eq!(s.sign_offset_ms(t, s.sign_at_ms(t) + 1), -1);
    }

    #[test]
    fn huge_times_saturate() {
        let s = Schedule::new(2);
        let t = u64::MAX - 1;
        assert!(!s.accepts_vote_for(t, 0));
        assert!(!s.accepts_vote_for(t, u64::MAX));
        assert_eq!(s.lifetime(t).valid_until, u64::MAX);
        assert_eq!(s.vote_offset_ms(t, 0), i64::MAX);
        assert!(s.next_period(u64::MAX) >= u64::MAX / 1000 / 2 * 2);
    }

    #[test]
    fn descriptor_ages() {
        assert_eq!(descriptor_max_age(3600), 3 * 3600);
        assert_eq!(descriptor_max_age(2), 30);
        assert_eq!(republish_period_secs(3600), 3600);
        assert_eq!(republish_period_secs(10), 10);
    }
}
