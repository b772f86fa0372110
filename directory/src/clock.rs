//! The authority's clock: the one place it reads the time, with an optional offset that test
//! networks inject (`authority.dangerous_clock_offset_secs`) to play an authority whose clock is
//! wrong; and the comparison of a peer's HTTP `Date` header with it.
//!
//! Everything an authority decides by the time (its schedule, what it accepts, certificate
//! checks, the `Date` header it sends) takes the time from one [`Clock`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allium_proto::time::{civil_from_days, days_from_civil};

/// Largest offset `authority.dangerous_clock_offset_secs` may inject (one year, either way).
pub const MAX_CLOCK_OFFSET_SECS: i64 = 365 * 86_400;

/// The system clock plus a fixed offset (zero except on test networks that ask for one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    offset_ms: i64,
}

fn system_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock { offset_ms: 0 }
    }

    /// The system clock shifted by `secs` (clamped to [`MAX_CLOCK_OFFSET_SECS`]).
    pub fn with_offset_secs(secs: i64) -> Self {
        Clock { offset_ms: secs.clamp(-MAX_CLOCK_OFFSET_SECS, MAX_CLOCK_OFFSET_SECS) * 1000 }
    }

    /// The injected offset in seconds.
    pub fn offset_secs(&self) -> i64 {
        self.offset_ms / 1000
    }

    /// The current unix time in milliseconds, as this authority sees it.
    pub fn now_ms(&self) -> u64 {
        system_ms().saturating_add_signed(self.offset_ms)
    }

    /// The current unix time in seconds, as this authority sees it.
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// The time left until `t_ms` on this clock, at least 100 ms.
    pub fn until(&self, t_ms: u64) -> Duration {
        Duration::from_millis(t_ms.saturating_sub(self.now_ms()).max(100))
    }

    /// Sleeps until this clock shows `t_ms` (returns at once if it is past).
    pub async fn sleep_until_ms(&self, t_ms: u64) {
        let now = self.now_ms();
        if t_ms > now {
            tokio::time::sleep(Duration::from_millis(t_ms - now)).await;
        }
    }
}

/// How far a peer's clock may seem to be from ours, judging by its `Date` header, before the
/// authority warns (milliseconds): an eighth of the interval, but at least 2 s (the header has
/// a resolution of one second) and at most 30 s.
pub fn date_warn_tolerance_ms(interval_secs: u64) -> u64 {
    (interval_secs.saturating_mul(1000) / 8).clamp(2_000, 30_000)
}

/// The offset of a peer's clock from ours (milliseconds, positive when the peer is ahead)
/// shown by a `Date` header of `date_secs` on an answer to a request sent at `sent_ms` and
/// answered at `recv_ms` (both on our clock), if it certainly exceeds `tolerance_ms`.
///
/// The peer wrote the header at some moment between the two, when its clock showed a time in
/// `[date, date + 1 s)`; the offset is reported only when every such combination puts it
/// beyond the tolerance, so network delay never causes a warning. The value returned is the
/// middle of the possible range.
pub fn date_skew_ms(date_secs: u64, sent_ms: u64, recv_ms: u64, tolerance_ms: u64) -> Option<i64> {
    let d = i128::from(date_secs) * 1000;
    let (sent, recv) = (i128::from(sent_ms), i128::from(recv_ms.max(sent_ms)));
    let low = d - recv;
    let high = d + 1000 - sent;
    let tol = i128::from(tolerance_ms);
    if low > tol || high < -tol {
        Some(((low + high) / 2).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    } else {
        None
    }
}

/// Milliseconds as seconds for a message: whole seconds from 10 s on, else one decimal.
pub fn fmt_secs(ms: u64) -> String {
    if ms >= 10_000 {
        format!("{} s", (ms + 500) / 1000)
    } else {
        let tenths = (ms + 50) / 100;
        format!("{}.{} s", tenths / 10, tenths % 10)
    }
}


const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// An HTTP date (the IMF-fixdate form, e.g. `Tue, 01 Dec 2026 18:33:21 GMT`) of unix seconds.
pub fn format_http_date(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}


/// Parses an HTTP date in the IMF-fixdate form into unix seconds; `None` for anything else
/// (the obsolete forms are not accepted: peers are Allium authorities).
pub fn parse_http_date(s: &str) -> Option<u64> {
    let rest = s.trim().split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let (day, mon, year, time, gmt) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if gmt != "GMT" || parts.next().is_some() || day.len() != 2 || year.len() != 4 || time.len() != 8 {
        return None;
    }
    let num = |t: &str| -> Option<u32> { if t.bytes().all(|b| b.is_ascii_digit()) { t.parse().ok() } else { None } };
    let d = num(day)?;
    let m = MONTHS.iter().position(|x| *x == mon)? as u32 + 1;
    let y = num(year)?;
    let mut hms = time.split(':');
    let (h, mi, se) = (num(hms.next()?)?, num(hms.next()?)?, num(hms.next()?)?);
    if !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 || y < 1970 {
        return None;
    }
    let days = days_from_civil(i64::from(y), m, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + se);
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_round_trip() {
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format_http_date(1_796_150_001), "Tue, 01 Dec 2026 18:33:21 GMT");
        assert_eq!(parse_http_date("Tue, 01 Dec 2026 18:33:21 GMT"), Some(1_796_150_001));
        assert_eq!(parse_http_date("Thu, 29 Feb 2024 23:59:59 GMT"), Some(1_709_251_199));
        for s in (0..4_000_000_000u64).step_by(12_345_679) {
            assert_eq!(parse_http_date(&format_http_date(s)), Some(s), "{s}");
        }
        for bad in ["", "Tue", "Tue, 01 Dec 2026 18:33:21 UTC", "Tue, 1 Dec 2026 18:33:21 GMT", "Tue, 01 Foo 2026 18:33:21 GMT",
            "Tue, 01 Dec 2026 24:00:00 GMT", "Tue, 01 Dec +026 18:33:21 GMT", "Tue, 01 Dec 2026 18:33:21 GMT x", "Tue, 99 Dec 2026 18:33:21 GMT",
            "Tuesday, 01-Dec-26 18:33:21 GMT", "Tue, 01 Dec 1969 18:33:21 GMT", "Tue, 01 Dec 2026 1:33:210 GMT"] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn date_skew_needs_certainty() {
        let tol = 2_000;
        // In sync, with a slow answer: never a warning.
        assert_eq!(date_skew_ms(1000, 999_900, 1_003_000, tol), None);
        assert_eq!(date_skew_ms(1002, 1_000_000, 1_000_500, tol), None);
        // 600 s ahead or behind.
        assert_eq!(date_skew_ms(1600, 1_000_000, 1_000_000, tol), Some(600_500));
        assert_eq!(date_skew_ms(400, 1_000_000, 1_000_000, tol), Some(-599_500));
        // Bad times never panic.
        assert!(date_skew_ms(u64::MAX, 0, u64::MAX, tol).is_some());
        let _ = date_skew_ms(0, u64::MAX, 0, tol);
    }

    #[test]
    fn tolerances_and_offsets() {
        assert_eq!(date_warn_tolerance_ms(2), 2_000);
        assert_eq!(date_warn_tolerance_ms(100), 12_500);
        assert_eq!(date_warn_tolerance_ms(3600), 30_000);
        assert_eq!(date_warn_tolerance_ms(u64::MAX), 30_000);
        let c = Clock::with_offset_secs(600);
        let d = c.now_ms() as i64 - Clock::system().now_ms() as i64;
        assert!((599_000..=601_000).contains(&d), "{d}");
        assert_eq!(Clock::with_offset_secs(i64::MIN).offset_secs(), -MAX_CLOCK_OFFSET_SECS);
        assert_eq!(fmt_secs(600_000), "600 s");
        assert_eq!(fmt_secs(1_960), "2.0 s");
        assert_eq!(fmt_secs(1_240), "1.2 s");
        assert_eq!(fmt_secs(9_990), "10.0 s");
    }
}
