//! Client puzzles for introductions (THREATS A29): a proof of work on SHA-256 that an onion
//! service asks for only while it is overloaded, and uses to order the introductions it queues.
//!
//! The service publishes a suggested `effort` in its descriptor (extension [`EXT_SUGGESTED_EFFORT`]
//! of the introduction-point list; absent or 0 while it is not overloaded). A client that wants
//! to introduce itself with effort `effort` picks a 16-byte `nonce` such that
//!
//! ```text
//! H = SHA-256("allium-hs-pow-v1" | auth key | E | nonce | BE32(effort))
//! BE32(H[0..4]) × effort ≤ 2^32 − 1
//! ```
//!
//! where `auth key` is the introduction point's auth key (the puzzle's seed: random, published
//! only in the descriptor, and replaced when the point is) and `E` the client's ephemeral key of
//! this introduction (the first 32 bytes of the INTRODUCE encrypted part). Finding one takes
//! `effort` hashes on average; checking it takes one, by the introduction point as well as the
//! service. The solution travels in the cleartext extension field of INTRODUCE1 (type
//! [`EXT_POW`]: `nonce (16) | BE32(effort)`), which the encrypted part authenticates. The
//! introduction point charges an introduction `1 / effort` of a token of the service's rate
//! limit (a whole token without a solution); the service ranks the introductions it queues by
//! effort before it spends an x25519 operation on decrypting them. Binding `E` ties a solution
//! to one introduction: the service's replay cache refuses a second one with the same `E`.
//! SHA-256 is not memory-hard: specialised hardware solves it far faster than a client's CPU,
//! which an attacker with such hardware can use to outbid honest clients.

use sha2::{Digest as _, Sha256};

use crate::ext::{Extension, Extensions};
use crate::relay_msg::IntroduceBody;

/// The extension type of a solution in INTRODUCE1's cleartext extension field.
pub const EXT_POW: u8 = 2;
/// The extension type of the suggested effort (`BE32`) in the descriptor's introduction-point
/// list.
pub const EXT_SUGGESTED_EFFORT: u8 = 1;
/// Domain separation of the puzzle hash.
pub const POW_PREFIX: &[u8] = b"allium-hs-pow-v1";
/// The largest effort a client spends or a service suggests (~16 M hashes: a few seconds).
pub const MAX_EFFORT: u32 = 1 << 24;

/// A solution as carried in [`EXT_POW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowSolution {
    pub nonce: [u8; 16],
    pub effort: u32,
}

/// Why a claimed solution was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PowError {
    #[error("malformed proof-of-work extension")]
    Malformed,
    #[error("proof of work does not meet its claimed effort")]
    Insufficient,
}

fn hash(auth_key: &[u8; 32], client_key: &[u8; 32], nonce: &[u8; 16], effort: u32) -> u32 {
    let mut h = Sha256::new();
    h.update(POW_PREFIX);
    h.update(auth_key);
    h.update(client_key);
    h.update(nonce);
    h.update(effort.to_be_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn meets(r: u32, effort: u32) -> bool {
    u64::from(r) * u64::from(effort.max(1)) <= u64::from(u32::MAX)
}

/// Searches nonces from `start` for a solution of `effort` (at most [`MAX_EFFORT`]); tries at
/// most `max_tries` (`None` if none was found: try again from another start).
pub fn solve(auth_key: &[u8; 32], client_key: &[u8; 32], effort: u32, start: [u8; 16], max_tries: u64) -> Option<PowSolution> {
    let effort = effort.clamp(1, MAX_EFFORT);
    let mut n = u128::from_be_bytes(start);
    for _ in 0..max_tries {
        let nonce = n.to_be_bytes();
        if meets(hash(auth_key, client_key, &nonce, effort), effort) {
            return Some(PowSolution { nonce, effort });
        }
        n = n.wrapping_add(1);
    }
    None
}

impl PowSolution {
    /// The extension carrying this solution.
    pub fn extension(&self) -> Extension {
        let mut data = Vec::with_capacity(20);
        data.extend_from_slice(&self.nonce);
        data.extend_from_slice(&self.effort.to_be_bytes());
        Extension { ty: EXT_POW, data }
    }

    /// The solution in `ext`, if there is one.
    pub fn from_extensions(ext: &Extensions) -> Result<Option<PowSolution>, PowError> {
        let Some(e) = ext.0.iter().find(|e| e.ty == EXT_POW) else { return Ok(None) };
        if e.data.len() != 20 {
            return Err(PowError::Malformed);
        }
        let effort = u32::from_be_bytes(e.data[16..20].try_into().expect("4 bytes"));
        if effort == 0 || effort > MAX_EFFORT {
            return Err(PowError::Malformed);
        }
        Ok(Some(PowSolution { nonce: e.data[..16].try_into().expect("16 bytes"), effort }))
    }
}

/// The effort an INTRODUCE1/INTRODUCE2 proves: 0 without a solution; an error for a malformed
/// or insufficient one (dropped by the service, charged a whole token by the point).
pub fn verify(body: &IntroduceBody) -> Result<u32, PowError> {
    let Some(sol) = PowSolution::from_extensions(&body.ext)? else { return Ok(0) };
    let client_key: [u8; 32] = body.encrypted.get(..32).and_then(|k| k.try_into().ok()).ok_or(PowError::Malformed)?;
    if meets(hash(&body.auth_key, &client_key, &sol.nonce, sol.effort), sol.effort) {
        Ok(sol.effort)
    } else {
        Err(PowError::Insufficient)
    }
}

/// The suggested effort in a descriptor's introduction-point list extensions (0: none).
pub fn suggested_effort(ext: &Extensions) -> u32 {
    ext.0.iter().find(|e| e.ty == EXT_SUGGESTED_EFFORT).and_then(|e| e.data.as_slice().try_into().ok()).map_or(0, |b: [u8; 4]| u32::from_be_bytes(b).min(MAX_EFFORT))
}

/// The extension publishing `effort` as the suggested effort.
pub fn suggested_effort_extension(effort: u32) -> Extension {
    Extension { ty: EXT_SUGGESTED_EFFORT, data: effort.to_be_bytes().to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(ext: Extensions) -> IntroduceBody {
        IntroduceBody { auth_key: [3; 32], ext, encrypted: [[4u8; 32].as_slice(), &[0; 80]].concat() }
    }

    #[test]
    fn a_solution_proves_its_effort_for_its_introduction_only() {
        let sol = solve(&[3; 32], &[4; 32], 1000, [0; 16], 1_000_000).expect("found within 1,000× the mean");
        let b = body(Extensions(vec![sol.extension()]));
        assert_eq!(verify(&b), Ok(1000));
        // Another introduction (another client key) or another point cannot reuse it.
        let mut other = b.clone();
        other.encrypted[0] ^= 1;
        assert_eq!(verify(&other), Err(PowError::Insufficient));
        let mut elsewhere = b.clone();
        elsewhere.auth_key[0] ^= 1;
        assert_eq!(verify(&elsewhere), Err(PowError::Insufficient));
        // Claiming more effort than was done fails (with overwhelming probability for 2^20).
        let mut inflated = sol;
        inflated.effort = 1 << 20;
        assert_eq!(verify(&body(Extensions(vec![inflated.extension()]))), Err(PowError::Insufficient));
        assert_eq!(verify(&body(Extensions::none())), Ok(0), "no solution: effort 0");
        let bad = Extensions(vec![Extension { ty: EXT_POW, data: vec![0; 5] }]);
        assert_eq!(verify(&body(bad)), Err(PowError::Malformed));
        assert_eq!(suggested_effort(&Extensions(vec![suggested_effort_extension(77)])), 77);
        assert_eq!(suggested_effort(&Extensions::none()), 0);
    }

    #[test]
    fn effort_one_is_any_nonce_and_the_mean_work_is_the_effort() {
        assert!(solve(&[0; 32], &[0; 32], 1, [0; 16], 1).is_some());
        // 200 solutions at effort 64 take about 200 × 64 hashes (loose bounds: no flake).
        let mut tries = 0u64;
        for i in 0..200u128 {
            let start = (i << 64).to_be_bytes();
            let s = solve(&[2; 32], &[3; 32], 64, start, 1_000_000).unwrap();
            tries += (u128::from_be_bytes(s.nonce) - (i << 64)) as u64 + 1;
        }
        assert!((200 * 64 / 4..200 * 64 * 4).contains(&tries), "{tries} hashes");
    }
}
