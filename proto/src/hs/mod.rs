//! Onion services, sans-IO: addresses, blinded keys, descriptors and their encrypted part, the
//! HSDir hash ring and the period's shared random value (issue "Onion services"; introduction
//! and rendezvous come next). No I/O: time and randomness are passed in.

pub mod address;
pub mod blind;
pub mod desc;
pub mod inner;
pub mod period;
pub mod ring;
pub mod store;

pub use address::{AddressError, OnionAddress};
pub use blind::{blind_public, verify_blinded, BlindedKey, TimePeriod};
pub use inner::{decrypt, encrypt, make_descriptor, DescBinding, InnerError, IntroList, IntroPoint};
pub use period::{ring_srv, PeriodSrv};
pub use ring::HsDirRing;
pub use store::{HsDirStore, StoreError, Stored};
pub use desc::{should_replace, HsDescError, HsDescriptor, UnverifiedHsDescriptor};
