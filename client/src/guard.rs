//! Guards: the few relays this client uses as first hop, kept for weeks.
//!
//! A fresh random first hop per circuit would let a hostile relay eventually be first hop for
//! every client; a small set kept for a long time bounds that exposure. The model:
//!
//! - **Sampled set**: up to [`GuardParams::sample_max`] guard-capable relays, drawn by guard
//!   weight, each kept for a randomised lifetime (30–60 days) from when it was sampled, across
//!   restarts (state file `guards.toml` in `node.data_dir`).
//! - **Primary guards**: the first [`GuardParams::primary`] sampled guards that the current
//!   consensus lists, used in that order.
//! - **Reachability**: a guard whose link fails is retried with exponential backoff (1 s, 2 s, …)
//!   and stays the preferred guard while it has failed fewer than
//!   [`GuardParams::down_after`] times in a row; after that it is down until its next retry
//!   time and the next primary guard is used. Guards beyond the primary set are only used when
//!   every primary guard is down.
//! - **Flaps**: a sampled guard that loses Guard or Running (or leaves the consensus) is kept,
//!   unused, and is a primary guard again when the flag returns; one not listed as a guard for
//!   [`GuardParams::remove_unlisted_after`] (20 days, as Tor) is removed. Since when is saved.
//! - **No churn**: at most [`GuardParams::max_new_per_hour`] guards never tried before may be
//!   tried in any hour (the limit survives restarts); past it the client waits for a known guard.
//!
//! Everything here is sans-IO except [`load`] and [`save`]: time (`now`, milliseconds since the
//! Unix epoch) and randomness are passed in.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use allium_proto::ids::RelayId;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::path::{pick, Candidate, Position};

/// The state file's name in `node.data_dir`.
pub const STATE_FILE: &str = "guards.toml";

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// Tunables (the defaults are the real network's).
#[derive(Debug, Clone)]
pub struct GuardParams {
    /// Guards used in order.
    pub primary: usize,
    /// Most guards kept sampled.
    pub sample_max: usize,
    /// A sampled guard's lifetime is uniform in `[lifetime_min, lifetime_max)`.
    pub lifetime_min: Duration,
    pub lifetime_max: Duration,
    /// First retry delay after a failure; doubles with each further failure.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Consecutive failures after which the next primary guard is used.
    pub down_after: u32,
    /// Never-tried guards that may be tried in any one hour.
    pub max_new_per_hour: usize,
    /// A sampled guard the consensus has not listed as a guard for this long is removed (a
    /// flap keeps it, unused, and it is used again when its flag returns).
    pub remove_unlisted_after: Duration,
}

impl Default for GuardParams {
    fn default() -> Self {
        GuardParams {
            primary: 3,
            sample_max: 20,
            lifetime_min: Duration::from_millis(30 * DAY_MS),
            lifetime_max: Duration::from_millis(60 * DAY_MS),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            down_after: 3,
            max_new_per_hour: 5,
            remove_unlisted_after: Duration::from_millis(20 * DAY_MS),
        }
    }
}

/// One sampled guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub id: RelayId,
    /// When it was sampled and when it leaves the set (ms since the epoch).
    pub added: u64,
    pub expires: u64,
    /// First attempt to use it, if any.
    pub first_tried: Option<u64>,
    /// First successful link, if any.
    pub confirmed: Option<u64>,
    /// Consecutive failures (not persisted: a restart retries every guard).
    pub failures: u32,
    /// Not to be tried before this time (ms).
    pub retry_at: u64,
    /// Since when the consensus has not listed it as a guard (lost Guard or Running, or left
    /// the consensus); None while it is listed.
    pub unlisted_since: Option<u64>,
}

/// What to do for the next circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Usable guards, most preferred first (the rest only if a path needs another guard).
    Use(Vec<RelayId>),
    /// The preferred guard is in its backoff, or no guard may be tried now: ask again at this
    /// time (ms).
    WaitUntil(u64),
    /// No guard-capable relay is listed.
    NoneListed,
}

/// The guard state.
#[derive(Debug, Clone)]
pub struct GuardSet {
    params: GuardParams,
    guards: Vec<Guard>,
    /// When never-tried guards were first tried (ms), last hour or more.
    new_tries: VecDeque<u64>,
    /// Changed since the last [`GuardSet::take_dirty`].
    dirty: bool,
    /// The last time the churn limit was logged (to log it once per episode).
    churn_logged: bool,
}

impl GuardSet {
    pub fn new(params: GuardParams) -> Self {
        GuardSet { params, guards: Vec::new(), new_tries: VecDeque::new(), dirty: false, churn_logged: false }
    }

    pub fn guards(&self) -> &[Guard] {
        &self.guards
    }

    /// True once if the state changed (and should be saved).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks the state changed again (its save failed: the next save retries it).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Drops expired guards and samples new ones (by guard weight, among guard-capable relays
    /// not yet sampled) until enough listed ones exist. Returns how many were added.
    pub fn update<R: Rng + ?Sized>(&mut self, cands: &[Candidate<'_>], now: u64, rng: &mut R) -> usize {
        let before = self.guards.len();
        self.guards.retain(|g| g.expires > now);
        if self.guards.len() != before {
            tracing::info!("{} guard(s) reached the end of their lifetime and left the guard set", before - self.guards.len());
            self.dirty = true;
        }
        self.track_unlisted(cands, now);
        while let Some(h) = self.new_tries.front() {
            if now.saturating_sub(*h) >= HOUR_MS {
                self.new_tries.pop_front();
                self.dirty = true;
            } else {
                break;
            }
        }
        // Enough listed guards for the primary set plus as many in reserve.
        let want = self.params.primary * 2;
        let mut added = 0;
        while self.listed(cands).count() < want && self.guards.len() < self.params.sample_max {
            let Some(c) = pick(cands, Position::Guard, rng, |c| c.is_guard && !self.guards.iter().any(|g| g.id == *c.id())) else { break };
            let span = self.params.lifetime_max.saturating_sub(self.params.lifetime_min).as_millis() as u64;
            let life = self.params.lifetime_min.as_millis() as u64 + if span > 0 { rng.gen_range(0..span) } else { 0 };
            self.guards.push(Guard { id: *c.id(), added: now, expires: now + life, first_tried: None, confirmed: None, failures: 0, retry_at: 0, unlisted_since: None });
            added += 1;
        }
        if added > 0 {
            self.dirty = true;
            tracing::debug!("sampled {added} new guard(s); {} in the guard set", self.guards.len());
        }
        added
    }

    /// Notes when each guard stopped being listed as a guard (or was listed again), and
    /// removes those unlisted for longer than `remove_unlisted_after`.
    fn track_unlisted(&mut self, cands: &[Candidate<'_>], now: u64) {
        let limit = self.params.remove_unlisted_after.as_millis() as u64;
        for g in &mut self.guards {
            let listed = cands.iter().any(|c| c.is_guard && c.id() == &g.id);
            let since = if listed { None } else { Some(g.unlisted_since.unwrap_or(now)) };
            if since != g.unlisted_since {
                g.unlisted_since = since;
                self.dirty = true;
            }
        }
        let before = self.guards.len();
        self.guards.retain(|g| g.unlisted_since.is_none_or(|t| now.saturating_sub(t) < limit));
        if self.guards.len() != before {
            tracing::info!("{} guard(s) not listed as guards for {} days left the guard set", before - self.guards.len(), limit / DAY_MS);
            self.dirty = true;
        }
    }

    /// Sampled guards the consensus lists as guard-capable, in sample order.
    fn listed<'s>(&'s self, cands: &'s [Candidate<'_>]) -> impl Iterator<Item = &'s Guard> + 's {
        self.guards.iter().filter(move |g| cands.iter().any(|c| c.is_guard && c.id() == &g.id))
    }

    /// The primary guards: the first `primary` listed sampled guards.
    pub fn primaries(&self, cands: &[Candidate<'_>]) -> Vec<RelayId> {
        self.listed(cands).take(self.params.primary).map(|g| g.id).collect()
    }

    fn new_allowed(&self, now: u64) -> bool {
        self.new_tries.iter().filter(|t| now.saturating_sub(**t) < HOUR_MS).count() < self.params.max_new_per_hour
    }

    /// Which guards to use now.
    ///
    /// Primary guards in order: one that may be tried now is used; one still in its first
    /// `down_after` failures but in backoff makes the caller wait (it is retried before the
    /// next is used); one that is down is skipped. If every primary guard is down, the other
    /// listed guards are considered the same way. Never-tried guards only within the hourly
    /// limit.
    pub fn select(&mut self, cands: &[Candidate<'_>], now: u64) -> Selection {
        let listed: Vec<Guard> = self.listed(cands).cloned().collect();
        if listed.is_empty() {
            return Selection::NoneListed;
        }
        let new_ok = self.new_allowed(now);
        let mut usable = Vec::new();
        let mut wait: Option<u64> = None;
        let mut churn_blocked = false;
        for (i, g) in listed.iter().enumerate() {
            let primary = i < self.params.primary;
            if !primary && !usable.is_empty() {
                break;
            }
            if g.first_tried.is_none() && !new_ok {
                churn_blocked = true;
                continue;
            }
            if now >= g.retry_at {
                usable.push(g.id);
            } else {
                wait = Some(wait.map_or(g.retry_at, |w| w.min(g.retry_at)));
                if g.failures < self.params.down_after && usable.is_empty() {
                    // Retry this one (after its backoff) before moving on.
                    return Selection::WaitUntil(g.retry_at);
                }
            }
        }
        if churn_blocked && usable.is_empty() {
            if !self.churn_logged {
                tracing::warn!(
                    "guard churn limit: {} new guards were already tried in the last hour (at most {} per hour); waiting for a known guard to come back",
                    self.params.max_new_per_hour,
                    self.params.max_new_per_hour
                );
                self.churn_logged = true;
            }
            // Whichever comes first: a known guard's retry or the oldest new try ageing out.
            let ages_out = self.new_tries.front().map(|t| t + HOUR_MS);
            return Selection::WaitUntil(wait.into_iter().chain(ages_out).min().unwrap_or(now + HOUR_MS));
        }
        match (usable.is_empty(), wait) {
            (false, _) => {
                self.churn_logged = false;
                Selection::Use(usable)
            }
            (true, Some(w)) => Selection::WaitUntil(w),
            (true, None) => Selection::WaitUntil(now + self.params.backoff_base.as_millis() as u64),
        }
    }

    fn get_mut(&mut self, id: &RelayId) -> Option<&mut Guard> {
        self.guards.iter_mut().find(|g| g.id == *id)
    }

    /// The client is about to try `id` as first hop.
    pub fn on_attempt(&mut self, id: &RelayId, now: u64) {
        let max = self.params.max_new_per_hour;
        let Some(g) = self.get_mut(id) else { return };
        if g.first_tried.is_none() {
            g.first_tried = Some(now);
            self.new_tries.push_back(now);
            self.dirty = true;
            let n = self.new_tries.iter().filter(|t| now.saturating_sub(**t) < HOUR_MS).count();
            tracing::info!("trying a new guard ({n} new guard(s) tried in the last hour; at most {max} per hour)");
        }
    }

    /// A link to `id` opened.
    pub fn on_success(&mut self, id: &RelayId, now: u64) {
        let Some(g) = self.get_mut(id) else { return };
        let was_down = g.failures > 0;
        g.failures = 0;
        g.retry_at = 0;
        if g.confirmed.is_none() {
            g.confirmed = Some(now);
            self.dirty = true;
        }
        if was_down {
            tracing::info!("a guard that had failed is reachable again");
        }
    }

    /// A link to `id` could not be opened.
    pub fn on_failure(&mut self, id: &RelayId, now: u64) {
        let (base, max, down_after) = (self.params.backoff_base, self.params.backoff_max, self.params.down_after);
        let Some(g) = self.get_mut(id) else { return };
        g.failures += 1;
        let delay = base.saturating_mul(1u32 << (g.failures - 1).min(20)).min(max);
        g.retry_at = now + delay.as_millis() as u64;
        if g.failures == down_after {
            tracing::info!("a guard is unreachable after {down_after} attempts; using the next primary guard (retrying this one in {} s)", delay.as_secs());
        } else {
            tracing::debug!("guard {} unreachable ({} failure(s)); retry in {} ms", id.short(), g.failures, delay.as_millis());
        }
    }

    /// The state file's text.
    pub fn to_toml(&self) -> String {
        let file = GuardFile {
            version: 1,
            new_guard_tries: self.new_tries.iter().map(|t| t / 1000).collect(),
            guard: self
                .guards
                .iter()
                .map(|g| StoredGuard {
                    id: g.id.fingerprint(),
                    added: g.added / 1000,
                    expires: g.expires / 1000,
                    first_tried: g.first_tried.map(|t| t / 1000),
                    confirmed: g.confirmed.map(|t| t / 1000),
                    unlisted_since: g.unlisted_since.map(|t| t / 1000),
                })
                .collect(),
        };
        let mut s = String::from("# Allium client guard state. Written by the client; do not edit while it runs.\n");
        s.push_str(&toml::to_string(&file).expect("guard state serialises"));
        s
    }

    /// Parses a state file.
    pub fn from_toml(text: &str, params: GuardParams) -> Result<Self, String> {
        let file: GuardFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.version != 1 {
            return Err(format!("unknown version {}", file.version));
        }
        let mut guards = Vec::new();
        for g in file.guard {
            let id: RelayId = g.id.parse().map_err(|_| format!("bad guard identity {:?}", g.id))?;
            if guards.iter().any(|x: &Guard| x.id == id) {
                return Err("a guard is listed twice".into());
            }
            guards.push(Guard {
                id,
                added: g.added * 1000,
                expires: g.expires * 1000,
                first_tried: g.first_tried.map(|t| t * 1000),
                confirmed: g.confirmed.map(|t| t * 1000),
                failures: 0,
                retry_at: 0,
                unlisted_since: g.unlisted_since.map(|t| t * 1000),
            });
        }
        let mut new_tries: Vec<u64> = file.new_guard_tries.iter().map(|t| t * 1000).collect();
        new_tries.sort_unstable();
        Ok(GuardSet { params, guards, new_tries: new_tries.into(), dirty: false, churn_logged: false })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardFile {
    version: u32,
    /// When never-tried guards were first tried (unix seconds), for the hourly limit.
    #[serde(default)]
    new_guard_tries: Vec<u64>,
    #[serde(default)]
    guard: Vec<StoredGuard>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredGuard {
    id: String,
    added: u64,
    expires: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_tried: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    confirmed: Option<u64>,
    /// Unix seconds since which the consensus has not listed it as a guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unlisted_since: Option<u64>,
}

/// The state file path in a data directory.
pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_FILE)
}

/// Loads the guard state; a missing file gives an empty set; a corrupt one is reported, moved
/// aside (`guards.toml.corrupt`) and replaced by an empty set.
pub fn load(path: &Path, params: GuardParams) -> GuardSet {
    match crate::state_file::load(path, "guard state file", |t| GuardSet::from_toml(t, params.clone())) {
        crate::state_file::Loaded::Read(s) => {
            tracing::info!("loaded {} guard(s) from {}", s.guards.len(), path.display());
            s
        }
        crate::state_file::Loaded::Missing => GuardSet::new(params),
        crate::state_file::Loaded::Unusable => {
            // Written at the first save, so the corrupt file is replaced.
            let mut s = GuardSet::new(params);
            s.dirty = true;
            s
        }
    }
}

/// Writes the state atomically (see [`crate::state_file::write_atomic`]).
pub fn save(path: &Path, set: &GuardSet) -> std::io::Result<()> {
    crate::state_file::write_atomic(path, &set.to_toml())
}

impl crate::state_file::SavedState for GuardSet {
    fn take_dirty(&mut self) -> bool {
        GuardSet::take_dirty(self)
    }
    fn mark_dirty(&mut self) {
        GuardSet::mark_dirty(self)
    }
    fn to_toml(&self) -> String {
        GuardSet::to_toml(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::candidates_from_relays;
    use crate::path::tests::relay_at;
    use allium_proto::doc::ConsensusRelay;
    use rand::SeedableRng;

    fn relays(n: u8) -> Vec<ConsensusRelay> {
        (1..=n).map(|i| relay_at(i, format!("10.{i}.0.1").parse().unwrap(), 100 * i as u64, &[80])).collect()
    }

    const T0: u64 = 1_700_000_000_000;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("allium-guard-{tag}-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn samples_primaries_with_long_random_lifetimes() {
        let r = relays(12);
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut s = GuardSet::new(GuardParams::default());
        assert_eq!(s.update(&cands, T0, &mut rng), 6);
        assert!(s.take_dirty());
        let p = s.primaries(&cands);
        assert_eq!(p.len(), 3);
        for g in s.guards() {
            assert!(g.expires >= T0 + 30 * DAY_MS && g.expires < T0 + 60 * DAY_MS);
        }
        assert_eq!(s.select(&cands, T0), Selection::Use(p.clone()));
        // Nothing changes on a second update; after 60 days, everything was replaced.
        assert_eq!(s.update(&cands, T0 + 1000, &mut rng), 0);
        s.update(&cands, T0 + 60 * DAY_MS, &mut rng);
        assert!(s.guards().iter().all(|g| g.added == T0 + 60 * DAY_MS));
    }

    #[test]
    fn survives_a_restart_and_a_corrupt_file_is_replaced() {
        let dir = temp_dir("persist");
        let path = state_path(&dir);
        let r = relays(8);
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut s = load(&path, GuardParams::default());
        assert!(s.guards().is_empty());
        s.update(&cands, T0, &mut rng);
        let first = s.primaries(&cands)[0];
        s.on_attempt(&first, T0);
        s.on_success(&first, T0 + 5);
        save(&path, &s).unwrap();
        assert!(!path.with_extension("toml.tmp").exists());

        // "Restart": a new set from the file has the same guards, order and bookkeeping.
        let mut again = load(&path, GuardParams::default());
        assert_eq!(again.guards().iter().map(|g| g.id).collect::<Vec<_>>(), s.guards().iter().map(|g| g.id).collect::<Vec<_>>());
        assert_eq!(again.guards()[0].confirmed, Some(T0 / 1000 * 1000));
        assert_eq!(again.update(&cands, T0 + DAY_MS, &mut rng), 0);
        assert_eq!(again.select(&cands, T0 + DAY_MS), Selection::Use(s.primaries(&cands)));

        std::fs::write(&path, "version = 1\n[[guard]]\nid = \"nonsense\"\n").unwrap();
        let fresh = load(&path, GuardParams::default());
        assert!(fresh.guards().is_empty());
        assert!(path.with_extension("toml.corrupt").exists());
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert!(load(&path, GuardParams::default()).guards().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn down_guard_is_retried_with_backoff_then_the_next_primary_is_used() {
        let r = relays(12);
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut s = GuardSet::new(GuardParams::default());
        s.update(&cands, T0, &mut rng);
        let p = s.primaries(&cands);
        let mut now = T0;
        // Failures 1 and 2: wait 1 s, then 2 s, for the same guard.
        for delay in [1000, 2000] {
            s.on_attempt(&p[0], now);
            s.on_failure(&p[0], now);
            assert_eq!(s.select(&cands, now), Selection::WaitUntil(now + delay));
            now += delay;
            assert_eq!(s.select(&cands, now), Selection::Use(p.clone()));
        }
        // Third failure: down for 4 s; the second primary is used meanwhile.
        s.on_failure(&p[0], now);
        assert_eq!(s.select(&cands, now), Selection::Use(p[1..].to_vec()));
        // Once its backoff is over it is preferred again; a success clears it.
        assert_eq!(s.select(&cands, now + 4000), Selection::Use(p.clone()));
        s.on_success(&p[0], now + 4000);
        assert_eq!(s.guards()[0].failures, 0);
    }

    #[test]
    fn backoff_grows_exponentially_to_a_ceiling() {
        let r = relays(4);
        let cands = candidates_from_relays(&r);
        let mut s = GuardSet::new(GuardParams::default());
        s.update(&cands, T0, &mut rand::rngs::StdRng::seed_from_u64(1));
        let id = s.guards()[0].id;
        let mut delays = Vec::new();
        for _ in 0..15 {
            s.on_failure(&id, T0);
            delays.push(s.guards()[0].retry_at - T0);
        }
        assert_eq!(&delays[..5], &[1000, 2000, 4000, 8000, 16000]);
        assert_eq!(*delays.last().unwrap(), 3_600_000);
    }

    /// Every guard is down: the client tries at most `max_new_per_hour` new guards per hour,
    /// then waits, and may try more only after the hour has passed.
    #[test]
    fn all_guards_down_bounded_new_guards_per_hour() {
        let r = relays(30);
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut s = GuardSet::new(GuardParams::default());
        let mut now = T0;
        let mut tried = std::collections::HashSet::new();
        // Simulate an hour of a client that tries to build a circuit every second.
        while now < T0 + HOUR_MS - 1000 {
            s.update(&cands, now, &mut rng);
            match s.select(&cands, now) {
                Selection::Use(list) => {
                    let g = list[0];
                    s.on_attempt(&g, now);
                    s.on_failure(&g, now);
                    tried.insert(g);
                    now += 1000;
                }
                Selection::WaitUntil(t) => {
                    assert!(t > now);
                    now = t.min(now + 60_000);
                }
                Selection::NoneListed => panic!("relays are listed"),
            }
        }
        assert_eq!(tried.len(), 5, "new guards tried within one hour");
        assert!(s.guards().len() <= GuardParams::default().sample_max);
        // After the hour, new guards may be tried again.
        now = T0 + HOUR_MS + 1;
        s.update(&cands, now, &mut rng);
        let Selection::Use(list) = s.select(&cands, now) else { panic!("expected a guard to use") };
        s.on_attempt(&list[0], now);
        s.on_failure(&list[0], now);
        tried.insert(list[0]);
        assert!(tried.len() <= 10);
    }

    #[test]
    fn unlisted_guards_are_kept_but_not_used() {
        let r = relays(8);
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut s = GuardSet::new(GuardParams::default());
        s.update(&cands, T0, &mut rng);
        let p = s.primaries(&cands);
        let fewer: Vec<ConsensusRelay> = r.iter().filter(|x| x.identity != p[0]).cloned().collect();
        let c2 = candidates_from_relays(&fewer);
        assert!(!s.primaries(&c2).contains(&p[0]));
        assert!(s.guards().iter().any(|g| g.id == p[0]));
        assert_eq!(s.primaries(&cands)[0], p[0]);
    }

    /// Issue 13 point 3: a guard that flaps (loses its flag for a while) is kept through
    /// updates, saved with when it left, used again when the flag returns; one gone for 20 days
    /// is removed.
    #[test]
    fn a_flapping_guard_is_kept_and_a_long_gone_one_removed() {
        let r = relays(8);
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut s = GuardSet::new(GuardParams::default());
        s.update(&cands, T0, &mut rng);
        let first = s.primaries(&cands)[0];
        let without: Vec<ConsensusRelay> = r.iter().filter(|x| x.identity != first).cloned().collect();
        let c2 = candidates_from_relays(&without);
        // Unlisted for 10 days, through many updates and a save/load: kept, not used.
        for day in 1..=10 {
            s.update(&c2, T0 + day * DAY_MS, &mut rng);
        }
        let s2 = GuardSet::from_toml(&s.to_toml(), GuardParams::default()).unwrap();
        let g = s2.guards().iter().find(|g| g.id == first).expect("kept through a flap");
        assert_eq!(g.unlisted_since, Some(T0 + DAY_MS));
        assert!(!s2.primaries(&c2).contains(&first));
        // Back: the first primary again, and no longer marked.
        let mut s = s2;
        s.update(&cands, T0 + 11 * DAY_MS, &mut rng);
        assert_eq!(s.primaries(&cands)[0], first);
        assert_eq!(s.guards().iter().find(|g| g.id == first).unwrap().unlisted_since, None);
        // Gone again for 20 days: removed.
        s.update(&c2, T0 + 12 * DAY_MS, &mut rng);
        s.update(&c2, T0 + 31 * DAY_MS, &mut rng);
        assert!(s.guards().iter().any(|g| g.id == first));
        s.update(&c2, T0 + 32 * DAY_MS, &mut rng);
        assert!(!s.guards().iter().any(|g| g.id == first), "unlisted for 20 days: removed");
    }
}
