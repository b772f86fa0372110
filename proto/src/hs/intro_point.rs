//! What a relay keeps as an introduction point, sans-IO: which circuit serves which auth key,
//! and what to do with ESTABLISH_INTRO and INTRODUCE1 (docs/PROTOCOL.md, "Introduction points"
//! and "Introduction"). `C` names a circuit (whatever the relay uses as a handle).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use super::establish::{verify, EstablishError, IntroDosParams};
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
    /// The INTRODUCE2 rate each service circuit asked for.
    rates: HashMap<C, IntroBucket>,
    introduced: HashSet<C>,
    max_services: usize,
}

/// A service circuit's INTRODUCE2 token bucket (milliseconds passed in: sans-IO). An
/// introduction with a proof of work of effort `e` costs `1 / e` of a token ([`super::pow`]).
#[derive(Debug, Clone, Copy)]
struct IntroBucket {
    params: IntroDosParams,
    /// Tokens × [`MICRO`].
    micro: u64,
    last_ms: u64,
}

/// Token fractions kept.
const MICRO: u64 = 1_000_000;

impl IntroBucket {
    fn new(params: IntroDosParams, now_ms: u64) -> Self {
        IntroBucket { params, micro: u64::from(params.burst) * MICRO, last_ms: now_ms }
    }

    fn take(&mut self, now_ms: u64, effort: u32) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = u64::from(self.params.burst) * MICRO;
        self.micro = (self.micro + elapsed * u64::from(self.params.rate) * (MICRO / 1000)).min(cap);
        let cost = (MICRO / u64::from(effort.max(1))).max(1);
        if self.micro >= cost {
            self.micro -= cost;
            true
        } else {
            false
        }
    }
}

impl<C: Copy + Eq + Hash> Default for IntroPointTable<C> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SERVICES)
    }
}

impl<C: Copy + Eq + Hash> IntroPointTable<C> {
    pub fn new(max_services: usize) -> Self {
        IntroPointTable { by_key: HashMap::new(), by_circuit: HashMap::new(), rates: HashMap::new(), introduced: HashSet::new(), max_services }
    }

    /// Introduction circuits held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// ESTABLISH_INTRO arrived on `circ`, whose keys at this hop are `keys`, at `now_ms`. On
    /// success: the INTRO_ESTABLISHED to send back, and the circuit that served the same key
    /// before (no longer used for it). On error destroy `circ`.
    pub fn establish(&mut self, circ: C, msg: &RelayMsg, keys: &HopKeys, now_ms: u64) -> Result<(RelayMsg, Option<C>), IntroPointError> {
        if self.by_circuit.contains_key(&circ) || self.introduced.contains(&circ) {
            return Err(IntroPointError::NotAllowedHere);
        }
        let auth_key = verify(msg, keys)?;
        let RelayMsg::EstablishIntro { ext, .. } = msg else { unreachable!("verify checked the kind") };
        let dos = IntroDosParams::from_extensions(ext)?;
        let old = self.by_key.get(&auth_key).copied();
        if old.is_none() && self.by_key.len() >= self.max_services {
            return Err(IntroPointError::Full);
        }
        if let Some(o) = old {
            self.by_circuit.remove(&o);
            self.rates.remove(&o);
        }
        self.by_key.insert(auth_key, circ);
        self.by_circuit.insert(circ, auth_key);
        if let Some(p) = dos {
            self.rates.insert(circ, IntroBucket::new(p, now_ms));
        }
        Ok((RelayMsg::IntroEstablished { ext: Extensions::none() }, old))
    }

    /// INTRODUCE1 arrived on the client circuit `from` at `now_ms`. Over the service's rate it
    /// is answered [`introduce_status::RATE_LIMITED`] and not forwarded; a proof of work of
    /// effort `e` makes it cost `1 / e` of the rate's token. On error destroy `from`.
    pub fn introduce1(&mut self, from: C, body: &IntroduceBody, now_ms: u64) -> Result<IntroduceAction<C>, IntroPointError> {
        if self.by_circuit.contains_key(&from) {
            return Err(IntroPointError::NotAllowedHere);
        }
        if !self.introduced.insert(from) {
            return Err(IntroPointError::AlreadyIntroduced);
        }
        let ack = |status| RelayMsg::IntroduceAck { status, ext: Extensions::none() };
        Ok(match self.by_key.get(&body.auth_key) {
            Some(&svc) if self.rates.get_mut(&svc).is_some_and(|b| !b.take(now_ms, super::pow::verify(body).unwrap_or(0))) => IntroduceAction { forward: None, ack: ack(introduce_status::RATE_LIMITED) },
            Some(&svc) => IntroduceAction { forward: Some((svc, RelayMsg::Introduce2(body.clone()))), ack: ack(introduce_status::SUCCESS) },
            None => IntroduceAction { forward: None, ack: ack(introduce_status::UNKNOWN_SERVICE) },
        })
    }

    /// Forgets a closed circuit (introduction or client).
    pub fn circuit_closed(&mut self, circ: C) {
        self.introduced.remove(&circ);
        self.rates.remove(&circ);
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
        assert_eq!(t.establish(1u32, &m1, &k1, 0).unwrap(), (RelayMsg::IntroEstablished { ext: Extensions::none() }, None));
        assert_eq!(t.establish(1, &m1, &k1, 0), Err(IntroPointError::NotAllowedHere), "second ESTABLISH_INTRO");
        // A replayed message on another circuit is refused; a fresh one replaces circuit 1.
        assert_eq!(t.establish(2, &m1, &k2, 0), Err(IntroPointError::Establish(EstablishError::BadSignature)));
        let m2 = super::super::establish::make(&auth, &k2, Extensions::none());
        assert_eq!(t.establish(2, &m2, &k2, 0).unwrap().1, Some(1));
        assert_eq!(t.len(), 1);

        let a = t.introduce1(10, &body(key), 0).unwrap();
        assert_eq!(a.forward, Some((2, RelayMsg::Introduce2(body(key)))));
        assert_eq!(a.ack, RelayMsg::IntroduceAck { status: introduce_status::SUCCESS, ext: Extensions::none() });
        assert_eq!(t.introduce1(10, &body(key), 0), Err(IntroPointError::AlreadyIntroduced));
        assert_eq!(t.introduce1(2, &body(key), 0), Err(IntroPointError::NotAllowedHere), "INTRODUCE1 on the service circuit");
        let a = t.introduce1(11, &body([9; 32]), 0).unwrap();
        assert_eq!((a.forward, a.ack), (None, RelayMsg::IntroduceAck { status: introduce_status::UNKNOWN_SERVICE, ext: Extensions::none() }));
        assert_eq!(t.establish(11, &m2, &k2, 0), Err(IntroPointError::NotAllowedHere), "a client circuit does not become an intro circuit");

        t.circuit_closed(2);
        assert!(t.is_empty());
        assert_eq!(t.introduce1(12, &body(key), 0).unwrap().forward, None);
    }

    /// THREATS A29: the point forwards at most burst + rate × time INTRODUCE2s for a service
    /// that asked for a limit, and answers the rest RATE_LIMITED.
    #[test]
    fn introductions_over_the_services_rate_are_refused() {
        let mut t = IntroPointTable::new(10);
        let auth = SigningKey::from_bytes(&[1; 32]);
        let key = auth.verifying_key().to_bytes();
        let k = derive_hop_keys(b"svc");
        let params = IntroDosParams { rate: 10, burst: 20 };
        let m = super::super::establish::make(&auth, &k, Extensions(vec![params.extension()]));
        t.establish(1u32, &m, &k, 1_000).unwrap();
        let mut forwarded = 0;
        // 2,000 introductions over 2 s: at most 20 + 10 × 2 forwarded.
        for i in 0..2000u32 {
            let a = t.introduce1(100 + i, &body(key), 1_000 + u64::from(i)).unwrap();
            match a.ack {
                RelayMsg::IntroduceAck { status: introduce_status::SUCCESS, .. } => forwarded += 1,
                RelayMsg::IntroduceAck { status, .. } => assert_eq!(status, introduce_status::RATE_LIMITED),
                _ => unreachable!(),
            }
        }
        assert!((20..=40).contains(&forwarded), "{forwarded} forwarded");
        // With the bucket empty, an introduction with a proof of work of effort 1,000 still
        // passes: it costs a thousandth of a token.
        let client = IntroduceBody { auth_key: key, ext: Extensions::none(), encrypted: vec![5; 448] };
        let sol = crate::hs::pow::solve(&key, &[5; 32], 1000, [0; 16], 1 << 24).unwrap();
        let with_pow = IntroduceBody { ext: Extensions(vec![sol.extension()]), ..client.clone() };
        assert_eq!(t.introduce1(5000, &client, 3_000).unwrap().ack, RelayMsg::IntroduceAck { status: introduce_status::SUCCESS, ext: Extensions::none() }, "refilled");
        assert_eq!(t.introduce1(5001, &client, 3_000).unwrap().forward, None, "empty again");
        // A millisecond later the bucket holds a hundredth of a token: enough for the proof
        // of work (a thousandth), not for another plain introduction.
        assert!(t.introduce1(5002, &with_pow, 3_001).unwrap().forward.is_some(), "a proof of work buys a fraction of a token");
        assert_eq!(t.introduce1(5003, &client, 3_001).unwrap().forward, None);
        // Malformed or out-of-bounds parameters refuse the establishment.
        let bad = IntroDosParams { rate: 10, burst: 5 };
        let m = super::super::establish::make(&auth, &k, Extensions(vec![bad.extension()]));
        assert_eq!(t.establish(2, &m, &k, 0), Err(IntroPointError::Establish(EstablishError::BadDosParams)));
    }

    #[test]
    fn capped() {
        let mut t = IntroPointTable::new(1);
        let k = derive_hop_keys(b"c");
        let m = |s: u8| super::super::establish::make(&SigningKey::from_bytes(&[s; 32]), &k, Extensions::none());
        t.establish(1u8, &m(1), &k, 0).unwrap();
        assert_eq!(t.establish(2, &m(2), &k, 0), Err(IntroPointError::Full));
        // The same service may still move to a new circuit.
        assert_eq!(t.establish(3, &m(1), &k, 0).unwrap().1, Some(1));
    }
}
