//! Opening a stream: to a host and port through an exit (another exit is tried where that is
//! safe: [`crate::circmgr::retry_on_another_exit`]), or to an onion service (`.allium` names,
//! never shown to an exit). Shared by the SOCKS and HTTP CONNECT front ends and by the
//! embedding API ([`crate::embed`]); each caller answers its application itself.

use std::time::Duration;

use allium_proto::hs::OnionAddress;
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::EndReason;
use tokio::sync::oneshot;

use crate::circmgr::{retry_on_another_exit, GetError, IsolationKey, STREAM_RETRIES, Successor};
use crate::circuit::{BeginRequest, Connected};
use crate::hs_connect::OnionError;
use crate::path::{ExitNeed, PathError};
use crate::ClientState;

/// How long a request waits for the client to have a usable consensus.
pub const BOOTSTRAP_WAIT: Duration = Duration::from_secs(30);

/// Why no stream could be opened. [`ConnectError::kind`] groups the cases.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("port 0 cannot be connected to")]
    PortZero,
    #[error("invalid onion address: {0}")]
    OnionAddress(String),
    #[error("the client cannot build circuits yet (no usable consensus)")]
    NotBootstrapped,
    #[error("no exit allows this destination")]
    NoExit,
    #[error("no circuit: {0}")]
    NoCircuit(GetError),
    /// The last exit's refusal, after `exits_tried` exits.
    #[error("{} ({exits_tried} exits tried; {reason:?})", refusal_text(*reason))]
    Refused { reason: EndReason, exits_tried: usize },
    #[error(transparent)]
    Onion(OnionError),
    #[error("the onion service refused the stream ({0:?})")]
    OnionRefused(EndReason),
    #[error("the onion service's rendezvous circuits closed")]
    RendezvousClosed,
}

/// What kind of failure a [`ConnectError`] is, for programs that react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The request itself is wrong (port 0, a malformed onion address).
    BadRequest,
    /// The client is not ready yet: try again once bootstrapped.
    NotReady,
    /// No path or circuit could be had.
    Network,
    /// The destination (or the exit's policy) refused, or could not be reached.
    Refused,
    /// The onion service could not be reached (descriptor, introduction or rendezvous).
    OnionService,
}

impl ConnectError {
    pub fn kind(&self) -> ConnectErrorKind {
        match self {
            ConnectError::PortZero | ConnectError::OnionAddress(_) => ConnectErrorKind::BadRequest,
            ConnectError::NotBootstrapped => ConnectErrorKind::NotReady,
            ConnectError::NoExit | ConnectError::NoCircuit(_) => ConnectErrorKind::Network,
            ConnectError::Refused { .. } | ConnectError::OnionRefused(_) => ConnectErrorKind::Refused,
            ConnectError::Onion(_) | ConnectError::RendezvousClosed => ConnectErrorKind::OnionService,
        }
    }
}

/// Why an exit refused a stream, in words for the log (never naming the destination, which is
/// logged at debug only).
pub fn refusal_text(r: EndReason) -> &'static str {
    match r {
        EndReason::ResolveFailed => "the exit could not resolve the host name",
        EndReason::ExitPolicy => "the exit's policy refuses this destination",
        EndReason::ConnectRefused => "the destination refused the connection",
        EndReason::Timeout => "the destination did not answer in time",
        EndReason::NoRoute => "the exit has no route to the destination",
        EndReason::ResourceLimit => "the exit is at a resource limit",
        EndReason::Destroy => "the circuit closed",
        _ => "the exit ended the stream",
    }
}

/// After `exits_tried` exits refused a stream, the last with `reason`: whether to try another.
pub fn retry_elsewhere(reason: EndReason, exits_tried: usize) -> bool {
    retry_on_another_exit(reason) && exits_tried <= STREAM_RETRIES
}

/// Opens a stream to `host:port` for isolation class `iso`: through an exit, or to the onion
/// service a `.allium` name names. With the stream comes the [`Successor`] of the circuit it
/// took, to keep until the stream is done.
pub async fn open(state: &ClientState, host: &str, port: u16, iso: &IsolationKey) -> Result<(Connected, Successor), ConnectError> {
    if port == 0 {
        return Err(ConnectError::PortZero);
    }
    if OnionAddress::is_reserved_name(host) {
        // Never leak such a name to an exit. A malformed address fails at once, with its reason.
        let addr = OnionAddress::parse(host).map_err(|e| ConnectError::OnionAddress(e.to_string()))?;
        return open_onion(state, &addr, &host.to_ascii_lowercase(), port, iso).await.map(|c| (c, Successor::none()));
    }
    let need = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ExitNeed::Addr(ip, port),
        Err(_) => ExitNeed::Port(port),
    };
    open_exit(state, host, port, need, iso).await
}

/// Through an exit: up to 1 + [`STREAM_RETRIES`] exits, never one twice, while the refusal is
/// one another exit may not give.
async fn open_exit(state: &ClientState, host: &str, port: u16, need: ExitNeed, iso: &IsolationKey) -> Result<(Connected, Successor), ConnectError> {
    let dir = state.wait_netdir(BOOTSTRAP_WAIT).await.ok_or(ConnectError::NotBootstrapped)?;
    let mut refused_by: Vec<RelayId> = Vec::new();
    let mut last_refusal: Option<EndReason> = None;
    loop {
        let (circ, successor) = match state.circuits.get_avoiding(&dir, need, iso, &refused_by).await {
            Ok(c) => c,
            // No other exit (or no circuit to one): the answer is the exits' refusal, not why
            // no further exit could be had.
            Err(e) if last_refusal.is_some() => {
                tracing::debug!("(no further exit: {e}; the destination was {host}:{port})");
                return Err(ConnectError::Refused { reason: last_refusal.expect("checked"), exits_tried: refused_by.len() });
            }
            Err(e) if matches!(e.root(), GetError::Path(PathError::NoExit)) => return Err(ConnectError::NoExit),
            Err(e) => return Err(ConnectError::NoCircuit(e)),
        };
        let exit = circ.exit.identity;
        let (done, rx) = oneshot::channel();
        // The circuit task gone, or gone without an answer: the circuit closed under the stream.
        let answer = match circ.begin(BeginRequest { host: host.to_string(), port, done }).await {
            Ok(()) => rx.await.unwrap_or(Err(EndReason::Destroy)),
            Err(_) => Err(EndReason::Destroy),
        };
        let reason = match answer {
            Ok(c) => return Ok((c, successor)),
            Err(reason) => reason,
        };
        refused_by.push(exit);
        if !retry_elsewhere(reason, refused_by.len()) {
            tracing::debug!("(the destination was {host}:{port})");
            return Err(ConnectError::Refused { reason, exits_tried: refused_by.len() });
        }
        tracing::info!("stream refused by its exit: {} ({reason:?}); trying another exit", refusal_text(reason));
        tracing::debug!("(the exit was {})", exit.short());
        last_refusal = Some(reason);
    }
}

/// To an onion service, on a rendezvous circuit of the request's isolation class
/// ([`crate::hs_connect`]); the BEGIN goes to the service (the circuit's virtual hop), which
/// answers CONNECTED or END. A reused circuit that turns out closed is replaced once.
async fn open_onion(state: &ClientState, addr: &OnionAddress, host: &str, port: u16, iso: &IsolationKey) -> Result<Connected, ConnectError> {
    let dir = state.wait_netdir(BOOTSTRAP_WAIT).await.ok_or(ConnectError::NotBootstrapped)?;
    for round in 0..2 {
        let circ = state.onions.circuit(&state.circuits, &dir, addr, iso).await.map_err(|e| {
            tracing::debug!("(the onion service was {host}:{port})");
            ConnectError::Onion(e)
        })?;
        let (done, rx) = oneshot::channel();
        if circ.begin(BeginRequest { host: host.to_string(), port, done }).await.is_err() {
            state.onions.forget(addr, iso);
            continue;
        }
        match rx.await.unwrap_or(Err(EndReason::Destroy)) {
            Ok(c) => return Ok(c),
            // The circuit died under the stream, or gave it up (no CONNECTED in time): once more
            // on a new one.
            Err(EndReason::Destroy | EndReason::Timeout) if round == 0 => state.onions.forget(addr, iso),
            Err(reason) => return Err(ConnectError::OnionRefused(reason)),
        }
    }
    Err(ConnectError::RendezvousClosed)
}
