//! The relay's descriptor: built from config and keys, signed, uploaded to every authority at
//! start and then periodically; and a watcher that reports whether the consensus lists us.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allium_proto::doc::{Protocols, RelayDescriptor};

use crate::{RelayConfig, RelayCtx, RelayError};

/// Subprotocol versions this relay speaks (advertised in its descriptor).
pub fn our_protocols() -> Protocols {
    Protocols::new().with("Link", 1, 1).with("Relay", 1, 1).with("Ntor", 1, 1)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How often the descriptor is re-uploaded: well within the authorities' descriptor lifetime
/// (`allium_directory::schedule::descriptor_max_age`: at least 30 s, three voting intervals).
fn republish_every(testnet: bool) -> Duration {
    Duration::from_secs(if testnet { 10 } else { allium_directory::schedule::republish_period_secs(3600) })
}

/// How long after a failed consensus fetch a relay tries again.
fn fetch_retry(testnet: bool) -> Duration {
    Duration::from_secs(if testnet { 1 } else { 60 })
}

/// Builds this relay's signed descriptor.
pub fn build_descriptor(cfg: &RelayConfig, ctx: &RelayCtx, published: u64) -> Result<String, RelayError> {
    let d = RelayDescriptor {
        nickname: cfg.node.nickname.clone(),
        identity: ctx.id,
        onion_key: ctx.onion_keys().current_public(),
        link_key: ctx.keys.link_public(),
        link_cert: allium_proto::link::certify_link_key(&ctx.keys.identity, &ctx.keys.link_public()),
        address: std::net::SocketAddr::new(cfg.node.address, cfg.relay.or_port),
        policy: ctx.exit.policy.clone(),
        family: cfg.family_ids()?,
        bandwidth: ctx.observed.lock().unwrap_or_else(|e| e.into_inner()).reported(cfg.relay.bandwidth),
        protocols: our_protocols(),
        published,
    };
    Ok(d.encode_signed(&ctx.keys.identity))
}

/// Uploads the descriptor now and then periodically, and at once when the onion key rotates
/// ([`RelayCtx::republish`]); retries quickly until one authority took it.
pub async fn publish_loop(cfg: RelayConfig, ctx: Arc<RelayCtx>) -> Result<(), RelayError> {
    let mut announced = false;
    loop {
        let text = build_descriptor(&cfg, &ctx, now())?;
        let accepted = allium_directory::publish::publish_descriptor(&cfg.network, cfg.node.address, &text).await;
        let wait = if accepted == 0 {
            tracing::warn!("no authority accepted our descriptor yet; retrying");
            Duration::from_millis(500)
        } else {
            if !announced {
                tracing::info!("descriptor accepted by {accepted} of {} authorities", cfg.network.authorities.len());
                announced = true;
            }
            republish_every(cfg.network.dangerous_testnet)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.republish.notified() => tracing::info!("republishing the descriptor: the onion key rotated"),
        }
    }
}

/// Fetches the consensus from the authorities after each `fresh-until` (a relay is public, so
/// it may), keeps it in the directory cache it serves to clients, stops if the network requires
/// protocol versions we lack, and says once whether the consensus lists this relay.
pub async fn consensus_watch(cfg: RelayConfig, ctx: Arc<RelayCtx>) -> Result<(), RelayError> {
    let mut listed = false;
    loop {
        let t = now();
        let previous = ctx.dir.current();
        let wait = match allium_directory::fetch::fetch_consensus(&cfg.network, cfg.node.address, t, previous.as_deref()).await {
            Ok(dir) => {
                // A relay lacking a version the network requires stops, saying so.
                if let Err(e) = allium_directory::check_protocols(&our_protocols(), &dir) {
                    tracing::error!("{e}");
                    return Err(e.into());
                }
                let dir = ctx.dir.store(dir);
                let now_listed = dir.consensus().relay(&ctx.id).is_some();
                if now_listed != listed {
                    tracing::info!("the consensus {} this relay", if now_listed { "lists" } else { "no longer lists" });
                    listed = now_listed;
                }
                // Just after the next consensus is due; clients ask caches a little later.
                Duration::from_millis(dir.fresh_until().saturating_sub(t).max(1) * 1000 + rand::random::<u64>() % 1000)
            }
            Err(e) => {
                tracing::debug!("no consensus yet: {e}");
                fetch_retry(cfg.network.dangerous_testnet)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directory timings `dangerous_testnet` shortens (docs/PROTOCOL.md, "Test networks")
    /// keep their real-network values without it.
    #[test]
    fn a_real_network_relay_keeps_real_directory_timings() {
        assert_eq!(fetch_retry(false), Duration::from_secs(60));
        assert_eq!(fetch_retry(true), Duration::from_secs(1));
        assert!(republish_every(false) >= Duration::from_secs(600), "{:?}", republish_every(false));
        assert_eq!(republish_every(true), Duration::from_secs(10));
    }
}
