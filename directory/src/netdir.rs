//! The verified network view that clients and relays use.

use std::collections::{HashMap, HashSet};

use allium_proto::doc::{Consensus, ConsensusEntry, ConsensusRelay, Position, PositionWeights, RelayFlags, SharedRandom, WEIGHT_SCALE};
use allium_proto::ids::RelayId;

use crate::microdescs::MicrodescStore;
use crate::params::{ConsensusParams, ParamError};

/// A consensus whose signatures and validity interval were checked, and whose parameters are
/// within their bounds, with the microdescriptors held for it. Only relays whose
/// microdescriptor is held are in [`NetDir::relays`]; the consensus lists them all.
#[derive(Debug, Clone)]
pub struct NetDir {
    consensus: Consensus,
    microdescs: MicrodescStore,
    /// The listed relays with a microdescriptor held, joined, sorted by identity.
    relays: Vec<ConsensusRelay>,
    index: HashMap<RelayId, usize>,
    text: String,
    params: ConsensusParams,
}

impl NetDir {
    /// Wraps a consensus returned by [`UnverifiedConsensus::verify`](allium_proto::doc::UnverifiedConsensus::verify)
    /// with the microdescriptors held for it (others in `microdescs` are dropped). Refuses it
    /// when a known parameter is outside its bounds ([`crate::params`]).
    pub fn new(consensus: Consensus, mut microdescs: MicrodescStore) -> Result<Self, ParamError> {
        let params = ConsensusParams::from_map(consensus.params())?;
        microdescs.extend(&MicrodescStore::of_consensus(&consensus));
        microdescs.retain(&listed_digests(&consensus));
        let text = consensus.encode();
        let mut nd = NetDir { consensus, microdescs, relays: Vec::new(), index: HashMap::new(), text, params };
        nd.join();
        Ok(nd)
    }

    /// Parses and verifies a consensus text against the configured authorities at `now`
    /// (no microdescriptors yet: see [`NetDir::add_microdescs`]).
    pub fn from_text(text: &str, authorities: &[RelayId], now: u64) -> Result<Self, crate::FetchAttemptError> {
        let u = Consensus::parse(text).map_err(crate::FetchAttemptError::Parse)?;
        let c = u.verify(authorities, now).map_err(crate::FetchAttemptError::Verify)?;
        NetDir::new(c, MicrodescStore::default()).map_err(crate::FetchAttemptError::Params)
    }

    fn join(&mut self) {
        self.relays = self
            .consensus
            .relays()
            .iter()
            .filter_map(|e| self.microdescs.get(&e.microdesc).map(|md| e.with_microdesc(md)))
            .collect();
        self.index = self.relays.iter().enumerate().map(|(i, r)| (r.identity, i)).collect();
    }

    /// Adds the microdescriptors in `text` that this consensus lists and that are missing.
    /// Returns how many were added.
    pub fn add_microdescs(&mut self, text: &str) -> usize {
        let wanted: HashSet<[u8; 32]> = self.missing_microdescs().into_iter().collect();
        let n = self.microdescs.add_text(text, &wanted);
        if n > 0 {
            self.join();
        }
        n
    }

    /// Takes the microdescriptors `older` holds that this consensus lists (what a node already
    /// had for the previous consensus).
    pub fn reuse_microdescs(&mut self, older: &NetDir) {
        let before = self.microdescs.len();
        self.microdescs.extend(&older.microdescs);
        self.microdescs.retain(&listed_digests(&self.consensus));
        if self.microdescs.len() != before {
            self.join();
        }
    }

    /// Digests the consensus lists whose microdescriptor is not held.
    pub fn missing_microdescs(&self) -> Vec<[u8; 32]> {
        let mut v: Vec<[u8; 32]> = self.consensus.relays().iter().map(|e| e.microdesc).filter(|d| !self.microdescs.contains(d)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The microdescriptors held for this consensus.
    pub fn microdescs(&self) -> &MicrodescStore {
        &self.microdescs
    }

    /// Every relay the consensus lists (with or without a microdescriptor held).
    pub fn listed(&self) -> &[ConsensusEntry] {
        self.consensus.relays()
    }

    /// The flow- and congestion-control parameters this consensus sets (each parameter within
    /// its bounds; a combination no circuit could use, e.g. an increment above half its window,
    /// gives the defaults, with a warning).
    pub fn flow_params(&self) -> allium_proto::flow::FlowParams {
        let p = &self.params;
        let v = |name: &str| p.get(name).clamp(0, u32::MAX as i64) as u32;
        let f = allium_proto::flow::FlowParams {
            circuit_window: v("circuit-window"),
            circuit_sendme_inc: v("circuit-sendme-inc"),
            xoff_cells: v("stream-xoff"),
            cc: allium_proto::congestion::CcParams {
                cwnd_init: v("cc-cwnd-init"),
                alpha: v("cc-vegas-alpha"),
                beta: v("cc-vegas-beta"),
                gamma: v("cc-vegas-gamma"),
                delta: v("cc-vegas-delta"),
            },
        };
        f.checked().unwrap_or_else(|_| {
            tracing::warn!("the consensus's flow-control parameters do not fit together ({f:?}); using the defaults");
            Default::default()
        })
    }

    /// The identities of the HSDirs responsible for `blinded_key` in `period`: the relays
    /// flagged HSDir, Running and Valid whose microdescriptor is held, on that period's ring
    /// (docs/PROTOCOL.md, "HSDir ring"). Services, clients and HSDirs all use this.
    pub fn responsible_hsdirs(&self, blinded_key: &[u8; 32], period: allium_proto::hs::TimePeriod) -> Vec<RelayId> {
        self.hsdir_ring(period).responsible_default(blinded_key)
    }

    /// The HSDir ring of `period` (see [`NetDir::responsible_hsdirs`]).
    pub fn hsdir_ring(&self, period: allium_proto::hs::TimePeriod) -> allium_proto::hs::HsDirRing {
        let srv = allium_proto::hs::period::ring_srv(period, &self.consensus().meta().period_srvs);
        let ids = self.relays().iter().filter(|r| r.flags.contains(RelayFlags::HSDIR | RelayFlags::RUNNING | RelayFlags::VALID)).map(|r| r.identity);
        allium_proto::hs::HsDirRing::new(ids, &srv, period)
    }

    /// The onion-service time-period length this consensus sets (`hs-period-secs`, see
    /// `allium_proto::hs::period::length_from_params`).
    pub fn hs_period_secs(&self) -> u64 {
        allium_proto::hs::period::length_from_params(self.params.listed(), self.consensus().lifetime().voting_interval())
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
        self.position_weight_of(relay.flags, relay.weight, pos)
    }

    /// [`Self::position_weight`] from a relay's flags and consensus weight.
    pub fn position_weight_of(&self, flags: RelayFlags, weight: u64, pos: Position) -> u64 {
        if !flags.contains(RelayFlags::RUNNING | RelayFlags::VALID) {
            return 0;
        }
        let share = self.consensus.position_weights().share(flags, pos) as u128;
        (weight as u128 * share / WEIGHT_SCALE as u128) as u64
    }

    /// The relays whose microdescriptor is held, joined with it, sorted by identity.
    pub fn relays(&self) -> &[ConsensusRelay] {
        &self.relays
    }

    /// The relay with this identity (if its microdescriptor is held).
    pub fn by_id(&self, id: &RelayId) -> Option<&ConsensusRelay> {
        self.index.get(id).map(|&i| &self.relays[i])
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

fn listed_digests(c: &Consensus) -> HashSet<[u8; 32]> {
    c.relays().iter().map(|e| e.microdesc).collect()
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

    /// The microdescriptors of these relays, as a cache would serve them.
    pub(crate) fn microdescs_text(relays: &[ConsensusRelay]) -> String {
        relays.iter().map(|r| allium_proto::doc::Microdesc::of_relay(r).encode()).collect()
    }

    /// The verified view of `signed(...)` at `now`, with every microdescriptor added.
    pub(crate) fn netdir(lt: Lifetime, meta: ConsensusMeta, relays: Vec<ConsensusRelay>, now: u64) -> (NetDir, Vec<RelayId>) {
        let mds = microdescs_text(&relays);
        let (text, ids) = signed(lt, meta, relays);
        let mut nd = NetDir::from_text(&text, &ids, now).unwrap();
        nd.add_microdescs(&mds);
        (nd, ids)
    }

    #[test]
    fn relays_appear_with_their_microdescriptors_only() {
        let relays = vec![relay(1, RV, 1, &[]), relay(2, RV, 1, &[])];
        let (text, ids) = signed(LT, ConsensusMeta::default(), relays.clone());
        let mut nd = NetDir::from_text(&text, &ids, 1000).unwrap();
        assert_eq!(nd.listed().len(), 2);
        assert!(nd.relays().is_empty(), "no microdescriptor yet");
        assert_eq!(nd.missing_microdescs().len(), 2);
        // Another relay's microdescriptor, or a changed one, is not taken.
        let mut other = relays[0].clone();
        other.onion_key = [77; 32];
        assert_eq!(nd.add_microdescs(&microdescs_text(&[other])), 0);
        assert_eq!(nd.add_microdescs(&microdescs_text(&relays[..1])), 1);
        assert_eq!(nd.relays().len(), 1);
        assert_eq!(nd.by_id(&relays[0].identity).unwrap().onion_key, relays[0].onion_key);
        assert!(nd.by_id(&relays[1].identity).is_none());
        let mut fresh = NetDir::from_text(&text, &ids, 1000).unwrap();
        fresh.reuse_microdescs(&nd);
        assert_eq!(fresh.relays().len(), 1, "kept from the older view");
        assert_eq!(fresh.missing_microdescs(), vec![allium_proto::doc::Microdesc::of_relay(&relays[1]).digest()]);
    }

    const LT: Lifetime = Lifetime { valid_after: 1000, fresh_until: 1010, valid_until: 1030 };
    const RV: RelayFlags = RelayFlags::RUNNING.union(RelayFlags::VALID);

    #[test]
    fn families_count_only_when_mutual() {
        // 1 and 2 name each other; 3 names 1, but 1 does not name 3.
        let relays = vec![relay(1, RV, 1, &[2]), relay(2, RV, 1, &[1, 4]), relay(3, RV, 1, &[1])];
        let (nd, _) = netdir(LT, ConsensusMeta::default(), relays, 1000);
        let id = |i: u8| RelayId([i; 32]);
        assert!(nd.same_family(&id(1), &id(2)) && nd.same_family(&id(2), &id(1)));
        assert!(!nd.same_family(&id(3), &id(1)) && !nd.same_family(&id(1), &id(3)), "one-sided claim ignored");
        assert!(!nd.same_family(&id(2), &id(4)), "unlisted relay");
        assert!(nd.same_family(&id(3), &id(3)));
    }

    #[test]
    fn out_of_bounds_parameter_refuses_the_consensus() {
        let mut meta = ConsensusMeta::default();
        meta.params.insert("stream-xoff".into(), 1);
        let (text, ids) = signed(LT, meta, vec![]);
        let e = NetDir::from_text(&text, &ids, 1000).unwrap_err().to_string();
        assert_eq!(e, "consensus parameter stream-xoff=1 is outside its bounds 50..=5000; refusing it");
        let mut meta = ConsensusMeta::default();
        meta.params.insert("stream-xoff".into(), 800);
        let (text, ids) = signed(LT, meta, vec![]);
        let nd = NetDir::from_text(&text, &ids, 1000).unwrap();
        assert_eq!(nd.params().get("stream-xoff"), 800);
        assert_eq!(nd.flow_params().xoff_cells, 800);
        assert_eq!(nd.params().get("circuit-window"), allium_proto::flow::CIRCUIT_WINDOW as i64, "default");
    }

    #[test]
    fn position_weights_spare_scarce_exits() {
        let exit = RV | RelayFlags::EXIT;
        let relays = vec![relay(1, exit, 100, &[]), relay(2, RV | RelayFlags::GUARD, 450, &[]), relay(3, RV, 450, &[]), relay(4, RelayFlags::VALID, 900, &[])];
        let (nd, _) = netdir(LT, ConsensusMeta::default(), relays, 1000);
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
