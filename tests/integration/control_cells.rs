//! THREATS A17 (and A16): control messages are taken only from the hop that may send them. A middle hop
//! (test hook: every non-exit relay, after forwarding 200 cells toward the client) that sends
//! DROP — no hop negotiated padding, so it could only be a signal — or an INTRODUCE_ACK (only an
//! introduction point, the last hop, may) gets the client's circuit closed: the download on it
//! ends early, and no byte of it is wrong.

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::http::{pseudo_random, FileServer};
use crate::support::socks::socks5_connect;
use crate::support::testnet::Testnet;

/// Downloads through a test network whose middle hops inject `kind`; checks that the download
/// ended early with no wrong byte and that a relay injected something. Returns the network.
fn download_through_injecting_middles(kind: &str) -> Testnet {
    let file = pseudo_random(10_000_000, 41);
    let server = FileServer::start(vec![("/10m", file.clone())]);
    let net = Testnet::start(&["--dangerous-test-inject-from-middle", kind]);
    let mut s = socks5_connect(net.socks, "127.0.0.1", server.addr().port(), None).expect("CONNECT");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(b"GET /10m HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    // The stream ends early: cleanly or with a reset, either is fine; a timeout is not.
    if let Err(e) = s.read_to_end(&mut resp) {
        assert!(!matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "the download hung: {e}");
    }
    let body = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(&[][..], |i| &resp[i + 4..]);
    assert!(body.len() < file.len(), "the whole file arrived although a middle hop sent {kind}");
    assert_eq!(body, &file[..body.len()], "a wrong byte reached the application");
    let injected: usize = net.with_role("relay").map(|n| net.node_log(&n.name).matches("test hook: sending the client a message from a middle hop").count()).sum();
    assert!(injected > 0, "no relay injected anything");
    net
}

fn middle_hop_message_closes_the_circuit(kind: &str, client_says: &str) {
    let net = download_through_injecting_middles(kind);
    let client = net.node_log("client");
    assert!(client.contains(client_says), "the client did not close the circuit for {kind}:\n{}", crate::support::tail(&net.dir.join("client").join("log"), 30));
}

#[test]
fn a17_drop_from_a_middle_hop_closes_the_circuit() {
    middle_hop_message_closes_the_circuit("drop", "DROP from a hop that negotiated no padding");
}

#[test]
fn a17_introduce_ack_from_a_middle_hop_closes_the_circuit() {
    middle_hop_message_closes_the_circuit("introduce_ack", "onion-service message from a hop other than the last relay");
}

/// THREATS A16: a relay that forwards a cell toward the client as RELAY_EARLY (the 2014 signal
/// to a colluding guard) gets the circuit closed: by the client if the marking relay is its
/// guard, by the guard if it is a middle hop.
#[test]
fn a16_relay_early_toward_the_client_closes_the_circuit() {
    let net = download_through_injecting_middles("relay_early");
    let by_client = net.node_log("client").matches("RELAY_EARLY toward the client").count();
    let by_guards: usize = net.with_role("relay").chain(net.with_role("exit")).map(|n| net.node_log(&n.name).matches("RELAY_EARLY from the next hop").count()).sum();
    assert!(by_client + by_guards > 0, "nobody closed the circuit for a RELAY_EARLY toward the client:\n{}", crate::support::tail(&net.dir.join("client").join("log"), 30));
}
