//! Circuit cryptography: the per-hop handshake, key derivation and relay-cell crypto.
//!
//! - [`ntor`]: "allium-ntor-v1", the one-way authenticated, forward-secret circuit handshake that
//!   a client runs with each hop; it yields a `KEY_SEED`.
//! - [`kdf`]: [`HopKeys`] from a `KEY_SEED` (HKDF-SHA256): forward/backward layer and auth keys.
//! - [`cell_crypto`]: layered relay-cell crypto, authenticated at the hop addressed
//!   ([`ClientCrypto`], [`RelayCrypto`]).
//! - [`x25519`]: the relay's two Diffie-Hellman functions of one client key, at less cost.
//! - [`aead`]: the cipher seam (AES-256-GCM seal, AES-256-CTR layer) behind small traits.
//!
//! `docs/PROTOCOL.md` specifies all of it byte by byte, with test vectors.

pub mod aead;
pub mod cell_crypto;
pub mod kdf;
pub mod ntor;
pub mod x25519;

pub use aead::{RELAY_BODY_LEN, RELAY_PLAINTEXT_LEN, TAG_LEN};
pub use cell_crypto::{
    CellCryptoError, ClientCellCrypto, ClientCrypto, Recognized, RelayCellCrypto, RelayCrypto,
    MAX_CELLS_PER_DIRECTION,
};
pub use kdf::{derive_hop_keys, HopKeys};
pub use ntor::{HandshakeError, NtorClient, OnionKeyPair, ServerOutcome, HTYPE_NTOR};
