//! THREATS A17: DESTROY reasons do not travel in clear past the hop that decided. Relays run in
//! this process (real TCP on loopback, real links and handshakes).

use std::net::{IpAddr, TcpListener};

use allium_client::circuit::{self, CircError};
use allium_net::pool::ChannelPool;
use allium_proto::cell::DestroyReason;
use allium_relay::test_hooks::destroys_from_next;

/// The third hop of a circuit cannot reach the fourth (nothing listens at its address), so it
/// destroys the circuit with CONNECTFAILED. The client learns that reason (end to end, in
/// CLOSING); the second and first hops see only DESTROYED in the DESTROY cells they receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a17_a_far_hops_destroy_reason_reaches_the_client_and_no_middle_relay() {
    let start = |n: &'static str| async move { crate::support::inproc::start_relay(n, "").await.0 };
    let (a, b, c) = (start("reasona").await, start("reasonb").await, start("reasonc").await);
    // A fourth "relay" whose address takes no connection (a port just freed).
    let dead_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut d = start("reasond").await;
    d.address.set_port(dead_port);
    let pool = ChannelPool::new(IpAddr::from([127, 0, 0, 1]), None);
    match circuit::build(&pool, &[&a, &b, &c, &d]).await {
        Err(CircError::Destroyed(DestroyReason::ConnectFailed)) => {}
        other => panic!("the client should learn CONNECTFAILED, got {:?}", other.err()),
    }
    let destroyed = DestroyReason::Destroyed as u8;
    assert_eq!(destroys_from_next(&b.identity), vec![destroyed], "the second hop got the third's DESTROY with the fixed reason");
    assert_eq!(destroys_from_next(&a.identity), vec![destroyed], "the first hop got the fixed reason");
}
