//! `allium testnet --clients N`: every client of a test network carries streams (each its own
//! process, SOCKS port and guards), as the 100-relay benchmark needs.

use crate::support::http::{http_get_via_socks, pseudo_random, FileServer};
use crate::support::testnet::Testnet;

#[test]
fn every_client_of_a_test_network_carries_a_stream() {
    let file = pseudo_random(10_000, 5);
    let server = FileServer::start(vec![("/10k", file.clone())]);
    let net = Testnet::start(&["--clients", "3"]);
    let clients: Vec<_> = net.with_role("client").map(|n| (n.name.clone(), n.addr)).collect();
    assert_eq!(clients.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["client", "client2", "client3"], "DIR/nodes lists every client");
    assert_eq!(clients[0].1, net.socks, "the first client is the one in testnet.env");
    for (name, socks) in clients {
        let body = http_get_via_socks(socks, "127.0.0.1", server.addr().port(), "/10k");
        assert_eq!(body.as_deref().ok(), Some(&file[..]), "{name}: {body:?}");
    }
}
