//! Circuits built ahead of need for the ports streams used (client/src/predicted.rs): after a
//! stream to a port other than 80 and 443, the client's `allium status` lists that port among
//! those it keeps clean circuits for, and a new isolation class then takes one of them.

use std::time::Duration;

use crate::support::http::{http_get_via_socks_as, pseudo_random, FileServer};
use crate::support::testnet::Testnet;

#[test]
fn a_used_port_gets_circuits_built_ahead() {
    let file = pseudo_random(1000, 11);
    let server = FileServer::start(vec![("/1k", file.clone())]);
    let port = server.addr().port();
    let net = Testnet::start(&[]);
    let get = |class: &str| http_get_via_socks_as(net.socks, Some((class, "x")), "127.0.0.1", port, "/1k");
    assert_eq!(get("first").as_deref().ok(), Some(&file[..]));

    // The client's status (a metric, not a log line) says when a clean circuit for the port is ready.
    let ready = crate::support::wait_status(&net.dir.join("client"), &format!("circuits_ready.{port}>=1"), Duration::from_secs(60), "a clean circuit for the port");
    assert!(ready["circuits_ready"]["80"].is_u64() && ready["circuits_ready"]["443"].is_u64(), "{ready}");

    let log = net.dir.join("client").join("log");
    let mark = std::fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
    assert_eq!(get("second").as_deref().ok(), Some(&file[..]));
    let text = std::fs::read_to_string(&log).unwrap();
    let streams: Vec<&str> = text[mark..].lines().filter(|l| l.contains("stream on circuit #")).collect();
    assert!(streams.len() == 1 && streams[0].contains("(prebuilt)"), "the new class did not take a circuit built ahead: {streams:?}");
}
