//! Onion services, sans-IO: addresses, blinded keys, descriptors and their encrypted part, the
//! HSDir hash ring and the period's shared random value, and the pieces of introduction and
//! rendezvous: ESTABLISH_INTRO's circuit-bound signature ([`establish`]), the encrypted part of
//! INTRODUCE ([`introduce`]), the end-to-end handshake that adds the service as a virtual hop
//! ([`rendezvous`]) and the service's replay cache ([`replay`]) (issue "Onion services").
//! No I/O: time and randomness are passed in.

pub mod address;
pub mod blind;
pub mod desc;
pub mod establish;
pub mod inner;
pub mod introduce;
pub mod period;
pub mod rendezvous;
pub mod replay;
pub mod ring;
pub mod store;

pub use address::{AddressError, OnionAddress};
pub use blind::{blind_public, verify_blinded, BlindedKey, TimePeriod};
pub use inner::{decrypt, encrypt, make_descriptor, DescBinding, InnerError, IntroList, IntroPoint};
pub use period::{ring_srv, PeriodSrv};
pub use ring::HsDirRing;
pub use store::{HsDirStore, StoreError, Stored};
pub use desc::{should_replace, HsDescError, HsDescriptor, UnverifiedHsDescriptor};

#[cfg(test)]
mod tests {
    //! The pieces together: a service publishes, HSDirs store, a client finds and opens.
    use super::*;
    use crate::ext::Extensions;
    use crate::ids::RelayId;
    use crate::relay_msg::ExtendTarget;
    use ed25519_dalek::SigningKey;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use sha2::{Digest as _, Sha256};
    use std::collections::HashMap;

    #[test]
    fn publish_store_fetch_open() {
        const L: u64 = 86_400;
        let valid_after = 20_000 * L + 7 * 3600;
        let hsdirs: Vec<RelayId> = (0..30u8).map(|i| RelayId(Sha256::digest([i]).into())).collect();
        let carried: Vec<PeriodSrv> = vec![]; // today's consensuses carry no hs-period-srv lines
        let mut stores: HashMap<RelayId, HsDirStore> =
            hsdirs.iter().map(|id| (*id, HsDirStore::new(L, 100, 1 << 20))).collect();

        let service = SigningKey::from_bytes(&[42; 32]);
        let address = OnionAddress::from_identity(service.verifying_key().to_bytes()).unwrap().to_host();
        let list = IntroList {
            intro_points: vec![IntroPoint {
                relay: ExtendTarget { addr: "192.0.2.9:9001".parse().unwrap(), identity: [9; 32], link_key: [8; 32] },
                onion_key: [7; 32],
                auth_key: SigningKey::from_bytes(&[6; 32]).verifying_key().to_bytes(),
                enc_key: [5; 32],
                ext: Extensions::none(),
            }],
            ext: Extensions::none(),
        };
        let mut rng = StdRng::seed_from_u64(1);
        // The service publishes for the current and the next period.
        for p in period::publish_periods(valid_after, L) {
            let text = make_descriptor(&service, p, 1, 3600, &list, &[], &mut rng).unwrap();
            let ring = HsDirRing::new(hsdirs.clone(), &ring_srv(p, &carried), p);
            let blinded = BlindedKey::derive(&service, p).public();
            for dir in ring.responsible_default(&blinded) {
                assert_eq!(stores.get_mut(&dir).unwrap().offer(&text, valid_after), Ok(Stored::New));
            }
        }
        // The client, with the same consensus, knows only the address.
        let identity = *OnionAddress::parse(&address).unwrap().identity();
        let p = period::current_period(valid_after, L);
        let blinded = blind_public(&identity, p).unwrap();
        let ring = HsDirRing::new(hsdirs.clone(), &ring_srv(p, &carried), p);
        let dirs = ring.responsible_default(&blinded);
        assert_eq!(dirs.len(), 6);
        for dir in dirs {
            let text = stores[&dir].get(&blinded, valid_after + 60).expect("stored where the client looks");
            let d = HsDescriptor::parse(text).unwrap().verify(&blinded).unwrap();
            assert_eq!(decrypt(&identity, &DescBinding::of(&d), &d.encrypted, None).unwrap(), list);
        }
        // 12 uploads in all (two periods), on at most 12 relays.
        assert_eq!(stores.values().map(|s| s.len()).sum::<usize>(), 12);
    }
}
