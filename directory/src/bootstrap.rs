//! Bootstrap rounds: the first consensus without waiting for the voting schedule.
//!
//! The regular schedule ([`crate::schedule`]) makes one consensus per interval, voting half an
//! interval before it starts: a new network waited up to an interval and a half (on an hourly
//! schedule, 75 minutes) for its first consensus. While an authority holds no valid consensus,
//! this loop does not wait:
//!
//! - **Propose.** Once it has relays to vote for and their set has stayed the same for
//!   [`Pace::settle`] (the relays starting with it have uploaded and been tested), it votes at
//!   once for a round whose `valid-after` is the current second
//!   ([`crate::schedule::Schedule::bootstrap_valid_after`]) and pushes the vote to its peers.
//! - **Join.** An authority that receives a peer's bootstrap vote for a round it has not voted
//!   in, and has relays to vote for, votes in that round at once: the first proposer sets the
//!   round's time for everyone, so clocks need only agree within the skew tolerance.
//! - **Finish.** As soon as every configured authority has voted in the round (or a majority
//!   has, and [`Pace::grace`] has passed), each computes the consensus, signs it and pushes the
//!   signature; it is published the moment more than half have signed (its `valid-after` has
//!   already come). It is fresh until the regular round takes over.
//! - **Again.** A round that published nothing is proposed again after [`Pace::retry`].
//! - **Guards.** A consensus that gives no relay the Guard flag serves no client. On a new network
//!   relays earn Guard once they have run `flag-uptime-floor` (30 minutes by default), but the
//!   regular round that would list it comes up to an interval and a half later (on an hourly
//!   schedule, past the first hour): so a round is also proposed when this authority's vote would
//!   give Guard to some relay and the published consensus gives it to none.
//! - On a test network (`dangerous_testnet`) a round is also proposed while the published
//!   consensus lacks relays this authority would vote for (relays that started after it).
//!
//! A round is proposed once per new situation (the set of missing relays, whether guards are
//! wanted): the same one again only while the network is unusable (no valid consensus, or no
//! guard), after [`Pace::retry`], so a relay the other authorities do not list cannot cause a
//! round a second.
//!
//! Votes, signatures and consensuses are the regular ones (`docs/PROTOCOL.md`, "Bootstrap
//! rounds"); only the times differ.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use allium_proto::ids::RelayId;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::authority::Shared;

/// How fast bootstrap rounds go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// How often the loop looks at the authority's state.
    pub tick: Duration,
    /// How long the set of relays to vote for must stay the same before proposing.
    pub settle: Duration,
    /// How long a round waits for the votes of every authority once a majority has voted.
    pub grace: Duration,
    /// Longest a round lasts before it is given up.
    pub round: Duration,
    /// Wait before proposing again after a round that published nothing.
    pub retry: Duration,
    /// Longest the loop goes without looking at the state again when nothing changed (flags
    /// also change with time: uptimes grow).
    pub refresh: Duration,
}

impl Pace {
    pub fn new(testnet: bool) -> Self {
        if testnet {
            Pace {
                tick: Duration::from_millis(25),
                settle: Duration::from_millis(150),
                grace: Duration::from_millis(500),
                round: Duration::from_secs(2),
                retry: Duration::from_secs(1),
                refresh: Duration::from_secs(1),
            }
        } else {
            Pace {
                tick: Duration::from_secs(1),
                settle: Duration::from_secs(30),
                grace: Duration::from_secs(30),
                round: Duration::from_secs(60),
                retry: Duration::from_secs(120),
                refresh: Duration::from_secs(60),
            }
        }
    }
}

/// Peers' bootstrap rounds this authority may join, and the wake-up of its loop.
#[derive(Default)]
pub struct Joinable {
    rounds: std::sync::Mutex<BTreeSet<u64>>,
    wake: Notify,
}

impl Joinable {
    /// A peer's vote for bootstrap round `t` was accepted.
    pub fn peer_voted(&self, t: u64) {
        let mut r = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        r.insert(t);
        // Only the newest few matter.
        while r.len() > 4 {
            r.pop_first();
        }
        drop(r);
        self.wake.notify_one();
    }

    fn take_newest(&self) -> Option<u64> {
        let mut r = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let t = r.pop_last();
        r.clear();
        t
    }
}

/// What a bootstrap round would change, as an authority sees it now
/// ([`crate::authority::AuthorityState::bootstrap_view`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Relays this authority would vote for.
    pub candidates: usize,
    /// A consensus valid now is published.
    pub valid: bool,
    /// Relays it would vote for that the published (valid) consensus lacks.
    pub missing: BTreeSet<RelayId>,
    /// Its vote would give some relay Guard; the published consensus gives it to none.
    pub guards_wanted: bool,
}

impl View {
    /// The network cannot serve clients: no valid consensus, or one without guards that could
    /// have them.
    fn unusable(&self) -> bool {
        !self.valid || self.guards_wanted
    }
}

/// When the loop should propose a round.
#[derive(Debug, Default)]
pub(crate) struct Proposer {
    /// The situation when last looked at (missing relays, guards wanted), and since when.
    seen: Option<((BTreeSet<RelayId>, bool), Instant)>,
    /// The situation the last round was for, and when it ended.
    last: Option<((BTreeSet<RelayId>, bool), Instant)>,
}

impl Proposer {
    /// Whether to propose a round now, given what this authority sees (`view`).
    pub(crate) fn due(&mut self, testnet: bool, view: &View, now: Instant, pace: &Pace) -> bool {
        let wanted = view.candidates > 0 && (view.unusable() || (testnet && !view.missing.is_empty()));
        if !wanted {
            self.seen = None;
            return false;
        }
        let key = (view.missing.clone(), view.guards_wanted);
        let since = match &self.seen {
            Some((k, at)) if *k == key => *at,
            _ => {
                self.seen = Some((key.clone(), now));
                now
            }
        };
        if now.duration_since(since) < pace.settle {
            return false;
        }
        match &self.last {
            // The same situation as last time: only while the network is unusable, and not
            // before the retry wait.
            Some((k, ended)) if *k == key => view.unusable() && now.duration_since(*ended) >= pace.retry,
            _ => true,
        }
    }

    /// A round proposed (or joined) in situation `view` ended at `now`.
    pub(crate) fn ended(&mut self, view: &View, now: Instant) {
        self.last = Some(((view.missing.clone(), view.guards_wanted), now));
    }
}

/// Proposes and joins bootstrap rounds for as long as the authority runs.
pub(crate) async fn run(sh: Arc<Shared>) {
    let pace = Pace::new(sh.testnet);
    let mut proposer = Proposer::default();
    // The view is worth computing (every relay's flags) only when the state changed, or now and
    // then as uptimes grow: not every tick.
    let mut seen: Option<(u64, Instant, View)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pace.tick) => {}
            _ = sh.joinable.wake.notified() => {}
        }
        let now_ms = sh.clock.now_ms();
        let view = {
            let st = sh.lock();
            match &seen {
                Some((changes, at, v)) if *changes == st.changes() && at.elapsed() < pace.refresh => v.clone(),
                _ => {
                    let v = st.bootstrap_view(now_ms / 1000);
                    seen = Some((st.changes(), Instant::now(), v.clone()));
                    v
                }
            }
        };
        if let Some(t) = sh.joinable.take_newest() {
            if view.candidates > 0 && open_round(&sh, t) && sh.schedule.accepts_bootstrap_vote_for(t, now_ms) {
                round(&sh, t, &pace, "joined").await;
                proposer.ended(&view, Instant::now());
                continue;
            }
        }
        if proposer.due(sh.testnet, &view, Instant::now(), &pace) {
            let t = sh.schedule.bootstrap_valid_after(now_ms);
            if open_round(&sh, t) {
                round(&sh, t, &pace, "proposed").await;
            }
            proposer.ended(&view, Instant::now());
        }
    }
}

/// Whether this authority may still vote in bootstrap round `t`: it has not, and nothing as new
/// is published.
fn open_round(sh: &Shared, t: u64) -> bool {
    let st = sh.lock();
    st.own_vote(t).is_none() && st.published_valid_after().is_none_or(|p| p < t)
}

/// Votes in bootstrap round `t`, waits for the others' votes, computes and signs the consensus,
/// pushes the signature, and publishes if a majority has signed (else a later signature does).
async fn round(sh: &Arc<Shared>, t: u64, pace: &Pace, how: &str) {
    let started = Instant::now();
    let (text, relays) = sh.lock().make_vote(t, sh.clock.now_secs());
    tracing::info!(valid_after = %allium_proto::time::Utc(t), relays, "bootstrap round {how}: voted");
    let deadline_ms = sh.clock.now_ms() + pace.round.as_millis() as u64;
    let sh2 = sh.clone();
    tokio::spawn(async move { crate::authority::push_vote(&sh2, t, text, deadline_ms).await });
    // Every authority's vote, or a majority's once the grace has passed.
    let (all, majority) = (sh.authority_ids.len(), sh.lock().majority_of_authorities());
    loop {
        let have = sh.lock().vote_count(t);
        let waited = started.elapsed();
        if have >= all || (have >= majority && waited >= pace.grace) {
            break;
        }
        if waited >= pace.round {
            tracing::info!(valid_after = %allium_proto::time::Utc(t), votes = have, authorities = all, "bootstrap round given up: too few votes");
            return;
        }
        tokio::time::sleep(pace.tick.min(Duration::from_millis(10))).await;
    }
    let Some(sig) = sh.lock().make_consensus(t) else { return };
    crate::authority::push_signature(sh, sig.encode(), pace.round);
    let published = sh.lock().try_publish(sh.clock.now_ms());
    if let Some(p) = published {
        sh.on_published(p).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u8) -> BTreeSet<RelayId> {
        (0..n).map(|i| RelayId([i; 32])).collect()
    }

    fn view(candidates: usize, valid: bool, missing: BTreeSet<RelayId>, guards_wanted: bool) -> View {
        View { candidates, valid, missing, guards_wanted }
    }

    /// Without a valid consensus a round is proposed once the relays to vote for stay the same
    /// for the settle time, and again only after the retry wait; with nothing to vote for,
    /// never. On a test network, a new set of unlisted relays brings one more round; the same set
    /// again does not (a relay the others do not list cannot cause a round per tick). On a real
    /// network a consensus without guards brings a round once this authority would vote some.
    #[test]
    fn proposes_after_the_relays_settle_and_not_in_a_loop() {
        let pace = Pace::new(true);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut p = Proposer::default();
        assert!(!p.due(true, &view(0, false, BTreeSet::new(), false), t0, &pace), "nothing to vote for");
        assert!(!p.due(true, &view(2, false, ids(2), false), ms(0), &pace));
        assert!(!p.due(true, &view(3, false, ids(3), false), ms(100), &pace), "the set changed: settle again");
        assert!(!p.due(true, &view(3, false, ids(3), false), ms(200), &pace));
        assert!(p.due(true, &view(3, false, ids(3), false), ms(260), &pace));
        p.ended(&view(3, false, ids(3), false), ms(300));
        assert!(!p.due(true, &view(3, false, ids(3), false), ms(800), &pace), "retry waits");
        assert!(p.due(true, &view(3, false, ids(3), false), ms(1300), &pace), "no consensus yet: again");
        p.ended(&view(3, false, ids(3), false), ms(1300));
        // Published, listing every relay: nothing to do.
        assert!(!p.due(true, &view(3, true, BTreeSet::new(), false), ms(1400), &pace));
        // A relay started later (test network): one round for it once settled.
        assert!(!p.due(true, &view(4, true, ids(1), false), ms(2000), &pace));
        assert!(p.due(true, &view(4, true, ids(1), false), ms(2200), &pace));
        p.ended(&view(4, true, ids(1), false), ms(2200));
        assert!(!p.due(true, &view(4, true, ids(1), false), ms(9000), &pace), "the others do not list it: no loop");
        // On a real network, a valid consensus with guards ends bootstrapping whatever it lacks.
        let real = Pace::new(false);
        let mut r = Proposer::default();
        assert!(!r.due(false, &view(4, true, ids(1), false), t0, &real));
        assert!(!r.due(false, &view(4, true, ids(1), false), t0 + Duration::from_secs(600), &real));
        // ... but not one without guards once this authority would vote some: one round after the
        // settle time, again only after the retry wait while guards are still missing.
        let s0 = t0 + Duration::from_secs(1000);
        assert!(!r.due(false, &view(4, true, BTreeSet::new(), true), s0, &real));
        assert!(r.due(false, &view(4, true, BTreeSet::new(), true), s0 + real.settle, &real));
        r.ended(&view(4, true, BTreeSet::new(), true), s0 + real.settle);
        assert!(!r.due(false, &view(4, true, BTreeSet::new(), true), s0 + real.settle + Duration::from_secs(60), &real));
        assert!(r.due(false, &view(4, true, BTreeSet::new(), true), s0 + real.settle + real.retry, &real));
    }
}
