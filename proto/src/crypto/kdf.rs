//! Per-hop key derivation.
//!
//! A circuit handshake (see [`super::ntor`]) ends with a 32-byte `KEY_SEED` known to the client
//! and to one relay. [`derive_hop_keys`] turns it into the four keys that protect relay cells
//! between them (see [`super::cell_crypto`]):
//!
//! ```text
//! PRK       = HKDF-Extract(salt = "allium-hop-keys-v1", IKM = KEY_SEED)
//! Kf_layer  = HKDF-Expand(PRK, info = "allium-hop-keys-v1:Kf_layer", L = 32)
//! Kf_auth   = HKDF-Expand(PRK, info = "allium-hop-keys-v1:Kf_auth",  L = 32)
//! Kb_layer  = HKDF-Expand(PRK, info = "allium-hop-keys-v1:Kb_layer", L = 32)
//! Kb_auth   = HKDF-Expand(PRK, info = "allium-hop-keys-v1:Kb_auth",  L = 32)
//! ```
//!
//! HKDF is HKDF-SHA256 (RFC 5869); labels are ASCII without a terminating NUL. `f` is the forward
//! direction (client → relay), `b` the backward one (relay → client). `layer` keys drive the
//! AES-256-CTR onion layer, `auth` keys the AES-256-GCM seal of cells addressed to (or sent by)
//! this hop. Four distinct info labels give four independent keys.

use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;

/// HKDF salt for [`derive_hop_keys`].
pub const HOP_KEYS_SALT: &[u8] = b"allium-hop-keys-v1";
/// HKDF info label of `Kf_layer`.
pub const LABEL_KF_LAYER: &[u8] = b"allium-hop-keys-v1:Kf_layer";
/// HKDF info label of `Kf_auth`.
pub const LABEL_KF_AUTH: &[u8] = b"allium-hop-keys-v1:Kf_auth";
/// HKDF info label of `Kb_layer`.
pub const LABEL_KB_LAYER: &[u8] = b"allium-hop-keys-v1:Kb_layer";
/// HKDF info label of `Kb_auth`.
pub const LABEL_KB_AUTH: &[u8] = b"allium-hop-keys-v1:Kb_auth";

/// The four symmetric keys shared by the client and one hop of a circuit.
///
/// Zeroed when dropped (best effort: copies made by moves are not tracked). `Debug` prints no key
/// material.
#[derive(Clone)]
pub struct HopKeys {
    /// Forward (client → relay) onion-layer key, AES-256-CTR.
    pub kf_layer: [u8; 32],
    /// Forward authentication key, AES-256-GCM: seals cells addressed to this hop.
    pub kf_auth: [u8; 32],
    /// Backward (relay → client) onion-layer key, AES-256-CTR.
    pub kb_layer: [u8; 32],
    /// Backward authentication key, AES-256-GCM: seals cells this hop originates.
    pub kb_auth: [u8; 32],
}

impl fmt::Debug for HopKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HopKeys { <redacted> }")
    }
}

impl Drop for HopKeys {
    fn drop(&mut self) {
        wipe(&mut self.kf_layer);
        wipe(&mut self.kf_auth);
        wipe(&mut self.kb_layer);
        wipe(&mut self.kb_auth);
    }
}

/// Overwrites `buf` with zeros. `black_box` keeps the compiler from treating the stores as dead.
pub(crate) fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

/// Derives the four per-hop keys from a handshake's `KEY_SEED` (see the module documentation).
pub fn derive_hop_keys(key_seed: &[u8]) -> HopKeys {
    let hk = Hkdf::<Sha256>::new(Some(HOP_KEYS_SALT), key_seed);
    let mut keys = HopKeys {
        kf_layer: [0; 32],
        kf_auth: [0; 32],
        kb_layer: [0; 32],
        kb_auth: [0; 32],
    };
    // 32 bytes is far below HKDF-SHA256's 255 * 32 byte limit, so `expand` cannot fail.
    for (label, out) in [
        (LABEL_KF_LAYER, &mut keys.kf_layer),
        (LABEL_KF_AUTH, &mut keys.kf_auth),
        (LABEL_KB_LAYER, &mut keys.kb_layer),
        (LABEL_KB_AUTH, &mut keys.kb_auth),
    ] {
        hk.expand(label, out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(k: &HopKeys) -> [[u8; 32]; 4] {
        [k.kf_layer, k.kf_auth, k.kb_layer, k.kb_auth]
    }

    #[test]
    fn four_keys_pairwise_distinct() {
        for seed in [[0u8; 32], [0xff; 32], *b"0123456789abcdef0123456789abcdef"] {
            let k = derive_hop_keys(&seed);
            let a = all(&k);
            for i in 0..4 {
                for j in (i + 1)..4 {
                    assert_ne!(a[i], a[j], "keys {i} and {j} equal for seed {seed:02x?}");
                }
            }
        }
    }

    #[test]
    fn forward_differs_from_backward() {
        let k = derive_hop_keys(b"some key seed");
        assert_ne!(k.kf_layer, k.kb_layer);
        assert_ne!(k.kf_auth, k.kb_auth);
    }

    #[test]
    fn different_seeds_share_no_key() {
        let a = all(&derive_hop_keys(&[1u8; 32]));
        let b = all(&derive_hop_keys(&[2u8; 32]));
        for x in &a {
            assert!(!b.contains(x));
        }
    }

    #[test]
    fn deterministic() {
        assert_eq!(
            all(&derive_hop_keys(b"seed")),
            all(&derive_hop_keys(b"seed"))
        );
    }

    #[test]
    fn matches_rfc5869_construction() {
        // Recompute one key with the HMAC primitive directly: PRK = HMAC(salt, IKM),
        // T(1) = HMAC(PRK, info || 0x01).
        use hmac::{Hmac, Mac};
        let seed = [7u8; 32];
        let mut m = Hmac::<Sha256>::new_from_slice(HOP_KEYS_SALT).unwrap();
        m.update(&seed);
        let prk = m.finalize().into_bytes();
        let mut m = Hmac::<Sha256>::new_from_slice(&prk).unwrap();
        m.update(LABEL_KB_AUTH);
        m.update(&[1]);
        let t1: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(derive_hop_keys(&seed).kb_auth, t1);
    }

    #[test]
    fn debug_prints_no_key() {
        let k = derive_hop_keys(&[0x42; 32]);
        let s = format!("{k:?}");
        assert!(!s.contains(&hex::encode(k.kf_layer)));
        assert!(!s.contains("66"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn wipe_zeroes() {
        let mut b = [0xaau8; 32];
        wipe(&mut b);
        assert_eq!(b, [0u8; 32]);
    }
}
