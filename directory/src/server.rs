//! The authority's HTTP interface: a thin layer that checks sizes, parses, verifies and hands
//! documents to [`AuthorityState`](crate::authority::AuthorityState).
//!
//! | method and path                       | body                      | success | refusals |
//! |---------------------------------------|---------------------------|---------|----------|
//! | `POST /allium/v1/descriptor`          | a relay descriptor        | 200     | 400 (one-line reason), 403 (its address holds `max_relays_per_address` relays), 413 over 16 KiB, 503 when full |
//! | `POST /allium/v1/vote`                | a vote                    | 200     | 400, 403 (names no peer, answered once the header has arrived: [`VOTE_HEADER_PREFIX`]), 409 (a different vote from that voter is held), 413 over 8 MiB, 429 (over the voter's budget of refused pushes, [`crate::vote_gate`]), 503 (as many pushes naming that voter as are read at a time are being read), 408 (the body not all sent within `limits.vote_read_timeout_secs`) |
//! | `GET /allium/v1/vote/{valid_after}`   | —                         | 200, this authority's own vote | 400 bad number, 404 none |
//! | `POST /allium/v1/signature`           | a detached signature      | 200     | 400, 409 (digest differs from ours), 413 over 1 KiB |
//! | `GET /allium/v1/consensus`            | —                         | 200, latest consensus with every signature gathered | 404 none yet |
//! | `GET /allium/v1/microdescs[/<hex>-<hex>…]` | —                    | 200, the published consensus's microdescriptors (all, or those named) | 400 malformed list |
//! | `GET /` and `GET /status`             | —                         | 200, the network status page (HTML, [`crate::status_page`]) | 503 (an HTML page) no consensus yet |
//!
//! Responses are `text/plain` except the status page (`text/html`); a refusal's body is one
//! line saying why. The status page is rendered at most once per consensus and validity state
//! ([`StatusPage`]), so requests for it cost a lookup and a copy of cached bytes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_net::config::AuthorityEntry;
use allium_proto::doc::{Consensus, DetachedSignature, RelayDescriptor, Vote, MAX_DESCRIPTOR_LEN, MAX_SIGNATURE_DOC_LEN, MAX_VOTE_LEN};
use allium_proto::ids::RelayId;
use http_body_util::BodyExt;

use crate::authority::{Accepted, AuthorityState, Reject, Shared, SKEW_MARK};
use crate::status_page::{self, PageInput, RelayNotes, Validity};

/// Every route of the directory HTTP interface.
pub(crate) fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/allium/v1/descriptor", post(post_descriptor).layer(DefaultBodyLimit::max(MAX_DESCRIPTOR_LEN)))
        // Read incrementally, within MAX_VOTE_LEN ([`read_vote`]).
        .route("/allium/v1/vote", post(post_vote))
        .route("/allium/v1/vote/{valid_after}", get(get_vote))
        .route("/allium/v1/signature", post(post_signature).layer(DefaultBodyLimit::max(MAX_SIGNATURE_DOC_LEN)))
        .route("/allium/v1/consensus", get(get_consensus))
        .route("/allium/v1/microdescs", get(get_all_microdescs))
        .route("/allium/v1/microdescs/{digests}", get(get_microdescs))
        .route("/", get(get_status_page))
        .route("/status", get(get_status_page))
        .layer(axum::middleware::map_response_with_state(sh.clone(), add_date))
        .with_state(sh)
}

/// Every answer carries a `Date` header from the authority's own clock (so that peers can
/// compare clocks, and a test network's shifted clock shows).
async fn add_date(State(sh): State<Arc<Shared>>, mut resp: Response) -> Response {
    if let Ok(v) = header::HeaderValue::from_str(&crate::clock::format_http_date(sh.clock.now_secs())) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

fn refused(what: &str, r: Reject) -> Response {
    tracing::debug!("{what} refused: {}", r.reason);
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    text(status, format!("{what} refused: {}\n", r.reason))
}

fn ok(a: Accepted) -> Response {
    text(StatusCode::OK, if a == Accepted::New { "accepted\n" } else { "already held\n" })
}

async fn post_descriptor(State(sh): State<Arc<Shared>>, body: String) -> Response {
    let d = match RelayDescriptor::parse(&body).and_then(|u| u.verify()) {
        Ok(d) => d,
        Err(e) => return refused("descriptor", Reject { status: 400, reason: e.to_string() }),
    };
    let id = d.identity;
    let r = {
        let mut st = sh.lock();
        let r = st.accept_descriptor(d, sh.clock.now_secs());
        if r == Ok(Accepted::New) {
            st.keep_descriptor_text(id, body.into());
        }
        r
    };
    match r {
        Ok(a) => {
            tracing::debug!(relay = %id.short(), "descriptor {:?}", a);
            // A relay seen for the first time is tested now, so it can be voted Running at once
            // (only when a test slot is free; otherwise the next round before the vote tests it).
            let target = sh.lock().untested(&id);
            if let (Some(target), true) = (target, sh.tests.available_permits() > 0) {
                let sh2 = sh.clone();
                tokio::spawn(async move {
                    let window = crate::authority::reach_window_ms(sh2.schedule.interval_secs()).max(1000);
                    crate::authority::test_reachability(&sh2, vec![target], Duration::from_millis(window)).await;
                });
            }
            ok(a)
        }
        Err(r) => refused("descriptor", r),
    }
}

/// Parses, verifies and stores a vote (pushed to us or pulled by us).
pub(crate) fn ingest_vote(sh: &Shared, body: &str) -> Result<Accepted, Reject> {
    peer_voter(sh, Vote::claimed_voter(body))?;
    let now = sh.clock.now_ms();
    let v = Vote::parse(body).and_then(|u| u.verify(now / 1000)).map_err(|e| Reject { status: 400, reason: e.to_string() })?;
    let voter = v.voter;
    let t = v.lifetime.valid_after;
    let r = sh.lock().accept_vote(v, body.into(), now);
    if r == Ok(Accepted::New) && !sh.schedule.is_period_start(t) {
        sh.joinable.peer_voted(t);
    }
    if let Err(rej) = &r {
        if rej.reason.ends_with(SKEW_MARK) {
            // At most once a period per peer: it votes once a period.
            let name = sh.peers.iter().find(|p| p.identity == voter).map_or("?", |p| p.name.as_str());
            tracing::info!(authority = %name, "vote refused: {}", rej.reason);
        }
    }
    r
}

/// The voter a vote's header names (`claimed`, [`Vote::claimed_voter`]) if it is one of this
/// network's other authorities; refuses the vote otherwise, before any parsing or verification
/// (the body's size was capped as it was read).
fn peer_voter(sh: &Shared, claimed: Option<RelayId>) -> Result<RelayId, Reject> {
    match claimed {
        Some(v) if sh.peers.iter().any(|p| p.identity == v) => Ok(v),
        _ => {
            LimitCounters::hit(&LIMITS.votes_from_strangers);
            Err(Reject { status: 403, reason: "not a vote from another authority of this network".into() })
        }
    }
}

/// Bytes of a pushed vote that may arrive before its header names the voter: a push whose
/// first `VOTE_HEADER_PREFIX` bytes name no other authority of the network is refused (403)
/// with nothing more read. A vote names its voter in its fifth line, some 200 bytes in.
pub const VOTE_HEADER_PREFIX: usize = 4096;

/// The voter a pushed vote's first bytes `buf` name, once that is settled: `Ok(Some(voter))`,
/// a peer; `Err` with the refusal (403, counted) when they name no peer, or cannot name one any
/// more (the body ended, or [`VOTE_HEADER_PREFIX`] bytes arrived); `Ok(None)` while more bytes
/// may tell. Only complete lines are read before the end (a line cut short could read as
/// another fingerprint), so the answer is the one [`Vote::claimed_voter`] gives the whole body.
fn settled_voter(sh: &Shared, buf: &[u8], ended: bool) -> Result<Option<RelayId>, Response> {
    let full = ended || buf.len() >= VOTE_HEADER_PREFIX;
    let head = if ended { buf } else { &buf[..buf.len().min(VOTE_HEADER_PREFIX)] };
    let lines = if ended { head.len() } else { head.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) };
    // Complete lines end at a character boundary: invalid UTF-8 here is invalid in the whole.
    let Ok(text) = std::str::from_utf8(&head[..lines]) else {
        return Err(refused("vote", Reject { status: 400, reason: "not UTF-8".into() }));
    };
    match Vote::claimed_voter(text) {
        None if !full => Ok(None),
        claimed => peer_voter(sh, claimed).map(Some).map_err(|r| refused("vote", r)),
    }
}

/// A place among the pushes naming `voter` read at a time, or the refusal (503, counted).
fn admit<'a>(sh: &'a Shared, voter: &RelayId) -> Result<crate::vote_gate::InFlight<'a>, Response> {
    sh.vote_pushes.begin(voter).ok_or_else(|| {
        LimitCounters::hit(&LIMITS.vote_pushes_in_flight);
        refused("vote", Reject { status: 503, reason: "other votes naming this authority are being received; its vote is fetched from it instead".into() })
    })
}

/// Reads a pushed vote as it arrives: refused as soon as its header names no peer (after at
/// most [`VOTE_HEADER_PREFIX`] bytes) or when [`crate::vote_gate::MAX_VOTE_PUSHES_IN_FLIGHT`]
/// pushes naming its voter are being read; over [`MAX_VOTE_LEN`] refused 413 (at once when its
/// `Content-Length` says so). The text, its voter and its place among the pushes being read.
async fn read_vote(sh: &Shared, mut body: Body) -> Result<(String, RelayId, crate::vote_gate::InFlight<'_>), Response> {
    let too_large = || text(StatusCode::PAYLOAD_TOO_LARGE, format!("vote refused: longer than {MAX_VOTE_LEN} bytes\n"));
    if body.size_hint().lower() > MAX_VOTE_LEN as u64 {
        return Err(too_large());
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut admitted = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| text(StatusCode::BAD_REQUEST, format!("vote refused: {e}\n")))?;
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > MAX_VOTE_LEN {
            return Err(too_large());
        }
        buf.extend_from_slice(&data);
        if admitted.is_none() && (data.contains(&b'\n') || buf.len() >= VOTE_HEADER_PREFIX) {
            if let Some(voter) = settled_voter(sh, &buf, false)? {
                admitted = Some((voter, admit(sh, &voter)?));
            }
        }
    }
    let (voter, place) = match admitted {
        Some(a) => a,
        None => {
            let voter = settled_voter(sh, &buf, true)?.expect("settled at the end");
            (voter, admit(sh, &voter)?)
        }
    };
    let text = String::from_utf8(buf).map_err(|_| refused("vote", Reject { status: 400, reason: "not UTF-8".into() }))?;
    Ok((text, voter, place))
}

async fn post_vote(State(sh): State<Arc<Shared>>, body: Body) -> Response {
    // `_reading` holds the push's place until it is answered. A body that trickles in is
    // refused at `vote_read_timeout_secs` (8 MiB in the default 60 s is 140 KB/s), so pushes
    // naming a voter cannot hold that voter's places ([`crate::vote_gate`]) for long.
    let (body, voter, _reading) = match tokio::time::timeout(sh.vote_read_timeout, read_vote(&sh, body)).await {
        Ok(Ok(v)) => v,
        Ok(Err(resp)) => return resp,
        Err(_) => {
            LimitCounters::hit(&LIMITS.vote_pushes_too_slow);
            return text(StatusCode::REQUEST_TIMEOUT, format!("vote refused: not all sent within {} s\n", sh.vote_read_timeout.as_secs()));
        }
    };
    // Checks before parsing (crate::vote_gate): a vote already held from that voter, then the
    // voter's budget of refused pushes.
    let held = Vote::claimed_valid_after(&body).and_then(|t| sh.lock().held_vote_text(t, &voter));
    let r = match held {
        Some(text) if *text == *body.as_str() => Ok(Accepted::Unchanged),
        Some(_) => Err(Reject::conflict("a different vote from this authority is already held for this period")),
        None if !sh.vote_pushes.allows(&voter, sh.clock.now_ms()) => {
            LimitCounters::hit(&LIMITS.vote_pushes_over_budget);
            return refused("vote", Reject { status: 429, reason: "too many refused votes naming this authority; its vote is fetched from it instead".into() });
        }
        None => {
            // Parsing and checking up to 8 MiB is CPU work: keep it off the async workers.
            let sh2 = sh.clone();
            match tokio::task::spawn_blocking(move || ingest_vote(&sh2, &body)).await {
                Ok(r) => r,
                Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
            }
        }
    };
    match r {
        Ok(a) => ok(a),
        Err(r) => {
            sh.vote_pushes.refused(&voter, sh.clock.now_ms());
            refused("vote", r)
        }
    }
}

async fn get_vote(State(sh): State<Arc<Shared>>, Path(valid_after): Path<u64>) -> Response {
    let v = sh.lock().own_vote(valid_after);
    match v {
        Some(t) => text(StatusCode::OK, &*t),
        None => text(StatusCode::NOT_FOUND, "no vote for that period\n"),
    }
}

async fn post_signature(State(sh): State<Arc<Shared>>, body: String) -> Response {
    let s = match DetachedSignature::parse(&body) {
        Ok(s) => s,
        Err(e) => return refused("signature", Reject { status: 400, reason: e.to_string() }),
    };
    let (r, recomputed) = {
        let mut st = sh.lock();
        let r = st.accept_signature(s, sh.clock.now_ms());
        (r, st.take_recomputed())
    };
    if let Some(mine) = recomputed {
        tracing::info!(valid_after = %allium_proto::time::Utc(mine.valid_after), "consensus computed again with a vote that came late: it matches the peers'");
        let timeout = std::time::Duration::from_secs(sh.schedule.interval_secs().clamp(2, 30));
        crate::authority::push_signature(&sh, mine.encode(), timeout);
    }
    match r {
        Ok(published) => {
            if let Some(p) = published {
                sh.on_published(p).await;
            }
            ok(Accepted::New)
        }
        Err(r) => refused("signature", r),
    }
}

async fn get_all_microdescs(State(sh): State<Arc<Shared>>) -> Response {
    microdescs(&sh, crate::microdescs::MICRODESCS_PATH)
}

async fn get_microdescs(State(sh): State<Arc<Shared>>, Path(digests): Path<String>) -> Response {
    microdescs(&sh, &format!("{}/{digests}", crate::microdescs::MICRODESCS_PATH))
}

fn microdescs(sh: &Shared, path: &str) -> Response {
    let answer = sh.lock().microdescs_answer(path);
    match answer {
        Some(body) => text(StatusCode::OK, body),
        None => text(StatusCode::BAD_REQUEST, "microdescriptors refused: malformed digest list\n"),
    }
}

async fn get_consensus(State(sh): State<Arc<Shared>>) -> Response {
    let c = sh.lock().consensus_text();
    match c {
        Some(t) => text(StatusCode::OK, &*t),
        None => text(StatusCode::NOT_FOUND, "no consensus yet\n"),
    }
}

// ---------------------------------------------------------------------------------------------
// The status page
// ---------------------------------------------------------------------------------------------

/// What a rendered status page depends on besides the authority's notes: the consensus (and
/// its signature set, which may grow after publication) and where the clock is in its
/// lifetime. A new key means one new render; uptimes shown are as of that render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageKey {
    valid_after: u64,
    digest: [u8; 32],
    signatures: usize,
    validity: Validity,
}

impl PageKey {
    fn of(c: &Consensus, now: u64) -> Self {
        PageKey { valid_after: c.valid_after(), digest: c.digest(), signatures: c.signatures().len(), validity: Validity::of(c, now) }
    }
}

/// Bytes rendered for a key, rendered again only when the key changes. Requests that arrive
/// during a render wait for it and then share its result.
struct PageCache<K> {
    slot: tokio::sync::Mutex<Option<(K, Bytes)>>,
}

impl<K: Clone + PartialEq> PageCache<K> {
    fn new() -> Self {
        PageCache { slot: tokio::sync::Mutex::new(None) }
    }

    /// The bytes cached for `key`, or else those `render` makes (with the key they were
    /// actually made for, which may be newer than `key`), cached from then on.
    async fn get<F, Fut>(&self, key: K, render: F) -> (K, Bytes)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (K, Bytes)>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((k, b)) = slot.as_ref().filter(|(k, _)| *k == key) {
            return (k.clone(), b.clone());
        }
        let (k, b) = render().await;
        *slot = Some((k.clone(), b.clone()));
        (k, b)
    }
}

/// The authority's network status page ([`crate::status_page`]) and its cache.
pub(crate) struct StatusPage {
    /// The network's authorities, as configured (names for the signature list).
    authorities: Arc<[AuthorityEntry]>,
    /// `None` as a key: the page saying there is no consensus yet.
    cache: PageCache<Option<PageKey>>,
}

impl StatusPage {
    pub fn new(authorities: Vec<AuthorityEntry>) -> Self {
        StatusPage { authorities: authorities.into(), cache: PageCache::new() }
    }

    /// The page for the consensus held now, rendered if not cached; `None` as the key when
    /// there is no consensus yet.
    async fn get(&self, sh: &Shared) -> (Option<PageKey>, Bytes) {
        let now = sh.clock.now_secs();
        let key = sh.lock().published_consensus().map(|c| PageKey::of(c, now));
        self.cache
            .get(key, || async {
                // One copy of the consensus per render, so the state lock is not held while rendering.
                let snapshot = {
                    let st = sh.lock();
                    st.published_consensus().map(|c| (c.clone(), relay_notes(&st, c)))
                };
                match snapshot {
                    None => (None, Bytes::from(status_page::render_no_consensus())),
                    Some((c, notes)) => {
                        let html = status_page::render(&PageInput { consensus: &c, authorities: &self.authorities, notes: &notes, now });
                        (Some(PageKey::of(&c, now)), Bytes::from(html))
                    }
                }
            })
            .await
    }
}

/// What the authority knows about each relay of `c` beyond the consensus.
fn relay_notes(st: &AuthorityState, c: &Consensus) -> HashMap<allium_proto::ids::RelayId, RelayNotes> {
    c.relays()
        .iter()
        .map(|r| {
            let d = st.descriptor(&r.identity);
            let n = RelayNotes { running_since: st.running_since(&r.identity), advertised_bandwidth: d.map(|d| d.bandwidth), platform: d.and_then(|d| d.platform.clone()) };
            (r.identity, n)
        })
        .collect()
}

async fn get_status_page(State(sh): State<Arc<Shared>>) -> Response {
    let (key, body) = sh.status_page.get(&sh).await;
    let status = if key.is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // The page has no script and loads nothing: say so to the browser too.
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn status_page_renders_once_per_key() {
        let cache = PageCache::new();
        let renders = AtomicUsize::new(0);
        let render = |k: u32| {
            let renders = &renders;
            move || async move {
                renders.fetch_add(1, Ordering::SeqCst);
                (k, Bytes::from(format!("page {k}")))
            }
        };
        for _ in 0..100 {
            assert_eq!(cache.get(1, render(1)).await, (1, Bytes::from("page 1")));
        }
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(2, render(2)).await.1, Bytes::from("page 2"));
        assert_eq!(cache.get(2, render(2)).await.1, Bytes::from("page 2"));
        assert_eq!(renders.load(Ordering::SeqCst), 2);
        // A render that finds a newer key caches under that key.
        assert_eq!(cache.get(2, render(3)).await.0, 2);
        assert_eq!(renders.load(Ordering::SeqCst), 2, "key 2 is cached");
        assert_eq!(cache.get(4, render(5)).await.0, 5);
        assert_eq!(cache.get(5, render(6)).await, (5, Bytes::from("page 5")));
        assert_eq!(renders.load(Ordering::SeqCst), 3);
    }
}
