//! What a relay keeps as an introduction point, sans-IO: which circuit serves which auth key,
//! and what to do with ESTABLISH_INTRO and INTRODUCE1 (docs/PROTOCOL.md, "Introduction points"
//! and "Introduction"). `C` names a circuit (whatever the relay uses as a handle).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use super::establish::{verify, EstablishError};
use crate::crypto::kdf::HopKeys;
use crate::ext::Extensions;
use crate::relay_msg::{introduce_status, IntroduceBody, RelayMsg};

/// Default cap on introduction circuits one relay serves.
pub const DEFAULT_MAX_SERVICES: usize = 10_000;

/// Why the circuit must be destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntroPointError {
    #[error(transparent)]
    Establish(#[from] EstablishError),
    /// A second ESTABLISH_INTRO, or INTRODUCE1 on an introduction circuit (PROTOCOL).
    #[error("ESTABLISH_INTRO or INTRODUCE1 not allowed on this circuit")]
    NotAllowedHere,
    /// A second INTRODUCE1 on one client circuit (PROTOCOL).
    #[error("second INTRODUCE1 on a circuit")]
    AlreadyIntroduced,
    /// Too many introduction circuits (RESOURCELIMIT).
    #[error("too many introduction circuits")]
    Full,
}

/// What the relay does with an INTRODUCE1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroduceAction<C> {
    /// INTRODUCE2 to send on the service's circuit, if there is one.
    pub forward: Option<(C, RelayMsg)>,
    /// INTRODUCE_ACK for the client (status [`introduce_status::SUCCESS`] when forwarded). If the
    /// relay then fails to send the INTRODUCE2, it answers [`introduce_status::CANNOT_RELAY`]
    /// instead.
    pub ack: RelayMsg,
}

/// The introduction circuits of one relay.
#[derive(Debug)]
pub struct IntroPointTable<C> {
    by_key: HashMap<[u8; 32], C>,
    by_circuit: HashMap<C, [u8; 32]>,
    introduced: HashSet<C>,
    max_services: usize,
}

impl<C: Copy + Eq + Hash> Default for IntroPointTable<C> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SERVICES)
    }
}

impl<C: Copy + Eq + Hash> IntroPointTable<C> {
    pub fn new(max_services: usize) -> Self {
        IntroPointTable { by_key: HashMap::new(), by_circuit: HashMap::new(), introduced: HashSet::new(), max_services }
    }

    /// Introduction circuits held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// ESTABLISH_INTRO arrived on `circ`, whose keys at this hop are `keys`. On success: the
    /// INTRO_ESTABLISHED to send back, and the circuit that served the same key before (no
    /// longer used for it). On error destroy `circ`.
    pub fn establish(&mut self, circ: C, msg: &RelayMsg, keys: &HopKeys) -> Result<(RelayMsg, Option<C>), IntroPointError> {
        if self.by_circuit.contains_key(&circ) || self.introduced.contains(&circ) {
            return Err(IntroPointError::NotAllowedHere);
        }
        let auth_key = verify(msg, keys)?;
        let old = self.by_key.get(&auth_key).copied();
        if old.is_none() && self.by_key.len() >= self.max_services {
            return Err(IntroPointError::Full);
        }
        if let Some(o) = old {
            self.by_circuit.remove(&o);
        }
        self.by_key.insert(auth_key, circ);
        self.by_circuit.insert(circ, auth_key);
        Ok((RelayMsg::IntroEstablished { ext: Extensions::none() }, old))
    }

    /// INTRODUCE1 arrived on the client circuit `from`. On error destroy `from`.
    pub fn introduce1(&mut self, from: C, body: &IntroduceBody) -> Result<IntroduceAction<C>, IntroPointError> {
        if self.by_circuit.contains_key(&from) {
            return Err(IntroPointError::NotAllowedHere);
        }
        if !self.introduced.insert(from) {
            return Err(IntroPointError::AlreadyIntroduced);
        }
        let ack = |status| RelayMsg::IntroduceAck { status, ext: Extensions::none() };
        Ok(match self.by_key.get(&body.auth_key) {
            Some(&svc) => IntroduceAction { forward: Some((svc, RelayMsg::Introduce2(body.clone()))), ack: ack(introduce_status::SUCCESS) },
            None => IntroduceAction { forward: None, ack: ack(introduce_status::UNKNOWN_SERVICE) },
        })
    }

    /// Forgets a closed circuit (introduction or client).
    pub fn circuit_closed(&mut self, circ: C) {
        self.introduced.remove(&circ);
        if let Some(k) = self.by_circuit.remove(&circ) {
            self.by_key.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::kdf::derive_hop_keys;
    use ed25519_dalek::SigningKey;

    fn body(auth_key: [u8; 32]) -> IntroduceBody {
        IntroduceBody { auth_key, ext: Extensions::none(), encrypted: vec![1; 448] }
    }

    #[test]
    fn establish_introduce_forward_and_replace() {
        let mut t = IntroPointTable::new(10);
        let auth = SigningKey::from_bytes(&[1; 32]);
        let key = auth.verifying_key().to_bytes();
        let (k1, k2) = (derive_hop_keys(b"svc 1"), derive_hop_keys(b"svc 2"));
        let m1 = super::super::establish::make(&auth, &k1, Extensions::none());
        assert_eq!(t.establish(1u32, &m1, &k1).unwrap(), (RelayMsg::IntroEstablished { ext: Extensions::none() }, None));
        assert_eq!(t.establish(1, &m1, &k1), Err(IntroPointError::NotAllowedHere), "second ESTABLISH_INTRO");
        // A replayed message on another circuit is refused; a fresh one replaces circuit 1.
        assert_eq!(t.establish(2, &m1, &k2), Err(IntroPointError::Establish(EstablishError::BadSignature)));
        let m2 = super::super::establish::make(&auth, &k2, Extensions::none());
        assert_eq!(t.establish(2, &m2, &k2).unwrap().1, Some(1));
        assert_eq!(t.len(), 1);

        let a = t.introduce1(10, &body(key)).unwrap();
        assert_eq!(a.forward, Some((2, RelayMsg::Introduce2(body(key)))));
        assert_eq!(a.ack, RelayMsg::IntroduceAck { status: introduce_status::SUCCESS, ext: Extensions::none() });
        assert_eq!(t.introduce1(10, &body(key)), Err(IntroPointError::AlreadyIntroduced));
        assert_eq!(t.introduce1(2, &body(key)), Err(IntroPointError::NotAllowedHere), "INTRODUCE1 on the service circuit");
        let a = t.introduce1(11, &body([9; 32])).unwrap();
        assert_eq!((a.forward, a.ack), (None, RelayMsg::IntroduceAck { status: introduce_status::UNKNOWN_SERVICE, ext: Extensions::none() }));
        assert_eq!(t.establish(11, &m2, &k2), Err(IntroPointError::NotAllowedHere), "a client circuit does not become an intro circuit");

        t.circuit_closed(2);
        assert!(t.is_empty());
        assert_eq!(t.introduce1(12, &body(key)).unwrap().forward, None);
    }

    #[test]
    fn capped() {
        let mut t = IntroPointTable::new(1);
        let k = derive_hop_keys(b"c");
        let m = |s: u8| super::super::establish::make(&SigningKey::from_bytes(&[s; 32]), &k, Extensions::none());
        t.establish(1u8, &m(1), &k).unwrap();
        assert_eq!(t.establish(2, &m(2), &k), Err(IntroPointError::Full));
        // The same service may still move to a new circuit.
        assert_eq!(t.establish(3, &m(1), &k).unwrap().1, Some(1));
    }
}
