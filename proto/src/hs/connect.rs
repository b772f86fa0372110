//! The client's side of connecting to an onion service, sans-IO (docs/PROTOCOL.md,
//! "Introduction"): pick an introduction point, make the rendezvous cookie, the
//! ESTABLISH_RENDEZVOUS and the INTRODUCE1, and check the RENDEZVOUS2. The caller builds the two
//! circuits (rendezvous point first) and sends the messages on stream id 0.

use rand::seq::SliceRandom;
use rand::{CryptoRng, RngCore};

use super::inner::IntroPoint;
use super::pow;
use super::introduce::{self, IntroduceContent, IntroduceError};
use super::rendezvous::{self, RendClient, RendError};
use crate::crypto::kdf::HopKeys;
use crate::ext::Extensions;
use crate::relay_msg::{introduce_status, ExtendTarget, RelayMsg, REND_COOKIE_LEN};

/// Picks an introduction point at random among those whose auth key is not in `failed`.
pub fn pick_intro_point<'a, R: RngCore>(rng: &mut R, points: &'a [IntroPoint], failed: &[[u8; 32]]) -> Option<&'a IntroPoint> {
    let usable: Vec<&IntroPoint> = points.iter().filter(|p| !failed.contains(&p.auth_key)).collect();
    usable.choose(rng).copied()
}

/// One connection attempt, between ESTABLISH_RENDEZVOUS and RENDEZVOUS2.
#[derive(Debug)]
pub struct Attempt {
    /// The cookie the rendezvous point files the circuit under.
    pub cookie: [u8; REND_COOKIE_LEN],
    /// The introduction point used (its auth key, to mark it failed).
    pub auth_key: [u8; 32],
    rend: RendClient,
    /// Send on the rendezvous circuit first; wait for RENDEZVOUS_ESTABLISHED.
    pub establish_rendezvous: RelayMsg,
    /// Then send on a circuit to the introduction point; expect INTRODUCE_ACK.
    pub introduce1: RelayMsg,
}

/// Why the attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Introduce(#[from] IntroduceError),
    /// INTRODUCE_ACK with a failure status: try another introduction point.
    #[error("introduction point answered status {0}")]
    Refused(u8),
    #[error(transparent)]
    Handshake(#[from] RendError),
    #[error("unexpected message")]
    Unexpected,
}

impl Attempt {
    /// Prepares an attempt to reach the service `service_identity` through `point`, meeting at
    /// the rendezvous point `rp` (with ntor onion key `rp_onion_key`), with a proof of work of
    /// `effort` (0: none; otherwise `effort` hashes on average, [`super::pow`]).
    pub fn new<R: RngCore + CryptoRng>(
        rng: &mut R,
        service_identity: &[u8; 32],
        point: &IntroPoint,
        rp: ExtendTarget,
        rp_onion_key: [u8; 32],
        effort: u32,
    ) -> Result<Self, ConnectError> {
        let mut cookie = [0u8; REND_COOKIE_LEN];
        rng.fill_bytes(&mut cookie);
        let (rend, x) = rendezvous::client_start(rng, &point.auth_key, &point.enc_key);
        let content = IntroduceContent {
            cookie,
            rendezvous: rp,
            rendezvous_onion_key: rp_onion_key,
            htype: rendezvous::HTYPE_REND,
            hdata: x.to_vec(),
            ext: Extensions::none(),
        };
        let mut start = [0u8; 16];
        rng.fill_bytes(&mut start);
        let auth_key = point.auth_key;
        let pow = move |client_key: &[u8; 32]| {
            // A solution takes `effort` tries on average; 64 × that many fail with
            // probability e^-64, and a fresh start then continues the search.
            let sol = (effort > 0).then(|| loop {
                if let Some(s) = pow::solve(&auth_key, client_key, effort, start, u64::from(effort) * 64) {
                    break s;
                }
                start = (u128::from_be_bytes(start).wrapping_add(u128::from(effort) * 64)).to_be_bytes();
            });
            Extensions(sol.map(|s| s.extension()).into_iter().collect())
        };
        let body = introduce::encrypt_bound(rng, service_identity, &point.auth_key, &point.enc_key, pow, &content)?;
        Ok(Attempt {
            cookie,
            auth_key: point.auth_key,
            rend,
            establish_rendezvous: RelayMsg::EstablishRendezvous { cookie, ext: Extensions::none() },
            introduce1: RelayMsg::Introduce1(body),
        })
    }

    /// Checks the INTRODUCE_ACK (then close the introduction circuit either way).
    pub fn on_introduce_ack(&self, msg: &RelayMsg) -> Result<(), ConnectError> {
        match msg {
            RelayMsg::IntroduceAck { status: introduce_status::SUCCESS, .. } => Ok(()),
            RelayMsg::IntroduceAck { status, .. } => Err(ConnectError::Refused(*status)),
            _ => Err(ConnectError::Unexpected),
        }
    }

    /// Checks the RENDEZVOUS2 on the rendezvous circuit: the virtual hop's keys, to append to
    /// that circuit's cell crypto. On error close the circuit.
    pub fn on_rendezvous2(self, msg: &RelayMsg) -> Result<HopKeys, ConnectError> {
        let RelayMsg::Rendezvous2 { hdata, .. } = msg else { return Err(ConnectError::Unexpected) };
        Ok(self.rend.finish(hdata)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hs::intro_set::IntroSet;
    use ed25519_dalek::SigningKey;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::hs::test_relay as relay;

    #[test]
    fn attempt_against_an_intro_set() {
        let mut rng = StdRng::seed_from_u64(3);
        let identity = SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes();
        let mut svc = IntroSet::default();
        let keys: Vec<_> = (1..=3).map(|i| svc.add(&mut rng, relay(i), [i; 32], 0)).collect();
        keys.iter().for_each(|k| {
            svc.established(k);
        });
        let points = svc.descriptor_points();
        assert!(pick_intro_point(&mut rng, &points, &keys).is_none());
        let p = pick_intro_point(&mut rng, &points, &keys[..2]).unwrap();
        assert_eq!(p.auth_key, keys[2]);

        let a = Attempt::new(&mut rng, &identity, p, relay(9), [9; 32], 0).unwrap();
        let RelayMsg::Introduce1(body) = &a.introduce1 else { panic!() };
        let acc = svc.handle_introduce2(&mut rng, &identity, &p.auth_key, body, 1).unwrap();
        assert_eq!((acc.content.cookie, &acc.content.rendezvous), (a.cookie, &relay(9)));
        assert_eq!(a.establish_rendezvous, RelayMsg::EstablishRendezvous { cookie: a.cookie, ext: Extensions::none() });
        let ok = RelayMsg::IntroduceAck { status: 0, ext: Extensions::none() };
        assert_eq!(a.on_introduce_ack(&ok), Ok(()));
        let no = RelayMsg::IntroduceAck { status: 1, ext: Extensions::none() };
        assert_eq!(a.on_introduce_ack(&no), Err(ConnectError::Refused(1)));
        assert_eq!(a.on_introduce_ack(&RelayMsg::Drop), Err(ConnectError::Unexpected));
        // With an effort, the INTRODUCE1 carries a proof the point and the service can check.
        let hard = Attempt::new(&mut rng, &identity, p, relay(9), [9; 32], 500).unwrap();
        let RelayMsg::Introduce1(hb) = &hard.introduce1 else { panic!() };
        assert_eq!(pow::verify(hb), Ok(500));
        assert!(svc.handle_introduce2(&mut rng, &identity, &p.auth_key, hb, 1).is_ok(), "the proof is authenticated, not in the way");
        let r2 = RelayMsg::Rendezvous2 { hdata: acc.outcome.reply.to_vec(), ext: Extensions::none() };
        let k = a.on_rendezvous2(&r2).unwrap();
        assert_eq!(k.kf_auth, acc.outcome.keys.kf_auth);
    }
}
