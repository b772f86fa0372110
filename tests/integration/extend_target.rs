//! THREATS A11: a relay extends only where the consensus says. An EXTEND that names an honest
//! relay's identity with another address and link key (an impostor's) is refused, and the
//! relay's later extends to the honest relay reach the honest relay: the impostor's link is
//! never filed under the honest identity.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use allium_client::circuit::{self, CircError};
use allium_net::pool::ChannelPool;
use allium_proto::cell::DestroyReason;

use crate::support::testnet::Testnet;

#[test]
fn a11_relays_extend_only_to_the_consensus_address_and_link_key() {
    let net = Testnet::start(&[]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = allium_client::ClientConfig::load(&net.dir.join("client").join("config.toml")).expect("the client's config");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        let dir = allium_directory::fetch_consensus(&cfg.network, localhost, now, None).await.expect("the consensus");
        let relays = dir.relays();
        assert!(relays.len() >= 2, "{} relays with microdescriptors", relays.len());
        let (r, x) = (&relays[0], &relays[1]);
        // R must check EXTENDs against a consensus listing X: a test-network relay that has no
        // consensus yet extends anywhere (docs/PROTOCOL.md), and a fast-starting network can be
        // ready before every relay has fetched one.
        let r_node = net.nodes.iter().find(|n| n.addr == r.address).expect("R is a node of the test network");
        let (r_dir, cond) = (net.dir.join(&r_node.name), format!("relays_in_consensus>={}", relays.len()));
        tokio::task::spawn_blocking(move || crate::support::wait_status(&r_dir, &cond, std::time::Duration::from_secs(60), "R's consensus lists every relay")).await.unwrap();
        // The impostor: a relay of ours with its own keys, claiming to be X.
        let (impostor, _) = crate::support::inproc::start_relay("impostor", "").await;
        let mut bogus = x.clone();
        bogus.address = impostor.address;
        bogus.link_key = impostor.link_key;
        bogus.onion_key = impostor.onion_key;
        let pool = ChannelPool::new(localhost, None);
        match circuit::build(&pool, &[r, &bogus]).await {
            Err(CircError::Destroyed(DestroyReason::OrIdentity)) => {}
            other => panic!("the EXTEND to an impostor was not refused with OR_IDENTITY: {:?}", other.map(|_| "built")),
        }
        // Honest extends from R to X, on new circuits (and so new links from this client).
        for i in 0..3 {
            let pool = ChannelPool::new(localhost, None);
            if let Err(e) = circuit::build(&pool, &[r, x]).await {
                panic!("honest extend {i} from R to X failed (did it reach the impostor?): {e}");
            }
        }
    });
}
