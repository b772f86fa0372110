//! A relay behind a port forward (`relay.advertise_address`): it listens on one address and
//! publishes another, which a TCP forward run by the test leads to its OR port. The
//! authorities' reachability tests, other relays' extends and clients all go through the
//! forward: the consensus lists the relay at the advertised address, and circuits through it
//! carry data.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allium_net::pool::ChannelPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::extra_relay::{free_port, ExtraRelay};
use crate::support::testnet::Testnet;

/// The relay's own address: a /16 of its own, apart from the testnet's `127.k.0.1` nodes.
const NAT_IP: &str = "127.201.0.1";
/// How long the consensus may take to list the relay (testnet voting interval: 10 s).
const LISTED_DEADLINE: Duration = Duration::from_secs(120);

/// A TCP port forward on `listen` to `target`, one pair of threads per connection. Counts the
/// connections it forwarded; stops accepting when dropped.
struct Forward {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forward {
    fn start(listen: IpAddr, target: SocketAddr) -> Forward {
        let l = TcpListener::bind((listen, 0)).expect("bind the forward");
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (conns.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Drop wakes this accept with a connection of its own after setting `stop`.
            for inbound in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(inbound) = inbound {
                    c.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || pipe(inbound, target));
                }
            }
        });
        Forward { addr, conns, stop, thread: Some(thread) }
    }

    fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies bytes both ways between `inbound` and a new connection to `target` until both ends
/// have closed.
fn pipe(inbound: TcpStream, target: SocketAddr) {
    let Ok(outbound) = TcpStream::connect(target) else { return };
    let (Ok(mut in_r), Ok(mut out_w)) = (inbound.try_clone(), outbound.try_clone()) else { return };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut in_r, &mut out_w);
        let _ = out_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut out_r, mut in_w) = (outbound, inbound);
    let _ = std::io::copy(&mut out_r, &mut in_w);
    let _ = in_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[test]
fn a_relay_behind_a_port_forward_is_listed_and_carries_circuits_at_its_advertised_address() {
    let net = Testnet::start(&[]);
    let ip: IpAddr = NAT_IP.parse().unwrap();
    let listen = SocketAddr::new(ip, free_port(ip));
    let forward = Forward::start(ip, listen);
    let advertised = forward.addr;
    assert_ne!(listen.port(), advertised.port());

    let relay = ExtraRelay::start(&net, "relay1", "natrelay", ip, listen.port(), Some(advertised));
    // Listed once the authorities tested it through the forward.
    relay.wait_listed(LISTED_DEADLINE);
    assert!(relay.log().contains(&format!("advertised as {advertised}")), "{}", relay.log());
    let after_listing = forward.connections();
    assert!(after_listing > 0, "the authorities' reachability tests did not come through the forward");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let client_cfg = allium_client::ClientConfig::load(&net.dir.join("client").join("config.toml")).expect("the client's config");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        let dir = allium_directory::fetch_consensus(&client_cfg.network, localhost, now, None).await.expect("the consensus");
        let nat = dir.relays().iter().find(|r| r.nickname == "natrelay").expect("natrelay in the consensus with its microdescriptor").clone();
        assert_eq!(nat.address, advertised, "the consensus lists the advertised address, not the listening one ({listen})");
        let other = dir.relays().iter().find(|r| r.nickname.starts_with("relay")).expect("a middle relay").clone();
        let exit = dir.relays().iter().find(|r| r.nickname.starts_with("exit")).expect("an exit").clone();

        // An echo server as the destination.
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        // The relay as first hop (this client connects to the advertised address), and as a
        // middle hop (another relay extends to it there); each path carries a stream.
        // The other relays fetch the consensus that lists it a few seconds after it appears
        // (refetch window), and refuse to extend to it until then: wait on theirs.
        for hop in [&other, &exit] {
            let node = net.nodes.iter().find(|n| n.addr == hop.address).expect("a node of the test network");
            let (data, cond) = (net.dir.join(&node.name), format!("relays_in_consensus>={}", dir.relays().len()));
            tokio::task::spawn_blocking(move || crate::support::wait_status(&data, &cond, LISTED_DEADLINE, "a relay's consensus lists natrelay")).await.unwrap();
        }
        // (As middle hop the link may exist already, made by either side, so only the first
        // hop's is sure to be a new connection through the forward.)
        for (what, path) in [("first hop", [&nat, &other, &exit]), ("middle hop", [&other, &nat, &exit])] {
            let before = forward.connections();
            let pool = ChannelPool::new(localhost, None);
            let circ = allium_client::circuit::build(&pool, &path).await.unwrap_or_else(|e| panic!("a circuit with natrelay as {what}: {e}"));
            let mut s = crate::support::streams::begin(&circ, echo_addr).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            let sent = crate::support::http::pseudo_random(100_000, 7);
            s.write_all(&sent).await.unwrap();
            let mut got = vec![0u8; sent.len()];
            tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut got)).await.unwrap_or_else(|_| panic!("{what}: no echo")).unwrap();
            assert!(got == sent, "{what}: the echo differs");
            if what == "first hop" {
                assert!(forward.connections() > before, "this client's link to natrelay did not come through the forward");
            }
        }
    });

    // `allium status` reports both addresses.
    let status = relay.status();
    assert_eq!(status["or_port"], listen.to_string(), "{status}");
    assert_eq!(status["advertised_address"], advertised.to_string(), "{status}");
    assert_eq!(status["in_consensus"], true, "{status}");

    drop(relay);
    drop(forward);
}
