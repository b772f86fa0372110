//! The bandwidth scanner an authority runs beside itself (`authority.bandwidth_scan`): the
//! measuring is `allium_client::bwscan`; this is the glue. It measures the relays of the
//! consensus the authorities publish (fetched like a relay fetches it) and saves each result in
//! the authority's data directory, where the authority reads them before each vote
//! (`allium_directory::measured`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_client::bwscan::{self, Turns};
use allium_directory::config::AuthorityConfig;
use allium_directory::measured::Measurements;
use allium_directory::NetDir;
use allium_proto::ids::RelayId;

/// Windows in which scanners share the relays out (docs/PROTOCOL.md, "Measured bandwidth").
const WINDOW_MS: u64 = 60_000;
const TESTNET_WINDOW_MS: u64 = 10_000;
/// Pause between two relays.
const PAUSE: Duration = Duration::from_secs(1);
const TESTNET_PAUSE: Duration = Duration::from_millis(200);

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs the scanner of the authority `me` configured by `cfg`, for as long as the process.
pub async fn scan(cfg: AuthorityConfig, me: RelayId) {
    let dir = cfg.node.data_dir.clone();
    let measured = Arc::new(Mutex::new(Measurements::load(&dir)));
    let held: Arc<Mutex<Option<NetDir>>> = Arc::default();
    let (net, bind, testnet) = (cfg.network.clone(), cfg.node.address, cfg.network.dangerous_testnet);
    let next_dir = || {
        let (held, net) = (held.clone(), net.clone());
        async move {
            let current = held.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if current.as_ref().is_some_and(|nd| nd.fresh_until() > unix_now()) {
                return Some(current);
            }
            match allium_directory::fetch_consensus(&net, bind, unix_now(), current.as_ref()).await {
                Ok(nd) => {
                    *held.lock().unwrap_or_else(|e| e.into_inner()) = Some(nd.clone());
                    Some(Some(nd))
                }
                Err(_) => Some(current.filter(|nd| nd.valid_until() > unix_now())),
            }
        }
    };
    let saved = measured.clone();
    let record = move |id, bw| {
        let text = {
            let mut m = saved.lock().unwrap_or_else(|e| e.into_inner());
            m.record(id, bw, unix_now());
            m.to_text()
        };
        if let Err(e) = allium_directory::cache::save(&dir, allium_directory::measured::MEASUREMENTS_FILE, &text) {
            tracing::warn!("bandwidth scanner: cannot save the measurements: {e}");
        }
    };
    let measured_at = move |id: &RelayId| measured.lock().unwrap_or_else(|e| e.into_inner()).measured_at(id);
    // Every authority of the network is counted as a scanner (all of them should scan).
    let mut ids: Vec<RelayId> = cfg.network.authorities.iter().map(|a| a.identity).collect();
    ids.sort();
    let index = ids.iter().position(|id| *id == me).unwrap_or(0) as u64;
    let turns = Turns { index, scanners: ids.len() as u64, window_ms: if testnet { TESTNET_WINDOW_MS } else { WINDOW_MS } };
    tracing::info!("bandwidth scanner started: scanner {} of {}", index + 1, ids.len());
    bwscan::run(allium_net::pool::ChannelPool::new(bind, None), turns, next_dir, measured_at, record, if testnet { TESTNET_PAUSE } else { PAUSE }).await;
}
