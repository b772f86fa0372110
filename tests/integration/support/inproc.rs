//! Relays run inside the test process (real TCP on loopback, real links and handshakes), for
//! tests that need to reach one relay directly rather than through a whole test network.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use allium_net::limits::memquota::MemQuota;
use allium_proto::doc::{ConsensusRelay, Protocols, RelayFlags};
use allium_proto::policy::ExitPolicy;
use allium_relay::{InertRelay, RelayConfig};

/// Starts a non-exit relay on 127.0.0.1 whose `[relay]` section also holds `relay_extra`
/// (TOML lines). Returns its consensus entry (as a client would see it) and its data directory.
pub async fn start_relay(nickname: &str, relay_extra: &str) -> (ConsensusRelay, PathBuf) {
    let (entry, dir, _) = start_relay_with_quota(nickname, relay_extra).await;
    (entry, dir)
}

/// [`start_relay`], also returning the memory budget the relay's queued cells are charged to.
pub async fn start_relay_with_quota(nickname: &str, relay_extra: &str) -> (ConsensusRelay, PathBuf, Arc<MemQuota>) {
    // Relays in this process note what tests read back (allium_relay::test_hooks).
    allium_relay::test_hooks::record();
    let dir = super::fresh_dir(nickname);
    let keys = allium_net::keys::load_or_create(&dir).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = format!(
        "[node]\nnickname = \"{nickname}\"\ndata_dir = {dir:?}\naddress = \"127.0.0.1\"\n\
         [network]\ndangerous_testnet = true\n[[network.authorities]]\nname = \"none\"\n\
         identity = \"{id}\"\naddress = \"127.0.0.1:9\"\n[relay]\nor_port = {port}\n{relay_extra}\n",
        dir = dir.display().to_string(),
        id = keys.relay_id().fingerprint(),
    );
    let cfg: RelayConfig = allium_net::config::parse_toml(&cfg, Path::new("test.toml")).unwrap();
    cfg.validate().unwrap();
    let entry = ConsensusRelay {
        nickname: nickname.to_string(),
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
        flags: RelayFlags::RUNNING | RelayFlags::VALID,
        weight: 1,
    };
    let relay = InertRelay::new(cfg, keys).unwrap();
    let quota = relay.mem_quota();
    tokio::spawn(relay.run());
    // Ready once it answers on its control socket, which it opens after binding the OR port.
    let (data, condition) = (dir.clone(), format!("nickname~{nickname}"));
    let ready = tokio::task::spawn_blocking(move || super::try_wait_status(&data, &condition, Duration::from_secs(30))).await.unwrap();
    ready.unwrap_or_else(|e| panic!("relay {nickname} did not start: {e}"));
    (entry, dir, quota)
}

/// Starts a client in this process with SOCKS and HTTP CONNECT listeners on 127.0.0.1 and
/// `extra` (TOML sections) in its config. Its one authority is 127.0.0.1:9, where nothing
/// answers: it never bootstraps, for tests of its front ends' own limits. Returns the SOCKS and
/// HTTP CONNECT addresses and its data directory once it listens.
pub async fn start_client(nickname: &str, extra: &str) -> (SocketAddr, SocketAddr, PathBuf) {
    let dir = super::fresh_dir(nickname);
    let keys = allium_net::keys::load_or_create(&dir).unwrap();
    let free = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (socks, http) = (free(), free());
    let cfg = format!(
        "[node]\nnickname = \"{nickname}\"\ndata_dir = {dir:?}\naddress = \"127.0.0.1\"\n\
         [network]\ndangerous_testnet = true\n[[network.authorities]]\nname = \"none\"\n\
         identity = \"{id}\"\naddress = \"127.0.0.1:9\"\n[client]\nsocks_listen = \"{socks}\"\n\
         http_connect_listen = \"{http}\"\n{extra}\n",
        dir = dir.display().to_string(),
        id = keys.relay_id().fingerprint(),
    );
    let cfg: allium_client::ClientConfig = allium_net::config::parse_toml(&cfg, Path::new("test.toml")).unwrap();
    cfg.validate().unwrap();
    tokio::spawn(allium_client::run(cfg, keys));
    // It opens its control socket after binding its listeners.
    let (data, condition) = (dir.clone(), "role~client".to_string());
    let ready = tokio::task::spawn_blocking(move || super::try_wait_status(&data, &condition, Duration::from_secs(30))).await.unwrap();
    ready.unwrap_or_else(|e| panic!("client {nickname} did not start: {e}"));
    (socks, http, dir)
}
