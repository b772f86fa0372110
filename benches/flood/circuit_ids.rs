//! THREATS A30 (chosen circuit ids): a peer picks the ids of the circuits it opens, and a link
//! keeps them in a table keyed by id. Ids an attacker would choose against an unkeyed hash
//! (equal low 12 bits, Tor's TROVE-2021-005) are timed against random ids, through a real link
//! on loopback and the table `Channel::accept_circuit` fills. A keyed hash takes as long for
//! both; an unkeyed one would take orders of magnitude longer for the chosen ids.

use std::time::Instant;

use allium_net::channel::Channel;
use allium_net::limits::memquota::MemQuota;
use allium_net::link::{self, PeerInfo};
use allium_proto::ids::RelayId;
use rand::RngCore;

/// Circuit ids inserted per kind.
const IDS: u32 = 100_000;

/// Prints how long 100,000 chosen and 100,000 random ids take to enter one link's table (and
/// leave it).
pub async fn run() {
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback listener");
    let peer = PeerInfo { addr: listener.local_addr().unwrap(), identity: RelayId([7; 32]), link_key: x25519_dalek::PublicKey::from(&secret).to_bytes() };
    let accepting = tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("a connection");
        link::accept(s, &secret.to_bytes()).await.expect("the link handshake")
    });
    let _ours = link::connect("127.0.0.1".parse().unwrap(), &peer, None).await.expect("a link");
    let theirs = Channel::spawn(accepting.await.unwrap(), None, &MemQuota::default_budget());
    let chosen: Vec<u32> = (0..IDS).map(|i| 0x8000_0000 | (i << 12)).collect();
    let random: Vec<u32> = (0..IDS).map(|_| rand::rngs::OsRng.next_u32() | 0x8000_0000).collect();
    let mut line = Vec::new();
    for (what, ids) in [("chosen (equal low 12 bits)", &chosen), ("random", &random)] {
        let started = Instant::now();
        let queues: Vec<_> = ids.iter().map(|&id| theirs.accept_circuit(id)).collect();
        let held = theirs.n_circuits();
        for &id in ids {
            theirs.close_circuit(id);
        }
        drop(queues);
        line.push(format!("{what} {:.0} ms ({held} held)", started.elapsed().as_secs_f64() * 1e3));
    }
    println!("\nA30: {IDS} circuit ids into one link's table and out again, {}", line.join("; "));
}
