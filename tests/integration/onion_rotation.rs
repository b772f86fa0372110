//! Onion-key rotation (issue 4, point 6): a relay replaces its onion key on schedule and still
//! accepts the previous one for a grace period. The relay runs in this process (real TCP on
//! loopback, real links and handshakes) with an 8-second key lifetime; the test watches its key
//! files to see each rotation happen, and builds circuits naming the old key.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use allium_client::circuit::{self, CircError};
use allium_net::keys::OnionKeys;
use allium_net::pool::ChannelPool;
use allium_proto::cell::DestroyReason;
use allium_proto::doc::{ConsensusRelay, Protocols};
use allium_proto::policy::ExitPolicy;
use allium_relay::{InertRelay, RelayConfig};

const LIFETIME_SECS: u64 = 8;

/// Starts a relay with a short onion-key lifetime; returns its entry (with the first onion key)
/// and its data directory.
async fn start_relay() -> (ConsensusRelay, PathBuf) {
    let dir = crate::support::fresh_dir("rotation");
    let keys = allium_net::keys::load_or_create(&dir).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = format!(
        "[node]\nnickname = \"rot\"\ndata_dir = {dir:?}\naddress = \"127.0.0.1\"\n\
         [network]\ndangerous_testnet = true\n[[network.authorities]]\nname = \"none\"\n\
         identity = \"{id}\"\naddress = \"127.0.0.1:9\"\n[relay]\nor_port = {port}\n\
         onion_key_lifetime_secs = {LIFETIME_SECS}\n",
        dir = dir.display().to_string(),
        id = keys.relay_id().fingerprint(),
    );
    let cfg: RelayConfig = allium_net::config::parse_toml(&cfg, Path::new("test.toml")).unwrap();
    cfg.validate().unwrap();
    let entry = ConsensusRelay {
        nickname: "rot".into(),
        identity: keys.relay_id(),
        onion_key: keys.onion_public(),
        link_key: keys.link_public(),
        link_cert: allium_proto::link::certify_link_key(&keys.identity, &keys.link_public()),
        address: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port),
        policy: ExitPolicy::reject_all(),
        family: vec![],
        bandwidth: 1,
        protocols: Protocols::new(),
        published: 0,
        descriptor_digest: [0; 32],
        flags: allium_proto::doc::RelayFlags::RUNNING | allium_proto::doc::RelayFlags::VALID,
        weight: 1,
    };
    tokio::spawn(InertRelay::new(cfg, keys).unwrap().run());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(entry.address).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the relay did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (entry, dir)
}

/// Polls the relay's key files until `done` holds for them (they are replaced atomically).
async fn wait_for_keys(dir: &Path, what: &str, done: impl Fn(&OnionKeys) -> bool) -> OnionKeys {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10 * LIFETIME_SECS);
    loop {
        if let Some(k) = OnionKeys::load(dir).unwrap() {
            if done(&k) {
                return k;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_onion_key_works_during_grace_then_is_refused() {
    let (old_entry, dir) = start_relay().await;
    let old_key = old_entry.onion_key;
    let pool = ChannelPool::new(IpAddr::from([127, 0, 0, 1]), None);
    assert!(circuit::build(&pool, &[&old_entry]).await.is_ok(), "a circuit with the first key should build");

    // First rotation: a new current key, the old one kept as the previous.
    let k = wait_for_keys(&dir, "the relay rotated its onion key", |k| k.current_public() != old_key).await;
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
    // from disk; the relay swaps its in-memory keys right after writing the files, so allow it a
    // moment to refuse.
    wait_for_keys(&dir, "the old key's grace ended", |k| k.previous_public() != Some(old_key) && k.current_public() != old_key).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match circuit::build(&pool, &[&old_entry]).await {
            Err(CircError::Destroyed(DestroyReason::Protocol)) => break,
            Ok(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("after the grace a CREATE naming the old key must get DESTROY(PROTOCOL), got {:?}", other.err()),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
