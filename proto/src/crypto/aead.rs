//! The cipher seam of relay-cell crypto.
//!
//! [`super::cell_crypto`] uses two primitives, each behind a small trait so that a faster
//! implementation (or another crate) can be swapped in without touching the layering logic:
//!
//! - [`CellAead`]: seals and opens the 493-byte relay plaintext of a cell addressed to one hop,
//!   producing a detached 16-byte tag. Default: [`AesGcmAead`], AES-256-GCM with the 96-bit nonce
//!   `00 00 00 00 || BE64(n)` and no associated data.
//! - [`CellLayer`]: the per-hop onion layer, a keystream XORed over the whole 509-byte cell body.
//!   Default: [`AesCtrLayer`], AES-256-CTR with a 64-bit big-endian block counter in the low half
//!   of the counter block and the IV `BE64(n) || 00*8`, so cell `n` uses the counter blocks
//!   `BE64(n) || BE64(0)` … `BE64(n) || BE64(31)` and two cells never share a keystream block.
//!
//! Both are constructed once per hop and direction (the AES key schedule is expanded once) and
//! then used for every cell. Both take the cell counter `n` for the nonce/IV; callers guarantee
//! that `n` never repeats under one key.

use aes::Aes256;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use ctr::cipher::{InnerIvInit, StreamCipher};
use std::fmt;

/// Bytes of a relay cell body on the wire.
pub const RELAY_BODY_LEN: usize = 509;
/// Bytes of the authentication tag at the end of a relay cell body.
pub const TAG_LEN: usize = 16;
/// Bytes of relay plaintext in one cell: the body minus the tag.
pub const RELAY_PLAINTEXT_LEN: usize = RELAY_BODY_LEN - TAG_LEN;

/// An AEAD over exactly one relay plaintext, with a detached tag and the cell counter as nonce.
pub trait CellAead: Send {
    /// Builds the cipher for one key (expands the key schedule once).
    fn new(key: &[u8; 32]) -> Self
    where
        Self: Sized;
    /// Encrypts `pt` in place under nonce `n` and returns the tag.
    fn seal(&self, n: u64, pt: &mut [u8; RELAY_PLAINTEXT_LEN]) -> [u8; TAG_LEN];
    /// Verifies `tag` and, if valid, decrypts `ct` in place and returns `true`.
    /// On `false`, `ct` is left unchanged.
    fn open(&self, n: u64, ct: &mut [u8; RELAY_PLAINTEXT_LEN], tag: &[u8; TAG_LEN]) -> bool;
}

/// A keystream layer over a whole relay cell body, indexed by the cell counter.
pub trait CellLayer: Send {
    /// Builds the cipher for one key (expands the key schedule once).
    fn new(key: &[u8; 32]) -> Self
    where
        Self: Sized;
    /// XORs the keystream of cell `n` into `body`. Applying it twice with the same `n` is the
    /// identity.
    fn apply(&self, n: u64, body: &mut [u8; RELAY_BODY_LEN]);
}

/// AES-256-GCM, nonce `00 00 00 00 || BE64(n)`, empty associated data.
pub struct AesGcmAead {
    cipher: Aes256Gcm,
}

impl fmt::Debug for AesGcmAead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesGcmAead { .. }")
    }
}

/// The 96-bit GCM nonce of cell `n`.
pub fn gcm_nonce(n: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    nonce
}

impl CellAead for AesGcmAead {
    fn new(key: &[u8; 32]) -> Self {
        AesGcmAead {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    fn seal(&self, n: u64, pt: &mut [u8; RELAY_PLAINTEXT_LEN]) -> [u8; TAG_LEN] {
        let nonce = gcm_nonce(n);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", pt)
            .expect("493 bytes is within AES-GCM's plaintext limit");
        tag.into()
    }

    fn open(&self, n: u64, ct: &mut [u8; RELAY_PLAINTEXT_LEN], tag: &[u8; TAG_LEN]) -> bool {
        let nonce = gcm_nonce(n);
        // aes-gcm 0.10 computes and checks the tag (in constant time) before it decrypts
        // anything, so on failure the buffer is untouched. The test
        // `gcm_open_failure_leaves_buffer_unchanged` guards this against a dependency upgrade.
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(&nonce), b"", ct, Tag::from_slice(tag))
            .is_ok()
    }
}

/// An AEAD over a message of any length (not a relay cell), with an explicit 12-byte nonce,
/// associated data and the 16-byte tag appended to the ciphertext. Used for documents such as
/// onion-service descriptors, whose nonces are derived together with their keys.
pub trait MessageAead {
    /// Encrypts `msg` in place and appends the tag.
    fn seal_message(&self, nonce: &[u8; 12], aad: &[u8], msg: &mut Vec<u8>);
    /// Checks the tag at the end of `ct` and, if it is valid, returns the plaintext. `None` on
    /// a bad tag or when `ct` is shorter than a tag.
    fn open_message(&self, nonce: &[u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>>;
}

/// Longest message [`MessageAead`] seals (far below AES-GCM's limit of about 64 GiB).
pub const MAX_MESSAGE_LEN: usize = 1 << 24;

impl MessageAead for AesGcmAead {
    fn seal_message(&self, nonce: &[u8; 12], aad: &[u8], msg: &mut Vec<u8>) {
        assert!(msg.len() <= MAX_MESSAGE_LEN, "message too long to seal");
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, msg)
            .expect("length checked against MAX_MESSAGE_LEN");
        msg.extend_from_slice(&tag);
    }

    fn open_message(&self, nonce: &[u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
        let body_len = ct.len().checked_sub(TAG_LEN)?;
        let (body, tag) = ct.split_at(body_len);
        let mut out = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut out, Tag::from_slice(tag))
            .ok()?;
        Some(out)
    }
}

/// AES-256-CTR (`ctr::Ctr64BE<Aes256>`) with IV `BE64(n) || 00*8`.
pub struct AesCtrLayer {
    cipher: Aes256,
}

impl fmt::Debug for AesCtrLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesCtrLayer { .. }")
    }
}

/// The CTR IV (initial counter block) of cell `n`.
pub fn ctr_iv(n: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&n.to_be_bytes());
    iv
}

impl CellLayer for AesCtrLayer {
    fn new(key: &[u8; 32]) -> Self {
        AesCtrLayer {
            cipher: Aes256::new(key.into()),
        }
    }

    fn apply(&self, n: u64, body: &mut [u8; RELAY_BODY_LEN]) {
        let iv = ctr_iv(n);
        // Borrow the expanded key schedule: no per-cell key expansion.
        let core = ctr::CtrCore::<&Aes256, ctr::flavors::Ctr64BE>::inner_iv_init(
            &self.cipher,
            (&iv).into(),
        );
        let mut stream = ctr::cipher::StreamCipherCoreWrapper::from_core(core);
        // 509 bytes = 32 blocks: the 64-bit block counter cannot overflow.
        stream.apply_keystream(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::BlockEncrypt;

    #[test]
    fn gcm_round_trip_and_tamper() {
        let a = AesGcmAead::new(&[1; 32]);
        let mut pt = [0x5au8; RELAY_PLAINTEXT_LEN];
        let orig = pt;
        let tag = a.seal(7, &mut pt);
        assert_ne!(pt, orig);
        let mut ct = pt;
        assert!(a.open(7, &mut ct, &tag));
        assert_eq!(ct, orig);
        // Wrong nonce, wrong key, wrong tag all fail.
        let mut ct = pt;
        assert!(!a.open(8, &mut ct, &tag));
        assert!(!AesGcmAead::new(&[2; 32]).open(7, &mut ct, &tag));
        let mut bad = tag;
        bad[0] ^= 1;
        assert!(!a.open(7, &mut ct, &bad));
    }

    #[test]
    fn gcm_open_failure_leaves_buffer_unchanged() {
        let a = AesGcmAead::new(&[3; 32]);
        let mut pt = [0x11u8; RELAY_PLAINTEXT_LEN];
        let mut tag = a.seal(0, &mut pt);
        tag[15] ^= 0x80;
        let before = pt;
        assert!(!a.open(0, &mut pt, &tag));
        assert_eq!(pt, before);
    }

    #[test]
    fn gcm_nonce_layout() {
        assert_eq!(
            gcm_nonce(0x0102_0304_0506_0708),
            [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        // Known-answer against the aes-gcm API used the ordinary way.
        let key = [9u8; 32];
        let mut pt = [0u8; RELAY_PLAINTEXT_LEN];
        let tag = AesGcmAead::new(&key).seal(0x0102_0304_0506_0708, &mut pt);
        let c = Aes256Gcm::new((&key).into());
        let mut expect = vec![0u8; RELAY_PLAINTEXT_LEN];
        let t = c
            .encrypt_in_place_detached(
                Nonce::from_slice(&[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
                b"",
                &mut expect,
            )
            .unwrap();
        assert_eq!(&pt[..], &expect[..]);
        assert_eq!(tag, <[u8; 16]>::from(t));
    }

    #[test]
    fn message_aead_round_trip_tamper_and_aad() {
        let a = AesGcmAead::new(&[4; 32]);
        let nonce = [7u8; 12];
        for len in [0usize, 1, 100, 1000] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut ct = pt.clone();
            a.seal_message(&nonce, b"ad", &mut ct);
            assert_eq!(ct.len(), len + TAG_LEN);
            assert_eq!(a.open_message(&nonce, b"ad", &ct).as_deref(), Some(&pt[..]));
            assert_eq!(a.open_message(&nonce, b"ax", &ct), None, "associated data is authenticated");
            assert_eq!(a.open_message(&[8; 12], b"ad", &ct), None);
            for i in 0..ct.len() {
                let mut bad = ct.clone();
                bad[i] ^= 0x01;
                assert_eq!(a.open_message(&nonce, b"ad", &bad), None, "byte {i}");
            }
        }
        assert_eq!(a.open_message(&nonce, b"", &[0; TAG_LEN - 1]), None, "shorter than a tag");
        // Same construction as the cell seal: known answer against the aes-gcm API.
        let mut m = vec![0u8; 32];
        a.seal_message(&nonce, b"", &mut m);
        let mut expect = vec![0u8; 32];
        let t = Aes256Gcm::new((&[4u8; 32]).into()).encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut expect).unwrap();
        expect.extend_from_slice(&t);
        assert_eq!(m, expect);
    }

    fn keystream(l: &AesCtrLayer, n: u64) -> [u8; RELAY_BODY_LEN] {
        let mut b = [0u8; RELAY_BODY_LEN];
        l.apply(n, &mut b);
        b
    }

    #[test]
    fn ctr_keystream_is_aes_of_n_and_block_index() {
        let key = [0x77u8; 32];
        let l = AesCtrLayer::new(&key);
        let aes = Aes256::new((&key).into());
        for n in [0u64, 1, 0x0102_0304_0506_0708, u64::MAX] {
            let ks = keystream(&l, n);
            for (i, chunk) in ks.chunks(16).enumerate() {
                let mut block = [0u8; 16];
                block[..8].copy_from_slice(&n.to_be_bytes());
                block[8..].copy_from_slice(&(i as u64).to_be_bytes());
                let mut b = block.into();
                aes.encrypt_block(&mut b);
                assert_eq!(chunk, &b[..chunk.len()], "n={n} block {i}");
            }
        }
    }

    #[test]
    fn consecutive_cells_share_no_keystream_block() {
        let l = AesCtrLayer::new(&[0x31; 32]);
        for n in [0u64, 1, 41, (1 << 32) - 2] {
            let a = keystream(&l, n);
            let b = keystream(&l, n + 1);
            // 31 full blocks plus a 13-byte tail per cell; compare the full blocks, and the
            // tails against every block prefix.
            let blocks: Vec<&[u8]> = a.chunks(16).chain(b.chunks(16)).collect();
            for i in 0..blocks.len() {
                for j in (i + 1)..blocks.len() {
                    let len = blocks[i].len().min(blocks[j].len());
                    assert_ne!(
                        blocks[i][..len],
                        blocks[j][..len],
                        "n={n}: keystream blocks {i} and {j} coincide"
                    );
                }
            }
        }
    }

    #[test]
    fn ctr_apply_is_involution() {
        let l = AesCtrLayer::new(&[5; 32]);
        let mut b = [0xc3u8; RELAY_BODY_LEN];
        l.apply(99, &mut b);
        assert_ne!(b, [0xc3u8; RELAY_BODY_LEN]);
        l.apply(99, &mut b);
        assert_eq!(b, [0xc3u8; RELAY_BODY_LEN]);
    }
}
