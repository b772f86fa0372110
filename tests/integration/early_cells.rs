//! THREATS A16: RELAY_EARLY bounds circuit length without telling a relay where it sits. Relays
//! run in this process (real TCP on loopback, real links and handshakes).

use std::net::IpAddr;
use std::time::Duration;

use allium_client::circuit::{self, CircError};
use allium_net::link::PeerInfo;
use allium_net::pool::ChannelPool;
use allium_proto::cell::{self, Cell, CellCmd, DestroyReason, MAX_PATH_LEN, PAYLOAD_LEN};
use allium_proto::crypto::cell_crypto::ClientCrypto;
use allium_proto::crypto::ntor::{self, HTYPE_NTOR};
use allium_proto::doc::ConsensusRelay;
use allium_proto::ext::Extensions;
use allium_proto::relay_msg::{encode_plaintexts, ExtendTarget, RelayMsg, RELAY_PLAINTEXT_LEN};
use allium_relay::test_hooks::creates_seen;

/// Starts relay `name` on 127.0.0.1 in this process and returns how to reach it.
async fn start_relay(name: &str) -> ConsensusRelay {
    crate::support::inproc::start_relay(name, "").await.0
}

fn pool() -> ChannelPool {
    ChannelPool::new(IpAddr::from([127, 0, 0, 1]), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a16_circuits_longer_than_the_limit_are_refused() {
    let relays = [start_relay("hop1").await, start_relay("hop2").await, start_relay("hop3").await];
    let pool = pool();
    // A → B → C → A → …: never extending to itself or straight back.
    let path = |n: usize| (0..n).map(|i| &relays[i % 3]).collect::<Vec<_>>();
    let ok = circuit::build(&pool, &path(MAX_PATH_LEN)).await;
    assert!(ok.is_ok(), "a {MAX_PATH_LEN}-hop circuit should build: {:?}", ok.err());
    match circuit::build(&pool, &path(MAX_PATH_LEN + 1)).await {
        Err(CircError::Destroyed(DestroyReason::Protocol)) => {}
        other => panic!("a {}-hop circuit must be refused with DESTROY(PROTOCOL), got {:?}", MAX_PATH_LEN + 1, other.err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a16_relays_at_every_position_receive_the_same_create() {
    let relays = [start_relay("pos1").await, start_relay("pos2").await, start_relay("pos3").await, start_relay("pos4").await];
    let c = circuit::build(&pool(), &relays.iter().collect::<Vec<_>>()).await.expect("a 4-hop circuit builds");
    let seen: Vec<_> = relays.iter().map(|r| creates_seen(&r.identity)).collect();
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.len(), 1, "relay at position {} received one CREATE", i + 1);
    }
    assert!(seen.iter().all(|s| s[0] == seen[0][0]), "CREATE headers differ by position: {seen:?}");
    drop(c);
}

/// A one-hop circuit opened by hand to `first`, with its crypto and cell queue.
async fn one_hop(pool: &ChannelPool, first: &ConsensusRelay) -> (allium_net::channel::Channel, u32, allium_net::cell_queue::CellReceiver, ClientCrypto) {
    let chan = pool.get(&PeerInfo { addr: first.address, identity: first.identity, link_key: first.link_key }).await.expect("link");
    let (id, mut rx) = chan.open_circuit().expect("circuit id");
    let mut ext = Vec::new();
    Extensions::none().encode(&mut ext);
    let (state, msg) = ntor::client_start(&mut rand::rngs::OsRng, &first.identity, &first.onion_key, &ext);
    for c in cell::create_cells(id, HTYPE_NTOR, &msg) {
        chan.send(c).await.expect("send CREATE");
    }
    let created = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("CREATED in time").expect("CREATED");
    assert_eq!(created.cmd, CellCmd::Created);
    let (len, first_bytes) = cell::parse_created(&created.payload).unwrap();
    assert_eq!(len, first_bytes.len(), "an ntor reply fits one cell");
    let (keys, _) = state.finish(first_bytes).expect("handshake");
    let mut crypto = ClientCrypto::new();
    crypto.add_hop(&keys);
    (chan, id, rx, crypto)
}

/// Sends an EXTEND from `first` to `second` in a cell with command `cmd`; returns the first
/// cell that comes back.
async fn extend_in(cmd: CellCmd, first: &ConsensusRelay, second: &ConsensusRelay) -> Cell {
    let pool = pool();
    let (chan, id, mut rx, mut crypto) = one_hop(&pool, first).await;
    let mut ext = Vec::new();
    Extensions::none().encode(&mut ext);
    let (_, hdata) = ntor::client_start(&mut rand::rngs::OsRng, &second.identity, &second.onion_key, &ext);
    let target = ExtendTarget { addr: second.address, identity: second.identity.0, link_key: second.link_key };
    let msg = RelayMsg::Extend { target, htype: HTYPE_NTOR, hdata, ext: Extensions::none() };
    for pt in encode_plaintexts(0, &msg) {
        let mut body = [0u8; PAYLOAD_LEN];
        body[..RELAY_PLAINTEXT_LEN].copy_from_slice(&pt);
        crypto.encrypt_outbound(0, &mut body).unwrap();
        chan.send(Cell { circ_id: id, cmd, payload: body }).await.expect("send EXTEND");
    }
    tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("an answer in time").expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a16_an_extend_outside_relay_early_is_refused() {
    let (a, b) = (start_relay("plaina").await, start_relay("plainb").await);
    let refused = extend_in(CellCmd::Relay, &a, &b).await;
    assert_eq!(refused.cmd, CellCmd::Destroy, "an EXTEND in a plain RELAY cell is refused");
    assert_eq!(DestroyReason::from_u8(refused.payload[0]), DestroyReason::Protocol);
    let extended = extend_in(CellCmd::RelayEarly, &a, &b).await;
    assert_eq!(extended.cmd, CellCmd::Relay, "the same EXTEND in RELAY_EARLY is answered (EXTENDED)");
}
