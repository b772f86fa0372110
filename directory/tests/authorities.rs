//! Authorities on real loopback TCP (ephemeral ports) with a 2-second voting interval: relays
//! publish, the authorities vote, agree and sign, and a client fetches and verifies the result.
//! Every wait polls for the event with a deadline.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_directory::authkeys::{certify_into, SIGNING_CERT_FILE, SIGNING_KEY_FILE};
use allium_directory::{
    fetch_consensus, publish_descriptor, run_authority_with_status, AuthorityConfig, AuthorityKeys, AuthoritySection, AuthorityStatus, NetDir,
};
use allium_net::config::{AuthorityEntry, NetworkConfig, NodeConfig};
use allium_net::keys::{load_or_create, IDENTITY_FILE};
use allium_net::limits::counters::LIMITS;
use allium_net::limits::LimitsConfig;
use allium_proto::doc::{certify_link_key, RelayDescriptor, RelayFlags};
use allium_proto::ids::RelayId;
use allium_proto::policy::ExitPolicy;
use ed25519_dalek::SigningKey;
use tokio::net::TcpListener;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const INTERVAL: u64 = 2;
const DEADLINE: Duration = Duration::from_secs(90);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "allium-dirtest-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

struct Testnet {
    net: NetworkConfig,
    /// Each authority's data directory, then the directories holding offline identities.
    dirs: Vec<PathBuf>,
    /// What each started authority noticed about clocks.
    status: Vec<Arc<AuthorityStatus>>,
}

impl Drop for Testnet {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Makes `n` authorities and starts those with `start[i]` set. Each listener is bound before
/// the configs are written, so every config knows every port.
async fn testnet(n: usize, start: &[bool]) -> Testnet {
    testnet_with(n, start, &[]).await
}

/// [`testnet`] where authority `i` has its identity key kept elsewhere when `offline[i]` is
/// set: its data directory holds only what `allium keygen --authority --out` writes.
async fn testnet_with(n: usize, start: &[bool], offline: &[bool]) -> Testnet {
    testnet_with_lifetime(n, start, offline, 86_400).await
}

/// [`testnet_with`], the offline authorities' certificates valid for `cert_secs` from now.
async fn testnet_with_lifetime(n: usize, start: &[bool], offline: &[bool], cert_secs: u64) -> Testnet {
    testnet_full(n, start, offline, cert_secs, INTERVAL, &[]).await
}

/// [`testnet_with_lifetime`] with voting interval `interval`, authority `i`'s clock shifted by
/// `offsets[i]` seconds (`authority.dangerous_clock_offset_secs`; none where not given).
async fn testnet_full(n: usize, start: &[bool], offline: &[bool], cert_secs: u64, interval: u64, offsets: &[i64]) -> Testnet {
    testnet_limits(n, start, offline, cert_secs, interval, offsets, LimitsConfig::default()).await
}

/// [`testnet_full`] with every started authority's `[limits]` set to `limits`.
async fn testnet_limits(n: usize, start: &[bool], offline: &[bool], cert_secs: u64, interval: u64, offsets: &[i64], limits: LimitsConfig) -> Testnet {
    let mut listeners = Vec::new();
    let mut keys: Vec<AuthorityKeys> = Vec::new();
    let mut dirs = Vec::new();
    let mut offline_dirs = Vec::new();
    let mut entries = Vec::new();
    for i in 0..n {
        let l = TcpListener::bind(SocketAddr::new(LOCALHOST, 0)).await.unwrap();
        let dir = temp_dir(&format!("auth{i}"));
        if offline.get(i).copied().unwrap_or(false) {
            let id_dir = temp_dir(&format!("auth{i}-identity"));
            certify_into(&id_dir, &dir, cert_secs, now()).unwrap();
            assert!(!dir.join(IDENTITY_FILE).exists());
            offline_dirs.push(id_dir);
        }
        let k = AuthorityKeys::load(&dir, now()).unwrap();
        entries.push(AuthorityEntry { name: format!("auth{i}"), identity: k.relay_id(), address: l.local_addr().unwrap() });
        listeners.push(l);
        keys.push(k);
        dirs.push(dir);
    }
    let net = NetworkConfig { dangerous_testnet: true, dangerous_link_delay_ms: 0, authorities: entries };
    let status: Vec<Arc<AuthorityStatus>> = (0..n).map(|_| Arc::default()).collect();
    for (i, (l, k)) in listeners.into_iter().zip(keys).enumerate() {
        if !start[i] {
            // Never started: its port is closed.
            drop(l);
            continue;
        }
        let cfg = AuthorityConfig {
            node: NodeConfig { nickname: format!("auth{i}"), data_dir: dirs[i].clone(), address: LOCALHOST, metrics_listen: None, log_level: None },
            network: net.clone(),
            authority: AuthoritySection {
                dir_port: net.authorities[i].address.port(),
                voting_interval_secs: Some(interval),
                dangerous_clock_offset_secs: offsets.get(i).copied(),
                ..Default::default()
            },
            limits: limits.clone(),
        };
        let st = status[i].clone();
        tokio::spawn(async move {
            let r = run_authority_with_status(cfg, k, l, st).await;
            panic!("authority {i} stopped: {r:?}");
        });
    }
    dirs.extend(offline_dirs);
    Testnet { net, dirs, status }
}

/// A relay in this process that completes link handshakes (all the authorities test) until it
/// is stopped.
struct FakeRelay {
    key: SigningKey,
    desc: RelayDescriptor,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRelay {
    fn stop(&self) {
        self.task.abort();
    }
}

async fn fake_relay(seed: u8) -> FakeRelay {
    let dir = temp_dir(&format!("relay{seed}"));
    let keys = load_or_create(&dir).unwrap();
    // The keys are in memory now; nothing reads the directory again.
    let _ = std::fs::remove_dir_all(&dir);
    // Each on its own address: an authority lists at most two relays per address.
    let ip = std::net::IpAddr::from([127, 0, seed, 1]);
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let k = keys.identity.clone();
    let link = keys.link_public();
    let secret = keys.link.to_bytes();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let _ = allium_net::link::accept(s, &secret).await;
            });
        }
    });
    let desc = RelayDescriptor {
        nickname: format!("relay{seed}"),
        identity: RelayId(k.verifying_key().to_bytes()),
        onion_key: [seed ^ 0xf0; 32],
        link_key: link,
        link_cert: certify_link_key(&k, &link),
        address: SocketAddr::new(ip, port),
        policy: if seed & 1 == 0 { ExitPolicy::default_exit() } else { ExitPolicy::reject_all() },
        family: vec![],
        bandwidth: 1000 * u64::from(seed),
        protocols: allium_directory::implemented_protocols(),
        published: now(),
        platform: None,
    };
    FakeRelay { key: k, desc, task }
}

/// Sends one request and returns the status and body.
async fn raw(addr: SocketAddr, method: &str, path: &str, body: String) -> (u16, String) {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{addr}{path}");
    let req = if method == "POST" { c.post(url).body(body) } else { c.get(url) };
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

/// Fetches the consensus until `done` holds for it, again each time an authority publishes one
/// (or notes something else), or panics at the deadline with the last thing seen.
async fn wait_for_consensus(tn: &Testnet, done: impl Fn(&NetDir) -> bool) -> NetDir {
    let start = Instant::now();
    let mut last = String::from("nothing fetched yet");
    while start.elapsed() < DEADLINE {
        let seen = versions(tn);
        match fetch_consensus(&tn.net, LOCALHOST, now(), None).await {
            Ok(nd) if done(&nd) => return nd,
            Ok(nd) => last = format!("consensus with {} relays, {} signatures", nd.relays().len(), nd.signers().len()),
            Err(e) => last = e.to_string(),
        }
        any_change(tn, &seen, DEADLINE.saturating_sub(start.elapsed())).await;
    }
    panic!("no matching consensus within {DEADLINE:?}; last: {last}");
}

/// Each started authority's status version.
fn versions(tn: &Testnet) -> Vec<u64> {
    tn.status.iter().map(|s| s.version()).collect()
}

/// Waits (at most `limit`) until some authority's status changed since `seen` ([`versions`]).
async fn any_change(tn: &Testnet, seen: &[u64], limit: Duration) {
    let mut waits = tokio::task::JoinSet::new();
    for (s, v) in tn.status.iter().zip(seen) {
        let (s, v) = (s.clone(), *v);
        waits.spawn(async move { s.changed_since(v).await });
    }
    let _ = tokio::time::timeout(limit, waits.join_next()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_authorities_publish_a_consensus_signed_by_all() {
    let tn = testnet(3, &[true, true, true]).await;
    let mut relays: Vec<(SigningKey, RelayDescriptor)> = Vec::new();
    let mut fakes = Vec::new();
    for s in 1..=3 {
        let f = fake_relay(s).await;
        relays.push((f.key.clone(), f.desc.clone()));
        fakes.push(f);
    }
    for (k, d) in &relays {
        assert_eq!(publish_descriptor(&tn.net, LOCALHOST, &d.encode_signed(k)).await, 3);
    }

    // A9: a descriptor that claims relay 1's identity but is signed by another key.
    let mut forged = relays[0].1.clone();
    forged.published += 1;
    let forged_text = forged.encode_signed(&SigningKey::from_bytes(&[77; 32]));
    assert_eq!(publish_descriptor(&tn.net, LOCALHOST, &forged_text).await, 0);
    let auth0 = tn.net.authorities[0].address;
    let (status, body) = raw(auth0, "POST", "/allium/v1/descriptor", forged_text).await;
    assert_eq!(status, 400);
    assert!(body.contains("signature") && body.trim_end().lines().count() == 1, "{body}");
    // A3: garbage, oversized bodies and bad paths are refused without harm.
    assert_eq!(raw(auth0, "POST", "/allium/v1/descriptor", "garbage\n".into()).await.0, 400);
    assert_eq!(raw(auth0, "POST", "/allium/v1/descriptor", "x".repeat(17 * 1024)).await.0, 413);
    assert_eq!(raw(auth0, "POST", "/allium/v1/signature", "x".repeat(2048)).await.0, 413);
    // A vote naming no peer authority is refused before it is parsed.
    assert_eq!(raw(auth0, "POST", "/allium/v1/vote", "allium-vote 1\n".into()).await.0, 403);
    assert_eq!(raw(auth0, "GET", "/allium/v1/vote/notanumber", String::new()).await.0, 400);
    assert_eq!(raw(auth0, "GET", "/allium/v1/vote/12345", String::new()).await.0, 404);

    let want: Vec<RelayId> = relays.iter().map(|(_, d)| d.identity).collect();
    let nd = wait_for_consensus(&tn, |nd| nd.signers().len() == 3 && want.iter().all(|id| nd.by_id(id).is_some())).await;
    assert_eq!(nd.relays().len(), 3);
    for (_, d) in &relays {
        let r = nd.by_id(&d.identity).unwrap();
        let mut want = d.to_entry();
        (want.flags, want.weight) = (r.flags, r.weight);
        // The consensus and the microdescriptor carry everything but the descriptor-only fields.
        assert_eq!(r.descriptor_digest, allium_proto::doc::Microdesc::of_relay(&want).digest());
        (want.bandwidth, want.published, want.descriptor_digest) = (r.weight, 0, r.descriptor_digest);
        assert_eq!(*r, want, "the consensus carries the descriptor as published, not the forgery");
        assert!(r.flags.contains(RelayFlags::RUNNING | RelayFlags::VALID | RelayFlags::GUARD | RelayFlags::HSDIR), "testnet: {}", r.flags);
        assert_eq!(r.weight, d.bandwidth);
        assert!(r.link_cert_ok());
    }
    // A regular round's lifetime, or a bootstrap round's (a first interval ending at the first
    // period start whose vote comes after it): both as the schedule says.
    let schedule = allium_directory::schedule::Schedule::new(INTERVAL);
    assert_eq!(nd.consensus().lifetime(), schedule.lifetime(nd.valid_after()));
    assert_eq!(nd.valid_until() - nd.fresh_until(), 2 * INTERVAL);
    // The text it serves verifies again, on its own.
    let ids: Vec<RelayId> = tn.net.authorities.iter().map(|a| a.identity).collect();
    let again = NetDir::from_text(nd.consensus_text(), &ids, now()).unwrap();
    assert_eq!(again.consensus_text(), nd.consensus_text());
    // Each authority saved a consensus in its data directory.
    wait_until(&tn, "consensus files written", || tn.dirs[..3].iter().all(|d| d.join(allium_directory::authority::CONSENSUS_FILE).exists())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a34_one_authority_never_started_consensus_signed_by_two() {
    let tn = testnet(3, &[true, true, false]).await;
    let fakes = [fake_relay(11).await, fake_relay(12).await];
    let relays: Vec<(SigningKey, RelayDescriptor)> = fakes.iter().map(|f| (f.key.clone(), f.desc.clone())).collect();
    for (k, d) in &relays {
        assert_eq!(publish_descriptor(&tn.net, LOCALHOST, &d.encode_signed(k)).await, 2);
    }
    let want: Vec<RelayId> = relays.iter().map(|(_, d)| d.identity).collect();
    let nd = wait_for_consensus(&tn, |nd| want.iter().all(|id| nd.by_id(id).is_some())).await;
    let signers = nd.signers();
    assert_eq!(signers.len(), 2);
    assert!(!signers.contains(&tn.net.authorities[2].identity));
    assert_eq!(nd.consensus().authorities().len(), 2, "two votes made it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_with_no_authority_up_says_why() {
    let tn = testnet(2, &[false, false]).await;
    let err = fetch_consensus(&tn.net, LOCALHOST, now(), None).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("auth0") && msg.contains("auth1") && msg.contains("connection"), "{msg}");
    assert!(!msg.contains("127.0.0.1"), "no addresses in the error: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_that_stops_answering_loses_running_within_one_round() {
    let tn = testnet(3, &[true, true, true]).await;
    let a = fake_relay(21).await;
    let b = fake_relay(22).await;
    for f in [&a, &b] {
        assert_eq!(publish_descriptor(&tn.net, LOCALHOST, &f.desc.encode_signed(&f.key)).await, 3);
    }
    let (ia, ib) = (a.desc.identity, b.desc.identity);
    let nd = wait_for_consensus(&tn, |nd| nd.by_id(&ia).is_some() && nd.by_id(&ib).is_some()).await;
    assert!(nd.by_id(&ia).unwrap().flags.contains(RelayFlags::RUNNING));
    // Relay a stops answering (its descriptor is still fresh and held by every authority).
    a.stop();
    let stopped_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    // A regular round's reachability tests start a quarter interval before its votes, which are
    // made half an interval before its valid-after T: every regular consensus whose tests all
    // came after the stop (T − 3I/4 later than it) drops the relay (one failed test is enough on
    // a test network). Whichever such consensus is fetched first (a loaded machine may delay
    // rounds) is checked; none may list it.
    let tested_after_stop = |nd: &NetDir| nd.valid_after() % INTERVAL == 0 && nd.valid_after() * 1000 > stopped_ms + INTERVAL * 750;
    let nd = wait_for_consensus(&tn, tested_after_stop).await;
    assert!(nd.by_id(&ia).is_none(), "a consensus voted after the stop ({}) lists the stopped relay", nd.valid_after());
    assert!(nd.usable_relays().all(|r| r.identity != ia));
    // The relay still answering stays listed (in that consensus, or the next if a test of it
    // timed out on a loaded machine).
    let later = wait_for_consensus(&tn, |n| n.valid_after() >= nd.valid_after() && n.by_id(&ib).is_some()).await;
    assert!(later.by_id(&ia).is_none());
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_consensuses_carry_different_shared_random_values() {
    let tn = testnet(3, &[true, true, true]).await;
    // From the second period on, every consensus has a value made from all three reveals.
    let first = wait_for_consensus(&tn, |nd| nd.shared_random().current.is_some_and(|v| v.reveals == 3)).await;
    let v1 = first.shared_random().current.unwrap();
    let second = wait_for_consensus(&tn, |nd| nd.valid_after() > first.valid_after() && nd.shared_random().current.is_some()).await;
    let v2 = second.shared_random().current.unwrap();
    assert_ne!(v1.value, v2.value, "the value changes every period");
    if second.valid_after() == first.valid_after() + INTERVAL {
        assert_eq!(second.shared_random().previous, Some(v1), "previous is the last period's current");
    }
}

/// "Offline-able" identities: authorities whose data directories hold only the signing key,
/// its certificate, the link key and the link-key certificate still vote, sign and publish, and
/// their signatures count (A10: with certificates from the configured identities).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a10_authorities_without_their_identity_key_sign_the_consensus() {
    let tn = testnet_with(3, &[true, true, true], &[true, true, false]).await;
    let f = fake_relay(31).await;
    assert_eq!(publish_descriptor(&tn.net, LOCALHOST, &f.desc.encode_signed(&f.key)).await, 3);
    let id = f.desc.identity;
    let nd = wait_for_consensus(&tn, |nd| nd.signers().len() == 3 && nd.by_id(&id).is_some()).await;
    for (i, d) in tn.dirs[..2].iter().enumerate() {
        assert!(!d.join(IDENTITY_FILE).exists(), "authority {i} ran without its identity key");
        assert!(d.join(SIGNING_KEY_FILE).exists());
        let cert = allium_proto::doc::AuthorityCert::parse(&std::fs::read_to_string(d.join(SIGNING_CERT_FILE)).unwrap()).unwrap();
        let used = nd.consensus().signatures().iter().find(|s| s.identity() == tn.net.authorities[i].identity).expect("signed").cert;
        assert_eq!(used, cert, "authority {i} signed with the certified key from its data directory");
    }
}

/// A10 on the running network: once an offline authority's signing-key certificate expires, its
/// votes and signatures stop counting, and the other two keep publishing a consensus that
/// clients accept with their two signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a10_authority_whose_certificate_expired_stops_counting() {
    const CERT_SECS: u64 = 8;
    let tn = testnet_with_lifetime(3, &[true, true, true], &[true, false, false], CERT_SECS).await;
    let expires = now() + CERT_SECS;
    let stale = tn.net.authorities[0].identity;
    let nd = wait_for_consensus(&tn, |nd| nd.valid_after() > expires + INTERVAL && nd.signers().len() == 2).await;
    assert!(!nd.signers().contains(&stale), "the expired authority's signature does not count");
    assert!(!nd.consensus().authorities().contains(&stale), "nor does its vote");
}

/// Waits until `cond` holds, checking again each time an authority's status changes, or panics
/// at the deadline saying what was awaited.
async fn wait_until(tn: &Testnet, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    loop {
        let seen = versions(tn);
        if cond() {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "not seen within {DEADLINE:?}: {what}");
        any_change(tn, &seen, DEADLINE.saturating_sub(start.elapsed())).await;
    }
}

/// A34.5 / A35: an authority whose clock is 10 minutes ahead is excluded, clearly: its peers
/// refuse its votes saying how far off they are, it says its own clock is probably wrong, they
/// say its clock is ahead of theirs; the other two keep publishing consensuses signed by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a35_authority_with_skewed_clock_is_excluded_and_the_others_continue() {
    skewed_authority_is_excluded(600).await;
}

/// A35, the other way: 10 minutes behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a35_authority_whose_clock_is_behind_is_excluded_too() {
    skewed_authority_is_excluded(-600).await;
}

/// Whether `text` holds `before` N `after` with N seconds within 5 of 600.
fn about_600(text: &str, before: &str, after: &str) -> bool {
    text.match_indices(after).any(|(end, _)| {
        let head = &text[..end];
        head.rfind(before).and_then(|i| head[i + before.len()..].parse::<u64>().ok()).is_some_and(|n| (595..=605).contains(&n))
    })
}

async fn skewed_authority_is_excluded(offset: i64) {
    let (vote_dir, peer_dir, own_dir) = if offset > 0 { ("ahead of", "ahead of", "behind") } else { ("behind", "behind", "ahead of") };
    // An 8 s interval: votes between the two in sync may arrive up to 2 s late (a quarter
    // interval) before they too are refused as off schedule. At 2 s (0.5 s) a loaded CI machine
    // delivered one too late, and an in-sync authority blamed its own clock.
    let tn = testnet_full(3, &[true, true, true], &[], 86_400, 8, &[0, 0, offset]).await;
    let ids: Vec<RelayId> = tn.net.authorities.iter().map(|a| a.identity).collect();
    let skewed = &tn.status[2];
    wait_until(&tn, "the skewed authority's warning about its own clock", || skewed.clock_report().periods_refused_for_skew >= 1).await;
    let own = skewed.clock_report().own_clock_warning.unwrap();
    assert!(own.contains("refused for clock skew by 2 of 2 peers (auth0, auth1)"), "{own}");
    // The peers measure against their own clocks when the vote arrives, so a loaded machine's
    // delivery delay shows in the figure (CI once saw "599 s"): about 600 s, give or take 5.
    assert!(own.contains("vote for valid-after "), "{own}");
    assert!(about_600(&own, "is ", &format!(" s {vote_dir} this authority's schedule (clock skew?)")), "{own}");
    assert!(about_600(&own, "ours is about ", &format!(" s {vote_dir} theirs")), "{own}");
    assert!(own.contains("this authority's clock is probably wrong"), "{own}");
    let range = if offset > 0 { 595_000..=605_000 } else { -605_000..=-595_000 };
    for st in &tn.status[..2] {
        wait_until(&tn, "auth2's clock reported off", || st.clock_report().peer_clocks.contains_key("auth2")).await;
        let (off, msg) = st.clock_report().peer_clocks["auth2"].clone();
        assert!(range.contains(&off), "{off} {msg}");
        assert!(msg.starts_with("auth2's clock is ") && about_600(&msg, "auth2's clock is ", &format!(" s {peer_dir} ours")), "{msg}");
        assert!(!st.clock_report().peer_clocks.contains_key("auth0") && !st.clock_report().peer_clocks.contains_key("auth1"));
        assert_eq!(st.clock_report().periods_refused_for_skew, 0, "the authorities in sync do not blame themselves");
    }
    // From its side, the peers' clocks are off the other way.
    let theirs = skewed.clock_report().peer_clocks;
    assert_eq!(theirs.len(), 2, "{theirs:?}");
    assert!(theirs.values().all(|(off, msg)| range.contains(&-off) && msg.contains(&format!(" s {own_dir} ours"))), "{theirs:?}");
    // Consecutive consensuses, each signed by the two in sync, none with the skewed one's vote.
    let mut last = 0;
    for _ in 0..3 {
        let nd = wait_for_consensus(&tn, |nd| nd.valid_after() > last).await;
        let signers = nd.signers();
        assert_eq!(signers.len(), 2, "valid-after {}", nd.valid_after());
        assert!(signers.contains(&ids[0]) && signers.contains(&ids[1]));
        assert!(!nd.consensus().authorities().contains(&ids[2]), "the skewed authority's vote made it in");
        last = nd.valid_after();
    }
    // It never published one itself.
    assert_eq!(raw(tn.net.authorities[2].address, "GET", "/allium/v1/consensus", String::new()).await.0, 404);
}

/// A35: an authority 1 s off (within the quarter-interval tolerance of a 10 s interval) still
/// takes part: its vote and signature are in the consensus, and nobody warns about clocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a35_authority_one_second_off_still_takes_part() {
    let tn = testnet_full(3, &[true, true, true], &[], 86_400, 10, &[0, 0, 1]).await;
    let ids: Vec<RelayId> = tn.net.authorities.iter().map(|a| a.identity).collect();
    let nd = wait_for_consensus(&tn, |nd| nd.signers().len() == 3).await;
    assert!(nd.signers().contains(&ids[2]));
    assert_eq!(nd.consensus().authorities().len(), 3, "all three votes made it");
    for st in &tn.status {
        assert_eq!(st.clock_report(), Default::default());
    }
}

/// THREATS A4 / issue 12 point 6: a pushed vote is checked before it is parsed. A copy of a
/// vote already held is "already held", and the same header over another body a conflict
/// (409), although that body would not even parse; junk naming a peer is parsed and refused
/// until that peer's budget of refused pushes is spent, then refused unparsed (429). The peer
/// named loses nothing: its votes still count in the consensuses that follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_pushed_votes_are_checked_before_parsing_and_the_real_voter_still_counts() {
    let tn = testnet(3, &[true, true, true]).await;
    let auth0 = tn.net.authorities[0].identity;
    let (a0, a1) = (tn.net.authorities[0].address, tn.net.authorities[1].address);
    let first = wait_for_consensus(&tn, |nd| nd.signers().len() == 3).await.valid_after();

    // Copies of auth0's vote for a period auth1 still holds (a few rounds are kept: retried
    // with a newer consensus if the round passed meanwhile).
    let mut answers = Vec::new();
    for _ in 0..5 {
        let va = wait_for_consensus(&tn, |nd| nd.signers().len() == 3).await.valid_after();
        let (status, vote) = raw(a0, "GET", &format!("/allium/v1/vote/{va}"), String::new()).await;
        assert_eq!(status, 200, "auth0 serves its vote for the consensus it signed: {vote}");
        let same = raw(a1, "POST", "/allium/v1/vote", vote.clone()).await;
        let other = raw(a1, "POST", "/allium/v1/vote", format!("{vote}a line that does not parse\n")).await;
        if same == (200, "already held\n".to_string()) && other.0 == 409 {
            answers.clear();
            break;
        }
        answers.push((same, other));
    }
    assert!(answers.is_empty(), "a copy was not 'already held' and a changed body not 409: {answers:?}");

    // Junk naming auth0 for a period nobody holds: 400 while the budget lasts, then 429.
    let junk = format!("allium-vote 1\nvalid-after {}\nvoter {}\nnonsense\n", first + 1_000_000, auth0.fingerprint());
    let mut statuses = Vec::new();
    while statuses.len() < 20 && statuses.last() != Some(&429) {
        statuses.push(raw(a1, "POST", "/allium/v1/vote", junk.clone()).await.0);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 400 || *s == 429), "{statuses:?}");

    // auth0's vote still counts: a later consensus made with its vote, signed by all three.
    let spent = now();
    let later = wait_for_consensus(&tn, |nd| nd.valid_after() > spent + INTERVAL && nd.signers().len() == 3).await;
    assert!(later.consensus().authorities().contains(&auth0), "auth0's vote was not used");
}

/// The header lines of a vote naming `voter`, for a period nobody holds.
fn vote_header(voter: RelayId) -> String {
    let t = now() + 1_000_000;
    format!("allium-vote 1\nvalid-after {t}\nfresh-until {}\nvalid-until {}\nvoter {}\n", t + 10, t + 30, voter.fingerprint())
}

/// Opens a connection to `addr` and sends a vote push's request head announcing `len` bytes
/// of body, then `sent`, the start of that body.
async fn start_push(addr: SocketAddr, len: usize, sent: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /allium/v1/vote HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    s
}

/// Reads one HTTP response (head and `Content-Length` body) or up to EOF, within 30 s; panics
/// if none arrives by then.
async fn read_response(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end].lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()));
                if len.is_some_and(|n| got.len() >= end + 4 + n) {
                    return text;
                }
            }
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return text,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("no answer within 30 s")
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"))
}

/// A4 (vote bodies cost memory before the voter is checked): a push whose header names no
/// authority of the network is refused (403, counted) once its header lines have arrived,
/// while it still announces 8 MiB it never sends; so is one whose first
/// `VOTE_HEADER_PREFIX` bytes name no voter at all. The authority does not wait for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_a_strangers_vote_push_is_refused_after_its_header_not_its_body() {
    use allium_directory::server::VOTE_HEADER_PREFIX;
    use allium_proto::doc::MAX_VOTE_LEN;
    let tn = testnet(3, &[true, false, false]).await;
    let a0 = tn.net.authorities[0].address;

    let before = LIMITS.votes_from_strangers.load(Ordering::Relaxed);
    let header = vote_header(RelayId([7; 32]));
    let mut s = start_push(a0, MAX_VOTE_LEN, header.as_bytes()).await;
    let resp = read_response(&mut s).await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert!(resp.contains("not a vote from another authority of this network"), "{resp}");
    assert!(LIMITS.votes_from_strangers.load(Ordering::Relaxed) > before, "counted");

    // No voter line in the first VOTE_HEADER_PREFIX bytes: refused once they have arrived.
    let before = LIMITS.votes_from_strangers.load(Ordering::Relaxed);
    let junk = "x".repeat(63) + "\n";
    let prefix = junk.repeat(VOTE_HEADER_PREFIX / junk.len());
    assert_eq!(prefix.len(), VOTE_HEADER_PREFIX);
    let mut s = start_push(a0, MAX_VOTE_LEN, prefix.as_bytes()).await;
    let resp = read_response(&mut s).await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert!(LIMITS.votes_from_strangers.load(Ordering::Relaxed) > before, "counted");

    // Over the cap by its Content-Length: 413 at once, as before.
    let mut s = start_push(a0, MAX_VOTE_LEN + 1, b"").await;
    assert_eq!(status_of(&read_response(&mut s).await), 413);
}

/// A4: at most `MAX_VOTE_PUSHES_IN_FLIGHT` pushes naming one peer are read at a time (memory
/// for pushed votes is bounded by peers x that x 8 MiB). One more push naming it, while those
/// are still arriving, is refused at once (503, counted); once they are answered, their
/// places are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_concurrent_vote_pushes_naming_one_peer_beyond_the_cap_are_refused_at_once() {
    use allium_directory::vote_gate::MAX_VOTE_PUSHES_IN_FLIGHT;
    use tokio::io::AsyncWriteExt;
    // Pushes held open must not be closed as idle, and their refusals must not spend the
    // voter's budget of refused pushes (429) meanwhile.
    let limits = LimitsConfig { dir_idle_timeout_secs: 600, vote_push_burst: 1000, ..Default::default() };
    let tn = testnet_limits(3, &[true, false, false], &[], 86_400, INTERVAL, &[], limits).await;
    let a0 = tn.net.authorities[0].address;
    let header = vote_header(tn.net.authorities[1].identity);
    let rest = "nonsense\n";
    let len = header.len() + rest.len();

    let before = LIMITS.vote_pushes_in_flight.load(Ordering::Relaxed);
    let mut reads = tokio::task::JoinSet::new();
    let mut writers = Vec::new();
    for i in 0..=MAX_VOTE_PUSHES_IN_FLIGHT {
        let (mut r, w) = start_push(a0, len, header.as_bytes()).await.into_split();
        writers.push(w);
        reads.spawn(async move { (i, read_response(&mut r).await) });
    }
    // Every push has sent its header and waits for the rest: the first answer is the refusal
    // of the one beyond the cap.
    let (refused, resp) = reads.join_next().await.unwrap().unwrap();
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert!(LIMITS.vote_pushes_in_flight.load(Ordering::Relaxed) > before, "counted");

    // The others complete their bodies and are answered (the body does not parse).
    for (i, w) in writers.iter_mut().enumerate() {
        if i != refused {
            w.write_all(rest.as_bytes()).await.unwrap();
        }
    }
    while let Some(j) = reads.join_next().await {
        let (_, resp) = j.unwrap();
        assert_eq!(status_of(&resp), 400, "{resp}");
    }
    // Their places were given back: a further push naming that peer is read (and refused as
    // junk, not as busy).
    let (status, body) = raw(a0, "POST", "/allium/v1/vote", format!("{header}{rest}")).await;
    assert_eq!(status, 400, "{body}");
}

/// A4: a pushed vote whose body has not arrived in full `vote_read_timeout_secs` (1 s here)
/// after its request is refused 408 and counted, and gives back its place among the pushes
/// naming its voter (pushes that trickle in cannot keep a peer's real pushes out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_a_vote_push_that_trickles_is_refused_at_the_read_timeout() {
    use allium_directory::vote_gate::MAX_VOTE_PUSHES_IN_FLIGHT;
    let limits = LimitsConfig { dir_idle_timeout_secs: 600, vote_push_burst: 1000, vote_read_timeout_secs: 1, ..Default::default() };
    let tn = testnet_limits(3, &[true, false, false], &[], 86_400, INTERVAL, &[], limits).await;
    let a0 = tn.net.authorities[0].address;
    let header = vote_header(tn.net.authorities[1].identity);
    let before = LIMITS.vote_pushes_too_slow.load(Ordering::Relaxed);
    // As many pushes as are read at a time send their header and never the rest of the 64 KiB
    // they announce.
    let mut held = Vec::new();
    for _ in 0..MAX_VOTE_PUSHES_IN_FLIGHT {
        held.push(start_push(a0, header.len() + 65_536, header.as_bytes()).await);
    }
    for s in &mut held {
        let resp = read_response(s).await;
        assert_eq!(status_of(&resp), 408, "{resp}");
    }
    assert!(LIMITS.vote_pushes_too_slow.load(Ordering::Relaxed) >= before + MAX_VOTE_PUSHES_IN_FLIGHT as u64, "counted");
    // Their places are free: a whole push naming that peer is read (and refused as junk, not
    // as busy).
    let (status, body) = raw(a0, "POST", "/allium/v1/vote", format!("{header}nonsense\n")).await;
    assert_eq!(status, 400, "{body}");
}

/// A24 (slow loris at the directory port): a client that sends one byte of a request head
/// every 300 ms never lets the idle timeout (15 s) fire, but is closed once the head is not
/// complete `dir_header_timeout_secs` (1 s here) after its first byte, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a24_slow_loris_on_the_directory_port_is_closed_at_the_header_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = LimitsConfig { dir_header_timeout_secs: 1, ..Default::default() };
    assert_eq!(limits.dir_idle_timeout_secs, 15);
    let tn = testnet_limits(3, &[true, false, false], &[], 86_400, INTERVAL, &[], limits).await;
    let a0 = tn.net.authorities[0].address;

    // An ordinary request is answered.
    let (status, _) = raw(a0, "GET", "/allium/v1/consensus", String::new()).await;
    assert!(status == 200 || status == 404, "{status}");

    let before = LIMITS.dir_header_timeouts.load(Ordering::Relaxed);
    let (mut r, mut w) = tokio::net::TcpStream::connect(a0).await.unwrap().into_split();
    // 100 bytes, one per 300 ms: 30 s of trickle if nothing closes it.
    let head = format!("GET /allium/v1/consensus HTTP/1.1\r\nHost: {a0}\r\nX-Slow: {}", "a".repeat(100));
    let trickle = async move {
        for b in head.as_bytes() {
            if w.write_all(&[*b]).await.is_err() {
                break; // closed: the read below says so
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        std::future::pending::<()>().await;
    };
    let mut buf = [0u8; 256];
    let closed = tokio::select! {
        r = r.read(&mut buf) => r,
        _ = trickle => unreachable!(),
        _ = tokio::time::sleep(Duration::from_secs(30)) => panic!("the slow head was not closed within 30 s"),
    };
    assert!(matches!(closed, Ok(0) | Err(_)), "closed without an answer: {closed:?}");
    assert!(LIMITS.dir_header_timeouts.load(Ordering::Relaxed) > before, "counted");
}
