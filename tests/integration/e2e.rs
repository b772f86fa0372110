//! Whole networks from `allium testnet`, carrying real traffic through SOCKS5.

use std::collections::HashSet;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::support::http::{http_get_via_socks, pseudo_random, FileServer, GetError};
use crate::support::socks::socks5_connect;
use crate::support::testnet::Testnet;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fetches through the network. A CONNECT that fails (a circuit that could not be built) is
/// retried twice; a stream that opened and then delivered a wrong or short response is a failure
/// at once.
fn fetch(net: &Testnet, host: &str, port: u16, path: &str) -> Vec<u8> {
    let mut refused = Vec::new();
    for _ in 0..3 {
        match http_get_via_socks(net.socks, host, port, path) {
            Ok(body) => return body,
            Err(GetError::Connect(code)) => refused.push(format!("{code:#04x}")),
            Err(GetError::Transfer(e)) => panic!("GET {path} through {}: {e}", net.socks),
        }
    }
    panic!("SOCKS CONNECT for GET {path} through {} failed 3 times (replies {refused:?})\ntestnet output:\n{}", net.socks, net.log_tail(20));
}

/// 1 KB and 10 MB cross the network byte for byte, and the server only ever sees exits.
#[test]
fn fetches_are_byte_exact_and_come_from_an_exit() {
    let server = FileServer::start(vec![("/1k", pseudo_random(1024, 1)), ("/10m", pseudo_random(10_000_000, 2))]);
    let net = Testnet::start(&[]);
    assert_eq!(net.with_role("authority").count(), 3);
    assert_eq!(net.with_role("relay").count() + net.with_role("exit").count(), 5);
    assert_eq!(net.with_role("exit").count(), 2);
    assert_eq!(net.with_role("client").count(), 1);

    let port = server.addr().port();
    for path in ["/1k", "/10m"] {
        let body = fetch(&net, "127.0.0.1", port, path);
        assert_eq!(body.len(), server.file(path).len(), "{path}: length");
        assert_eq!(sha256_hex(&body), sha256_hex(server.file(path)), "{path}: content");
    }

    // Several streams at once on one circuit (same credentials share a circuit).
    let fetches: Vec<_> = (0..4)
        .map(|_| {
            let socks = net.socks;
            std::thread::spawn(move || http_get_via_socks(socks, "127.0.0.1", port, "/10m"))
        })
        .collect();
    for f in fetches {
        let body = f.join().unwrap().unwrap_or_else(|e| panic!("concurrent GET: {e:?}"));
        assert_eq!(sha256_hex(&body), sha256_hex(server.file("/10m")), "concurrent stream content");
    }

    let exits: HashSet<IpAddr> = net.with_role("exit").map(|n| n.addr.ip()).collect();
    let client = net.node_address("client");
    let peers = server.peers();
    assert!(peers.len() >= 2, "the server saw {} connections for 2 fetches", peers.len());
    for peer in peers {
        assert_ne!(peer.ip(), client, "the client connected to the server directly");
        assert!(exits.contains(&peer.ip()), "connection from {peer}, which is not an exit ({exits:?})");
    }

    // Relays report what they carried: after 50 MB, a consensus weighs some relay above the
    // 20 kB/s every relay starts from (descriptors are republished and voted every 10 s).
    let carried = |text: &str| {
        allium_proto::doc::Consensus::parse(text).map(|c| c.dangerously_assume_valid().relays().iter().map(|r| r.weight).max().unwrap_or(0)).unwrap_or(0)
    };
    let mut heaviest = 0;
    let heavier = net.wait_node_file("client", "cached-consensus", std::time::Duration::from_secs(90), |text| {
        heaviest = carried(text);
        (heaviest > 20_000).then_some(heaviest)
    });
    assert!(heavier.is_some(), "no relay reported more than the 20 kB/s floor after carrying 50 MB (heaviest weight {heaviest})");
}

/// An exit with the default policy refuses a host name that resolves to a loopback address, and
/// never connects to it.
#[test]
fn default_exit_policy_refuses_loopback_names() {
    let server = FileServer::start(vec![("/1k", pseudo_random(1024, 3))]);
    let net = Testnet::start(&["--exits", "1", "--strict-exits", "1"]);
    let port = server.addr().port();
    match socks5_connect(net.socks, "localhost", port, None) {
        Ok(_) => panic!("CONNECT to localhost:{port} succeeded through a default-policy exit"),
        Err(code) => assert_eq!(code, 0x02, "expected reply 0x02 (not allowed by ruleset), got {code:#04x}"),
    }
    // An IP literal must not get through either (whoever refuses it: client or exit).
    if let Ok(_stream) = socks5_connect(net.socks, "127.0.0.1", port, None) {
        panic!("CONNECT to 127.0.0.1:{port} succeeded through a default-policy exit");
    }
    assert!(server.peers().is_empty(), "the server saw connections: {:?}", server.peers());
}

/// The relay fingerprints each node printed at start, by node name.
pub fn fingerprints(net: &Testnet) -> Vec<(String, String)> {
    net.nodes
        .iter()
        .filter(|n| n.role == "relay" || n.role == "exit")
        .map(|n| {
            let log = std::fs::read_to_string(net.dir.join(&n.name).join("log")).unwrap_or_default();
            let fp = log.lines().find_map(|l| l.strip_prefix("relay fingerprint: ")).unwrap_or_else(|| panic!("{} printed no fingerprint", n.name));
            (n.name.clone(), fp.trim().to_string())
        })
        .collect()
}

/// Every circuit the client built went through three distinct relays of this network, the last
/// one an exit.
#[test]
fn circuits_use_three_distinct_relays() {
    let server = FileServer::start(vec![("/1k", pseudo_random(1024, 5))]);
    let net = Testnet::start(&[]);
    for i in 0..3 {
        // Different SOCKS credentials never share a circuit, so each fetch builds one.
        let user = format!("user{i}");
        let mut s = socks5_connect(net.socks, "127.0.0.1", server.addr().port(), Some((&user, "pw"))).expect("CONNECT");
        use std::io::{Read, Write};
        s.write_all(b"GET /1k HTTP/1.0\r\n\r\n").unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        assert!(resp.ends_with(server.file("/1k")));
    }
    let fps = fingerprints(&net);
    let name_of = |short: &str| fps.iter().find(|(_, fp)| fp.starts_with(short)).map(|(n, _)| n.clone());
    let log = std::fs::read_to_string(net.dir.join("client").join("log")).unwrap();
    let paths: Vec<Vec<String>> = log
        .lines()
        .filter_map(|l| l.split_once("circuit built in ").map(|(_, rest)| rest))
        .map(|rest| rest.split(" through ").nth(1).expect("path").split_whitespace().map(|s| name_of(s).unwrap_or_else(|| panic!("{s} is no relay of this network"))).collect())
        .collect();
    // The testnet's onion probe adds 4-hop onion-service circuits (vanguards-lite, checked in
    // hs_circuits); exit circuits are the 3-hop ones.
    assert!(paths.iter().all(|p| p.len() == 3 || p.len() == 4), "{paths:?}");
    let paths: Vec<&Vec<String>> = paths.iter().filter(|p| p.len() == 3).collect();
    assert!(paths.len() >= 4, "expected the probe's and 3 more circuits in the client log, found {paths:?}");
    for p in &paths {
        let distinct: HashSet<&String> = p.iter().collect();
        assert_eq!(distinct.len(), 3, "a relay appears twice in {p:?}");
        assert!(p[2].starts_with("exit"), "the last hop {} is not an exit", p[2]);
    }
}

/// THREATS A6: malformed or unsupported SOCKS requests to the real client get their protocol's
/// error, and the client keeps serving.
#[test]
fn a6_malformed_socks_requests_get_errors() {
    use std::io::{Read, Write};
    let server = FileServer::start(vec![("/1k", pseudo_random(1024, 7))]);
    let net = Testnet::start(&[]);
    let exchange = |bytes: &[u8], want: &[u8]| {
        let mut s = std::net::TcpStream::connect(net.socks).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        s.write_all(bytes).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert_eq!(&got[..want.len().min(got.len())], want, "answer to {bytes:02x?}");
        assert!(got.len() >= want.len(), "answer to {bytes:02x?} too short: {got:02x?}");
    };
    // No acceptable authentication method: 0xFF.
    exchange(&[5, 1, 0x80], &[5, 0xff]);
    // BIND is not supported: reply code 7.
    exchange(&[5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80], &[5, 0, 5, 7]);
    // Unknown address type: reply code 8.
    exchange(&[5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4], &[5, 0, 5, 8]);
    // Not SOCKS5 at all: the connection is closed without an answer.
    exchange(b"GET / HTTP/1.0\r\n\r\n", &[]);
    // Port 0: not allowed.
    exchange(&[5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 0], &[5, 0, 5, 2]);
    // The client still serves a good request.
    let body = fetch(&net, "127.0.0.1", server.addr().port(), "/1k");
    assert_eq!(body, server.file("/1k"));
}
