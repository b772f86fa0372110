//! Consensus flow- and congestion-control parameters reach both ends of every circuit: with a
//! circuit window, increment, XOFF threshold and initial congestion window far from the
//! defaults voted by the authorities, a 10 MB transfer still arrives byte for byte. (Were an
//! exit to keep the default window, it would overrun the client's smaller receive window, and
//! were it to keep the default increment, its SENDME tokens would be out of place: either way
//! the client would destroy the circuit.) And an exit starts a circuit at the initial
//! congestion window the client sent it, not at its own default.

use std::time::Duration;

use allium_client::circuit;
use allium_net::limits::memquota::CELL_MEM;
use allium_net::pool::ChannelPool;
use allium_proto::congestion::{CcParams, CWND_INIT};
use allium_proto::flow::FlowParams;
use tokio::io::AsyncWriteExt;

use crate::support::http::{http_get_via_socks, pseudo_random, FileServer};
use crate::support::inproc::start_relay;
use crate::support::streams::begin_small_buffers;
use crate::support::testnet::Testnet;

#[test]
fn consensus_flow_windows_are_used_by_both_ends() {
    let file = pseudo_random(10_000_000, 7);
    let server = FileServer::start(vec![("/10m", file.clone())]);
    let params = ["circuit-window=300", "circuit-sendme-inc=30", "stream-xoff=120", "cc-cwnd-init=60", "cc-vegas-alpha=20", "cc-vegas-beta=40", "cc-vegas-gamma=20", "cc-vegas-delta=60"];
    let args: Vec<&str> = params.iter().flat_map(|p| ["--param", p]).collect();
    let net = Testnet::start(&args);
    let consensus = std::fs::read_to_string(net.dir.join("client").join("cached-consensus")).expect("the client saved its consensus");
    let header = consensus.lines().find(|l| l.starts_with("params ")).expect("params line");
    for p in params {
        assert!(header.split(' ').any(|kv| kv == p), "the consensus carries {p}: {header}");
    }
    let body = http_get_via_socks(net.socks, "127.0.0.1", server.addr().port(), "/10m").unwrap_or_else(|e| panic!("GET /10m: {e:?}\n{}", net.log_tail(20)));
    assert!(body == file, "10 MB arrived changed or short ({} bytes)", body.len());
    assert!(!net.node_log("client").contains("relay broke the protocol"), "no circuit was destroyed for a flow-control violation");
}

/// The initial congestion window a client sends in its CREATE is the one the exit sends with.
/// The client asks for 1,200 cells (the default is 500) and an increment of 100, and its
/// application reads nothing: the client consumes only the few cells its tiny socket buffers
/// take, fewer than an increment, so it sends no SENDME and the exit can send only its first
/// window. The client comes to hold over 900 unconsumed cells, which an exit starting at its
/// own default (or at the two increments a window never goes below) could never send, and
/// never more than the 1,200 it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_starts_at_the_initial_window_the_client_sent() {
    const ASKED: u32 = 1_200;
    const INC: u32 = 100;
    assert!(CWND_INIT.max(2 * INC) < 900, "the default would reach the bound");
    let files = FileServer::start(vec![("/big", pseudo_random(4 << 20, 55))]);
    let (guard, _) = start_relay("cwndg", "").await;
    let (exit, _) = start_relay("cwnde", "[exit]\nenabled = true\npolicy = [\"accept *:*\"]\n").await;
    let pool = ChannelPool::new("127.0.0.1".parse().unwrap(), None);
    let flow = FlowParams { circuit_sendme_inc: INC, xoff_cells: 3_000, cc: CcParams { cwnd_init: ASKED, ..CcParams::default() }, ..FlowParams::default() };
    let c = circuit::build_within(&pool, &[&guard, &exit], Duration::from_secs(60), flow).await.expect("a circuit");
    let mut app = begin_small_buffers(&c, files.addr()).await.expect("CONNECTED");
    app.write_all(b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
    let held = pool.mem_quota();
    let want = 900 * CELL_MEM;
    let holds = tokio::time::timeout(Duration::from_secs(60), held.wait_until(|q| q.used() >= want)).await;
    assert!(holds.is_ok(), "the client holds only {} cells: the exit did not start at the window it was sent", held.used() / CELL_MEM);
    assert!(held.used() <= ASKED as usize * CELL_MEM, "the client holds {} cells, more than the {ASKED} it allowed", held.used() / CELL_MEM);
    drop(app);
}
