//! Issue 16 point 1: an onion service on a network too small for its paths says why at info
//! and starts by itself once enough relays join, without a restart. A service's circuits are
//! guard → vanguard → middle → introduction point (or HSDir, or rendezvous point): four relays
//! in distinct /16s, so on a 3-relay test network none can be built. Two relays then join, each
//! in a /16 of its own; the service must establish its points and publish, and the client must
//! reach it.

use std::net::IpAddr;
use std::time::Duration;

use crate::support::extra_relay::{free_port, ExtraRelay};
use crate::support::http::http_get_via_socks;
use crate::support::testnet::Testnet;

/// How long the service may take to report why it cannot start.
const WHY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a joining relay may take to be listed (testnet voting interval: 10 s).
const LISTED_DEADLINE: Duration = Duration::from_secs(120);
/// How long, after both are listed, the client may take to reach the service (the testnet's
/// own prober writes ONION_HOST when a stream crosses to the service).
const REACHED_DEADLINE: Duration = Duration::from_secs(150);
/// The joining relays' addresses: /16s apart from the testnet's `127.k.0.1` nodes and from
/// other tests' extra relays.
const JOINING: [(&str, &str); 2] = [("joined1", "127.211.0.1"), ("joined2", "127.212.0.1")];

/// The onion service's state as the hs node's `allium status` reports it.
fn service_state(net: &Testnet) -> String {
    let status = crate::support::status_json(&net.dir.join("hs"));
    status["onion_services"].as_object().and_then(|m| m.values().next()).and_then(|v| v.as_str()).unwrap_or_default().to_string()
}

#[test]
fn an_onion_service_on_too_small_a_network_says_why_and_starts_once_relays_join() {
    let net = Testnet::start(&["--relays", "3", "--exits", "1"]);

    // Why it cannot start: in its status, and at info in its log.
    let status = crate::support::try_wait_status(&net.dir.join("hs"), "onion_services.web~too few compatible relays", WHY_DEADLINE)
        .unwrap_or_else(|e| panic!("the service never said why it cannot start ({e}); its log:\n{}", net.node_log("hs")));
    let why = status["onion_services"]["web"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("4-hop path") && why.contains("/16"), "{why}");
    let log = net.node_log("hs");
    assert!(
        log.lines().any(|l| l.contains("INFO") && l.contains("too few compatible relays for a 4-hop path")),
        "the reason is not logged at info:\n{log}"
    );
    assert_eq!(net.wait_env("ONION_HOST", Duration::ZERO), None, "the service was reached on a 3-relay network");

    let joined: Vec<ExtraRelay> = JOINING
        .iter()
        .map(|(name, ip)| {
            let ip: IpAddr = ip.parse().unwrap();
            ExtraRelay::start(&net, "relay1", name, ip, free_port(ip), None)
        })
        .collect();
    for r in &joined {
        r.wait_listed(LISTED_DEADLINE);
    }

    let host = net.wait_env("ONION_HOST", REACHED_DEADLINE).unwrap_or_else(|| {
        panic!("the service was not reached after relays joined; state {:?}; its log:\n{}", service_state(&net), crate::support::tail(&net.dir.join("hs").join("log"), 40))
    });
    let page = http_get_via_socks(net.socks, &host, 80, "/").unwrap_or_else(|e| panic!("GET / from {host}: {e:?}"));
    assert!(!page.is_empty());
    assert!(service_state(&net).contains("introduction points"), "{}", service_state(&net));
}
