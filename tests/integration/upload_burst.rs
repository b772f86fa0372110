//! Issue 18 point 3: 500 relays upload their descriptors to the authorities at the same instant
//! (a 500-relay simulation had 157 uploads time out); every upload is accepted within the
//! relays' upload time-out, so every relay is in the next consensus. `cargo bench --bench
//! uploads` runs the same burst and prints its latencies.

use std::net::SocketAddr;

use crate::support::testnet::Testnet;

#[path = "../../benches/common/dir_http.rs"]
mod dir_http;
#[path = "../../benches/common/upload_burst.rs"]
mod upload_burst;

#[test]
fn five_hundred_relays_uploading_at_once_are_all_accepted() {
    let net = Testnet::start(&[]);
    let auths: Vec<SocketAddr> = net.with_role("authority").map(|n| n.addr).collect();
    let results = upload_burst::all_at_once(&auths, 500, allium_directory::publish::PUBLISH_TIMEOUT);
    assert_eq!(results.len(), 500 * auths.len());
    let refused: Vec<&Result<u16, String>> = results.iter().map(|(_, r)| r).filter(|r| !matches!(r, Ok(200))).collect();
    assert!(refused.is_empty(), "{} of {} uploads not accepted within the relays' time-out: {:?}", refused.len(), results.len(), &refused[..refused.len().min(10)]);
}
