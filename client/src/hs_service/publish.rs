//! A service's descriptors: built for the current and the next time period and uploaded to
//! every responsible HSDir (docs/PROTOCOL.md, "Onion services" → "Publishing").

use std::sync::Arc;

use allium_directory::NetDir;
use allium_proto::hs::blind::BlindedKey;
use allium_proto::hs::period::publish_periods;
use allium_proto::hs::{make_descriptor, IntroList, TimePeriod};
use ed25519_dalek::SigningKey;
use x25519_dalek::PublicKey;

use crate::hs_dir;
use crate::ClientState;

/// The `lifetime` of the descriptors a service uploads (an HSDir keeps one that long).
pub const DESCRIPTOR_LIFETIME_SECS: u64 = 3 * 3600;

/// Where the descriptors go under a consensus: per publishing period, the responsible HSDirs'
/// identities. A change means uploading again.
pub type Placement = Vec<(TimePeriod, Vec<[u8; 32]>)>;

/// The placement of `identity`'s descriptors under `dir`.
pub fn placement(identity: &SigningKey, dir: &NetDir) -> Placement {
    publish_periods(dir.valid_after(), dir.hs_period_secs())
        .into_iter()
        .map(|p| {
            let blinded = BlindedKey::derive(identity, p).public();
            (p, hs_dir::responsible_hsdirs(dir, &blinded, p).iter().map(|r| r.identity.0).collect())
        })
        .collect()
}

/// The file in a service's key directory that holds the last revision counters used
/// ([`super::revision::Revisions`]), so a restart continues above them even if the clock went
/// back meanwhile.
pub const REVISION_FILE: &str = "descriptor_revision";

/// The outcome of one publishing round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Uploads the HSDirs accepted (each period's descriptor counts at each of its HSDirs).
    pub stored: usize,
    pub failed: usize,
}

/// Builds the descriptors of `list` for both publishing periods, each with its own revision
/// counter from `revisions`, and uploads each to its responsible HSDirs, concurrently. Failures
/// are logged (no keys, no addresses).
pub async fn publish(state: &Arc<ClientState>, dir: &Arc<NetDir>, name: &str, identity: &SigningKey, list: &IntroList, clients: &[PublicKey], revisions: &[(TimePeriod, u64)]) -> Published {
    let mut uploads = tokio::task::JoinSet::new();
    let mut out = Published::default();
    for (period, hsdirs) in placement(identity, dir) {
        let Some(&(_, revision)) = revisions.iter().find(|(p, _)| *p == period) else { continue };
        let text = match make_descriptor(identity, period, revision, DESCRIPTOR_LIFETIME_SECS, list, clients, &mut rand::rngs::OsRng) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tracing::warn!("onion service {name}: cannot make a descriptor: {e}");
                out.failed += hsdirs.len();
                continue;
            }
        };
        for id in hsdirs {
            let Some(hsdir) = dir.by_id(&allium_proto::ids::RelayId(id)).cloned() else { continue };
            let (state, dir, text) = (state.clone(), dir.clone(), text.clone());
            uploads.spawn(async move { hs_dir::upload(&state.circuits, &dir, &hsdir, &text).await });
        }
    }
    while let Some(r) = uploads.join_next().await {
        match r {
            Ok(Ok(_)) => out.stored += 1,
            Ok(Err(e)) => {
                tracing::info!("onion service {name}: a descriptor upload failed: {e}");
                out.failed += 1;
            }
            Err(_) => out.failed += 1,
        }
    }
    out
}
