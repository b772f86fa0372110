//! Issue 18 point 3: a relay keeps its descriptor fresh at every authority that takes it while
//! another authority is down. An authority keeps a descriptor for `max(3I, 30 s)` after it was
//! published; a relay whose upload round waited for the missing authority before starting the
//! next round would let the others' copies expire, drop out of the consensus and come back
//! only after noticing (a relay "flapping"). Every consensus made meanwhile must list every
//! relay.

use std::time::Duration;

use allium_proto::doc::Consensus;
use rustix::process::{kill_process, Pid, Signal};

use crate::support::testnet::Testnet;

#[test]
fn every_relay_stays_listed_while_one_authority_is_down() {
    // Voting every 5 s: descriptors live 30 s at an authority, relays upload every 10 s.
    let net = Testnet::start(&["--voting-interval", "5"]);
    let relays = net.nodes.iter().filter(|n| n.role == "relay" || n.role == "exit").count();
    let auths: Vec<_> = net.with_role("authority").cloned().collect();
    assert_eq!(auths.len(), 3, "{:?}", net.nodes);
    kill_process(Pid::from_raw(auths[2].pid as i32).expect("pid"), Signal::KILL).expect("kill an authority");
    assert!(crate::support::events::wait_exit(auths[2].pid, Duration::from_secs(20)), "the authority did not exit");
    let down_at = allium_net::keys::unix_now();
    // Each consensus auth1 publishes (and saves) over the next 75 s: more than twice the life
    // of a descriptor uploaded just before the authority went down.
    let mut seen: Vec<(u64, usize)> = Vec::new();
    let done = net.wait_node_file(&auths[0].name, "cached-consensus", Duration::from_secs(150), |text| {
        let c = Consensus::parse(text).ok()?.dangerously_assume_valid();
        if seen.last().map(|s| s.0) != Some(c.valid_after()) {
            seen.push((c.valid_after(), c.relays().len()));
        }
        (c.valid_after() >= down_at + 75).then_some(())
    });
    assert!(done.is_some(), "auth1 made no consensus 75 s after auth3 went down; seen (valid-after, relays): {seen:?}\n{}", net.log_tail(20));
    let made_without = seen.iter().filter(|s| s.0 > down_at + 5).count();
    assert!(made_without >= 8, "only {made_without} consensuses made without auth3: {seen:?}");
    let short: Vec<_> = seen.iter().filter(|s| s.0 > down_at + 5 && s.1 < relays).collect();
    assert!(short.is_empty(), "consensuses that left relays out while an authority was down (valid-after, relays listed of {relays}): {short:?}");
}
