//! What tests read back from relays running in their process, and what they hold still. Nothing
//! is recorded until a test calls [`record`], and nothing is held until one calls
//! [`hold_resolves`] (the `allium` binary does neither), so a relay's memory does not grow with
//! what it sees.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use tokio::sync::watch;

use allium_proto::ids::RelayId;

/// Bytes of a CREATE cell before the handshake message: type, reserved byte, length.
pub const CREATE_HEADER_LEN: usize = 5;

/// Whether relays in this process note what tests read back.
static RECORDING: AtomicBool = AtomicBool::new(false);

/// From now on, relays in this process note the CREATE headers and DESTROY reasons they get
/// (tests of relays run in their own process).
pub fn record() {
    RECORDING.store(true, Ordering::Relaxed);
}

fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

static CREATES: Mutex<Vec<(RelayId, [u8; CREATE_HEADER_LEN])>> = Mutex::new(Vec::new());

/// Notes the header of a CREATE that relay `id` received.
pub(crate) fn record_create(id: &RelayId, payload: &[u8]) {
    if !recording() {
        return;
    }
    let mut h = [0u8; CREATE_HEADER_LEN];
    h.copy_from_slice(&payload[..CREATE_HEADER_LEN]);
    CREATES.lock().unwrap_or_else(|e| e.into_inner()).push((*id, h));
}

/// The CREATE headers relay `id` has received, in order.
pub fn creates_seen(id: &RelayId) -> Vec<[u8; CREATE_HEADER_LEN]> {
    CREATES.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(r, _)| r == id).map(|(_, h)| *h).collect()
}

static DESTROYS: Mutex<Vec<(RelayId, u8)>> = Mutex::new(Vec::new());

/// Notes the reason byte of a DESTROY that relay `id` received from a circuit's next hop.
pub(crate) fn record_destroy_from_next(id: &RelayId, reason: u8) {
    if !recording() {
        return;
    }
    DESTROYS.lock().unwrap_or_else(|e| e.into_inner()).push((*id, reason));
}

/// The reason bytes of the DESTROYs relay `id` has received from next hops, in order.
pub fn destroys_from_next(id: &RelayId) -> Vec<u8> {
    DESTROYS.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(r, _)| r == id).map(|(_, b)| *b).collect()
}

/// Relays in this process whose exits answer no RESOLVE for now.
static RESOLVES_HELD: LazyLock<watch::Sender<Vec<RelayId>>> = LazyLock::new(|| watch::Sender::new(Vec::new()));

/// While `held`, exit `id` (in this process) resolves nothing: its RESOLVEs stay in flight, as
/// behind a slow resolver, until a later call releases them (tests of the in-flight cap).
pub fn hold_resolves(id: &RelayId, held: bool) {
    RESOLVES_HELD.send_modify(|v| {
        v.retain(|r| r != id);
        if held {
            v.push(*id);
        }
    });
}

/// Returns once exit `id` may resolve (at once unless a test holds its resolves).
pub(crate) async fn resolve_allowed(id: &RelayId) {
    if RESOLVES_HELD.borrow().is_empty() {
        return;
    }
    let _ = RESOLVES_HELD.subscribe().wait_for(|v| !v.contains(id)).await;
}
