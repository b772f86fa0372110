//! THREATS A16: the hop budget bounds circuit length. Relays run in this process (real TCP on
//! loopback, real links and handshakes); the client extends through them again and again.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use allium_client::circuit::{self, CircError};
use allium_net::pool::ChannelPool;
use allium_proto::cell::{DestroyReason, MAX_HOP_BUDGET};
use allium_proto::doc::{ConsensusRelay, Protocols};
use allium_proto::policy::ExitPolicy;
use allium_relay::{InertRelay, RelayConfig};

/// Starts a relay on 127.0.0.1 in this process and returns how to reach it.
async fn start_relay(i: usize) -> ConsensusRelay {
    let dir = crate::support::fresh_dir(&format!("relay{i}"));
    let keys = allium_net::keys::load_or_create(&dir).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = format!(
        "[node]\nnickname = \"hop{i}\"\ndata_dir = {dir:?}\naddress = \"127.0.0.1\"\n\
         [network]\ndangerous_testnet = true\n[[network.authorities]]\nname = \"none\"\n\
         identity = \"{id}\"\naddress = \"127.0.0.1:9\"\n[relay]\nor_port = {port}\n",
        dir = dir.display().to_string(),
        id = keys.relay_id().fingerprint(),
    );
    let cfg: RelayConfig = allium_net::config::parse_toml(&cfg, Path::new("test.toml")).unwrap();
    let entry = ConsensusRelay {
        nickname: format!("hop{i}"),
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
    // Wait until it listens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(entry.address).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "relay {i} did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    entry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a16_hop_budget_bounds_circuit_length() {
    let relays = [start_relay(1).await, start_relay(2).await, start_relay(3).await];
    let pool = ChannelPool::new(IpAddr::from([127, 0, 0, 1]), None);
    // A → B → C → A → …: never extending to itself or straight back.
    let path = |n: usize| (0..n).map(|i| &relays[i % 3]).collect::<Vec<_>>();
    let longest = 1 + MAX_HOP_BUDGET as usize;
    let ok = circuit::build(&pool, &path(longest)).await;
    assert!(ok.is_ok(), "a {longest}-hop circuit should build: {:?}", ok.err());
    match circuit::build(&pool, &path(longest + 1)).await {
        Err(CircError::Destroyed(DestroyReason::Protocol)) => {}
        other => panic!("a {}-hop circuit must be refused with DESTROY(PROTOCOL), got {:?}", longest + 1, other.err()),
    }
}
