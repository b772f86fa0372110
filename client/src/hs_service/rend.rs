//! A service's side of one rendezvous: the rendezvous point checked against the consensus, a
//! circuit built to it, RENDEZVOUS1 sent and the virtual hop added, then the client's streams
//! connected to the mapped targets (docs/PROTOCOL.md, "Onion services" → "Service streams").

use std::sync::Arc;
use std::time::Duration;

use allium_directory::NetDir;
use allium_proto::doc::{ConsensusRelay, RelayFlags};
use allium_proto::ext::Extensions;
use allium_proto::hs::intro_set::Accepted;
use allium_proto::hs::introduce::IntroduceContent;
use allium_proto::hs::rendezvous;
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::{EndReason, RelayMsg};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::circuit::IncomingStream;
use crate::onion_service::PortMapping;
use crate::ClientState;

/// How long connecting to a target may take before the stream is refused (END TIMEOUT).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams waiting to be connected on one rendezvous circuit.
const STREAM_QUEUE: usize = 16;

/// Why a rendezvous was abandoned.
#[derive(Debug, thiserror::Error)]
pub enum RendFailure {
    #[error("the rendezvous point is not in the consensus")]
    UnknownPoint,
    #[error("the rendezvous point's address or keys differ from the consensus")]
    Mismatch,
    #[error("circuit to the rendezvous point: {0}")]
    Circuit(String),
}

/// The rendezvous point the client named, if the consensus lists it (Running, Valid) with the
/// same address, link key and onion key.
pub fn checked_point(dir: &NetDir, content: &IntroduceContent) -> Result<ConsensusRelay, RendFailure> {
    let want = &content.rendezvous;
    let r = dir.by_id(&RelayId(want.identity)).ok_or(RendFailure::UnknownPoint)?;
    let usable = r.flags.contains(RelayFlags::RUNNING | RelayFlags::VALID);
    if !usable || r.address != want.addr || r.link_key != want.link_key || r.onion_key != content.rendezvous_onion_key {
        return Err(RendFailure::Mismatch);
    }
    Ok(r.clone())
}

/// Where a service's streams go.
#[derive(Clone)]
pub enum StreamTarget {
    /// Connected from this node to the port's mapped target (`[[onion_service]]` in a config).
    Mapped(Arc<Vec<PortMapping>>),
    /// Handed to the program hosting the service ([`crate::embed::OnionService`]); when it
    /// has too many waiting, END RESOURCELIMIT.
    Program(mpsc::Sender<IncomingStream>),
}

/// Meets the client: builds the circuit, joins, and serves streams until the circuit closes.
/// `built` is told once the join is done (or failed), so the caller can bound builds.
pub async fn meet(state: Arc<ClientState>, dir: Arc<NetDir>, acc: Accepted, target: StreamTarget, name: &str, built: impl FnOnce()) -> Result<(), RendFailure> {
    let joined = join(&state, &dir, acc).await;
    built();
    let (circ, mut streams) = joined?;
    tracing::debug!("onion service {name}: rendezvous joined");
    while let Some(s) = streams.recv().await {
        match &target {
            StreamTarget::Mapped(mappings) => drop(tokio::spawn(connect(s, mappings.clone()))),
            StreamTarget::Program(to) => {
                if let Err(e) = to.try_send(s) {
                    e.into_inner().refuse(EndReason::ResourceLimit);
                }
            }
        }
    }
    drop(circ);
    Ok(())
}

async fn join(state: &ClientState, dir: &NetDir, acc: Accepted) -> Result<(crate::circuit::CircHandle, mpsc::Receiver<IncomingStream>), RendFailure> {
    let rp = checked_point(dir, &acc.content)?;
    let circ = state.circuits.to_relay(dir, &rp).await.map_err(|e| RendFailure::Circuit(e.to_string()))?;
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let r1 = RelayMsg::Rendezvous1 { cookie: acc.content.cookie, hdata: acc.outcome.reply.to_vec(), ext: Extensions::none() };
    circ.join_as_service(r1, rendezvous::service_end_keys(&acc.outcome.keys), tx, state.limits.max_streams_per_circuit).await.map_err(|e| RendFailure::Circuit(e.to_string()))?;
    Ok((circ, rx))
}

/// Connects one stream to its port's target from this node: an unmapped port or a refusing
/// target is END CONNECTREFUSED, a silent one END TIMEOUT.
async fn connect(s: IncomingStream, mappings: Arc<Vec<PortMapping>>) {
    let answer = match target(&mappings, s.port) {
        None => Err(EndReason::ConnectRefused),
        Some(addr) => match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(sock)) => Ok(sock),
            Ok(Err(_)) => Err(EndReason::ConnectRefused),
            Err(_) => Err(EndReason::Timeout),
        },
    };
    match answer {
        Ok(sock) => {
            if let Some(stream) = s.accept(None).await {
                stream.splice(sock, Vec::new());
            }
        }
        Err(r) => {
            tracing::debug!("onion service: stream to port {} refused ({r:?})", s.port);
            s.refuse(r);
        }
    }
}

/// The target of virtual port `port`, if mapped.
pub fn target(mappings: &[PortMapping], port: u16) -> Option<std::net::SocketAddr> {
    mappings.iter().find(|m| m.virtual_port == port).map(|m| m.target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::test_dir as dir;
    use allium_proto::relay_msg::{ExtendTarget, REND_COOKIE_LEN};

    fn naming(r: &ConsensusRelay) -> IntroduceContent {
        IntroduceContent {
            cookie: [1; REND_COOKIE_LEN],
            rendezvous: ExtendTarget { addr: r.address, identity: r.identity.0, link_key: r.link_key },
            rendezvous_onion_key: r.onion_key,
            htype: rendezvous::HTYPE_REND,
            hdata: vec![0; 32],
            ext: Extensions::none(),
        }
    }

    /// The service meets a client only at a relay the consensus lists as named, Running and
    /// Valid: it never extends to an address an introduction made up.
    #[test]
    fn rendezvous_point_must_match_the_consensus() {
        let mut down = ConsensusRelay::synthetic(2);
        down.flags = RelayFlags::VALID;
        let nd = dir(vec![ConsensusRelay::synthetic(1), down.clone()]);
        let listed = ConsensusRelay::synthetic(1);
        assert_eq!(checked_point(&nd, &naming(&listed)).unwrap().identity, listed.identity);
        assert!(matches!(checked_point(&nd, &naming(&ConsensusRelay::synthetic(3))), Err(RendFailure::UnknownPoint)));
        assert!(matches!(checked_point(&nd, &naming(&down)), Err(RendFailure::Mismatch)), "not Running");
        let mut moved = naming(&listed);
        moved.rendezvous.addr = "198.51.100.7:9001".parse().unwrap();
        assert!(matches!(checked_point(&nd, &moved), Err(RendFailure::Mismatch)), "another address");
        let mut rekeyed = naming(&listed);
        rekeyed.rendezvous_onion_key = [7; 32];
        assert!(matches!(checked_point(&nd, &rekeyed), Err(RendFailure::Mismatch)), "another onion key");
        let mut relinked = naming(&listed);
        relinked.rendezvous.link_key = [7; 32];
        assert!(matches!(checked_point(&nd, &relinked), Err(RendFailure::Mismatch)), "another link key");
    }
}
