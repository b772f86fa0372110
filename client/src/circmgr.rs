//! Circuits ready for streams.
//!
//! - **Built ahead of need**: once bootstrapped, [`CircMgr::maintain`] keeps
//!   [`PREBUILD_PER_PORT`] clean (never used) circuits whose exits allow each of
//!   [`PREBUILD_PORTS`] and of the ports streams used in the last hour
//!   ([`crate::predicted`]), and builds the next one as soon as a stream takes one; a clean
//!   circuit is retired after [`MAX_CLEAN_AGE`].
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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_directory::netdir::NetDir;
use allium_net::link::PeerInfo;
use allium_net::pool::ChannelPool;
use allium_proto::doc::ConsensusRelay;
use allium_proto::flow::FlowParams;
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::EndReason;
use tokio::sync::{watch, Mutex};

use crate::circuit::{self, CircError, CircHandle};
use crate::guard::{self, GuardParams, GuardSet, Selection};
use crate::path::{candidates, choose_path, ExitNeed, PathError};
use crate::predicted::PredictedPorts;
use crate::state_file::SaveReporter;
use crate::timeout::TimeoutLearner;
use crate::vanguards::{self, VanguardParams, VanguardSet};
use crate::Bootstrap;

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
}

struct Entry {
    serial: u64,
    circ: CircHandle,
    /// Short ids of the hops (for debug logs).
    hops: String,
    /// The isolation class that owns it (None: clean).
    class: Option<IsolationKey>,
    first_used: Option<Instant>,
}

impl Entry {
    fn usable(&self) -> bool {
        self.circ.takes_streams()
            && match self.first_used {
                Some(t) => t.elapsed() < MAX_CIRCUIT_DIRTINESS,
                None => self.circ.built_at.elapsed() < MAX_CLEAN_AGE,
            }
    }
}

/// The client's circuits.
pub struct CircMgr {
    pool: ChannelPool,
    circs: Mutex<Vec<Entry>>,
    guards: StdMutex<GuardSet>,
    guard_file: Option<PathBuf>,
    /// The L2 vanguards of circuits to a chosen relay ([`CircMgr::to_relay`]).
    vanguards: StdMutex<VanguardSet>,
    vanguard_file: Option<PathBuf>,
    /// Failed saves of the guard and vanguard state, reported rate-limited.
    save_errors: StdMutex<(SaveReporter, SaveReporter)>,
    timeouts: StdMutex<TimeoutLearner>,
    /// Builds in a row through each guard that timed out (reset by a build through it).
    guard_timeouts: StdMutex<HashMap<RelayId, u32>>,
    serial: AtomicU64,
    bootstrap: Arc<Bootstrap>,
    /// Ports streams used lately ([`crate::predicted`]).
    predicted: StdMutex<PredictedPorts>,
    /// Wakes [`CircMgr::maintain`]: a stream took a clean circuit, or used a new port.
    refill: tokio::sync::Notify,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl CircMgr {
    /// `state_dir`: where the guard state lives (`node.data_dir`); None keeps it in memory.
    pub fn new(pool: ChannelPool, state_dir: Option<PathBuf>, bootstrap: Arc<Bootstrap>) -> Self {
        let guard_file = state_dir.as_deref().map(guard::state_path);
        let guards = match &guard_file {
            Some(p) => guard::load(p, GuardParams::default()),
            None => GuardSet::new(GuardParams::default()),
        };
        let vanguard_file = state_dir.as_deref().map(vanguards::state_path);
        let l2 = match &vanguard_file {
            Some(p) => vanguards::load(p, VanguardParams::default()),
            None => VanguardSet::new(VanguardParams::default()),
        };
        CircMgr {
            pool,
            circs: Mutex::new(Vec::new()),
            guards: StdMutex::new(guards),
            guard_file,
            vanguards: StdMutex::new(l2),
            vanguard_file,
            save_errors: StdMutex::new((SaveReporter::new("guard state file"), SaveReporter::new("vanguard state file"))),
            timeouts: StdMutex::new(TimeoutLearner::new()), guard_timeouts: StdMutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
            bootstrap,
            predicted: StdMutex::new(PredictedPorts::default()),
            refill: tokio::sync::Notify::new(),
        }
    }

    /// Starts the build timeout from `initial` instead of [`crate::timeout::INITIAL`] (test
    /// networks: `client.dangerous_initial_build_timeout_ms`); forgets learned samples.
    pub fn set_initial_build_timeout(&self, initial: Duration) {
        *self.timeouts.lock().expect("timeouts") = TimeoutLearner::with_initial(initial);
    }

    /// The current build timeout (first attempt).
    pub fn build_timeout(&self) -> Duration {
        self.timeouts.lock().expect("timeouts").timeout()
    }

    fn save_guards(&self) {
        let mut g = self.guards.lock().expect("guards");
        if !g.take_dirty() {
            return;
        }
        if let Some(p) = &self.guard_file {
            let r = guard::save(p, &g);
            if r.is_err() {
                // Retried at the next change.
                g.mark_dirty();
            }
            self.save_errors.lock().expect("save errors").0.report(p, &r, Instant::now());
        }
    }

    /// The L2 vanguards for this consensus (drawn or replaced first if needed; saved when
    /// changed).
    fn current_vanguards(&self, cands: &[crate::path::Candidate<'_>]) -> Vec<RelayId> {
        let mut v = self.vanguards.lock().expect("vanguards");
        v.update(cands, now_ms(), &mut rand::thread_rng());
        if v.take_dirty() {
            if let Some(p) = &self.vanguard_file {
                let r = vanguards::save(p, &v);
                if r.is_err() {
                    v.mark_dirty();
                }
                self.save_errors.lock().expect("save errors").1.report(p, &r, Instant::now());
            }
        }
        v.ids()
    }

    /// For `allium status`: each predicted port (the fixed ones first) with how many clean
    /// circuits allow it now; `None` while a request holds the circuit list.
    pub fn ready_summary(&self) -> Option<Vec<(u16, usize)>> {
        let ports = self.predicted.lock().expect("predicted").current(&PREBUILD_PORTS, Instant::now());
        let circs = self.circs.try_lock().ok()?;
        let clean: Vec<&Entry> = circs.iter().filter(|e| e.class.is_none() && e.usable()).collect();
        Some(ports.into_iter().map(|p| (p, clean.iter().filter(|e| ExitNeed::Port(p).allowed_by(&e.circ.exit)).count())).collect())
    }

    /// Every sampled guard (for `allium status`).
    pub fn guard_summary(&self) -> Vec<crate::guard::Guard> {
        self.guards.lock().expect("guards").guards().to_vec()
    }

    /// Samples guards from this consensus if needed; true if the client has primary guards.
    pub fn prepare_guards(&self, dir: &NetDir) -> bool {
        let cands = candidates(dir);
        let ok = {
            let mut g = self.guards.lock().expect("guards");
            g.update(&cands, now_ms(), &mut rand::thread_rng());
            !g.primaries(&cands).is_empty()
        };
        self.save_guards();
        ok
    }

    /// The primary guards, as directory caches (samples guards first if needed).
    pub fn directory_guards(&self, dir: &NetDir) -> Vec<ConsensusRelay> {
        let cands = candidates(dir);
        let ids = {
            let mut g = self.guards.lock().expect("guards");
            g.update(&cands, now_ms(), &mut rand::thread_rng());
            g.primaries(&cands)
        };
        self.save_guards();
        ids.iter().filter_map(|id| dir.by_id(id).cloned()).collect()
    }

    /// A one-hop circuit to `relay` (for a directory stream), within the learned build timeout.
    pub async fn one_hop(&self, relay: &ConsensusRelay) -> Result<CircHandle, CircError> {
        circuit::build_within(&self.pool, &[relay], self.build_timeout(), FlowParams::default()).await
    }

    /// A circuit whose exit allows `need`, for isolation class `iso`.
    pub async fn get(&self, dir: &Arc<NetDir>, need: ExitNeed, iso: &IsolationKey) -> Result<CircHandle, GetError> {
        self.get_avoiding(dir, need, iso, &[]).await
    }

    /// [`CircMgr::get`], with an exit not among `avoid_exits` (they refused this stream).
    pub async fn get_avoiding(&self, dir: &Arc<NetDir>, need: ExitNeed, iso: &IsolationKey, avoid_exits: &[RelayId]) -> Result<CircHandle, GetError> {
        let (ExitNeed::Port(port) | ExitNeed::Addr(_, port)) = need;
        if self.predicted.lock().expect("predicted").note(port, &PREBUILD_PORTS, Instant::now()) {
            self.refill.notify_one();
        }
        // Holding the lock while building means concurrent requests share one new circuit.
        let mut circs = self.circs.lock().await;
        circs.retain(Entry::usable);
        let fits = |e: &Entry| need.allowed_by(&e.circ.exit) && !avoid_exits.contains(&e.circ.exit.identity);
        if let Some(e) = circs.iter().find(|e| e.class.as_ref() == Some(iso) && fits(e)) {
            tracing::debug!(target: "allium_client::circuit", "stream on circuit #{} (reused) through {}", e.serial, e.hops);
            return Ok(e.circ.clone());
        }
        if let Some(e) = circs.iter_mut().find(|e| e.class.is_none() && fits(e)) {
            e.class = Some(iso.clone());
            e.first_used = Some(Instant::now());
            tracing::debug!(target: "allium_client::circuit", "stream on circuit #{} (prebuilt) through {}", e.serial, e.hops);
            // Build its successor now, not at the next check.
            self.refill.notify_one();
            return Ok(e.circ.clone());
        }
        let mut e = self.build(dir, need, avoid_exits).await?;
        e.class = Some(iso.clone());
        e.first_used = Some(Instant::now());
        tracing::debug!(target: "allium_client::circuit", "stream on circuit #{} (new) through {}", e.serial, e.hops);
        let c = e.circ.clone();
        circs.push(e);
        Ok(c)
    }

    /// Builds a circuit: guard from the guard set, path by weight, learned timeout; up to
    /// [`BUILD_ATTEMPTS`] paths.
    async fn build(&self, dir: &NetDir, need: ExitNeed, avoid_exits: &[RelayId]) -> Result<Entry, GetError> {
        self.build_path(dir, need, avoid_exits, None).await
    }

    /// A fresh 4-hop circuit (never shared with anything) whose last hop is `last`, for onion
    /// services (HSDirs, introduction and rendezvous points): guard from the guard set, an L2
    /// vanguard ([`crate::vanguards`]), a middle by weight, then `last`
    /// ([`crate::path::choose_path_to`]); same retries, timeouts and guard bookkeeping as
    /// [`CircMgr::get`].
    pub async fn to_relay(&self, dir: &NetDir, last: &ConsensusRelay) -> Result<CircHandle, GetError> {
        Ok(self.build_path(dir, ExitNeed::Port(0), &[], Some(last)).await?.circ)
    }

    async fn build_path(&self, dir: &NetDir, need: ExitNeed, avoid_exits: &[RelayId], last_hop: Option<&ConsensusRelay>) -> Result<Entry, GetError> {
        let cands = candidates(dir);
        let mut last: Option<CircError> = None;
        let mut attempt = 0;
        // Guards whose build timed out in this request: later attempts use another if any.
        let mut timed_out_guards: Vec<RelayId> = Vec::new();
        // Later hops that did not answer a build: left out of the next paths of this request.
        let mut silent_hops: Vec<RelayId> = Vec::new();
        let give_up_waiting = Instant::now() + MAX_GUARD_WAIT;
        while attempt < BUILD_ATTEMPTS {
            let now = now_ms();
            let sel = {
                let mut g = self.guards.lock().expect("guards");
                g.update(&cands, now, &mut rand::thread_rng());
                g.select(&cands, now)
            };
            self.save_guards();
            let usable = match sel {
                Selection::Use(list) => {
                    let others: Vec<RelayId> = list.iter().filter(|g| !timed_out_guards.contains(g)).copied().collect();
                    if others.is_empty() { list } else { others }
                }
                Selection::NoneListed => return Err(GetError::NoGuard("no guard-capable relay is listed".into())),
                Selection::WaitUntil(t) => {
                    let wait = Duration::from_millis(t.saturating_sub(now));
                    if Instant::now() + wait > give_up_waiting {
                        let why = last.map(|e| format!("guards unreachable; last: {e}")).unwrap_or_else(|| "guards in backoff".into());
                        return Err(GetError::NoGuard(why));
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let live: Vec<_> = cands.iter().filter(|c| !silent_hops.contains(c.id())).cloned().collect();
            let path: Vec<&ConsensusRelay> = match last_hop {
                None => choose_path(&live, &usable, need, avoid_exits, &mut rand::thread_rng())?.to_vec(),
                Some(last) => {
                    let l2 = self.current_vanguards(&cands);
                    crate::path::choose_path_to(&live, &usable, &l2, last, &mut rand::thread_rng())?.to_vec()
                }
            };
            let g = path[0];
            self.guards.lock().expect("guards").on_attempt(&g.identity, now_ms());
            attempt += 1;
            // The link to the guard first: its success or failure is the guard's reachability.
            if let Err(e) = self.pool.get(&PeerInfo { addr: g.address, identity: g.identity, link_key: g.link_key }).await {
                self.guards.lock().expect("guards").on_failure(&g.identity, now_ms());
                self.save_guards();
                tracing::info!("could not reach a guard ({e}); trying again");
                last = Some(e.into());
                continue;
            }
            // A guard whose builds keep timing out stays "failing" until a build through it
            // completes, so its backoff grows.
            if self.guard_timeouts.lock().expect("guard timeouts").get(&g.identity).copied().unwrap_or(0) == 0 {
                self.guards.lock().expect("guards").on_success(&g.identity, now_ms());
                self.save_guards();
            }
            let limit = self.timeouts.lock().expect("timeouts").timeout_for_attempt(attempt - 1);
            let started = Instant::now();
            match circuit::build_within(&self.pool, &path, limit, dir.flow_params()).await {
                Ok(circ) => {
                    let took = started.elapsed();
                    let mut t = self.timeouts.lock().expect("timeouts");
                    if t.record_success(took) {
                        tracing::info!(
                            "circuit build timeout learned: {} ms (95th percentile of the last {} builds × 2, at least 1500 ms)",
                            t.timeout().as_millis(),
                            t.samples()
                        );
                    }
                    drop(t);
                    if self.guard_timeouts.lock().expect("guard timeouts").remove(&g.identity).is_some() {
                        self.guards.lock().expect("guards").on_success(&g.identity, now_ms());
                        self.save_guards();
                    }
                    self.bootstrap.advance(75, "first circuit built");
                    let serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
                    let hops = path.iter().map(|r| r.identity.short()).collect::<Vec<_>>().join(" ");
                    return Ok(Entry { serial, circ, hops, class: None, first_used: None });
                }
                Err(CircError::Timeout { hops_done }) => {
                    {
                        let mut t = self.timeouts.lock().expect("timeouts");
                        if t.record_timeout() {
                            tracing::info!("several circuit builds in a row timed out; circuit build timeout reset to {} ms", t.timeout().as_millis());
                        }
                    }
                    tracing::info!("circuit build abandoned after {} ms (build timeout); trying a new path", limit.as_millis());
                    // Only a guard that never answered is to blame; a later hop that did not
                    // answer says nothing about the guard.
                    if hops_done == 0 {
                        timed_out_guards.push(g.identity);
                        self.on_guard_timeout(&g.identity);
                    } else if let Some(silent) = path.get(hops_done) {
                        silent_hops.push(silent.identity);
                    }
                    last = Some(CircError::Timeout { hops_done });
                }
                Err(e) => {
                    tracing::info!("circuit build failed ({e}); trying another path");
                    last = Some(e);
                }
            }
        }
        Err(GetError::Build(last.expect("at least one attempt")))
    }

    /// A build through `guard` timed out: after [`GUARD_TIMEOUTS_BEFORE_DOWN`] in a row the guard
    /// is marked down (as after `down_after` failed links), and again after each later one.
    fn on_guard_timeout(&self, guard: &RelayId) {
        let n = {
            let mut m = self.guard_timeouts.lock().expect("guard timeouts");
            let n = m.entry(*guard).or_insert(0);
            *n += 1;
            *n
        };
        if n < GUARD_TIMEOUTS_BEFORE_DOWN {
            return;
        }
        let times = if n == GUARD_TIMEOUTS_BEFORE_DOWN { GuardParams::default().down_after } else { 1 };
        tracing::info!("{n} circuit builds in a row through guard {} timed out; marking it down", guard.short());
        {
            let mut g = self.guards.lock().expect("guards");
            for _ in 0..times {
                g.on_failure(guard, now_ms());
            }
        }
        self.save_guards();
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
                let clean = {
                    let mut circs = self.circs.lock().await;
                    circs.retain(Entry::usable);
                    circs.iter().filter(|e| e.class.is_none() && need.allowed_by(&e.circ.exit)).count()
                };
                if clean >= PREBUILD_PER_PORT || !dir.relays().iter().any(|r| need.allowed_by(r)) {
                    continue;
                }
                match self.build(&dir, need, &[]).await {
                    Ok(e) => {
                        tracing::debug!(target: "allium_client::circuit", "circuit #{} prebuilt for port {port}", e.serial);
                        self.circs.lock().await.push(e);
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
            if had_guards && self.serial.load(Ordering::Relaxed) > 0 {
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
