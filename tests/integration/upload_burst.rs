//! Issue 18 point 3: 500 relays upload their descriptors to the authorities at the same instant
//! (a 500-relay simulation had 157 uploads time out); every relay's descriptor is accepted by
//! a majority of authorities within the relays' upload time-out, so every relay is in the next
//! consensus, and no upload is refused. `cargo bench --bench
//! uploads` runs the same burst and prints its latencies.

use std::net::SocketAddr;

use crate::support::testnet::Testnet;

#[path = "../../benches/common/dir_http.rs"]
mod dir_http;
#[path = "../../benches/common/upload_burst.rs"]
mod upload_burst;

#[test]
fn five_hundred_relays_uploading_at_once_are_all_listed() {
    let net = Testnet::start(&[]);
    let auths: Vec<SocketAddr> = net.with_role("authority").map(|n| n.addr).collect();
    let results = upload_burst::all_at_once(&auths, 500, allium_directory::publish::PUBLISH_TIMEOUT);
    assert_eq!(results.len(), 500 * auths.len());
    // A relay is listed once a majority of authorities holds its descriptor (and retries the
    // others: relay/src/publish.rs); one connection of 1,500 was once reset, which its relay's
    // retry covers, so that is what is checked.
    let majority = auths.len() / 2 + 1;
    let unlisted = results.chunks(auths.len()).filter(|r| r.iter().filter(|(_, r)| matches!(r, Ok(200))).count() < majority).count();
    let refused: Vec<&Result<u16, String>> = results.iter().map(|(_, r)| r).filter(|r| !matches!(r, Ok(200))).collect();
    assert_eq!(unlisted, 0, "{unlisted} of 500 relays not accepted by a majority within the relays' time-out; failed uploads ({} of {}): {:?}", refused.len(), results.len(), &refused[..refused.len().min(10)]);
    assert!(refused.iter().all(|r| !matches!(r, Ok(_))), "an upload was refused by status: {refused:?}");
}
