//! A connecting client played by the test: the testnet client's config (its fallback
//! directories) and its own circuit manager, driving the sans-IO onion-service pieces directly
//! (fetch and decrypt a descriptor, introduce, rendezvous).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_client::circmgr::CircMgr;
use allium_client::circuit::CircHandle;
use allium_client::{dir_fetch, hs_dir, Bootstrap, ClientConfig};
use allium_directory::NetDir;
use allium_net::pool::ChannelPool;
use allium_proto::doc::ConsensusRelay;
use allium_proto::hs::{blind_public, decrypt, DescBinding, HsDescriptor, IntroList, IntroPoint};
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::RelayMsg;

/// How long a descriptor may take to appear.
const WAIT: Duration = Duration::from_secs(120);

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The connecting client: the testnet client's config (its fallback directories) and its own
/// circuit manager, with a consensus fetched through them.
pub struct Visitor {
    pub cfg: ClientConfig,
    pub circuits: CircMgr,
    pub dir: Arc<NetDir>,
}

impl Visitor {
    pub async fn new(config: &Path) -> Visitor {
        let cfg = ClientConfig::load(config).unwrap();
        let circuits = CircMgr::new(ChannelPool::new(IpAddr::V4(Ipv4Addr::LOCALHOST), None), None, Arc::new(Bootstrap::new()));
        let (dir, _) = dir_fetch::fetch(&cfg, &circuits, None, now()).await.expect("a consensus");
        circuits.prepare_guards(&dir);
        Visitor { cfg, circuits, dir: Arc::new(dir) }
    }

    pub async fn refresh(&mut self) {
        if let Ok((dir, _)) = dir_fetch::fetch(&self.cfg, &self.circuits, Some(&self.dir), now()).await {
            self.circuits.prepare_guards(&dir);
            self.dir = Arc::new(dir);
        }
    }

    /// The service's current descriptor, from one of the responsible HSDirs, verified.
    pub async fn descriptor(&mut self, identity: &[u8; 32]) -> HsDescriptor {
        let deadline = Instant::now() + WAIT;
        loop {
            let p = hs_dir::period_of(&self.dir);
            let blinded = blind_public(identity, p).unwrap();
            for hsdir in hs_dir::responsible_hsdirs(&self.dir, &blinded, p) {
                if let Ok(Some(text)) = hs_dir::fetch(&self.circuits, &self.dir, &hsdir, &blinded).await {
                    return HsDescriptor::parse(&text).unwrap().verify(&blinded).expect("a descriptor signed under the blinded key");
                }
            }
            assert!(Instant::now() < deadline, "no descriptor at any responsible HSDir");
            self.refresh().await;
        }
    }

    /// The service's introduction points, from its descriptor (no client authorization).
    pub async fn intro_points(&mut self, identity: &[u8; 32]) -> Vec<IntroPoint> {
        let d = self.descriptor(identity).await;
        let list: IntroList = decrypt(identity, &DescBinding::of(&d), &d.encrypted, None).expect("decrypts with the address alone");
        list.intro_points
    }

    pub fn relay(&self, id: &[u8; 32]) -> ConsensusRelay {
        self.dir.by_id(&RelayId(*id)).cloned().expect("the relay is in the consensus")
    }

    /// A rendezvous point that is not `avoid` (the introduction point).
    pub fn rendezvous_point(&self, avoid: &[u8; 32]) -> ConsensusRelay {
        self.dir.relays().iter().find(|r| &r.identity.0 != avoid).cloned().expect("another relay")
    }

    /// A circuit to `rp` with `cookie` filed there.
    pub async fn rendezvous_circuit(&self, rp: &ConsensusRelay, establish: RelayMsg) -> CircHandle {
        let rend = self.circuits.to_relay(&self.dir, rp).await.expect("rendezvous circuit");
        let (_, m) = rend.control(establish).await.unwrap();
        assert!(matches!(m, RelayMsg::RendezvousEstablished { .. }), "got {m:?}");
        rend
    }

    /// Sends `introduce1` through a fresh circuit to the introduction point; expects success.
    pub async fn introduce(&self, point: &IntroPoint, introduce1: RelayMsg) {
        let ip = self.relay(&point.relay.identity);
        let intro = self.circuits.to_relay(&self.dir, &ip).await.expect("introduction circuit");
        let (_, ack) = intro.control(introduce1).await.unwrap();
        assert!(matches!(ack, RelayMsg::IntroduceAck { status: 0, .. }), "got {ack:?}");
    }
}


/// What an introduction flood sent and got through, and its stop switch.
#[derive(Default)]
pub struct FloodCounts {
    pub sent: std::sync::atomic::AtomicUsize,
    pub forwarded: std::sync::atomic::AtomicUsize,
    pub stop: std::sync::atomic::AtomicBool,
    /// Notified (under `lock`) whenever a count changes.
    changed: std::sync::Condvar,
    lock: std::sync::Mutex<()>,
}

impl FloodCounts {
    /// Wakes whoever waits in [`Self::wait_refused`].
    fn counted(&self) {
        let _held = self.lock.lock().unwrap();
        self.changed.notify_all();
    }

    /// Blocks until at least `n` introductions sent were not (or not yet) forwarded, at most
    /// `limit`; whether that happened.
    #[allow(dead_code)]
    pub fn wait_refused(&self, n: usize, limit: Duration) -> bool {
        use std::sync::atomic::Ordering;
        let deadline = std::time::Instant::now() + limit;
        let mut held = self.lock.lock().unwrap();
        while self.sent.load(Ordering::Relaxed) < self.forwarded.load(Ordering::Relaxed) + n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            held = self.changed.wait_timeout(held, left).unwrap().0;
        }
        true
    }
}

/// Starts `tasks` attackers (THREATS A29), each sending valid INTRODUCE1s without proof of work
/// to the service `identity`'s `points` in turn, one per fresh circuit, as fast as it can, until
/// `counts.stop`. Each names a rendezvous point where no cookie waits: the service's work on it
/// is wasted, as an attacker wants.
pub fn flood_introductions(v: Arc<Visitor>, identity: [u8; 32], points: Vec<IntroPoint>, tasks: usize, counts: Arc<FloodCounts>) -> Vec<tokio::task::JoinHandle<()>> {
    use allium_proto::hs::connect::Attempt;
    use allium_proto::relay_msg::{introduce_status, ExtendTarget};
    use std::sync::atomic::Ordering;
    (0..tasks)
        .map(|i| {
            let (v, points, counts) = (v.clone(), points.clone(), counts.clone());
            tokio::spawn(async move {
                let mut n = i;
                while !counts.stop.load(Ordering::Relaxed) {
                    let point = &points[n % points.len()];
                    n += 1;
                    let rp = v.rendezvous_point(&point.relay.identity);
                    let target = ExtendTarget { addr: rp.address, identity: rp.identity.0, link_key: rp.link_key };
                    let attempt = Attempt::new(&mut rand::rngs::OsRng, &identity, point, target, rp.onion_key, 0).expect("an introduction");
                    let Ok(intro) = v.circuits.to_relay(&v.dir, &v.relay(&point.relay.identity)).await else { continue };
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    counts.counted();
                    let ack = tokio::time::timeout(Duration::from_secs(30), intro.control(attempt.introduce1)).await;
                    if let Ok(Ok((_, RelayMsg::IntroduceAck { status: introduce_status::SUCCESS, .. }))) = ack {
                        counts.forwarded.fetch_add(1, Ordering::Relaxed);
                        counts.counted();
                    }
                }
            })
        })
        .collect()
}
