//! One client circuit: built hop by hop, then an owner task that carries streams.
//!
//! The decisions about cells (crypto, reassembly, which hop may send what, pending BEGINs) are
//! the sans-IO [`ClientCircuit`] state machine's (`allium_proto::circuit`); this task feeds it
//! the link's cells and the time, and owns what has I/O: the link's circuit queue, the stream
//! table and the handles' requests. A cell that no hop can authenticate, or any protocol
//! violation, destroys the circuit; nothing from such a cell reaches an application.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_net::channel::Channel;
use allium_net::link::PeerInfo;
use allium_net::pool::ChannelPool;
use allium_net::cell_queue::CellReceiver;
use allium_net::reactor::{self, CircuitEnd, LinkGone, Streams};
use allium_net::stream::{DataStream, Incoming, StreamError, StreamMux};
use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_proto::cell::{Cell, DestroyReason};
use allium_proto::circuit::{ClientCircuit, Event, Fault, HopTarget};
use allium_proto::crypto::kdf::HopKeys;
use allium_proto::doc::ConsensusRelay;
use allium_proto::ext::Extensions;
use allium_proto::flow::FlowParams;
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::{EndReason, ExtendTarget, RelayMsg};
use tokio::sync::{mpsc, oneshot};

/// Most RESOLVEs one circuit has in flight (the exit answers more with RESOURCELIMIT).
const MAX_RESOLVES: usize = 32;

/// Buffer of the in-process pipe behind a directory stream.
const DIR_PIPE_BUFFER: usize = 64 * 1024;

/// How long building a whole circuit may take before it is abandoned.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a circuit failed.
#[derive(Debug, thiserror::Error)]
pub enum CircError {
    #[error("could not open a link to the first hop: {0}")]
    Link(#[from] allium_net::link::LinkError),
    #[error("link closed")]
    Closed,
    #[error("circuit destroyed by a relay ({0:?})")]
    Destroyed(DestroyReason),
    #[error("relay broke the protocol: {0}")]
    Protocol(String),
    #[error("local limit: {0}")]
    Local(&'static str),
    #[error("circuit build timed out ({hops_done} hops had answered)")]
    Timeout {
        /// Hops that had answered when the build was abandoned (0: the guard never did).
        hops_done: usize,
    },
}

/// Most streams waiting for the service's answer (connect) on one rendezvous circuit; more
/// are answered END RESOURCELIMIT.
const MAX_INCOMING_PENDING: usize = 64;

/// Most circuit-level messages waiting for [`CircHandle::recv_control`]; a relay sending more
/// than that unread closes the circuit.
const CONTROL_QUEUE: usize = 64;

mod end;
mod handle;

use end::Circuit;
pub use handle::{BeginRequest, CircHandle, Connected, DirStreamResult, IncomingStream, ResolveRequest};
use handle::{CircRequest, Pending};

/// Builds a circuit through `path` (guard first, at least one hop) and starts its task.
pub async fn build(pool: &ChannelPool, path: &[&ConsensusRelay]) -> Result<CircHandle, CircError> {
    build_within(pool, path, BUILD_TIMEOUT, FlowParams::default()).await
}

/// [`build`] with a caller-chosen timeout (the client's learned one, see `timeout.rs`).
/// and flow-control parameters (sent to every hop, see [`FlowParams`]).
pub async fn build_within(pool: &ChannelPool, path: &[&ConsensusRelay], limit: Duration, flow: FlowParams) -> Result<CircHandle, CircError> {
    let last = *path.last().expect("a path has at least one hop");
    let started = Instant::now();
    let progress = AtomicUsize::new(0);
    let built = tokio::time::timeout(limit, build_inner(pool, path, &progress, flow))
        .await
        .map_err(|_| CircError::Timeout { hops_done: progress.load(Ordering::Relaxed) })
        .and_then(|r| r);
    let metrics = &allium_net::metrics::METRICS;
    let (circ, rx, control_rx) = match built {
        Ok(c) => c,
        Err(e) => {
            metrics.circuits_failed.inc(match e {
                CircError::Timeout { .. } => "timeout",
                CircError::Destroyed(_) => "destroyed",
                CircError::Link(_) | CircError::Closed => "connect",
                CircError::Protocol(_) | CircError::Local(_) => "handshake",
            });
            return Err(e);
        }
    };
    metrics.circuits_opened.inc();
    metrics.circuit_build.observe(started.elapsed());
    let hops: Vec<String> = path.iter().map(|r| r.identity.short()).collect();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if hops.len() == 1 {
        tracing::debug!("one-hop directory circuit to {} ready in {ms:.1} ms", hops[0]);
    } else {
        tracing::debug!("circuit built in {ms:.1} ms through {}", hops.join(" "));
    }
    let (tx, requests) = mpsc::channel(64);
    let mut circ = circ;
    circ.requests = Some(requests);
    let last_keys = Arc::new(circ.machine.last_keys().expect("at least one hop").clone());
    let retired = circ.retired.clone();
    let open = metrics.circuits_open.open();
    tokio::spawn(async move {
        circ.run(rx).await;
        drop(open);
    });
    Ok(CircHandle { tx, exit: Arc::new(last.clone()), built_at: Instant::now(), last_keys, control_rx: Arc::new(tokio::sync::Mutex::new(control_rx)), path: path.iter().map(|r| r.identity).collect(), retired })
}

/// The client data of every hop's handshake: the circuit's flow-control parameters.
fn ext_bytes(flow: FlowParams) -> Vec<u8> {
    let mut v = Vec::new();
    Extensions(vec![flow.to_extension()]).encode(&mut v);
    v
}

/// What the circuit machine needs to add `relay` as a hop.
fn hop_target(relay: &ConsensusRelay) -> HopTarget {
    HopTarget { target: ExtendTarget { addr: relay.address, identity: relay.identity.0, link_key: relay.link_key }, onion_key: relay.onion_key }
}

/// A built circuit, its link queue and the receiving end of its control queue.
type Built = (Circuit, CellReceiver, mpsc::Receiver<(usize, RelayMsg)>);

async fn build_inner(pool: &ChannelPool, path: &[&ConsensusRelay], progress: &AtomicUsize, flow: FlowParams) -> Result<Built, CircError> {
    let first = path[0];
    let chan = pool.get(&PeerInfo { addr: first.address, identity: first.identity, link_key: first.link_key }).await?;
    let (id, mut rx) = chan.open_circuit().map_err(|_| CircError::Closed)?;
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let machine = ClientCircuit::new(id, ext_bytes(flow));
    let mut c = Circuit {
        chan,
        mem: rx.held_mem(),
        machine,
        flow,
        control_tx,
        serving: None,
        retired: Default::default(),
        logged: Default::default(),
        requests: None,
        pending: Default::default(),
        resolves: Default::default(),
        next_check: Instant::now() + crate::recovery::CHECK_EVERY,
        outbuf: Vec::new(),
    };
    let r = c.build_hops(&mut rx, path, progress).await;
    if r.is_err() {
        c.chan.destroy(id, DestroyReason::Requested);
    }
    r.map(|_| (c, rx, control_rx))
}

impl From<Fault> for CircError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Protocol(m) => CircError::Protocol(m),
            Fault::Destroyed(r) => CircError::Destroyed(r),
            Fault::Local(m) => CircError::Local(m),
        }
    }
}
