//! The relay as an HSDir: it keeps onion-service descriptors (`allium_proto::hs::HsDirStore`,
//! bounded, expiring) and serves them on directory streams, while the live consensus gives this
//! relay the `HSDir` flag:
//! - `POST /allium/v1/hs/descriptor` (body: a descriptor): 200 `stored` / `already held`; 400 with
//!   a one-line reason (malformed, bad signature, wrong period, older revision, not responsible:
//!   the blinded key is not on this relay's part of the ring in the current or previous
//!   consensus); when full, the descriptors stored longest ago are evicted to make room;
//! - `GET /allium/v1/hs/descriptor/<blinded key, 64 hex digits>`: 200 with the descriptor, 404.
//!
//! A relay that neither its live consensus nor the one before flags HSDir answers both with 404
//! `not an HSDir`. The store knows only blinded keys; nothing about a descriptor or its uploader
//! is logged.

use std::sync::Mutex;

use allium_proto::dir_stream::{encode_response, DirRequest, Method};
use allium_proto::hs::period::DEFAULT_PERIOD_SECS;
use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_proto::hs::{HsDirStore, StoreError, Stored, TimePeriod};

/// The path of descriptor uploads; fetches append `/<64 hex digits>`.
pub const HS_DESCRIPTOR_PATH: &str = "/allium/v1/hs/descriptor";
/// Expired descriptors are dropped at least this often (when requests come).
const EXPIRE_EVERY_SECS: u64 = 60;

/// An HSDir's descriptor cache.
pub struct HsDir {
    inner: Mutex<(HsDirStore, u64)>,
    /// Test hook (THREATS A5): alter the signature of every descriptor served.
    mutate_answers: std::sync::atomic::AtomicBool,
}

impl Default for HsDir {
    fn default() -> Self {
        Self::with_limits(&allium_net::limits::LimitsConfig::default())
    }
}

impl HsDir {
    /// A cache holding at most `limits.hsdir_max_descriptors` descriptors and
    /// `limits.hsdir_max_mib` of descriptor text.
    pub fn with_limits(limits: &allium_net::limits::LimitsConfig) -> Self {
        Self::new(limits.hsdir_max_descriptors, limits.hsdir_max_bytes())
    }

    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        HsDir {
            inner: Mutex::new((HsDirStore::new(DEFAULT_PERIOD_SECS, max_entries, max_bytes), 0)),
            mutate_answers: Default::default(),
        }
    }

    /// Test hook: serve every descriptor with one character of its signature changed.
    pub fn set_mutate_answers(&self, on: bool) {
        self.mutate_answers.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The text to serve for a held descriptor.
    fn served(&self, text: &str) -> Vec<u8> {
        if self.mutate_answers.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!("test hook: serving an altered descriptor");
            return mutate_signature(text).into_bytes();
        }
        text.as_bytes().to_vec()
    }

    /// Descriptors held.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer to `req` if its path is an HSDir path, else `None`. `is_hsdir`: the live
    /// consensus flags this relay HSDir; `period_len`: its onion-service period length.
    pub fn respond(&self, req: &DirRequest, is_hsdir: bool, period_len: u64, now: u64, responsible: &dyn Fn(&[u8; 32], TimePeriod) -> bool) -> Option<Vec<u8>> {
        let key = match (req.method, req.path.strip_prefix(HS_DESCRIPTOR_PATH)) {
            (Method::Post, Some("")) => None,
            (Method::Get, Some(rest)) if rest.starts_with('/') => Some(&rest[1..]),
            _ => return None,
        };
        if !is_hsdir {
            return Some(encode_response(404, b"not an HSDir\n"));
        }
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (store, last_expiry) = &mut *guard;
        store.set_period_len(period_len);
        if now >= last_expiry.saturating_add(EXPIRE_EVERY_SECS) {
            store.expire(now);
            *last_expiry = now;
        }
        Some(match key {
            None => {
                let Ok(text) = std::str::from_utf8(&req.body) else { return Some(encode_response(400, b"descriptor is not UTF-8\n")) };
                let evicted = store.evictions();
                let r = store.offer(text, now, responsible);
                if store.evictions() > evicted {
                    LIMITS.hsdir_evictions.fetch_add(store.evictions() - evicted, std::sync::atomic::Ordering::Relaxed);
                }
                match r {
                    Ok(Stored::New | Stored::Replaced) => encode_response(200, b"stored\n"),
                    Ok(Stored::AlreadyHeld) => encode_response(200, b"already held\n"),
                    Err(e) => {
                        if e == StoreError::NotResponsible {
                            LimitCounters::hit(&LIMITS.hsdir_not_responsible);
                        }
                        encode_response(400, format!("{}\n", one_line(&e.to_string())).as_bytes())
                    }
                }
            }
            Some(hex_key) => match parse_key(hex_key) {
                None => encode_response(400, b"blinded key must be 64 hex digits\n"),
                Some(k) => match store.get(&k, now) {
                    Some(text) => encode_response(200, &self.served(text)),
                    None => encode_response(404, b"no descriptor held\n"),
                },
            },
        })
    }
}

/// `text` with the first base64 character of its `signature` line changed (still parses, no
/// longer verifies).
fn mutate_signature(text: &str) -> String {
    let Some(at) = text.find("\nsignature ").map(|i| i + "\nsignature ".len()) else { return text.to_string() };
    let mut b = text.as_bytes().to_vec();
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap_or_else(|_| text.to_string())
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

fn parse_key(hex_key: &str) -> Option<[u8; 32]> {
    if hex_key.len() != 64 {
        return None;
    }
    let v = hex::decode(hex_key).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::dir_stream::{parse_response, DirResponse};
    use allium_proto::hs::{BlindedKey, HsDescriptor, TimePeriod};
    use ed25519_dalek::SigningKey;

    fn desc(seed: u8, revision: u64, p: TimePeriod) -> (String, [u8; 32]) {
        let key = BlindedKey::derive(&SigningKey::from_bytes(&[seed; 32]), p);
        let d = HsDescriptor { blinded_key: key.public(), period: p, revision, lifetime_secs: 3600, encrypted: vec![seed; 100] };
        (d.encode_signed(&key), key.public())
    }

    fn post(body: &str) -> DirRequest {
        DirRequest { method: Method::Post, path: HS_DESCRIPTOR_PATH.into(), deflate: false, body: body.as_bytes().to_vec() }
    }

    fn get(key: &[u8; 32]) -> DirRequest {
        DirRequest::get(&format!("{HS_DESCRIPTOR_PATH}/{}", hex::encode(key)), true)
    }

    fn ask(h: &HsDir, r: &DirRequest, hsdir: bool, now: u64) -> DirResponse {
        parse_response(&h.respond(r, hsdir, DEFAULT_PERIOD_SECS, now, &|_, _| true).expect("an HSDir path"), 1 << 20).unwrap()
    }

    /// The A5 hook serves a descriptor that still parses but no longer verifies.
    #[test]
    fn mutating_hook_breaks_only_the_signature() {
        let p = TimePeriod::at(20_000 * DEFAULT_PERIOD_SECS + 100, DEFAULT_PERIOD_SECS);
        let h = HsDir::new(2, 1 << 20);
        let (d, k) = desc(3, 1, p);
        assert_eq!(ask(&h, &post(&d), true, p.start() + 1).status, 200);
        h.set_mutate_answers(true);
        let got = String::from_utf8(ask(&h, &get(&k), true, p.start() + 2).body).unwrap();
        assert_ne!(got, d);
        let parsed = HsDescriptor::parse(&got).expect("still parses");
        assert!(parsed.verify(&k).is_err(), "the altered signature must not verify");
        assert!(HsDescriptor::parse(&d).unwrap().verify(&k).is_ok());
    }

    #[test]
    fn upload_fetch_refuse_expire() {
        let p = TimePeriod::at(20_000 * DEFAULT_PERIOD_SECS + 100, DEFAULT_PERIOD_SECS);
        let now = p.start() + 100;
        let h = HsDir::new(2, 1 << 20);
        let (d1, k1) = desc(1, 1, p);
        assert_eq!(ask(&h, &post(&d1), false, now), DirResponse { status: 404, body: b"not an HSDir\n".to_vec() });
        assert_eq!(ask(&h, &get(&k1), false, now).status, 404);
        assert_eq!(ask(&h, &get(&k1), true, now).status, 404);
        assert_eq!(ask(&h, &post(&d1), true, now), DirResponse { status: 200, body: b"stored\n".to_vec() });
        assert_eq!(ask(&h, &post(&d1), true, now).body, b"already held\n");
        assert_eq!(ask(&h, &get(&k1), true, now), DirResponse { status: 200, body: d1.clone().into_bytes() });
        let (d2, _) = desc(1, 2, p);
        assert_eq!(ask(&h, &post(&d2), true, now).status, 200);
        let older = ask(&h, &post(&d1), true, now);
        assert_eq!((older.status, older.body), (400, b"a descriptor with a higher revision is held\n".to_vec()));
        let forged = d2.replace("revision 2", "revision 3");
        assert_eq!(ask(&h, &post(&forged), true, now).status, 400);
        assert_eq!(ask(&h, &post("junk"), true, now).status, 400);
        let bad = DirRequest { body: vec![0xff], ..post("") };
        assert_eq!(ask(&h, &bad, true, now).status, 400);
        assert_eq!(ask(&h, &DirRequest::get(&format!("{HS_DESCRIPTOR_PATH}/abc"), false), true, now).status, 400);
        let (d3, _) = desc(3, 1, p);
        assert_eq!(ask(&h, &post(&d3), true, now).status, 200);
        // Full: the longest stored (d2, for k1) is evicted, never the upload refused.
        let (d4, k4) = desc(4, 1, p);
        assert_eq!(ask(&h, &post(&d4), true, now).status, 200, "full: evicts instead of refusing");
        assert_eq!(ask(&h, &get(&k1), true, now).status, 404, "the longest stored was evicted");
        assert_eq!(ask(&h, &get(&k4), true, now).status, 200);
        assert_eq!(h.len(), 2);
        // Not on this relay's part of the ring: refused, named.
        let (d5, _) = desc(5, 1, p);
        let r = parse_response(&h.respond(&post(&d5), true, DEFAULT_PERIOD_SECS, now, &|_, _| false).unwrap(), 1 << 20).unwrap();
        assert_eq!((r.status, r.body), (400, b"this HSDir is not responsible for that blinded key in that period\n".to_vec()));
        // Expired after its lifetime.
        assert_eq!(ask(&h, &get(&k4), true, now + 3600).status, 404);
        // Other paths are not ours.
        assert!(h.respond(&DirRequest::get("/allium/v1/consensus", true), true, DEFAULT_PERIOD_SECS, now, &|_, _| true).is_none());
        assert!(h.respond(&DirRequest::get(HS_DESCRIPTOR_PATH, true), true, DEFAULT_PERIOD_SECS, now, &|_, _| true).is_none());
    }
}
