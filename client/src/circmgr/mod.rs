//! Circuits ready for streams.
//!
//! - **Built ahead of need**: once bootstrapped, [`CircMgr::maintain`] keeps
//!   [`PREBUILD_PER_PORT`] clean (never used) circuits whose exits allow each of
//!   [`PREBUILD_PORTS`] and of the ports streams used in the last hour
//!   ([`crate::predicted`]), and builds the next one once the stream that took one is done
//!   with it ([`Successor`]); a clean circuit is retired after [`MAX_CLEAN_AGE`].
//! - **Reused by isolation class**: a stream takes a circuit already used by its class, or else a
//!   clean one (which then belongs to its class), or else a new one. A circuit takes new
//!   streams for [`MAX_CIRCUIT_DIRTINESS`] after its first stream, then is retired (it closes
//!   once its last stream ends).
//! - **Build timeout**: learned from recent build times ([`crate::timeout`]); a build that takes
//!   longer is abandoned and retried on a new path, [`BUILD_ATTEMPTS`] times in all.
//! - **Guards**: the first hop comes from the guard set ([`crate::guard`]); the link to the
//!   guard counts for its reachability (a later hop failing is not the guard's fault). One
//!   exception, a guard that accepts links but never answers (THREATS A32): after
//!   [`GUARD_TIMEOUTS_BEFORE_DOWN`] builds in a row through it time out, it is marked down like
//!   an unreachable guard (backoff, then the next primary). A build that timed out is retried
//!   through another usable primary guard when there is one, so one black hole costs a request
//!   one short timeout. The guard set's churn limit still bounds how many new guards this can
//!   bring in.
//! - **Stream retry**: see [`retry_on_another_exit`].
//! - **Onion-service circuits** ([`CircMgr::to_relay`]): four hops, guard → L2 vanguard
//!   ([`crate::vanguards`]) → middle → the chosen relay, built fresh and never shared, with the
//!   same retries, timeouts and guard bookkeeping.

mod builder;
pub mod table;

use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_directory::netdir::NetDir;
use allium_net::pool::ChannelPool;
use allium_proto::doc::ConsensusRelay;
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::EndReason;
use tokio::sync::watch;

use crate::circuit::{CircError, CircHandle};
use crate::path::{ExitNeed, PathError};
use crate::predicted::PredictedPorts;
use crate::Bootstrap;
pub use builder::Builder;
use table::{Circuit, SharedTable};

/// How long a circuit takes new streams after its first one.
pub const MAX_CIRCUIT_DIRTINESS: Duration = Duration::from_secs(600);
/// How long a clean (prebuilt, unused) circuit is kept.
pub const MAX_CLEAN_AGE: Duration = Duration::from_secs(3600);
/// Paths tried for one request before giving up.
pub const BUILD_ATTEMPTS: usize = 3;
/// Ports that clean circuits are kept ready for, and how many for each.
pub const PREBUILD_PORTS: [u16; 2] = [80, 443];
pub const PREBUILD_PER_PORT: usize = 2;
/// Longest wait for a guard in its short backoff before a request gives up.
const MAX_GUARD_WAIT: Duration = Duration::from_secs(8);
/// Builds in a row through one guard that time out before the guard is marked down.
pub const GUARD_TIMEOUTS_BEFORE_DOWN: u32 = 2;
/// Extra exits tried for one stream after the first refused it (see [`retry_on_another_exit`]).
pub const STREAM_RETRIES: usize = 2;
/// How long the consensus may list no usable guard (a new network's first consensus) before it
/// is a warning.
pub const NO_GUARD_WARN_AFTER: Duration = Duration::from_secs(60);

/// Streams with different keys never share a circuit. Built by [`isolation_key`] from the
/// SOCKS credentials, the listener and (optionally) the destination.
pub type IsolationKey = Vec<u8>;

/// The full isolation key of a stream: its credentials key (SOCKS username/password, as
/// encoded by the front end), the listener it arrived on, and its destination host when
/// `client.isolate_destinations` is on. Fields are length-prefixed, so no two different
/// inputs give one key.
pub fn isolation_key(credentials: &[u8], listener: Option<std::net::SocketAddr>, destination: Option<&str>) -> IsolationKey {
    let mut k = Vec::with_capacity(credentials.len() + 64);
    for part in [credentials, listener.map(|l| l.to_string()).unwrap_or_default().as_bytes(), destination.unwrap_or("").to_ascii_lowercase().as_bytes()] {
        k.extend_from_slice(&(part.len() as u32).to_be_bytes());
        k.extend_from_slice(part);
    }
    k
}

/// Whether a stream the exit refused with `reason` may be tried on another exit: only when
/// another exit could plausibly succeed and the retry tells nobody anything new.
///
/// - `ExitPolicy`: this exit's real policy refuses what its listed one allowed; another may not.
/// - `ResolveFailed`: this exit's resolver may be broken (at most [`STREAM_RETRIES`] more exits
///   see the name, never a flood).
/// - `ResourceLimit`, `Timeout`, `Misc`, `Destroy`, `Internal`: trouble at this exit or circuit.
///
/// Not retried: `ConnectRefused`, `NoRoute`, `ConnReset`, `Done` (the destination answered:
/// every exit would see the same) and `Protocol`.
pub fn retry_on_another_exit(reason: EndReason) -> bool {
    matches!(
        reason,
        EndReason::ExitPolicy | EndReason::ResolveFailed | EndReason::ResourceLimit | EndReason::Timeout | EndReason::Misc | EndReason::Destroy | EndReason::Internal
    )
}

/// Why no circuit could be had.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("circuit build failed {BUILD_ATTEMPTS} times; last: {0}")]
    Build(CircError),
    #[error("no guard can be used now ({0})")]
    NoGuard(String),
    /// The build this request waited for (shared with other requests of its class) failed.
    #[error(transparent)]
    Shared(Arc<GetError>),
    /// The build this request waited for ended without a result (its task died).
    #[error("the circuit build was abandoned")]
    Abandoned,
}

impl GetError {
    /// The error itself, through any [`GetError::Shared`].
    pub fn root(&self) -> &GetError {
        match self {
            GetError::Shared(e) => e.root(),
            e => e,
        }
    }
}

impl Circuit for CircHandle {
    fn exit_allows(&self, need: &ExitNeed) -> bool {
        need.allowed_by(&self.exit)
    }
    fn exit_id(&self) -> RelayId {
        self.exit.identity
    }
    fn takes_streams(&self) -> bool {
        CircHandle::takes_streams(self)
    }
    fn built_at(&self) -> Instant {
        self.built_at
    }
}

/// What a circuit taken from those built ahead of need owes: a successor, built when this is
/// dropped (by the SOCKS and HTTP CONNECT front ends when the stream it was taken for closes,
/// elsewhere once the stream has its answer), or at [`CircMgr::maintain`]'s next check
/// (every 5 s) if that comes first. Not at once: the successor's handshakes would compete with
/// the stream's own setup and transfer (on loopback, 3-hop builds made alongside a new
/// class's request took 2.2-2.6 ms where builds alone took 1.6-1.9 ms).
#[must_use = "dropping it builds the successor"]
pub struct Successor {
    refill: Option<Arc<tokio::sync::Notify>>,
}

impl Successor {
    /// Nothing owed (a circuit that was not built ahead of need).
    pub fn none() -> Self {
        Successor { refill: None }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if let Some(refill) = &self.refill {
            refill.notify_one();
        }
    }
}

/// The client's circuits.
pub struct CircMgr {
    builder: Arc<Builder>,
    table: SharedTable<CircHandle>,
    bootstrap: Arc<Bootstrap>,
    /// Ports streams used lately ([`crate::predicted`]).
    predicted: std::sync::Mutex<PredictedPorts>,
    /// Wakes [`CircMgr::maintain`]: a [`Successor`] is owed, or a stream used a new port.
    refill: Arc<tokio::sync::Notify>,
}

impl CircMgr {
    /// `state_dir`: where the guard state lives (`node.data_dir`); None keeps it in memory.
    pub fn new(pool: ChannelPool, state_dir: Option<std::path::PathBuf>, bootstrap: Arc<Bootstrap>) -> Self {
        CircMgr {
            builder: Arc::new(Builder::new(pool, state_dir, bootstrap.clone())),
            table: Arc::default(),
            bootstrap,
            predicted: std::sync::Mutex::new(PredictedPorts::default()),
            refill: Arc::default(),
        }
    }

    /// Starts the build timeout from `initial` instead of [`crate::timeout::INITIAL`] (test
    /// networks: `client.dangerous_initial_build_timeout_ms`); forgets learned samples.
    pub fn set_initial_build_timeout(&self, initial: Duration) {
        self.builder.set_initial_build_timeout(initial);
    }

    /// The current build timeout (first attempt).
    pub fn build_timeout(&self) -> Duration {
        self.builder.build_timeout()
    }

    /// Whether the build timeout was learned from enough builds (not the initial value).
    pub fn build_timeout_learned(&self) -> bool {
        self.builder.build_timeout_learned()
    }

    /// For `allium status`: each predicted port (the fixed ones first) with how many clean
    /// circuits allow it now.
    pub fn ready_summary(&self) -> Vec<(u16, usize)> {
        let now = Instant::now();
        let ports = self.predicted.lock().expect("predicted").current(&PREBUILD_PORTS, now);
        let mut t = self.table.lock().expect("circuit table");
        ports.into_iter().map(|p| (p, t.clean_for(&ExitNeed::Port(p), now))).collect()
    }

    /// Every sampled guard (for `allium status`).
    pub fn guard_summary(&self) -> Vec<crate::guard::Guard> {
        self.builder.guard_summary()
    }

    /// Samples guards from this consensus if needed; true if the client has primary guards.
    pub fn prepare_guards(&self, dir: &NetDir) -> bool {
        self.builder.prepare_guards(dir)
    }

    /// The primary guards, as directory caches (samples guards first if needed).
    pub fn directory_guards(&self, dir: &NetDir) -> Vec<ConsensusRelay> {
        self.builder.directory_guards(dir)
    }

    /// A one-hop circuit to `relay` (for a directory stream), within the learned build timeout.
    pub async fn one_hop(&self, relay: &ConsensusRelay) -> Result<CircHandle, CircError> {
        self.builder.one_hop(relay).await
    }

    /// A fresh 4-hop circuit for onion services: see [`Builder::to_relay`].
    pub async fn to_relay(&self, dir: &NetDir, last: &ConsensusRelay) -> Result<CircHandle, GetError> {
        self.builder.to_relay(dir, last).await
    }

    /// A circuit whose exit allows `need`, for isolation class `iso`, and its [`Successor`]
    /// (kept while the stream asked for is set up, or for as long as it is open).
    pub async fn get(&self, dir: &Arc<NetDir>, need: ExitNeed, iso: &IsolationKey) -> Result<(CircHandle, Successor), GetError> {
        self.get_avoiding(dir, need, iso, &[]).await
    }

    /// [`CircMgr::get`], with an exit not among `avoid_exits` (they refused this stream). Never
    /// waits for a build when an open circuit fits; shares a build under way for the same class
    /// and need ([`table`]).
    pub async fn get_avoiding(&self, dir: &Arc<NetDir>, need: ExitNeed, iso: &IsolationKey, avoid_exits: &[RelayId]) -> Result<(CircHandle, Successor), GetError> {
        let (ExitNeed::Port(port) | ExitNeed::Addr(_, port)) = need;
        if self.predicted.lock().expect("predicted").note(port, &PREBUILD_PORTS, Instant::now()) {
            self.refill.notify_one();
        }
        let build = || {
            let (b, dir, avoid) = (self.builder.clone(), dir.clone(), avoid_exits.to_vec());
            async move { b.build_path(&dir, need, &avoid, None).await }
        };
        let (circ, how) = table::obtain(&self.table, need, iso, avoid_exits, build).await?;
        Ok((circ, Successor { refill: (how == "prebuilt").then(|| self.refill.clone()) }))
    }

    /// Keeps clean circuits ready for [`PREBUILD_PORTS`] and reports bootstrap progress; runs
    /// forever.
    pub async fn maintain(&self, mut netdir: watch::Receiver<Option<Arc<NetDir>>>) {
        let mut backoff = Duration::from_secs(1);
        let mut had_guards = false;
        // A new network's first consensus may list no guard yet (flags come with uptime): a
        // warning only once that lasts.
        let mut no_guard_since: Option<Instant> = None;
        loop {
            let dir = netdir.borrow_and_update().clone();
            let Some(dir) = dir else {
                let _ = netdir.changed().await;
                continue;
            };
            if !had_guards {
                if self.prepare_guards(&dir) {
                    had_guards = true;
                    self.bootstrap.advance(50, "guards chosen");
                } else {
                    let since = *no_guard_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= NO_GUARD_WARN_AFTER {
                        tracing::warn!("the consensus has listed no usable guard for {} s", since.elapsed().as_secs());
                    } else {
                        tracing::info!("the consensus lists no usable guard yet");
                    }
                }
            }
            let mut failed = false;
            let ports = self.predicted.lock().expect("predicted").current(&PREBUILD_PORTS, Instant::now());
            for port in ports {
                let need = ExitNeed::Port(port);
                let clean = self.table.lock().expect("circuit table").clean_for(&need, Instant::now());
                if clean >= PREBUILD_PER_PORT || !dir.relays().iter().any(|r| need.allowed_by(r)) {
                    continue;
                }
                match self.builder.build_path(&dir, need, &[], None).await {
                    Ok(b) => {
                        tracing::debug!(target: "allium_client::circuit", "circuit #{} prebuilt for port {port}", b.serial);
                        self.table.lock().expect("circuit table").add_clean(b);
                    }
                    Err(e) => {
                        tracing::info!("could not build a circuit ahead of need: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
            backoff = Duration::from_secs(1);
            if had_guards && self.builder.serial.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                self.bootstrap.advance(100, "ready: circuits available");
            }
            // Check again soon, or at once when a new consensus arrives or a stream took a
            // clean circuit or used a new port.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = netdir.changed() => {}
                _ = self.refill.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_keys_separate_credentials_listeners_and_destinations() {
        let l1 = Some("127.0.0.1:9050".parse().unwrap());
        let l2 = Some("127.0.0.1:9051".parse().unwrap());
        let a = isolation_key(b"\x01alice", l1, None);
        assert_eq!(a, isolation_key(b"\x01alice", l1, None));
        assert_ne!(a, isolation_key(b"\x01bob", l1, None));
        assert_ne!(a, isolation_key(b"\x01alice", l2, None));
        assert_ne!(a, isolation_key(b"\x01alice", l1, Some("example.com")));
        assert_eq!(isolation_key(b"", l1, Some("Example.COM")), isolation_key(b"", l1, Some("example.com")));
        // Length prefixes: moving bytes between fields gives another key.
        assert_ne!(isolation_key(b"ab", None, Some("c")), isolation_key(b"a", None, Some("bc")));
    }

    #[test]
    fn which_refusals_are_retried_elsewhere() {
        assert!(retry_on_another_exit(EndReason::ExitPolicy));
        assert!(retry_on_another_exit(EndReason::ResolveFailed));
        assert!(!retry_on_another_exit(EndReason::ConnectRefused));
        assert!(!retry_on_another_exit(EndReason::Done));
    }
}
