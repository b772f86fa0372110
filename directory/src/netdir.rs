//! The verified network view that clients and relays use.

use std::collections::HashMap;

use allium_proto::doc::{Consensus, ConsensusRelay, Position, PositionWeights, RelayFlags, SharedRandom, WEIGHT_SCALE};
use allium_proto::ids::RelayId;

use crate::params::{ConsensusParams, ParamError};

/// A consensus whose signatures and validity interval were checked, and whose parameters are
/// within their bounds, with an index by identity.
#[derive(Debug, Clone)]
pub struct NetDir {
    consensus: Consensus,
    index: HashMap<RelayId, usize>,
    text: String,
    params: ConsensusParams,
}

impl NetDir {
    /// Wraps a consensus returned by [`UnverifiedConsensus::verify`](allium_proto::doc::UnverifiedConsensus::verify).
    /// Refuses it when a known parameter is outside its bounds ([`crate::params`]).
    pub fn new(consensus: Consensus) -> Result<Self, ParamError> {
        let params = ConsensusParams::from_map(consensus.params())?;
        let index = consensus.relays().iter().enumerate().map(|(i, r)| (r.identity, i)).collect();
        let text = consensus.encode();
        Ok(NetDir { consensus, index, text, params })
    }

    /// Parses and verifies a consensus text against the configured authorities at `now`.
    pub fn from_text(text: &str, authorities: &[RelayId], now: u64) -> Result<Self, crate::FetchAttemptError> {
        let u = Consensus::parse(text).map_err(crate::FetchAttemptError::Parse)?;
        let c = u.verify(authorities, now).map_err(crate::FetchAttemptError::Verify)?;
        NetDir::new(c).map_err(crate::FetchAttemptError::Params)
    }

    /// The consensus parameters (checked against their bounds; defaults for absent ones).
    pub fn params(&self) -> &ConsensusParams {
        &self.params
    }

    /// The relays a client may use at all: listed with Running and Valid. (Authorities vote
    /// only for relays they found reachable, so every listed relay should have both; this
    /// filter is the client's guarantee.)
    pub fn usable_relays(&self) -> impl Iterator<Item = &ConsensusRelay> {
        self.relays().iter().filter(|r| r.flags.contains(RelayFlags::RUNNING | RelayFlags::VALID))
    }

    /// Whether `a` and `b` are in one family: each lists the other in its `family` (a one-sided
    /// claim counts for nothing, so a hostile relay cannot push honest relays out of paths by
    /// naming them). A relay is in its own family. Unknown relays are in no family.
    pub fn same_family(&self, a: &RelayId, b: &RelayId) -> bool {
        match (self.by_id(a), self.by_id(b)) {
            (Some(_), Some(_)) if a == b => true,
            (Some(ra), Some(rb)) => ra.family.contains(b) && rb.family.contains(a),
            _ => false,
        }
    }

    /// The position weights published in the consensus.
    pub fn position_weights(&self) -> PositionWeights {
        self.consensus.position_weights()
    }

    /// The selection weight of `relay` in position `pos`: its consensus weight scaled by the
    /// position share of its class (`weight × W / 10000`). 0 when it may not serve there (not
    /// Running/Valid, a non-Guard as guard, a non-Exit or BadExit as exit). Path selection
    /// should pick relays with probability proportional to this (instead of the advertised
    /// bandwidth), so scarce exit capacity is not spent on middle positions.
    pub fn position_weight(&self, relay: &ConsensusRelay, pos: Position) -> u64 {
        if !relay.flags.contains(RelayFlags::RUNNING | RelayFlags::VALID) {
            return 0;
        }
        let share = self.consensus.position_weights().share(relay.flags, pos) as u128;
        (relay.weight as u128 * share / WEIGHT_SCALE as u128) as u64
    }

    /// The relays, sorted by identity.
    pub fn relays(&self) -> &[ConsensusRelay] {
        self.consensus.relays()
    }

    /// The relay with this identity.
    pub fn by_id(&self, id: &RelayId) -> Option<&ConsensusRelay> {
        self.index.get(id).map(|&i| &self.consensus.relays()[i])
    }

    pub fn valid_after(&self) -> u64 {
        self.consensus.valid_after()
    }
    pub fn fresh_until(&self) -> u64 {
        self.consensus.fresh_until()
    }
    pub fn valid_until(&self) -> u64 {
        self.consensus.valid_until()
    }

    /// The voting interval the authorities use (`fresh-until − valid-after`).
    pub fn interval_secs(&self) -> u64 {
        self.fresh_until() - self.valid_after()
    }

    /// The authorities whose valid signatures were counted.
    pub fn signers(&self) -> Vec<RelayId> {
        self.consensus.signatures().iter().map(|s| s.identity()).collect()
    }

    /// The shared random values of this consensus: `current` for its period (the onion-service
    /// hash ring uses it), `previous` for the period before. Either may be absent (a fresh
    /// network, or too few authorities revealed); users must handle that.
    pub fn shared_random(&self) -> SharedRandom {
        self.consensus.shared_random()
    }

    /// The verified consensus.
    pub fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    /// The consensus text with only the signatures that were counted (suitable for caching and
    /// serving: it verifies again as it is).
    pub fn consensus_text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use allium_proto::doc::{ConsensusMeta, Lifetime};
    use ed25519_dalek::SigningKey;

    pub(crate) fn relay(i: u8, flags: RelayFlags, weight: u64, family: &[u8]) -> ConsensusRelay {
        ConsensusRelay {
            family: family.iter().map(|f| RelayId([*f; 32])).collect(),
            bandwidth: weight,
            flags,
            weight,
            ..ConsensusRelay::synthetic(i)
        }
    }

    /// A consensus signed by one authority (key seed 1), as text, and that authority's id.
    pub(crate) fn signed(lt: Lifetime, meta: ConsensusMeta, relays: Vec<ConsensusRelay>) -> (String, Vec<RelayId>) {
        let k = SigningKey::from_bytes(&[1; 32]);
        let id = RelayId(k.verifying_key().to_bytes());
        let mut c = Consensus::with_meta(lt, meta, vec![id], relays);
        let signer = allium_proto::doc::AuthoritySigner::certify(&k, SigningKey::from_bytes(&[2; 32]), 0, u64::MAX);
        c.add_signature(c.sign(&signer));
        (c.encode(), vec![id])
    }

    const LT: Lifetime = Lifetime { valid_after: 1000, fresh_until: 1010, valid_until: 1030 };
    const RV: RelayFlags = RelayFlags::RUNNING.union(RelayFlags::VALID);

    #[test]
    fn families_count_only_when_mutual() {
        // 1 and 2 name each other; 3 names 1, but 1 does not name 3.
        let relays = vec![relay(1, RV, 1, &[2]), relay(2, RV, 1, &[1, 4]), relay(3, RV, 1, &[1])];
        let (text, ids) = signed(LT, ConsensusMeta::default(), relays);
        let nd = NetDir::from_text(&text, &ids, 1000).unwrap();
        let id = |i: u8| RelayId([i; 32]);
        assert!(nd.same_family(&id(1), &id(2)) && nd.same_family(&id(2), &id(1)));
        assert!(!nd.same_family(&id(3), &id(1)) && !nd.same_family(&id(1), &id(3)), "one-sided claim ignored");
        assert!(!nd.same_family(&id(2), &id(4)), "unlisted relay");
        assert!(nd.same_family(&id(3), &id(3)));
    }

    #[test]
    fn out_of_bounds_parameter_refuses_the_consensus() {
        let mut meta = ConsensusMeta::default();
        meta.params.insert("stream-window".into(), 1);
        let (text, ids) = signed(LT, meta, vec![]);
        let e = NetDir::from_text(&text, &ids, 1000).unwrap_err().to_string();
        assert_eq!(e, "consensus parameter stream-window=1 is outside its bounds 50..=5000; refusing it");
        let mut meta = ConsensusMeta::default();
        meta.params.insert("stream-window".into(), 800);
        let (text, ids) = signed(LT, meta, vec![]);
        let nd = NetDir::from_text(&text, &ids, 1000).unwrap();
        assert_eq!(nd.params().get("stream-window"), 800);
        assert_eq!(nd.params().get("circuit-window"), 1000, "default");
    }

    #[test]
    fn position_weights_spare_scarce_exits() {
        let exit = RV | RelayFlags::EXIT;
        let relays = vec![relay(1, exit, 100, &[]), relay(2, RV | RelayFlags::GUARD, 450, &[]), relay(3, RV, 450, &[]), relay(4, RelayFlags::VALID, 900, &[])];
        let (text, ids) = signed(LT, ConsensusMeta::default(), relays);
        let nd = NetDir::from_text(&text, &ids, 1000).unwrap();
        let r = |i: usize| &nd.relays()[i];
        assert_eq!(nd.position_weight(r(0), Position::Exit), 100);
        assert_eq!(nd.position_weight(r(0), Position::Middle), 0, "scarce exit kept for exits");
        assert_eq!(nd.position_weight(r(0), Position::Guard), 0);
        assert_eq!(nd.position_weight(r(2), Position::Middle), 450);
        assert!(nd.position_weight(r(1), Position::Guard) > 0);
        assert_eq!(nd.position_weight(r(3), Position::Middle), 0, "not Running: never used");
        assert_eq!(nd.usable_relays().count(), 3);
    }
}
