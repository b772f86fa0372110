//! The verified network view that clients and relays use.

use std::collections::HashMap;

use allium_proto::doc::{Consensus, ConsensusRelay};
use allium_proto::ids::RelayId;

/// A consensus whose signatures and validity interval were checked, with an index by identity.
#[derive(Debug, Clone)]
pub struct NetDir {
    consensus: Consensus,
    index: HashMap<RelayId, usize>,
    text: String,
}

impl NetDir {
    /// Wraps a consensus returned by [`UnverifiedConsensus::verify`](allium_proto::doc::UnverifiedConsensus::verify).
    pub fn new(consensus: Consensus) -> Self {
        let index = consensus.relays().iter().enumerate().map(|(i, r)| (r.identity, i)).collect();
        let text = consensus.encode();
        NetDir { consensus, index, text }
    }

    /// Parses and verifies a consensus text against the configured authorities at `now`.
    pub fn from_text(text: &str, authorities: &[RelayId], now: u64) -> Result<Self, crate::FetchAttemptError> {
        let u = Consensus::parse(text).map_err(crate::FetchAttemptError::Parse)?;
        let c = u.verify(authorities, now).map_err(crate::FetchAttemptError::Verify)?;
        Ok(NetDir::new(c))
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
        self.consensus.signatures().iter().map(|s| s.identity).collect()
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
