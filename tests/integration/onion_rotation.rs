//! Onion-key rotation (issue 4, point 6): a relay replaces its onion key on schedule and still
//! accepts the previous one for a grace period. The relay runs in this process (real TCP on
//! loopback, real links and handshakes) with an 8-second key lifetime; the test watches its key
//! files to see each rotation happen, and builds circuits naming the old key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use allium_client::circuit::{self, CircError};
use allium_net::keys::OnionKeys;
use allium_net::pool::ChannelPool;
use allium_proto::cell::DestroyReason;
use allium_proto::doc::ConsensusRelay;

const LIFETIME_SECS: u64 = 8;

/// Starts a relay with a short onion-key lifetime; returns its entry (with the first onion key)
/// and its data directory.
async fn start_relay() -> (ConsensusRelay, PathBuf) {
    crate::support::inproc::start_relay("rot", &format!("onion_key_lifetime_secs = {LIFETIME_SECS}")).await
}

/// Reads the relay's key files each time one is replaced (atomically) until `done` holds for
/// them.
async fn wait_for_keys(dir: &Path, what: &str, done: impl Fn(&OnionKeys) -> bool + Send + 'static) -> OnionKeys {
    let (dir, what) = (dir.to_path_buf(), what.to_string());
    tokio::task::spawn_blocking(move || {
        let files = [allium_net::keys::ONION_FILE, allium_net::keys::PREVIOUS_ONION_FILE];
        let found = crate::support::events::wait_files(&dir, &files, Duration::from_secs(10 * LIFETIME_SECS), || OnionKeys::load(&dir).unwrap().filter(|k| done(k)));
        found.unwrap_or_else(|e| panic!("{e:?} waiting until {what}"))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_onion_key_works_during_grace_then_is_refused() {
    let (old_entry, dir) = start_relay().await;
    let old_key = old_entry.onion_key;
    let pool = ChannelPool::new(IpAddr::from([127, 0, 0, 1]), None);
    assert!(circuit::build(&pool, &[&old_entry]).await.is_ok(), "a circuit with the first key should build");

    // First rotation: a new current key, the old one kept as the previous.
    let k = wait_for_keys(&dir, "the relay rotated its onion key", move |k| k.current_public() != old_key).await;
    assert_eq!(k.previous_public(), Some(old_key), "the replaced key must be kept for the grace");
    let mut new_entry = old_entry.clone();
    new_entry.onion_key = k.current_public();

    // During the grace: a client with the old descriptor still builds, and so does one with the new.
    let r = circuit::build(&pool, &[&old_entry]).await;
    assert!(OnionKeys::load(&dir).unwrap().unwrap().previous_public() == Some(old_key), "the test was too slow: grace already over");
    assert!(r.is_ok(), "a circuit using the previous onion key must build during the grace: {:?}", r.err());
    let r = circuit::build(&pool, &[&new_entry]).await;
    assert!(r.is_ok(), "a circuit using the new onion key must build: {:?}", r.err());

    // After the grace (here: the next rotation, the grace being the lifetime) the old key is gone
    // from disk; the relay swaps its in-memory keys right after writing the files: wait for
    // that on its status, then it refuses.
    // (A rotation writes the previous key's file, then the current one's: between the two the
    // files say "new key, previous = new key", which the relay never holds. The second
    // rotation is done once the current key is neither of the first two.)
    let first = new_entry.onion_key;
    let k = wait_for_keys(&dir, "the old key's grace ended", move |k| k.previous_public() != Some(old_key) && ![old_key, first].contains(&k.current_public())).await;
    let previous = k.previous_public().map_or_else(|| "none".to_string(), hex::encode);
    let data = dir.clone();
    tokio::task::spawn_blocking(move || {
        let limit = Duration::from_secs(10 * LIFETIME_SECS);
        for cond in [format!("onion_key~{}", hex::encode(k.current_public())), format!("previous_onion_key~{previous}")] {
            if let Err(e) = crate::support::try_wait_status(&data, &cond, limit) {
                panic!("the relay's keys are not those of its files ({e}); its status: {}", crate::support::status_json(&data));
            }
        }
    })
    .await
    .unwrap();
    match circuit::build(&pool, &[&old_entry]).await {
        Err(CircError::Destroyed(DestroyReason::Protocol)) => {}
        other => panic!("after the grace a CREATE naming the old key must get DESTROY(PROTOCOL), got {:?}", other.err()),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
