//! Links over real loopback TCP: cells are coalesced into large writes, an impostor without the
//! listed link key fails the handshake, and a client presents no identity.
//! (Its own test binary, because it reads the process-wide write counters.)

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use allium_net::channel::{Channel, CreateHandler, LINK_STATS};
use allium_net::keys::NodeKeys;
use allium_net::link::{self, LinkError, PeerInfo, RelayCredentials};
use allium_proto::cell::{Cell, CellCmd, CELL_LEN};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn keys(seed: u8) -> NodeKeys {
    NodeKeys {
        identity: ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
        onion: x25519_dalek::StaticSecret::from([seed.wrapping_add(1); 32]),
        link: x25519_dalek::StaticSecret::from([seed.wrapping_add(2); 32]),
    }
}

/// Forwards every cell of the first circuit the peer creates to a test channel.
struct Sink(mpsc::UnboundedSender<Cell>);

impl CreateHandler for Sink {
    fn on_create(&self, chan: &Channel, cell: Cell) {
        let mut rx = chan.accept_circuit(cell.circ_id);
        let tx = self.0.clone();
        let _ = tx.send(cell);
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                if tx.send(c).is_err() {
                    break;
                }
            }
        });
    }
}

async fn responder(k: &NodeKeys) -> (std::net::SocketAddr, tokio::task::JoinHandle<Result<link::Link, LinkError>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let secret = k.link.to_bytes();
    let task = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        link::accept(s, &secret).await
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_are_coalesced_into_large_writes() {
    let (server, client) = (keys(1), keys(9));
    let (addr, task) = responder(&server).await;
    let peer = PeerInfo { addr, identity: server.relay_id(), link_key: server.link_public() };
    let creds = RelayCredentials::new(&client);
    let out = link::connect("127.0.0.1".parse().unwrap(), &peer, Some(&creds)).await.unwrap();
    let inbound = task.await.unwrap().unwrap();
    assert_eq!(inbound.peer, Some(client.relay_id()), "a relay initiator proves its identity");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _server_chan = Channel::spawn(inbound, Some(Arc::new(Sink(tx))), &allium_net::limits::memquota::MemQuota::default_budget());
    let chan = Channel::spawn(out, None, &allium_net::limits::memquota::MemQuota::default_budget());
    let (id, _rx) = chan.open_circuit().unwrap();

    const CELLS: usize = 4 * 2040; // about 4 MB
    let before = LINK_STATS.write_calls.load(Ordering::Relaxed);
    // Like flow control: at most 1,000 cells in flight (below the receiver's queue cap, CIRCUIT_QUEUE_CAP).
    let window = Arc::new(tokio::sync::Semaphore::new(1000));
    let sender = tokio::spawn({
        let chan = chan.clone();
        let window = window.clone();
        async move {
            chan.send(Cell::with_payload(id, CellCmd::Create, &[0, 1, 7, 0, 0])).await.unwrap();
            for i in 1..CELLS {
                window.acquire().await.unwrap().forget();
                let mut c = Cell::new(id, CellCmd::Relay);
                c.payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
                chan.send(c).await.unwrap();
            }
        }
    });
    for i in 0..CELLS {
        let c = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("cells arrive").unwrap();
        window.add_permits(1);
        if i > 0 {
            assert_eq!(u64::from_be_bytes(c.payload[..8].try_into().unwrap()), i as u64, "cells arrive in order");
        }
    }
    sender.await.unwrap();
    let writes = LINK_STATS.write_calls.load(Ordering::Relaxed) - before;
    let mb = (CELLS * CELL_LEN) as f64 / 1e6;
    let per_mb = writes as f64 / mb;
    println!("{writes} write calls for {mb:.1} MB: {per_mb:.1} writes per MB (one per cell would be {:.0})", 1e6 / CELL_LEN as f64);
    assert!(per_mb < 200.0, "cells are not coalesced: {per_mb:.0} writes per MB");
}

#[tokio::test]
async fn a11_impostor_without_the_link_key_fails() {
    let (real, impostor) = (keys(1), keys(5));
    // The impostor listens where the relay should be, with its own keys.
    let (addr, task) = responder(&impostor).await;
    let peer = PeerInfo { addr, identity: real.relay_id(), link_key: real.link_public() };
    let r = link::connect("127.0.0.1".parse().unwrap(), &peer, None).await;
    assert!(matches!(r, Err(LinkError::PeerNoise(_)) | Err(LinkError::Io(_))), "impostor accepted: {:?}", r.err());
    assert!(task.await.unwrap().is_err());
}

#[tokio::test]
async fn client_presents_no_identity() {
    let server = keys(1);
    let (addr, task) = responder(&server).await;
    let peer = PeerInfo { addr, identity: server.relay_id(), link_key: server.link_public() };
    let l = link::connect("127.0.0.1".parse().unwrap(), &peer, None).await.unwrap();
    assert_eq!(l.peer, Some(server.relay_id()));
    let inbound = task.await.unwrap().unwrap();
    assert_eq!(inbound.peer, None);
    assert_eq!(inbound.version, 1);
}

/// THREATS A1: junk after the handshake, or a transport message that is not whole cells, closes
/// the link (and only that link).
#[tokio::test]
async fn a1_junk_or_partial_cells_close_the_link() {
    use tokio::io::AsyncWriteExt;
    for junk_kind in ["raw junk", "partial cell"] {
        let server = keys(1);
        let (addr, task) = responder(&server).await;
        let peer = PeerInfo { addr, identity: server.relay_id(), link_key: server.link_public() };
        let mut out = link::connect("127.0.0.1".parse().unwrap(), &peer, None).await.unwrap();
        let chan = Channel::spawn(task.await.unwrap().unwrap(), None, &allium_net::limits::memquota::MemQuota::default_budget());
        assert!(!chan.is_closed());
        let bytes = if junk_kind == "raw junk" {
            let mut v = vec![0x01, 0x00];
            v.extend_from_slice(&[0x5a; 256]);
            v
        } else {
            let mut frame = vec![0u8; 200];
            let n = out.transport.write_message(0, &[7u8; 100], &mut frame).unwrap();
            let mut v = (n as u16).to_be_bytes().to_vec();
            v.extend_from_slice(&frame[..n]);
            v
        };
        out.stream.write_all(&bytes).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), chan.closed()).await.unwrap_or_else(|_| panic!("{junk_kind}: link still open"));
    }
}

/// A DESTROY is never lost when the link's cell queue is full: it has its own queue, written
/// first. (Before, DESTROY was `try_send` on the cell queue and silently dropped, leaving the
/// peer's circuit open forever: later streams on it timed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_is_delivered_when_the_cell_queue_is_full() {
    use allium_proto::cell::DestroyReason;
    let (server, client) = (keys(3), keys(7));
    let (addr, task) = responder(&server).await;
    let peer = PeerInfo { addr, identity: server.relay_id(), link_key: server.link_public() };
    let out = link::connect("127.0.0.1".parse().unwrap(), &peer, Some(&RelayCredentials::new(&client))).await.unwrap();
    // The peer does not read yet: its link is not running.
    let inbound = task.await.unwrap().unwrap();
    let chan = Channel::spawn(out, None, &allium_net::limits::memquota::MemQuota::default_budget());
    let (id, _rx) = chan.open_circuit().unwrap();
    chan.send(Cell::with_payload(id, CellCmd::Create, &[0, 1, 7, 0, 0])).await.unwrap();
    // Fill the kernel buffers and the writer's queue with cells of a circuit the peer never
    // opened (it drops them), until a send has waited a whole second.
    let filler = id + 1;
    let mut queued = 0usize;
    while tokio::time::timeout(Duration::from_secs(1), chan.send(Cell::new(filler, CellCmd::Relay))).await.is_ok() {
        queued += 1;
        assert!(queued < 1_000_000, "the link never filled");
    }
    assert!(chan.try_send(Cell::new(filler, CellCmd::Relay)).is_err(), "the cell queue is full");
    chan.destroy(id, DestroyReason::Finished);
    assert!(!chan.is_closed(), "one DESTROY does not close the link");
    // Now the peer reads: it sees the CREATE, then the DESTROY.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _server_chan = Channel::spawn(inbound, Some(Arc::new(Sink(tx))), &allium_net::limits::memquota::MemQuota::default_budget());
    let first = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("CREATE arrives").unwrap();
    assert_eq!(first.cmd, CellCmd::Create);
    let next = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("DESTROY arrives").unwrap();
    assert_eq!((next.cmd, next.circ_id, next.payload[0]), (CellCmd::Destroy, first.circ_id, DestroyReason::Finished as u8));
}

/// A link that carried cells and then went quiet frees its writer's and reader's buffers after
/// `IDLE_FREE` (links between relays stay open an hour without circuits), and carries cells
/// again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_links_free_their_buffers_and_still_work() {
    let (server, client) = (keys(2), keys(8));
    let (addr, task) = responder(&server).await;
    let peer = PeerInfo { addr, identity: server.relay_id(), link_key: server.link_public() };
    let out = link::connect("127.0.0.1".parse().unwrap(), &peer, Some(&RelayCredentials::new(&client))).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let quota = allium_net::limits::memquota::MemQuota::default_budget();
    let _server_chan = Channel::spawn(task.await.unwrap().unwrap(), Some(Arc::new(Sink(tx))), &quota);
    let chan = Channel::spawn(out, None, &quota);
    let (id, _rx) = chan.open_circuit().unwrap();
    let before = LINK_STATS.idle_buffer_frees.load(Ordering::Relaxed);
    chan.send(Cell::with_payload(id, CellCmd::Create, &[0, 1, 7, 0, 0])).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("the CREATE arrives").unwrap();
    // Our writer and the other end's reader both went quiet: both free their buffers.
    let freed = tokio::time::timeout(Duration::from_secs(30), LINK_STATS.wait_idle_buffer_frees(before + 2)).await;
    assert!(freed.is_ok(), "a quiet link kept its buffers");
    let mut c = Cell::new(id, CellCmd::Relay);
    c.payload[0] = 42;
    chan.send(c).await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("a cell after the buffers were freed").unwrap();
    assert_eq!(again.payload[0], 42);
}
