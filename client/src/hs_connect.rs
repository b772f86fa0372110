//! Connecting to onion services (docs/PROTOCOL.md, "Onion services", "Client behaviour"): the
//! descriptor from the responsible HSDirs (cached, [`crate::hs_desc_cache`]), a rendezvous
//! circuit, the introduction, and the service added as a virtual hop. The resulting rendezvous
//! circuit is kept per (address, isolation key) and carries later streams (BEGIN to the
//! service) until [`MAX_CIRCUIT_DIRTINESS`] has passed or it closes.
//!
//! Concurrent requests for one address share one descriptor fetch, and concurrent requests of
//! one isolation class share one connection attempt (and its failure). Nothing here logs the
//! address or any key at info level.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_directory::NetDir;
use allium_proto::doc::ConsensusRelay;
use allium_proto::hs::connect::{pick_intro_point, Attempt};
use allium_proto::hs::{blind_public, decrypt, DescBinding, HsDescriptor, InnerError, IntroPoint, OnionAddress, TimePeriod};
use allium_proto::ids::RelayId;
use allium_proto::relay_msg::{ExtendTarget, RelayMsg};
use allium_proto::socks::ReplyCode;
use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use tokio::sync::Mutex;
use x25519_dalek::StaticSecret;

use crate::circmgr::{CircMgr, IsolationKey, MAX_CIRCUIT_DIRTINESS};
use crate::circuit::CircHandle;
use crate::hs_desc_cache::{CachedDesc, DescCache};
use crate::hs_dir;
use crate::onion_auth::ClientAuthKeys;
use crate::path::{candidates, pick, Position};

/// How long one HSDir may take to answer a descriptor fetch (circuit included).
pub const DESC_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Introduction attempts for one connection, over all introduction points.
pub const INTRO_ATTEMPTS: usize = 3;
/// The proof-of-work effort of a retry after a failed introduction when the descriptor
/// suggests less; each further retry doubles it (a service under an introduction flood may not
/// have published its suggestion yet, and its points refuse introductions without work first).
pub const RETRY_EFFORT: u32 = 64;
/// The most effort a client spends on one introduction (~1 M hashes: well under a second).
pub const MAX_CLIENT_EFFORT: u32 = 1 << 20;
/// How long RENDEZVOUS_ESTABLISHED and INTRODUCE_ACK may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the service may take to answer at the rendezvous point after the introduction.
pub const RENDEZVOUS2_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a whole new connection (descriptor, introduction, rendezvous) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an onion service could not be reached. The texts name neither address nor keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnionError {
    #[error("no responsible HSDir holds a descriptor for the service")]
    NotFound,
    #[error("descriptor not valid: {0}")]
    InvalidDescriptor(String),
    #[error("introduction failed: {0}")]
    IntroFailed(String),
    #[error("rendezvous failed: {0}")]
    RendezvousFailed(String),
    #[error("the service requires client authorization and no key is configured for it")]
    AuthMissing,
    #[error("the service does not accept this client's authorization key")]
    AuthRejected,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("no circuit: {0}")]
    NoCircuit(String),
}

impl OnionError {
    /// The SOCKS5 reply code (Tor's extended codes; other front ends map it further).
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            OnionError::NotFound => ReplyCode::OnionDescNotFound,
            OnionError::InvalidDescriptor(_) => ReplyCode::OnionDescInvalid,
            OnionError::IntroFailed(_) => ReplyCode::OnionIntroFailed,
            OnionError::RendezvousFailed(_) => ReplyCode::OnionRendezvousFailed,
            OnionError::AuthMissing => ReplyCode::OnionMissingClientAuth,
            OnionError::AuthRejected => ReplyCode::OnionBadClientAuth,
            OnionError::Timeout(_) => ReplyCode::OnionIntroTimeout,
            OnionError::NoCircuit(_) => ReplyCode::GeneralFailure,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

/// Checks a fetched descriptor for the service `identity` and decrypts its introduction points:
/// it must parse, name `blinded` and be signed by it, be for `period`, and decrypt (with
/// `auth`, the client's key for the service if any) to at least one introduction point.
pub fn check_descriptor(text: &str, identity: &[u8; 32], blinded: &[u8; 32], period: TimePeriod, auth: Option<&StaticSecret>, now: u64) -> Result<CachedDesc, OnionError> {
    let invalid = |e: &dyn std::fmt::Display| OnionError::InvalidDescriptor(e.to_string());
    let d = HsDescriptor::parse(text).map_err(|e| invalid(&e))?.verify(blinded).map_err(|e| invalid(&e))?;
    if d.period != period {
        return Err(OnionError::InvalidDescriptor("descriptor is for another time period".into()));
    }
    let list = decrypt(identity, &DescBinding::of(&d), &d.encrypted, auth).map_err(|e| match e {
        InnerError::NotAuthorized if auth.is_some() => OnionError::AuthRejected,
        InnerError::NotAuthorized => OnionError::AuthMissing,
        e => invalid(&e),
    })?;
    if list.intro_points.is_empty() {
        return Err(OnionError::InvalidDescriptor("descriptor lists no introduction point".into()));
    }
    let mut c = CachedDesc::new(list, period, now, d.lifetime_secs);
    c.blinded = *blinded;
    c.revision = d.revision;
    Ok(c)
}

/// The descriptor of `identity` from the HSDirs responsible for it in the consensus's period,
/// tried in random order until one holds a valid one. A client-authorization failure ends the
/// search at once (every HSDir holds the same descriptor); otherwise the last invalid
/// descriptor's reason, or [`OnionError::NotFound`] ([`OnionError::Timeout`] if every HSDir
/// timed out). A descriptor older than `seen` says (the highest revision seen for its blinded
/// key) counts as invalid: a hostile HSDir may serve a stale one.
pub async fn fetch_descriptor(circuits: &CircMgr, dir: &NetDir, identity: &[u8; 32], auth: Option<&StaticSecret>, seen: &StdMutex<DescCache>) -> Result<CachedDesc, OnionError> {
    let period = hs_dir::period_of(dir);
    let blinded = blind_public(identity, period).ok_or_else(|| OnionError::InvalidDescriptor("the address's key cannot be blinded".into()))?;
    let mut hsdirs = hs_dir::responsible_hsdirs(dir, &blinded, period);
    hsdirs.shuffle(&mut OsRng);
    let (mut invalid, mut timeouts) = (None, 0);
    for hsdir in &hsdirs {
        let text = match tokio::time::timeout(DESC_FETCH_TIMEOUT, hs_dir::fetch(circuits, dir, hsdir, &blinded)).await {
            Err(_) => {
                tracing::debug!("descriptor fetch from HSDir {} timed out", hsdir.identity.short());
                timeouts += 1;
                continue;
            }
            Ok(Err(e)) => {
                tracing::debug!("descriptor fetch from HSDir {} failed: {e}", hsdir.identity.short());
                continue;
            }
            Ok(Ok(None)) => {
                tracing::debug!("HSDir {} holds no descriptor for the service", hsdir.identity.short());
                continue;
            }
            Ok(Ok(Some(text))) => text,
        };
        let checked = check_descriptor(&text, identity, &blinded, period, auth, unix_now()).and_then(|d| {
            let highest = seen.lock().expect("descs").highest_revision(&blinded);
            if d.revision < highest {
                Err(OnionError::InvalidDescriptor("older than a descriptor already seen".into()))
            } else {
                Ok(d)
            }
        });
        match checked {
            Ok(d) => {
                tracing::debug!("descriptor from HSDir {}: {} introduction points", hsdir.identity.short(), d.intro_points.len());
                return Ok(d);
            }
            Err(e @ (OnionError::AuthMissing | OnionError::AuthRejected)) => return Err(e),
            Err(e) => {
                // Info lines never name a relay; the debug line says which.
                tracing::info!("an HSDir served an invalid descriptor: {e}; trying another");
                tracing::debug!("the invalid descriptor came from HSDir {}", hsdir.identity.short());
                invalid = Some(e);
            }
        }
    }
    match invalid {
        Some(e) => Err(e),
        None if timeouts > 0 && timeouts == hsdirs.len() => Err(OnionError::Timeout("no HSDir answered the descriptor fetch".into())),
        None => Err(OnionError::NotFound),
    }
}

/// A rendezvous point for a connection through the introduction point `ip`: a random running,
/// valid relay weighted as a middle, not the introduction point itself.
pub fn pick_rendezvous_point(dir: &NetDir, ip: &RelayId) -> Option<ConsensusRelay> {
    let cands = candidates(dir);
    pick(&cands, Position::Middle, &mut OsRng, |c| c.id() != ip).map(|c| c.relay.clone())
}

/// Phase times of one successful attempt, in ms.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    rendezvous: u128,
    introduction: u128,
    answer: u128,
}

/// The proof-of-work effort of introduction attempt `n` (from 1) of one connection: the
/// service's suggestion first, then at least [`RETRY_EFFORT`], doubling per retry, at most
/// [`MAX_CLIENT_EFFORT`].
pub fn attempt_effort(suggested: u32, n: usize) -> u32 {
    let e = if n <= 1 { u64::from(suggested) } else { u64::from(suggested.max(RETRY_EFFORT)) << (n - 2).min(20) };
    e.min(u64::from(MAX_CLIENT_EFFORT)) as u32
}

/// How one introduction attempt failed: at the introduction point (try another) or elsewhere.
enum AttemptError {
    Intro(OnionError),
    Other(OnionError),
}

/// One attempt: circuits to the rendezvous point (ESTABLISH_RENDEZVOUS) and to the introduction
/// point at once, INTRODUCE1, then RENDEZVOUS2 and the virtual hop.
async fn attempt_once(circuits: &CircMgr, dir: &NetDir, identity: &[u8; 32], ip: &IntroPoint, ip_relay: &ConsensusRelay, rp: &ConsensusRelay, effort: u32) -> Result<(CircHandle, Phases), AttemptError> {
    use AttemptError::{Intro, Other};
    let target = ExtendTarget { addr: rp.address, identity: rp.identity.0, link_key: rp.link_key };
    let (id, point, onion_key) = (*identity, ip.clone(), rp.onion_key);
    // A proof of work is CPU work: off the async threads.
    let attempt = tokio::task::spawn_blocking(move || Attempt::new(&mut OsRng, &id, &point, target, onion_key, effort))
        .await
        .map_err(|e| Other(OnionError::IntroFailed(format!("introduction task failed: {e}"))))?
        .map_err(|e| Intro(OnionError::IntroFailed(format!("cannot introduce with the descriptor's keys: {e}"))))?;
    let started = Instant::now();
    let establish = attempt.establish_rendezvous.clone();
    let rend = async {
        let c = circuits.to_relay(dir, rp).await.map_err(|e| Other(OnionError::RendezvousFailed(format!("circuit to the rendezvous point: {e}"))))?;
        c.send_control(establish).await.map_err(|e| Other(OnionError::RendezvousFailed(e.to_string())))?;
        match tokio::time::timeout(CONTROL_TIMEOUT, c.recv_control()).await {
            Ok(Some((_, RelayMsg::RendezvousEstablished { .. }))) => {
                let t = ms(started);
                tracing::debug!("rendezvous point {} established in {t} ms", rp.identity.short());
                Ok((c, t))
            }
            Ok(Some((_, m))) => Err(Other(OnionError::RendezvousFailed(format!("rendezvous point answered {:?}", m.cmd())))),
            Ok(None) => Err(Other(OnionError::RendezvousFailed("rendezvous circuit closed".into()))),
            Err(_) => Err(Other(OnionError::Timeout("no RENDEZVOUS_ESTABLISHED".into()))),
        }
    };
    let intro = async { circuits.to_relay(dir, ip_relay).await.map_err(|e| Intro(OnionError::IntroFailed(format!("circuit to the introduction point: {e}")))) };
    let (rend, intro) = tokio::join!(rend, intro);
    let ((rend, rendezvous_ms), intro) = (rend?, intro?);
    let t = Instant::now();
    let ack = tokio::time::timeout(CONTROL_TIMEOUT, intro.control(attempt.introduce1.clone())).await;
    drop(intro);
    match ack {
        Err(_) => return Err(Intro(OnionError::Timeout("no INTRODUCE_ACK".into()))),
        Ok(Err(e)) => return Err(Intro(OnionError::IntroFailed(e.to_string()))),
        Ok(Ok((_, msg))) => attempt.on_introduce_ack(&msg).map_err(|e| Intro(OnionError::IntroFailed(e.to_string())))?,
    }
    let introduction = ms(t);
    tracing::debug!("introduced through {} in {introduction} ms", ip_relay.identity.short());
    let t = Instant::now();
    let r2 = match tokio::time::timeout(RENDEZVOUS2_TIMEOUT, rend.recv_control()).await {
        // The service never came: its introduction circuit may be stale; try another point.
        Err(_) => return Err(Intro(OnionError::Timeout("the service did not answer at the rendezvous point".into()))),
        Ok(None) => return Err(Other(OnionError::RendezvousFailed("rendezvous circuit closed".into()))),
        Ok(Some((_, m))) => m,
    };
    let keys = attempt.on_rendezvous2(&r2).map_err(|e| Other(OnionError::RendezvousFailed(e.to_string())))?;
    rend.add_virtual_hop(keys).await.map_err(|e| Other(OnionError::RendezvousFailed(e.to_string())))?;
    let answer = ms(t);
    tracing::debug!("the service answered at the rendezvous point in {answer} ms");
    Ok((rend, Phases { rendezvous: rendezvous_ms, introduction, answer }))
}

/// A rendezvous circuit of one (address, isolation key), or the failure of the last attempt.
enum Slot {
    Empty,
    Ready { circ: CircHandle, since: Instant },
    Failed { at: Instant, err: OnionError },
}

/// A descriptor fetch in flight for one address (hold the lock to fetch), with the last
/// fetch's failure so that requests that waited for it share it.
type FetchSlot = Arc<Mutex<Option<(Instant, OnionError)>>>;
/// The rendezvous circuits by (service identity, isolation key).
type CircSlots = HashMap<([u8; 32], IsolationKey), Arc<Mutex<Slot>>>;

/// Connections to onion services, held in [`crate::ClientState`].
pub struct OnionConnector {
    auth: ClientAuthKeys,
    descs: StdMutex<DescCache>,
    fetches: StdMutex<HashMap<[u8; 32], FetchSlot>>,
    circs: StdMutex<CircSlots>,
    /// Connections made ready with a freshly fetched descriptor, and with a cached one.
    ready: [std::sync::atomic::AtomicU64; 2],
}

impl OnionConnector {
    /// `auth`: this client's client-authorization keys ([`crate::onion_auth::load`]).
    pub fn new(auth: ClientAuthKeys) -> Self {
        OnionConnector { auth, descs: Default::default(), fetches: Default::default(), circs: Default::default(), ready: Default::default() }
    }

    /// Connections to onion services made ready so far: `(with a fresh descriptor, with a
    /// cached one)` (for `allium status`).
    pub fn connections_ready(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.ready[0].load(Relaxed), self.ready[1].load(Relaxed))
    }

    /// Number of cached descriptors.
    pub fn cached_descriptors(&self) -> usize {
        self.descs.lock().expect("descs").len()
    }

    fn cached(&self, identity: &[u8; 32], period: TimePeriod) -> Option<CachedDesc> {
        self.descs.lock().expect("descs").get(identity, period, unix_now()).cloned()
    }

    /// The descriptor of `identity` (cached, or fetched with concurrent requests sharing one
    /// fetch and its failure). The bool: freshly fetched.
    async fn descriptor(&self, circuits: &CircMgr, dir: &NetDir, identity: &[u8; 32]) -> Result<(CachedDesc, bool), OnionError> {
        let period = hs_dir::period_of(dir);
        if let Some(d) = self.cached(identity, period) {
            return Ok((d, false));
        }
        let asked = Instant::now();
        let lock = {
            let mut f = self.fetches.lock().expect("fetches");
            f.retain(|_, v| Arc::strong_count(v) > 1);
            f.entry(*identity).or_default().clone()
        };
        let mut last = lock.lock().await;
        if let Some(d) = self.cached(identity, period) {
            return Ok((d, false));
        }
        if let Some((at, err)) = last.as_ref().filter(|(at, _)| *at >= asked) {
            tracing::debug!("sharing a descriptor fetch that failed {} ms ago", at.elapsed().as_millis());
            return Err(err.clone());
        }
        let t = Instant::now();
        match fetch_descriptor(circuits, dir, identity, self.auth.get(identity), &self.descs).await {
            Ok(d) => {
                tracing::debug!("descriptor fetched in {} ms", ms(t));
                self.descs.lock().expect("descs").insert(*identity, d.clone());
                *last = None;
                Ok((d, true))
            }
            Err(e) => {
                *last = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Up to [`INTRO_ATTEMPTS`] introductions through the descriptor's points not known to
    /// have failed; each failed point is marked in the cache.
    async fn connect(&self, circuits: &CircMgr, dir: &NetDir, identity: &[u8; 32], desc: &CachedDesc) -> Result<(CircHandle, Phases, usize), OnionError> {
        let mut failed = desc.failed.clone();
        let mut last_err = None;
        let mark = |failed: &mut Vec<[u8; 32]>, key: [u8; 32]| {
            failed.push(key);
            self.descs.lock().expect("descs").mark_failed(identity, key);
        };
        for n in 1..=INTRO_ATTEMPTS {
            let Some(ip) = pick_intro_point(&mut OsRng, &desc.intro_points, &failed).cloned() else { break };
            let Some(ip_relay) = dir.by_id(&RelayId(ip.relay.identity)).cloned() else {
                tracing::debug!("introduction point {} is not in the consensus", RelayId(ip.relay.identity).short());
                mark(&mut failed, ip.auth_key);
                last_err = Some(OnionError::IntroFailed("introduction point not in the consensus".into()));
                continue;
            };
            let Some(rp) = pick_rendezvous_point(dir, &ip_relay.identity) else {
                return Err(OnionError::NoCircuit("no relay to use as rendezvous point".into()));
            };
            let effort = attempt_effort(desc.suggested_effort, n);
            match attempt_once(circuits, dir, identity, &ip, &ip_relay, &rp, effort).await {
                Ok((c, p)) => return Ok((c, p, n)),
                Err(AttemptError::Intro(e)) => {
                    tracing::info!("introduction attempt {n} failed: {e}");
                    mark(&mut failed, ip.auth_key);
                    last_err = Some(e);
                }
                Err(AttemptError::Other(e)) => {
                    tracing::info!("introduction attempt {n} failed: {e}");
                    last_err = Some(e);
                }
            }
        }
        let exhausted = desc.intro_points.iter().all(|p| failed.contains(&p.auth_key));
        match last_err {
            Some(OnionError::IntroFailed(e)) if exhausted => Err(OnionError::IntroFailed(format!("every introduction point failed (last: {e})"))),
            Some(e) => Err(e),
            None => Err(OnionError::IntroFailed("no usable introduction point".into())),
        }
    }

    /// Descriptor, then connection; a cached descriptor whose points all failed is fetched
    /// again once.
    async fn establish(&self, circuits: &CircMgr, dir: &NetDir, identity: &[u8; 32]) -> Result<CircHandle, OnionError> {
        let started = Instant::now();
        let (desc, fresh) = self.descriptor(circuits, dir, identity).await?;
        let desc_ms = ms(started);
        let (circ, p, attempts) = match self.connect(circuits, dir, identity, &desc).await {
            Err(e) if !fresh && self.cached(identity, hs_dir::period_of(dir)).is_none() => {
                tracing::info!("every introduction point of a cached descriptor failed ({e}); fetching it again");
                let (desc, _) = self.descriptor(circuits, dir, identity).await?;
                self.connect(circuits, dir, identity, &desc).await?
            }
            r => r?,
        };
        tracing::info!(
            "onion service connection ready in {} ms (descriptor {desc_ms} ms{}, rendezvous point {} ms, introduction {} ms, service answer {} ms, {attempts} attempt{})",
            ms(started),
            if fresh { "" } else { ", cached" },
            p.rendezvous,
            p.introduction,
            p.answer,
            if attempts == 1 { "" } else { "s" }
        );
        self.ready[usize::from(!fresh)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        allium_net::operator::wait::status_changed();
        Ok(circ)
    }

    /// A rendezvous circuit to the service at `addr` for isolation class `iso`, ending at the
    /// service (its virtual hop): the open one of that class if it is younger than
    /// [`MAX_CIRCUIT_DIRTINESS`], else a new one (concurrent callers share one attempt).
    pub async fn circuit(&self, circuits: &CircMgr, dir: &NetDir, addr: &OnionAddress, iso: &IsolationKey) -> Result<CircHandle, OnionError> {
        let identity = *addr.identity();
        let asked = Instant::now();
        let slot = {
            let mut m = self.circs.lock().expect("circs");
            m.retain(|_, s| Arc::strong_count(s) > 1 || s.try_lock().map(|s| matches!(*s, Slot::Ready { ref circ, since } if circ.takes_streams() && since.elapsed() < MAX_CIRCUIT_DIRTINESS)).unwrap_or(true));
            m.entry((identity, iso.clone())).or_insert_with(|| Arc::new(Mutex::new(Slot::Empty))).clone()
        };
        let mut s = slot.lock().await;
        match &*s {
            Slot::Ready { circ, since } if circ.takes_streams() && since.elapsed() < MAX_CIRCUIT_DIRTINESS => {
                tracing::debug!("onion stream on an open rendezvous circuit");
                return Ok(circ.clone());
            }
            Slot::Failed { at, err } if *at >= asked => return Err(err.clone()),
            _ => {}
        }
        tracing::debug!("connecting to onion service {}", addr.to_host());
        let r = match tokio::time::timeout(CONNECT_TIMEOUT, self.establish(circuits, dir, &identity)).await {
            Ok(r) => r,
            Err(_) => Err(OnionError::Timeout(format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()))),
        };
        *s = match &r {
            Ok(c) => Slot::Ready { circ: c.clone(), since: Instant::now() },
            Err(e) => Slot::Failed { at: Instant::now(), err: e.clone() },
        };
        r
    }

    /// Stops reusing the rendezvous circuit of (`addr`, `iso`) (it failed a stream).
    pub fn forget(&self, addr: &OnionAddress, iso: &IsolationKey) {
        self.circs.lock().expect("circs").remove(&(*addr.identity(), iso.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::ext::Extensions;
    use allium_proto::hs::{make_descriptor, IntroList};
    use ed25519_dalek::SigningKey;
    use x25519_dalek::PublicKey;

    fn list() -> IntroList {
        let p = IntroPoint {
            relay: ExtendTarget { addr: "127.0.0.9:9001".parse().unwrap(), identity: [9; 32], link_key: [8; 32] },
            onion_key: [7; 32],
            auth_key: SigningKey::from_bytes(&[6; 32]).verifying_key().to_bytes(),
            enc_key: [5; 32],
            ext: Extensions::none(),
        };
        IntroList { intro_points: vec![p], ext: Extensions::none() }
    }

    const P: TimePeriod = TimePeriod { number: 20_000, length_secs: 86_400 };

    fn service() -> (SigningKey, [u8; 32], [u8; 32]) {
        let s = SigningKey::from_bytes(&[42; 32]);
        let id = s.verifying_key().to_bytes();
        (s, id, blind_public(&id, P).unwrap())
    }

    #[test]
    fn descriptors_are_checked_and_failures_classified() {
        let (svc, id, blinded) = service();
        let text = make_descriptor(&svc, P, 1, 3600, &list(), &[], &mut OsRng).unwrap();
        let d = check_descriptor(&text, &id, &blinded, P, None, 100).unwrap();
        assert_eq!((d.intro_points, d.expires, d.period), (list().intro_points, 3700, P));

        // A tampered signature, another service's blinded key, another period.
        let mut bad = text.clone();
        let at = bad.rfind("signature ").unwrap() + 12;
        bad.replace_range(at..at + 1, if &bad[at..at + 1] == "A" { "B" } else { "A" });
        assert!(matches!(check_descriptor(&bad, &id, &blinded, P, None, 0), Err(OnionError::InvalidDescriptor(_))));
        let (_, other_id, other_blinded) = {
            let s = SigningKey::from_bytes(&[43; 32]);
            let i = s.verifying_key().to_bytes();
            (s, i, blind_public(&i, P).unwrap())
        };
        assert!(matches!(check_descriptor(&text, &other_id, &other_blinded, P, None, 0), Err(OnionError::InvalidDescriptor(_))));
        let next = make_descriptor(&svc, P.next(), 1, 3600, &list(), &[], &mut OsRng).unwrap();
        assert!(matches!(check_descriptor(&next, &id, &blinded, P, None, 0), Err(OnionError::InvalidDescriptor(_))), "signed by another period's key");
        assert!(matches!(check_descriptor("garbage", &id, &blinded, P, None, 0), Err(OnionError::InvalidDescriptor(_))));

        // Client authorization: none configured, a wrong key, the right key.
        let mine = StaticSecret::from([3; 32]);
        let text = make_descriptor(&svc, P, 2, 3600, &list(), &[PublicKey::from(&mine)], &mut OsRng).unwrap();
        assert_eq!(check_descriptor(&text, &id, &blinded, P, None, 0).unwrap_err(), OnionError::AuthMissing);
        assert_eq!(check_descriptor(&text, &id, &blinded, P, Some(&StaticSecret::from([4; 32])), 0).unwrap_err(), OnionError::AuthRejected);
        assert!(check_descriptor(&text, &id, &blinded, P, Some(&mine), 0).is_ok());
    }

    #[test]
    fn retries_bring_more_proof_of_work() {
        assert_eq!((attempt_effort(0, 1), attempt_effort(0, 2), attempt_effort(0, 3)), (0, 64, 128));
        assert_eq!((attempt_effort(500, 1), attempt_effort(500, 2), attempt_effort(500, 3)), (500, 500, 1000));
        assert_eq!(attempt_effort(u32::MAX, 9), MAX_CLIENT_EFFORT);
    }

    #[test]
    fn errors_map_to_tor_extended_codes() {
        let cases = [
            (OnionError::NotFound, 0xF0),
            (OnionError::InvalidDescriptor("x".into()), 0xF1),
            (OnionError::IntroFailed("x".into()), 0xF2),
            (OnionError::RendezvousFailed("x".into()), 0xF3),
            (OnionError::AuthMissing, 0xF4),
            (OnionError::AuthRejected, 0xF5),
            (OnionError::Timeout("x".into()), 0xF7),
            (OnionError::NoCircuit("x".into()), 0x01),
        ];
        for (e, code) in cases {
            assert_eq!(e.reply_code() as u8, code, "{e}");
        }
    }
}
