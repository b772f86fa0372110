//! Open links by peer identity, so circuits to the same relay share one link.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use allium_proto::ids::RelayId;

use crate::channel::{Channel, CreateHandler};
use crate::link::{self, LinkError, PeerInfo, RelayCredentials};

/// Links to relays, reused while open.
pub struct ChannelPool {
    map: Mutex<HashMap<RelayId, Channel>>,
    bind_ip: IpAddr,
    creds: Option<RelayCredentials>,
    handler: Mutex<Option<Arc<dyn CreateHandler>>>,
}

impl ChannelPool {
    /// `creds`: present for relays (they dial with their identity), absent for clients.
    pub fn new(bind_ip: IpAddr, creds: Option<RelayCredentials>) -> Self {
        ChannelPool { map: Mutex::new(HashMap::new()), bind_ip, creds, handler: Mutex::new(None) }
    }

    /// Sets who handles CREATE cells arriving on links this pool opens (relays).
    pub fn set_create_handler(&self, h: Arc<dyn CreateHandler>) {
        *self.handler.lock().expect("pool lock") = Some(h);
    }

    /// An open link to `peer`, reusing one if it exists. The link is authenticated against
    /// `peer.link_key`; a process without that key fails the handshake.
    pub async fn get(&self, peer: &PeerInfo) -> Result<Channel, LinkError> {
        if let Some(c) = self.lookup(&peer.identity) {
            return Ok(c);
        }
        let link = link::connect(self.bind_ip, peer, self.creds.as_ref()).await?;
        let handler = self.handler.lock().expect("pool lock").clone();
        let chan = Channel::spawn(link, handler);
        self.insert(peer.identity, chan.clone());
        Ok(chan)
    }

    /// Registers a link whose peer proved its relay identity (an inbound relay link).
    pub fn insert(&self, id: RelayId, chan: Channel) {
        let mut m = self.map.lock().expect("pool lock");
        m.retain(|_, c| !c.is_closed());
        m.insert(id, chan);
    }

    fn lookup(&self, id: &RelayId) -> Option<Channel> {
        let m = self.map.lock().expect("pool lock");
        m.get(id).filter(|c| !c.is_closed()).cloned()
    }
}
