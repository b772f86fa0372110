//! A stream an exit refuses with a retryable reason (here EXITPOLICY) before CONNECTED is tried
//! on another exit (issue 5, "a failed stream attempt on one exit is retried on another exit
//! where safe").

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::http::{pseudo_random, FileServer};
use crate::support::socks::socks5_connect;
use crate::support::testnet::Testnet;

/// Two exits, one keeping the default policy (which refuses loopback destinations although its
/// listed policy allows the port). Every fetch from `localhost` succeeds; whenever the strict
/// exit was picked first, the client says it tried another exit.
#[test]
fn a_refused_stream_succeeds_through_the_other_exit() {
    let server = FileServer::start(vec![("/1k", pseudo_random(1024, 21))]);
    let net = Testnet::start(&["--exits", "2", "--strict-exits", "1"]);
    let log_path = net.dir.join("client").join("log");
    // The network is ready once the authorities list every relay, but the client may still
    // hold a consensus fetched before the strict exit was listed (then it never picks it: seen
    // on a loaded CI machine). Wait until the client's consensus lists every relay.
    let relays = net.nodes.iter().filter(|n| n.role == "relay" || n.role == "exit").count();
    crate::support::wait_status(&net.dir.join("client"), &format!("relays_in_consensus>={relays}"), Duration::from_secs(180), "the client's consensus lists every relay");
    let retried = |log: &str| log.matches("trying another exit").count();
    // Five fetches must all succeed; go on (up to 20) until the strict exit was hit at least
    // once, so the retry path is exercised (the chance it never is: 2^-20).
    for i in 0..20 {
        let user = format!("retry{i}");
        let mut s = socks5_connect(net.socks, "localhost", server.addr().port(), Some((&user, "pw")))
            .unwrap_or_else(|c| panic!("CONNECT as {user}: reply {c}; client log:\n{}", crate::support::tail(&log_path, 30)));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(b"GET /1k HTTP/1.0\r\n\r\n").unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        assert!(resp.ends_with(server.file("/1k")), "fetch as {user} returned other bytes");
        if i >= 4 && retried(&std::fs::read_to_string(&log_path).unwrap_or_default()) > 0 {
            break;
        }
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(retried(&log) > 0, "the strict exit was never tried first in 20 fetches; client log:\n{}", crate::support::tail(&log_path, 30));
    assert!(log.contains("ExitPolicy"), "the refusal was not EXITPOLICY; client log:\n{}", crate::support::tail(&log_path, 30));
}
