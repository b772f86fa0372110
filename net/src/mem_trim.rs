//! Giving memory back to the system after a burst.
//!
//! Cells in flight are many small allocations spread over the allocator's per-thread arenas.
//! When a burst of traffic ends, glibc's allocator keeps the freed memory in those arenas (it
//! returns only the top of the main heap, and only above a threshold that grows with the
//! largest allocation seen): a node that once carried 8 bulk streams keeps their peak in RSS
//! for good. Every [`CHECK_EVERY`] the process compares the memory in use with its peak since
//! the last trim; once it has fallen by [`TRIM_AFTER_FREEING`] or more, `malloc_trim(0)` hands
//! the free pages of every arena back (`allium_memory_trims_total`). A busy node whose use
//! stays level is never trimmed. On other allocators (non-glibc targets) this does nothing.

use std::time::Duration;

/// How often the memory in use is sampled.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How far in-use memory must fall below its peak since the last trim before a trim.
pub const TRIM_AFTER_FREEING: usize = 1 << 20;

/// When to trim, given samples of the memory in use.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    peak: usize,
}

impl TrimPolicy {
    /// Takes one sample of the bytes in use; true if a trim is due now (the peak then restarts
    /// from this sample).
    pub fn sample(&mut self, in_use: usize) -> bool {
        self.peak = self.peak.max(in_use);
        if self.peak - in_use >= TRIM_AFTER_FREEING {
            self.peak = in_use;
            return true;
        }
        false
    }
}

/// Samples and trims for as long as the process runs (spawned once per node).
pub async fn run() {
    let mut policy = TrimPolicy::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(in_use) = sys::in_use() else { return };
        if policy.sample(in_use) {
            sys::trim();
            crate::metrics::METRICS.memory_trims.inc();
        }
    }
}

// The two calls into glibc's allocator are the only unsafe code in this crate.
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
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    pub fn in_use() -> Option<usize> {
        None
    }
    pub fn trim() {}
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
        assert!(!p.sample(5 * mb));
        assert!(!p.sample(20 * mb));
        assert!(!p.sample(20 * mb));
        assert!(!p.sample(19 * mb + 1), "less than a megabyte freed");
        assert!(p.sample(19 * mb));
        assert!(!p.sample(19 * mb), "the peak restarted at the trim");
        assert!(!p.sample(18 * mb + 1));
        assert!(p.sample(18 * mb));
    }

    /// The allocator's statistics are readable here, and a trim after freeing a burst's worth
    /// of small blocks runs (glibc only).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_allocator_reports_use_and_trims() {
        let before = sys::in_use().expect("mallinfo2");
        // 64 MiB in small blocks: far more than other tests running meanwhile free.
        let burst: Vec<Box<[u8; 512]>> = (0..131_072).map(|_| Box::new([7u8; 512])).collect();
        let during = sys::in_use().expect("mallinfo2");
        assert!(during >= before + (32 << 20), "a 64 MiB burst shows in use: {before} → {during}");
        drop(burst);
        sys::trim();
    }
}
