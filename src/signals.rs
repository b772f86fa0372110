//! Waiting for the signals an operator sends a node: SIGINT and SIGTERM stop it, SIGHUP
//! reloads its config (`reload`).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals, registered once. Register early: from then on SIGINT, SIGTERM and SIGHUP no
/// longer kill the process outright but are reported here.
pub struct NodeSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

/// What a signal asks.
pub enum Asked {
    /// Stop (the signal's name).
    Stop(&'static str),
    /// Read the config again.
    Reload,
}

impl NodeSignals {
    /// Must be called inside a tokio runtime.
    pub fn register() -> std::io::Result<Self> {
        Ok(NodeSignals { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())?, hup: signal(SignalKind::hangup())? })
    }

    /// Waits for the next signal.
    pub async fn recv(&mut self) -> Asked {
        tokio::select! {
            _ = self.int.recv() => Asked::Stop("SIGINT"),
            _ = self.term.recv() => Asked::Stop("SIGTERM"),
            _ = self.hup.recv() => Asked::Reload,
        }
    }

    /// Waits for the next signal, each of them meaning stop (`allium testnet`); its name.
    pub async fn recv_stop(&mut self) -> &'static str {
        match self.recv().await {
            Asked::Stop(name) => name,
            Asked::Reload => "SIGHUP",
        }
    }
}
