//! A service's introduction points, sans-IO: how many it wants, their keys, replacement of
//! failed ones, rotation, and the processing of INTRODUCE2 (docs/PROTOCOL.md, "Introduction
//! points" and "Introduction" → Service processing). The caller builds the circuits, picks the
//! relays and publishes descriptors; this module says when and with what.

use ed25519_dalek::SigningKey;
use rand::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};

use super::inner::IntroPoint;
use super::introduce::{self, IntroduceContent, IntroduceError};
use super::rendezvous::{self, RendError, ServiceOutcome};
use super::replay::{ReplayCache, Replayed, DEFAULT_MAX_ENTRIES};
use crate::ext::Extensions;
use crate::relay_msg::{ExtendTarget, IntroduceBody};

/// Default number of introduction points.
pub const DEFAULT_INTRO_POINTS: usize = 3;
/// Default lifetime of an introduction point (then it is rotated).
pub const DEFAULT_LIFETIME_SECS: u64 = 24 * 3600;
/// Default time a retired introduction point's circuit stays open (the longest descriptor
/// lifetime an HSDir honours).
pub const DEFAULT_RETIRE_GRACE_SECS: u64 = 12 * 3600;
/// Circuit rebuilds to the same relay before the point is replaced.
pub const MAX_RETRIES: u8 = 1;

/// State of one introduction point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointState {
    /// Circuit being built, or ESTABLISH_INTRO sent.
    Pending,
    /// INTRO_ESTABLISHED received: listed in descriptors.
    Established,
    /// Rotated out: not listed any more; its circuit stays open until the time given.
    Retiring { until: u64 },
}

/// One of the service's introduction points.
pub struct ServicePoint {
    pub relay: ExtendTarget,
    pub onion_key: [u8; 32],
    auth: SigningKey,
    enc: StaticSecret,
    pub created: u64,
    pub state: PointState,
    retries: u8,
    replay: ReplayCache,
}

impl std::fmt::Debug for ServicePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicePoint")
            .field("relay", &self.relay)
            .field("auth_key", &hex::encode(self.auth_key()))
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ServicePoint {
    pub fn auth_key(&self) -> [u8; 32] {
        self.auth.verifying_key().to_bytes()
    }

    /// The signing key for ESTABLISH_INTRO ([`super::establish::make`]).
    pub fn auth_signing_key(&self) -> &SigningKey {
        &self.auth
    }

    /// The entry for the descriptor's list.
    pub fn descriptor_entry(&self) -> IntroPoint {
        IntroPoint {
            relay: self.relay.clone(),
            onion_key: self.onion_key,
            auth_key: self.auth_key(),
            enc_key: PublicKey::from(&self.enc).to_bytes(),
            ext: Extensions::none(),
        }
    }
}

/// What to do after an introduction circuit closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Build a new circuit to the same relay and send ESTABLISH_INTRO again (same keys).
    Retry,
    /// The point was dropped: pick another relay (see [`IntroSet::needed`]) and republish.
    Replace,
    /// No such point, or a retiring one (nothing to do).
    Ignore,
}

/// Why an INTRODUCE2 was dropped (silently: the service never answers on the intro circuit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Introduce2Error {
    #[error("INTRODUCE2 for no introduction point of ours")]
    UnknownAuthKey,
    #[error(transparent)]
    Introduce(#[from] IntroduceError),
    #[error(transparent)]
    Replayed(#[from] Replayed),
    #[error(transparent)]
    Handshake(#[from] RendError),
}

/// An accepted introduction: where to meet the client, and the RENDEZVOUS1 reply and keys.
#[derive(Debug)]
pub struct Accepted {
    pub content: IntroduceContent,
    pub outcome: ServiceOutcome,
}

/// The service's set of introduction points.
#[derive(Debug)]
pub struct IntroSet {
    points: Vec<ServicePoint>,
    target: usize,
    lifetime_secs: u64,
    retire_grace_secs: u64,
    replay_entries: usize,
}

impl Default for IntroSet {
    fn default() -> Self {
        Self::new(DEFAULT_INTRO_POINTS, DEFAULT_LIFETIME_SECS, DEFAULT_RETIRE_GRACE_SECS)
    }
}

impl IntroSet {
    pub fn new(target: usize, lifetime_secs: u64, retire_grace_secs: u64) -> Self {
        IntroSet { points: Vec::new(), target, lifetime_secs, retire_grace_secs, replay_entries: DEFAULT_MAX_ENTRIES }
    }

    /// Sets the replay-cache cap of points added from now on (tests, small services).
    pub fn set_replay_entries(&mut self, n: usize) {
        self.replay_entries = n;
    }

    pub fn points(&self) -> &[ServicePoint] {
        &self.points
    }

    fn active(&self) -> impl Iterator<Item = &ServicePoint> {
        self.points.iter().filter(|p| !matches!(p.state, PointState::Retiring { .. }))
    }

    /// How many new points to add now (pick that many relays not in [`Self::relays_in_use`]).
    pub fn needed(&self) -> usize {
        self.target.saturating_sub(self.active().count())
    }

    /// Identities of the relays in use (retiring points included): do not pick them again.
    pub fn relays_in_use(&self) -> Vec<[u8; 32]> {
        self.points.iter().map(|p| p.relay.identity).collect()
    }

    /// Adds a point on `relay` with fresh keys; returns its auth key. Build a circuit to it and
    /// send ESTABLISH_INTRO signed with [`ServicePoint::auth_signing_key`].
    pub fn add<R: RngCore + CryptoRng>(&mut self, rng: &mut R, relay: ExtendTarget, onion_key: [u8; 32], now: u64) -> [u8; 32] {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let auth = SigningKey::from_bytes(&seed);
        rng.fill_bytes(&mut seed);
        let enc = StaticSecret::from(seed);
        crate::crypto::kdf::wipe(&mut seed);
        let replay = ReplayCache::new(self.replay_entries, self.lifetime_secs.saturating_add(self.retire_grace_secs));
        let p = ServicePoint { relay, onion_key, auth, enc, created: now, state: PointState::Pending, retries: 0, replay };
        let key = p.auth_key();
        self.points.push(p);
        key
    }

    fn find(&mut self, auth_key: &[u8; 32]) -> Option<&mut ServicePoint> {
        self.points.iter_mut().find(|p| &p.auth_key() == auth_key)
    }

    /// INTRO_ESTABLISHED arrived for the point (its circuit). Returns whether the descriptor's
    /// list changed (republish).
    pub fn established(&mut self, auth_key: &[u8; 32]) -> bool {
        match self.find(auth_key) {
            Some(p) if !matches!(p.state, PointState::Retiring { .. }) => {
                p.retries = 0;
                let new = p.state == PointState::Pending;
                p.state = PointState::Established;
                new
            }
            _ => false,
        }
    }

    /// The point's circuit failed or closed.
    pub fn circuit_failed(&mut self, auth_key: &[u8; 32]) -> OnFailure {
        let Some(i) = self.points.iter().position(|p| &p.auth_key() == auth_key) else { return OnFailure::Ignore };
        let p = &mut self.points[i];
        if matches!(p.state, PointState::Retiring { .. }) {
            self.points.remove(i);
            return OnFailure::Ignore;
        }
        if p.retries < MAX_RETRIES {
            // Same relay, same keys: descriptors naming it stay good, so it stays listed.
            p.retries += 1;
            OnFailure::Retry
        } else {
            self.points.remove(i);
            OnFailure::Replace
        }
    }

    /// Rotates points past their lifetime or whose replay cache saturated, and forgets retired
    /// points past their grace. Returns (the auth keys whose circuits to close, whether the
    /// descriptor's list changed). Call [`Self::needed`] afterwards.
    pub fn tick(&mut self, now: u64) -> (Vec<[u8; 32]>, bool) {
        let mut changed = false;
        for p in &mut self.points {
            let old = now.saturating_sub(p.created) >= self.lifetime_secs;
            if !matches!(p.state, PointState::Retiring { .. }) && (old || p.replay.saturated()) {
                changed |= p.state == PointState::Established;
                p.state = PointState::Retiring { until: now.saturating_add(self.retire_grace_secs) };
            }
        }
        let mut close = Vec::new();
        self.points.retain(|p| match p.state {
            PointState::Retiring { until } if until <= now => {
                close.push(p.auth_key());
                false
            }
            _ => true,
        });
        (close, changed)
    }

    /// The introduction points to list in the descriptor (established, not retiring).
    pub fn descriptor_points(&self) -> Vec<IntroPoint> {
        self.points.iter().filter(|p| p.state == PointState::Established).map(ServicePoint::descriptor_entry).collect()
    }

    /// Processes an INTRODUCE2 that arrived on the circuit of the point with `on_circuit_of`
    /// (Service processing, steps 1–3, and the handshake): on success build a circuit to
    /// `content.rendezvous` and send RENDEZVOUS1 with `content.cookie` and `outcome.reply`.
    /// Step 4 (is the rendezvous point an acceptable EXTEND target) is the caller's.
    pub fn handle_introduce2<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        service_identity: &[u8; 32],
        on_circuit_of: &[u8; 32],
        body: &IntroduceBody,
        now: u64,
    ) -> Result<Accepted, Introduce2Error> {
        let p = self.find(on_circuit_of).ok_or(Introduce2Error::UnknownAuthKey)?;
        let content = introduce::decrypt(service_identity, on_circuit_of, &p.enc, body)?;
        p.replay.check_and_insert(&body.encrypted, now)?;
        let outcome = rendezvous::service_respond(rng, on_circuit_of, &p.enc, content.htype, &content.hdata)?;
        Ok(Accepted { content, outcome })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay_msg::REND_COOKIE_LEN;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::hs::test_relay as relay;

    #[test]
    fn fill_establish_replace_rotate() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut s = IntroSet::new(3, 1000, 100);
        assert_eq!(s.needed(), 3);
        let keys: Vec<_> = (1..=3).map(|i| s.add(&mut rng, relay(i), [i; 32], 0)).collect();
        assert_eq!(s.needed(), 0);
        assert!(s.descriptor_points().is_empty(), "nothing listed before INTRO_ESTABLISHED");
        assert!(keys.iter().all(|k| s.established(k)));
        assert!(!s.established(&keys[0]), "already established");
        assert_eq!(s.descriptor_points().len(), 3);
        assert_eq!(s.relays_in_use(), vec![[1; 32], [2; 32], [3; 32]]);
        // A failed circuit is retried once with the same keys, then replaced.
        assert_eq!(s.circuit_failed(&keys[0]), OnFailure::Retry);
        assert_eq!(s.descriptor_points().len(), 3, "still listed while retried");
        assert!(!s.established(&keys[0]), "back with the same keys: no republish");
        assert_eq!(s.circuit_failed(&keys[0]), OnFailure::Retry, "a success resets the retries");
        assert_eq!(s.circuit_failed(&keys[0]), OnFailure::Replace);
        assert_eq!(s.needed(), 1);
        let k4 = s.add(&mut rng, relay(4), [4; 32], 10);
        s.established(&k4);
        // Rotation after the lifetime: listed no more, closed after the grace.
        assert_eq!(s.tick(999), (vec![], false));
        let (close, changed) = s.tick(1000);
        assert!(close.is_empty() && changed);
        assert_eq!(s.descriptor_points().len(), 1, "only the point created at 10 is still listed");
        assert_eq!(s.needed(), 2);
        assert_eq!(s.relays_in_use().len(), 3, "retiring relays are not picked again");
        let (close, _) = s.tick(1100);
        assert_eq!(close.len(), 2);
        assert!(close.contains(&keys[1]) && close.contains(&keys[2]));
        assert_eq!(s.circuit_failed(&[0; 32]), OnFailure::Ignore);
    }

    #[test]
    fn introduce2_processing_and_replay() {
        let mut rng = StdRng::seed_from_u64(2);
        let identity = SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes();
        let mut s = IntroSet::new(1, 1000, 100);
        s.set_replay_entries(2);
        let k = s.add(&mut rng, relay(1), [1; 32], 0);
        s.established(&k);
        let point = s.descriptor_points().remove(0);
        let intro = |rng: &mut StdRng| {
            let (client, x) = rendezvous::client_start(rng, &point.auth_key, &point.enc_key);
            let content = IntroduceContent {
                cookie: [9; REND_COOKIE_LEN],
                rendezvous: relay(7),
                rendezvous_onion_key: [7; 32],
                htype: rendezvous::HTYPE_REND,
                hdata: x.to_vec(),
                ext: Extensions::none(),
            };
            let body = introduce::encrypt(rng, &identity, &point.auth_key, &point.enc_key, Extensions::none(), &content).unwrap();
            (client, body)
        };
        let (client, body) = intro(&mut rng);
        let acc = s.handle_introduce2(&mut rng, &identity, &k, &body, 5).unwrap();
        assert_eq!(acc.content.cookie, [9; REND_COOKIE_LEN]);
        client.finish(&acc.outcome.reply).unwrap();
        assert_eq!(s.handle_introduce2(&mut rng, &identity, &k, &body, 6).unwrap_err(), Introduce2Error::Replayed(Replayed));
        assert_eq!(s.handle_introduce2(&mut rng, &identity, &[3; 32], &body, 6).unwrap_err(), Introduce2Error::UnknownAuthKey);
        let mut bad = body.clone();
        bad.encrypted[40] ^= 1;
        assert_eq!(
            s.handle_introduce2(&mut rng, &identity, &k, &bad, 6).unwrap_err(),
            Introduce2Error::Introduce(IntroduceError::DecryptFailed)
        );
        // Fill the tiny replay cache past its cap: the point is rotated at the next tick.
        for t in 7..9 {
            let (_, b) = intro(&mut rng);
            s.handle_introduce2(&mut rng, &identity, &k, &b, t).unwrap();
        }
        let (_, changed) = s.tick(10);
        assert!(changed);
        assert_eq!(s.needed(), 1);
        assert!(s.descriptor_points().is_empty());
        // A retiring point still takes introductions during its grace.
        let (_, b) = intro(&mut rng);
        assert!(s.handle_introduce2(&mut rng, &identity, &k, &b, 11).is_ok());
        assert_eq!(s.tick(110), (vec![k], false));
        assert_eq!(s.handle_introduce2(&mut rng, &identity, &k, &b, 111).unwrap_err(), Introduce2Error::UnknownAuthKey);
    }
}
