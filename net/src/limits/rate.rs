//! The operator's rate limit on what a relay sends (`relay.bandwidth_rate`,
//! `relay.bandwidth_burst`): one token bucket of bytes over every link this process writes to.
//! A link writer takes the bytes of each write from it before writing; when the bucket is short
//! it takes them anyway (the bucket goes into debt) and waits until the debt is paid back, so
//! however many links write at once, the process sends at most `burst + rate × t` bytes in any
//! `t` seconds. Each such wait is counted in [`LIMITS`]`.bandwidth_waits`.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::counters::{LimitCounters, LIMITS};

/// A byte bucket that may go into debt; time is passed in.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    /// Bytes available (negative: owed) as of `last`.
    state: Mutex<(f64, Instant)>,
}

impl Pacer {
    /// `rate` bytes a second, at most `burst` saved (at least one second's worth); starts full.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (burst as f64).max(rate);
        Pacer { rate, burst, state: Mutex::new((burst, now)) }
    }

    /// Takes `n` bytes at `now`; how long to wait before sending them.
    pub fn take(&self, n: usize, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let dt = now.saturating_duration_since(s.1).as_secs_f64();
        s.1 = s.1.max(now);
        s.0 = (s.0 + dt * self.rate).min(self.burst) - n as f64;
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / self.rate)
        }
    }
}

static LINK_RATE: OnceLock<Pacer> = OnceLock::new();

/// Limits every link this process writes afterwards to `rate` bytes a second with `burst`
/// (set once, at start; later calls are ignored).
pub fn set_link_rate(rate: u64, burst: u64) {
    let _ = LINK_RATE.set(Pacer::new(rate, burst, Instant::now()));
}

/// Waits until `n` more bytes may be written under the process's rate limit (at once without
/// one).
pub async fn pace(n: usize) {
    let Some(p) = LINK_RATE.get() else { return };
    let wait = p.take(n, Instant::now());
    if !wait.is_zero() {
        LimitCounters::hit(&LIMITS.bandwidth_waits);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full bucket sends its burst at once; beyond it, each write waits for its bytes at the
    /// rate, debts of several writers adding up; idle time refills up to the burst only.
    #[test]
    fn sends_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let p = Pacer::new(100_000, 200_000, t0);
        assert_eq!(p.take(200_000, t0), Duration::ZERO, "the burst");
        assert_eq!(p.take(50_000, t0), Duration::from_millis(500));
        assert_eq!(p.take(50_000, t0), Duration::from_millis(1000), "two writers' debts add up");
        // One second later 100,000 bytes came back: 0 owed.
        assert_eq!(p.take(0, t0 + Duration::from_secs(1)), Duration::ZERO);
        // A long idle time refills the burst, no more.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(p.take(200_000, later), Duration::ZERO);
        assert_eq!(p.take(100_000, later), Duration::from_secs(1));
        // A burst below one second's rate is raised to it.
        let small = Pacer::new(1000, 10, t0);
        assert_eq!(small.take(1000, t0), Duration::ZERO);
    }
}
