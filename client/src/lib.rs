//! Allium client: fetches and verifies the consensus, chooses paths, builds circuits and offers
//! a SOCKS5 proxy. Host names are resolved by the exit, never locally.
//!
//! Layout:
//! - [`config`]: the client's TOML config.
//! - [`path`]: path choice (weights, /16 and family rules).
//! - [`guard`]: the guard set, persisted in `node.data_dir/guards.toml`.
//! - [`timeout`]: the learned circuit-build timeout.
//! - [`circuit`]: building a circuit and its owner task (streams, crypto).
//! - [`circmgr`]: which circuit a new stream uses.
//! - [`predicted`]: the ports recently used, for which circuits are built ahead of need.
//! - [`recovery`]: BEGIN and stall timeouts: giving up on a stream, retiring its circuit.
//! - [`dir_fetch`]: where the consensus comes from (guards, fallback directories, authorities).
//! - [`connect`]: opening a stream through an exit or to an onion service.
//! - [`embed`]: the client inside a Rust program (start, bootstrap events, `connect`).
//! - [`socks`]: the SOCKS4/4a/5 front end (with RESOLVE).
//! - [`http_proxy`]: the optional HTTP CONNECT front end.
//! - [`onion_service`]: the `[[onion_service]]` config and each service's keys.
//! - [`hs_service`]: hosting those services (introduction points, descriptors, rendezvous).
//! - [`hs_connect`]: connecting to onion services (`.allium` destinations), with the
//!   descriptor cache [`hs_desc_cache`] and the client-authorization keys [`onion_auth`].
//!
//! Not in this crate: link encryption and reactors (`allium-net`), documents (`allium-proto`),
//! consensus verification (`allium-directory`).

pub mod bwscan;
pub mod circmgr;
pub mod circuit;
pub mod config;
pub mod connect;
pub mod dir_fetch;
pub mod embed;
pub mod http_proxy;
pub mod onion_service;
pub mod guard;
pub mod hs_connect;
pub mod hs_desc_cache;
pub mod hs_dir;
pub mod hs_service;
pub mod onion_auth;
pub mod path;
pub mod predicted;
pub mod recovery;
pub mod socks;
pub mod state_file;
pub mod status;
pub mod timeout;
pub mod vanguards;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allium_directory::netdir::NetDir;
use allium_net::keys::NodeKeys;
use allium_net::pool::ChannelPool;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::ClientConfig;

/// Any error that stops the client.
pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// Bootstrap progress in percent: 0 starting, 25 consensus fetched and verified, 50 guards
/// chosen (circuits can be built from here on), 75 first circuit built, 100 ready (circuits
/// built ahead of need). Each step is logged once at info.
pub struct Bootstrap {
    tx: watch::Sender<u8>,
    /// The phase last reached, for `allium status`.
    phase: std::sync::Mutex<String>,
}

/// The percentage from which the client can build circuits (SOCKS requests wait for it).
pub const BOOTSTRAP_CAN_BUILD: u8 = 50;

impl Bootstrap {
    pub fn new() -> Self {
        tracing::info!("bootstrap 0%: starting");
        Bootstrap { tx: watch::channel(0).0, phase: std::sync::Mutex::new("starting".into()) }
    }

    /// Moves to `pct` (never back) and logs the phase.
    pub fn advance(&self, pct: u8, phase: &str) {
        if self.tx.send_if_modified(|p| (pct > *p).then(|| *p = pct).is_some()) {
            tracing::info!("bootstrap {pct}%: {phase}");
            allium_net::metrics::METRICS.bootstrap_percent.set(i64::from(pct));
            *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase.to_string();
            allium_net::operator::wait::status_changed();
        }
    }

    /// The phase last reached (as logged).
    pub fn phase(&self) -> String {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn percent(&self) -> u8 {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u8> {
        self.tx.subscribe()
    }
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self::new()
    }
}

/// What the client's tasks share.
pub struct ClientState {
    netdir: watch::Receiver<Option<Arc<NetDir>>>,
    pub circuits: circmgr::CircMgr,
    pub bootstrap: Arc<Bootstrap>,
    isolate_destinations: bool,
    /// Connections to onion services (`.allium` destinations).
    pub onions: hs_connect::OnionConnector,
    /// Application connections on the SOCKS and HTTP CONNECT listeners together.
    pub app_conns: Arc<allium_net::limits::conn::ConnLimiter>,
    /// Each hosted onion service's state in words, by name (for `allium status`).
    services: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Each hosted onion service's descriptor publications that at least one HSDir stored.
    publications: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// The `[limits]` section (request timeout, streams per service circuit).
    pub limits: allium_net::limits::LimitsConfig,
    /// Where the consensus stands and where fetches came from (for `allium status`).
    pub directory: std::sync::Mutex<DirStatus>,
}

/// The client's directory state as `allium status` reports it (`directory`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DirStatus {
    /// Whether the kept consensus is usable: live, in the grace after it expired, or none.
    pub consensus: ConsensusState,
    /// Consensuses fetched, by kind of source.
    pub from_guards: u64,
    pub from_fallbacks: u64,
    pub from_authorities: u64,
}

/// Whether the client holds a consensus it can use (docs/PROTOCOL.md, "Consensus lifetime").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConsensusState {
    /// None held, or the one held expired beyond the grace.
    #[default]
    None,
    /// Inside its validity interval.
    Live,
    /// Expired, no newer one can be had, still used within the grace.
    Grace,
}

impl ConsensusState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsensusState::None => "none",
            ConsensusState::Live => "live",
            ConsensusState::Grace => "grace",
        }
    }

    fn of(u: Option<allium_directory::cache::Usability>) -> Self {
        use allium_directory::cache::Usability;
        match u {
            Some(Usability::Live) => ConsensusState::Live,
            Some(Usability::Grace { .. }) => ConsensusState::Grace,
            _ => ConsensusState::None,
        }
    }
}

impl ClientState {
    /// Records where the directory stands after a fetch (`source`: the kind that served one),
    /// then wakes `allium status --wait`.
    fn record_directory(&self, state: ConsensusState, source: Option<dir_fetch::SourceKind>) {
        let mut d = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        d.consensus = state;
        match source {
            Some(dir_fetch::SourceKind::Guard) => d.from_guards += 1,
            Some(dir_fetch::SourceKind::Fallback) => d.from_fallbacks += 1,
            Some(dir_fetch::SourceKind::Authority) => d.from_authorities += 1,
            None => {}
        }
        drop(d);
        allium_net::operator::wait::status_changed();
    }
}

impl ClientState {
    /// The current consensus once the client can build circuits (bootstrap ≥ 50%: consensus
    /// verified and guards chosen), waiting up to `max`. None (logged) if it cannot yet.
    pub async fn wait_netdir(&self, max: Duration) -> Option<Arc<NetDir>> {
        let mut rx = self.netdir.clone();
        let mut progress = self.bootstrap.subscribe();
        let r = tokio::time::timeout(max, async {
            let _ = progress.wait_for(|p| *p >= BOOTSTRAP_CAN_BUILD).await;
            rx.wait_for(|d| d.is_some()).await.ok().and_then(|d| d.clone())
        })
        .await;
        match r {
            Ok(Some(d)) => Some(d),
            _ => {
                tracing::info!("a request waited {} s but the client cannot build circuits yet (bootstrap at {}%)", max.as_secs(), self.bootstrap.percent());
                None
            }
        }
    }

    /// Records what a hosted onion service is doing (shown by `allium status`).
    pub fn set_service_state(&self, name: &str, state: String) {
        self.services.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), state);
        allium_net::operator::wait::status_changed();
    }

    /// A hosted onion service's descriptor was stored by at least one HSDir (counted in
    /// `allium status`'s `onion_publications`).
    pub fn record_publication(&self, name: &str) {
        *self.publications.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default() += 1;
        allium_net::operator::wait::status_changed();
    }

    /// Every hosted onion service's count of stored publications.
    pub fn service_publications(&self) -> std::collections::BTreeMap<String, u64> {
        self.publications.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current consensus, if any.
    pub fn netdir(&self) -> Option<Arc<NetDir>> {
        self.netdir.borrow().clone()
    }

    /// Every hosted onion service's state.
    pub fn service_states(&self) -> std::collections::BTreeMap<String, String> {
        self.services.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The isolation key of a stream from its credentials key, the listener it came in on and
    /// its destination host (used only with `client.isolate_destinations = true`).
    pub fn isolation(&self, credentials: &[u8], listener: Option<std::net::SocketAddr>, host: &str) -> circmgr::IsolationKey {
        circmgr::isolation_key(credentials, listener, self.isolate_destinations.then_some(host))
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The client's tasks: fetching the consensus, keeping circuits ready, hosting onion services.
pub type ClientTasks = tokio::task::JoinSet<Result<(), ClientError>>;

/// Starts the client's state and background tasks (directory, circuits ahead of need, onion
/// services), without listeners: [`run`] adds the proxies, [`embed::Client`] its API.
pub async fn launch(cfg: &ClientConfig) -> Result<(Arc<ClientState>, ClientTasks), ClientError> {
    // Guard state lives there: a client that cannot write it would pick new guards at every
    // restart, silently.
    let data_dir = &cfg.node.data_dir;
    state_file::check_writable(data_dir).map_err(|e| format!("data directory {} is not writable ({e}); the client keeps its guard state there", data_dir.display()))?;
    let (tx, rx) = watch::channel(None);
    let bootstrap = Arc::new(Bootstrap::new());
    let pool = ChannelPool::new(cfg.node.address, None);
    pool.set_idle_timeout(cfg.limits.link_idle_timeout());
    pool.set_write_timeout(cfg.limits.link_write_timeout());
    pool.set_mem_quota(allium_net::limits::memquota::MemQuota::new(cfg.limits.max_queued_bytes()));
    let circuits = circmgr::CircMgr::new(pool, Some(cfg.node.data_dir.clone()), bootstrap.clone());
    let app_conns = allium_net::limits::conn::ConnLimiter::new(cfg.limits.connections(), cfg.limits.max_connections_per_address);
    circuits.set_initial_build_timeout(cfg.initial_build_timeout());
    let onions = hs_connect::OnionConnector::new(onion_auth::load(&cfg.client.onion_auth)?);
    let state = Arc::new(ClientState { netdir: rx.clone(), circuits, bootstrap, isolate_destinations: cfg.client.isolate_destinations, onions, app_conns, services: Default::default(), publications: Default::default(), limits: cfg.limits.clone(), directory: Default::default() });
    for s in &cfg.onion_services {
        state.set_service_state(&s.name, "waiting for the consensus".into());
    }
    let mut tasks = ClientTasks::new();
    tasks.spawn(directory_loop(cfg.clone(), tx, state.clone()));
    let maint = state.clone();
    tasks.spawn(async move {
        maint.circuits.maintain(rx).await;
        Ok(())
    });
    hs_service::spawn_all(&cfg.onion_services, &cfg.node.data_dir, &state, &mut tasks)?;
    Ok((state, tasks))
}

/// Runs the client until a fatal error.
pub async fn run(cfg: ClientConfig, _keys: NodeKeys) -> Result<(), ClientError> {
    let (state, mut tasks) = launch(&cfg).await?;
    let socks_addr = cfg.client.socks_listen;
    let listener = TcpListener::bind(socks_addr).await.map_err(|e| format!("cannot listen on client.socks_listen {socks_addr}: {e}"))?;
    tracing::info!("SOCKS5 proxy listening on {}", listener.local_addr().unwrap_or(socks_addr));
    if let Some(addr) = cfg.client.http_connect_listen {
        let l = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on client.http_connect_listen {addr}: {e}"))?;
        tracing::info!("HTTP CONNECT proxy listening on {}", l.local_addr().unwrap_or(addr));
        tasks.spawn(http_proxy::serve(l, state.clone()));
    }
    allium_net::operator::spawn(&cfg.node, "client", status::status_fn(state.clone()), &mut tasks).await?;
    tasks.spawn(socks::serve(listener, state));
    match tasks.join_next().await {
        Some(Ok(r)) => r.and(Err("a client task ended".into())),
        Some(Err(e)) => Err(format!("a client task panicked: {e}").into()),
        None => Err("no client tasks".into()),
    }
}

/// Directory retries back off up to 30 s (2 s on a test network, where the directory comes up
/// with it) while bootstrapping; see [`DirRetry`].
fn max_dir_backoff(testnet: bool) -> Duration {
    Duration::from_secs(if testnet { 2 } else { 30 })
}

/// The first directory retry's delay (a test network's: its directory comes up within a
/// second of the client).
const DIR_RETRY_INITIAL: Duration = Duration::from_millis(250);
const DIR_RETRY_INITIAL_TESTNET: Duration = Duration::from_millis(100);

/// When consensus fetches keep failing, the waits between them: doubling from 250 ms (100 ms on a test network), capped at
/// [`max_dir_backoff`] for the first [`DirRetry::patience`] of failures (sources may still be
/// starting), then doubling on up to [`DirRetry::long_cap`] (10 min; 60 s on a test network):
/// a client whose directory sources are all down does not knock every few seconds forever.
/// Each wait is drawn at random between half and all of its step, so clients that failed
/// together do not retry together.
#[derive(Debug, Clone)]
pub struct DirRetry {
    testnet: bool,
    step: Duration,
    /// When the current run of failures began.
    failing_since: Option<std::time::Instant>,
}

impl DirRetry {
    pub fn new(testnet: bool) -> Self {
        DirRetry { testnet, step: Self::initial(testnet), failing_since: None }
    }

    fn initial(testnet: bool) -> Duration {
        if testnet {
            DIR_RETRY_INITIAL_TESTNET
        } else {
            DIR_RETRY_INITIAL
        }
    }

    /// How long failures may last before the waits grow past [`max_dir_backoff`].
    pub fn patience(testnet: bool) -> Duration {
        Duration::from_secs(if testnet { 30 } else { 300 })
    }

    /// The longest wait between fetches.
    pub fn long_cap(testnet: bool) -> Duration {
        Duration::from_secs(if testnet { 60 } else { 600 })
    }

    /// A fetch succeeded: the next failure starts from the first step again.
    pub fn reset(&mut self) {
        self.step = Self::initial(self.testnet);
        self.failing_since = None;
    }

    /// A fetch failed at `now`: how long to wait before the next one. `jitter` in [0, 1] picks
    /// the wait between half and all of the step.
    pub fn next_delay(&mut self, now: std::time::Instant, jitter: f64) -> Duration {
        let since = *self.failing_since.get_or_insert(now);
        let cap = if now.saturating_duration_since(since) < Self::patience(self.testnet) {
            max_dir_backoff(self.testnet)
        } else {
            Self::long_cap(self.testnet)
        };
        let step = self.step.min(cap);
        self.step = (step * 2).min(Self::long_cap(self.testnet));
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// Keeps a verified consensus: loads the saved one at start if still usable, fetches at start
/// and again after fresh-until (through the guards once it has them: [`dir_fetch`]), keeps
/// using an expired one for the bounded grace while retrying (allium_directory::cache), and
/// stops if the network requires protocol versions we lack.
async fn directory_loop(cfg: ClientConfig, tx: watch::Sender<Option<Arc<NetDir>>>, state: Arc<ClientState>) -> Result<(), ClientError> {
    let bootstrap = &state.bootstrap;
    let mut retry = DirRetry::new(cfg.network.dangerous_testnet);
    let mut first = true;
    let ids: Vec<_> = cfg.network.authorities.iter().map(|a| a.identity).collect();
    let mut cache = allium_directory::ConsensusCache::load(&cfg.node.data_dir, &ids, cfg.network.dangerous_testnet, now());
    if let Some(d) = cache.usable(now()) {
        allium_net::metrics::METRICS.set_consensus(d.valid_after(), d.valid_until());
        tx.send_replace(Some(d));
        state.record_directory(ConsensusState::of(cache.status(now())), None);
    }
    loop {
        let t = now();
        let current = cache.usable(t);
        match dir_fetch::fetch(&cfg, &state.circuits, current.as_deref(), t).await {
            Ok((dir, source)) => {
                if let Err(e) = allium_directory::check_protocols(&allium_directory::implemented_protocols(), &dir) {
                    tracing::error!("{e}");
                    return Err(e.into());
                }
                if first {
                    bootstrap.advance(25, &format!("consensus fetched and verified ({} relays, {})", dir.relays().len(), source.describe()));
                    first = false;
                }
                allium_net::metrics::METRICS.set_consensus(dir.valid_after(), dir.valid_until());
                let at = allium_directory::schedule::refetch_at_ms(&dir.consensus().lifetime(), allium_directory::schedule::Fetcher::Client, rand::random());
                tx.send_replace(Some(cache.store(dir)));
                state.record_directory(ConsensusState::of(cache.status(now())), Some(source));
                retry.reset();
                tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()).max(1000))).await;
            }
            Err(e) => {
                let keep = cache.fetch_failed(&e, t);
                if keep.is_none() && tx.borrow().is_some() {
                    tx.send_replace(None);
                }
                state.record_directory(if keep.is_some() { ConsensusState::of(cache.status(t)) } else { ConsensusState::None }, None);
                let wait = retry.next_delay(std::time::Instant::now(), rand::random::<f64>());
                tracing::debug!("next consensus fetch in {} ms", wait.as_millis());
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The retry cap `dangerous_testnet` shortens keeps its real-network value without it.
    #[test]
    fn a_real_network_client_backs_off_up_to_30_s() {
        assert_eq!(max_dir_backoff(false), Duration::from_secs(30));
        assert_eq!(max_dir_backoff(true), Duration::from_secs(2));
    }

    /// The waits of [`DirRetry`] at the top (`jitter` 1) and bottom (0) of their range, as
    /// failures go on: doubling to the bootstrap cap, held there for the patience, then
    /// doubling to the long cap; a success starts over. Never every 2 s forever.
    #[test]
    fn directory_retries_back_off_exponentially_with_jitter_to_a_cap() {
        use std::time::Instant;
        let ms = Duration::from_millis;
        for testnet in [true, false] {
            let (cap, patience, long) = (max_dir_backoff(testnet), DirRetry::patience(testnet), DirRetry::long_cap(testnet));
            let t0 = Instant::now();
            let mut r = DirRetry::new(testnet);
            let mut t = t0;
            let mut waits = Vec::new();
            while t.duration_since(t0) < patience + long * 20 {
                let w = r.next_delay(t, 1.0);
                waits.push(w);
                t += w;
            }
            let first = if testnet { [ms(100), ms(200), ms(400), ms(800)] } else { [ms(250), ms(500), ms(1000), ms(2000)] };
            assert_eq!(&waits[..4], first, "testnet {testnet}");
            // Held at the bootstrap cap while within the patience.
            let mut elapsed = Duration::ZERO;
            for w in &waits {
                if elapsed < patience {
                    assert!(*w <= cap, "testnet {testnet}: {w:?} at {elapsed:?}");
                }
                elapsed += *w;
            }
            assert!(waits.iter().all(|w| *w <= long));
            assert_eq!(*waits.last().unwrap(), long, "testnet {testnet}: the waits reach the long cap");
            assert!(long >= cap * 20, "far apart once it lasts");
            // Jitter: between half and all of the step.
            let mut lo = DirRetry::new(testnet);
            assert_eq!(lo.next_delay(t0, 0.0), first[0] / 2);
            assert_eq!(lo.next_delay(t0, 0.5), first[1] * 3 / 4);
            // A success starts over.
            r.reset();
            assert_eq!(r.next_delay(t, 1.0), first[0]);
        }
    }
}
