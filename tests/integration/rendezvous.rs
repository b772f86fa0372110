//! Relays as introduction and rendezvous points on real circuits (docs/PROTOCOL.md, "Onion
//! services"). Relays run in this process; the client and the "service" are client circuits
//! that send circuit-level messages to their last hops, and the rendezvous circuits get the
//! end-to-end virtual hop.

use std::net::IpAddr;
use std::time::Duration;

use allium_client::circuit::{self, CircHandle};
use allium_net::pool::ChannelPool;
use allium_proto::ext::Extensions;
use allium_proto::hs::{establish, rendezvous};
use allium_proto::relay_msg::{introduce_status, IntroduceBody, RelayMsg};

async fn next(c: &CircHandle) -> (usize, RelayMsg) {
    tokio::time::timeout(Duration::from_secs(20), c.recv_control()).await.expect("a reply in time").expect("circuit open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intro_and_rendezvous_points_join_circuits() {
    let a = crate::support::inproc::start_relay("rendA", "").await.0;
    let b = crate::support::inproc::start_relay("rendB", "").await.0;
    let c = crate::support::inproc::start_relay("rendC", "").await.0;
    let pool = ChannelPool::new(IpAddr::from([127, 0, 0, 1]), None);
    let mut rng = rand::rngs::OsRng;

    // The service makes B its introduction point, signing over the circuit's keys at B.
    let auth = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
    let auth_key = auth.verifying_key().to_bytes();
    let enc = x25519_dalek::StaticSecret::from([0x24; 32]);
    let enc_pub = x25519_dalek::PublicKey::from(&enc).to_bytes();
    let intro = circuit::build(&pool, &[&a, &b]).await.unwrap();
    let m = establish::make(&auth, intro.last_hop_keys(), Extensions::none());
    assert_eq!(intro.control(m).await.unwrap(), (1, RelayMsg::IntroEstablished { ext: Extensions::none() }));

    // The client's rendezvous circuit, last hop A.
    let cookie = [7u8; 20];
    let rend = circuit::build(&pool, &[&b, &a]).await.unwrap();
    let r = rend.control(RelayMsg::EstablishRendezvous { cookie, ext: Extensions::none() }).await.unwrap();
    assert_eq!(r, (1, RelayMsg::RendezvousEstablished { ext: Extensions::none() }));

    // INTRODUCE1 through B reaches the service as INTRODUCE2, byte for byte, and is acked. (The
    // encrypted part is opaque to the introduction point; the client's X travels in it.)
    let (client_hs, x) = rendezvous::client_start(&mut rng, &auth_key, &enc_pub);
    let mut encrypted = x.to_vec();
    encrypted.extend_from_slice(&[0x55; 416]);
    let body = IntroduceBody { auth_key, ext: Extensions::none(), encrypted };
    let introducing = circuit::build(&pool, &[&c, &b]).await.unwrap();
    let ack = introducing.control(RelayMsg::Introduce1(body.clone())).await.unwrap();
    assert_eq!(ack, (1, RelayMsg::IntroduceAck { status: introduce_status::SUCCESS, ext: Extensions::none() }));
    let (_, intro2) = next(&intro).await;
    let RelayMsg::Introduce2(got) = intro2 else { panic!("expected INTRODUCE2, got {intro2:?}") };
    assert_eq!(got, body);
    // An unknown service is acked as such.
    let other = circuit::build(&pool, &[&c, &b]).await.unwrap();
    let ack = other.control(RelayMsg::Introduce1(IntroduceBody { auth_key: [9; 32], ..body.clone() })).await.unwrap();
    assert_eq!(ack, (1, RelayMsg::IntroduceAck { status: introduce_status::UNKNOWN_SERVICE, ext: Extensions::none() }));

    // The service answers at the rendezvous point; the client gets its handshake reply.
    let x_got: [u8; 32] = got.encrypted[..32].try_into().unwrap();
    let out = rendezvous::service_respond(&mut rng, &auth_key, &enc, rendezvous::HTYPE_REND, &x_got).unwrap();
    let svc = circuit::build(&pool, &[&c, &a]).await.unwrap();
    svc.send_control(RelayMsg::Rendezvous1 { cookie, hdata: out.reply.to_vec(), ext: Extensions::none() }).await.unwrap();
    let (hop, r2) = next(&rend).await;
    let RelayMsg::Rendezvous2 { hdata, .. } = r2 else { panic!("expected RENDEZVOUS2, got {r2:?}") };
    assert_eq!((hop, &hdata[..]), (1, &out.reply[..]));
    let keys = client_hs.finish(&hdata).unwrap();
    rend.add_virtual_hop(keys).await.unwrap();
    svc.add_virtual_hop(rendezvous::service_end_keys(&out.keys)).await.unwrap();

    // Cells cross the join both ways and open only with the virtual hop's keys: the
    // rendezvous point (whose key would have made it take them itself) relays them.
    for i in 0..3u8 {
        rend.send_control(RelayMsg::Data(vec![i; 100])).await.unwrap();
        assert_eq!(next(&svc).await, (2, RelayMsg::Data(vec![i; 100])), "client → service");
        svc.send_control(RelayMsg::Data(vec![0x80 | i; 300])).await.unwrap();
        assert_eq!(next(&rend).await, (2, RelayMsg::Data(vec![0x80 | i; 300])), "service → client");
    }

    // Closing the client's side destroys the service's.
    drop(rend);
    let closed = tokio::time::timeout(Duration::from_secs(20), svc.recv_control()).await.expect("the service circuit closes");
    assert!(closed.is_none(), "got {closed:?}");
}

/// `limits.max_intro_circuits` and `limits.max_rendezvous_cookies`: a relay at its cap destroys
/// the circuit of one more ESTABLISH_INTRO (new key) or ESTABLISH_RENDEZVOUS (counted); the ones
/// it holds keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intro_and_rendezvous_tables_hold_at_most_their_configured_caps() {
    let a = crate::support::inproc::start_relay("capA", "").await.0;
    let b = crate::support::inproc::start_relay("capB", "[limits]\nmax_intro_circuits = 1\nmax_rendezvous_cookies = 1\n").await.0;
    let pool = ChannelPool::new(IpAddr::from([127, 0, 0, 1]), None);
    let counted = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let limits = &allium_net::limits::LIMITS;
    let (intro_full, rend_full) = (counted(&limits.intro_circuits_full), counted(&limits.rendezvous_cookies_full));

    let first = circuit::build(&pool, &[&a, &b]).await.unwrap();
    let m = establish::make(&ed25519_dalek::SigningKey::from_bytes(&[0x61; 32]), first.last_hop_keys(), Extensions::none());
    assert_eq!(first.control(m).await.unwrap(), (1, RelayMsg::IntroEstablished { ext: Extensions::none() }));
    let second = circuit::build(&pool, &[&a, &b]).await.unwrap();
    let m = establish::make(&ed25519_dalek::SigningKey::from_bytes(&[0x62; 32]), second.last_hop_keys(), Extensions::none());
    assert!(second.control(m).await.is_err(), "a second service key is refused");
    assert!(counted(&limits.intro_circuits_full) > intro_full, "counted");

    let rend = circuit::build(&pool, &[&a, &b]).await.unwrap();
    let r = rend.control(RelayMsg::EstablishRendezvous { cookie: [1; 20], ext: Extensions::none() }).await.unwrap();
    assert_eq!(r, (1, RelayMsg::RendezvousEstablished { ext: Extensions::none() }));
    let more = circuit::build(&pool, &[&a, &b]).await.unwrap();
    assert!(more.control(RelayMsg::EstablishRendezvous { cookie: [2; 20], ext: Extensions::none() }).await.is_err(), "a second cookie is refused");
    assert!(counted(&limits.rendezvous_cookies_full) > rend_full, "counted");

    // What it holds still works: an INTRODUCE1 for the first key is acked.
    let auth_key = ed25519_dalek::SigningKey::from_bytes(&[0x61; 32]).verifying_key().to_bytes();
    let introducing = circuit::build(&pool, &[&a, &b]).await.unwrap();
    let body = IntroduceBody { auth_key, ext: Extensions::none(), encrypted: vec![0x55; 448] };
    let ack = introducing.control(RelayMsg::Introduce1(body)).await.unwrap();
    assert_eq!(ack, (1, RelayMsg::IntroduceAck { status: introduce_status::SUCCESS, ext: Extensions::none() }));
}
