//! Consensus diffs (issue 13 point 6): a client that holds the previous consensus fetches the
//! next one as a diff from its guard's cache, applies it and verifies the result (its status
//! counts diffs applied; a diff that failed to apply or verify would have fallen back to the
//! whole document and not counted), and the result is the consensus the authorities publish.

use std::time::Duration;

use crate::support::testnet::Testnet;

#[test]
fn a_client_holding_the_previous_consensus_fetches_a_diff_that_verifies() {
    let net = Testnet::start(&[]);
    let client = net.dir.join("client");
    let first = crate::support::status_json(&client);
    let first_valid_after = first["consensus"]["valid_after"].as_u64();
    // The test network votes every 10 s; the client refetches a few seconds after fresh-until.
    let now = crate::support::wait_status(&client, "consensus_diffs>=1", Duration::from_secs(90), "a consensus fetched as a diff");
    assert_ne!(now["consensus"]["valid_after"].as_u64(), first_valid_after, "a newer consensus: {first} then {now}");
    assert_eq!(now["relays_in_consensus"].as_u64(), Some(5), "{now}");
}
