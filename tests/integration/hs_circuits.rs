//! Onion-service circuits on a whole test network (docs/PROTOCOL.md, "Onion-service circuits"):
//! `CircMgr::to_relay` builds guard → L2 vanguard → middle → HSDir over real relays, and a
//! descriptor uploaded over one such circuit is fetched back over another. The `CircMgr` runs in
//! this process, on the directory the network's client holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use allium_client::circmgr::CircMgr;
use allium_client::{hs_dir, vanguards, Bootstrap};
use allium_directory::NetDir;
use allium_net::pool::ChannelPool;
use allium_proto::doc::RelayFlags;
use allium_proto::hs::{BlindedKey, HsDescriptor};
use allium_proto::ids::RelayId;

use crate::support::testnet::Testnet;

/// The network's client's verified directory, from its data directory.
fn client_netdir(net: &Testnet) -> NetDir {
    let dir = net.dir.join("client");
    let cfg: toml::Value = std::fs::read_to_string(dir.join("config.toml")).unwrap().parse().unwrap();
    let authorities: Vec<RelayId> = cfg["network"]["authorities"]
        .as_array()
        .expect("authorities")
        .iter()
        .map(|a| a["identity"].as_str().unwrap().parse().unwrap())
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let text = std::fs::read_to_string(dir.join("cached-consensus")).expect("the client holds a consensus");
    let mut nd = NetDir::from_text(&text, &authorities, now).expect("the client's consensus verifies");
    nd.add_microdescs(&std::fs::read_to_string(dir.join("cached-microdescs")).expect("and microdescriptors"));
    nd
}

/// Waits (at most 30 s, on each relay: `allium status --wait`) until every relay holds a
/// consensus at least as new as `nd`: the HSDir flags and rings this test reads from the
/// client's consensus are then the relays' too (a relay still on the consensus before refuses
/// an upload as `not an HSDir`).
fn wait_relays_hold(net: &Testnet, nd: &NetDir) {
    let started = std::time::Instant::now();
    for r in net.with_role("relay").chain(net.with_role("exit")) {
        let left = std::time::Duration::from_secs(30).saturating_sub(started.elapsed());
        let cond = format!("consensus.valid_after>={}", nd.valid_after());
        crate::support::wait_status(&net.dir.join(&r.name), &cond, left, &format!("{} holds a consensus as new as the client's", r.name));
    }
}

#[tokio::test]
async fn hsdir_upload_and_fetch_over_vanguard_circuits() {
    let net = Testnet::start(&[]);
    let nd = client_netdir(&net);
    wait_relays_hold(&net, &nd);
    assert!(nd.relays().len() >= 4, "a 4-hop path needs 4 relays, the network lists {}", nd.relays().len());

    let state = crate::support::fresh_dir("hs-circuits-state");
    let circuits = CircMgr::new(ChannelPool::new(net.node_address("client"), None), Some(state.clone()), Arc::new(Bootstrap::new()));
    let period = hs_dir::period_of(&nd);
    let key = BlindedKey::derive(&ed25519_dalek::SigningKey::from_bytes(&[0x33; 32]), period);
    let text = HsDescriptor { blinded_key: key.public(), period, revision: 1, lifetime_secs: 600, encrypted: vec![0x5a; 100] }.encode_signed(&key);
    let hsdirs = hs_dir::responsible_hsdirs(&nd, &key.public(), period);
    let hsdir = hsdirs.first().expect("the network has HSDirs");
    assert!(hsdir.flags.contains(RelayFlags::HSDIR));

    assert_eq!(hs_dir::upload(&circuits, &nd, hsdir, &text).await.expect("upload"), "stored");
    // Fetched back over other fresh circuits, a few times (each builds a new one).
    for _ in 0..3 {
        assert_eq!(hs_dir::fetch(&circuits, &nd, hsdir, &key.public()).await.expect("fetch").as_deref(), Some(text.as_str()));
    }

    // The vanguard set is saved next to the guard state: four relays of this consensus.
    let saved = vanguards::load(&vanguards::state_path(&state), vanguards::VanguardParams::default());
    let l2: Vec<RelayId> = saved.ids();
    assert_eq!(l2.len(), 4, "{l2:?}");
    assert!(l2.iter().all(|id| nd.by_id(id).is_some()));

    // Circuits to the HSDir are guard, L2 vanguard, middle, HSDir: four distinct relays.
    let mut paths: Vec<Vec<RelayId>> = Vec::new();
    for _ in 0..4 {
        paths.push(circuits.to_relay(&nd, hsdir).await.expect("circuit to the HSDir").path().to_vec());
    }
    for p in &paths {
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(p.iter().collect::<HashSet<_>>().len(), 4, "a relay twice in {p:?}");
        assert!(l2.contains(&p[1]), "second hop {} is not a vanguard ({l2:?})", p[1]);
        assert_eq!(p[3], hsdir.identity);
    }
    // The guard is the same on every circuit (the first primary guard).
    assert!(paths.iter().all(|p| p[0] == paths[0][0]), "{paths:?}");
    let _ = std::fs::remove_dir_all(&state);
}
