//! THREATS A16: the hop budget bounds circuit length. Relays run in this process (real TCP on
//! loopback, real links and handshakes); the client extends through them again and again.

use std::net::IpAddr;

use allium_client::circuit::{self, CircError};
use allium_net::pool::ChannelPool;
use allium_proto::cell::{DestroyReason, MAX_HOP_BUDGET};
use allium_proto::doc::ConsensusRelay;

/// Starts relay `i` on 127.0.0.1 in this process and returns how to reach it.
async fn start_relay(i: usize) -> ConsensusRelay {
    crate::support::inproc::start_relay(&format!("hop{i}"), "").await.0
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
