//! A client reaching onion services by `.allium` address through its SOCKS proxy, on a whole
//! test network (docs/PROTOCOL.md, "Onion services", "Client behaviour"). The test plays the
//! services itself with the sans-IO pieces: it establishes introduction points, uploads
//! descriptors to the responsible HSDirs, answers INTRODUCE2 at the rendezvous point and adds
//! the client as its virtual hop. Failures come back as Tor's extended SOCKS5 codes: no
//! descriptor (F0, SOCKS4a 0x5B), an undecryptable one (F1), an introduction point that knows no
//! such service (F2), client authorization missing (F4) or not accepted (F5, from a second
//! client run in this process), and a service that never comes to the rendezvous point (F7).
//! The test service cannot take streams yet (its circuit closes on the BEGIN), so a reachable
//! service is checked up to the join: the client logs the connection as ready.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allium_client::circmgr::CircMgr;
use allium_client::{hs_dir, Bootstrap, ClientConfig};
use allium_directory::NetDir;
use allium_net::pool::ChannelPool;
use allium_proto::doc::{ConsensusRelay, RelayFlags};
use allium_proto::ext::Extensions;
use allium_proto::hs::blind::BlindedKey;
use allium_proto::hs::intro_set::IntroSet;
use allium_proto::hs::{establish, make_descriptor, rendezvous, HsDescriptor, IntroList, OnionAddress};
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::{ExtendTarget, RelayMsg};
use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;
use tokio::sync::mpsc;

use crate::support::socks::socks5_connect;
use crate::support::testnet::Testnet;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn address(key: &SigningKey) -> String {
    OnionAddress::from_identity(key.verifying_key().to_bytes()).unwrap().to_host()
}

/// The consensus the testnet client saved (the one it uses).
fn client_netdir(net: &Testnet) -> Arc<NetDir> {
    let cfg = ClientConfig::load(&net.dir.join("client").join("config.toml")).expect("the client's config");
    let ids: Vec<RelayId> = cfg.network.authorities.iter().map(|a| a.identity).collect();
    allium_directory::ConsensusCache::load(&cfg.node.data_dir, &ids, true, now()).usable(now()).expect("the client saved a usable consensus")
}

/// Uploads `text` (signed with `key`'s blinded key for the consensus's period) to every HSDir
/// responsible for it.
async fn upload(circs: &CircMgr, dir: &NetDir, key: &SigningKey, text: &str) {
    let period = hs_dir::period_of(dir);
    let blinded = BlindedKey::derive(key, period).public();
    let hsdirs = hs_dir::responsible_hsdirs(dir, &blinded, period);
    assert!(!hsdirs.is_empty(), "the testnet has HSDirs");
    for h in &hsdirs {
        let r = hs_dir::upload(circs, dir, h, text).await.unwrap_or_else(|e| panic!("upload to {}: {e}", h.nickname));
        assert_eq!(r, "stored", "upload to {}", h.nickname);
    }
}

/// A second client of the test network, run in this process: the testnet client's config with
/// its own data directory and SOCKS port, and these `[[client.onion_auth]]` entries
/// `(address, secret key hex)`. Returns its SOCKS address once it listens there.
async fn start_client(net: &Testnet, auth: &[(String, String)]) -> std::net::SocketAddr {
    let path = net.dir.join("client").join("config.toml");
    let mut v: toml::Value = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let dir = crate::support::fresh_dir("onion-client");
    let socks = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    v["node"]["data_dir"] = toml::Value::String(dir.display().to_string());
    v["node"]["nickname"] = toml::Value::String("authclient".into());
    v["node"].as_table_mut().unwrap().remove("metrics_listen");
    let client = v["client"].as_table_mut().unwrap();
    client.insert("socks_listen".into(), toml::Value::String(socks.to_string()));
    client.remove("http_connect_listen");
    let entries = auth
        .iter()
        .map(|(a, k)| {
            let mut t = toml::map::Map::new();
            t.insert("address".into(), toml::Value::String(a.clone()));
            t.insert("secret_key".into(), toml::Value::String(k.clone()));
            toml::Value::Table(t)
        })
        .collect();
    client.insert("onion_auth".into(), toml::Value::Array(entries));
    let text = toml::to_string(&v).unwrap();
    let cfg: ClientConfig = allium_net::config::parse_toml(&text, &path).unwrap();
    cfg.validate().unwrap();
    let keys = allium_net::keys::load_or_create(&dir).unwrap();
    tokio::spawn(allium_client::run(cfg, keys));
    // It opens its control socket after binding the SOCKS port: wait on the former.
    let ready = tokio::task::spawn_blocking(move || crate::support::try_wait_status(&dir, "role~client", Duration::from_secs(30))).await.unwrap();
    ready.unwrap_or_else(|e| panic!("the second client did not start: {e}"));
    socks
}

/// The SOCKS5 reply code for a CONNECT to `host:port` (0: connected).
async fn socks_reply(net: &Testnet, host: &str, port: u16) -> u8 {
    socks_reply_at(net.socks, host, port).await
}

async fn socks_reply_at(socks: std::net::SocketAddr, host: &str, port: u16) -> u8 {
    let host = host.to_string();
    tokio::task::spawn_blocking(move || match socks5_connect(socks, &host, port, None) {
        Ok(_) => 0,
        Err(code) => code,
    })
    .await
    .unwrap()
}

/// A running test service: an established introduction point, answering each INTRODUCE2 at
/// the client's rendezvous point and adding the client as its virtual hop. Sends the
/// rendezvous point (as a relay identity) for each client it answered with RENDEZVOUS1.
/// With `answer` false it reads each INTRODUCE2 and never comes to the rendezvous point.
async fn run_service(circs: Arc<CircMgr>, dir: Arc<NetDir>, key: SigningKey, answer: bool) -> (IntroList, mpsc::UnboundedReceiver<RelayId>) {
    let identity = key.verifying_key().to_bytes();
    let ip: ConsensusRelay = dir.relays().iter().find(|r| r.flags.contains(RelayFlags::RUNNING | RelayFlags::VALID)).expect("a relay").clone();
    let mut set = IntroSet::new(1, 3600, 60);
    let target = ExtendTarget { addr: ip.address, identity: ip.identity.0, link_key: ip.link_key };
    let auth = set.add(&mut OsRng, target, ip.onion_key, now());
    let intro = circs.to_relay(&dir, &ip).await.expect("circuit to the introduction point");
    let point = set.points().iter().find(|p| p.auth_key() == auth).unwrap();
    let m = establish::make(point.auth_signing_key(), intro.last_hop_keys(), Extensions::none());
    let (_, reply) = intro.control(m).await.unwrap();
    assert!(matches!(reply, RelayMsg::IntroEstablished { .. }), "got {reply:?}");
    assert!(set.established(&auth));
    let list = IntroList { intro_points: set.descriptor_points(), ext: Extensions::none() };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut joined = Vec::new();
        while let Some((_, msg)) = intro.recv_control().await {
            let RelayMsg::Introduce2(body) = msg else { continue };
            let acc = set.handle_introduce2(&mut OsRng, &identity, &auth, &body, now()).expect("a valid INTRODUCE2");
            let rp_id = RelayId(acc.content.rendezvous.identity);
            if !answer {
                let _ = tx.send(rp_id);
                continue;
            }
            let rp = dir.by_id(&rp_id).expect("the rendezvous point is in the consensus").clone();
            let rend = circs.to_relay(&dir, &rp).await.expect("circuit to the rendezvous point");
            let r1 = RelayMsg::Rendezvous1 { cookie: acc.content.cookie, hdata: acc.outcome.reply.to_vec(), ext: Extensions::none() };
            if rend.send_control(r1).await.is_err() {
                continue;
            }
            let _ = tx.send(rp_id);
            // The client's first cell (its BEGIN) may come before the hop is added: the circuit
            // closes either way, as this test service cannot take streams.
            let _ = rend.add_virtual_hop(rendezvous::service_end_keys(&acc.outcome.keys)).await;
            joined.push(rend);
        }
    });
    (list, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks_client_reaches_onion_services_or_gets_the_right_error() {
    let net = Testnet::start(&[]);
    // The testnet's own onion service first: its probe connection is in the client's log too.
    net.wait_env("ONION_HOST", Duration::from_secs(240)).expect("the testnet's onion service is reached");
    let dir = client_netdir(&net);
    // A relay stores descriptors once its own consensus says it is an HSDir, which can come
    // after the client's: wait for each the client lists as one (on the relay, no polling).
    for r in dir.relays().iter().filter(|r| r.flags.contains(allium_proto::doc::RelayFlags::HSDIR)) {
        let node = net.nodes.iter().find(|n| n.addr == r.address).expect("a listed relay is a test network node");
        crate::support::wait_status(&net.dir.join(&node.name), "flags~HSDir", Duration::from_secs(120), &format!("{} sees itself as an HSDir", node.name));
    }
    let circs = Arc::new(CircMgr::new(ChannelPool::new([127, 0, 0, 1].into(), None), None, Arc::new(Bootstrap::new())));
    let period = hs_dir::period_of(&dir);

    // No descriptor anywhere: F0.
    let absent = SigningKey::from_bytes(&[0x11; 32]);
    assert_eq!(socks_reply(&net, &address(&absent), 80).await, 0xF0, "no descriptor");
    // SOCKS4a has one failure code for it.
    let (socks, host) = (net.socks, address(&absent));
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(socks).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(&[&[4, 1, 0, 80, 0, 0, 0, 1, 0][..], host.as_bytes(), &[0]].concat()).unwrap();
        let mut r = [0u8; 8];
        s.read_exact(&mut r).unwrap();
        r
    })
    .await
    .unwrap();
    assert_eq!(reply[..2], [0, 0x5b], "SOCKS4a to an onion service without a descriptor");

    // A descriptor that verifies (so HSDirs store it) but whose encrypted part does not decrypt
    // under the address: F1.
    let broken = SigningKey::generate(&mut OsRng);
    let blinded = BlindedKey::derive(&broken, period);
    let d = HsDescriptor { blinded_key: blinded.public(), period, revision: 1, lifetime_secs: 3600, encrypted: vec![0x5a; 600] };
    upload(&circs, &dir, &broken, &d.encode_signed(&blinded)).await;
    assert_eq!(socks_reply(&net, &address(&broken), 80).await, 0xF1, "undecryptable descriptor");

    // A public service whose introduction point is up.
    let public = SigningKey::generate(&mut OsRng);
    let (list, mut joined) = run_service(circs.clone(), dir.clone(), public.clone(), true).await;
    upload(&circs, &dir, &public, &make_descriptor(&public, period, 1, 3600, &list, &[], &mut OsRng).unwrap()).await;

    // A descriptor whose introduction point knows no such service (INTRODUCE_ACK status 1):
    // introduction fails on every point, F2.
    let ghost = SigningKey::generate(&mut OsRng);
    let mut stale = list.clone();
    stale.intro_points[0].auth_key = SigningKey::generate(&mut OsRng).verifying_key().to_bytes();
    upload(&circs, &dir, &ghost, &make_descriptor(&ghost, period, 1, 3600, &stale, &[], &mut OsRng).unwrap()).await;
    assert_eq!(socks_reply(&net, &address(&ghost), 80).await, 0xF2, "introduction refused");

    // Services that require client authorization: `private` lists `mine` (and someone
    // else), `other` only someone else. The testnet client has no key: F4.
    let private = SigningKey::generate(&mut OsRng);
    let (private_list, mut private_joined) = run_service(circs.clone(), dir.clone(), private.clone(), true).await;
    let someone = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(OsRng));
    let (mine_secret, mine_public) = allium_client::onion_auth::generate();
    let mine: [u8; 32] = hex::decode(&mine_public).unwrap().try_into().unwrap();
    let clients = [someone, x25519_dalek::PublicKey::from(mine)];
    upload(&circs, &dir, &private, &make_descriptor(&private, period, 1, 3600, &private_list, &clients, &mut OsRng).unwrap()).await;
    let other = SigningKey::generate(&mut OsRng);
    upload(&circs, &dir, &other, &make_descriptor(&other, period, 1, 3600, &list, &[someone], &mut OsRng).unwrap()).await;
    assert_eq!(socks_reply(&net, &address(&private), 80).await, 0xF4, "client authorization required");

    // A client with `mine` for both: `other` does not accept it (F5); `private` does, and the
    // client gets as far as the service's rendezvous (the stream then fails as below).
    let auth_socks = start_client(&net, &[(address(&private), mine_secret.clone()), (address(&other), mine_secret)]).await;
    assert_eq!(socks_reply_at(auth_socks, &address(&other), 80).await, 0xF5, "client authorization key not accepted");
    assert_eq!(socks_reply_at(auth_socks, &address(&private), 80).await, 0x01);
    tokio::time::timeout(Duration::from_secs(5), private_joined.recv()).await.expect("the service joined the authorized client").unwrap();

    // The public one: the client fetches the descriptor, introduces itself, and the service
    // joins it at the rendezvous point as its virtual hop.
    let host = address(&public);
    let log_before_public = net.node_log("client");
    let client_dir = net.dir.join("client");
    let before = crate::support::status_json(&client_dir)["onion_connections"].clone();
    let code = socks_reply(&net, &host, 80).await;
    let rp = tokio::time::timeout(Duration::from_secs(5), joined.recv()).await.expect("the service joined the client").unwrap();
    let ready = |l: &str| l.lines().filter(|l| l.contains("onion service connection ready in")).map(String::from).collect::<Vec<_>>();
    let base = ready(&log_before_public).len();
    let total = |v: &serde_json::Value| v["fresh"].as_u64().unwrap_or(0) + v["cached"].as_u64().unwrap_or(0);
    let want = total(&before) + 2;
    // Off the runtime: the test's own service tasks must go on running meanwhile.
    let (d, cond) = (client_dir.clone(), format!("onion_connections.cached>={}", before["cached"].as_u64().unwrap_or(0) + 1));
    tokio::task::spawn_blocking(move || crate::support::wait_status(&d, &cond, Duration::from_secs(30), "the second connection (cached descriptor)")).await.unwrap();
    let after = crate::support::status_json(&client_dir)["onion_connections"].clone();
    assert_eq!(total(&after), want, "one fresh and one cached connection: {before} → {after}");
    let log = net.node_log("client");
    let lines = ready(&log)[base..].to_vec();
    assert_eq!(lines.len(), 2, "client log:\n{log}");
    assert!(!lines[0].contains("cached") && lines[1].contains("cached"), "the second connection used the cached descriptor: {lines:?}");
    assert!(dir.by_id(&rp).is_some());
    // The test service cannot answer BEGIN (its circuit closes on it), so the stream fails
    // after one retry on a fresh connection; a real service answers CONNECTED or END.
    assert_eq!(code, 0x01, "the test service does not carry streams");
    let again = tokio::time::timeout(Duration::from_secs(5), joined.recv()).await;
    assert!(matches!(again, Ok(Some(_))), "the stream was retried once on a new rendezvous circuit");

    // A service that reads the introduction but never comes to the rendezvous point: after
    // RENDEZVOUS2_TIMEOUT on its only introduction point, F7.
    let silent = SigningKey::generate(&mut OsRng);
    let (silent_list, mut introduced) = run_service(circs.clone(), dir.clone(), silent.clone(), false).await;
    upload(&circs, &dir, &silent, &make_descriptor(&silent, period, 1, 3600, &silent_list, &[], &mut OsRng).unwrap()).await;
    let started = std::time::Instant::now();
    assert_eq!(socks_reply(&net, &address(&silent), 80).await, 0xF7, "the service never answered");
    assert!(started.elapsed() >= allium_client::hs_connect::RENDEZVOUS2_TIMEOUT, "waited for RENDEZVOUS2");
    assert!(introduced.try_recv().is_ok(), "the service got the introduction");
    let log = net.node_log("client");

    for svc in [&absent, &broken, &ghost, &private, &other, &public, &silent] {
        assert!(!log.contains(&address(svc)), "an onion address at info level in the client log");
    }
    for reason in ["no responsible HSDir holds a descriptor", "descriptor not valid", "every introduction point failed", "requires client authorization", "the service did not answer at the rendezvous point"] {
        assert!(log.contains(reason), "{reason:?} logged:\n{log}");
    }
}

/// `allium keygen --onion-client-auth` prints a matching key pair and writes nothing.
#[test]
fn keygen_prints_a_client_authorization_key_pair() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_allium")).args(["keygen", "--onion-client-auth"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| -> [u8; 32] {
        let v = text.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("{name} in {text}"));
        let mut b = [0u8; 32];
        hex::decode_to_slice(v, &mut b).unwrap();
        b
    };
    let secret = x25519_dalek::StaticSecret::from(field("secret: "));
    assert_eq!(x25519_dalek::PublicKey::from(&secret).to_bytes(), field("public: "));
}
