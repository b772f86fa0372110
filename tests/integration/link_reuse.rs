//! Issue 18 point 2: once relays are up, a circuit's extends go over links the relays keep
//! open between them (opened ahead of need after each consensus), so a build costs its round
//! trips and no link handshake. On a test network whose relays have linked to each other,
//! new circuits for fresh isolation classes are extended over open links only: no relay
//! dials for an EXTEND.

use std::time::Duration;

use crate::support::http::{http_get_via_socks_as, pseudo_random, FileServer};
use crate::support::testnet::Testnet;

/// Per relay, `(open, dialled)` from its status's `extends`.
fn extends(net: &Testnet, relays: &[String]) -> Vec<(u64, u64)> {
    relays
        .iter()
        .map(|r| {
            let s = crate::support::status_json(&net.dir.join(r));
            (s["extends"]["open"].as_u64().expect("extends.open"), s["extends"]["dialled"].as_u64().expect("extends.dialled"))
        })
        .collect()
}

#[test]
fn extends_on_a_running_network_reuse_the_links_between_relays() {
    let server = FileServer::start(vec![("/1k", pseudo_random(1024, 18))]);
    let net = Testnet::start(&[]);
    let relays: Vec<String> = net.nodes.iter().filter(|n| n.role == "relay" || n.role == "exit").map(|n| n.name.clone()).collect();
    // Every relay holds a link to every other one (preconnected, in either direction).
    let others = relays.len() - 1;
    for r in &relays {
        crate::support::wait_status(&net.dir.join(r), &format!("relay_links>={others}"), Duration::from_secs(60), &format!("{r} linked to every other relay"));
    }
    let before = extends(&net, &relays);
    const CIRCUITS: usize = 8;
    for i in 0..CIRCUITS {
        let body = http_get_via_socks_as(net.socks, Some((&format!("reuse{i}"), "x")), "127.0.0.1", server.addr().port(), "/1k");
        assert!(body.as_deref().ok() == Some(server.file("/1k")), "fetch {i}: {body:?}");
    }
    let after = extends(&net, &relays);
    let open: u64 = after.iter().zip(&before).map(|(a, b)| a.0 - b.0).sum();
    let dialled: Vec<(&String, u64)> = relays.iter().zip(after.iter().zip(&before)).map(|(r, (a, b))| (r, a.1 - b.1)).filter(|(_, d)| *d > 0).collect();
    // Fresh classes take circuits the client built ahead and build others meanwhile: some
    // circuits were extended (twice each: guard to middle, middle to exit) in the window.
    assert!(open >= 2, "only {open} extends over open links while {CIRCUITS} fresh classes were served");
    assert!(dialled.is_empty(), "relays dialled for EXTENDs although linked to every relay: {dialled:?}");
}
