//! Allium client: fetches and verifies the consensus, chooses paths, builds circuits and offers
//! a SOCKS5 proxy. Host names are resolved by the exit, never locally.
//!
//! Layout:
//! - [`config`]: the client's TOML config.
//! - [`path`]: path choice.
//! - [`circuit`]: building a circuit and its owner task (streams, crypto).
//! - [`circmgr`]: which circuit a new stream uses.
//! - [`socks`]: the SOCKS5 front end.
//!
//! Not in this crate: link encryption and reactors (`allium-net`), documents (`allium-proto`),
//! consensus verification (`allium-directory`).

pub mod circmgr;
pub mod circuit;
pub mod config;
pub mod path;
pub mod socks;

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

/// What the client's tasks share.
pub struct ClientState {
    netdir: watch::Receiver<Option<Arc<NetDir>>>,
    pub circuits: circmgr::CircMgr,
}

impl ClientState {
    /// The current consensus, waiting up to `max` for a first one.
    pub async fn wait_netdir(&self, max: Duration) -> Option<Arc<NetDir>> {
        let mut rx = self.netdir.clone();
        let r = tokio::time::timeout(max, rx.wait_for(|d| d.is_some())).await;
        match r {
            Ok(Ok(d)) => d.clone(),
            _ => None,
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs the client until a fatal error.
pub async fn run(cfg: ClientConfig, _keys: NodeKeys) -> Result<(), ClientError> {
    let listener = TcpListener::bind(cfg.client.socks_listen).await.map_err(|e| format!("cannot listen on client.socks_listen: {e}"))?;
    tracing::info!("SOCKS5 proxy listening on {}", cfg.client.socks_listen);
    let (tx, rx) = watch::channel(None);
    let state = Arc::new(ClientState { netdir: rx, circuits: circmgr::CircMgr::new(ChannelPool::new(cfg.node.address, None)) });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(directory_loop(cfg.clone(), tx));
    tasks.spawn(socks::serve(listener, state));
    match tasks.join_next().await {
        Some(Ok(r)) => r.and(Err("a client task ended".into())),
        Some(Err(e)) => Err(format!("a client task panicked: {e}").into()),
        None => Err("no client tasks".into()),
    }
}

/// Keeps a verified consensus: fetches at start, again after fresh-until, drops it at
/// valid-until.
async fn directory_loop(cfg: ClientConfig, tx: watch::Sender<Option<Arc<NetDir>>>) -> Result<(), ClientError> {
    let mut backoff = Duration::from_millis(250);
    let mut first = true;
    loop {
        let t = now();
        match allium_directory::fetch::fetch_consensus(&cfg.network, cfg.node.address, t).await {
            Ok(dir) => {
                if first {
                    tracing::info!("bootstrapped: consensus with {} relays", dir.relays().len());
                    first = false;
                }
                let refetch = dir.fresh_until().saturating_sub(t).max(1) + rand::random::<u64>() % 3;
                tx.send_replace(Some(Arc::new(dir)));
                backoff = Duration::from_millis(250);
                tokio::time::sleep(Duration::from_secs(refetch)).await;
            }
            Err(e) => {
                let expired = tx.borrow().as_ref().is_some_and(|d| d.valid_until() < t);
                if expired {
                    tracing::warn!("consensus expired and no new one could be fetched: {e}");
                    tx.send_replace(None);
                } else {
                    tracing::debug!("consensus fetch failed: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
