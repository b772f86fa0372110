//! Links to other relays opened ahead of need (issue 18: circuits at the round-trip floor).
//!
//! An EXTEND over an open link costs a circuit build one round trip to the next hop; over a new
//! link it first costs the TCP and link handshakes (about two round trips more). Links between
//! relays stay open for `limits.relay_link_idle_timeout_secs` without circuits, and after each
//! consensus a relay opens links to the relays it is likeliest to extend circuits to: the
//! `limits.preconnect_relays` most weighted running relays of the consensus (default 16, 0:
//! none), unless a link to one is open already (either way: inbound links from relays are
//! pooled too). Of two relays that would each dial the other, only the one with the lower
//! identity does, so a pair gets one link. Dials go one at a time, never to a private address
//! outside a test network (as for EXTEND); each link opened is counted
//! (`allium_links_preconnected_total`).

use std::sync::Arc;

use allium_directory::NetDir;
use allium_net::link::PeerInfo;
use allium_proto::doc::{ConsensusRelay, RelayFlags};
use allium_proto::ids::RelayId;
use allium_proto::policy::is_private;

use crate::RelayCtx;

/// The relays `me` dials ahead of need: of the `max + 1` most weighted running relays (ties by
/// identity), the `max` others than `me` — only those with a higher identity when `me` is among
/// them, since each of those then dials `me` as well.
pub fn targets<'a>(relays: &'a [ConsensusRelay], me: &RelayId, max: usize) -> Vec<&'a ConsensusRelay> {
    if max == 0 {
        return Vec::new();
    }
    let mut ranked: Vec<&ConsensusRelay> = relays.iter().filter(|r| r.flags.contains(RelayFlags::RUNNING)).collect();
    ranked.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.identity.cmp(&b.identity)));
    let top = &ranked[..ranked.len().min(max + 1)];
    let me_in_top = top.iter().any(|r| r.identity == *me);
    let others = ranked.iter().filter(|r| r.identity != *me).take(max);
    others.filter(|r| !me_in_top || r.identity > *me).copied().collect()
}

/// Opens the links [`targets`] names in `dir` that are not open yet, one after another.
pub async fn preconnect(ctx: Arc<RelayCtx>, dir: Arc<NetDir>) {
    for r in targets(dir.relays(), &ctx.id, ctx.limits.preconnect_relays) {
        // As for EXTEND: never a private address outside a test network.
        if r.address.port() == 0 || (!ctx.testnet && is_private(r.address.ip())) {
            continue;
        }
        let peer = PeerInfo { addr: r.address, identity: r.identity, link_key: r.link_key };
        if ctx.pool.has(&peer) {
            continue;
        }
        match ctx.pool.get(&peer).await {
            Ok(_) => allium_net::metrics::METRICS.links_preconnected.inc(),
            Err(e) => tracing::debug!("link opened ahead of need failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(id: u8, weight: u64, flags: RelayFlags) -> ConsensusRelay {
        ConsensusRelay { weight, flags, ..ConsensusRelay::synthetic(id) }
    }

    fn ids(v: Vec<&ConsensusRelay>) -> Vec<u8> {
        v.into_iter().map(|r| r.identity.0[0]).collect()
    }

    /// In a network no larger than the limit every pair gets exactly one dialler, the lower
    /// identity; relays that are not running are left out, and 0 dials nobody.
    #[test]
    fn every_pair_of_a_small_network_gets_one_link() {
        let run = RelayFlags::RUNNING;
        let relays: Vec<ConsensusRelay> = (1..=5).map(|i| relay(i, 100, run)).chain([relay(6, 100, RelayFlags::VALID)]).collect();
        let mut pairs = Vec::new();
        for me in 1..=6u8 {
            for peer in ids(targets(&relays, &RelayId([me; 32]), 16)) {
                pairs.push((me, peer));
            }
        }
        let expected: Vec<(u8, u8)> = (1..=5).flat_map(|a| (a + 1..=5).map(move |b| (a, b))).chain((1..=5).map(|b| (6, b))).collect();
        pairs.sort_unstable();
        assert_eq!(pairs, expected, "one dialler per running pair; a relay not running still dials");
        assert!(targets(&relays, &RelayId([1; 32]), 0).is_empty());
    }

    /// In a larger network a relay dials the most weighted others; one outside the top dials
    /// all of them (none of them dials it), one inside only those above its identity.
    #[test]
    fn the_most_weighted_relays_are_dialled() {
        let run = RelayFlags::RUNNING;
        let relays: Vec<ConsensusRelay> = (1..=10).map(|i| relay(i, u64::from(i) * 10, run)).collect();
        // The top 3 + 1 by weight: 10, 9, 8, 7.
        assert_eq!(ids(targets(&relays, &RelayId([2; 32]), 3)), vec![10, 9, 8]);
        assert_eq!(ids(targets(&relays, &RelayId([8; 32]), 3)), vec![10, 9]);
        assert_eq!(ids(targets(&relays, &RelayId([7; 32]), 3)), vec![10, 9, 8]);
        assert!(targets(&relays, &RelayId([10; 32]), 3).is_empty(), "9, 8 and 7 dial 10");
    }
}
