//! Hosting onion services: one task per `[[onion_service]]` keeps its introduction points
//! ([`intro`]), publishes its descriptors ([`publish`]) and meets clients at their rendezvous
//! points, connecting their streams to the mapped targets ([`rend`]). The rules are in
//! docs/PROTOCOL.md, "Onion services"; the state machines are `allium_proto::hs`.
//!
//! Nothing here logs the service's address or keys at info level: lines name the service by
//! its configured name.

pub mod intro;
pub mod intro_queue;
pub mod publish;
pub mod rend;
pub mod revision;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_directory::NetDir;
use allium_proto::doc::{ConsensusRelay, Position, RelayFlags};
use allium_proto::ext::Extensions;
use allium_proto::hs::intro_set::{Introduce2Error, IntroSet, OnFailure, PointState};
use allium_proto::hs::IntroList;
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::{ExtendTarget, IntroduceBody};
use ed25519_dalek::SigningKey;
use rand::seq::SliceRandom;
use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_proto::hs::establish::IntroDosParams;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use x25519_dalek::PublicKey;

use crate::onion_service::OnionServiceConfig;
use crate::{ClientError, ClientState};
use intro::IntroEvent;
use publish::Published;

/// Descriptors are uploaded again at least this often.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(30 * 60);
/// After a change, publishing waits at most this long for points still being established.
const SETTLE: Duration = Duration::from_secs(5);
/// How often the service checks rotation and its publishing schedule.
const TICK: Duration = Duration::from_secs(1);
/// After a round in which an upload failed, the next waits this long, doubling with each such
/// round in a row up to [`MAX_RETRY_PUBLISH`] (an HSDir whose consensus is behind the service's
/// refuses a descriptor it will take once it holds the newer one).
const RETRY_PUBLISH: Duration = Duration::from_secs(10);
/// Longest wait before publishing again after failed uploads.
const MAX_RETRY_PUBLISH: Duration = Duration::from_secs(10 * 60);
/// Longest back-off before rebuilding an introduction circuit after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One hosted onion service.
pub struct HostedService {
    name: String,
    identity: SigningKey,
    target: rend::StreamTarget,
    clients: Vec<PublicKey>,
    state: Arc<ClientState>,
    /// Where the last revision counter is kept (`publish::REVISION_FILE` in the key directory).
    revision_file: std::path::PathBuf,
    /// The introduction rate each point is asked to keep.
    intro_dos: IntroDosParams,
    /// Rendezvous circuits built at once (`max_rendezvous_builds`).
    max_builds: usize,
    /// Introductions waiting for a build (`intro_queue`).
    queue_cap: usize,
    /// How many HSDirs took the last descriptor published ([`HostedService::publications`]).
    published: tokio::sync::watch::Sender<usize>,
}

/// Starts a task per configured service in `tasks` (a service task ends only on a fatal error).
pub fn spawn_all(services: &[OnionServiceConfig], data_dir: &Path, state: &Arc<ClientState>, tasks: &mut JoinSet<Result<(), ClientError>>) -> Result<(), ClientError> {
    for s in services {
        let svc = HostedService::new(s, data_dir, state.clone())?;
        tasks.spawn(svc.run());
    }
    Ok(())
}

impl HostedService {
    /// Loads the service's key and config (validated already by the config loader); its
    /// streams go to the mapped targets.
    pub fn new(cfg: &OnionServiceConfig, data_dir: &Path, state: Arc<ClientState>) -> Result<Self, ClientError> {
        let mappings = Arc::new(cfg.mappings().map_err(|e| format!("onion_service {}: {e}", cfg.name))?);
        Self::with_target(cfg, data_dir, state, rend::StreamTarget::Mapped(mappings))
    }

    /// [`HostedService::new`], its streams going to `target`.
    pub fn with_target(cfg: &OnionServiceConfig, data_dir: &Path, state: Arc<ClientState>, target: rend::StreamTarget) -> Result<Self, ClientError> {
        let identity = cfg.load_or_create_identity(data_dir).map_err(|e| format!("onion service {}: cannot load or create its key: {e}", cfg.name))?;
        let clients = cfg.authorized_keys().map_err(|e| format!("onion_service {}: {e}", cfg.name))?;
        let revision_file = cfg.key_dir(data_dir).join(publish::REVISION_FILE);
        let intro_dos = IntroDosParams { rate: cfg.intro_rate_per_sec, burst: cfg.intro_burst };
        Ok(HostedService {
            name: cfg.name.clone(),
            identity,
            target,
            clients,
            state,
            revision_file,
            intro_dos,
            max_builds: cfg.max_rendezvous_builds,
            queue_cap: cfg.intro_queue,
            published: tokio::sync::watch::Sender::new(0),
        })
    }

    /// How many HSDirs took each descriptor published, as it is published (0 until the first).
    pub fn publications(&self) -> tokio::sync::watch::Receiver<usize> {
        self.published.subscribe()
    }

    /// Runs the service until the client stops.
    pub async fn run(self) -> Result<(), ClientError> {
        let dir = loop {
            if let Some(d) = self.state.wait_netdir(Duration::from_secs(600)).await {
                break d;
            }
        };
        let (events_tx, events) = mpsc::channel(64);
        let placement = publish::placement(&self.identity, &dir);
        let mut l = Loop {
            svc: &self,
            dir,
            set: IntroSet::default(),
            circuits: HashMap::new(),
            events_tx,
            failures: 0,
            publish_failures: 0,
            placement,
            dirty_since: None,
            last_publish: None,
            not_before: None,
            starved: false,
            last_down: None,
            revisions: revision::Revisions::load(&self.revision_file),
            publishing: JoinSet::new(),
            // Rendezvous builds at once (`max_rendezvous_builds`); introductions beyond them
            // wait in a bounded queue ranked by proof of work (`intro_queue`), so a flood of
            // INTRODUCE2 cannot exhaust the node.
            builds: Arc::new(Semaphore::new(self.max_builds)),
            queue: intro_queue::IntroQueue::new(self.queue_cap, Instant::now()),
            freed: Arc::new(Notify::new()),
        };
        tracing::info!("onion service {}: setting up {} introduction points", self.name, l.set.needed());
        self.state.set_service_state(&self.name, "setting up introduction points".into());
        l.run(events).await
    }
}

/// The service task's state.
struct Loop<'a> {
    svc: &'a HostedService,
    dir: Arc<NetDir>,
    set: IntroSet,
    /// The task of each point's circuit (aborting it closes the circuit).
    circuits: HashMap<[u8; 32], AbortHandle>,
    events_tx: mpsc::Sender<IntroEvent>,
    /// Introduction circuits that failed in a row (back-off).
    failures: u32,
    /// Publishing rounds in a row in which an upload failed (back-off).
    publish_failures: u32,
    placement: publish::Placement,
    /// Since when the published descriptor is out of date.
    dirty_since: Option<Instant>,
    last_publish: Option<Instant>,
    /// Whether the last attempt to add a point found no relay (logged once).
    starved: bool,
    /// Why the last introduction circuit failed, as logged at info (each new reason once).
    last_down: Option<String>,
    /// No round starts before this (after one in which an upload failed).
    not_before: Option<Instant>,
    revisions: revision::Revisions,
    publishing: JoinSet<Published>,
    builds: Arc<Semaphore>,
    /// Introductions waiting for a build slot.
    queue: intro_queue::IntroQueue,
    /// Told when a rendezvous build ends (a slot is free).
    freed: Arc<Notify>,
}

impl Loop<'_> {
    async fn run(&mut self, mut events: mpsc::Receiver<IntroEvent>) -> Result<(), ClientError> {
        let mut netdirs = self.svc.state.netdir.clone();
        let mut ticker = tokio::time::interval(TICK);
        self.fill();
        loop {
            tokio::select! {
                Some(ev) = events.recv() => self.on_event(ev),
                r = netdirs.changed() => {
                    if r.is_err() {
                        return Err("the consensus task ended".into());
                    }
                    let latest = netdirs.borrow_and_update().clone();
                    if let Some(d) = latest {
                        self.on_netdir(d);
                    }
                }
                _ = ticker.tick() => self.on_tick(),
                _ = self.freed.notified() => self.drain(),
                Some(r) = self.publishing.join_next() => self.on_published(r.unwrap_or_default()),
            }
            self.maybe_publish();
        }
    }

    fn mark_dirty(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    fn on_event(&mut self, ev: IntroEvent) {
        match ev {
            IntroEvent::Up { auth_key } => {
                self.failures = 0;
                self.last_down = None;
                if self.set.established(&auth_key) {
                    let n = self.set.descriptor_points().len();
                    tracing::info!("onion service {}: introduction point established ({n} listed)", self.svc.name);
                    self.svc.state.set_service_state(&self.svc.name, format!("{n} introduction points established"));
                    self.mark_dirty();
                }
            }
            IntroEvent::Down { auth_key, why } => {
                self.circuits.remove(&auth_key);
                // A reason the operator can act on (e.g. too few relays for a service path) is
                // said at info, once while it lasts; repeats at debug.
                if self.last_down.as_deref() != Some(why.as_str()) {
                    tracing::info!("onion service {}: an introduction circuit failed: {why} (retrying)", self.svc.name);
                    self.svc.state.set_service_state(&self.svc.name, format!("introduction circuit failed: {why} (retrying)"));
                    self.last_down = Some(why.clone());
                } else {
                    tracing::debug!("onion service {}: introduction circuit down: {why}", self.svc.name);
                }
                self.on_failed(auth_key);
            }
            IntroEvent::Introduce2 { auth_key, body } => self.on_introduce2(auth_key, body),
        }
    }

    /// A point's circuit failed: rebuild it to the same relay, or replace the point.
    fn on_failed(&mut self, auth_key: [u8; 32]) {
        match self.set.circuit_failed(&auth_key) {
            OnFailure::Ignore => {}
            OnFailure::Retry => {
                self.failures = self.failures.saturating_add(1);
                let point = self.set.points().iter().find(|p| p.auth_key() == auth_key).map(|p| (p.relay.identity, p.auth_signing_key().clone()));
                let relay = point.as_ref().and_then(|(id, _)| self.dir.by_id(&RelayId(*id)).cloned());
                match (relay, point) {
                    (Some(relay), Some((_, auth))) => self.start_circuit(relay, auth),
                    // The relay left the consensus: count this as the retry's failure too.
                    _ => self.on_failed(auth_key),
                }
            }
            OnFailure::Replace => {
                self.failures = self.failures.saturating_add(1);
                self.mark_dirty();
                self.fill();
            }
        }
    }

    fn backoff(&self) -> Duration {
        match self.failures {
            0 => Duration::ZERO,
            n => Duration::from_secs(1u64 << n.min(6)).min(MAX_BACKOFF),
        }
    }

    fn start_circuit(&mut self, relay: ConsensusRelay, auth: SigningKey) {
        let key = auth.verifying_key().to_bytes();
        let task = tokio::spawn(intro::run(self.svc.state.clone(), self.dir.clone(), relay, auth, self.svc.intro_dos, self.backoff(), self.events_tx.clone()));
        self.circuits.insert(key, task.abort_handle());
    }

    /// Adds as many points as needed, on relays picked by middle weight.
    fn fill(&mut self) {
        for _ in 0..self.set.needed() {
            let Some(relay) = pick_relay(&self.dir, &self.set.relays_in_use()) else {
                if !self.starved {
                    tracing::info!("onion service {}: no relay left for an introduction point (will keep trying)", self.svc.name);
                    self.starved = true;
                }
                return;
            };
            self.starved = false;
            let target = ExtendTarget { addr: relay.address, identity: relay.identity.0, link_key: relay.link_key };
            let key = self.set.add(&mut rand::rngs::OsRng, target, relay.onion_key, unix_now());
            let auth = self.set.points().iter().find(|p| p.auth_key() == key).expect("just added").auth_signing_key().clone();
            self.start_circuit(relay, auth);
        }
    }

    /// An INTRODUCE2: ranked by its proof of work (one hash, before any decryption) and queued.
    fn on_introduce2(&mut self, auth_key: [u8; 32], body: IntroduceBody) {
        let effort = match allium_proto::hs::pow::verify(&body) {
            Ok(e) => e,
            Err(e) => {
                LimitCounters::hit(&LIMITS.intro_pow_refused);
                tracing::debug!("onion service {}: INTRODUCE2 dropped: {e}", self.svc.name);
                return;
            }
        };
        allium_net::metrics::METRICS.onion_introductions.inc();
        if self.queue.push(auth_key, body, effort, Instant::now()) != intro_queue::Pushed::Queued {
            LimitCounters::hit(&LIMITS.intro_queue_dropped);
        }
        self.drain();
    }

    /// Starts rendezvous for the best-ranked waiting introductions while build slots are free.
    fn drain(&mut self) {
        while !self.queue.is_empty() {
            let Ok(permit) = self.builds.clone().try_acquire_owned() else { return };
            let (next, expired) = self.queue.pop(Instant::now());
            for _ in 0..expired {
                LimitCounters::hit(&LIMITS.intro_queue_dropped);
            }
            let Some(w) = next else { return };
            let identity = self.svc.identity.verifying_key().to_bytes();
            let acc = match self.set.handle_introduce2(&mut rand::rngs::OsRng, &identity, &w.auth_key, &w.body, unix_now()) {
                Ok(a) => a,
                Err(Introduce2Error::Replayed(_)) => {
                    tracing::debug!("onion service {}: replayed INTRODUCE2 dropped", self.svc.name);
                    allium_net::metrics::METRICS.onion_introductions_replayed.inc();
                    continue;
                }
                Err(e) => {
                    tracing::debug!("onion service {}: INTRODUCE2 dropped: {e}", self.svc.name);
                    continue;
                }
            };
            let (state, dir, target, name, freed) = (self.svc.state.clone(), self.dir.clone(), self.svc.target.clone(), self.svc.name.clone(), self.freed.clone());
            tokio::spawn(async move {
                let done = move || {
                    drop(permit);
                    freed.notify_one();
                };
                if let Err(e) = rend::meet(state, dir, acc, target, &name, done).await {
                    tracing::debug!("onion service {name}: rendezvous failed: {e}");
                }
            });
        }
    }

    fn on_netdir(&mut self, dir: Arc<NetDir>) {
        let placement = publish::placement(&self.svc.identity, &dir);
        if placement != self.placement {
            tracing::debug!("onion service {}: responsible HSDirs or periods changed", self.svc.name);
            self.placement = placement;
            self.mark_dirty();
        }
        self.dir = dir;
    }

    fn on_tick(&mut self) {
        let forwarded = u64::from(self.svc.intro_dos.rate) * self.set.descriptor_points().len().max(1) as u64;
        if let Some(effort) = self.queue.tick(Instant::now(), forwarded) {
            if effort > 0 {
                tracing::info!("onion service {}: more introductions than it can take; asking clients for proof-of-work effort {effort}", self.svc.name);
            } else {
                tracing::info!("onion service {}: introductions back to normal; no proof of work asked", self.svc.name);
            }
            self.mark_dirty();
        }
        self.drain();
        let (close, changed) = self.set.tick(unix_now());
        for k in close {
            if let Some(t) = self.circuits.remove(&k) {
                t.abort();
            }
        }
        if changed {
            self.mark_dirty();
        }
        self.fill();
        if self.last_publish.is_some_and(|t| t.elapsed() >= REPUBLISH_EVERY) {
            self.mark_dirty();
        }
    }

    /// Starts a publishing round if the descriptor is out of date, none is running, and the
    /// points being established have settled (or had [`SETTLE`] to).
    fn maybe_publish(&mut self) {
        let Some(since) = self.dirty_since else { return };
        let points = self.set.descriptor_points();
        if !self.publishing.is_empty() || points.is_empty() || self.not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let settled = self.set.points().iter().all(|p| p.state != PointState::Pending);
        if !settled && since.elapsed() < SETTLE {
            return;
        }
        self.dirty_since = None;
        self.last_publish = Some(Instant::now());
        let now = unix_now_ms() / 1000;
        let revisions: Vec<_> = allium_proto::hs::period::publish_periods(self.dir.valid_after(), self.dir.hs_period_secs())
            .into_iter()
            .map(|p| (p, self.revisions.next(&self.svc.identity, p, now)))
            .collect();
        self.revisions.save(&self.svc.name);
        let effort = self.queue.suggested();
        let ext = Extensions((effort > 0).then(|| allium_proto::hs::pow::suggested_effort_extension(effort)).into_iter().collect());
        let list = IntroList { intro_points: points, ext };
        let (state, dir, name, identity, clients) = (self.svc.state.clone(), self.dir.clone(), self.svc.name.clone(), self.svc.identity.clone(), self.svc.clients.clone());
        self.publishing.spawn(async move { publish::publish(&state, &dir, &name, &identity, &list, &clients, &revisions).await });
    }

    fn on_published(&mut self, p: Published) {
        if p.failed > 0 {
            tracing::info!("onion service {}: descriptor published to {} HSDirs ({} uploads failed)", self.svc.name, p.stored, p.failed);
        } else {
            tracing::info!("onion service {}: descriptor published to {} HSDirs", self.svc.name, p.stored);
        }
        let points = self.set.descriptor_points().len();
        self.svc.state.set_service_state(&self.svc.name, format!("published to {} HSDirs ({} failed), {points} introduction points", p.stored, p.failed));
        self.svc.published.send_replace(p.stored);
        if p.stored > 0 {
            self.svc.state.record_publication(&self.svc.name);
        }
        if p.failed > 0 || p.stored == 0 {
            // Publish again a little later, so that every responsible HSDir holds the descriptor.
            self.publish_failures = self.publish_failures.saturating_add(1);
            self.mark_dirty();
            self.not_before = Some(Instant::now() + retry_publish_after(self.publish_failures));
        } else {
            self.publish_failures = 0;
        }
    }
}

/// The wait before publishing again after the `n`th round in a row with a failed upload.
fn retry_publish_after(n: u32) -> Duration {
    RETRY_PUBLISH.saturating_mul(1 << n.saturating_sub(1).min(16)).min(MAX_RETRY_PUBLISH)
}

/// A Running, Valid relay not in `in_use`, picked at random by middle weight.
fn pick_relay(dir: &NetDir, in_use: &[[u8; 32]]) -> Option<ConsensusRelay> {
    let cands: Vec<&ConsensusRelay> = dir.relays().iter().filter(|r| r.flags.contains(RelayFlags::RUNNING | RelayFlags::VALID) && !in_use.contains(&r.identity.0)).collect();
    cands.choose_weighted(&mut rand::thread_rng(), |r| dir.position_weight(r, Position::Middle).max(1)).ok().map(|r| (*r).clone())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A network view of just `relays` (unsigned: tests only).
#[cfg(test)]
pub(crate) fn test_dir(relays: Vec<ConsensusRelay>) -> NetDir {
    use allium_proto::doc::{Consensus, Lifetime};
    let lt = Lifetime::new(100, 110, 130).expect("a valid lifetime");
    NetDir::new(Consensus::new(lt, vec![allium_proto::ids::RelayId([9; 32])], relays), Default::default()).expect("default parameters")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Introduction points go on Running, Valid relays not already in use, and none is picked
    /// when every usable relay is taken.
    #[test]
    fn introduction_relays_are_usable_and_not_in_use() {
        let mut down = ConsensusRelay::synthetic(3);
        down.flags = RelayFlags::VALID;
        let dir = test_dir(vec![ConsensusRelay::synthetic(1), ConsensusRelay::synthetic(2), down]);
        for _ in 0..50 {
            let r = pick_relay(&dir, &[[1; 32]]).expect("relay 2 is free");
            assert_eq!(r.identity.0, [2; 32]);
        }
        assert!(pick_relay(&dir, &[[1; 32], [2; 32]]).is_none(), "the only other relay is not Running");
    }

    /// Publishing again after failed uploads backs off from 10 s, doubling, to at most 10 min.
    #[test]
    fn publishing_retries_back_off() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_publish_after(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 600, 600, 600]);
        assert_eq!(retry_publish_after(u32::MAX), MAX_RETRY_PUBLISH);
    }
}
