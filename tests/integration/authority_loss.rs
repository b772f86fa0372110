//! THREATS A34 (2): with two of three authorities gone no consensus is made, and a client keeps
//! using the last one after it expires, for the bounded grace only, saying so; then it refuses
//! requests cleanly (SOCKS general failure) and says why.

use std::io::{Read, Write};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

use crate::support::http::{pseudo_random, FileServer};
use crate::support::socks::socks5_connect;
use crate::support::testnet::Testnet;

const IN_GRACE: &str = "no newer one can be had; still using it for at most";
const GRACE_OVER: &str = "no usable consensus";

fn fetch_as(net: &Testnet, server: &FileServer, user: &str) -> Result<Vec<u8>, u8> {
    let mut s = socks5_connect(net.socks, "127.0.0.1", server.addr().port(), Some((user, "pw")))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /1k HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    Ok(resp)
}

#[test]
fn a34_two_authorities_down_clients_use_the_last_consensus_for_the_grace_only() {
    let server = FileServer::start(vec![("/1k", pseudo_random(1024, 34))]);
    // Voting every 5 s (the default is 10): the same rounds in half the time.
    let net = Testnet::start(&["--voting-interval", "5"]);
    assert!(fetch_as(&net, &server, "before").unwrap().ends_with(server.file("/1k")));
    for a in net.with_role("authority").skip(1) {
        kill_process(Pid::from_raw(a.pid as i32).expect("pid"), Signal::KILL).expect("kill an authority");
    }
    // valid-until is 3 voting intervals (15 s) after the last consensus; the grace 6 (30 s).
    let client = net.dir.join("client");
    crate::support::wait_status(&client, "directory.consensus~grace", Duration::from_secs(150), "the client in the grace");
    let log = net.node_log("client");
    assert!(log.contains(IN_GRACE), "the client never said it is using an expired consensus:\n{}", net.log_tail(20));
    let resp = fetch_as(&net, &server, "in-grace").unwrap_or_else(|c| panic!("a new circuit in the grace: reply {c}"));
    assert!(resp.ends_with(server.file("/1k")), "a new circuit works during the grace");
    crate::support::wait_status(&client, "directory.consensus~none", Duration::from_secs(150), "the grace over");
    let log = net.node_log("client");
    assert!(log.contains(GRACE_OVER), "the client kept an expired consensus beyond the grace:\n{}", net.log_tail(20));
    assert_eq!(fetch_as(&net, &server, "after").unwrap_err(), 1, "after the grace: SOCKS general failure");
}
