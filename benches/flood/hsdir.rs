//! Junk onion descriptors against one HSDir (issue 12's table: 10,000 self-signed descriptors
//! in a few seconds had filled an HSDir, which then answered 503 to real services). Every junk
//! descriptor is valid: a fresh service key blinded for the current period, signed. They go up
//! over BEGIN_DIR streams on one-hop circuits from one attacker address, 8 circuits at once;
//! meanwhile a real service uploads a descriptor of its own every second and checks it can be
//! fetched back. Prints the HSDir's RSS, CPU and descriptor count, what the uploads got, and
//! what the real service got.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_client::circuit::{self, CircHandle};
use allium_net::pool::ChannelPool;
use allium_proto::doc::RelayFlags;
use allium_proto::hs::{BlindedKey, HsDescriptor, TimePeriod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{cpu_secs, rss_mib, settle_rss};

/// Junk descriptors uploaded in all.
const JUNK: usize = 10_000;
/// Attacker circuits uploading at once.
const CIRCUITS: usize = 8;
/// Where descriptors go and come from (`relay/src/hsdir.rs`).
const PATH: &str = "/allium/v1/hs/descriptor";

/// Floods an HSDir other than the relays in `attacked` (their memory is not all returned yet).
pub async fn run(net: &crate::support::testnet::Testnet, dir: &allium_directory::NetDir, attacked: &[allium_proto::ids::RelayId]) {
    let Some(target) = dir.relays().iter().find(|r| r.flags.contains(RelayFlags::HSDIR) && !attacked.contains(&r.identity)).cloned() else {
        println!("\nno HSDir left unattacked in the consensus: junk descriptor flood skipped");
        return;
    };
    let node = net.nodes.iter().find(|n| n.addr == target.address).expect("the HSDir's node");
    let (pid, name) = (node.pid, node.name.clone());
    let status = |k: &str| crate::support::status_json(&net.dir.join(&name))[k].as_u64().unwrap_or(0);
    let period = TimePeriod::at(now(), dir.hs_period_secs());

    let attacker = ChannelPool::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 66)), None);
    let honest = ChannelPool::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77)), None);
    let real = circuit::build(&honest, &[&target]).await.expect("the real service's circuit to the HSDir");
    let (before, cpu0, held0) = (rss_mib(pid), cpu_secs(pid), status("onion_descriptors_stored"));

    let stop = Arc::new(AtomicBool::new(false));
    let service = tokio::spawn(real_service(real, period, stop.clone()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CIRCUITS {
        let circ = circuit::build(&attacker, &[&target]).await.expect("an attacker circuit to the HSDir");
        tasks.push(tokio::spawn(async move {
            let mut got = BTreeMap::<String, usize>::new();
            for _ in (c..JUNK).step_by(CIRCUITS) {
                let key = BlindedKey::derive(&ed25519_dalek::SigningKey::generate(&mut rand::thread_rng()), period);
                *got.entry(upload(&circ, &descriptor(&key, period)).await).or_default() += 1;
            }
            got
        }));
    }
    let mut got = BTreeMap::<String, usize>::new();
    let mut rss_during: f64 = 0.0;
    for t in tasks {
        for (k, n) in t.await.expect("upload task") {
            *got.entry(k).or_default() += n;
        }
        rss_during = rss_during.max(rss_mib(pid));
    }
    let secs = started.elapsed().as_secs_f64();
    let held = status("onion_descriptors_stored");
    stop.store(true, Ordering::Relaxed);
    let (stored, fetched, tries) = service.await.expect("real service task");
    let cpu = cpu_secs(pid) - cpu0;
    let after = settle_rss(pid, before).await;
    println!("\njunk onion descriptors against HSDir {name} (pid {pid})");
    println!("| attack | RSS before / during / after (MiB) | HSDir CPU during (s) | descriptors held before / after | attacker got | real service got |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {JUNK} junk descriptors in {secs:.1} s ({:.0}/s) | {before:.1} / {rss_during:.1} / {after:.1} | {cpu:.2} | {held0} / {held} | {got:?} | {stored} of {tries} uploads stored, {fetched} fetched back at once |",
        JUNK as f64 / secs
    );
}

/// Uploads a fresh descriptor of its own every second until `stop`, then fetches the last back:
/// (uploads stored, fetched back, uploads tried).
async fn real_service(circ: CircHandle, period: TimePeriod, stop: Arc<AtomicBool>) -> (usize, usize, usize) {
    let (mut stored, mut fetched, mut tries) = (0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        let key = BlindedKey::derive(&ed25519_dalek::SigningKey::generate(&mut rand::thread_rng()), period);
        tries += 1;
        if upload(&circ, &descriptor(&key, period)).await == "HTTP 200" {
            stored += 1;
            if fetch(&circ, &key.public()).await {
                fetched += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (stored, fetched, tries)
}

fn descriptor(key: &BlindedKey, period: TimePeriod) -> String {
    HsDescriptor { blinded_key: key.public(), period, revision: 1, lifetime_secs: 3600, encrypted: vec![0x5a; 2000] }.encode_signed(key)
}

/// POSTs `body` on a new directory stream; "HTTP <status>" or what went wrong.
async fn upload(circ: &CircHandle, body: &str) -> String {
    exchange(circ, format!("POST {PATH} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}", body.len())).await
}

/// Whether `key`'s descriptor can be fetched back.
async fn fetch(circ: &CircHandle, key: &[u8; 32]) -> bool {
    exchange(circ, format!("GET {PATH}/{} HTTP/1.0\r\n\r\n", hex::encode(key))).await == "HTTP 200"
}

async fn exchange(circ: &CircHandle, request: String) -> String {
    let mut s = match circ.begin_dir().await {
        Ok(s) => s,
        Err(e) => return format!("stream refused ({e:?})"),
    };
    if s.write_all(request.as_bytes()).await.is_err() {
        return "write failed".into();
    }
    let mut resp = Vec::new();
    match tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut resp)).await {
        Ok(Ok(_)) => String::from_utf8_lossy(&resp).split_whitespace().nth(1).map_or("no status".into(), |c| format!("HTTP {c}")),
        Ok(Err(_)) => "read failed".into(),
        Err(_) => "no answer in 30 s".into(),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}
