//! Directory distribution: the client takes its first consensus from fallback relays and later
//! ones through its guards, over directory streams (BEGIN_DIR) on ordinary links, so no
//! authority ever sees a client's address (issue "A directory people can trust", point 8).

use std::time::Duration;

use crate::support::testnet::Testnet;

/// The lines of a log that record a connection to an authority's dir port from `ip`.
fn connections_from(log: &str, ip: &str) -> usize {
    let needle = format!("directory connection peer={ip}");
    log.lines().filter(|l| l.trim_end().ends_with(&needle)).count()
}

#[test]
fn client_directory_fetches_go_through_guards_and_never_reach_an_authority() {
    let net = Testnet::start(&[]);
    // Two fetches through a guard span at least one new consensus (one per 10 s voting round).
    let status = crate::support::wait_status(&net.dir.join("client"), "directory.from_guards>=2", Duration::from_secs(120), "two consensuses through a guard");
    assert_eq!(status["directory"]["from_authorities"], 0, "the client never fetched from an authority: {status}");
    assert!(status["directory"]["from_fallbacks"].as_u64() >= Some(1), "the first consensus came from a fallback: {status}");
    let client = net.node_log("client");
    assert!(
        client.lines().any(|l| l.contains("bootstrap 25%: consensus fetched and verified (") && l.ends_with("relays, from a fallback directory)")),
        "the first consensus comes from a fallback relay:\n{}",
        net.log_tail(20)
    );
    assert!(client.matches("consensus fetched from a guard").count() >= 2, "later consensuses come through a guard:\n{client}");
    assert!(!client.contains("from an authority"), "the client never fetched from an authority");

    let client_ip = net.node_address("client").to_string();
    let relay_ips: Vec<String> = net.nodes.iter().filter(|n| n.role == "relay" || n.role == "exit").map(|n| net.node_address(&n.name).to_string()).collect();
    for auth in net.with_role("authority") {
        let log = net.node_log(&auth.name);
        // The log does record peers: relays upload descriptors and fetch the consensus here.
        let from_relays: usize = relay_ips.iter().map(|ip| connections_from(&log, ip)).sum();
        assert!(from_relays > 0, "{} logged no connection from any relay; is the access log written?", auth.name);
        assert_eq!(connections_from(&log, &client_ip), 0, "{} saw a connection from the client ({client_ip})", auth.name);
    }
}
