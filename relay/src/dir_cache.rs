//! The relay as a directory cache: it keeps the latest verified consensus (saved in its data
//! directory, so a restart serves at once) and answers directory streams (BEGIN_DIR) with it,
//! so clients fetch the directory through their guard and never contact an authority.
//!
//! A directory stream carries one request (`allium_proto::dir_stream`); served paths:
//! - `GET /allium/v1/consensus`: 200 with the consensus while it is live, else 404;
//! - `GET /allium/v1/microdescs` and `GET /allium/v1/microdescs/<hex>-<hex>-...`: 200 with the
//!   held microdescriptors of that consensus (all, or those named; unknown ones left out), 404
//!   while no live consensus is held.
//!
//! - the onion-service descriptor paths of [`crate::hsdir`] (upload and fetch), while the live
//!   consensus flags this relay HSDir.
//!
//! Anything else is 404; a malformed request is 400. A 200 answer is zlib-compressed when the
//! request accepts `deflate` (the consensus is compressed once per consensus, then reused). The
//! relay then closes the stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_directory::cache::Usability;
use allium_directory::{ConsensusCache, NetDir};
use allium_net::keys::unix_now;
use allium_proto::dir_stream::{compress, encode_compressed_response, encode_response, parse_request, DirRequest, Method, BW_TEST_PATH, CONSENSUS_DIFF_PATH, CONSENSUS_PATH, MAX_BW_TEST_LEN, MAX_REQUEST_TOTAL};
use allium_proto::doc::diff::{make_diff, text_digest};
use allium_proto::doc::RelayFlags;
use allium_proto::hs::{HsDirRing, TimePeriod};
use allium_proto::ids::RelayId;

use crate::hsdir::HsDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The path of the consensus on a directory stream (the same as on an authority).
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer of the in-process pipe between the circuit's stream and the serving task.
pub const PIPE_BUFFER: usize = 64 * 1024;

/// The consensus this relay serves.
pub struct DirCache {
    inner: Mutex<ConsensusCache>,
    /// The compressed text of the consensus with this digest.
    compressed: Mutex<Option<([u8; 32], Arc<[u8]>)>>,
    /// The compressed diff from the previous consensus to the current one, by their text
    /// digests (made once per consensus).
    diff: Mutex<Option<([u8; 32], [u8; 32], Arc<[u8]>)>>,
    /// This relay's identity (to find its flags), if it is a relay.
    own_id: Option<RelayId>,
    /// The descriptors held as an HSDir.
    pub hsdir: HsDir,
    /// The consensus kept before the current one (EXTEND targets may come from either).
    previous: Mutex<Option<Arc<NetDir>>>,
    /// The addresses of the relays in the current and the previous consensus (exempt from
    /// per-address limits: many circuits from one relay are many clients' circuits).
    relay_ips: std::sync::RwLock<std::collections::HashSet<std::net::IpAddr>>,
    /// HSDir rings by (consensus digest, period), the last few computed.
    rings: Mutex<Vec<([u8; 32], TimePeriod, Arc<HsDirRing>)>>,
}

/// Rings kept (two consensuses × two periods).
const RINGS_KEPT: usize = 4;

/// Whether `nd` says which ring value `period` has: it carries a ring-value line for that
/// period or a later one of the same length, or none at all (then every period uses the
/// fallback value).
fn ring_value_known(nd: &NetDir, period: TimePeriod) -> bool {
    let carried = &nd.consensus().meta().period_srvs;
    carried.is_empty() || carried.iter().any(|c| c.length_secs == period.length_secs && c.number >= period.number)
}

impl DirCache {
    pub fn new(cache: ConsensusCache) -> Self {
        let relay_ips = cache.current().map(|nd| nd.consensus().relays().iter().map(|r| r.address.ip()).collect()).unwrap_or_default();
        DirCache { inner: Mutex::new(cache), compressed: Mutex::new(None), diff: Mutex::new(None), own_id: None, hsdir: HsDir::default(), previous: Mutex::new(None), relay_ips: std::sync::RwLock::new(relay_ips), rings: Mutex::new(Vec::new()) }
    }

    /// The cache of the relay `id` (which serves descriptors, into `hsdir`, while flagged
    /// HSDir).
    pub fn with_identity(cache: ConsensusCache, id: RelayId, hsdir: HsDir) -> Self {
        DirCache { own_id: Some(id), hsdir, ..Self::new(cache) }
    }

    /// Whether the live consensus `live`, or the one before it, flags this relay HSDir (a
    /// service or client may still hold the previous one, or already the next).
    fn is_hsdir(&self, live: Option<&NetDir>) -> bool {
        let Some(id) = self.own_id else { return false };
        let previous = self.previous.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let flagged = [live, previous.as_deref()].into_iter().flatten().any(|nd| nd.consensus().relays().iter().any(|r| r.identity == id && r.flags.contains(RelayFlags::HSDIR)));
        flagged
    }

    /// The compressed consensus text of `nd`, made once.
    fn compressed_consensus(&self, nd: &NetDir) -> Arc<[u8]> {
        let digest = nd.consensus().digest();
        let mut memo = self.compressed.lock().unwrap_or_else(|e| e.into_inner());
        match &*memo {
            Some((d, z)) if *d == digest => z.clone(),
            _ => {
                let z: Arc<[u8]> = compress(nd.consensus_text().as_bytes()).into();
                *memo = Some((digest, z.clone()));
                z
            }
        }
    }

    /// The compressed diff from the consensus whose text has SHA-256 `from` to `nd`, if that is
    /// the previous consensus this cache kept (the one clients hold between two fetches).
    fn compressed_diff(&self, from: &[u8; 32], nd: &NetDir) -> Option<Arc<[u8]>> {
        let to = text_digest(nd.consensus_text());
        let mut memo = self.diff.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, t, z)) = &*memo {
            if f == from && *t == to {
                return Some(z.clone());
            }
        }
        let previous = self.previous.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        if text_digest(previous.consensus_text()) != *from {
            return None;
        }
        let z: Arc<[u8]> = compress(make_diff(previous.consensus_text(), nd.consensus_text()).as_bytes()).into();
        *memo = Some((*from, to, z.clone()));
        Some(z)
    }

    /// Keeps a freshly fetched, verified consensus (unless older than the kept one).
    pub fn store(&self, nd: NetDir) -> Arc<NetDir> {
        let old = self.current();
        let new = self.inner.lock().unwrap_or_else(|e| e.into_inner()).store(nd);
        allium_net::metrics::METRICS.set_consensus(new.valid_after(), new.valid_until());
        if let Some(old) = old.filter(|o| o.consensus().digest() != new.consensus().digest()) {
            *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(old);
        }
        let previous = self.previous.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ips = [Some(new.clone()), previous].into_iter().flatten().flat_map(|nd| nd.consensus().relays().iter().map(|r| r.address.ip()).collect::<Vec<_>>()).collect();
        *self.relay_ips.write().unwrap_or_else(|e| e.into_inner()) = ips;
        new
    }

    /// Whether this relay is one of the HSDirs of `key` in `period` on the ring of the current
    /// or the previous consensus (a service may publish by either while a new one spreads).
    /// A period whose ring value neither consensus carries yet (it is later than every period
    /// they carry: the service holds a newer consensus, the one that anchors it) cannot be
    /// checked here, and is accepted.
    fn responsible_here(&self, key: &[u8; 32], period: TimePeriod) -> bool {
        let Some(me) = self.own_id else { return false };
        let previous = self.previous.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let held: Vec<Arc<NetDir>> = [self.current(), previous].into_iter().flatten().collect();
        if !held.is_empty() && !held.iter().any(|nd| ring_value_known(nd, period)) {
            return true;
        }
        held.iter().any(|nd| self.ring(nd, period).responsible_default(key).contains(&me))
    }

    fn ring(&self, nd: &NetDir, period: TimePeriod) -> Arc<HsDirRing> {
        let digest = nd.consensus().digest();
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, r)) = rings.iter().find(|(d, p, _)| *d == digest && *p == period) {
            return r.clone();
        }
        let r = Arc::new(nd.hsdir_ring(period));
        rings.push((digest, period, r.clone()));
        if rings.len() > RINGS_KEPT {
            rings.remove(0);
        }
        r
    }

    /// Whether a relay in the current or the previous consensus has this address.
    pub fn is_relay_address(&self, ip: std::net::IpAddr) -> bool {
        self.relay_ips.read().unwrap_or_else(|e| e.into_inner()).contains(&ip)
    }

    /// Where the current (else the previous) consensus says relay `id` listens and which link
    /// key its microdescriptor certifies; `None` if neither lists it with a microdescriptor.
    pub fn listed_relay(&self, id: &RelayId) -> Option<(std::net::SocketAddr, [u8; 32])> {
        let previous = self.previous.lock().unwrap_or_else(|e| e.into_inner()).clone();
        [self.current(), previous].into_iter().flatten().find_map(|nd| nd.by_id(id).map(|r| (r.address, r.link_key)))
    }

    /// Whether this relay holds any consensus at all.
    pub fn has_consensus(&self) -> bool {
        self.current().is_some()
    }

    /// The kept consensus, live or not (its microdescriptors are reused for the next one).
    pub fn current(&self) -> Option<Arc<NetDir>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).current()
    }

    /// The kept consensus if it is live at `now` (an expired one is useless to clients: they
    /// verify the validity interval).
    pub fn live(&self, now: u64) -> Option<Arc<NetDir>> {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (c.status(now) == Some(Usability::Live)).then(|| c.usable(now)).flatten()
    }

    /// The response to `req` at `now`.
    pub fn respond(&self, req: &DirRequest, now: u64) -> Vec<u8> {
        let live = self.live(now);
        let period_len = live.as_deref().map_or(allium_proto::hs::period::DEFAULT_PERIOD_SECS, NetDir::hs_period_secs);
        let responsible = |key: &[u8; 32], period: TimePeriod| self.responsible_here(key, period);
        if let Some(answer) = self.hsdir.respond(req, self.is_hsdir(live.as_deref()), period_len, now, &responsible) {
            return answer;
        }
        if let (Method::Get, Some(n)) = (req.method, req.path.strip_prefix(BW_TEST_PATH)) {
            return match n.parse::<usize>() {
                Ok(n) if (1..=MAX_BW_TEST_LEN).contains(&n) => encode_response(200, &vec![0; n]),
                _ => encode_response(400, b"length must be 1 to 1048576\n"),
            };
        }
        let Some(nd) = live else { return encode_response(404, b"no live consensus held\n") };
        if req.method != Method::Get {
            return encode_response(404, b"not found\n");
        }
        if let Some(hex_digest) = req.path.strip_prefix(CONSENSUS_DIFF_PATH) {
            let mut from = [0u8; 32];
            if hex_digest.len() != 64 || hex::decode_to_slice(hex_digest, &mut from).is_err() {
                return encode_response(400, b"malformed digest\n");
            }
            return match self.compressed_diff(&from, &nd) {
                // Clients ask with deflate; one that does not gets the whole consensus instead.
                Some(z) if req.deflate => encode_compressed_response(&z),
                _ => encode_response(404, b"no diff from that consensus\n"),
            };
        }
        if req.path == CONSENSUS_PATH {
            return match req.deflate {
                true => encode_compressed_response(&self.compressed_consensus(&nd)),
                false => encode_response(200, nd.consensus_text().as_bytes()),
            };
        }
        match allium_directory::microdescs::answer(nd.microdescs(), &req.path) {
            Some(body) if req.deflate => encode_compressed_response(&compress(body.as_bytes())),
            Some(body) => encode_response(200, body.as_bytes()),
            None => encode_response(404, b"not found\n"),
        }
    }
}

/// Serves one directory stream: reads the request, writes the response, closes.
pub async fn serve(mut pipe: DuplexStream, cache: Arc<DirCache>) {
    let mut buf = Vec::with_capacity(256);
    let request = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 512];
        loop {
            let n = pipe.read(&mut chunk[..MAX_REQUEST_TOTAL.saturating_sub(buf.len()).clamp(1, 512)]).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse_request(&buf) {
                Ok(None) => continue,
                Ok(Some(req)) => return Some(Ok(req)),
                Err(e) => return Some(Err(e)),
            }
        }
    })
    .await;
    let response = match request {
        Ok(Some(Ok(req))) => cache.respond(&req, unix_now()),
        Ok(Some(Err(e))) => encode_response(400, format!("{e}\n").as_bytes()),
        // The client went away or never finished its request.
        Ok(None) | Err(_) => return,
    };
    let _ = pipe.write_all(&response).await;
    let _ = pipe.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::dir_stream::{encode_request, parse_response};

    #[tokio::test]
    async fn serves_one_request_then_closes() {
        let dir = std::env::temp_dir().join(format!("allium-dircache-{}", std::process::id()));
        let cache = Arc::new(DirCache::new(ConsensusCache::new(&dir, true)));
        let (mut ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        tokio::spawn(serve(theirs, cache.clone()));
        ours.write_all(&encode_request(CONSENSUS_PATH)).await.unwrap();
        let mut out = Vec::new();
        ours.read_to_end(&mut out).await.unwrap();
        assert_eq!(parse_response(&out, 1000).unwrap().status, 404, "nothing held yet");

        let (mut ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        tokio::spawn(serve(theirs, cache));
        ours.write_all(b"POST / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        ours.read_to_end(&mut out).await.unwrap();
        assert_eq!(parse_response(&out, 1000).unwrap().status, 400);
    }

    /// A live consensus and its microdescriptors are served, compressed when asked, and read
    /// back by the client's parser.
    #[tokio::test]
    async fn serves_the_consensus_and_microdescriptors_compressed() {
        use allium_proto::doc::{AuthoritySigner, Consensus, ConsensusRelay, Lifetime, Microdesc};
        use ed25519_dalek::SigningKey;
        let now = unix_now();
        let id_key = SigningKey::from_bytes(&[1; 32]);
        let ids = vec![allium_proto::ids::RelayId(id_key.verifying_key().to_bytes())];
        let relays = vec![ConsensusRelay::synthetic(1), ConsensusRelay::synthetic(2)];
        let mut c = Consensus::new(Lifetime::new(now - 5, now + 10, now + 30).unwrap(), ids.clone(), relays.clone());
        c.add_signature(c.sign(&AuthoritySigner::certify(&id_key, SigningKey::from_bytes(&[2; 32]), now - 100, now + 100)));
        let mut nd = NetDir::from_text(&c.encode(), &ids, now).unwrap();
        let mds: String = relays.iter().map(|r| Microdesc::of_relay(r).encode()).collect();
        assert_eq!(nd.add_microdescs(&mds), 2);
        let dir = std::env::temp_dir().join(format!("allium-dircache-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = DirCache::new(ConsensusCache::new(&dir, true));
        cache.store(nd);
        let ask = |path: &str, deflate: bool| cache.respond(&DirRequest::get(path, deflate), now);
        let plain = parse_response(&ask(CONSENSUS_PATH, false), 1 << 20).unwrap();
        let z = ask(CONSENSUS_PATH, true);
        assert!(String::from_utf8_lossy(&z).contains("Content-Encoding: deflate"));
        assert_eq!(parse_response(&z, 1 << 20).unwrap(), plain);
        assert_eq!(String::from_utf8(plain.body).unwrap(), c.encode());
        let all = parse_response(&ask("/allium/v1/microdescs", true), 1 << 20).unwrap();
        assert_eq!(String::from_utf8(all.body).unwrap().matches("allium-microdesc 1").count(), 2);
        assert_eq!(parse_response(&ask("/nothing", true), 1000).unwrap().status, 404);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The HSDir paths are served only while the live consensus flags this relay HSDir.
    #[tokio::test]
    async fn hsdir_paths_follow_the_flag() {
        use allium_proto::dir_stream::{encode_post, MAX_POST_BODY_LEN};
        use allium_proto::doc::{AuthoritySigner, Consensus, ConsensusRelay, Lifetime, Microdesc};
        use allium_proto::hs::{BlindedKey, HsDescriptor, TimePeriod};
        use ed25519_dalek::SigningKey;
        let now = unix_now();
        let id_key = SigningKey::from_bytes(&[1; 32]);
        let ids = vec![RelayId(id_key.verifying_key().to_bytes())];
        let mut flagged = ConsensusRelay::synthetic(1);
        flagged.flags = flagged.flags | RelayFlags::HSDIR;
        let relays = vec![flagged, ConsensusRelay::synthetic(2)];
        let mut c = Consensus::new(Lifetime::new(now - 5, now + 10, now + 30).unwrap(), ids.clone(), relays.clone());
        c.add_signature(c.sign(&AuthoritySigner::certify(&id_key, SigningKey::from_bytes(&[2; 32]), now - 100, now + 100)));
        let p = TimePeriod::at(now, allium_proto::hs::period::DEFAULT_PERIOD_SECS);
        let key = BlindedKey::derive(&SigningKey::from_bytes(&[7; 32]), p);
        let text = HsDescriptor { blinded_key: key.public(), period: p, revision: 1, lifetime_secs: 600, encrypted: vec![7; 64] }.encode_signed(&key);
        let get = format!("{}/{}", crate::hsdir::HS_DESCRIPTOR_PATH, hex::encode(key.public()));
        for (n, relay) in relays.iter().enumerate() {
            let dir = std::env::temp_dir().join(format!("allium-dircache-hsdir-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let cache = Arc::new(DirCache::with_identity(ConsensusCache::new(&dir, true), relay.identity, HsDir::default()));
            let mut nd = NetDir::from_text(&c.encode(), &ids, now).unwrap();
            let mds: String = relays.iter().map(|r| Microdesc::of_relay(r).encode()).collect();
            nd.add_microdescs(&mds);
            cache.store(nd);
            let exchange = |req: Vec<u8>| {
                let cache = cache.clone();
                async move {
                    let (mut ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
                    tokio::spawn(serve(theirs, cache));
                    ours.write_all(&req).await.unwrap();
                    let mut out = Vec::new();
                    ours.read_to_end(&mut out).await.unwrap();
                    parse_response(&out, 1 << 20).unwrap()
                }
            };
            let up = exchange(encode_post(crate::hsdir::HS_DESCRIPTOR_PATH, text.as_bytes())).await;
            let down = exchange(encode_request(&get)).await;
            if n == 0 {
                assert_eq!((up.status, up.body.as_slice()), (200, &b"stored\n"[..]));
                assert_eq!((down.status, down.body), (200, text.clone().into_bytes()));
                let big = format!("POST {} HTTP/1.0\r\nContent-Length: {}\r\n\r\n", crate::hsdir::HS_DESCRIPTOR_PATH, MAX_POST_BODY_LEN + 1);
                assert_eq!(exchange(big.into_bytes()).await.status, 400);
            } else {
                assert_eq!((up.status, up.body.as_slice()), (404, &b"not an HSDir\n"[..]));
                assert_eq!(down.status, 404);
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// A relay knows the ring value of the periods its consensus carries lines for, and of
    /// earlier ones; a later period (anchored by a newer consensus) or one of another length is
    /// unknown to it; a consensus without lines uses the fallback value for every period.
    #[test]
    fn ring_values_known_from_the_carried_lines() {
        use allium_proto::doc::{AuthoritySigner, Consensus, ConsensusMeta, ConsensusRelay, Lifetime};
        use allium_proto::hs::period::PeriodSrv;
        use ed25519_dalek::SigningKey;
        let now = unix_now();
        let id_key = SigningKey::from_bytes(&[1; 32]);
        let ids = vec![RelayId(id_key.verifying_key().to_bytes())];
        let p = TimePeriod::at(now, 60);
        let netdir = |period_srvs: Vec<PeriodSrv>| {
            let meta = ConsensusMeta { period_srvs, ..Default::default() };
            let mut c = Consensus::with_meta(Lifetime::new(now - 5, now + 10, now + 30).unwrap(), meta, ids.clone(), vec![ConsensusRelay::synthetic(1)]);
            c.add_signature(c.sign(&AuthoritySigner::certify(&id_key, SigningKey::from_bytes(&[2; 32]), now - 100, now + 100)));
            NetDir::from_text(&c.encode(), &ids, now).unwrap()
        };
        let line = |q: TimePeriod| PeriodSrv { number: q.number, length_secs: q.length_secs, value: [q.number as u8; 32] };
        let nd = netdir(vec![line(p), line(p.next())]);
        let before = TimePeriod { number: p.number - 1, length_secs: 60 };
        assert!(ring_value_known(&nd, before) && ring_value_known(&nd, p) && ring_value_known(&nd, p.next()));
        assert!(!ring_value_known(&nd, p.next().next()), "anchored by a later consensus");
        assert!(!ring_value_known(&nd, TimePeriod::at(now, 120)), "another period length");
        assert!(ring_value_known(&netdir(Vec::new()), p.next().next()), "no lines: the fallback value");
    }
}
