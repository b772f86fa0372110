//! Onion services, sans-IO: addresses, blinded keys, descriptors and their encrypted part, the
//! HSDir hash ring and the period's shared random value, and the pieces of introduction and
//! rendezvous: ESTABLISH_INTRO's circuit-bound signature ([`establish`]), the encrypted part of
//! INTRODUCE ([`introduce`]), the end-to-end handshake that adds the service as a virtual hop
//! ([`rendezvous`]), the service's replay cache ([`replay`]) and set of introduction points
//! ([`intro_set`]), the client's connection attempt ([`connect`]), and the relay-side tables of
//! an introduction point ([`intro_point`]) and a rendezvous point ([`rend_point`]) (issue "Onion
//! services"). No I/O: time and randomness are passed in.

pub mod address;
pub mod blind;
pub mod connect;
pub mod desc;
pub mod establish;
pub mod inner;
pub mod intro_point;
pub mod intro_set;
pub mod introduce;
pub mod period;
pub mod pow;
pub mod rend_point;
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

/// A test relay `i`: address 192.0.2.i:9001, identity and link key `[i; 32]`.
#[cfg(test)]
pub(crate) fn test_relay(i: u8) -> crate::relay_msg::ExtendTarget {
    crate::relay_msg::ExtendTarget { addr: format!("192.0.2.{i}:9001").parse().unwrap(), identity: [i; 32], link_key: [i; 32] }
}

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
        let carried: Vec<PeriodSrv> = vec![]; // a consensus without hs-period-srv lines: the fallback
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
                assert_eq!(stores.get_mut(&dir).unwrap().offer(&text, valid_after, |_, _| true), Ok(Stored::New));
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

    /// Introduction and rendezvous, sans-IO, with every message through its wire encoding: the
    /// service establishes an introduction point, a client that read the descriptor introduces
    /// itself, the service answers at the rendezvous point, the client checks the reply, and a
    /// cell crosses the joined circuits to the virtual hop. A replayed INTRODUCE2 is refused.
    #[test]
    fn introduce_and_rendezvous() {
        use crate::crypto::cell_crypto::{ClientCrypto, Recognized, RelayCrypto};
        use crate::crypto::kdf::{derive_hop_keys, HopKeys};
        use crate::crypto::RELAY_BODY_LEN;
        use crate::relay_msg::{introduce_status, Direction, RelayMsg, REND_COOKIE_LEN};
        use rand::RngCore;
        use x25519_dalek::{PublicKey, StaticSecret};

        fn wire(m: &RelayMsg, dir: Direction) -> RelayMsg {
            RelayMsg::decode(m.cmd() as u8, &m.encode_body(), dir).unwrap()
        }
        let mut rng = StdRng::seed_from_u64(7);
        let service = SigningKey::from_bytes(&[42; 32]);
        let identity = service.verifying_key().to_bytes();
        // The service's introduction point keys, and its circuit to the introduction point.
        let auth = SigningKey::from_bytes(&[6; 32]);
        let enc = StaticSecret::from([5; 32]);
        let ip_hop: HopKeys = derive_hop_keys(b"service-to-intro-point hop keys");
        let mut ip_table = intro_point::IntroPointTable::new(10);
        let est = wire(&establish::make(&auth, &ip_hop, Extensions::none()), Direction::Outbound);
        let (ok, _) = ip_table.establish("svc-intro", &est, &ip_hop, 0).unwrap();
        assert!(matches!(wire(&ok, Direction::Inbound), RelayMsg::IntroEstablished { .. }));
        let point = IntroPoint {
            relay: ExtendTarget { addr: "192.0.2.9:9001".parse().unwrap(), identity: [9; 32], link_key: [8; 32] },
            onion_key: [7; 32],
            auth_key: auth.verifying_key().to_bytes(),
            enc_key: PublicKey::from(&enc).to_bytes(),
            ext: Extensions::none(),
        };
        let mut replay = replay::ReplayCache::default();

        // The client (it has `point` from the descriptor) sets up a rendezvous point.
        let mut rp = rend_point::RendPointTable::new(10);
        let mut cookie = [0u8; REND_COOKIE_LEN];
        rng.fill_bytes(&mut cookie);
        let m = wire(&RelayMsg::EstablishRendezvous { cookie, ext: Extensions::none() }, Direction::Outbound);
        let RelayMsg::EstablishRendezvous { cookie: c, .. } = m else { panic!() };
        assert!(matches!(rp.establish("client-rend", &c, 1000), Ok(RelayMsg::RendezvousEstablished { .. })));
        // ... and introduces itself.
        let (rend_client, x) = rendezvous::client_start(&mut rng, &point.auth_key, &point.enc_key);
        let content = introduce::IntroduceContent {
            cookie,
            rendezvous: ExtendTarget { addr: "198.51.100.4:443".parse().unwrap(), identity: [4; 32], link_key: [3; 32] },
            rendezvous_onion_key: [2; 32],
            htype: rendezvous::HTYPE_REND,
            hdata: x.to_vec(),
            ext: Extensions::none(),
        };
        let body = introduce::encrypt(&mut rng, &identity, &point.auth_key, &point.enc_key, Extensions::none(), &content).unwrap();
        let RelayMsg::Introduce1(at_ip) = wire(&RelayMsg::Introduce1(body), Direction::Outbound) else { panic!() };
        let action = ip_table.introduce1("client-intro", &at_ip, 0).unwrap();
        assert_eq!(wire(&action.ack, Direction::Inbound), RelayMsg::IntroduceAck { status: introduce_status::SUCCESS, ext: Extensions::none() });
        let (to, intro2) = action.forward.unwrap();
        assert_eq!(to, "svc-intro");
        let RelayMsg::Introduce2(at_service) = wire(&intro2, Direction::Inbound) else { panic!() };

        // The service: decrypt, replay check, handshake, RENDEZVOUS1.
        let got = introduce::decrypt(&identity, &point.auth_key, &enc, &at_service).unwrap();
        assert_eq!(got, content);
        replay.check_and_insert(&at_service.encrypted, 1001).unwrap();
        assert_eq!(replay.check_and_insert(&at_service.encrypted, 1002), Err(replay::Replayed), "replayed INTRODUCE2");
        let out = rendezvous::service_respond(&mut rng, &point.auth_key, &enc, got.htype, &got.hdata).unwrap();
        let r1 = wire(&RelayMsg::Rendezvous1 { cookie: got.cookie, hdata: out.reply.to_vec(), ext: Extensions::none() }, Direction::Outbound);
        let RelayMsg::Rendezvous1 { cookie, hdata, .. } = r1 else { panic!() };
        let (client_circ, r2) = rp.rendezvous1("svc-rend", &cookie, &hdata, 1003).unwrap();
        assert_eq!(client_circ, "client-rend");
        let RelayMsg::Rendezvous2 { hdata, .. } = wire(&r2, Direction::Inbound) else { panic!() };
        let keys = rend_client.finish(&hdata).unwrap();

        // One cell each way through rendezvous point hops (one hop per side is enough here).
        let (c_rp, s_rp) = (derive_hop_keys(b"client rp"), derive_hop_keys(b"service rp"));
        let (mut client, mut svc) = (ClientCrypto::new(), ClientCrypto::new());
        client.add_hop(&c_rp);
        client.add_hop(&keys);
        svc.add_hop(&s_rp);
        svc.add_hop(&rendezvous::service_end_keys(&out.keys));
        let (mut rp_c, mut rp_s) = (RelayCrypto::new(&c_rp), RelayCrypto::new(&s_rp));
        let mut cell = [0u8; RELAY_BODY_LEN];
        cell[..5].copy_from_slice(b"hello");
        client.encrypt_outbound(1, &mut cell).unwrap();
        assert_eq!(rp_c.decrypt_outbound(&mut cell).unwrap(), Recognized::NotForUs);
        assert_eq!(rp.peer(&"client-rend"), Some("svc-rend"));
        rp_s.forward_inbound(&mut cell).unwrap();
        assert_eq!(svc.decrypt_inbound(&mut cell).unwrap(), 1);
        assert_eq!(&cell[..5], b"hello");
        let mut cell = [0u8; RELAY_BODY_LEN];
        cell[..3].copy_from_slice(b"hi!");
        svc.encrypt_outbound(1, &mut cell).unwrap();
        assert_eq!(rp_s.decrypt_outbound(&mut cell).unwrap(), Recognized::NotForUs);
        rp_c.forward_inbound(&mut cell).unwrap();
        assert_eq!(client.decrypt_inbound(&mut cell).unwrap(), 1);
        assert_eq!(&cell[..3], b"hi!");
    }
}
