//! Many relays uploading their descriptors to the authorities at the same instant (issue 18
//! point 3): `n` descriptors signed by fresh identities (relay `i` at 127.200.x.y:9001, no
//! exit), each posted from its own source address in 127.201.0.0/16 (as separate hosts would)
//! to every authority. Used by `cargo bench --bench uploads` (500 relays) and the integration
//! test `upload_burst`. Traffic stays on 127.0.0.0/8.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::dir_http;

/// Posts the descriptors of relays `relays` (indices) at once to each of `auths`, each waiting
/// at most `timeout` for its answer; per upload (relay by relay, one per authority in order):
/// how long it took and the HTTP status, or what went wrong.
pub fn all_at_once(auths: &[SocketAddr], relays: &[usize], timeout: Duration) -> Vec<(Duration, Result<u16, String>)> {
    let published = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let bodies: Vec<(usize, String)> = relays.iter().map(|&i| (i, descriptor(i, published))).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(relays.len() * auths.len()));
        let tasks: Vec<_> = bodies
            .into_iter()
            .flat_map(|(i, body)| auths.iter().map(move |a| (i, *a, body.clone())))
            .map(|(i, auth, body)| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let start = Instant::now();
                    let r = match tokio::time::timeout(timeout, post(source(i), auth, &body)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
                    };
                    (start.elapsed(), r)
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("upload task"));
        }
        out
    })
}

/// Relay `i`'s signed descriptor: a fresh identity, OR port at 127.200.x.y:9001, no exit.
fn descriptor(i: usize, published: u64) -> String {
    let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 200, (i / 250) as u8, (i % 250 + 1) as u8)), 9001);
    dir_http::relay_descriptor(&format!("up{i}"), address, published)
}

/// Relay `i`'s own source address.
fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 201, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// POSTs one descriptor from `from`; the HTTP status, or what went wrong.
async fn post(from: IpAddr, to: SocketAddr, body: &str) -> Result<u16, String> {
    dir_http::request(from, to, "POST", "/allium/v1/descriptor", body.as_bytes()).await.map(|(status, _)| status)
}
