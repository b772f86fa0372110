//! Path choice and circuit management on a real test network: isolation by SOCKS username,
//! reuse within one username, bootstrap progress, guard state, the learned build timeout, and
//! no relay identity in info-level logs.

use std::io::{Read, Write};
use std::time::Duration;

use crate::e2e::fingerprints;
use crate::support::http::{pseudo_random, FileServer};
use crate::support::socks::socks5_connect;
use crate::support::testnet::Testnet;

fn fetch_as(net: &Testnet, server: &FileServer, user: &str) {
    let mut s = socks5_connect(net.socks, "127.0.0.1", server.addr().port(), Some((user, "pw"))).unwrap_or_else(|c| panic!("CONNECT as {user}: reply {c}\n{}", net.log_tail(20)));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /1k HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    assert!(resp.ends_with(server.file("/1k")), "fetch as {user} returned other bytes");
}

fn client_log(net: &Testnet) -> String {
    net.node_log("client")
}

/// `(serial, kind)` of every "stream on circuit #N (kind)" line.
fn stream_circuits(log: &str) -> Vec<(u64, String)> {
    log.lines()
        .filter_map(|l| l.split_once("stream on circuit #").map(|(_, r)| r))
        .map(|r| {
            let (n, rest) = r.split_once(' ').expect("serial then kind");
            let kind = rest.trim_start_matches('(').split(')').next().unwrap_or("").to_string();
            (n.parse().expect("serial"), kind)
        })
        .collect()
}

/// Waits until the client's status satisfies `condition` (the node answers when it does).
fn wait_client(net: &Testnet, condition: &str, limit: Duration) -> serde_json::Value {
    crate::support::wait_status(&net.dir.join("client"), condition, limit, condition)
}

#[test]
fn usernames_isolate_circuits_and_one_username_reuses_its_circuit() {
    let server = FileServer::start(vec![("/1k", pseudo_random(1024, 11))]);
    let net = Testnet::start(&[]);

    // Bootstrap phases, in order (each logged before the step is reported).
    wait_client(&net, "bootstrap.percent>=100", Duration::from_secs(30));
    let log = client_log(&net);
    let mut at = 0;
    for phase in ["bootstrap 0%", "bootstrap 25%", "bootstrap 50%", "bootstrap 75%", "bootstrap 100%"] {
        let i = log[at..].find(phase).unwrap_or_else(|| panic!("no {phase:?} (in order) in the client log:\n{}", crate::support::tail(&net.dir.join("client").join("log"), 30)));
        at += i;
    }

    let before = stream_circuits(&client_log(&net)).len();
    fetch_as(&net, &server, "alice");
    fetch_as(&net, &server, "bob");
    fetch_as(&net, &server, "alice");
    let streams = stream_circuits(&client_log(&net));
    let ours = &streams[before..];
    assert_eq!(ours.len(), 3, "expected one circuit choice per fetch, got {ours:?}");
    assert_ne!(ours[0].0, ours[1].0, "alice and bob shared a circuit: {ours:?}");
    assert_eq!(ours[2].0, ours[0].0, "alice's second fetch did not reuse her circuit: {ours:?}");
    assert_eq!(ours[2].1, "reused");

    // Enough builds to learn a timeout: each new username takes a circuit of its own.
    for i in 0..24 {
        fetch_as(&net, &server, &format!("user{i}"));
    }
    let status = wait_client(&net, "build_timeout_learned==true", Duration::from_secs(30));
    eprintln!("learned circuit build timeout in the testnet: {} ms", status["build_timeout_ms"]);
    let log = client_log(&net);
    assert!(log.contains("circuit build timeout learned: "), "the operator is told the learned timeout:\n{}", net.log_tail(30));

    // Every circuit's path: three distinct relays in three /16s (each node has its own /16).
    let fps = fingerprints(&net);
    let paths: Vec<Vec<&str>> = log.lines().filter_map(|l| l.split_once(" through ").map(|(_, r)| r.split_whitespace().collect())).collect();
    // The testnet's onion probe adds 4-hop onion-service circuits (checked in hs_circuits and
    // onion); the exit circuits are the 3-hop ones.
    assert!(paths.iter().all(|p| p.len() == 3 || p.len() == 4), "{paths:?}");
    let paths: Vec<&Vec<&str>> = paths.iter().filter(|p| p.len() == 3).collect();
    for p in &paths {
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0] != p[1] && p[1] != p[2] && p[0] != p[2], "a relay appears twice in {p:?}");
    }

    // The guard state is on disk, and every circuit's first hop is one of its guards.
    let state = std::fs::read_to_string(net.dir.join("client").join("guards.toml")).expect("client wrote guards.toml");
    let guards: Vec<String> = state.lines().filter_map(|l| l.strip_prefix("id = \"")).map(|r| r.trim_end_matches('"').to_string()).collect();
    assert!(!guards.is_empty(), "no guard in guards.toml:\n{state}");
    let firsts: std::collections::HashSet<&str> = paths.iter().map(|p| p[0]).collect();
    for f in &firsts {
        assert!(guards.iter().any(|g| g.starts_with(f)), "first hop {f} is not a sampled guard ({guards:?})");
    }
    assert!(firsts.len() <= 3, "circuits used more than the 3 primary guards: {firsts:?}");

    // Info-level lines never name a relay.
    for l in log.lines().filter(|l| l.contains(" INFO ") || l.contains(" WARN ")) {
        for (_, fp) in &fps {
            assert!(!l.contains(&fp[..8]), "an info line names a relay: {l}");
        }
    }
}
