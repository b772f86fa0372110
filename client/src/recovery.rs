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
//! Each is counted in the process metrics (`allium_stream_begin_timeouts_total`,
//! `allium_streams_stalled_total`, `allium_circuits_retired_total`; `recovery` in
//! `allium status`) and logged at info once per circuit and kind.

use std::time::Duration;

/// How long a BEGIN may wait for CONNECTED or END.
pub const BEGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream may get nothing while the other end owes it a SENDME or DATA.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a circuit with streams checks these deadlines.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

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
    let m = &allium_net::metrics::METRICS;
    m.begin_timeouts.add(g.begins as u64);
    m.stalled_streams.add(g.stalled as u64);
    if newly_retired {
        m.circuits_retired.inc();
    }
    if g.begins > 0 && !std::mem::replace(&mut logged.begin, true) {
        tracing::info!("a stream got no CONNECTED within {} s: retrying it on another circuit; this circuit takes no new streams", BEGIN_TIMEOUT.as_secs());
    }
    if g.stalled > 0 && !std::mem::replace(&mut logged.stall, true) {
        tracing::info!("a stream got nothing for {} s while data was owed: ending it; this circuit takes no new streams", STALL_TIMEOUT.as_secs());
    }
    tracing::debug!(
        "stream recovery so far: {} BEGIN timeouts, {} stalled streams, {} circuits retired",
        m.begin_timeouts.get(),
        m.stalled_streams.get(),
        m.circuits_retired.get()
    );
}
