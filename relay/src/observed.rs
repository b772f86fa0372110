//! The relay's observed bandwidth: what it actually carried, which is what its descriptor
//! reports (never more than the configured `relay.bandwidth`), so a relay cannot claim more
//! capacity than it has shown and the authorities' cap applies to a measured figure.
//!
//! Every [`SAMPLE_SECS`] the relay reads how many bytes its links have written (every relayed
//! cell is written once) and takes the rate over that interval. The observed bandwidth is the
//! highest such rate in any of the last 24 hours (one maximum kept per hour). A relay that has
//! carried nothing yet reports [`MIN_REPORTED`], so that new relays get a little traffic to be
//! measured by. Sans-IO: times and byte counts are passed in.

use std::collections::VecDeque;

/// Seconds between samples.
pub const SAMPLE_SECS: u64 = 10;
/// The floor of the reported bandwidth (bytes per second).
pub const MIN_REPORTED: u64 = 20_000;
/// Hours of history kept.
const HOURS: u64 = 24;

/// Rates seen, one maximum per hour.
#[derive(Debug, Clone, Default)]
pub struct ObservedBandwidth {
    last: Option<(u64, u64)>,
    hourly: VecDeque<(u64, u64)>,
}

impl ObservedBandwidth {
    /// Records that the links had written `total_bytes` in all by `now` (seconds).
    pub fn sample(&mut self, total_bytes: u64, now: u64) {
        if let Some((t0, b0)) = self.last {
            if now > t0 && total_bytes >= b0 {
                let rate = (total_bytes - b0) / (now - t0);
                let hour = now / 3600;
                match self.hourly.back_mut() {
                    Some((h, max)) if *h == hour => *max = (*max).max(rate),
                    _ => self.hourly.push_back((hour, rate)),
                }
                while self.hourly.front().is_some_and(|(h, _)| *h + HOURS <= hour) {
                    self.hourly.pop_front();
                }
            }
        }
        self.last = Some((now, total_bytes));
    }

    /// The highest rate seen in the last 24 hours (bytes per second).
    pub fn observed(&self) -> u64 {
        self.hourly.iter().map(|(_, r)| *r).max().unwrap_or(0)
    }

    /// What the descriptor reports: the observed bandwidth, at least [`MIN_REPORTED`], at most
    /// the configured `limit`.
    pub fn reported(&self, limit: u64) -> u64 {
        self.observed().max(MIN_REPORTED).min(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_rate_of_the_last_day_bounded_by_the_limit() {
        let mut o = ObservedBandwidth::default();
        assert_eq!(o.reported(10_000_000), MIN_REPORTED, "nothing carried yet");
        o.sample(0, 1000);
        o.sample(5_000_000, 1010); // 500 kB/s
        o.sample(6_000_000, 1020); // 100 kB/s: the maximum stays
        assert_eq!(o.observed(), 500_000);
        assert_eq!(o.reported(10_000_000), 500_000);
        assert_eq!(o.reported(300_000), 300_000, "never above the configured bandwidth");
        assert_eq!(o.reported(1_000), 1_000, "the limit wins over the floor too");
        // A day later, with little traffic since, the old peak is gone.
        o.sample(6_000_000 + 10 * 1000, 1020 + 86_400);
        o.sample(6_000_000 + 20 * 1000, 1030 + 86_400);
        assert_eq!(o.observed(), 1000);
        // A counter that goes backwards, or time that does not advance, is ignored.
        o.sample(0, 2000 + 86_400);
        o.sample(10, 2000 + 86_400);
        assert_eq!(o.observed(), 1000);
    }
}
