//! Giving memory back to the system after a burst.
//!
//! Cells in flight are many small allocations spread over the allocator's per-thread arenas.
//! When a burst of traffic ends, glibc's allocator keeps the freed memory in those arenas (it
//! returns only the top of the main heap, and only above a threshold that grows with the
//! largest allocation seen): a node that once carried 8 bulk streams keeps their peak in RSS
//! for good. Every [`CHECK_EVERY`] the process compares the memory in use with its peak since
//! the last trim; once it has fallen by [`TRIM_AFTER_FREEING`] or more, `malloc_trim(0)` hands
//! the free pages of every arena back (`allium_memory_trims_total`). A burst that comes and goes
//! between two samples (an 8 MiB upload read and dropped within a second) is caught by the
//! resident size instead: when it exceeds the memory in use by [`TRIM_AFTER_SLACK`] more than
//! it did after the last trim, the process trims too. A trim taken while memory was still held
//! (during an attack) leaves a high floor; pages freed later would then stay resident for good,
//! so while the resident size exceeds the memory in use by [`TRIM_AFTER_SLACK`] more than it ever
//! did, the trim is retried every [`TRIM_RETRY`]. A busy node whose use and resident size stay
//! level is never trimmed. Blocks of [`MMAP_FROM`] or more (an 8 MiB upload's body) get pages of their own,
//! returned the moment they are freed: glibc would otherwise raise that threshold to the
//! largest block freed and carve later ones from a thread's arena, whose top a trim does not
//! return. On other allocators (non-glibc targets) this does nothing.

use std::time::Duration;

/// How often the memory in use is sampled.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How far in-use memory must fall below its peak since the last trim before a trim.
pub const TRIM_AFTER_FREEING: usize = 1 << 20;
/// How much more resident memory beyond what is in use than after the last trim starts a trim.
pub const TRIM_AFTER_SLACK: usize = 4 << 20;

/// How long after a trim another is tried while resident memory stays well above its lowest
/// excess over use.
pub const TRIM_RETRY: Duration = Duration::from_secs(10);

/// When to trim, given samples of the memory in use and the resident size.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    peak: usize,
    /// Resident bytes beyond those in use that a trim could not return (fragmentation, the
    /// allocator's own structures): measured at the first sample after a trim.
    slack_floor: usize,
    /// The least resident excess over use ever sampled.
    lowest_slack: Option<usize>,
    /// Samples since the last trim.
    since_trim: u32,
    just_trimmed: bool,
}

impl TrimPolicy {
    /// Takes one sample of the bytes in use and resident; true if a trim is due now (the peak
    /// then restarts from this sample).
    pub fn sample(&mut self, in_use: usize, resident: usize) -> bool {
        let slack = resident.saturating_sub(in_use);
        if std::mem::take(&mut self.just_trimmed) {
            self.slack_floor = slack;
        }
        self.slack_floor = self.slack_floor.min(slack);
        let lowest = self.lowest_slack.map_or(slack, |l| l.min(slack));
        self.lowest_slack = Some(lowest);
        self.peak = self.peak.max(in_use);
        self.since_trim = self.since_trim.saturating_add(1);
        let retry = self.since_trim as u128 * CHECK_EVERY.as_millis() >= TRIM_RETRY.as_millis() && slack >= lowest + TRIM_AFTER_SLACK;
        if self.peak - in_use >= TRIM_AFTER_FREEING || slack >= self.slack_floor + TRIM_AFTER_SLACK || retry {
            self.peak = in_use;
            self.just_trimmed = true;
            self.since_trim = 0;
            return true;
        }
        false
    }
}

/// Allocations from this size up are mapped on their own and unmapped when freed.
pub const MMAP_FROM: usize = 1 << 20;

/// Samples and trims for as long as the process runs (spawned once per node).
pub async fn run() {
    sys::map_large_blocks();
    let mut policy = TrimPolicy::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(in_use) = sys::in_use() else { return };
        if policy.sample(in_use, resident().unwrap_or(0)) {
            sys::trim();
            crate::metrics::METRICS.memory_trims.inc();
        }
    }
}

/// The process's resident size (`VmRSS`), in bytes.
fn resident() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse::<usize>().ok()?;
    Some(kb * 1024)
}

// The three calls into glibc's allocator are the only unsafe code in this crate.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod sys {
    /// Bytes the allocator has handed out (every arena, and large blocks mapped on their own).
    pub fn in_use() -> Option<usize> {
        // SAFETY: mallinfo2 only reads the allocator's statistics (taking each arena's lock).
        let m = unsafe { libc::mallinfo2() };
        Some(m.uordblks + m.hblkhd)
    }

    pub fn trim() {
        // SAFETY: malloc_trim releases free pages; it takes each arena's lock and is safe to
        // call from any thread at any time.
        unsafe { libc::malloc_trim(0) };
    }

    /// Fixes the mmap threshold at [`super::MMAP_FROM`]; true if glibc took it.
    pub fn map_large_blocks() -> bool {
        // SAFETY: mallopt sets an allocator parameter under the allocator's lock; any thread,
        // any time.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, super::MMAP_FROM as libc::c_int) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    pub fn in_use() -> Option<usize> {
        None
    }
    pub fn trim() {}
    pub fn map_large_blocks() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Growth and level use never trim; a fall of a megabyte below the peak does, once, and the
    /// peak restarts there.
    #[test]
    fn trims_once_after_use_falls_a_megabyte_below_its_peak() {
        let mb = 1 << 20;
        let mut p = TrimPolicy::default();
        // Resident equal to what is in use: only the fall below the peak counts.
        let mut sample = |n: usize| p.sample(n, n);
        assert!(!sample(5 * mb));
        assert!(!sample(20 * mb));
        assert!(!sample(20 * mb));
        assert!(!sample(19 * mb + 1), "less than a megabyte freed");
        assert!(sample(19 * mb));
        assert!(!sample(19 * mb), "the peak restarted at the trim");
        assert!(!sample(18 * mb + 1));
        assert!(sample(18 * mb));
    }

    /// A burst freed between two samples shows as resident memory beyond what is in use: 4 MB
    /// more of it than a trim left last time triggers a trim; what a trim cannot return becomes
    /// the new floor, so it does not trim again every second.
    #[test]
    fn trims_when_resident_memory_outgrows_use_by_4_megabytes() {
        let mb = 1 << 20;
        let mut p = TrimPolicy::default();
        assert!(!p.sample(10 * mb, 13 * mb));
        assert!(p.sample(10 * mb, 30 * mb), "20 MB resident and free");
        assert!(!p.sample(10 * mb, 13 * mb), "after the trim: 3 MB it could not return is the floor");
        assert!(!p.sample(10 * mb, 17 * mb - 1), "not again for less than 4 MB more");
        assert!(p.sample(10 * mb, 17 * mb));
        assert!(!p.sample(10 * mb, 11 * mb), "the floor follows the slack down");
        assert!(p.sample(10 * mb, 15 * mb));
    }

    /// A trim taken while memory was held (during an attack) leaves a high floor; once that
    /// memory is freed the trim is retried every TRIM_RETRY while the resident excess stays 4 MB
    /// above the lowest ever seen, and not at all once it is back.
    #[test]
    fn a_trim_that_returned_nothing_is_retried_while_resident_memory_stays_high() {
        let mb = 1 << 20;
        let retry = (TRIM_RETRY.as_millis() / CHECK_EVERY.as_millis()) as usize;
        let mut p = TrimPolicy::default();
        assert!(p.sample(mb, 11 * mb), "the first sample trims (no floor yet)");
        assert!(!p.sample(mb, 11 * mb), "idle: 10 MB resident beyond use, the lowest");
        assert!(p.sample(2 * mb, 27 * mb), "an attack's 16 MB more");
        // The trim returned nothing: 25 MB is the floor, and use falls less than a megabyte.
        let quiet: Vec<bool> = (1..retry).map(|_| p.sample(mb + mb / 10, 27 * mb)).collect();
        assert!(quiet.iter().all(|t| !t), "no trim within TRIM_RETRY of the last");
        assert!(p.sample(mb + mb / 10, 27 * mb), "retried after TRIM_RETRY");
        let back: Vec<bool> = (0..3 * retry).map(|_| p.sample(mb, 12 * mb)).collect();
        assert!(back.iter().all(|t| !t), "memory returned: no more trims");
    }

    /// The allocator's statistics are readable here, and a trim after freeing a burst's worth
    /// of small blocks runs (glibc only).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_allocator_reports_use_and_trims() {
        let before = sys::in_use().expect("mallinfo2");
        // 256 MiB in small blocks; other tests of this process, running meanwhile, have been
        // seen to free ~35 MB between the two samples (a 64 MiB burst then showed as 30 MB).
        let burst: Vec<Box<[u8; 512]>> = (0..524_288).map(|_| Box::new([7u8; 512])).collect();
        let during = sys::in_use().expect("mallinfo2");
        assert!(during >= before + (128 << 20), "a 256 MiB burst shows in use: {before} → {during}");
        drop(burst);
        sys::trim();
        assert!(sys::map_large_blocks(), "glibc takes a fixed mmap threshold");
    }
}
