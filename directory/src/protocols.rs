//! Subprotocol versions: what this build implements, and the check every node runs against
//! the consensus's required and recommended versions.

use allium_proto::doc::Protocols;

use crate::netdir::NetDir;

/// The subprotocol versions this build of Allium implements (relays advertise them; clients
/// speak them).
pub fn implemented_protocols() -> Protocols {
    Protocols::new().with("Link", 1, 1).with("Ntor", 1, 1).with("Relay", 1, 1)
}

/// This node lacks subprotocol versions the consensus requires: it must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this node does not support subprotocol versions the network requires ({missing}); it has {ours}. \
     Upgrade Allium: stopping"
)]
pub struct MissingProtocols {
    pub missing: Protocols,
    pub ours: Protocols,
}

/// Checks `ours` against the consensus: `Err` when a required version is missing (the caller
/// logs the error and stops); `Ok(Some(missing))` when only recommended versions are missing
/// (logged here as a warning); `Ok(None)` when all is well.
pub fn check_protocols(ours: &Protocols, dir: &NetDir) -> Result<Option<Protocols>, MissingProtocols> {
    let meta = dir.consensus().meta();
    let missing = ours.missing(&meta.required_protocols);
    if !missing.is_empty() {
        return Err(MissingProtocols { missing, ours: ours.clone() });
    }
    let rec = ours.missing(&meta.recommended_protocols);
    if rec.is_empty() {
        Ok(None)
    } else {
        tracing::warn!("the network recommends subprotocol versions this node lacks ({rec}); consider upgrading Allium");
        Ok(Some(rec))
    }
}
