//! Building circuits: paths from the guard set (and L2 vanguards for onion-service circuits),
//! the learned build timeout, retries on new paths, and the guard bookkeeping that builds feed.
//! The guard and vanguard state is written off the request path ([`Builder::save_state`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_directory::netdir::NetDir;
use allium_net::link::PeerInfo;
use allium_net::pool::ChannelPool;
use allium_proto::doc::ConsensusRelay;
use allium_proto::flow::FlowParams;
use allium_proto::ids::RelayId;

use super::table::Built;
use super::{GetError, BUILD_ATTEMPTS, GUARD_TIMEOUTS_BEFORE_DOWN, MAX_GUARD_WAIT};
use crate::circuit::{self, CircError, CircHandle};
use crate::guard::{self, GuardParams, GuardSet, Selection};
use crate::path::{candidates, choose_path, ExitNeed};
use crate::state_file::{SaveReporter, SavedState};
use crate::timeout::TimeoutLearner;
use crate::vanguards::{self, VanguardParams, VanguardSet};
use crate::Bootstrap;

/// Builds circuits and keeps the state that builds use and feed.
pub struct Builder {
    pool: ChannelPool,
    guards: Mutex<GuardSet>,
    guard_file: Option<PathBuf>,
    /// The L2 vanguards of circuits to a chosen relay ([`Builder::to_relay`]).
    vanguards: Mutex<VanguardSet>,
    vanguard_file: Option<PathBuf>,
    /// Failed saves of the guard and vanguard state, reported rate-limited.
    save_errors: Mutex<(SaveReporter, SaveReporter)>,
    /// A state change not yet written; a writer is running.
    save_wanted: AtomicBool,
    saving: AtomicBool,
    timeouts: Mutex<TimeoutLearner>,
    /// Builds in a row through each guard that timed out (reset by a build through it).
    guard_timeouts: Mutex<HashMap<RelayId, u32>>,
    /// Circuits built so far (numbers them in debug logs).
    pub(super) serial: AtomicU64,
    bootstrap: Arc<Bootstrap>,
}

/// Writes `state` to `file` if it changed (its text made under the lock, the file written
/// outside it; marked changed again if the write failed): the path and the result, if written.
fn write_changed<'p, S: SavedState>(file: Option<&'p std::path::Path>, state: &Mutex<S>) -> Option<(&'p std::path::Path, std::io::Result<()>)> {
    let file = file?;
    let text = {
        let mut s = state.lock().expect("saved state");
        s.take_dirty().then(|| s.to_toml())?
    };
    let r = crate::state_file::write_atomic(file, &text);
    if r.is_err() {
        state.lock().expect("saved state").mark_dirty();
    }
    Some((file, r))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Builder {
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
        Builder {
            pool,
            guards: Mutex::new(guards),
            guard_file,
            vanguards: Mutex::new(l2),
            vanguard_file,
            save_errors: Mutex::new((SaveReporter::new("guard state file"), SaveReporter::new("vanguard state file"))),
            save_wanted: AtomicBool::new(false),
            saving: AtomicBool::new(false),
            timeouts: Mutex::new(TimeoutLearner::new()),
            guard_timeouts: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
            bootstrap,
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

    /// Whether the build timeout was learned from enough builds.
    pub fn build_timeout_learned(&self) -> bool {
        self.timeouts.lock().expect("timeouts").learned()
    }

    /// The L2 vanguards for this consensus (drawn or replaced first if needed; saved when
    /// changed).
    fn current_vanguards(self: &Arc<Self>, cands: &[crate::path::Candidate<'_>]) -> Vec<RelayId> {
        let ids = {
            let mut v = self.vanguards.lock().expect("vanguards");
            v.update(cands, now_ms(), &mut rand::thread_rng());
            v.ids()
        };
        self.save_state();
        ids
    }

    /// Writes the guard and vanguard state if changed, on a blocking-pool thread: a request
    /// never waits for the disk. One writer at a time; a change made while it writes is written
    /// by the same writer before it stops.
    fn save_state(self: &Arc<Self>) {
        self.save_wanted.store(true, Ordering::SeqCst);
        if self.saving.swap(true, Ordering::SeqCst) {
            return;
        }
        let b = self.clone();
        let write = move || loop {
            while b.save_wanted.swap(false, Ordering::SeqCst) {
                b.write_state();
            }
            b.saving.store(false, Ordering::SeqCst);
            // A change between the last write and the flag: write it unless another writer
            // took over.
            if !b.save_wanted.load(Ordering::SeqCst) || b.saving.swap(true, Ordering::SeqCst) {
                break;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    /// Writes each changed state file; a failed write is retried at the next change.
    fn write_state(&self) {
        if let Some((p, r)) = write_changed(self.guard_file.as_deref(), &self.guards) {
            self.save_errors.lock().expect("save errors").0.report(p, &r, Instant::now());
        }
        if let Some((p, r)) = write_changed(self.vanguard_file.as_deref(), &self.vanguards) {
            self.save_errors.lock().expect("save errors").1.report(p, &r, Instant::now());
        }
    }

    /// Every sampled guard (for `allium status`).
    pub fn guard_summary(&self) -> Vec<crate::guard::Guard> {
        self.guards.lock().expect("guards").guards().to_vec()
    }

    /// Samples guards from this consensus if needed; true if the client has primary guards.
    pub fn prepare_guards(self: &Arc<Self>, dir: &NetDir) -> bool {
        let cands = candidates(dir);
        let ok = {
            let mut g = self.guards.lock().expect("guards");
            g.update(&cands, now_ms(), &mut rand::thread_rng());
            !g.primaries(&cands).is_empty()
        };
        self.save_state();
        ok
    }

    /// The primary guards, as directory caches (samples guards first if needed).
    pub fn directory_guards(self: &Arc<Self>, dir: &NetDir) -> Vec<ConsensusRelay> {
        let cands = candidates(dir);
        let ids = {
            let mut g = self.guards.lock().expect("guards");
            g.update(&cands, now_ms(), &mut rand::thread_rng());
            g.primaries(&cands)
        };
        self.save_state();
        ids.iter().filter_map(|id| dir.by_id(id).cloned()).collect()
    }

    /// A one-hop circuit to `relay` (for a directory stream), within the learned build timeout.
    pub async fn one_hop(&self, relay: &ConsensusRelay) -> Result<CircHandle, CircError> {
        circuit::build_within(&self.pool, &[relay], self.build_timeout(), FlowParams::default()).await
    }

    /// A fresh 4-hop circuit (never shared with anything) whose last hop is `last`, for onion
    /// services (HSDirs, introduction and rendezvous points): guard from the guard set, an L2
    /// vanguard ([`crate::vanguards`]), a middle by weight, then `last`
    /// ([`crate::path::choose_path_to`]); same retries, timeouts and guard bookkeeping as
    /// [`super::CircMgr::get`].
    pub async fn to_relay(self: &Arc<Self>, dir: &NetDir, last: &ConsensusRelay) -> Result<CircHandle, GetError> {
        Ok(self.build_path(dir, ExitNeed::Port(0), &[], Some(last)).await?.circ)
    }

    pub async fn build_path(self: &Arc<Self>, dir: &NetDir, need: ExitNeed, avoid_exits: &[RelayId], last_hop: Option<&ConsensusRelay>) -> Result<Built<CircHandle>, GetError> {
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
            self.save_state();
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
                self.save_state();
                tracing::info!("could not reach a guard ({e}); trying again");
                last = Some(e.into());
                continue;
            }
            // A guard whose builds keep timing out stays "failing" until a build through it
            // completes, so its backoff grows.
            if self.guard_timeouts.lock().expect("guard timeouts").get(&g.identity).copied().unwrap_or(0) == 0 {
                self.guards.lock().expect("guards").on_success(&g.identity, now_ms());
                self.save_state();
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
                        allium_net::operator::wait::status_changed();
                    }
                    drop(t);
                    if self.guard_timeouts.lock().expect("guard timeouts").remove(&g.identity).is_some() {
                        self.guards.lock().expect("guards").on_success(&g.identity, now_ms());
                        self.save_state();
                    }
                    self.bootstrap.advance(75, "first circuit built");
                    let serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
                    let hops = path.iter().map(|r| r.identity.short()).collect::<Vec<_>>().join(" ");
                    return Ok(Built { circ, serial, hops });
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
    fn on_guard_timeout(self: &Arc<Self>, guard: &RelayId) {
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
        self.save_state();
    }
}
