//! ESTABLISH_INTRO: a service asks a relay, over a circuit it built, to be an introduction point
//! for one per-introduction-point auth key, and proves it holds that key.
//!
//! The signature covers a *circuit binding*, a value the service and the relay (and nobody else)
//! compute from the hop keys they share on that circuit:
//!
//! ```text
//! binding = HMAC("allium-hs-circuit-binding-v1", Kf_layer | Kf_auth | Kb_layer | Kb_auth)
//! signed  = "allium-hs-establish-intro-v1" | 0x00 | binding | auth key | extension field
//! ```
//!
//! so a signed ESTABLISH_INTRO is good on that one circuit only: the relay that received it
//! cannot replay it at another relay or on a later circuit (that circuit's keys differ), and an
//! old message cannot be replayed either. The binding is never sent.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::address::is_usable_identity;
use crate::crypto::kdf::HopKeys;
use crate::ext::Extensions;
use crate::relay_msg::RelayMsg;

/// HMAC key of the circuit binding.
pub const CIRCUIT_BINDING_KEY: &[u8] = b"allium-hs-circuit-binding-v1";
/// Prefix of the signed ESTABLISH_INTRO bytes (the NUL byte included).
pub const ESTABLISH_INTRO_SIG_PREFIX: &[u8] = b"allium-hs-establish-intro-v1\0";

/// The extension type of [`IntroDosParams`] in ESTABLISH_INTRO's extension field.
pub const EXT_INTRO_DOS: u8 = 1;

/// How many INTRODUCE1s per second the introduction point may forward to the service as
/// INTRODUCE2 (token bucket: `rate` per second, up to `burst` at once). The service sets them
/// in ESTABLISH_INTRO (extension [`EXT_INTRO_DOS`]: `BE32(rate) | BE32(burst)`); without the
/// extension the point forwards without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntroDosParams {
    pub rate: u32,
    pub burst: u32,
}

impl IntroDosParams {
    /// Bounds of both values.
    pub const MAX: u32 = 1_000_000;

    pub fn extension(&self) -> crate::ext::Extension {
        let mut data = self.rate.to_be_bytes().to_vec();
        data.extend_from_slice(&self.burst.to_be_bytes());
        crate::ext::Extension { ty: EXT_INTRO_DOS, data }
    }

    /// The parameters in an ESTABLISH_INTRO's extensions: `None` without them, an error if
    /// they are malformed or out of bounds (1..=[`Self::MAX`], burst at least rate).
    pub fn from_extensions(ext: &Extensions) -> Result<Option<Self>, EstablishError> {
        let Some(e) = ext.0.iter().find(|e| e.ty == EXT_INTRO_DOS) else { return Ok(None) };
        let d: [u8; 8] = e.data.as_slice().try_into().map_err(|_| EstablishError::BadDosParams)?;
        let p = IntroDosParams { rate: u32::from_be_bytes([d[0], d[1], d[2], d[3]]), burst: u32::from_be_bytes([d[4], d[5], d[6], d[7]]) };
        if !(1..=Self::MAX).contains(&p.rate) || !(p.rate..=Self::MAX).contains(&p.burst) {
            return Err(EstablishError::BadDosParams);
        }
        Ok(Some(p))
    }
}

/// Why an ESTABLISH_INTRO was refused (the relay closes the circuit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EstablishError {
    #[error("ESTABLISH_INTRO auth key is not a usable ed25519 key")]
    BadKey,
    #[error("ESTABLISH_INTRO signature does not verify for this circuit")]
    BadSignature,
    #[error("not an ESTABLISH_INTRO message")]
    NotEstablishIntro,
    #[error("ESTABLISH_INTRO rate-limit extension is malformed or out of bounds")]
    BadDosParams,
}

/// The circuit binding of one hop's keys (the service's keys for the introduction point's hop,
/// the introduction point's keys for the circuit).
pub fn circuit_binding(keys: &HopKeys) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(CIRCUIT_BINDING_KEY).expect("HMAC takes any key length");
    for k in [&keys.kf_layer, &keys.kf_auth, &keys.kb_layer, &keys.kb_auth] {
        m.update(k);
    }
    m.finalize().into_bytes().into()
}

/// The bytes the auth key signs.
pub fn signed_bytes(binding: &[u8; 32], auth_key: &[u8; 32], ext: &Extensions) -> Vec<u8> {
    let mut b = Vec::with_capacity(ESTABLISH_INTRO_SIG_PREFIX.len() + 64 + 1);
    b.extend_from_slice(ESTABLISH_INTRO_SIG_PREFIX);
    b.extend_from_slice(binding);
    b.extend_from_slice(auth_key);
    ext.encode(&mut b);
    b
}

/// The service's ESTABLISH_INTRO for the circuit whose last hop (the introduction point) has
/// `keys`, signed by the per-introduction-point key `auth`.
pub fn make(auth: &SigningKey, keys: &HopKeys, ext: Extensions) -> RelayMsg {
    let auth_key = auth.verifying_key().to_bytes();
    let sig = auth.sign(&signed_bytes(&circuit_binding(keys), &auth_key, &ext)).to_bytes();
    RelayMsg::EstablishIntro { auth_key, ext, sig }
}

/// The introduction point's check of an ESTABLISH_INTRO received on the circuit with `keys`.
/// Returns the auth key to file the circuit under (a newer circuit for the same key replaces the
/// older one).
pub fn verify(msg: &RelayMsg, keys: &HopKeys) -> Result<[u8; 32], EstablishError> {
    let RelayMsg::EstablishIntro { auth_key, ext, sig } = msg else {
        return Err(EstablishError::NotEstablishIntro);
    };
    if !is_usable_identity(auth_key) {
        return Err(EstablishError::BadKey);
    }
    let vk = VerifyingKey::from_bytes(auth_key).map_err(|_| EstablishError::BadKey)?;
    let signed = signed_bytes(&circuit_binding(keys), auth_key, ext);
    vk.verify_strict(&signed, &Signature::from_bytes(sig)).map_err(|_| EstablishError::BadSignature)?;
    Ok(*auth_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::kdf::derive_hop_keys;
    use crate::relay_msg::Direction;

    #[test]
    fn accepted_on_its_circuit_only() {
        let auth = SigningKey::from_bytes(&[7; 32]);
        let keys = derive_hop_keys(b"circuit one");
        let m = make(&auth, &keys, Extensions::none());
        // Through the wire format and back.
        let m = RelayMsg::decode(m.cmd() as u8, &m.encode_body(), Direction::Outbound).unwrap();
        assert_eq!(verify(&m, &keys), Ok(auth.verifying_key().to_bytes()));
        // Replayed on another circuit (another relay, or later): refused.
        assert_eq!(verify(&m, &derive_hop_keys(b"circuit two")), Err(EstablishError::BadSignature));
    }

    #[test]
    fn tampering_and_bad_keys_refused() {
        let auth = SigningKey::from_bytes(&[7; 32]);
        let keys = derive_hop_keys(b"c");
        let RelayMsg::EstablishIntro { auth_key, ext, sig } = make(&auth, &keys, Extensions::none()) else { unreachable!() };
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
        let swapped = RelayMsg::EstablishIntro { auth_key: other, ext: ext.clone(), sig };
        assert_eq!(verify(&swapped, &keys), Err(EstablishError::BadSignature));
        let more_ext = Extensions(vec![crate::ext::Extension { ty: 1, data: vec![] }]);
        assert_eq!(verify(&RelayMsg::EstablishIntro { auth_key, ext: more_ext, sig }, &keys), Err(EstablishError::BadSignature));
        let mut bad_sig = sig;
        bad_sig[10] ^= 1;
        assert_eq!(verify(&RelayMsg::EstablishIntro { auth_key, ext: ext.clone(), sig: bad_sig }, &keys), Err(EstablishError::BadSignature));
        // The identity point (small order) and a non-point are refused before any signature check.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(verify(&RelayMsg::EstablishIntro { auth_key: identity, ext: ext.clone(), sig }, &keys), Err(EstablishError::BadKey));
        assert_eq!(verify(&RelayMsg::EstablishIntro { auth_key: [0xff; 32], ext, sig }, &keys), Err(EstablishError::BadKey));
        assert_eq!(verify(&RelayMsg::Drop, &keys), Err(EstablishError::NotEstablishIntro));
    }

    #[test]
    fn binding_depends_on_every_key() {
        let k = derive_hop_keys(b"k");
        let b = circuit_binding(&k);
        for i in 0..4 {
            let mut k2 = k.clone();
            [&mut k2.kf_layer, &mut k2.kf_auth, &mut k2.kb_layer, &mut k2.kb_auth][i][0] ^= 1;
            assert_ne!(circuit_binding(&k2), b);
        }
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(m) = RelayMsg::decode(20, &body, Direction::Outbound) {
                proptest::prop_assert!(verify(&m, &derive_hop_keys(b"k")).is_err());
            }
        }
    }
}
