//! Onion services, sans-IO: addresses and blinded keys (the first pieces of issue "Onion
//! services"; descriptors, the hash ring and introduction come next).

pub mod address;
pub mod blind;

pub use address::{AddressError, OnionAddress};
pub use blind::{blind_public, verify_blinded, BlindedKey, TimePeriod};
