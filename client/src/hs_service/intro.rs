//! One introduction circuit of a service: built to the chosen relay, ESTABLISH_INTRO sent and
//! INTRO_ESTABLISHED awaited, then read for INTRODUCE2 until it closes (docs/PROTOCOL.md,
//! "Introduction points").

use std::sync::Arc;
use std::time::Duration;

use allium_directory::NetDir;
use allium_proto::doc::ConsensusRelay;
use allium_proto::ext::Extensions;
use allium_proto::hs::establish::{self, IntroDosParams};
use allium_proto::relay_msg::{IntroduceBody, RelayMsg};
use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;

use crate::circmgr::CircMgr;
use crate::ClientState;

/// How long the introduction point may take to answer ESTABLISH_INTRO.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// What an introduction circuit reports to its service.
#[derive(Debug)]
pub enum IntroEvent {
    /// INTRO_ESTABLISHED arrived: list the point.
    Up { auth_key: [u8; 32] },
    /// An INTRODUCE2 arrived on the point's circuit.
    Introduce2 { auth_key: [u8; 32], body: IntroduceBody },
    /// The circuit could not be built or established, or closed (`IntroSet::circuit_failed`).
    Down { auth_key: [u8; 32], why: String },
}

/// Builds the circuit to `relay`, establishes the point with `auth` (asking it to forward at
/// most `dos`) and forwards what arrives,
/// after waiting `delay` (back-off after failures) or until a new consensus arrives, whichever
/// is first: relays that joined may make a path possible (a service on a network too small for
/// its 4-hop paths starts once enough relays are listed). Ends with [`IntroEvent::Down`],
/// unless the service is gone or aborts the task (which closes the circuit).
pub async fn run(state: Arc<ClientState>, dir: Arc<NetDir>, relay: ConsensusRelay, auth: SigningKey, dos: IntroDosParams, delay: Duration, events: mpsc::Sender<IntroEvent>) {
    let auth_key = auth.verifying_key().to_bytes();
    let mut netdirs = state.netdir.clone();
    netdirs.mark_unchanged();
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        Ok(()) = netdirs.changed() => {}
    }
    let dir = state.netdir().unwrap_or(dir);
    let why = match serve(&state.circuits, &dir, &relay, &auth, dos, &events).await {
        Ok(()) => "circuit closed".to_string(),
        Err(e) => e,
    };
    let _ = events.send(IntroEvent::Down { auth_key, why }).await;
}

async fn serve(circuits: &CircMgr, dir: &NetDir, relay: &ConsensusRelay, auth: &SigningKey, dos: IntroDosParams, events: &mpsc::Sender<IntroEvent>) -> Result<(), String> {
    let auth_key = auth.verifying_key().to_bytes();
    let circ = circuits.to_relay(dir, relay).await.map_err(|e| format!("circuit: {e}"))?;
    // The point forwards introductions at the service's rate (THREATS A29).
    let est = establish::make(auth, circ.last_hop_keys(), Extensions(vec![dos.extension()]));
    let last = circ.path_len() - 1;
    let answer = tokio::time::timeout(ESTABLISH_TIMEOUT, circ.control(est)).await.map_err(|_| "no INTRO_ESTABLISHED in time".to_string())?;
    match answer.map_err(|e| format!("ESTABLISH_INTRO: {e}"))? {
        (hop, RelayMsg::IntroEstablished { .. }) if hop == last => {}
        (_, m) => return Err(format!("expected INTRO_ESTABLISHED, got {:?}", m.cmd())),
    }
    events.send(IntroEvent::Up { auth_key }).await.map_err(|_| "service stopped".to_string())?;
    while let Some((hop, msg)) = circ.recv_control().await {
        match msg {
            RelayMsg::Introduce2(body) if hop == last => {
                if events.send(IntroEvent::Introduce2 { auth_key, body }).await.is_err() {
                    return Ok(());
                }
            }
            m => tracing::debug!("onion service: ignoring {:?} on an introduction circuit", m.cmd()),
        }
    }
    Ok(())
}
