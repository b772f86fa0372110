//! This relay as an introduction point and a rendezvous point: the shared tables
//! ([`IntroPointTable`], [`RendPointTable`]) and a way for one circuit task to hand messages
//! and cells to another (docs/PROTOCOL.md, "Introduction points", "Introduction", "Rendezvous").
//!
//! A circuit is named by a [`CircKey`] (a number unique in this process). A circuit task that
//! becomes an introduction or rendezvous circuit registers its [`HsEvent`] sender under its key;
//! other circuit tasks look the sender up to deliver INTRODUCE2, RENDEZVOUS2, joined cells or a
//! DESTROY. The task unregisters (and tells its joined peer) when it closes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use allium_proto::cell::{DestroyReason, PAYLOAD_LEN};
use allium_proto::hs::intro_point::IntroPointTable;
use allium_proto::hs::rend_point::RendPointTable;
use allium_proto::relay_msg::RelayMsg;
use tokio::sync::mpsc;

/// Names one circuit of this relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CircKey(pub u64);

/// Cells one joined circuit may have queued for the other before the relay gives up on the
/// pair (RESOURCELIMIT). Well above a circuit's flow-control window, which bounds honest use.
pub const JOIN_QUEUE: usize = 4096;

/// What another circuit task hands to a circuit.
#[derive(Debug)]
pub enum HsEvent {
    /// A message to originate toward this circuit's client (INTRODUCE2, RENDEZVOUS2).
    Originate(RelayMsg),
    /// A forward cell from the joined circuit that this hop did not open: send it toward this
    /// circuit's client with this hop's backward layer added.
    Cell(Box<[u8; PAYLOAD_LEN]>),
    /// Destroy this circuit with this reason (joined peer closed, cookie expired).
    Destroy(DestroyReason),
}

/// Introduction and rendezvous state of one relay, shared by its circuit tasks.
#[derive(Default)]
pub struct HsPoints {
    next_key: AtomicU64,
    pub intro: Mutex<IntroPointTable<CircKey>>,
    pub rend: Mutex<RendPointTable<CircKey>>,
    senders: Mutex<HashMap<CircKey, mpsc::Sender<HsEvent>>>,
}

impl HsPoints {
    /// Tables of at most `limits.max_intro_circuits` introduction circuits and
    /// `limits.max_rendezvous_cookies` waiting cookies.
    pub fn with_limits(limits: &allium_net::limits::LimitsConfig) -> Self {
        HsPoints { intro: Mutex::new(IntroPointTable::new(limits.max_intro_circuits)), rend: Mutex::new(RendPointTable::new(limits.max_rendezvous_cookies)), ..Default::default() }
    }

    /// A fresh key and event queue for a new circuit.
    pub fn new_circuit(&self) -> (CircKey, mpsc::Sender<HsEvent>, mpsc::Receiver<HsEvent>) {
        let key = CircKey(self.next_key.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(JOIN_QUEUE);
        (key, tx, rx)
    }

    /// Lets other circuits reach `key` (idempotent).
    pub fn register(&self, key: CircKey, tx: &mpsc::Sender<HsEvent>) {
        lock(&self.senders).entry(key).or_insert_with(|| tx.clone());
    }

    /// Hands `ev` to circuit `key`; false if it is gone or its queue is full.
    pub fn deliver(&self, key: CircKey, ev: HsEvent) -> bool {
        let tx = lock(&self.senders).get(&key).cloned();
        match tx {
            Some(tx) => tx.try_send(ev).is_ok(),
            None => false,
        }
    }

    /// Circuit `key` closed with `reason`: forget it everywhere, and destroy its joined peer
    /// with the same reason.
    pub fn circuit_closed(&self, key: CircKey, reason: DestroyReason) {
        lock(&self.intro).circuit_closed(key);
        let peer = lock(&self.rend).circuit_closed(key);
        lock(&self.senders).remove(&key);
        if let Some(p) = peer {
            self.deliver(p, HsEvent::Destroy(reason));
        }
    }

    /// Drops cookies that waited too long and destroys their circuits (TIMEOUT).
    pub fn expire(&self, now: u64) {
        let expired = lock(&self.rend).expire(now);
        for c in expired {
            self.deliver(c, HsEvent::Destroy(DestroyReason::Timeout));
        }
    }
}

/// Milliseconds on a monotonic clock (since this process first asked), for the tables' rates.
pub fn mono_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Expires waiting cookies every few seconds.
pub async fn expire_loop(points: std::sync::Arc<HsPoints>) -> Result<(), crate::RelayError> {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        points.expire(allium_net::keys::unix_now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn joined_peer_is_destroyed_and_cookies_expire() {
        let p = HsPoints::default();
        let (a, atx, mut arx) = p.new_circuit();
        let (b, btx, mut brx) = p.new_circuit();
        p.register(a, &atx);
        p.register(b, &btx);
        lock(&p.rend).establish(a, &[1; 20], 0).unwrap();
        lock(&p.rend).rendezvous1(b, &[1; 20], &[], 1).unwrap();
        p.circuit_closed(b, DestroyReason::Finished);
        assert!(matches!(arx.try_recv(), Ok(HsEvent::Destroy(DestroyReason::Finished))));
        assert!(!p.deliver(b, HsEvent::Destroy(DestroyReason::Finished)), "unregistered");
        let (c, ctx, mut crx) = p.new_circuit();
        p.register(c, &ctx);
        lock(&p.rend).establish(c, &[2; 20], 10).unwrap();
        p.expire(10 + allium_proto::hs::rend_point::COOKIE_TIMEOUT_SECS);
        assert!(matches!(crx.try_recv(), Ok(HsEvent::Destroy(DestroyReason::Timeout))));
        assert!(brx.try_recv().is_err());
    }
}
