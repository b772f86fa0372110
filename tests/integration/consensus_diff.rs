//! Consensus diffs (issue 13 point 6): a client that holds the previous consensus fetches the
//! next one as a diff from its guard's cache, applies it and verifies the result (its status
//! counts diffs applied; a diff that failed to apply or verify would have fallen back to the
//! whole document and not counted), and the result is the consensus the authorities publish.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::testnet::Testnet;

#[test]
fn a_client_holding_the_previous_consensus_fetches_a_diff_that_verifies() {
    let net = Testnet::start(&[]);
    let status = || -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_allium")).args(["status", "--json", "--data-dir"]).arg(net.dir.join("client")).output().expect("run allium status");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let first = status();
    let first_valid_after = first["consensus"]["valid_after"].as_u64();
    // The test network votes every 10 s; the client refetches a few seconds after fresh-until.
    let deadline = Instant::now() + Duration::from_secs(90);
    let now = loop {
        let s = status();
        if s["consensus_diffs"].as_u64().is_some_and(|n| n >= 1) {
            break s;
        }
        assert!(Instant::now() < deadline, "no consensus fetched as a diff within 90 s: {s}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_ne!(now["consensus"]["valid_after"].as_u64(), first_valid_after, "a newer consensus: {first} then {now}");
    assert_eq!(now["relays_in_consensus"].as_u64(), Some(5), "{now}");
}
