//! EXTEND at this relay: the target checked against the consensus (THREATS A11), the link to
//! it opened off the circuit's task, and the CREATE sent once it is up.

use super::*;

impl RelayCircuit {
    pub(super) fn start_extend(&mut self, target: ExtendTarget, htype: u16, hdata: Vec<u8>) -> Result<(), Close> {
        let id = RelayId(target.identity);
        if id == self.ctx.id || target.identity == [0; 32] || self.prev.peer == Some(id) {
            return Err(Close(DestroyReason::Protocol, Side::Local));
        }
        let listed = self.ctx.dir.listed_relay(&id);
        extend_allowed(&target, listed, self.ctx.testnet, self.ctx.dir.has_consensus()).map_err(|why| {
            tracing::debug!("EXTEND refused: {why}");
            let reason = if why == NOT_DIALLABLE { DestroyReason::ConnectFailed } else { DestroyReason::OrIdentity };
            Close(reason, Side::Local)
        })?;
        let peer = PeerInfo { addr: target.addr, identity: id, link_key: target.link_key };
        let ctx = self.ctx.clone();
        allium_net::metrics::METRICS.extends.inc(if ctx.pool.has(&peer) { "open" } else { "dialled" });
        let task = tokio::spawn(async move { ctx.pool.get(&peer).await });
        self.extending = Some(PendingExtend { task, htype, hdata });
        Ok(())
    }

    pub(super) async fn extended_link(&mut self, r: Result<Channel, LinkError>) -> Result<(), Close> {
        let p = self.extending.take().expect("extend in progress");
        let chan = r.map_err(|e| {
            tracing::debug!("extend failed: {e}");
            Close(DestroyReason::ConnectFailed, Side::Local)
        })?;
        let (id, rx) = chan.open_circuit().map_err(|_| Close(DestroyReason::ConnectFailed, Side::Local))?;
        for c in cell::create_cells(id, p.htype, &p.hdata) {
            chan.send(c).await.map_err(|_| Close(DestroyReason::ConnectFailed, Side::Local))?;
        }
        self.next = Some(Next { chan, id, rx });
        self.hop.creating();
        Ok(())
    }
}

const NOT_DIALLABLE: &str = "port 0, or a private address outside a test network";

/// Whether a relay may extend to `target` (THREATS A11): never to port 0 or (outside a test
/// network) a private address; only to the address and link key its consensus lists for that
/// identity (`listed`). A test network's relay that holds no consensus at all (relays run in a
/// test process) takes the EXTEND as it is (docs/PROTOCOL.md, "Test networks").
fn extend_allowed(target: &ExtendTarget, listed: Option<(std::net::SocketAddr, [u8; 32])>, testnet: bool, has_consensus: bool) -> Result<(), &'static str> {
    if target.addr.port() == 0 || (!testnet && is_private(target.addr.ip())) {
        return Err(NOT_DIALLABLE);
    }
    match listed {
        Some((addr, key)) if addr == target.addr && key == target.link_key => Ok(()),
        Some(_) => Err("its address or link key is not the consensus's for that relay"),
        None if testnet && !has_consensus => Ok(()),
        None => Err("the relay is not in the consensus"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `dangerous_testnet` unlocks for EXTEND (a private target; extending with no
    /// consensus at all) stays refused without it; port 0 is refused everywhere.
    #[test]
    fn extends_follow_the_consensus_and_testnet_unlocks_only_what_it_lists() {
        let target = |a: &str| ExtendTarget { addr: a.parse().unwrap(), identity: [1; 32], link_key: [2; 32] };
        let private = target("10.0.0.1:9001");
        let public = target("192.0.2.10:9001");
        // No consensus held: only a test network extends as told, and never to port 0.
        assert!(extend_allowed(&private, None, false, false).is_err());
        assert!(extend_allowed(&public, None, false, false).is_err());
        assert!(extend_allowed(&private, None, true, false).is_ok());
        assert!(extend_allowed(&target("127.0.0.1:0"), None, true, false).is_err());
        // A consensus held: the listed address and link key only, on any network.
        let listed = Some((public.addr, public.link_key));
        assert!(extend_allowed(&public, listed, false, true).is_ok());
        assert!(extend_allowed(&public, Some((public.addr, [3; 32])), false, true).is_err());
        assert!(extend_allowed(&public, None, true, true).is_err(), "unlisted, with a consensus");
        assert!(extend_allowed(&private, Some((private.addr, private.link_key)), false, true).is_err(), "private outside a test network");
    }
}
