//! Where the client gets its consensus: through its guards (a one-hop circuit and a directory
//! stream, BEGIN_DIR), so no authority learns who the clients are.
//!
//! Sources, tried in this order until one serves a consensus that verifies:
//! 1. the primary guards, once the client has a usable consensus and guards;
//! 2. the configured fallback directories (`client.fallback_dirs`), in random order;
//! 3. only when no fallback is configured: the authorities, over plain HTTP (they see the
//!    client's address, as for any first contact).
//!
//! Every attempt is bounded by [`FETCH_ATTEMPT_TIMEOUT`]; the caller retries with backoff.

use allium_directory::fetch::{fetch_missing_microdescs, verify_off_thread, FetchAttempt, FetchAttemptError, FetchError, FETCH_ATTEMPT_TIMEOUT};
use allium_directory::NetDir;
use allium_proto::dir_stream::{encode_request, parse_response, CONSENSUS_DIFF_PATH, CONSENSUS_PATH};
use allium_proto::doc::diff::{apply_diff, text_digest};
use allium_proto::doc::{ConsensusRelay, MAX_CONSENSUS_LEN};
use allium_proto::ids::RelayId;
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::circmgr::CircMgr;
use crate::circuit::CircHandle;
use crate::config::{ClientConfig, FallbackDir};

/// The path of the consensus on a directory stream.

/// Which kind of source served the consensus (for the bootstrap log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Guard,
    Fallback,
    Authority,
}

impl SourceKind {
    pub fn describe(self) -> &'static str {
        match self {
            SourceKind::Guard => "from a guard",
            SourceKind::Fallback => "from a fallback directory",
            SourceKind::Authority => "from an authority",
        }
    }
}

/// A fallback as a hop to build a one-hop circuit to (it has no consensus entry yet).
fn fallback_hop(f: &FallbackDir) -> ConsensusRelay {
    let mut r = ConsensusRelay::synthetic(0);
    r.nickname = f.nickname.clone();
    r.identity = f.identity;
    r.address = f.address;
    r.link_key = f.link_key;
    r.onion_key = f.onion_key;
    r
}

/// Fetches and verifies a consensus at `now`, through the first source that serves one.
pub async fn fetch(cfg: &ClientConfig, circuits: &CircMgr, current: Option<&NetDir>, now: u64) -> Result<(NetDir, SourceKind), FetchError> {
    let authorities: Vec<RelayId> = cfg.network.authorities.iter().map(|a| a.identity).collect();
    let mut hops: Vec<(ConsensusRelay, SourceKind)> = Vec::new();
    if let Some(dir) = current {
        hops.extend(circuits.directory_guards(dir).into_iter().map(|r| (r, SourceKind::Guard)));
    }
    let mut fallbacks: Vec<&FallbackDir> = cfg.client.fallback_dirs.iter().collect();
    fallbacks.shuffle(&mut rand::thread_rng());
    hops.extend(fallbacks.into_iter().map(|f| (fallback_hop(f), SourceKind::Fallback)));
    let mut failures = Vec::new();
    for (hop, kind) in hops {
        match through_relay(circuits, &hop, &authorities, now, current).await {
            Ok(nd) => {
                tracing::debug!(valid_after = %allium_proto::time::Utc(nd.valid_after()), "consensus fetched {} ({})", kind.describe(), hop.nickname);
                return Ok((nd, kind));
            }
            Err(error) => {
                tracing::debug!("consensus fetch {} ({}) failed: {error}", kind.describe(), hop.nickname);
                failures.push(FetchAttempt { source: hop.nickname.clone(), error });
            }
        }
    }
    if !cfg.client.fallback_dirs.is_empty() {
        return Err(FetchError::AllFailed(failures));
    }
    match allium_directory::fetch_consensus(&cfg.network, cfg.node.address, now, current).await {
        Ok(nd) => Ok((nd, SourceKind::Authority)),
        Err(FetchError::AllFailed(more)) => {
            failures.extend(more);
            Err(FetchError::AllFailed(failures))
        }
        Err(e) => Err(e),
    }
}

/// One attempt: a one-hop circuit to `hop`; on it, a directory stream to `GET` the consensus,
/// then more for the microdescriptors the client lacks (those `current` holds are reused).
async fn through_relay(circuits: &CircMgr, hop: &ConsensusRelay, authorities: &[RelayId], now: u64, current: Option<&NetDir>) -> Result<NetDir, FetchAttemptError> {
    let attempt = async {
        let circ = circuits.one_hop(hop).await.map_err(|e| FetchAttemptError::Http(format!("circuit: {e}")))?;
        let (text, diffed) = match current.map(diff_path) {
            // The diff from the consensus held, if the cache can make it; else the whole one.
            Some((path, base)) => match get(&circ, path).await.ok().and_then(|d| apply_diff(&base, &d).ok()) {
                Some(t) => (t, true),
                None => (get(&circ, CONSENSUS_PATH.to_string()).await.map_err(FetchAttemptError::Http)?, false),
            },
            None => (get(&circ, CONSENSUS_PATH.to_string()).await.map_err(FetchAttemptError::Http)?, false),
        };
        // A diff saves bytes only: the result is verified like a whole download.
        let mut nd = verify_off_thread(text, authorities.to_vec(), now).await?;
        if diffed {
            allium_net::metrics::METRICS.consensus_diffs.inc();
        }
        if let Some(c) = current {
            nd.reuse_microdescs(c);
        }
        fetch_missing_microdescs(&mut nd, |path| get(&circ, path)).await?;
        Ok(nd)
    };
    tokio::time::timeout(FETCH_ATTEMPT_TIMEOUT, attempt).await.unwrap_or_else(|_| Err(FetchAttemptError::Http("timed out".into())))
}

/// The path of the diff from `held`, and the text it applies to.
fn diff_path(held: &NetDir) -> (String, String) {
    let text = held.consensus_text().to_string();
    (format!("{CONSENSUS_DIFF_PATH}{}", hex::encode(text_digest(&text))), text)
}

/// One request on a fresh directory stream of `circ`: the body of a 200 answer.
async fn get(circ: &CircHandle, path: String) -> Result<String, String> {
    let mut stream = circ.begin_dir().await.map_err(|r| format!("directory stream refused ({r:?})"))?;
    stream.write_all(&encode_request(&path)).await.map_err(|_| "directory stream closed".to_string())?;
    let mut raw = Vec::new();
    let limit = (MAX_CONSENSUS_LEN + allium_proto::dir_stream::MAX_RESPONSE_HEAD_LEN + 4) as u64;
    (&mut stream).take(limit + 1).read_to_end(&mut raw).await.map_err(|_| "directory stream failed".to_string())?;
    let resp = parse_response(&raw, MAX_CONSENSUS_LEN).map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!("HTTP {}: {}", resp.status, String::from_utf8_lossy(&resp.body).trim_end()));
    }
    String::from_utf8(resp.body).map_err(|_| "body is not UTF-8".to_string())
}
