//! Waiting for the signals that ask a process to stop.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The stop signals, registered once. Register early: from then on SIGINT, SIGTERM and SIGHUP no
/// longer kill the process outright but are reported here.
pub struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    /// Must be called inside a tokio runtime.
    pub fn register() -> std::io::Result<Self> {
        Ok(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next stop signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
