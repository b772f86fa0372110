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

/// The file in a service's key directory that holds the last revision counter used, so a
/// restart continues above it even if the clock went back meanwhile.
pub const REVISION_FILE: &str = "descriptor_revision";

/// The last revision counter used (0 without a readable file: the clock then decides).
pub fn load_revision(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// Keeps `revision` for the next start (a failure is logged: the clock still gives growing
/// revisions unless it goes back).
pub fn save_revision(path: &std::path::Path, revision: u64, name: &str) {
    if let Err(e) = crate::state_file::write_atomic(path, &format!("{revision}\n")) {
        tracing::warn!("onion service {name}: cannot save the descriptor revision counter: {e}");
    }
}

/// The next revision counter: the unix time in milliseconds, or one more than the last one if
/// that is not larger. So it grows strictly within a run and, as long as the clock does not go
/// back, across restarts (nothing is stored).
pub fn next_revision(last: u64, now_ms: u64) -> u64 {
    now_ms.max(last.saturating_add(1))
}

/// The outcome of one publishing round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Uploads the HSDirs accepted (each period's descriptor counts at each of its HSDirs).
    pub stored: usize,
    pub failed: usize,
}

/// Builds the descriptors of `list` with `revision` for both publishing periods and uploads
/// each to its responsible HSDirs, concurrently. Failures are logged (no keys, no addresses).
pub async fn publish(state: &Arc<ClientState>, dir: &Arc<NetDir>, name: &str, identity: &SigningKey, list: &IntroList, clients: &[PublicKey], revision: u64) -> Published {
    let mut uploads = tokio::task::JoinSet::new();
    let mut out = Published::default();
    for (period, hsdirs) in placement(identity, dir) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_counter_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("allium-revision-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(REVISION_FILE);
        assert_eq!(load_revision(&f), 0, "no file yet");
        save_revision(&f, 1_700_000_000_123, "t");
        assert_eq!(load_revision(&f), 1_700_000_000_123);
        // After a restart with the clock an hour behind, the next revision is still higher.
        assert_eq!(next_revision(load_revision(&f), 1_700_000_000_123 - 3_600_000), 1_700_000_000_124);
        std::fs::write(&f, "garbage").unwrap();
        assert_eq!(load_revision(&f), 0, "an unreadable file falls back to the clock");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn revisions_grow_strictly() {
        assert_eq!(next_revision(0, 1_700_000_000_000), 1_700_000_000_000);
        assert_eq!(next_revision(1_700_000_000_000, 1_700_000_000_000), 1_700_000_000_001, "same millisecond");
        assert_eq!(next_revision(1_700_000_000_005, 1_699_999_999_000), 1_700_000_000_006, "clock stepped back");
        assert_eq!(next_revision(u64::MAX, 0), u64::MAX);
    }
}
