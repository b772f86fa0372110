//! Consensus flow- and congestion-control parameters reach both ends of every circuit: with a
//! circuit window, increment, XOFF threshold and initial congestion window far from the
//! defaults voted by the authorities, a 10 MB transfer still arrives byte for byte. (Were an
//! exit to keep the default window, it would overrun the client's smaller receive window, and
//! were it to keep the default increment, its SENDME tokens would be out of place: either way
//! the client would destroy the circuit.)

use crate::support::http::{http_get_via_socks, pseudo_random, FileServer};
use crate::support::testnet::Testnet;

#[test]
fn consensus_flow_windows_are_used_by_both_ends() {
    let file = pseudo_random(10_000_000, 7);
    let server = FileServer::start(vec![("/10m", file.clone())]);
    let params = ["circuit-window=300", "circuit-sendme-inc=30", "stream-xoff=120", "cc-cwnd-init=60", "cc-vegas-alpha=20", "cc-vegas-beta=40", "cc-vegas-gamma=20", "cc-vegas-delta=60"];
    let args: Vec<&str> = params.iter().flat_map(|p| ["--param", p]).collect();
    let net = Testnet::start(&args);
    let consensus = std::fs::read_to_string(net.dir.join("client").join("cached-consensus")).expect("the client saved its consensus");
    let header = consensus.lines().find(|l| l.starts_with("params ")).expect("params line");
    for p in params {
        assert!(header.split(' ').any(|kv| kv == p), "the consensus carries {p}: {header}");
    }
    let body = http_get_via_socks(net.socks, "127.0.0.1", server.addr().port(), "/10m").unwrap_or_else(|e| panic!("GET /10m: {e:?}\n{}", net.log_tail(20)));
    assert!(body == file, "10 MB arrived changed or short ({} bytes)", body.len());
    assert!(!net.node_log("client").contains("relay broke the protocol"), "no circuit was destroyed for a flow-control violation");
}
