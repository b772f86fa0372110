//! Second-hop vanguards ("vanguards-lite") for onion-service circuits.
//!
//! Circuits to a chosen relay (HSDir uploads and fetches, introduction and rendezvous circuits)
//! end at a relay an attacker may pick, and an attacker can make a service or client build many
//! of them. With a fresh random second hop each time, a hostile relay would soon be that second
//! hop and see the guard. So those circuits run guard → **L2 vanguard** → middle → last hop,
//! the L2 vanguard taken from a small set kept for days:
//!
//! - **Set**: [`VanguardParams::count`] (4) relays drawn by middle weight, distinct from each
//!   other (a guard may also be in the set; a path never uses one relay twice).
//! - **Lifetime**: each member is kept for a random time, uniform in
//!   [`VanguardParams::lifetime_min`, `lifetime_max`) = [1 day, 12 days), then replaced by a new
//!   draw; members are replaced one at a time, so the set never changes all at once.
//! - **Gone**: a member the consensus no longer lists as Running and Valid is replaced at once.
//! - **Restarts**: the set is kept in `vanguards.toml` in `node.data_dir`, next to the guard
//!   state, written atomically.
//!
//! Sans-IO except [`load`] and [`save`]: time (`now`, milliseconds since the Unix epoch) and
//! randomness are passed in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use allium_proto::ids::RelayId;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::path::{pick, Candidate, Position};

/// The state file's name in `node.data_dir`.
pub const STATE_FILE: &str = "vanguards.toml";

const DAY: Duration = Duration::from_secs(86_400);

/// Tunables (the defaults are the real network's).
#[derive(Debug, Clone)]
pub struct VanguardParams {
    /// Members of the set.
    pub count: usize,
    /// A member's lifetime is uniform in `[lifetime_min, lifetime_max)`.
    pub lifetime_min: Duration,
    pub lifetime_max: Duration,
}

impl Default for VanguardParams {
    fn default() -> Self {
        VanguardParams { count: 4, lifetime_min: DAY, lifetime_max: 12 * DAY }
    }
}

/// One member of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vanguard {
    pub id: RelayId,
    /// When it was drawn (ms since the epoch).
    pub added: u64,
    /// When it is replaced (ms since the epoch).
    pub expires: u64,
}

/// The L2 vanguard set.
#[derive(Debug, Clone)]
pub struct VanguardSet {
    params: VanguardParams,
    members: Vec<Vanguard>,
    dirty: bool,
}

impl VanguardSet {
    pub fn new(params: VanguardParams) -> Self {
        VanguardSet { params, members: Vec::new(), dirty: false }
    }

    pub fn members(&self) -> &[Vanguard] {
        &self.members
    }

    /// The members' identities, in the order drawn.
    pub fn ids(&self) -> Vec<RelayId> {
        self.members.iter().map(|v| v.id).collect()
    }

    /// True once after the set changed (it should be saved).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks the set changed again (its save failed: the next save retries it).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Brings the set up to date with `cands` (the usable relays of the current consensus) at
    /// `now`: members that expired or are no longer listed are dropped, and the set is filled
    /// up to `count` by middle weight. Returns how many members were drawn.
    pub fn update<R: Rng + ?Sized>(&mut self, cands: &[Candidate<'_>], now: u64, rng: &mut R) -> usize {
        let before = self.members.len();
        self.members.retain(|v| {
            let listed = cands.iter().any(|c| *c.id() == v.id);
            if !listed {
                tracing::debug!("vanguard {} is no longer usable; replacing it", v.id.short());
            } else if v.expires <= now {
                tracing::debug!("vanguard {} reached its lifetime; replacing it", v.id.short());
            }
            listed && v.expires > now
        });
        let mut drawn = 0;
        while self.members.len() < self.params.count {
            let Some(c) = pick(cands, Position::Middle, rng, |c| !self.members.iter().any(|v| v.id == *c.id())) else { break };
            let (lo, hi) = (self.params.lifetime_min.as_millis() as u64, self.params.lifetime_max.as_millis() as u64);
            let life = if hi > lo { rng.gen_range(lo..hi) } else { lo };
            self.members.push(Vanguard { id: *c.id(), added: now, expires: now.saturating_add(life) });
            drawn += 1;
        }
        if drawn > 0 || self.members.len() != before {
            self.dirty = true;
        }
        drawn
    }

    /// The state file's text.
    pub fn to_toml(&self) -> String {
        let file = VanguardFile {
            version: 1,
            vanguard: self.members.iter().map(|v| StoredVanguard { id: v.id.fingerprint(), added: v.added / 1000, expires: v.expires / 1000 }).collect(),
        };
        let mut s = String::from("# Allium client vanguard (second hop) state. Written by the client; do not edit while it runs.\n");
        s.push_str(&toml::to_string(&file).expect("vanguard state serialises"));
        s
    }

    /// Parses a state file.
    pub fn from_toml(text: &str, params: VanguardParams) -> Result<Self, String> {
        let file: VanguardFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.version != 1 {
            return Err(format!("unknown version {}", file.version));
        }
        let mut members: Vec<Vanguard> = Vec::new();
        for v in file.vanguard {
            let id: RelayId = v.id.parse().map_err(|_| format!("bad vanguard identity {:?}", v.id))?;
            if members.iter().any(|m| m.id == id) {
                return Err("a vanguard is listed twice".into());
            }
            members.push(Vanguard { id, added: v.added.saturating_mul(1000), expires: v.expires.saturating_mul(1000) });
        }
        // A file with more members than the set holds keeps the first ones.
        members.truncate(params.count);
        Ok(VanguardSet { params, members, dirty: false })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VanguardFile {
    version: u32,
    #[serde(default)]
    vanguard: Vec<StoredVanguard>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredVanguard {
    id: String,
    /// Unix seconds.
    added: u64,
    expires: u64,
}

/// The state file path in a data directory.
pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_FILE)
}

/// Loads the set; a missing file gives an empty set; a corrupt one is reported, moved aside
/// (`vanguards.toml.corrupt`) and replaced by an empty set.
pub fn load(path: &Path, params: VanguardParams) -> VanguardSet {
    match crate::state_file::load(path, "vanguard state file", |t| VanguardSet::from_toml(t, params.clone())) {
        crate::state_file::Loaded::Read(s) => s,
        _ => VanguardSet::new(params),
    }
}

/// Writes the set atomically (see [`crate::state_file::write_atomic`]).
pub fn save(path: &Path, set: &VanguardSet) -> std::io::Result<()> {
    crate::state_file::write_atomic(path, &set.to_toml())
}

impl crate::state_file::SavedState for VanguardSet {
    fn take_dirty(&mut self) -> bool {
        VanguardSet::take_dirty(self)
    }
    fn mark_dirty(&mut self) {
        VanguardSet::mark_dirty(self)
    }
    fn to_toml(&self) -> String {
        VanguardSet::to_toml(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::candidates_from_relays;
    use crate::path::tests::relay_at;
    use allium_proto::doc::ConsensusRelay;
    use rand::SeedableRng;

    const T0: u64 = 1_700_000_000_000;
    const DAY_MS: u64 = 86_400_000;

    fn relays(n: u8) -> Vec<ConsensusRelay> {
        (1..=n).map(|i| relay_at(i, format!("10.{i}.0.1").parse().unwrap(), 100 * i as u64, &[])).collect()
    }

    #[test]
    fn draws_four_distinct_members_with_lifetimes_of_one_to_twelve_days() {
        let r = relays(10);
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut s = VanguardSet::new(VanguardParams::default());
        assert_eq!(s.update(&cands, T0, &mut rng), 4);
        assert!(s.take_dirty());
        let ids = s.ids();
        assert_eq!(ids.len(), 4);
        assert!((0..4).all(|i| (i + 1..4).all(|j| ids[i] != ids[j])), "{ids:?}");
        for v in s.members() {
            assert!(v.expires >= T0 + DAY_MS && v.expires < T0 + 12 * DAY_MS, "{v:?}");
        }
        // Nothing changes while every member is listed and young.
        assert_eq!(s.update(&cands, T0 + DAY_MS - 1, &mut rng), 0);
        assert!(!s.take_dirty());
        assert_eq!(s.ids(), ids);
        // Too few relays: as many members as there are relays.
        let two = candidates_from_relays(&r[..2]);
        let mut small = VanguardSet::new(VanguardParams::default());
        assert_eq!(small.update(&two, T0, &mut rng), 2);
    }

    #[test]
    fn members_rotate_one_by_one_after_their_lifetime() {
        let r = relays(30);
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut s = VanguardSet::new(VanguardParams::default());
        s.update(&cands, T0, &mut rng);
        let first = s.members().to_vec();
        let soonest = first.iter().min_by_key(|v| v.expires).unwrap().clone();
        // At the first expiry exactly that member is replaced, the others stay.
        assert_eq!(s.update(&cands, soonest.expires, &mut rng), 1);
        assert!(!s.ids().contains(&soonest.id) || s.members().iter().any(|v| v.id == soonest.id && v.added == soonest.expires));
        for v in first.iter().filter(|v| v.id != soonest.id && v.expires > soonest.expires) {
            assert!(s.members().contains(v), "{v:?} was replaced early");
        }
        // After twelve days nothing of the first draw is left.
        s.update(&cands, T0 + 12 * DAY_MS, &mut rng);
        assert!(s.members().iter().all(|v| v.added == T0 + 12 * DAY_MS));
        assert_eq!(s.members().len(), 4);
    }

    #[test]
    fn a_member_that_leaves_the_consensus_is_replaced_at_once() {
        let r = relays(10);
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut s = VanguardSet::new(VanguardParams::default());
        s.update(&cands, T0, &mut rng);
        let gone = s.ids()[1];
        let rest: Vec<ConsensusRelay> = r.iter().filter(|x| x.identity != gone).cloned().collect();
        let fewer = candidates_from_relays(&rest);
        assert_eq!(s.update(&fewer, T0 + 1000, &mut rng), 1);
        assert!(!s.ids().contains(&gone));
        assert_eq!(s.ids().len(), 4);
        assert!(s.take_dirty());
    }

    #[test]
    fn survives_a_restart_and_a_corrupt_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("allium-vanguards-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = state_path(&dir);
        assert!(load(&path, VanguardParams::default()).members().is_empty());
        let r = relays(10);
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut s = VanguardSet::new(VanguardParams::default());
        s.update(&cands, T0, &mut rng);
        save(&path, &s).unwrap();
        assert!(!dir.join("vanguards.toml.tmp").exists());
        let mut again = load(&path, VanguardParams::default());
        let secs = |set: &VanguardSet| set.members().iter().map(|v| (v.id, v.added / 1000, v.expires / 1000)).collect::<Vec<_>>();
        assert_eq!(secs(&again), secs(&s), "same members, times to the second");
        assert_eq!(again.update(&cands, T0 + 1000, &mut rng), 0, "a restart draws nothing new");

        std::fs::write(&path, "version = 1\n[[vanguard]]\nid = \"nonsense\"\nadded = 1\nexpires = 2\n").unwrap();
        assert!(load(&path, VanguardParams::default()).members().is_empty());
        assert!(dir.join("vanguards.toml.corrupt").exists());
        let twice = format!("version = 1\n{}", ["[[vanguard]]\nid = \"", &r[0].identity.fingerprint(), "\"\nadded = 1\nexpires = 2\n"].concat().repeat(2));
        assert!(VanguardSet::from_toml(&twice, VanguardParams::default()).is_err());
        assert!(VanguardSet::from_toml("version = 2\n", VanguardParams::default()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
