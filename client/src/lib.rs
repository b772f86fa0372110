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
//! - [`recovery`]: BEGIN and stall timeouts: giving up on a stream, retiring its circuit.
//! - [`dir_fetch`]: where the consensus comes from (guards, fallback directories, authorities).
//! - [`socks`]: the SOCKS4/4a/5 front end (with RESOLVE).
//! - [`http_proxy`]: the optional HTTP CONNECT front end.
//! - [`onion_service`]: the `[[onion_service]]` config and each service's keys.
//! - [`hs_service`]: hosting those services (introduction points, descriptors, rendezvous).
//! - [`hs_connect`]: connecting to onion services (`.allium` destinations), with the
//!   descriptor cache [`hs_desc_cache`] and the client-authorization keys [`onion_auth`].
//!
//! Not in this crate: link encryption and reactors (`allium-net`), documents (`allium-proto`),
//! consensus verification (`allium-directory`).

pub mod circmgr;
pub mod circuit;
pub mod config;
pub mod dir_fetch;
pub mod http_proxy;
pub mod onion_service;
pub mod guard;
pub mod hs_connect;
pub mod hs_desc_cache;
pub mod hs_dir;
pub mod hs_service;
pub mod onion_auth;
pub mod path;
pub mod recovery;
pub mod socks;
pub mod state_file;
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
}

/// The percentage from which the client can build circuits (SOCKS requests wait for it).
pub const BOOTSTRAP_CAN_BUILD: u8 = 50;

impl Bootstrap {
    pub fn new() -> Self {
        tracing::info!("bootstrap 0%: starting");
        Bootstrap { tx: watch::channel(0).0 }
    }

    /// Moves to `pct` (never back) and logs the phase.
    pub fn advance(&self, pct: u8, phase: &str) {
        if self.tx.send_if_modified(|p| (pct > *p).then(|| *p = pct).is_some()) {
            tracing::info!("bootstrap {pct}%: {phase}");
        }
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

    /// The isolation key of a stream from its credentials key, the listener it came in on and
    /// its destination host (used only with `client.isolate_destinations = true`).
    pub fn isolation(&self, credentials: &[u8], listener: Option<std::net::SocketAddr>, host: &str) -> circmgr::IsolationKey {
        circmgr::isolation_key(credentials, listener, self.isolate_destinations.then_some(host))
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs the client until a fatal error.
pub async fn run(cfg: ClientConfig, _keys: NodeKeys) -> Result<(), ClientError> {
    let listener = TcpListener::bind(cfg.client.socks_listen).await.map_err(|e| format!("cannot listen on client.socks_listen: {e}"))?;
    tracing::info!("SOCKS5 proxy listening on {}", cfg.client.socks_listen);
    let http_listener = match cfg.client.http_connect_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on client.http_connect_listen: {e}"))?;
            tracing::info!("HTTP CONNECT proxy listening on {addr}");
            Some(l)
        }
        None => None,
    };
    let (tx, rx) = watch::channel(None);
    let bootstrap = Arc::new(Bootstrap::new());
    let pool = ChannelPool::new(cfg.node.address, None);
    pool.set_idle_timeout(cfg.limits.link_idle_timeout());
    pool.set_mem_quota(allium_net::limits::memquota::MemQuota::new(cfg.limits.max_queued_bytes()));
    let circuits = circmgr::CircMgr::new(pool, Some(cfg.node.data_dir.clone()), bootstrap.clone());
    let app_conns = allium_net::limits::conn::ConnLimiter::new(cfg.limits.connections(), cfg.limits.max_connections_per_address);
    circuits.set_initial_build_timeout(cfg.initial_build_timeout());
    let onions = hs_connect::OnionConnector::new(onion_auth::load(&cfg.client.onion_auth)?);
    let state = Arc::new(ClientState { netdir: rx.clone(), circuits, bootstrap: bootstrap.clone(), isolate_destinations: cfg.client.isolate_destinations, onions, app_conns });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(directory_loop(cfg.clone(), tx, state.clone()));
    let maint = state.clone();
    tasks.spawn(async move {
        maint.circuits.maintain(rx).await;
        Ok(())
    });
    if let Some(l) = http_listener {
        tasks.spawn(http_proxy::serve(l, state.clone()));
    }
    hs_service::spawn_all(&cfg.onion_services, &cfg.node.data_dir, &state, &mut tasks)?;
    tasks.spawn(socks::serve(listener, state));
    match tasks.join_next().await {
        Some(Ok(r)) => r.and(Err("a client task ended".into())),
        Some(Err(e)) => Err(format!("a client task panicked: {e}").into()),
        None => Err("no client tasks".into()),
    }
}

/// Directory retries back off up to 30 s (2 s on a test network, where the directory comes up
/// with it).
fn max_dir_backoff(testnet: bool) -> Duration {
    Duration::from_secs(if testnet { 2 } else { 30 })
}

/// Keeps a verified consensus: loads the saved one at start if still usable, fetches at start
/// and again after fresh-until (through the guards once it has them: [`dir_fetch`]), keeps
/// using an expired one for the bounded grace while retrying (allium_directory::cache), and
/// stops if the network requires protocol versions we lack.
async fn directory_loop(cfg: ClientConfig, tx: watch::Sender<Option<Arc<NetDir>>>, state: Arc<ClientState>) -> Result<(), ClientError> {
    let bootstrap = &state.bootstrap;
    let max_backoff = max_dir_backoff(cfg.network.dangerous_testnet);
    let mut backoff = Duration::from_millis(250);
    let mut first = true;
    let ids: Vec<_> = cfg.network.authorities.iter().map(|a| a.identity).collect();
    let mut cache = allium_directory::ConsensusCache::load(&cfg.node.data_dir, &ids, cfg.network.dangerous_testnet, now());
    if let Some(d) = cache.usable(now()) {
        tx.send_replace(Some(d));
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
                let refetch = dir.fresh_until().saturating_sub(t).max(1) + rand::random::<u64>() % 3;
                tx.send_replace(Some(cache.store(dir)));
                backoff = Duration::from_millis(250);
                tokio::time::sleep(Duration::from_secs(refetch)).await;
            }
            Err(e) => {
                let keep = cache.fetch_failed(&e, t);
                if keep.is_none() && tx.borrow().is_some() {
                    tx.send_replace(None);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
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
}
