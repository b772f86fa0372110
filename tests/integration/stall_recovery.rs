//! A relay that stops forwarding in the middle of a circuit (test hook: every relay forwards 40
//! relay cells toward the exit on each circuit, then drops every later relay cell): the client
//! ends the stalled download within its stall timeout, gives up a BEGIN that gets no CONNECTED
//! and retries it on another circuit, and the circuit takes no new streams
//! (client/src/recovery.rs; docs/PROTOCOL.md, "Stream timeouts").

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use crate::support::http::{http_get_via_socks_as, pseudo_random, FileServer};
use crate::support::socks::socks5_connect;
use crate::support::testnet::Testnet;

#[test]
fn client_recovers_from_a_relay_that_stops_forwarding() {
    let file = pseudo_random(10_000_000, 17);
    let small = pseudo_random(1024, 18);
    let server = FileServer::start(vec![("/10m", file.clone()), ("/1k", small.clone())]);
    let port = server.addr().port();
    // 40 cells toward the exit: the circuit build, BEGIN and GET fit; the SENDMEs of a 10 MB
    // download do not, so the exit runs out of window and the download stops for good.
    let net = Testnet::start(&["--dangerous-test-stop-forwarding-after", "40"]);
    let user = Some(("stalls", "pw"));
    let client_log = || net.node_log("client");
    let client_tail = || crate::support::tail(&net.dir.join("client").join("log"), 30);

    // A: the download stops part-way. Read until 3 s pass without a byte.
    let mut a = socks5_connect(net.socks, "127.0.0.1", port, user).expect("CONNECT for the download");
    a.write_all(b"GET /10m HTTP/1.0\r\n\r\n").unwrap();
    a.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match a.read(&mut buf) {
            Ok(0) => panic!("the download ended before it stalled ({} bytes)", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("reading the download: {e}"),
        }
    }
    assert!(got.len() < file.len(), "the whole file arrived: the relays kept forwarding");

    // B: a new stream of the same class takes the same circuit, whose relay now drops its
    // BEGIN. The client gives it up after 10 s and retries on another circuit, where it works.
    let b = http_get_via_socks_as(net.socks, user, "127.0.0.1", port, "/1k");
    assert_eq!(b.as_deref().ok(), Some(&small[..]), "the stream on a dead circuit was not retried elsewhere: {b:?}; client log:\n{}", client_tail());

    // A again: the client ends the stalled download (20 s without progress while DATA was
    // owed) and closes the application's socket: the read ends, it does not time out.
    a.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let ended = loop {
        match a.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break Err("still open after 90 s"),
            Err(_) => break Ok(()), // a reset also tells the application
        }
    };
    assert_eq!(ended, Ok(()), "the stalled download was never ended; client log:\n{}", client_tail());
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP header arrived") + 4;
    assert!(file.starts_with(&got[body_at..]), "the bytes that arrived are not the file's beginning");

    let log = client_log();
    assert_eq!(log.matches("got no CONNECTED within 10 s").count(), 1, "one BEGIN timeout, logged once; client log:\n{}", client_tail());
    assert_eq!(log.matches("while data was owed: ending it").count(), 1, "one stall, logged once; client log:\n{}", client_tail());

    // C: the class's streams now go elsewhere at once (the dead circuit takes no new streams).
    let c = http_get_via_socks_as(net.socks, user, "127.0.0.1", port, "/1k");
    assert_eq!(c.as_deref().ok(), Some(&small[..]), "{c:?}");
    assert_eq!(client_log().matches("got no CONNECTED").count(), 1, "a later stream went to the retired circuit");

    // Counted where an operator looks: `allium status` of the client.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_allium")).args(["status", "--json", "--data-dir"]).arg(net.dir.join("client")).output().expect("run allium status");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let r = &status["recovery"];
    assert_eq!((r["begin_timeouts"].as_u64(), r["stalled_streams"].as_u64()), (Some(1), Some(1)), "{status}");
    assert!(r["circuits_retired"].as_u64() >= Some(1), "{status}");
}
