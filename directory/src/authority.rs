//! A directory authority: its state (descriptors, votes, signatures, the published consensus),
//! the rules for accepting each, and the schedule loop that votes, signs and publishes.
//!
//! [`AuthorityState`] is synchronous and takes the time as an argument, so every acceptance rule
//! is unit-testable; [`run_authority`] wraps it in the HTTP server ([`crate::server`]) and the
//! schedule loop, which talks to the other authorities.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_net::config::AuthorityEntry;
use allium_net::log_rate::FailureStreak;
use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_proto::doc::{
    compute_consensus, srv_commit, AuthoritySigner, Consensus, ConsensusRelay, DetachedSignature, Protocols, RelayDescriptor, Vote, VoteSrv,
};
use allium_proto::ids::RelayId;
use allium_proto::time::Utc;
use allium_proto::policy::is_private;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::authkeys::{AuthorityKeys, KeyNote};
use crate::clock::{date_skew_ms, date_warn_tolerance_ms, fmt_secs, Clock};
use crate::config::AuthorityConfig;
use crate::flags::{assign_flags, capped_weight, Observation, Sample, Thresholds};
use crate::history::HistoryBook;
use crate::params::ConsensusParams;
use crate::schedule::{descriptor_max_age, Schedule};
use crate::DirError;

/// How far in the future a descriptor's `published` may be (seconds).
pub const MAX_PUBLISHED_SKEW_SECS: u64 = 3600;
/// File in the data directory holding the latest published consensus.
pub const CONSENSUS_FILE: &str = "cached-consensus";
/// How far past its voting time an authority's vote counts as late (it started after it).
const LATE_VOTE_MS: u64 = 500;
/// Rounds whose votes are kept at once (regular and bootstrap).
const MAX_VOTE_ROUNDS: usize = 4;
/// Consensuses collecting signatures at once (the coming period's and a bootstrap round's).
const MAX_PENDING: usize = 2;

/// Why a submission was refused: an HTTP status and a one-line reason for the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: String,
}

impl Reject {
    fn bad(reason: impl Into<String>) -> Self {
        Reject { status: 400, reason: reason.into() }
    }
    pub(crate) fn conflict(reason: impl Into<String>) -> Self {
        Reject { status: 409, reason: reason.into() }
    }
}

/// What happened to an accepted submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored.
    New,
    /// Already held (identical); nothing changed.
    Unchanged,
}

/// A consensus was just published (or its signature set grew): what to log and save.
#[derive(Debug, Clone)]
pub struct Published {
    pub valid_after: u64,
    pub relays: usize,
    pub signatures: usize,
    /// The full text to serve and save.
    pub text: Arc<str>,
}

/// What an authority votes besides relays, and its operator's lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VotePolicy {
    /// Consensus parameters it votes (see [`crate::params`]).
    pub params: BTreeMap<String, i64>,
    pub required_protocols: Protocols,
    pub recommended_protocols: Protocols,
    /// Relays it marks BadExit.
    pub bad_exits: BTreeSet<RelayId>,
    /// Relays it never votes for.
    pub rejected: BTreeSet<RelayId>,
    /// Descriptors it holds for one IP address (`limits.max_relays_per_address`).
    pub max_relays_per_address: usize,
    /// Descriptors it holds in all (`limits.max_relay_descriptors`).
    pub max_relay_descriptors: usize,
}

impl VotePolicy {
    /// The defaults for a network kind (no lists).
    pub fn defaults(testnet: bool) -> Self {
        let p = |t: &str| Protocols::parse_args(&t.split(' ').collect::<Vec<_>>()).expect("valid default protocols");
        VotePolicy {
            params: crate::params::vote_params(testnet, &BTreeMap::new()),
            required_protocols: p(crate::config::DEFAULT_REQUIRED_PROTOCOLS),
            recommended_protocols: p(crate::config::DEFAULT_RECOMMENDED_PROTOCOLS),
            bad_exits: BTreeSet::new(),
            rejected: BTreeSet::new(),
            max_relays_per_address: allium_net::limits::LimitsConfig::default().max_relays_per_address,
            max_relay_descriptors: allium_net::limits::LimitsConfig::default().max_relay_descriptors,
        }
    }

    /// From a validated config.
    pub fn from_config(cfg: &AuthorityConfig) -> Result<Self, allium_net::config::ConfigError> {
        Ok(VotePolicy {
            params: cfg.vote_params(),
            required_protocols: cfg.required_protocols()?,
            recommended_protocols: cfg.recommended_protocols()?,
            bad_exits: cfg.bad_exits()?,
            rejected: cfg.rejected()?,
            max_relays_per_address: cfg.limits.max_relays_per_address,
            max_relay_descriptors: cfg.limits.max_relay_descriptors,
        })
    }
}

/// Where and how to test one relay's reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReachTarget {
    pub identity: RelayId,
    pub address: SocketAddr,
    pub link_key: [u8; 32],
}

/// Everything an authority knows, behind one lock. No I/O, no clock.
pub struct AuthorityState {
    me: RelayId,
    /// The signing key and its certificate: signs votes and consensuses.
    signer: AuthoritySigner,
    /// Configured authority identities (sorted, unique).
    authorities: BTreeSet<RelayId>,
    testnet: bool,
    schedule: Schedule,
    descriptors: HashMap<RelayId, RelayDescriptor>,
    /// Votes by period start, then by voter: the vote and its text as received (or made).
    votes: BTreeMap<u64, BTreeMap<RelayId, (Vote, Arc<str>)>>,
    /// Consensuses computed and collecting signatures until published, by valid-after (the
    /// coming period's, and a bootstrap round's: at most [`MAX_PENDING`]).
    pending: BTreeMap<u64, Consensus>,
    /// Signatures that arrived before this authority computed its consensus for that period.
    early_sigs: BTreeMap<u64, BTreeMap<RelayId, DetachedSignature>>,
    /// The latest published consensus and its text.
    published: Option<(Consensus, Arc<str>)>,
    /// The microdescriptors of the published consensus (none for one loaded from disk: they
    /// come with the next consensus computed here).
    microdescs: crate::microdescs::MicrodescStore,
    policy: VotePolicy,
    /// Every tested relay's reachability history (saved with [`AuthorityState::history_text`]).
    history: HistoryBook,
    /// Measured bandwidths, when this authority scans (`authority.bandwidth_scan`): its votes
    /// then weigh relays by them ([`crate::measured`]).
    measurements: Option<crate::measured::Measurements>,
    /// The signed text of each held descriptor, as uploaded (saved with
    /// [`AuthorityState::descriptors_text`], so a restart keeps the relays it knew).
    texts: HashMap<RelayId, Arc<str>>,
    /// Bumped whenever what a vote would say may have changed (a descriptor, a reachability
    /// result, a consensus published): [`crate::bootstrap`] looks again only then.
    changes: u64,
    /// This authority's signature of a consensus it recomputed to match a peer's (see
    /// [`AuthorityState::accept_signature`]), to be pushed to the other authorities.
    recomputed: Option<DetachedSignature>,
    /// Shared randomness: this authority's secret reveal for each period it committed in (the
    /// current and the previous one). In memory only: after a restart it has nothing to reveal
    /// and takes part again from the period after its next vote.
    srv_reveals: BTreeMap<u64, [u8; 32]>,
}

impl AuthorityState {
    /// An authority that signs with `signer` (its identity is the certificate's).
    pub fn new(signer: AuthoritySigner, authorities: &[RelayId], testnet: bool, schedule: Schedule) -> Self {
        AuthorityState {
            me: signer.identity(),
            signer,
            authorities: authorities.iter().copied().collect(),
            testnet,
            schedule,
            descriptors: HashMap::new(),
            votes: BTreeMap::new(),
            pending: BTreeMap::new(),
            early_sigs: BTreeMap::new(),
            published: None,
            microdescs: Default::default(),
            policy: VotePolicy::defaults(testnet),
            history: HistoryBook::default(),
            measurements: None,
            texts: HashMap::new(),
            srv_reveals: BTreeMap::new(),
            recomputed: None,
            changes: 0,
        }
    }

    /// A count that moves whenever what a vote would say may have changed.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Signs from now on with a renewed signing key (same identity).
    pub fn set_signer(&mut self, signer: AuthoritySigner) {
        debug_assert_eq!(signer.identity(), self.me);
        if signer.identity() == self.me {
            self.signer = signer;
        }
    }

    /// Replaces the default [`VotePolicy`].
    pub fn with_policy(mut self, policy: VotePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Records the result of a reachability test of `id` finished at `now` (seconds).
    pub fn record_reachability(&mut self, id: RelayId, ok: bool, now: u64) {
        if !self.descriptors.contains_key(&id) {
            return;
        }
        let rule = self.thresholds().down;
        self.history.record(id, ok, now, &rule, self.policy.max_relay_descriptors);
        self.changes += 1;
    }

    /// Starts from a saved history (loaded at startup).
    pub fn set_history(&mut self, h: HistoryBook) {
        self.history = h;
    }

    /// Votes weights from these measurements from now on (`None`: self-reported weights).
    pub fn set_measurements(&mut self, m: Option<crate::measured::Measurements>) {
        if self.measurements != m {
            self.measurements = m;
            self.changes += 1;
        }
    }

    /// The weight this authority gives the relay of `d`: its self-report capped at `bw-cap`,
    /// and, when it measures, capped by the measurement (or `bw-unmeasured-cap` without one).
    fn weight_of(&self, d: &RelayDescriptor, t: &Thresholds, now: u64) -> u64 {
        let capped = capped_weight(d.bandwidth, t);
        match &self.measurements {
            None => capped,
            Some(m) => crate::measured::measured_weight(capped, m.get(&d.identity, now), t.bw_unmeasured_cap),
        }
    }

    /// The history file's text.
    pub fn history_text(&self) -> String {
        self.history.to_text()
    }

    /// Keeps the uploaded text of the descriptor just accepted for `id`.
    pub fn keep_descriptor_text(&mut self, id: RelayId, text: Arc<str>) {
        if self.descriptors.contains_key(&id) {
            self.texts.insert(id, text);
        }
    }

    /// The texts of every held descriptor, one after another (the descriptors file).
    pub fn descriptors_text(&mut self) -> String {
        let held = &self.descriptors;
        self.texts.retain(|id, _| held.contains_key(id));
        let mut ids: Vec<&RelayId> = self.texts.keys().collect();
        ids.sort();
        ids.iter().map(|id| &*self.texts[*id]).collect()
    }

    /// Every held relay to test.
    pub fn reach_targets(&self) -> Vec<ReachTarget> {
        self.descriptors
            .values()
            .filter(|d| !self.policy.rejected.contains(&d.identity))
            .map(|d| ReachTarget { identity: d.identity, address: d.address, link_key: d.link_key })
            .collect()
    }

    /// The target for `id` if it was never tested (a relay seen for the first time).
    pub fn untested(&self, id: &RelayId) -> Option<ReachTarget> {
        if self.history.tested(id) && !self.history.get(id).is_some_and(|h| h.retest) || self.policy.rejected.contains(id) {
            return None;
        }
        self.descriptors.get(id).map(|d| ReachTarget { identity: d.identity, address: d.address, link_key: d.link_key })
    }

    /// The flag thresholds in force: the latest published consensus's parameters, each one
    /// this consensus does not list (or all, if it has none or its values are out of bounds)
    /// taken from this authority's own vote.
    pub fn thresholds(&self) -> Thresholds {
        let mut p = self.policy.params.clone();
        if let Some((c, _)) = &self.published {
            if ConsensusParams::from_map(c.params()).is_ok() {
                p.extend(c.params().iter().map(|(k, v)| (k.clone(), *v)));
            }
        }
        Thresholds::from_params(&ConsensusParams::from_map(&p).unwrap_or_default())
    }

    /// [`Self::thresholds`] lowered to what the running relays reach ([`Thresholds::relative_to`]).
    fn relative_thresholds(&self, now: u64) -> Thresholds {
        let t = self.thresholds();
        let samples: Vec<Sample> = self
            .descriptors
            .values()
            .filter_map(|d| {
                let h = self.history.get(&d.identity).filter(|h| h.running(now, &t.down))?;
                Some(Sample { weight: self.weight_of(d, &t, now), run_secs: h.run_secs(now), known_secs: h.known_secs(now), mtbf_secs: h.mtbf_secs(now) })
            })
            .collect();
        t.relative_to(&samples)
    }

    /// The entry this authority votes for a held descriptor, or `None` when it does not vote
    /// for the relay: rejected by the operator, lacking a required protocol version, or not
    /// reachable in the last test (so every entry it votes has Running).
    fn vote_entry(&self, d: &RelayDescriptor, t: &Thresholds, now: u64) -> Option<ConsensusRelay> {
        if self.policy.rejected.contains(&d.identity) || !d.protocols.missing(&self.policy.required_protocols).is_empty() {
            return None;
        }
        let h = self.history.get(&d.identity).filter(|h| h.running(now, &t.down))?;
        let weight = self.weight_of(d, t, now);
        let obs = Observation {
            reachable: true,
            uptime_secs: h.run_secs(now),
            known_secs: h.known_secs(now),
            mtbf_secs: h.mtbf_secs(now),
            wfu_permille: h.wfu_permille(),
            bandwidth: weight,
            policy: &d.policy,
            bad_exit: self.policy.bad_exits.contains(&d.identity),
        };
        let mut e = d.to_entry();
        e.flags = assign_flags(&obs, t, self.testnet);
        e.weight = weight;
        Some(e)
    }

    fn majority(&self) -> usize {
        self.authorities.len() / 2 + 1
    }

    /// Accepts a verified descriptor at `now` (unix seconds).
    pub fn accept_descriptor(&mut self, d: RelayDescriptor, now: u64) -> Result<Accepted, Reject> {
        if !self.testnet && is_private(d.address.ip()) {
            return Err(Reject::bad("address is private or loopback"));
        }
        if !self.testnet && d.policy.accepts_private() {
            return Err(Reject::bad("exit policy accepts private addresses"));
        }
        if d.published > now + MAX_PUBLISHED_SKEW_SECS {
            return Err(Reject::bad("published more than 1 hour in the future"));
        }
        if d.published + descriptor_max_age(self.schedule.interval_secs()) < now {
            return Err(Reject::bad("published too long ago"));
        }
        if let Some(old) = self.descriptors.get(&d.identity) {
            if *old == d {
                return Ok(Accepted::Unchanged);
            }
            if old.published >= d.published {
                return Err(Reject::bad("not newer than the descriptor already held for this relay"));
            }
            if old.address != d.address || old.link_key != d.link_key {
                // Test the new address before voting for it (its history is kept).
                self.history.require_retest(&d.identity);
            }
        } else if self.descriptors.len() >= self.policy.max_relay_descriptors {
            self.prune_descriptors(now);
            // Still full: make room by forgetting a relay never proven reachable, never one
            // that is (a flood of descriptors cannot push out working relays).
            if self.descriptors.len() >= self.policy.max_relay_descriptors && !self.evict_unproven(|_| true) {
                LimitCounters::hit(&LIMITS.descriptors_full);
                return Err(Reject { status: 503, reason: "authority holds too many descriptors".into() });
            }
        }
        let ip = d.address.ip();
        if self.descriptors.get(&d.identity).is_none_or(|old| old.address.ip() != ip) {
            let here = self.descriptors.values().filter(|o| o.address.ip() == ip && o.identity != d.identity).count();
            // At a full address a relay proven reachable there displaces one that is not (a
            // descriptor may name any address; only a reachability test shows it is really
            // there); otherwise the newcomer is refused.
            if here >= self.policy.max_relays_per_address && !self.evict_unproven(|o| o.address.ip() == ip && o.identity != d.identity) {
                LimitCounters::hit(&LIMITS.relays_per_address);
                return Err(Reject { status: 403, reason: format!("{} relays already use this address", self.policy.max_relays_per_address) });
            }
        }
        self.descriptors.insert(d.identity, d);
        self.changes += 1;
        Ok(Accepted::New)
    }

    /// Forgets one held relay that matches `which` and was not reachable at its last test (or
    /// never tested), the longest-published first; false if there is none.
    fn evict_unproven(&mut self, which: impl Fn(&RelayDescriptor) -> bool) -> bool {
        let victim = self
            .descriptors
            .values()
            .filter(|o| which(o) && !self.history.proven(&o.identity))
            .min_by_key(|o| (o.published, o.identity))
            .map(|o| o.identity);
        let Some(v) = victim else { return false };
        self.descriptors.remove(&v);
        self.history.remove(&v);
        LimitCounters::hit(&LIMITS.descriptors_evicted);
        true
    }

    fn prune_descriptors(&mut self, now: u64) {
        let max_age = descriptor_max_age(self.schedule.interval_secs());
        self.descriptors.retain(|_, d| d.published + max_age >= now);
        // Histories outlive descriptors (a relay that restarts keeps its record), for a bound.
        self.history.forget(now, self.policy.max_relay_descriptors);
    }

    /// Number of descriptors held.
    pub fn descriptor_count(&self) -> usize {
        self.descriptors.len()
    }

    /// Builds, signs and stores this authority's vote for period `t` at `now` (seconds) from the
    /// descriptors that are not too old. Returns the signed text and the number of relays.
    pub fn make_vote(&mut self, t: u64, now: u64) -> (Arc<str>, usize) {
        self.prune_descriptors(now);
        let th = self.relative_thresholds(now);
        let srv = self.vote_srv(t);
        let vote = Vote {
            lifetime: self.schedule.lifetime(t),
            voter: self.me,
            cert: *self.signer.cert(),
            params: self.policy.params.clone(),
            recommended_protocols: self.policy.recommended_protocols.clone(),
            required_protocols: self.policy.required_protocols.clone(),
            relays: self.descriptors.values().filter_map(|d| self.vote_entry(d, &th, now)).collect(),
            srv,
        };
        let text: Arc<str> = vote.encode_signed(self.signer.key()).into();
        let n = vote.relays.len();
        self.votes.entry(t).or_default().insert(self.me, (vote, text.clone()));
        // Keep votes from one interval back on (a bootstrap round may overlap the regular one).
        let keep_from = t.saturating_sub(self.schedule.interval_secs());
        self.votes.retain(|&p, _| p >= keep_from);
        (text, n)
    }

    /// The shared-randomness part of this authority's vote for `t`: a commitment to a fresh
    /// random reveal (the same one if the vote for `t` is made again), the reveal committed to in
    /// its vote for the previous period, the commitments held in the votes of the previous
    /// period, and the current value and the onion-service ring values (`hs-period-srv`) of its
    /// consensus for the previous period.
    fn vote_srv(&mut self, t: u64) -> VoteSrv {
        let prev = t.saturating_sub(self.schedule.interval_secs());
        let r = *self.srv_reveals.entry(t).or_insert_with(|| {
            let mut r = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut r);
            r
        });
        self.srv_reveals.retain(|&p, _| p >= prev);
        let seen_commits = self
            .votes
            .get(&prev)
            .map(|m| m.iter().filter_map(|(id, (v, _))| v.srv.commit.map(|c| (*id, c))).collect())
            .unwrap_or_default();
        let held = self.published.as_ref().map(|(c, _)| c).filter(|c| c.valid_after() == prev);
        VoteSrv {
            commit: Some(srv_commit(t, &self.me, &r)),
            reveal: self.srv_reveals.get(&prev).copied(),
            seen_commits,
            previous: held.and_then(|c| c.shared_random().current),
            period_srvs: held.map(|c| c.meta().period_srvs.clone()).unwrap_or_default(),
        }
    }

    /// Accepts a vote whose signature was verified, at `now_ms`.
    pub fn accept_vote(&mut self, vote: Vote, text: Arc<str>, now_ms: u64) -> Result<Accepted, Reject> {
        if !self.authorities.contains(&vote.voter) {
            return Err(Reject::bad("voter is not a configured authority"));
        }
        let t = vote.lifetime.valid_after;
        if self.schedule.is_period_start(t) {
            if !self.schedule.accepts_vote_for(t, now_ms) {
                return Err(Reject::bad(skew_reason("vote", t, self.schedule.vote_offset_ms(t, now_ms))));
            }
        } else {
            // A bootstrap round's vote (crate::bootstrap).
            if !self.schedule.accepts_bootstrap_vote_for(t, now_ms) {
                return Err(Reject::bad(skew_reason("bootstrap vote", t, self.schedule.bootstrap_offset_ms(t, now_ms))));
            }
            if self.published_valid_after().is_some_and(|p| p >= t) {
                return Err(Reject::bad(format!("bootstrap vote for valid-after {}: a consensus as new is already published", Utc(t))));
            }
        }
        if vote.lifetime != self.schedule.lifetime(t) {
            return Err(Reject::bad("vote times do not match this authority's voting interval"));
        }
        let slot = self.votes.entry(t).or_default();
        if let Some((held, _)) = slot.get(&vote.voter) {
            return if *held == vote {
                Ok(Accepted::Unchanged)
            } else {
                Err(Reject::conflict("a different vote from this authority is already held for this period"))
            };
        }
        slot.insert(vote.voter, (vote, text));
        // At most a few rounds are kept (votes are accepted only near their voting time, so in
        // practice one regular round and perhaps a bootstrap round are open).
        while self.votes.len() > MAX_VOTE_ROUNDS {
            self.votes.pop_first();
        }
        Ok(Accepted::New)
    }

    /// The text of the vote held from `voter` for valid-after `t`.
    pub fn held_vote_text(&self, t: u64, voter: &RelayId) -> Option<Arc<str>> {
        self.votes.get(&t).and_then(|slot| slot.get(voter)).map(|(_, text)| text.clone())
    }

    /// What a bootstrap round (crate::bootstrap) would change at `now` (seconds).
    pub fn bootstrap_view(&self, now: u64) -> crate::bootstrap::View {
        use allium_proto::doc::RelayFlags;
        let th = self.relative_thresholds(now);
        let published = self.published.as_ref().map(|(c, _)| c).filter(|c| c.valid_after() <= now && now < c.valid_until());
        let listed: BTreeSet<RelayId> = published.map(|c| c.relays().iter().map(|r| r.identity).collect()).unwrap_or_default();
        let published_guard = published.is_some_and(|c| c.relays().iter().any(|r| r.flags.contains(RelayFlags::GUARD)));
        let mut view = crate::bootstrap::View { valid: published.is_some(), ..Default::default() };
        let mut vote_guard = false;
        for d in self.descriptors.values() {
            if let Some(e) = self.vote_entry(d, &th, now) {
                view.candidates += 1;
                vote_guard |= e.flags.contains(RelayFlags::GUARD);
                if !listed.contains(&d.identity) {
                    view.missing.insert(d.identity);
                }
            }
        }
        view.guards_wanted = vote_guard && !published_guard;
        view
    }

    /// Whether a consensus valid at `now` (seconds) is published.
    pub fn has_valid_consensus(&self, now: u64) -> bool {
        self.published.as_ref().is_some_and(|(c, _)| c.valid_after() <= now && now < c.valid_until())
    }

    /// How many configured authorities make a majority (more than half).
    pub fn majority_of_authorities(&self) -> usize {
        self.majority()
    }

    /// This authority's own vote text for period `t`.
    pub fn own_vote(&self, t: u64) -> Option<Arc<str>> {
        self.votes.get(&t)?.get(&self.me).map(|(_, text)| text.clone())
    }

    /// Configured authorities (other than this one) whose vote for `t` is missing.
    pub fn missing_voters(&self, t: u64) -> Vec<RelayId> {
        let have = self.votes.get(&t);
        self.authorities
            .iter()
            .filter(|a| **a != self.me && !have.is_some_and(|h| h.contains_key(a)))
            .copied()
            .collect()
    }

    /// Number of votes held for `t` (own included).
    pub fn vote_count(&self, t: u64) -> usize {
        self.votes.get(&t).map_or(0, BTreeMap::len)
    }

    /// Computes and signs the consensus for period `t` from the votes held, if more than half
    /// of the configured authorities voted. Returns this authority's detached signature.
    pub fn make_consensus(&mut self, t: u64) -> Option<DetachedSignature> {
        self.pending.remove(&t);
        let votes: Vec<Vote> = self.votes.get(&t).map(|m| m.values().map(|(v, _)| v.clone()).collect()).unwrap_or_default();
        if votes.len() < self.majority() {
            return None;
        }
        let mut c = compute_consensus(&votes, self.authorities.len(), self.schedule.lifetime(t));
        let mine = DetachedSignature::new(&c, &self.signer);
        c.add_signature(mine.signature);
        for s in self.early_sigs.remove(&t).unwrap_or_default().into_values() {
            if s.digest == c.digest() {
                c.add_signature(s.signature);
            }
        }
        self.early_sigs.retain(|&p, _| p > t);
        self.pending.insert(t, c);
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_first();
        }
        Some(mine)
    }

    /// A peer signed a consensus for `t` other than the one computed here. This one may lack a
    /// vote that arrived after it was computed (a bootstrap round finishes with a majority of
    /// votes once its grace has passed, and the last vote can be a millisecond late): computed
    /// again from the votes held now, if that gives the digest the peer signed, it replaces the
    /// pending one, and this authority's new signature waits in [`Self::take_recomputed`].
    fn recompute_to_match(&mut self, t: u64, digest: &[u8; 32]) -> bool {
        let votes: Vec<Vote> = self.votes.get(&t).map(|m| m.values().map(|(v, _)| v.clone()).collect()).unwrap_or_default();
        if votes.len() < self.majority() {
            return false;
        }
        let mut c = compute_consensus(&votes, self.authorities.len(), self.schedule.lifetime(t));
        if c.digest() != *digest {
            return false;
        }
        let mine = DetachedSignature::new(&c, &self.signer);
        c.add_signature(mine.signature);
        self.pending.insert(t, c);
        self.recomputed = Some(mine);
        true
    }

    /// This authority's signature of a consensus it recomputed to match a peer's, once.
    pub fn take_recomputed(&mut self) -> Option<DetachedSignature> {
        self.recomputed.take()
    }

    /// The pending consensus for `t`, if computed: (digest, relays, signatures).
    pub fn pending_summary(&self, t: u64) -> Option<([u8; 32], usize, usize)> {
        self.pending.get(&t).map(|c| (c.digest(), c.relays().len(), c.signatures().len()))
    }

    /// Accepts a detached signature from another authority at `now_ms`. Returns `Some` when
    /// that made a consensus publishable or added a signature to the published one.
    pub fn accept_signature(&mut self, s: DetachedSignature, now_ms: u64) -> Result<Option<Published>, Reject> {
        if !self.authorities.contains(&s.signature.identity()) {
            return Err(Reject::bad("signer is not a configured authority"));
        }
        if let Err(e) = s.verify(now_ms / 1000) {
            return Err(Reject::bad(e.to_string()));
        }
        let t = s.valid_after;
        if self.pending.get(&t).is_some_and(|c| c.digest() != s.digest) && !self.recompute_to_match(t, &s.digest) {
            return Err(Reject::conflict("consensus digest differs from ours"));
        }
        if let Some(c) = self.pending.get_mut(&t) {
            c.add_signature(s.signature);
            return Ok(self.try_publish(now_ms));
        }
        if let Some((c, text)) = self.published.as_mut().filter(|(c, _)| c.valid_after() == t) {
            if c.digest() != s.digest {
                return Err(Reject::conflict("consensus digest differs from ours"));
            }
            if !c.add_signature(s.signature) {
                return Ok(None);
            }
            *text = c.encode().into();
            return Ok(Some(published_of(c, text)));
        }
        // Signatures are sent at the signing time and may be retried at publication (a quarter
        // of an interval later): later than half an interval, or for a period beyond the coming
        // one, the sender's clock is probably off.
        let off = self.schedule.sign_offset_ms(t, now_ms);
        let half = i64::try_from(self.schedule.interval_secs().saturating_mul(500)).unwrap_or(i64::MAX);
        // Kept until this authority computes that consensus: the coming period's, a bootstrap
        // round's, or this period's when this authority is late computing it (a loaded machine,
        // a vote that came late): refusing would lose the signature and warn the sender.
        let late_here = (-half..=0).contains(&off);
        if self.schedule.next_period(now_ms) == t || self.schedule.accepts_bootstrap_vote_for(t, now_ms) || late_here {
            let slot = self.early_sigs.entry(t).or_default();
            slot.entry(s.signature.identity()).or_insert(s);
            while self.early_sigs.len() > 2 {
                self.early_sigs.pop_first();
            }
            return Ok(None);
        }
        Err(Reject::bad(skew_reason("signature", t, off)))
    }

    /// Publishes the newest pending consensus whose time has come, that more than half of the
    /// configured authorities signed and that is newer than the published one.
    pub fn try_publish(&mut self, now_ms: u64) -> Option<Published> {
        let newest = self.published_valid_after();
        let ready = |c: &Consensus| {
            now_ms >= self.schedule.publish_at_ms(c.valid_after())
                && newest.is_none_or(|n| c.valid_after() > n)
                && c.signatures().iter().filter(|s| self.authorities.contains(&s.identity())).count() >= self.majority()
        };
        let t = *self.pending.iter().rev().find(|(_, c)| ready(c))?.0;
        let c = self.pending.remove(&t)?;
        self.pending.retain(|&p, _| p > t);
        let text: Arc<str> = c.encode().into();
        let p = published_of(&c, &text);
        self.microdescs = crate::microdescs::MicrodescStore::of_consensus(&c);
        allium_net::metrics::METRICS.set_consensus(c.valid_after(), c.valid_until());
        self.published = Some((c, text));
        self.changes += 1;
        Some(p)
    }

    /// Installs a consensus loaded from disk (already verified by the caller), unless a newer
    /// one is held.
    pub fn install_published(&mut self, c: Consensus) {
        if self.published.as_ref().is_some_and(|(p, _)| p.valid_after() >= c.valid_after()) {
            return;
        }
        let text = c.encode().into();
        allium_net::metrics::METRICS.set_consensus(c.valid_after(), c.valid_until());
        self.microdescs = crate::microdescs::MicrodescStore::of_consensus(&c);
        self.published = Some((c, text));
        self.changes += 1;
    }

    /// The answer to a microdescriptor path ([`crate::microdescs::answer`]) for the published
    /// consensus: `None` when the path is malformed.
    pub fn microdescs_answer(&self, path: &str) -> Option<String> {
        crate::microdescs::answer(&self.microdescs, path)
    }

    /// The latest published consensus text.
    pub fn consensus_text(&self) -> Option<Arc<str>> {
        self.published.as_ref().map(|(_, t)| t.clone())
    }

    /// The `valid-after` of the latest published consensus.
    pub fn published_valid_after(&self) -> Option<u64> {
        self.published.as_ref().map(|(c, _)| c.valid_after())
    }

    /// The latest published consensus.
    pub fn published_consensus(&self) -> Option<&Consensus> {
        self.published.as_ref().map(|(c, _)| c)
    }

    /// Start of `id`'s current unbroken run of successful reachability tests (unix seconds),
    /// if its last test succeeded.
    pub fn running_since(&self, id: &RelayId) -> Option<u64> {
        self.history.get(id).filter(|h| h.last_ok).and_then(|h| h.run_since)
    }

    /// The descriptor held for `id`.
    pub fn descriptor(&self, id: &RelayId) -> Option<&RelayDescriptor> {
        self.descriptors.get(id)
    }
}

/// The reason given for a vote or signature refused for its timing: `offset_ms` is how far
/// its voting (signing) time is ahead of this authority's clock. Peers recognize a refusal for
/// clock skew by its ending `(clock skew?)`.
pub fn skew_reason(what: &str, t: u64, offset_ms: i64) -> String {
    let dir = if offset_ms > 0 { "ahead of" } else { "behind" };
    format!("{what} for valid-after {} is {} {dir} this authority's schedule {SKEW_MARK}", Utc(t), crate::clock::fmt_secs(offset_ms.unsigned_abs()))
}

/// How a refusal's reason ends when the refused document was for the wrong time.
pub const SKEW_MARK: &str = "(clock skew?)";

fn published_of(c: &Consensus, text: &Arc<str>) -> Published {
    Published { valid_after: c.valid_after(), relays: c.relays().len(), signatures: c.signatures().len(), text: text.clone() }
}

// ---------------------------------------------------------------------------------------------
// The running authority
// ---------------------------------------------------------------------------------------------

/// What the HTTP handlers and the schedule loop share.
pub(crate) struct Shared {
    pub state: Mutex<AuthorityState>,
    pub schedule: Schedule,
    /// The only clock the running authority reads.
    pub clock: Clock,
    /// What it noticed about clocks, for [`run_authority_with_status`]'s caller.
    pub status: Arc<AuthorityStatus>,
    /// The other authorities.
    pub peers: Vec<AuthorityEntry>,
    pub authority_ids: Vec<RelayId>,
    pub http: reqwest::Client,
    pub data_dir: PathBuf,
    /// Serializes writes of the consensus file.
    pub save_lock: tokio::sync::Mutex<()>,
    /// The authority's relay credentials and address for reachability tests.
    pub creds: Arc<allium_net::link::RelayCredentials>,
    pub bind: std::net::IpAddr,
    /// Bounds concurrent reachability tests.
    pub tests: Arc<tokio::sync::Semaphore>,
    /// The keys, for the signing key's renewal (see [`maintain_keys`]).
    pub keys: Mutex<AuthorityKeys>,
    /// Pushes to each peer that failed in a row, by (peer name, what): see [`report`].
    pub push_failures: Mutex<HashMap<(String, &'static str), FailureStreak>>,
    /// Periods in a row without a consensus of our own, and without a published one: the first
    /// after a start is expected (peers not up yet), see [`round_outcome`].
    pub round_failures: Mutex<HashMap<&'static str, FailureStreak>>,
    /// Refused vote pushes per voter named ([`crate::vote_gate`]).
    pub vote_pushes: crate::vote_gate::PushBudget,
    /// How long a pushed vote's body may take to arrive (`limits.vote_read_timeout_secs`).
    pub vote_read_timeout: std::time::Duration,
    /// The network status page, rendered once per consensus ([`crate::server::StatusPage`]).
    pub status_page: crate::server::StatusPage,
    /// `network.dangerous_testnet`.
    pub testnet: bool,
    /// `authority.bandwidth_scan`: the scanner writes `bandwidth-measurements` in the data
    /// directory, read again before each round's vote.
    pub bandwidth_scan: bool,
    /// Peers' bootstrap rounds to join ([`crate::bootstrap`]).
    pub joinable: crate::bootstrap::Joinable,
}

/// Most reachability tests in flight at once.
pub const MAX_CONCURRENT_TESTS: usize = 128;

/// How long before voting the reachability tests start, and how long one test may take:
/// a quarter of the interval, at most 20 s.
pub fn reach_window_ms(interval_secs: u64) -> u64 {
    (interval_secs * 1000 / 4).min(20_000)
}

/// Pushes this authority's detached signature `text` to every other authority, each within
/// `timeout` (failures reported as [`report`] does).
pub(crate) fn push_signature(sh: &Arc<Shared>, text: String, timeout: Duration) {
    for peer in sh.peers.clone() {
        let (sh2, text) = (sh.clone(), text.clone());
        tokio::spawn(async move {
            let r = crate::http::post(&sh2.http, &peer, "/allium/v1/signature", &text, timeout).await;
            report(&sh2, &peer, "signature push", r);
        });
    }
}

/// Tests each target by completing a link handshake to it (as a relay, from the authority's
/// address) and then closing the link; records each result as it comes. A test not finished
/// within `timeout` counts as a failure.
pub(crate) async fn test_reachability(sh: &Arc<Shared>, targets: Vec<ReachTarget>, timeout: Duration) -> (usize, usize) {
    let mut set = JoinSet::new();
    let total = targets.len();
    for t in targets {
        let sh2 = sh.clone();
        set.spawn(async move {
            let ok = tokio::time::timeout(timeout, async {
                let _permit = sh2.tests.acquire().await.ok()?;
                let peer = allium_net::link::PeerInfo { addr: t.address, identity: t.identity, link_key: t.link_key };
                allium_net::link::connect(sh2.bind, &peer, Some(&sh2.creds)).await.ok()
            })
            .await
            .ok()
            .flatten()
            .is_some();
            // The link (if any) is dropped here: the test only needs the handshake.
            sh2.lock().record_reachability(t.identity, ok, sh2.clock.now_secs());
            ok
        });
    }
    let mut reachable = 0;
    while let Some(r) = set.join_next().await {
        reachable += usize::from(r.unwrap_or(false));
    }
    (reachable, total)
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, AuthorityState> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a publication and saves the consensus to disk, with the relay history and the
    /// descriptors it was made from (so an authority restarted even seconds after a network's
    /// first consensus keeps its relays).
    pub async fn on_published(&self, p: Published) {
        tracing::info!(
            valid_after = p.valid_after,
            relays = p.relays,
            signatures = p.signatures,
            authorities = self.authority_ids.len(),
            "consensus published"
        );
        let _g = self.save_lock.lock().await;
        // Only the newest consensus is written: a late signature for an older one must not
        // replace a newer file.
        if self.lock().published_valid_after() != Some(p.valid_after) {
            return;
        }
        let dir = self.data_dir.clone();
        let text = p.text.clone();
        let r = tokio::task::spawn_blocking(move || save_consensus(&dir, &text)).await;
        if let Err(e) | Ok(Err(e)) = r.map_err(std::io::Error::other) {
            tracing::warn!("cannot save the consensus in the data directory: {e}");
        }
        drop(_g);
        save_history(self).await;
        // A consensus published and saved: whoever waits on the status hears of it.
        self.status.touch();
    }
}

/// Writes the consensus to `dir/cached-consensus` through a temporary file and a rename, so a
/// crash leaves either the old file or the new one.
pub fn save_consensus(dir: &Path, text: &str) -> std::io::Result<()> {
    crate::cache::save(dir, CONSENSUS_FILE, text)
}

/// The relays' reachability history in the data directory ([`crate::history`]).
pub const HISTORY_FILE: &str = "relay-history";

/// Reads the saved relay history; an unreadable one is reported and replaced by an empty one
/// (the file is set aside as `relay-history.bad`, never silently overwritten).
pub fn load_history(dir: &Path) -> HistoryBook {
    let path = dir.join(HISTORY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HistoryBook::default(),
        Err(e) => {
            tracing::error!("cannot read the relay history {}: {e}; starting without it", path.display());
            return HistoryBook::default();
        }
    };
    match HistoryBook::from_text(&text) {
        Ok(h) => {
            tracing::info!(relays = h.len(), "loaded the relay history");
            h
        }
        Err(e) => {
            let aside = dir.join(format!("{HISTORY_FILE}.bad"));
            let _ = std::fs::rename(&path, &aside);
            tracing::error!("the relay history {} is damaged ({e}); set aside as {} and starting without it", path.display(), aside.display());
            HistoryBook::default()
        }
    }
}

/// Writes the relay history and the held descriptors atomically (after each round of
/// reachability tests).
async fn save_history(sh: &Shared) {
    let (history, descriptors) = {
        let mut st = sh.lock();
        (st.history_text(), st.descriptors_text())
    };
    let dir = sh.data_dir.clone();
    let _g = sh.save_lock.lock().await;
    let r = tokio::task::spawn_blocking(move || crate::cache::save(&dir, HISTORY_FILE, &history).and_then(|()| crate::cache::save(&dir, DESCRIPTORS_FILE, &descriptors))).await;
    if let Err(e) | Ok(Err(e)) = r.map_err(std::io::Error::other) {
        tracing::error!("cannot save the relay history or descriptors in the data directory: {e}");
    }
}

/// The held descriptors in the data directory, as uploaded (signed texts one after another).
pub const DESCRIPTORS_FILE: &str = "cached-descriptors";

/// Accepts again every saved descriptor that still verifies and is recent enough (a restart
/// keeps the relays it knew instead of voting an empty list until they upload again).
pub fn load_descriptors(dir: &Path, state: &mut AuthorityState, now: u64) {
    let Ok(text) = std::fs::read_to_string(dir.join(DESCRIPTORS_FILE)) else { return };
    let start = "allium-relay-descriptor ";
    let mut kept = 0;
    let mut from = text.find(start);
    while let Some(i) = from {
        let end = text[i + 1..].find(&format!("\n{start}")).map(|j| i + 1 + j + 1).unwrap_or(text.len());
        let one = &text[i..end];
        if let Ok(d) = RelayDescriptor::parse(one).and_then(|u| u.verify()) {
            let id = d.identity;
            if state.accept_descriptor(d, now).is_ok() {
                state.keep_descriptor_text(id, one.into());
                kept += 1;
            }
        }
        from = (end < text.len()).then_some(end);
    }
    tracing::info!(descriptors = kept, "loaded the saved descriptors");
}

/// Reads and verifies the saved consensus, if there is one still valid at `now`.
pub fn load_consensus(dir: &Path, authorities: &[RelayId], now: u64) -> Option<Consensus> {
    let path = dir.join(CONSENSUS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("ignoring the saved consensus: {e}");
            return None;
        }
    };
    match Consensus::parse(&text).map_err(|e| e.to_string()).and_then(|u| u.verify(authorities, now).map_err(|e| e.to_string())) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("ignoring the saved consensus: {e}");
            None
        }
    }
}

/// Runs an authority: binds `node.address:dir_port`, then serves and votes forever.
pub async fn run_authority(cfg: AuthorityConfig, keys: AuthorityKeys) -> Result<(), DirError> {
    cfg.validate()?;
    cfg.check_identity(&keys.relay_id())?;
    let addr = SocketAddr::new(cfg.node.address, cfg.authority.dir_port);
    let me = keys.relay_id();
    if cfg.network.authorities.iter().any(|a| a.identity == me && a.address != addr) {
        tracing::warn!(
            "this authority's entry in network.authorities does not match node.address and authority.dir_port; \
             other nodes will look for it there"
        );
    }
    let listener = allium_net::accept::listen(addr).map_err(|err| DirError::Bind { addr, err })?;
    run_authority_on(cfg, keys, listener).await
}

/// Like [`run_authority`], on a listener bound by the caller (tests bind port 0 first to learn
/// the port). `authority.dir_port` is not used.
pub async fn run_authority_on(cfg: AuthorityConfig, keys: AuthorityKeys, listener: TcpListener) -> Result<(), DirError> {
    run_authority_with_status(cfg, keys, listener, Arc::new(AuthorityStatus::default())).await
}

/// Like [`run_authority_on`], keeping `status` up to date with what the authority notices
/// about clocks (tests read it; it holds the same text as the warnings logged).
pub async fn run_authority_with_status(
    cfg: AuthorityConfig,
    mut keys: AuthorityKeys,
    listener: TcpListener,
    status: Arc<AuthorityStatus>,
) -> Result<(), DirError> {
    cfg.validate()?;
    let clock = cfg.clock();
    if clock.offset_secs() != 0 {
        tracing::warn!(offset_secs = clock.offset_secs(), "test network: this authority's clock is shifted by authority.dangerous_clock_offset_secs");
    }
    let me = keys.relay_id();
    cfg.check_identity(&me)?;
    let schedule = Schedule::new(cfg.interval_secs());
    let ids = cfg.authority_ids();
    let http = crate::http::client(cfg.node.address).map_err(DirError::Http)?;
    allium_net::keys::ensure_dir(&cfg.node.data_dir).map_err(|e| DirError::DataDir(e.to_string()))?;
    let policy = VotePolicy::from_config(&cfg)?;
    log_key_notes(&std::mem::take(&mut keys.notes));
    let (cert_expires, identity_present) = (keys.signer.cert().expires, keys.identity.is_some());
    let mut state = AuthorityState::new(keys.signer.clone(), &ids, cfg.network.dangerous_testnet, schedule).with_policy(policy);
    state.set_history(load_history(&cfg.node.data_dir));
    if cfg.authority.bandwidth_scan {
        state.set_measurements(Some(crate::measured::Measurements::load(&cfg.node.data_dir)));
    }
    load_descriptors(&cfg.node.data_dir, &mut state, clock.now_secs());
    if let Some(c) = load_consensus(&cfg.node.data_dir, &ids, clock.now_secs()) {
        tracing::info!(valid_after = %Utc(c.valid_after()), relays = c.relays().len(), "loaded the saved consensus");
        state.install_published(c);
    }
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        schedule,
        clock,
        status,
        peers: cfg.network.authorities.iter().filter(|a| a.identity != me).cloned().collect(),
        authority_ids: ids,
        http,
        data_dir: cfg.node.data_dir.clone(),
        save_lock: tokio::sync::Mutex::new(()),
        creds: Arc::new(keys.credentials()),
        keys: Mutex::new(keys),
        push_failures: Mutex::new(HashMap::new()),
        round_failures: Mutex::new(HashMap::new()),
        vote_pushes: crate::vote_gate::PushBudget::new(cfg.interval_secs() * 1000, cfg.limits.vote_push_burst),
        vote_read_timeout: cfg.limits.vote_read_timeout(),
        bind: cfg.node.address,
        tests: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_TESTS)),
        status_page: crate::server::StatusPage::new(cfg.network.authorities.clone()),
        testnet: cfg.network.dangerous_testnet,
        bandwidth_scan: cfg.authority.bandwidth_scan,
        joinable: Default::default(),
    });
    tracing::info!(
        nickname = %cfg.node.nickname,
        interval_secs = schedule.interval_secs(),
        authorities = shared.authority_ids.len(),
        signing_key_certified_until = %Utc(cert_expires),
        identity_key_present = identity_present,
        "directory authority running"
    );
    let mut tasks = JoinSet::new();
    allium_net::operator::spawn(&cfg.node, "authority", crate::status::status_fn(shared.clone(), cfg.node.nickname.clone()), &mut tasks)
        .await
        .map_err(DirError::TaskFailed)?;
    let app = crate::server::router(shared.clone());
    let limiter = allium_net::limits::conn::ConnLimiter::new(cfg.limits.connections(), cfg.limits.max_connections_per_address);
    let dir_port = crate::access_log::DirPort { listener, limiter, idle: cfg.limits.dir_idle_timeout(), header_timeout: cfg.limits.dir_header_timeout() };
    tasks.spawn(async move { match dir_port.serve(app).await {} });
    let sh = shared.clone();
    tasks.spawn(async move { schedule_loop(sh).await });
    let sh = shared.clone();
    tasks.spawn(async move {
        crate::bootstrap::run(sh).await;
        Ok(())
    });
    match tasks.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(DirError::TaskFailed(e.to_string())),
        None => Err(DirError::TaskFailed("no task".into())),
    }
}

fn log_key_notes(notes: &[KeyNote]) {
    for n in notes {
        match n {
            KeyNote::Info(m) => tracing::info!("{m}"),
            KeyNote::Warn(m) => tracing::warn!("{m}"),
        }
    }
}

/// Once a period: renews the signing key when it is due and the identity is at hand (the
/// state signs with the new one at once), or warns that it expires soon.
fn maintain_keys(sh: &Shared) {
    let now = sh.clock.now_secs();
    let mut keys = sh.keys.lock().unwrap_or_else(|e| e.into_inner());
    match keys.maintain(&sh.data_dir, now) {
        Ok((renewed, notes)) => {
            log_key_notes(&notes);
            if renewed {
                let signer = keys.signer.clone();
                drop(keys);
                sh.lock().set_signer(signer);
            }
        }
        Err(e) => tracing::error!("cannot renew the authority signing key: {e}"),
    }
}

/// Votes, pulls, signs and publishes, one period after another. Never returns.
async fn schedule_loop(sh: Arc<Shared>) -> Result<(), DirError> {
    let s = sh.schedule;
    let clock = sh.clock;
    loop {
        let t = s.next_period(clock.now_ms());
        maintain_keys(&sh);
        let window = reach_window_ms(s.interval_secs());
        clock.sleep_until_ms(s.vote_at_ms(t).saturating_sub(window)).await;
        if clock.now_ms() < s.vote_at_ms(t) {
            let targets = sh.lock().reach_targets();
            let (up, all) = test_reachability(&sh, targets, clock.until(s.vote_at_ms(t))).await;
            tracing::info!(valid_after = %Utc(t), reachable = up, relays = all, "reachability tested");
            save_history(&sh).await;
            if sh.bandwidth_scan {
                let dir = sh.data_dir.clone();
                if let Ok(m) = tokio::task::spawn_blocking(move || crate::measured::Measurements::load(&dir)).await {
                    sh.lock().set_measurements(Some(m));
                }
            }
        }
        clock.sleep_until_ms(s.vote_at_ms(t)).await;
        // Started after this round's voting time, without a valid consensus: its view of the
        // relays is a few moments old (a new network's relays may not have uploaded yet), and a
        // bootstrap round (crate::bootstrap) makes the consensus meanwhile; a vote now could
        // only make a worse one, published after it. Next period.
        if clock.now_ms() > s.vote_at_ms(t) + LATE_VOTE_MS && !sh.lock().has_valid_consensus(clock.now_secs()) {
            tracing::info!(valid_after = %Utc(t), "started after this round's voting time without a consensus: not voting in it (a bootstrap round makes one)");
            clock.sleep_until_ms(s.sign_at_ms(t)).await;
            continue;
        }
        let (text, n) = sh.lock().make_vote(t, clock.now_secs());
        tracing::info!(valid_after = %Utc(t), relays = n, "voted");
        let sh2 = sh.clone();
        tokio::spawn(async move { push_vote(&sh2, t, text, s.sign_at_ms(t)).await });

        clock.sleep_until_ms(s.pull_at_ms(t)).await;
        pull_missing_votes(&sh, t).await;

        clock.sleep_until_ms(s.sign_at_ms(t)).await;
        let sig = sh.lock().make_consensus(t);
        if round_outcome(&sh, "made a consensus", sig.is_some()) {
            let have = sh.lock().vote_count(t);
            tracing::warn!(valid_after = %Utc(t), votes = have, authorities = sh.authority_ids.len(), "too few votes to make a consensus");
        } else if sig.is_none() {
            let have = sh.lock().vote_count(t);
            tracing::info!(valid_after = %Utc(t), votes = have, authorities = sh.authority_ids.len(), "too few votes to make a consensus (peers may not be up yet; a warning if it happens again)");
        }
        match sig {
            None => {}
            Some(sig) => {
                let text = sig.encode();
                for peer in sh.peers.clone() {
                    let sh2 = sh.clone();
                    let text = text.clone();
                    tokio::spawn(async move {
                        let mut r = crate::http::post(&sh2.http, &peer, "/allium/v1/signature", &text, clock.until(s.publish_at_ms(t))).await;
                        if matches!(&r, Err(crate::http::PostError::Transport(_)) | Err(crate::http::PostError::Status(500..=599, _))) {
                            // One retry at publication time, for a peer that was briefly away.
                            clock.sleep_until_ms(s.publish_at_ms(t)).await;
                            r = crate::http::post(&sh2.http, &peer, "/allium/v1/signature", &text, clock.until(s.publish_at_ms(t) + s.interval_secs() * 250)).await;
                        }
                        report(&sh2, &peer, "signature push", r);
                    });
                }
            }
        }

        clock.sleep_until_ms(s.publish_at_ms(t)).await;
        let published = sh.lock().try_publish(clock.now_ms());
        match published {
            Some(p) => {
                round_outcome(&sh, "consensus signed by a majority", true);
                sh.on_published(p).await
            }
            None => {
                let summary = sh.lock().pending_summary(t);
                if let Some((_, relays, sigs)) = summary {
                    // Late signatures may still complete it (see the signature handler). The
                    // first period after a start often lacks them: peers not up yet.
                    if round_outcome(&sh, "consensus signed by a majority", false) {
                        tracing::warn!(valid_after = %Utc(t), relays, signatures = sigs, "consensus not yet signed by a majority");
                    } else {
                        tracing::info!(valid_after = %Utc(t), relays, signatures = sigs, "consensus not yet signed by a majority (peers may not be up yet; a warning if it happens again)");
                    }
                }
            }
        }
    }
}

async fn pull_missing_votes(sh: &Arc<Shared>, t: u64) {
    let missing = sh.lock().missing_voters(t);
    let mut set = JoinSet::new();
    for peer in sh.peers.iter().filter(|p| missing.contains(&p.identity)).cloned() {
        let sh2 = sh.clone();
        set.spawn(async move {
            let url = format!("http://{}/allium/v1/vote/{t}", peer.address);
            let deadline = sh2.clock.until(sh2.schedule.sign_at_ms(t));
            let r = crate::http::get_text(&sh2.http, &url, deadline, allium_proto::doc::MAX_VOTE_LEN).await;
            match r {
                Ok(text) => match crate::server::ingest_vote(&sh2, &text) {
                    Ok(_) => tracing::debug!(authority = %peer.name, "pulled vote"),
                    Err(rej) => tracing::warn!(authority = %peer.name, "pulled vote refused: {}", rej.reason),
                },
                Err(e) => tracing::info!(authority = %peer.name, "could not pull its vote: {e}"),
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// What a running authority noticed about clocks: its own (when peers refuse its votes for
/// clock skew) and its peers' (from their HTTP `Date` headers). Each entry is the text it
/// logged at warn level.
#[derive(Debug, Default)]
pub struct AuthorityStatus {
    inner: Mutex<ClockReport>,
    /// Counts changes (a clock report, a consensus published), for [`Self::changed_since`].
    version: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

/// A snapshot of [`AuthorityStatus`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClockReport {
    /// Periods in which more than half of the peers refused this authority's vote for clock
    /// skew.
    pub periods_refused_for_skew: u64,
    /// The last warning that this authority's own clock is probably wrong.
    pub own_clock_warning: Option<String>,
    /// Peers whose clock seemed off at the last vote push, by name: how far ahead of ours
    /// (milliseconds; negative: behind), and the warning logged.
    pub peer_clocks: BTreeMap<String, (i64, String)>,
}

impl AuthorityStatus {
    /// The current report.
    pub fn clock_report(&self) -> ClockReport {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A number that grows with every change of this status.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the status has changed since [`Self::version`] gave `version`.
    pub async fn changed_since(&self, version: u64) {
        loop {
            // Registered before the check: a change between check and wait is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.version() > version {
                return;
            }
            changed.await;
        }
    }

    fn update(&self, f: impl FnOnce(&mut ClockReport)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
        self.touch();
    }

    fn touch(&self) {
        self.version.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// "ahead of" or "behind" for an offset (positive: ahead).
fn ahead_or_behind(offset_ms: i64) -> &'static str {
    if offset_ms > 0 {
        "ahead of"
    } else {
        "behind"
    }
}

/// Pushes this authority's vote for `t` to every peer at once, then sums up what they said
/// about clocks: at most one warning per peer whose `Date` header is off by more than
/// [`date_warn_tolerance_ms`], and one line when peers refused the vote for clock skew (saying
/// that this authority's clock is probably wrong when more than half of them did).
pub(crate) async fn push_vote(sh: &Arc<Shared>, t: u64, text: Arc<str>, deadline_ms: u64) {
    let (s, clock) = (sh.schedule, sh.clock);
    let mut set = JoinSet::new();
    for peer in sh.peers.clone() {
        let sh2 = sh.clone();
        let text = text.clone();
        set.spawn(async move {
            let sent = clock.now_ms();
            let (r, date) = crate::http::post_dated(&sh2.http, &peer, "/allium/v1/vote", &text, clock.until(deadline_ms)).await;
            (peer, r, date, sent, clock.now_ms())
        });
    }
    let tolerance = date_warn_tolerance_ms(s.interval_secs());
    let mut skew_refusals: Vec<(String, String)> = Vec::new();
    let mut offsets: Vec<i64> = Vec::new();
    while let Some(j) = set.join_next().await {
        let Ok((peer, r, date, sent, recv)) = j else { continue };
        let skew = date.and_then(|d| date_skew_ms(d, sent, recv, tolerance));
        match skew {
            Some(off) => {
                offsets.push(off);
                let msg = format!(
                    "{}'s clock is {} {} ours (its HTTP Date header); votes are refused between authorities more than {} apart",
                    peer.name,
                    fmt_secs(off.unsigned_abs()),
                    ahead_or_behind(off),
                    fmt_secs(s.skew_tolerance_ms())
                );
                tracing::warn!(authority = %peer.name, "{msg}");
                sh.status.update(|st| {
                    st.peer_clocks.insert(peer.name.clone(), (off, msg));
                });
            }
            None if date.is_some() => sh.status.update(|st| {
                st.peer_clocks.remove(&peer.name);
            }),
            None => {}
        }
        match r {
            Err(crate::http::PostError::Status(400, reason)) if reason.contains(SKEW_MARK) => skew_refusals.push((peer.name.clone(), reason)),
            r => report(sh, &peer, "vote push", r),
        }
    }
    if skew_refusals.is_empty() {
        return;
    }
    skew_refusals.sort();
    let names: Vec<&str> = skew_refusals.iter().map(|(n, _)| n.as_str()).collect();
    let names = names.join(", ");
    let first = &skew_refusals[0].1;
    if skew_refusals.len() * 2 > sh.peers.len() {
        offsets.sort_unstable();
        let seen = offsets
            .get(offsets.len() / 2)
            .map(|o| format!("; by their Date headers, ours is about {} {} theirs", fmt_secs(o.unsigned_abs()), ahead_or_behind(-o)))
            .unwrap_or_default();
        let msg = format!(
            "this authority's vote for valid-after {} was refused for clock skew by {} of {} peers ({names}): {first}; \
             this authority's clock is probably wrong{seen}, and its votes will not count until it is corrected",
            Utc(t),
            skew_refusals.len(),
            sh.peers.len()
        );
        tracing::warn!(valid_after = %Utc(t), "{msg}");
        sh.status.update(|st| {
            st.periods_refused_for_skew += 1;
            st.own_clock_warning = Some(msg);
        });
    } else {
        tracing::warn!(valid_after = %Utc(t), "{names} refused this authority's vote for clock skew: {first}; their clocks are probably wrong");
    }
}

/// Records whether this period's `what` (making a consensus, getting it signed by a majority)
/// succeeded; true if it failed and is to be a warning: the first failure in a row (after a
/// start: peers not up yet) is not.
fn round_outcome(sh: &Shared, what: &'static str, ok: bool) -> bool {
    let mut streaks = sh.round_failures.lock().unwrap_or_else(|e| e.into_inner());
    let streak = streaks.entry(what).or_insert(FailureStreak::new(PUSH_FAILURES_BEFORE_WARN));
    if ok {
        if streak.succeed() {
            tracing::info!("{what} again");
        }
        false
    } else {
        streak.fail()
    }
}

/// Pushes to one peer that may fail in a row before it is a warning: a peer authority not up
/// yet fails the first push after a start.
pub const PUSH_FAILURES_BEFORE_WARN: u32 = 1;

/// Logs the outcome of a push to a peer: a failure at info while it is the first in a row
/// ([`PUSH_FAILURES_BEFORE_WARN`]), at warn once it repeats; the recovery after a warning at info.
pub(crate) fn report(sh: &Shared, peer: &AuthorityEntry, what: &'static str, r: Result<(), crate::http::PostError>) {
    let mut streaks = sh.push_failures.lock().unwrap_or_else(|e| e.into_inner());
    let streak = streaks.entry((peer.name.clone(), what)).or_insert(FailureStreak::new(PUSH_FAILURES_BEFORE_WARN));
    match r {
        Ok(()) => {
            if streak.succeed() {
                tracing::info!(authority = %peer.name, "{what} accepted again");
            } else {
                tracing::debug!(authority = %peer.name, "{what} accepted");
            }
        }
        Err(e) => {
            if streak.fail() {
                tracing::warn!(authority = %peer.name, failures_in_a_row = streak.failures(), "{what} failed: {e}");
            } else {
                tracing::info!(authority = %peer.name, "{what} failed (the peer may not be up yet; a warning if it fails again): {e}");
            }
            tracing::debug!(authority = %peer.name, address = %peer.address, "{what} failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::doc::{certify_link_key, RelayFlags};
    use ed25519_dalek::SigningKey;
    use allium_proto::policy::ExitPolicy;

    const I: u64 = 10;
    const T: u64 = 1_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// Authority `k`'s signing key, certified from time 0 for a long time.
    fn signer(k: &SigningKey) -> AuthoritySigner {
        signer_until(k, u64::MAX)
    }

    fn signer_until(k: &SigningKey, expires: u64) -> AuthoritySigner {
        let mut b = k.to_bytes();
        b[0] ^= 0x5a;
        b[7] ^= expires.to_be_bytes()[7];
        AuthoritySigner::certify(k, SigningKey::from_bytes(&b), 0, expires)
    }

    fn desc(k: &SigningKey, published: u64, addr: &str) -> RelayDescriptor {
        let link = [7; 32];
        RelayDescriptor {
            nickname: "r".into(),
            identity: RelayId(k.verifying_key().to_bytes()),
            onion_key: [5; 32],
            link_key: link,
            link_cert: certify_link_key(k, &link),
            address: addr.parse().unwrap(),
            policy: ExitPolicy::reject_all(),
            family: vec![],
            bandwidth: 1,
            protocols: crate::protocols::implemented_protocols(),
            published,
            platform: None,
        }
    }

    /// Records every held relay as reachable (as if the reachability round succeeded).
    fn all_reachable(st: &mut AuthorityState, now: u64) {
        for t in st.reach_targets() {
            st.record_reachability(t.identity, true, now);
        }
    }

    fn three(testnet: bool) -> (Vec<SigningKey>, Vec<AuthorityState>) {
        three_every(testnet, I)
    }

    /// Three authorities voting every `interval` seconds.
    fn three_every(testnet: bool, interval: u64) -> (Vec<SigningKey>, Vec<AuthorityState>) {
        let keys: Vec<SigningKey> = (1..=3).map(key).collect();
        let ids: Vec<RelayId> = keys.iter().map(|k| RelayId(k.verifying_key().to_bytes())).collect();
        let states = keys.iter().map(|k| AuthorityState::new(signer(k), &ids, testnet, Schedule::new(interval))).collect();
        (keys, states)
    }

    #[test]
    fn a9_descriptor_acceptance_rules() {
        let (_, mut st) = three(false);
        let a = &mut st[0];
        let k = key(50);
        let now = T;
        assert_eq!(a.accept_descriptor(desc(&k, now, "192.0.2.1:9001"), now), Ok(Accepted::New));
        assert_eq!(a.accept_descriptor(desc(&k, now, "192.0.2.1:9001"), now), Ok(Accepted::Unchanged));
        // Same or older published: replay refused.
        assert_eq!(a.accept_descriptor(desc(&k, now, "192.0.2.2:9001"), now).unwrap_err().status, 400);
        assert!(a.accept_descriptor(desc(&k, now - 1, "192.0.2.1:9001"), now).is_err());
        assert_eq!(a.accept_descriptor(desc(&k, now + 1, "192.0.2.1:9001"), now), Ok(Accepted::New));
        // Too far in the future, too old.
        let k2 = key(51);
        assert!(a.accept_descriptor(desc(&k2, now + 3601, "192.0.2.1:9001"), now).unwrap_err().reason.contains("future"));
        assert!(a.accept_descriptor(desc(&k2, now - 31, "192.0.2.1:9001"), now).unwrap_err().reason.contains("long ago"));
        // Private addresses only on a test network.
        assert!(a.accept_descriptor(desc(&k2, now, "127.0.0.1:9001"), now).unwrap_err().reason.contains("private"));
        let mut d = desc(&k2, now, "192.0.2.3:9001");
        d.policy = ExitPolicy::parse_rules(&["accept *:*"]).unwrap();
        assert!(a.accept_descriptor(d, now).unwrap_err().reason.contains("private"));
        let (_, mut st) = three(true);
        assert_eq!(st[0].accept_descriptor(desc(&k2, now, "127.0.0.1:9001"), now), Ok(Accepted::New));
    }

    /// Runs one period among `states` where `online[i]` says whether authority i takes part;
    /// returns what each published.
    fn run_period(states: &mut [AuthorityState], online: &[bool]) -> Vec<Option<Published>> {
        run_period_at(states, online, T)
    }

    /// [`run_period`] for the period starting at `t`.
    fn run_period_at(states: &mut [AuthorityState], online: &[bool], t: u64) -> Vec<Option<Published>> {
        run_period_every(states, online, t, I)
    }

    /// [`run_period_at`] for authorities voting every `interval` seconds.
    fn run_period_every(states: &mut [AuthorityState], online: &[bool], t: u64, interval: u64) -> Vec<Option<Published>> {
        let s = Schedule::new(interval);
        let mut votes = Vec::new();
        for (st, on) in states.iter_mut().zip(online) {
            if *on {
                all_reachable(st, t - interval);
                let (text, _) = st.make_vote(t, t - interval / 2);
                votes.push(text);
            }
        }
        for (st, on) in states.iter_mut().zip(online) {
            if !*on {
                continue;
            }
            for text in &votes {
                let v = Vote::parse(text).unwrap().verify(T).unwrap();
                let _ = st.accept_vote(v, text.clone(), s.vote_at_ms(t) + 10);
            }
        }
        let sigs: Vec<DetachedSignature> =
            states.iter_mut().zip(online).filter(|(_, on)| **on).filter_map(|(st, _)| st.make_consensus(t)).collect();
        let mut out = Vec::new();
        for (st, on) in states.iter_mut().zip(online) {
            let mut p = None;
            if *on {
                for sig in &sigs {
                    if let Ok(Some(x)) = st.accept_signature(*sig, s.sign_at_ms(t) + 10) {
                        p = Some(x);
                    }
                }
                p = p.or(st.try_publish(t * 1000));
            }
            out.push(p);
        }
        out
    }

    /// The shared random values of what authority `i` published.
    fn srv_published(out: &[Option<Published>], i: usize) -> allium_proto::doc::SharedRandom {
        let text = &out[i].as_ref().expect("published").text;
        Consensus::parse(text).unwrap().dangerously_assume_valid().shared_random()
    }

    #[test]
    fn srv_three_authorities_new_value_every_period() {
        let (_, mut st) = three(true);
        // First period: commitments only, nothing to reveal yet.
        let out = run_period_at(&mut st, &[true, true, true], T);
        assert_eq!(srv_published(&out, 0).current, None);
        let mut last = None;
        let mut values = BTreeSet::new();
        for k in 1..5 {
            let out = run_period_at(&mut st, &[true, true, true], T + k * I);
            let texts: Vec<&Arc<str>> = out.iter().map(|p| &p.as_ref().expect("published").text).collect();
            assert!(texts.iter().all(|t| *t == texts[0]), "all publish the same document");
            let sr = srv_published(&out, 0);
            let cur = sr.current.expect("value from the second period on");
            assert_eq!(cur.reveals, 3);
            assert_eq!(sr.previous, last, "previous is the last period's current");
            assert!(values.insert(cur.value), "value repeated");
            last = Some(cur);
        }
    }

    #[test]
    fn srv_two_authorities_alone_and_a_restarted_one_rejoins() {
        let (keys, mut st) = three(true);
        run_period_at(&mut st, &[true, true, false], T);
        let out = run_period_at(&mut st, &[true, true, false], T + I);
        assert_eq!(srv_published(&out, 0).current.map(|v| v.reveals), Some(2));
        // Authority 2 comes back with no memory: it commits, reveals one period later.
        let ids: Vec<RelayId> = keys.iter().map(|k| RelayId(k.verifying_key().to_bytes())).collect();
        st[2] = AuthorityState::new(signer(&keys[2]), &ids, true, Schedule::new(I));
        let out = run_period_at(&mut st, &[true, true, true], T + 2 * I);
        assert_eq!(out[2].as_ref().map(|p| &p.text), out[0].as_ref().map(|p| &p.text), "it agrees");
        assert_eq!(srv_published(&out, 0).current.map(|v| v.reveals), Some(2));
        let out = run_period_at(&mut st, &[true, true, true], T + 3 * I);
        assert_eq!(srv_published(&out, 0).current.map(|v| v.reveals), Some(3));
    }

    /// The `hs-period-srv` lines of what every authority published (all the same document).
    fn ring_lines(out: &[Option<Published>]) -> Vec<allium_proto::hs::period::PeriodSrv> {
        let texts: Vec<&Arc<str>> = out.iter().filter_map(|p| p.as_ref().map(|p| &p.text)).collect();
        assert!(!texts.is_empty() && texts.iter().all(|t| *t == texts[0]), "every authority publishes the same consensus");
        let c = Consensus::parse(texts[0]).unwrap().dangerously_assume_valid();
        let carried = allium_proto::hs::period::read_carried(texts[0]).unwrap();
        assert_eq!(carried, c.meta().period_srvs, "nodes read what the authorities wrote");
        carried
    }

    /// Over a time-period boundary (periods of a day, votes every 6 hours): each consensus
    /// carries the lines of its period and the next; the anchor consensus (at the start of the
    /// period before) gives the next period its own shared random value, later ones carry it
    /// unchanged into and through that period; no history gives the fallback.
    #[test]
    fn ring_values_across_a_period_boundary() {
        use allium_proto::hs::period::{fallback_srv, ring_srv, DEFAULT_PERIOD_SECS as L};
        use allium_proto::hs::TimePeriod;
        let iv = L / 4;
        let (_, mut st) = three_every(true, iv);
        let k = 20_000;
        let anchor = k * L; // start of period k, anchor of period k + 1
        let period = |n: u64| TimePeriod { number: n, length_secs: L };
        let mut anchored = None;
        for t in (anchor - 2 * iv..=anchor + L + iv).step_by(iv as usize) {
            let out = run_period_every(&mut st, &[true, true, true], t, iv);
            let lines = ring_lines(&out);
            let p = t / L;
            assert_eq!(lines.iter().map(|l| (l.number, l.length_secs)).collect::<Vec<_>>(), vec![(p, L), (p + 1, L)], "at {t}");
            let current = srv_published(&out, 0).current.map(|c| c.value);
            let value_of = |n: u64| ring_srv(period(n), &lines);
            if t < anchor {
                assert_eq!(value_of(p + 1), fallback_srv(period(p + 1)), "no anchor seen yet");
            }
            if t == anchor {
                let v = current.expect("the authorities have a shared random value by now");
                assert_eq!(value_of(k + 1), v, "the anchor's own value");
                anchored = Some(v);
            }
            if t > anchor {
                assert_eq!(Some(value_of(k + 1)), anchored, "carried unchanged at {t}");
            }
            if t == anchor + L {
                assert_eq!(Some(value_of(k + 2)), current, "next anchor");
                assert_ne!(current, anchored);
            }
            // Period k had no anchor in this history: fallback, carried all along.
            if p == k {
                assert_eq!(value_of(k), fallback_srv(period(k)));
            }
        }
    }

    /// Authorities that disagree: a value stated by a majority of the configured authorities is
    /// kept; with no majority the period falls back (and stays so, carried).
    #[test]
    fn ring_values_need_a_majority_of_voters() {
        use allium_proto::hs::period::{fallback_srv, ring_srv, DEFAULT_PERIOD_SECS as L};
        use allium_proto::hs::TimePeriod;
        let iv = L / 4;
        let (keys, mut st) = three_every(true, iv);
        let ids: Vec<RelayId> = keys.iter().map(|k| RelayId(k.verifying_key().to_bytes())).collect();
        let k = 20_000;
        let next = TimePeriod { number: k + 1, length_secs: L };
        for t in [k * L - 2 * iv, k * L - iv, k * L] {
            run_period_every(&mut st, &[true, true, true], t, iv);
        }
        let v = st[0].published.as_ref().unwrap().0.shared_random().current.unwrap().value;
        // One authority restarts with no consensus: it states nothing, the two others state v.
        st[2] = AuthorityState::new(signer(&keys[2]), &ids, true, Schedule::new(iv));
        let out = run_period_every(&mut st, &[true, true, true], k * L + iv, iv);
        assert_eq!(ring_srv(next, &ring_lines(&out)), v, "2 of 3 is a majority");
        // Two restart: only one states v, no majority; the fallback is then carried.
        st[1] = AuthorityState::new(signer(&keys[1]), &ids, true, Schedule::new(iv));
        st[2] = AuthorityState::new(signer(&keys[2]), &ids, true, Schedule::new(iv));
        let out = run_period_every(&mut st, &[true, true, true], k * L + 2 * iv, iv);
        assert_eq!(ring_srv(next, &ring_lines(&out)), fallback_srv(next), "1 of 3 is no majority");
        let out = run_period_every(&mut st, &[true, true, true], k * L + 3 * iv, iv);
        assert_eq!(ring_srv(next, &ring_lines(&out)), fallback_srv(next), "the fallback is carried");
    }

    #[test]
    fn a34_three_authorities_agree_and_publish() {
        let (_, mut st) = three(true);
        for (i, a) in st.iter_mut().enumerate() {
            // Each authority knows a different relay, plus a shared one.
            a.accept_descriptor(desc(&key(60), T - 3, "127.0.0.1:9001"), T - 5).unwrap();
            a.accept_descriptor(desc(&key(61 + i as u8), T - 3, "127.0.0.1:9002"), T - 5).unwrap();
        }
        let out = run_period(&mut st, &[true, true, true]);
        let texts: Vec<Arc<str>> = out.iter().map(|p| p.as_ref().expect("published").text.clone()).collect();
        assert!(texts.iter().all(|t| t == &texts[0]), "all publish the same document");
        let ids: Vec<RelayId> = (1..=3).map(|s| RelayId(key(s).verifying_key().to_bytes())).collect();
        let c = Consensus::parse(&texts[0]).unwrap().verify(&ids, T).unwrap();
        assert_eq!(c.signatures().len(), 3);
        // Only the shared relay is listed by a majority.
        assert_eq!(c.relays().len(), 1);
        assert_eq!(c.relays()[0].identity, RelayId(key(60).verifying_key().to_bytes()));
    }

    #[test]
    fn a34_one_authority_down_two_still_publish() {
        let (_, mut st) = three(true);
        for a in st.iter_mut() {
            a.accept_descriptor(desc(&key(60), T - 3, "127.0.0.1:9001"), T - 5).unwrap();
        }
        let out = run_period(&mut st, &[true, true, false]);
        let p = out[0].as_ref().expect("published with two of three");
        assert_eq!(p.signatures, 2);
        assert_eq!(p.relays, 1);
        assert!(out[2].is_none());
    }

    #[test]
    fn a34_two_authorities_down_no_consensus() {
        let (_, mut st) = three(true);
        let out = run_period(&mut st, &[true, false, false]);
        assert!(out.iter().all(Option::is_none));
        assert!(st[0].consensus_text().is_none());
    }

    #[test]
    fn votes_and_signatures_are_checked() {
        let (keys, mut st) = three(true);
        let s = Schedule::new(I);
        let outsider = key(9);
        let ids: Vec<RelayId> = keys.iter().map(|k| RelayId(k.verifying_key().to_bytes())).collect();
        let mut other = AuthorityState::new(signer(&outsider), &[RelayId(outsider.verifying_key().to_bytes())], true, s);
        let (text, _) = other.make_vote(T, T - 5);
        let v = Vote::parse(&text).unwrap().verify(T).unwrap();
        assert!(st[0].accept_vote(v, text, s.vote_at_ms(T)).unwrap_err().reason.contains("not a configured"));
        // A vote for a period far away is refused.
        let mut peer = AuthorityState::new(signer(&keys[1]), &ids, true, s);
        let (text, _) = peer.make_vote(T + 100 * I, T);
        let v = Vote::parse(&text).unwrap().verify(T).unwrap();
        assert!(st[0].accept_vote(v, text, s.vote_at_ms(T)).is_err());
        // A second, different vote by the same authority for the same period: conflict.
        let (t1, _) = peer.make_vote(T, T - 5);
        peer.accept_descriptor(desc(&key(70), T - 5, "127.0.0.1:9001"), T - 5).unwrap();
        all_reachable(&mut peer, T - 5);
        let (t2, _) = peer.make_vote(T, T - 5);
        let v1 = Vote::parse(&t1).unwrap().verify(T).unwrap();
        let v2 = Vote::parse(&t2).unwrap().verify(T).unwrap();
        assert_eq!(st[0].accept_vote(v1.clone(), t1.clone(), s.vote_at_ms(T)), Ok(Accepted::New));
        assert_eq!(st[0].accept_vote(v1, t1, s.vote_at_ms(T)), Ok(Accepted::Unchanged));
        assert_eq!(st[0].accept_vote(v2, t2, s.vote_at_ms(T)).unwrap_err().status, 409);
        // Signatures: a mismatching digest is a conflict; an outsider's is refused.
        st[0].make_vote(T, T - 5);
        st[0].make_consensus(T).expect("two votes of three");
        let c = Consensus::new(s.lifetime(T), vec![], vec![]);
        let wrong = DetachedSignature::new(&c, &signer(&keys[1]));
        assert_eq!(st[0].accept_signature(wrong, s.sign_at_ms(T)).unwrap_err().status, 409);
        let out = DetachedSignature::new(&c, &signer(&outsider));
        assert_eq!(st[0].accept_signature(out, s.sign_at_ms(T)).unwrap_err().status, 400);
    }

    #[test]
    fn a35_votes_and_signatures_out_of_time_say_how_far_off() {
        let (keys, mut st) = three(true);
        let s = Schedule::new(I);
        let ids: Vec<RelayId> = keys.iter().map(|k| RelayId(k.verifying_key().to_bytes())).collect();
        let mut peer = AuthorityState::new(signer(&keys[1]), &ids, true, s);
        let now = s.vote_at_ms(T);
        for (t, want) in [(T + 600, "vote for valid-after 1970-01-12 13:56:40 UTC is 600 s ahead of this authority's schedule (clock skew?)"),
                          (T - 600, "vote for valid-after 1970-01-12 13:36:40 UTC is 600 s behind this authority's schedule (clock skew?)")] {
            let (text, _) = peer.make_vote(t, t - 5);
            let v = Vote::parse(&text).unwrap().verify(T).unwrap();
            let r = st[0].accept_vote(v, text, now).unwrap_err();
            assert_eq!((r.status, r.reason.as_str()), (400, want));
        }
        // Within the tolerance (a quarter interval) either way: accepted.
        let (text, _) = peer.make_vote(T, T - 5);
        let v = Vote::parse(&text).unwrap().verify(T).unwrap();
        assert_eq!(st[0].accept_vote(v.clone(), text.clone(), now - s.skew_tolerance_ms()), Ok(Accepted::New));
        assert_eq!(st[0].accept_vote(v.clone(), text.clone(), s.sign_at_ms(T) - 1), Ok(Accepted::Unchanged));
        let r = st[0].accept_vote(v, text, s.sign_at_ms(T)).unwrap_err();
        assert!(r.reason.contains("2.5 s behind") && r.reason.ends_with(SKEW_MARK), "{r:?}");
        // A signature for a period 600 s away; one just after signing time with no consensus here
        // yet (kept until this authority computes it); one more than half an interval late.
        let c = Consensus::new(s.lifetime(T + 600), vec![], vec![]);
        let far = DetachedSignature::new(&c, &signer(&keys[1]));
        let r = st[0].accept_signature(far, s.sign_at_ms(T)).unwrap_err();
        assert_eq!(r.reason, "signature for valid-after 1970-01-12 13:56:40 UTC is 600 s ahead of this authority's schedule (clock skew?)");
        let c = Consensus::new(s.lifetime(T), vec![], vec![]);
        let late = DetachedSignature::new(&c, &signer(&keys[1]));
        assert!(matches!(st[0].accept_signature(late, T * 1000), Ok(None)));
        let r = st[0].accept_signature(late, T * 1000 + 6_000).unwrap_err();
        assert!(r.reason.contains("8.5 s behind"), "{r:?}");
    }

    /// A bootstrap round where one authority computed the consensus with a majority of votes and
    /// the last vote came a moment later: the two that computed with all three sign another
    /// digest. The first computes again from the votes it now holds, finds their digest, takes
    /// that consensus, signs it (its signature waits to be pushed) and publishes it. A digest
    /// that no set of held votes gives is still refused (409).
    #[test]
    fn a_consensus_computed_before_the_last_vote_is_computed_again_to_match() {
        let (keys, mut st) = three(true);
        let s = Schedule::new(I);
        let now_ms = (T + 3) * 1000 + 400;
        let tb = s.bootstrap_valid_after(now_ms);
        let r = key(92);
        for a in st.iter_mut() {
            a.accept_descriptor(desc(&r, T + 2, "127.0.0.1:9001"), T + 2).unwrap();
            all_reachable(a, T + 2);
        }
        let votes: Vec<Arc<str>> = st.iter_mut().map(|a| a.make_vote(tb, T + 3).0).collect();
        let give = |a: &mut AuthorityState, j: usize| {
            let parsed = Vote::parse(&votes[j]).unwrap().verify(T + 3).unwrap();
            assert_eq!(a.accept_vote(parsed, votes[j].clone(), now_ms), Ok(Accepted::New));
        };
        // Authority 0 computes with its own vote and 1's; 1 and 2 with all three.
        give(&mut st[0], 1);
        let early = st[0].make_consensus(tb).unwrap();
        for i in 1..3 {
            for j in (0..3).filter(|&j| j != i) {
                give(&mut st[i], j);
            }
        }
        let sigs: Vec<DetachedSignature> = (1..3).map(|i| st[i].make_consensus(tb).unwrap()).collect();
        assert_ne!(early.digest, sigs[0].digest, "two votes and three votes make different consensuses");
        // Without the late vote, 0 cannot make theirs: refused.
        assert_eq!(st[0].accept_signature(sigs[0].clone(), now_ms + 10).unwrap_err().status, 409);
        assert!(st[0].take_recomputed().is_none());
        // With it, 0 computes again, signs theirs and publishes.
        give(&mut st[0], 2);
        let p = st[0].accept_signature(sigs[0].clone(), now_ms + 20).unwrap().expect("published with 0's and 1's signatures");
        assert_eq!(p.valid_after, tb);
        let mine = st[0].take_recomputed().expect("0's new signature, to push");
        assert_eq!(mine.digest, sigs[0].digest);
        assert!(st[1].accept_signature(mine, now_ms + 30).is_ok(), "the peers take it");
        let _ = keys;
    }

    /// Issue 13 (fast start): a bootstrap round between period starts. Three authorities vote for
    /// the current second, accept each other's votes, compute one consensus and publish it as soon
    /// as a majority signed (its time has come); it lists the relays and is fresh until the next
    /// period start. Bootstrap votes far from now, or not newer than the published consensus, are
    /// refused; a pending regular consensus and a bootstrap one coexist, and the newest wins.
    #[test]
    fn bootstrap_round_publishes_at_once_between_period_starts() {
        let (keys, mut st) = three(true);
        let s = Schedule::new(I);
        let now_ms = (T + 3) * 1000 + 400;
        let tb = s.bootstrap_valid_after(now_ms);
        assert_eq!(tb, T + 3);
        let r = key(91);
        for a in st.iter_mut() {
            a.accept_descriptor(desc(&r, T + 2, "127.0.0.1:9001"), T + 2).unwrap();
            all_reachable(a, T + 2);
            assert!(!a.has_valid_consensus(T + 3));
            assert_eq!(a.bootstrap_view(T + 3).candidates, 1);
        }
        let votes: Vec<Arc<str>> = st.iter_mut().map(|a| a.make_vote(tb, T + 3).0).collect();
        for (i, a) in st.iter_mut().enumerate() {
            for (j, v) in votes.iter().enumerate() {
                if i != j {
                    let parsed = Vote::parse(v).unwrap().verify(T + 3).unwrap();
                    assert_eq!(a.accept_vote(parsed, v.clone(), now_ms), Ok(Accepted::New));
                }
            }
            assert_eq!(a.vote_count(tb), 3);
        }
        let sigs: Vec<DetachedSignature> = st.iter_mut().map(|a| a.make_consensus(tb).unwrap()).collect();
        // A majority (two signatures) publishes at once: no waiting for a publication time.
        let p = st[0].accept_signature(sigs[1].clone(), now_ms + 10).unwrap().expect("published");
        assert_eq!((p.valid_after, p.relays), (tb, 1));
        let c = st[0].published_consensus().unwrap();
        assert_eq!(c.lifetime(), s.lifetime(tb));
        assert_eq!(c.fresh_until(), T + 10, "fresh until the regular round takes over");
        assert!(st[0].has_valid_consensus(T + 3));
        assert!(st[0].bootstrap_view(T + 3).missing.is_empty(), "every relay listed");
        // A late signature is still added; a bootstrap vote not newer than it is refused.
        assert!(st[0].accept_signature(sigs[2].clone(), now_ms + 20).unwrap().is_some());
        let (old, _) = st[1].make_vote(tb - 1, T + 3);
        let e = st[0].accept_vote(Vote::parse(&old).unwrap().verify(T + 3).unwrap(), old, now_ms).unwrap_err();
        assert!(e.reason.contains("already published"), "{e:?}");
        // Far from now: refused for clock skew.
        let (far, _) = st[1].make_vote(tb + 5, T + 3);
        let e = st[0].accept_vote(Vote::parse(&far).unwrap().verify(T + 3).unwrap(), far, now_ms).unwrap_err();
        assert!(e.reason.ends_with(SKEW_MARK), "{e:?}");
        // Regular round for T + 10 and a later bootstrap round pending at once: the newer one that
        // is ready is published, the older dropped.
        let sign_ms = s.sign_at_ms(T + 10);
        let (mut a, mut b) = (st.remove(0), st.remove(0));
        for (t, at) in [(T + 10, s.vote_at_ms(T + 10)), (T + 7, sign_ms - 100)] {
            let (va, _) = a.make_vote(t, at / 1000);
            let (vb, _) = b.make_vote(t, at / 1000);
            a.accept_vote(Vote::parse(&vb).unwrap().verify(t).unwrap(), vb, at).unwrap();
            b.accept_vote(Vote::parse(&va).unwrap().verify(t).unwrap(), va, at).unwrap();
        }
        a.make_consensus(T + 10).unwrap();
        a.make_consensus(T + 7).unwrap();
        let sig_b7 = b.make_consensus(T + 7).unwrap();
        assert_eq!(a.pending.len(), 2);
        let p = a.accept_signature(sig_b7, sign_ms).unwrap().expect("bootstrap round published");
        assert_eq!(p.valid_after, T + 7);
        let sig_b10 = b.make_consensus(T + 10).unwrap();
        assert!(a.accept_signature(sig_b10.clone(), sign_ms).unwrap().is_none(), "not before its publication time");
        assert_eq!(a.try_publish((T + 10) * 1000).map(|p| p.valid_after), Some(T + 10));
        let _ = keys;
    }

    /// Ten relays on public addresses, one in three an exit, signed with keys from `seed`.
    fn public_relays(seed: u8, n: u8) -> Vec<SigningKey> {
        (0..n).map(|i| key(seed + i)).collect()
    }

    fn public_desc(k: &SigningKey, i: usize, published: u64) -> RelayDescriptor {
        let mut d = desc(k, published, &format!("192.0.2.{}:9001", 10 + i));
        if i % 3 == 0 {
            d.policy = ExitPolicy::default_exit();
        }
        d
    }

    /// Every authority votes in bootstrap round `b` at `now_ms` (each takes the others' votes),
    /// computes and signs; what the first published.
    fn bootstrap_round(states: &mut [AuthorityState], b: u64, now_ms: u64) -> Option<Published> {
        let votes: Vec<Arc<str>> = states.iter_mut().map(|a| a.make_vote(b, now_ms / 1000).0).collect();
        for a in states.iter_mut() {
            for text in &votes {
                let _ = a.accept_vote(Vote::parse(text).unwrap().verify(now_ms / 1000).unwrap(), text.clone(), now_ms);
            }
        }
        let sigs: Vec<DetachedSignature> = states.iter_mut().filter_map(|a| a.make_consensus(b)).collect();
        let mut out = None;
        for sig in sigs {
            if let Ok(Some(p)) = states[0].accept_signature(sig, now_ms) {
                out = Some(p);
            }
        }
        out
    }

    /// Issue 13: a network voting every 300 s under real-network rules (no `dangerous_testnet`)
    /// still lists every relay after ten intervals: relays upload on the period the schedule
    /// derives from the interval (`republish_period_secs`, as `allium-relay` does), authorities
    /// drop descriptors older than `descriptor_max_age`, and the two fit. (With relays uploading
    /// hourly, as before, the fourth consensus listed none.)
    #[test]
    fn a_network_voting_every_300_s_keeps_every_relay_for_ten_intervals() {
        let interval = 300;
        let (_, mut st) = three_every(false, interval);
        let relays = public_relays(120, 10);
        let every = crate::schedule::republish_period_secs(interval);
        let start = T / interval * interval;
        let mut next_upload: Vec<u64> = (0..relays.len()).map(|i| start + i as u64 * 7).collect();
        for k in 1..=10u64 {
            let t = start + k * interval;
            let vote_at = t - interval / 2;
            // Uploads due before this round's vote, each at its own time.
            for (i, r) in relays.iter().enumerate() {
                while next_upload[i] < vote_at {
                    let at = next_upload[i];
                    for a in st.iter_mut() {
                        a.accept_descriptor(public_desc(r, i, at), at).unwrap();
                    }
                    next_upload[i] += every;
                }
            }
            let out = run_period_every(&mut st, &[true, true, true], t, interval);
            let p = out[0].as_ref().unwrap_or_else(|| panic!("no consensus for interval {k}"));
            assert_eq!(p.relays, relays.len(), "interval {k}: every relay listed");
        }
    }

    /// Issue 13: a new network with the default flag thresholds (no parameters set, real-network
    /// rules, hourly votes) has a consensus with a Guard, an Exit and an HSDir within its first
    /// hour. Time is simulated: relays upload and are tested when the network starts (mid-period);
    /// the bootstrap proposer ([`crate::bootstrap::Proposer`]) of the first authority decides
    /// when to hold a bootstrap round, looked at every 10 s; regular rounds follow the schedule.
    #[test]
    fn a_new_network_with_default_thresholds_has_guards_within_its_first_hour() {
        use crate::bootstrap::{Pace, Proposer};
        let interval = 3600;
        let s = Schedule::new(interval);
        let (_, mut st) = three_every(false, interval);
        let relays = public_relays(140, 9);
        let start = T / interval * interval + 1000;
        for (i, r) in relays.iter().enumerate() {
            for a in st.iter_mut() {
                a.accept_descriptor(public_desc(r, i, start), start).unwrap();
                all_reachable(a, start);
            }
        }
        let pace = Pace::new(false);
        let mut proposer = Proposer::default();
        let base = tokio::time::Instant::now();
        let mut first_with_guard = None;
        let mut now = start;
        while now <= start + 3600 && first_with_guard.is_none() {
            now += 10;
            let next = s.next_period(now * 1000);
            // The regular round: reachability tests before the vote, then the round itself.
            if now * 1000 == s.vote_at_ms(next) {
                for a in st.iter_mut() {
                    all_reachable(a, now - 20);
                }
            }
            let view = st[0].bootstrap_view(now);
            let mut published = None;
            if proposer.due(false, &view, base + Duration::from_secs(now - start), &pace) {
                published = bootstrap_round(&mut st, s.bootstrap_valid_after(now * 1000), now * 1000);
                proposer.ended(&view, base + Duration::from_secs(now - start));
            }
            if now % interval == 0 {
                published = published.or(run_period_every(&mut st, &[true, true, true], now, interval)[0].clone());
            }
            if published.is_some() {
                let c = st[0].published_consensus().unwrap();
                let has = |f: RelayFlags| c.relays().iter().any(|r| r.flags.contains(f | RelayFlags::RUNNING | RelayFlags::VALID));
                if has(RelayFlags::GUARD) {
                    assert!(has(RelayFlags::EXIT) && has(RelayFlags::HSDIR) && has(RelayFlags::FAST), "{:?}", c.relays().iter().map(|r| r.flags).collect::<Vec<_>>());
                    first_with_guard = Some(now - start);
                }
            }
        }
        let after = first_with_guard.expect("a consensus with a Guard within the first hour");
        // Relays earn Guard after flag-uptime-floor (30 min); the round follows within a minute.
        assert!((1800..=1900).contains(&after), "guards after {after} s");
    }

    #[test]
    fn a10_signature_under_an_expired_certificate_is_refused() {
        let (keys, mut st) = three(true);
        let s = Schedule::new(I);
        let (a, rest) = st.split_at_mut(1);
        let (va, _) = a[0].make_vote(T, T - 5);
        let (vb, _) = rest[0].make_vote(T, T - 5);
        let now = s.vote_at_ms(T) + 1;
        rest[0].accept_vote(Vote::parse(&va).unwrap().verify(T).unwrap(), va.clone(), now).unwrap();
        a[0].accept_vote(Vote::parse(&vb).unwrap().verify(T).unwrap(), vb.clone(), now).unwrap();
        a[0].make_consensus(T).unwrap();
        let c = a[0].pending.get(&T).cloned().unwrap();
        // Authority 1's signature, but under a certificate that expired before now.
        let stale = DetachedSignature::new(&c, &signer_until(&keys[1], T - 100));
        let r = a[0].accept_signature(stale, s.sign_at_ms(T)).unwrap_err();
        assert!(r.status == 400 && r.reason.contains("expired"), "{r:?}");
        assert_eq!(a[0].pending_summary(T).unwrap().2, 1, "not counted");
        // A vote under an expired certificate does not verify at all.
        rest[0].set_signer(signer_until(&keys[1], T - 100));
        let (stale_vote, _) = rest[0].make_vote(T + I, T + I - 5);
        assert!(Vote::parse(&stale_vote).unwrap().verify(T + I - 5).is_err());
    }

    #[test]
    fn renewed_signing_key_keeps_the_authority_counted() {
        let (keys, mut st) = three(true);
        run_period_at(&mut st, &[true, true, true], T);
        st[0].set_signer(signer_until(&keys[0], u64::MAX - 1));
        let out = run_period_at(&mut st, &[true, true, true], T + I);
        let ids: Vec<RelayId> = keys.iter().map(|k| RelayId(k.verifying_key().to_bytes())).collect();
        let c = Consensus::parse(&out[1].as_ref().unwrap().text).unwrap().verify(&ids, T + I).unwrap();
        assert_eq!(c.signatures().len(), 3);
        assert_eq!(c.signatures().iter().find(|s| s.identity() == ids[0]).unwrap().cert, *signer_until(&keys[0], u64::MAX - 1).cert());
    }

    /// Two of three authorities exchange their votes for T just after voting time; the second
    /// computes the consensus. The first (not computed yet) and the second's signature.
    fn first_and_signature_of_second() -> (AuthorityState, DetachedSignature) {
        let (_, mut st) = three(true);
        let s = Schedule::new(I);
        let (mut a, mut b) = (st.remove(0), st.remove(0));
        let (va, _) = a.make_vote(T, T - 5);
        let (vb, _) = b.make_vote(T, T - 5);
        let now = s.vote_at_ms(T) + 1;
        b.accept_vote(Vote::parse(&va).unwrap().verify(T).unwrap(), va, now).unwrap();
        a.accept_vote(Vote::parse(&vb).unwrap().verify(T).unwrap(), vb, now).unwrap();
        (a, b.make_consensus(T).unwrap())
    }

    #[test]
    fn early_signatures_are_kept_until_the_consensus_is_computed() {
        let (mut a, sig_b) = first_and_signature_of_second();
        // a has not computed yet: the signature waits.
        assert!(a.accept_signature(sig_b, Schedule::new(I).vote_at_ms(T) + 1).unwrap().is_none());
        a.make_consensus(T).unwrap();
        assert_eq!(a.pending_summary(T).unwrap().2, 2);
        assert!(a.try_publish(T * 1000 - 1).is_none(), "not before T");
        assert_eq!(a.try_publish(T * 1000).unwrap().signatures, 2);
    }

    /// A peer's signature that arrives after the signing time, while this authority is still
    /// computing that period's consensus (late on a loaded machine), is kept, not refused: the
    /// sender warned "computed no consensus for that period" and the signature was lost.
    #[test]
    fn a_signature_for_a_consensus_this_authority_computes_late_is_kept() {
        let (mut a, sig_b) = first_and_signature_of_second();
        // a is past T's signing time and has computed nothing for T yet.
        let s = Schedule::new(I);
        let late = s.sign_at_ms(T) + 12;
        assert_ne!(s.next_period(late), T);
        assert!(a.accept_signature(sig_b, late).unwrap().is_none());
        a.make_consensus(T).unwrap();
        assert_eq!(a.pending_summary(T).unwrap().2, 2, "b's signature was kept");
    }

    /// Issue 13: a restarted authority knows the relays it held (their descriptors are saved
    /// as uploaded and verified again on load); damaged and stale ones are left out.
    #[test]
    fn saved_descriptors_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("allium-dir-descs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (_, mut st) = three(false);
        let now = T - 5;
        let (k1, k2, k3) = (key(90), key(91), key(92));
        let mut a = st.remove(0);
        for (k, addr) in [(&k1, "192.0.2.1:9001"), (&k2, "192.0.2.2:9001")] {
            let d = desc(k, now, addr);
            let text: Arc<str> = d.encode_signed(k).into();
            assert_eq!(a.accept_descriptor(d.clone(), now), Ok(Accepted::New));
            a.keep_descriptor_text(d.identity, text);
        }
        let mut file = a.descriptors_text();
        // A forged one (signed by another key) and garbage are not loaded.
        let mut forged = desc(&k3, now, "192.0.2.3:9001");
        forged.identity = RelayId(k1.verifying_key().to_bytes());
        file.push_str(&forged.encode_signed(&k3));
        file.push_str("allium-relay-descriptor 1\nnonsense\n");
        std::fs::write(dir.join(DESCRIPTORS_FILE), &file).unwrap();
        let mut b = st.remove(0);
        load_descriptors(&dir, &mut b, now + 1);
        assert_eq!(b.descriptor_count(), 2);
        assert_eq!(b.descriptors_text(), a.descriptors_text());
        // Too old by then: nothing.
        let mut c = st.remove(0);
        load_descriptors(&dir, &mut c, now + 10 * I);
        assert_eq!(c.descriptor_count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn saved_consensus_survives_and_garbage_is_ignored() {
        let dir = std::env::temp_dir().join(format!("allium-dir-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (keys, mut st) = three(true);
        let ids: Vec<RelayId> = keys.iter().map(|k| RelayId(k.verifying_key().to_bytes())).collect();
        let out = run_period(&mut st, &[true, true, true]);
        let text = out[0].as_ref().unwrap().text.clone();
        save_consensus(&dir, &text).unwrap();
        let c = load_consensus(&dir, &ids, T + 1).expect("loads");
        assert_eq!(c.encode(), *text);
        assert!(load_consensus(&dir, &ids, T + 3 * I + 1).is_none(), "expired");
        std::fs::write(dir.join(CONSENSUS_FILE), &text[..text.len() / 2]).unwrap();
        assert!(load_consensus(&dir, &ids, T + 1).is_none(), "truncated");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vote_lists_only_reachable_valid_relays_with_their_flags() {
        let (_, st) = three(false);
        let bad = key(83);
        let gone = key(84);
        let mut policy = VotePolicy::defaults(false);
        policy.rejected.insert(RelayId(key(82).verifying_key().to_bytes()));
        policy.bad_exits.insert(RelayId(bad.verifying_key().to_bytes()));
        let mut a = st.into_iter().next().unwrap().with_policy(policy);
        let now = T - 5;
        let up = key(80);
        let untested = key(81);
        let mut exit = desc(&bad, now, "192.0.2.3:9001");
        exit.policy = ExitPolicy::default_exit();
        exit.bandwidth = 50_000_000;
        let mut old = desc(&key(85), now, "192.0.2.5:9001");
        old.protocols = allium_proto::doc::Protocols::new().with("Link", 1, 1);
        let blip = key(86);
        for d in [desc(&up, now, "192.0.2.1:9001"), desc(&untested, now, "192.0.2.2:9001"), desc(&key(82), now, "192.0.2.4:9001"), exit, old, desc(&gone, now, "192.0.2.6:9001"), desc(&blip, now, "192.0.2.7:9001")] {
            a.accept_descriptor(d, now).unwrap();
        }
        assert_eq!(a.reach_targets().len(), 6, "the rejected relay is not even tested");
        let id = |k: &SigningKey| RelayId(k.verifying_key().to_bytes());
        for k in [&up, &bad, &key(85)] {
            a.record_reachability(id(k), true, now - 100);
        }
        // Down in two tests 700 s apart: no longer Running. One lost test: still Running.
        for (k, ok, at) in [(&gone, true, now - 2000), (&gone, false, now - 700), (&gone, false, now), (&blip, true, now - 1000), (&blip, false, now)] {
            a.record_reachability(id(k), ok, at);
        }
        let (text, n) = a.make_vote(T, now);
        let v = Vote::parse(&text).unwrap().verify(T).unwrap();
        let listed: Vec<RelayId> = v.relays.iter().map(|r| r.identity).collect();
        assert_eq!(n, 3, "{listed:?}");
        let find = |k: &SigningKey| v.relays.iter().find(|r| r.identity == RelayId(k.verifying_key().to_bytes())).cloned();
        assert!(find(&blip).expect("one lost test keeps a relay").flags.contains(RelayFlags::RUNNING));
        let r_up = find(&up).expect("reachable relay listed");
        // New on a real network: Fast relative to the others, nothing that needs uptime.
        assert_eq!(r_up.flags, RelayFlags::RUNNING | RelayFlags::VALID | RelayFlags::FAST);
        let r_bad = find(&bad).expect("bad exit still listed");
        assert!(r_bad.flags.contains(RelayFlags::BAD_EXIT | RelayFlags::EXIT | RelayFlags::FAST));
        assert_eq!(r_bad.weight, 10_000_000, "self-reported bandwidth capped");
        assert!(find(&gone).is_none() && find(&untested).is_none(), "unreachable and untested relays are not voted");
        assert!(find(&key(85)).is_none(), "lacks a required protocol");
        assert_eq!(v.params.get("guard-min-uptime"), Some(&(8 * 86_400)));
        assert_eq!(v.required_protocols.to_string(), crate::config::DEFAULT_REQUIRED_PROTOCOLS);
    }

    #[test]
    fn testnet_relay_is_guard_and_hsdir_at_once_and_loses_running_when_a_test_fails() {
        let (_, mut st) = three(true);
        let r = key(90);
        let id = RelayId(r.verifying_key().to_bytes());
        st[0].accept_descriptor(desc(&r, T - 5, "127.0.0.1:9001"), T - 5).unwrap();
        assert!(st[0].untested(&id).is_some());
        st[0].record_reachability(id, true, T - 5);
        assert!(st[0].untested(&id).is_none());
        let (text, _) = st[0].make_vote(T, T - 5);
        let v = Vote::parse(&text).unwrap().verify(T).unwrap();
        assert!(v.relays[0].flags.contains(RelayFlags::RUNNING | RelayFlags::GUARD | RelayFlags::HSDIR | RelayFlags::STABLE));
        st[0].record_reachability(id, false, T + I - 5);
        let (text, _) = st[0].make_vote(T + I, T + I - 5);
        assert!(Vote::parse(&text).unwrap().verify(T).unwrap().relays.is_empty());
    }

    /// Issue 12 point 6: at most `max_relays_per_address` relays per address, and a flood of
    /// descriptors never pushes out relays proven reachable.
    #[test]
    fn relays_per_address_are_capped_and_proven_relays_are_never_pushed_out() {
        let (_, mut st) = three(false);
        let a = &mut st[0];
        let now = T;
        let id = |n: u8| RelayId(key(n).verifying_key().to_bytes());
        let held = |a: &AuthorityState| a.reach_targets().iter().map(|t| t.identity).collect::<BTreeSet<_>>();
        a.accept_descriptor(desc(&key(90), now, "192.0.2.9:9001"), now).unwrap();
        a.accept_descriptor(desc(&key(91), now, "192.0.2.9:9002"), now).unwrap();
        all_reachable(a, now);
        let before = LIMITS.relays_per_address.load(std::sync::atomic::Ordering::Relaxed);
        let r = a.accept_descriptor(desc(&key(92), now, "192.0.2.9:9003"), now).unwrap_err();
        assert_eq!(r.status, 403, "{}", r.reason);
        assert!(LIMITS.relays_per_address.load(std::sync::atomic::Ordering::Relaxed) > before);
        // A relay already there may update; moving another relay onto the full address may not.
        assert_eq!(a.accept_descriptor(desc(&key(91), now + 1, "192.0.2.9:9002"), now), Ok(Accepted::New));
        a.accept_descriptor(desc(&key(93), now, "192.0.2.10:9001"), now).unwrap();
        assert_eq!(a.accept_descriptor(desc(&key(93), now + 1, "192.0.2.9:9001"), now).unwrap_err().status, 403);
        // At an address whose relays are not all proven, a newcomer displaces an unproven one.
        a.accept_descriptor(desc(&key(94), now, "192.0.2.10:9002"), now).unwrap();
        a.record_reachability(id(93), true, now);
        assert_eq!(a.accept_descriptor(desc(&key(95), now, "192.0.2.10:9003"), now), Ok(Accepted::New));
        let ids = held(a);
        assert!(ids.contains(&id(93)) && ids.contains(&id(95)) && !ids.contains(&id(94)), "the unproven relay went");
    }

    /// Issue 12 point 6: a receiver can tell who a vote claims to be from by its header alone,
    /// so votes naming no peer are refused before they are parsed.
    #[test]
    fn a_votes_claimed_voter_is_read_from_its_header_alone() {
        let (keys, mut st) = three(true);
        let (text, _) = st[0].make_vote(T, T - 5);
        assert_eq!(Vote::claimed_voter(&text), Some(RelayId(keys[0].verifying_key().to_bytes())));
        assert_eq!(Vote::claimed_voter(&"x".repeat(1 << 20)), None);
        assert_eq!(Vote::claimed_voter("allium-vote 1\nrelay x\nvoter 00\n"), None, "not after the header");
        assert_eq!(Vote::claimed_valid_after(&text), Some(Vote::parse(&text).unwrap().claimed_lifetime().valid_after));
        assert_eq!(Vote::claimed_valid_after("allium-vote 1\nrelay x\nvalid-after 5\n"), None, "not after the header");
    }

    /// A full descriptor table makes room by forgetting relays never proven reachable, so
    /// 20,000 junk descriptors (each from its own address) leave no honest relay refused.
    #[test]
    fn a_full_descriptor_table_evicts_unproven_relays_never_proven_ones() {
        let (_, mut st) = three(false);
        let a = &mut st[0];
        // `limits.max_relay_descriptors`, small here (20,000 by default).
        const MAX: usize = 300;
        a.policy.max_relay_descriptors = MAX;
        let now = T;
        let honest = key(96);
        a.accept_descriptor(desc(&honest, now, "192.0.2.96:9001"), now).unwrap();
        all_reachable(a, now);
        for i in 0..2 * MAX as u32 {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            seed[31] = 2;
            let k = SigningKey::from_bytes(&seed);
            a.accept_descriptor(desc(&k, now, &format!("11.{}.{}.{}:9001", i >> 16, (i >> 8) & 255, i & 255)), now).expect("room is made");
        }
        assert_eq!(a.descriptor_count(), MAX);
        assert!(a.reach_targets().iter().any(|t| t.identity == RelayId(honest.verifying_key().to_bytes())), "the proven relay stays");
        assert_eq!(a.accept_descriptor(desc(&key(97), now, "192.0.2.97:9001"), now), Ok(Accepted::New), "a new honest relay still gets in");
        // Once every one held is proven, a newcomer is refused (and counted), none forgotten.
        all_reachable(a, now);
        let full = LIMITS.descriptors_full.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(a.accept_descriptor(desc(&key(98), now, "192.0.2.98:9001"), now).map_err(|r| r.status), Err(503));
        assert!(LIMITS.descriptors_full.load(std::sync::atomic::Ordering::Relaxed) > full);
        assert_eq!(a.descriptor_count(), MAX);
    }

    /// Size of a synthetic 1,000-relay consensus and one authority's CPU time for a voting
    /// round (make its vote; parse and verify two peer votes; compute and sign the consensus;
    /// verify it as a client would). `cargo test -p allium-directory --release -- --ignored measure --nocapture`
    #[test]
    #[ignore]
    fn measure_1000_relays() {
        let (keys, mut st) = three(true);
        let ids: Vec<RelayId> = keys.iter().map(|k| RelayId(k.verifying_key().to_bytes())).collect();
        for i in 0..1000u32 {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            seed[31] = 1;
            let k = SigningKey::from_bytes(&seed);
            let mut d = desc(&k, T - 3, &format!("10.{}.{}.1:9001", i / 256, i % 256));
            d.bandwidth = 1_000_000 + u64::from(i) * 1000;
            if i % 5 == 0 {
                d.policy = ExitPolicy::default_exit();
            }
            for a in st.iter_mut() {
                a.accept_descriptor(d.clone(), T - 5).unwrap();
            }
        }
        let s = Schedule::new(I);
        let t0 = std::time::Instant::now();
        let texts: Vec<Arc<str>> = st.iter_mut().map(|a| {
            all_reachable(a, T - I);
            a.make_vote(T, T - I / 2).0
        }).collect();
        let vote_ms = t0.elapsed().as_secs_f64() * 1000.0 / 3.0;
        let t1 = std::time::Instant::now();
        for text in &texts[1..] {
            let v = Vote::parse(text).unwrap().verify(T).unwrap();
            st[0].accept_vote(v, text.clone(), s.vote_at_ms(T) + 10).unwrap();
        }
        let ingest_ms = t1.elapsed().as_secs_f64() * 1000.0;
        let t2 = std::time::Instant::now();
        st[0].make_consensus(T).unwrap();
        let compute_ms = t2.elapsed().as_secs_f64() * 1000.0;
        let c = st[0].pending.values().next_back().cloned().unwrap();
        let text = c.encode();
        let t3 = std::time::Instant::now();
        Consensus::parse(&text).unwrap().dangerously_skip_time_check(&ids[..1]).unwrap();
        let verify_ms = t3.elapsed().as_secs_f64() * 1000.0;
        let header = c.signed_text().find("\nrelay ").unwrap() + 1;
        let body = c.signed_text().len() - header;
        println!(
            "1000 relays: consensus {} bytes ({} per relay entry, header {} bytes), vote {} bytes; \
             authority CPU: vote {vote_ms:.1} ms, ingest 2 votes {ingest_ms:.1} ms, compute+sign {compute_ms:.1} ms; \
             client parse+verify {verify_ms:.1} ms",
            text.len(), body / 1000, header, texts[0].len()
        );
        assert_eq!(c.relays().len(), 1000);
    }
}
