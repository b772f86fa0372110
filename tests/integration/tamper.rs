//! THREATS A14: a relay that alters relay cells gets the circuit destroyed, and no altered byte
//! reaches the application.

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::http::{pseudo_random, FileServer};
use crate::support::socks::socks5_connect;
use crate::support::testnet::Testnet;

/// Every relay flips one byte of each relay cell it forwards after the first 100 on a circuit
/// (a test-only hook). The testnet's probe stream stays under that; a 10 MB download does not.
#[test]
fn a14_flipped_byte_destroys_the_circuit_and_nothing_altered_arrives() {
    let file = pseudo_random(10_000_000, 6);
    let server = FileServer::start(vec![("/10m", file.clone())]);
    let net = Testnet::start(&["--dangerous-test-corrupt-after", "100"]);
    let mut s = socks5_connect(net.socks, "127.0.0.1", server.addr().port(), None).expect("CONNECT");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(b"GET /10m HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    // The stream ends early: cleanly or with a reset, either is fine.
    let _ = s.read_to_end(&mut resp);
    let body = match resp.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &resp[i + 4..],
        None => &[][..],
    };
    assert!(body.len() < file.len(), "the whole file arrived although relays altered cells");
    assert_eq!(body, &file[..body.len()], "an altered byte reached the application");
    // The circuit was destroyed for failing authentication: by the client (a cell toward it was
    // altered) or by the exit (a cell toward it was altered).
    let logs: String = ["client", "exit1", "exit2"]
        .iter()
        .map(|n| std::fs::read_to_string(net.dir.join(n).join("log")).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("relay cell failed authentication"),
        "no node reported a relay cell failing authentication; client log:\n{}",
        crate::support::tail(&net.dir.join("client").join("log"), 20)
    );
}
