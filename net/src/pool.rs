//! Open links by peer (identity, link key), so circuits to the same relay share one link.
//!
//! A link is filed under the identity and link key its handshake proved (the key the dialled
//! relay holds; a relay initiator's certified key), and a request for `(identity, link key)`
//! only ever gets a link filed under both: a link to whoever claimed an identity with another
//! key is never handed out for the real relay (THREATS A11: no redirected links).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_proto::ids::RelayId;

use crate::channel::{Channel, CreateHandler};
use crate::limits::memquota::MemQuota;
use crate::link::{self, LinkError, PeerInfo, RelayCredentials};

/// Who a link is filed under: the peer's identity and link key.
type PeerKey = (RelayId, [u8; 32]);

/// Links to relays, reused while open.
pub struct ChannelPool {
    map: Mutex<HashMap<PeerKey, Channel>>,
    /// One lock per peer being dialled: requests for a peer wait for the dial in progress
    /// instead of opening a second link.
    dialling: Mutex<HashMap<PeerKey, Arc<tokio::sync::Mutex<()>>>>,
    bind_ip: IpAddr,
    creds: Option<RelayCredentials>,
    handler: Mutex<Option<Arc<dyn CreateHandler>>>,
    /// Links this pool opens close after this long without circuits, and when a write waits
    /// this long for the peer ([`Channel::set_write_timeout`]).
    idle_timeout: Mutex<Duration>,
    write_timeout: Mutex<Duration>,
    /// The budget the queued cells of links this pool opens are charged to.
    quota: Mutex<Arc<MemQuota>>,
}

/// A request waiting for (or making) the dial to one peer; the last one to finish, or to be
/// dropped, forgets the peer's lock.
struct Waiting<'a> {
    pool: &'a ChannelPool,
    key: PeerKey,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut d = self.pool.dialling.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: no other request holds it.
        if Arc::strong_count(&self.lock) == 2 {
            d.remove(&self.key);
        }
    }
}

/// How long a link without circuits stays open unless the node's `[limits]` say otherwise.
pub const DEFAULT_LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(180);

impl ChannelPool {
    /// `creds`: present for relays (they dial with their identity), absent for clients.
    pub fn new(bind_ip: IpAddr, creds: Option<RelayCredentials>) -> Self {
        ChannelPool { map: Mutex::new(HashMap::new()), dialling: Mutex::new(HashMap::new()), bind_ip, creds, handler: Mutex::new(None), idle_timeout: Mutex::new(DEFAULT_LINK_IDLE_TIMEOUT), write_timeout: Mutex::new(crate::limits::LimitsConfig::default().link_write_timeout()), quota: Mutex::new(MemQuota::default_budget()) }
    }

    /// Sets who handles CREATE cells arriving on links this pool opens (relays).
    pub fn set_create_handler(&self, h: Arc<dyn CreateHandler>) {
        *self.handler.lock().expect("pool lock") = Some(h);
    }

    /// Sets how long links this pool opens afterwards stay open without circuits.
    pub fn set_idle_timeout(&self, t: Duration) {
        *self.idle_timeout.lock().expect("pool lock") = t;
    }

    /// Sets how long a write on links this pool opens afterwards may wait for the peer.
    pub fn set_write_timeout(&self, t: Duration) {
        *self.write_timeout.lock().expect("pool lock") = t;
    }

    /// Sets the memory budget of links this pool opens afterwards (the node's).
    pub fn set_mem_quota(&self, q: Arc<MemQuota>) {
        *self.quota.lock().expect("pool lock") = q;
    }

    /// The memory budget links this pool opens are charged to.
    pub fn mem_quota(&self) -> Arc<MemQuota> {
        self.quota.lock().expect("pool lock").clone()
    }

    /// An open link to `peer`, reusing one if it exists. The link is authenticated against
    /// `peer.link_key`; a process without that key fails the handshake.
    /// Requests for a peer while a link to it is being opened wait for that link (one dial
    /// per peer at a time), so concurrent circuits through one relay share one link.
    pub async fn get(&self, peer: &PeerInfo) -> Result<Channel, LinkError> {
        let key = (peer.identity, peer.link_key);
        if let Some(c) = self.lookup(&key) {
            return Ok(c);
        }
        let waiting = Waiting { pool: self, key, lock: self.dialling.lock().expect("pool lock").entry(key).or_default().clone() };
        let _turn = waiting.lock.lock().await;
        match self.lookup(&key) {
            // Opened by the request we waited for.
            Some(c) => Ok(c),
            None => self.dial(peer).await,
        }
    }

    async fn dial(&self, peer: &PeerInfo) -> Result<Channel, LinkError> {
        let link = link::connect(self.bind_ip, peer, self.creds.as_ref()).await?;
        let handler = self.handler.lock().expect("pool lock").clone();
        let chan = Channel::spawn(link, handler, &self.mem_quota());
        chan.close_when_idle(*self.idle_timeout.lock().expect("pool lock"));
        chan.set_write_timeout(*self.write_timeout.lock().expect("pool lock"));
        self.insert(chan.clone());
        Ok(chan)
    }

    /// Files a link under the identity and link key its peer proved (an inbound relay link);
    /// a link whose peer proved neither is not filed.
    pub fn insert(&self, chan: Channel) {
        let (Some(id), Some(key)) = (chan.peer, chan.peer_link_key) else { return };
        let mut m = self.map.lock().expect("pool lock");
        m.retain(|_, c| !c.is_closed());
        m.insert((id, key), chan);
    }

    /// Open links filed (links to relays that proved who they are).
    pub fn relay_links(&self) -> usize {
        self.map.lock().expect("pool lock").values().filter(|c| !c.is_closed()).count()
    }

    /// Whether an open link to `peer` (its identity and link key) is filed.
    pub fn has(&self, peer: &PeerInfo) -> bool {
        self.lookup(&(peer.identity, peer.link_key)).is_some()
    }

    fn lookup(&self, key: &PeerKey) -> Option<Channel> {
        let m = self.map.lock().expect("pool lock");
        m.get(key).filter(|c| !c.is_closed()).cloned()
    }
}
