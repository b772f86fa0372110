//! How a client notices a circuit that stopped carrying its streams, and what it does then
//! (docs/PROTOCOL.md, "Stream timeouts").
//!
//! - A BEGIN (or BEGIN_DIR) that gets neither CONNECTED nor END within [`BEGIN_TIMEOUT`] is
//!   given up: the exit is sent END, the request is retried on another circuit (SOCKS), and the
//!   circuit takes no new streams.
//! - A stream the other end owes something — a SENDME for our queued DATA, or more DATA after a
//!   full cell (`allium_net::stream::StreamMux::stalled`) — that gets nothing for
//!   [`STALL_TIMEOUT`] is ended: END to the exit, the application's socket closed, and the
//!   circuit takes no new streams. An idle stream is never ended.
//!
//! Each is counted in [`RECOVERY_STATS`] and logged at info once per circuit and kind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a BEGIN may wait for CONNECTED or END.
pub const BEGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream may get nothing while the other end owes it a SENDME or DATA.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a circuit with streams checks these deadlines.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Counters over every circuit of this process (for the status and metrics endpoints).
#[derive(Default)]
pub struct RecoveryStats {
    /// BEGINs given up for lack of CONNECTED or END.
    pub begin_timeouts: AtomicU64,
    /// Streams ended because they stalled while owed DATA or a SENDME.
    pub stalled_streams: AtomicU64,
    /// Circuits that stopped taking new streams for either reason.
    pub circuits_retired: AtomicU64,
}

/// Process-wide recovery counters.
pub static RECOVERY_STATS: RecoveryStats =
    RecoveryStats { begin_timeouts: AtomicU64::new(0), stalled_streams: AtomicU64::new(0), circuits_retired: AtomicU64::new(0) };

/// What a circuit gave up on in one check.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GaveUp {
    pub begins: usize,
    pub stalled: usize,
}

impl GaveUp {
    pub fn any(&self) -> bool {
        self.begins + self.stalled > 0
    }
}

/// What a circuit has already logged (each kind once per circuit).
#[derive(Debug, Default)]
pub struct Logged {
    begin: bool,
    stall: bool,
}

/// Counts one check's outcome and logs each kind the first time this circuit meets it;
/// `newly_retired` is true when this check retired the circuit.
pub fn record(g: &GaveUp, newly_retired: bool, logged: &mut Logged) {
    let s = &RECOVERY_STATS;
    s.begin_timeouts.fetch_add(g.begins as u64, Ordering::Relaxed);
    s.stalled_streams.fetch_add(g.stalled as u64, Ordering::Relaxed);
    if newly_retired {
        s.circuits_retired.fetch_add(1, Ordering::Relaxed);
    }
    if g.begins > 0 && !std::mem::replace(&mut logged.begin, true) {
        tracing::info!("a stream got no CONNECTED within {} s: retrying it on another circuit; this circuit takes no new streams", BEGIN_TIMEOUT.as_secs());
    }
    if g.stalled > 0 && !std::mem::replace(&mut logged.stall, true) {
        tracing::info!("a stream got nothing for {} s while data was owed: ending it; this circuit takes no new streams", STALL_TIMEOUT.as_secs());
    }
    tracing::debug!(
        "stream recovery so far: {} BEGIN timeouts, {} stalled streams, {} circuits retired",
        s.begin_timeouts.load(Ordering::Relaxed),
        s.stalled_streams.load(Ordering::Relaxed),
        s.circuits_retired.load(Ordering::Relaxed)
    );
}
