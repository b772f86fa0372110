//! Hosting an onion service (docs/PROTOCOL.md, "Onion services"): a real `allium client` with
//! an `[[onion_service]]` table joins a test network, establishes introduction points and
//! publishes its descriptor; this test plays the connecting client with the sans-IO pieces
//! (fetch and decrypt the descriptor, introduce, rendezvous) and carries HTTP over the stream.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use allium_client::circuit::{BeginRequest, CircHandle};
use allium_net::pool::ChannelPool;
use allium_proto::doc::ConsensusRelay;
use allium_proto::hs::connect::Attempt;
use allium_proto::hs::{decrypt, DescBinding, OnionAddress};
use allium_proto::relay_msg::{EndReason, ExtendTarget, RelayMsg};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::http::{pseudo_random, FileServer};
use crate::support::testnet::Testnet;
use crate::support::visitor::Visitor;

const WAIT: Duration = Duration::from_secs(120);

/// The service's `allium client` process; killed (and reaped) on drop.
struct ServiceNode {
    child: Child,
    log: PathBuf,
    data_dir: PathBuf,
}

impl Drop for ServiceNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("service node log ends with:\n{}", crate::support::tail(&self.log, 60));
        }
    }
}

impl ServiceNode {
    /// Starts a second client in the network (configured like the testnet's own client) that
    /// hosts `web` with the virtual ports mapped to the targets given, and `private` (port 80
    /// to the first target) for the one client whose x25519 public key is `authorized`.
    fn start(net: &Testnet, ports: &[(u16, SocketAddr)], authorized: [u8; 32]) -> ServiceNode {
        let text = std::fs::read_to_string(net.dir.join("client").join("config.toml")).unwrap();
        let mut cfg: toml::Table = text.parse().unwrap();
        let data_dir = net.root.join("service");
        let node = cfg.get_mut("node").and_then(|n| n.as_table_mut()).expect("[node]");
        node.insert("data_dir".into(), data_dir.display().to_string().into());
        node.remove("metrics_listen");
        let client = cfg.get_mut("client").and_then(|n| n.as_table_mut()).expect("[client]");
        client.insert("socks_listen".into(), "127.0.0.1:0".into());
        client.remove("http_connect_listen");
        let mut svc = toml::Table::new();
        svc.insert("name".into(), "web".into());
        svc.insert("ports".into(), toml::Value::Array(ports.iter().map(|(v, t)| format!("{v} -> {t}").into()).collect()));
        let mut private = toml::Table::new();
        private.insert("name".into(), "private".into());
        private.insert("ports".into(), toml::Value::Array(vec![format!("80 -> {}", ports[0].1).into()]));
        private.insert("authorized_clients".into(), toml::Value::Array(vec![hex::encode(authorized).into()]));
        cfg.insert("onion_service".into(), toml::Value::Array(vec![svc.into(), private.into()]));
        let path = net.root.join("service.toml");
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        let log = net.root.join("service.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_allium"))
            .args(["client", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info,allium_client::hs_service=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the service node");
        ServiceNode { child, log, data_dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads its output (stdout and log) each time it is written until `done` finds
    /// something in it; panics after `limit`.
    fn wait_for<T>(&self, what: &str, limit: Duration, done: impl Fn(&str) -> Option<T>) -> T {
        let found = crate::support::events::wait_file(&self.log, Some(self.child.id()), limit, || done(&self.log()));
        found.unwrap_or_else(|e| panic!("service node: no {what} ({e:?} after at most {} s)", limit.as_secs()))
    }

    /// Waits (on the node: `allium status --wait`) until `condition` holds in its status.
    fn wait_status(&self, condition: &str, limit: Duration) {
        crate::support::wait_status(&self.data_dir, condition, limit, "service node");
    }
}

/// Opens a stream to `port` on the joined rendezvous circuit: the application end of the
/// stream's socket, or the END reason.
async fn open_stream(rend: &CircHandle, host: &str, port: u16) -> Result<tokio::net::TcpStream, EndReason> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (ours, _) = l.accept().await.unwrap();
    let (done, answer) = tokio::sync::oneshot::channel();
    let req = BeginRequest { host: host.into(), port, done };
    assert!(rend.begin(req).await.is_ok(), "the circuit is open");
    match tokio::time::timeout(Duration::from_secs(30), answer).await.expect("an answer in time").expect("answered") {
        Ok(c) => {
            assert_eq!(c.addr, None, "CONNECTED from a service carries no address");
            c.stream.splice(ours, vec![]);
            Ok(app)
        }
        Err(reason) => Err(reason),
    }
}

/// GET `path` over an opened stream: the body of a 200 whose length matches Content-Length.
async fn http_get(mut s: tokio::net::TcpStream, path: &str) -> Vec<u8> {
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut raw)).await.expect("the response in time").unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head") + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().trim().parse().unwrap();
    let body = raw[head_end..].to_vec();
    assert_eq!(body.len(), len, "{path}: body length");
    body
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn a_hosted_service_is_reached_through_introduction_and_rendezvous() {
    let server = FileServer::start(vec![("/1k", pseudo_random(1024, 11)), ("/10m", pseudo_random(10_000_000, 12))]);
    let net = Testnet::start(&[]);
    let (echo, echo_peers) = echo_server();
    let alice = x25519_dalek::StaticSecret::from([0x5a; 32]);
    let mallory = x25519_dalek::StaticSecret::from([0x6b; 32]);
    // Port 8 maps to a loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let svc = ServiceNode::start(&net, &[(80, server.addr()), (7, echo), (8, closed)], x25519_dalek::PublicKey::from(&alice).to_bytes());
    // The address is printed on stdout (never logged); the status says when HSDirs hold the
    // descriptor, and the log never names the address.
    let host = svc.wait_for("address line", WAIT, |log| log.lines().find_map(|l| l.strip_prefix("onion service web: ")).map(str::to_string));
    let address = OnionAddress::parse(&host).expect("a valid onion address");
    let private_host = svc.wait_for("address line", WAIT, |log| log.lines().find_map(|l| l.strip_prefix("onion service private: ")).map(str::to_string));
    svc.wait_status("onion_publications.web>=1", WAIT);
    svc.wait_status("onion_publications.private>=1", WAIT);
    let printed = [format!("onion service web: {host}"), format!("onion service private: {private_host}")];
    for l in svc.log().lines().filter(|l| !printed.iter().any(|p| p == l)) {
        assert!(!l.contains(&host[..56]) && !l.contains(&private_host[..56]), "an address in a log line: {l}");
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut v = Visitor::new(&net.dir.join("client").join("config.toml")).await;
        let identity = *address.identity();
        let points = v.intro_points(&identity).await;
        assert!(!points.is_empty() && points.len() <= 3, "{} introduction points", points.len());
        let point = points[0].clone();

        // The private service's introduction points open for its authorized client only.
        let private = *OnionAddress::parse(&private_host).unwrap().identity();
        let d = v.descriptor(&private).await;
        let binding = DescBinding::of(&d);
        assert!(decrypt(&private, &binding, &d.encrypted, None).is_err(), "readable without a client key");
        assert!(decrypt(&private, &binding, &d.encrypted, Some(&mallory)).is_err(), "readable by an unlisted client");
        let list = decrypt(&private, &binding, &d.encrypted, Some(&alice)).expect("the authorized client reads it");
        assert!(!list.intro_points.is_empty());
        let rp = v.rendezvous_point(&point.relay.identity);
        let target = |r: &ConsensusRelay| ExtendTarget { addr: r.address, identity: r.identity.0, link_key: r.link_key };

        // Introduce, meet, join.
        let attempt = Attempt::new(&mut rand::rngs::OsRng, &identity, &point, target(&rp), rp.onion_key, 0).unwrap();
        let (establish, introduce1, cookie) = (attempt.establish_rendezvous.clone(), attempt.introduce1.clone(), attempt.cookie);
        let rend = v.rendezvous_circuit(&rp, establish.clone()).await;
        v.introduce(&point, introduce1.clone()).await;
        let (_, r2) = tokio::time::timeout(WAIT, rend.recv_control()).await.expect("RENDEZVOUS2 in time").expect("circuit open");
        let keys = attempt.on_rendezvous2(&r2).expect("the service's handshake reply checks out");
        rend.add_virtual_hop(keys).await.unwrap();

        // Streams: byte-exact both sizes; an unmapped port is refused.
        for path in ["/1k", "/10m"] {
            let s = open_stream(&rend, &host, 80).await.expect("port 80 is mapped");
            let body = http_get(s, path).await;
            assert_eq!(sha(&body), sha(server.file(path)), "{path}: content");
        }
        assert_eq!(open_stream(&rend, &host, 81).await.err(), Some(EndReason::ConnectRefused), "port 81 is not mapped");
        assert_eq!(open_stream(&rend, &host, 8).await.err(), Some(EndReason::ConnectRefused), "port 8's target refuses");
        // 10 MB up and back through the echo target.
        let s = open_stream(&rend, &host, 7).await.expect("port 7 is mapped");
        let big = pseudo_random(10_000_000, 13);
        let (mut rd, mut wr) = s.into_split();
        let up = big.clone();
        // (No half-close: END closes both directions, so read the whole echo before closing.)
        let writer = tokio::spawn(async move {
            wr.write_all(&up).await.unwrap();
            wr
        });
        let mut back = vec![0u8; big.len()];
        tokio::time::timeout(Duration::from_secs(180), rd.read_exact(&mut back)).await.expect("the echo in time").unwrap();
        drop(writer.await.unwrap());
        assert_eq!(sha(&back), sha(&big), "echoed content");

        // A replayed INTRODUCE1 (the same cookie filed again at a rendezvous point) gets no
        // rendezvous: the service logs the replay and drops it; a fresh introduction after it
        // is answered.
        let again = v.rendezvous_circuit(&rp, RelayMsg::EstablishRendezvous { cookie, ext: Default::default() }).await;
        v.introduce(&point, introduce1).await;
        let data_dir = svc.data_dir.clone();
        tokio::task::spawn_blocking(move || crate::support::wait_status(&data_dir, "onion_introductions_replayed>=1", WAIT, "the service counts the replay")).await.unwrap();
        assert!(svc.log().contains("replayed INTRODUCE2 dropped"), "the replay is counted but not logged");
        let fresh = Attempt::new(&mut rand::rngs::OsRng, &identity, &point, target(&rp), rp.onion_key, 0).unwrap();
        let rend2 = v.rendezvous_circuit(&rp, fresh.establish_rendezvous.clone()).await;
        v.introduce(&point, fresh.introduce1.clone()).await;
        let (_, r2) = tokio::time::timeout(WAIT, rend2.recv_control()).await.expect("RENDEZVOUS2 in time").expect("circuit open");
        fresh.on_rendezvous2(&r2).expect("fresh introduction answered");
        // The replay came before the fresh one on the same introduction circuit, so its
        // rendezvous (had there been one) would have been started first.
        let nothing = tokio::time::timeout(Duration::from_secs(3), again.recv_control()).await;
        assert!(nothing.is_err(), "the replayed introduction got {nothing:?}");
    });

    // The target saw the service node only (from loopback), never an exit.
    let peers = server.peers();
    assert_eq!(peers.len(), 2, "the file server saw {peers:?} for two GETs");
    let exits: Vec<IpAddr> = net.with_role("exit").map(|n| n.addr.ip()).collect();
    for p in peers {
        assert_eq!(p.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST), "connection from {p}");
        assert!(!exits.contains(&p.ip()));
    }
    let echo_peers = echo_peers.lock().unwrap().clone();
    assert_eq!(echo_peers.len(), 1, "the echo server saw {echo_peers:?} for one stream");
    for p in echo_peers.iter() {
        assert_eq!(p.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST), "echo connection from {p}");
    }
}

/// An echo server on loopback that records its peers.
fn echo_server() -> (SocketAddr, Arc<std::sync::Mutex<Vec<SocketAddr>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = peers.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            p.lock().unwrap().push(c.peer_addr().unwrap());
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let _ = std::io::copy(&mut c, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, peers)
}

/// A client's and a service's circuits joined at an in-process rendezvous point (no
/// introduction: the handshake runs directly), the service serving streams only if `serve`.
async fn joined(serve: bool) -> (CircHandle, CircHandle, tokio::sync::mpsc::Receiver<allium_client::circuit::IncomingStream>) {
    use allium_proto::hs::rendezvous;
    let a = crate::support::inproc::start_relay("hsA", "").await.0;
    let b = crate::support::inproc::start_relay("hsB", "").await.0;
    let c = crate::support::inproc::start_relay("hsC", "").await.0;
    let pool = ChannelPool::new(IpAddr::V4(Ipv4Addr::LOCALHOST), None);
    let mut rng = rand::rngs::OsRng;
    let auth_key = ed25519_dalek::SigningKey::from_bytes(&[0x31; 32]).verifying_key().to_bytes();
    let enc = x25519_dalek::StaticSecret::from([0x13; 32]);
    let enc_pub = x25519_dalek::PublicKey::from(&enc).to_bytes();
    let cookie = [3u8; 20];
    let client = allium_client::circuit::build(&pool, &[&b, &a]).await.unwrap();
    let (_, m) = client.control(RelayMsg::EstablishRendezvous { cookie, ext: Default::default() }).await.unwrap();
    assert!(matches!(m, RelayMsg::RendezvousEstablished { .. }));
    let (hs, x) = rendezvous::client_start(&mut rng, &auth_key, &enc_pub);
    let out = rendezvous::service_respond(&mut rng, &auth_key, &enc, rendezvous::HTYPE_REND, &x).unwrap();
    let svc = allium_client::circuit::build(&pool, &[&c, &a]).await.unwrap();
    let r1 = RelayMsg::Rendezvous1 { cookie, hdata: out.reply.to_vec(), ext: Default::default() };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    if serve {
        svc.join_as_service(r1, rendezvous::service_end_keys(&out.keys), tx, allium_net::stream::MAX_STREAMS).await.unwrap();
    } else {
        svc.send_control(r1).await.unwrap();
        svc.add_virtual_hop(rendezvous::service_end_keys(&out.keys)).await.unwrap();
    }
    let (_, r2) = tokio::time::timeout(Duration::from_secs(20), client.recv_control()).await.unwrap().unwrap();
    let RelayMsg::Rendezvous2 { hdata, .. } = r2 else { panic!("got {r2:?}") };
    client.add_virtual_hop(hs.finish(&hdata).unwrap()).await.unwrap();
    (client, svc, rx)
}

/// Streams from the virtual hop: the circuit hands each BEGIN to the service without waiting
/// for its answer (a stream answered later does not hold up one answered first), attaches the
/// stream over with CONNECTED (no address) when the service accepts, sends END with the
/// service's reason when it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_serves_streams_from_the_virtual_hop_without_blocking() {
    let (client, _svc, mut incoming) = joined(true).await;
    let (echo, _) = echo_server();
    let host = "x.allium";
    let c1 = client.clone();
    let slow = tokio::spawn(async move { open_stream(&c1, host, 80).await });
    let first = tokio::time::timeout(WAIT, incoming.recv()).await.unwrap().unwrap();
    assert_eq!((first.port, first.host.as_str()), (80, host));
    // While the first waits, a second stream is opened, answered and used.
    let c2 = client.clone();
    let fast = tokio::spawn(async move { open_stream(&c2, host, 7).await });
    let second = tokio::time::timeout(WAIT, incoming.recv()).await.unwrap().unwrap();
    assert_eq!(second.port, 7);
    let echo = tokio::net::TcpStream::connect(echo).await.unwrap();
    second.accept(None).await.expect("the stream, once CONNECTED is sent").splice(echo, vec![]);
    let mut s = fast.await.unwrap().expect("the second stream connects first");
    s.write_all(b"ping over the join").await.unwrap();
    let mut got = [0u8; 18];
    tokio::time::timeout(WAIT, s.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"ping over the join");
    assert!(!slow.is_finished(), "the first stream is still waiting for its answer");
    first.refuse(EndReason::ConnectRefused);
    assert_eq!(slow.await.unwrap().err(), Some(EndReason::ConnectRefused));
    // A dropped answer is an END too, and the circuit stays usable.
    let c3 = client.clone();
    let third = tokio::spawn(async move { open_stream(&c3, host, 9).await });
    drop(tokio::time::timeout(WAIT, incoming.recv()).await.unwrap().unwrap());
    assert!(third.await.unwrap().is_err());
    assert!(!client.is_closed());
}

/// Without serving enabled, BEGIN from the virtual hop is a protocol violation: the service's
/// circuit is destroyed, and with it the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_to_an_end_that_does_not_serve_destroys_the_circuit() {
    let (client, svc, _) = joined(false).await;
    assert_eq!(open_stream(&client, "x.allium", 80).await.err(), Some(EndReason::Destroy));
    let closed = tokio::time::timeout(WAIT, svc.recv_control()).await.expect("the service circuit closes");
    assert!(closed.is_none(), "got {closed:?}");
}
