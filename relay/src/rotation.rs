//! Onion-key rotation: a task that applies the schedule ([`allium_net::keys::RotationPolicy`]) to
//! the relay's onion keys and asks for an immediate republish when the current key changes.
//!
//! The keys live behind a `std::sync::RwLock` in [`crate::RelayCtx`]: CREATE handling takes a
//! read lock just long enough to run the (synchronous) ntor server side; this task does its file
//! work on a copy and then swaps the copy in under a short write lock.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use allium_net::keys::{unix_now, OnionKeys, RotationPolicy};

use crate::{RelayCtx, RelayError};

/// The longest sleep between checks, so a stepped or suspended clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Applies the schedule once at `now`: updates the shared keys and, after a rotation, notifies
/// the publisher. Returns whether the keys changed.
pub fn apply_once(ctx: &RelayCtx, dir: &std::path::Path, policy: &RotationPolicy, now: u64) -> Result<bool, RelayError> {
    let mut next = ctx.onion_keys().clone();
    let d = next.apply_schedule(dir, policy, now)?;
    if !d.rotate && !d.drop_previous {
        return Ok(false);
    }
    *ctx.onion.write().unwrap_or_else(|e| e.into_inner()) = next;
    if d.rotate {
        tracing::info!("rotated the onion key; the previous one is accepted for {} s more", policy.grace);
        ctx.republish.notify_one();
    } else {
        tracing::info!("the previous onion key's grace is over; it is deleted");
    }
    Ok(true)
}

/// Checks the schedule whenever it next has something to do (at most an hour apart).
pub async fn rotation_loop(ctx: Arc<RelayCtx>, dir: PathBuf, policy: RotationPolicy) -> Result<(), RelayError> {
    loop {
        apply_once(&ctx, &dir, &policy, unix_now())?;
        let next = ctx.onion_keys().next_event(&policy);
        // Whole seconds: never wake before the event's second has started, never spin.
        let wait = Duration::from_secs(next.saturating_sub(unix_now())).max(Duration::from_millis(250)).min(MAX_SLEEP);
        tokio::time::sleep(wait).await;
    }
}

impl RelayCtx {
    /// A snapshot of the onion keys (clone it before any `.await`).
    pub fn onion_keys(&self) -> std::sync::RwLockReadGuard<'_, OnionKeys> {
        self.onion.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use crate::RelayConfig;
    use allium_net::keys::RotationPolicy;

    fn cfg(testnet: bool, lifetime: Option<u64>) -> RelayConfig {
        let extra = lifetime.map(|l| format!("onion_key_lifetime_secs = {l}\n")).unwrap_or_default();
        let text = format!(
            "[node]\nnickname = \"r\"\ndata_dir = \"/tmp/x\"\naddress = \"{addr}\"\n[network]\ndangerous_testnet = {testnet}\n\
             [[network.authorities]]\nname = \"a\"\nidentity = \"{id}\"\naddress = \"{addr}:9030\"\n[relay]\nor_port = 9001\n{extra}",
            addr = if testnet { "127.0.0.1" } else { "192.0.2.10" },
            id = "ab".repeat(32),
        );
        allium_net::config::parse_toml(&text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn lifetime_config_has_a_default_and_a_minimum_outside_testnet() {
        assert_eq!(cfg(false, None).onion_rotation().unwrap(), RotationPolicy::default());
        assert_eq!(cfg(false, Some(86_400)).onion_rotation().unwrap(), RotationPolicy { lifetime: 86_400, grace: 86_400 });
        let e = cfg(false, Some(3600)).validate().unwrap_err().to_string();
        assert!(e.contains("relay.onion_key_lifetime_secs") && e.contains("86400"), "{e}");
        assert_eq!(cfg(true, Some(5)).onion_rotation().unwrap(), RotationPolicy { lifetime: 5, grace: 5 });
        assert!(cfg(true, Some(0)).validate().is_err());
    }
}
