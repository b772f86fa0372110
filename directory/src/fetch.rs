//! The client and relay side: downloading and verifying the consensus.

use std::net::IpAddr;
use std::time::Duration;

use allium_net::config::NetworkConfig;
use allium_proto::doc::{ConsensusError, DocError, MAX_CONSENSUS_LEN};
use allium_proto::ids::RelayId;
use rand::seq::SliceRandom;

use crate::http;
use crate::microdescs::{request_path, MAX_PER_REQUEST, MICRODESCS_PATH};
use crate::netdir::NetDir;

/// How long one attempt (connect, download, verify) may take.
pub const FETCH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one source's answer (an authority's, or a directory cache's) was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchAttemptError {
    /// Connection, timeout, HTTP status or an oversized body.
    #[error("{0}")]
    Http(String),
    #[error("unparseable consensus: {0}")]
    Parse(DocError),
    #[error("{0}")]
    Verify(ConsensusError),
    #[error("{0}")]
    Params(crate::params::ParamError),
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchAttempt {
    /// The source: an authority's configured name, or a relay's nickname.
    pub source: String,
    pub error: FetchAttemptError,
}

/// Why no consensus could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("no directory authority configured")]
    NoAuthorities,
    #[error("cannot make an HTTP client: {0}")]
    Client(String),
    #[error("no directory source served a usable consensus: {}", describe(.0))]
    AllFailed(Vec<FetchAttempt>),
}

fn describe(v: &[FetchAttempt]) -> String {
    v.iter().map(|a| format!("{}: {}", a.source, a.error)).collect::<Vec<_>>().join("; ")
}

/// Downloads the consensus from the authorities in random order, from a socket bound to
/// `bind`, and returns the first one that parses and verifies at `now` (valid signatures from
/// more than half of `net.authorities`, `valid-after <= now <= valid-until`). Each attempt is
/// bounded by [`FETCH_ATTEMPT_TIMEOUT`]; the error lists what every attempt got.
///
/// The consensus's microdescriptors come from the same authority; those `previous` holds are
/// reused. An authority that serves none of the missing ones counts as a failed attempt.
pub async fn fetch_consensus(net: &NetworkConfig, bind: IpAddr, now: u64, previous: Option<&NetDir>) -> Result<NetDir, FetchError> {
    if net.authorities.is_empty() {
        return Err(FetchError::NoAuthorities);
    }
    let client = http::client(bind).map_err(FetchError::Client)?;
    let ids: Vec<RelayId> = net.authorities.iter().map(|a| a.identity).collect();
    let mut order = net.authorities.clone();
    order.shuffle(&mut rand::thread_rng());
    let mut failures = Vec::new();
    for a in order {
        let get = |path: String| {
            let url = format!("http://{}{path}", a.address);
            let client = &client;
            async move { http::get_text(client, &url, FETCH_ATTEMPT_TIMEOUT, MAX_CONSENSUS_LEN).await }
        };
        let r = match get("/allium/v1/consensus".to_string()).await {
            Ok(text) => match verify_off_thread(text, ids.clone(), now).await {
                Ok(mut nd) => {
                    if let Some(p) = previous {
                        nd.reuse_microdescs(p);
                    }
                    fetch_missing_microdescs(&mut nd, get).await.map(|()| nd)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(FetchAttemptError::Http(e)),
        };
        match r {
            Ok(nd) => {
                tracing::debug!(authority = %a.name, valid_after = %allium_proto::time::Utc(nd.valid_after()), relays = nd.relays().len(), "consensus fetched");
                return Ok(nd);
            }
            Err(error) => {
                tracing::debug!(authority = %a.name, "consensus fetch failed: {error}");
                tracing::debug!(authority = %a.name, address = %a.address, "consensus fetch failed");
                failures.push(FetchAttempt { source: a.name.clone(), error });
            }
        }
    }
    Err(FetchError::AllFailed(failures))
}

/// Parses and verifies a downloaded consensus on a blocking thread (up to 8 MiB is CPU work).
pub async fn verify_off_thread(text: String, authorities: Vec<RelayId>, now: u64) -> Result<NetDir, FetchAttemptError> {
    tokio::task::spawn_blocking(move || NetDir::from_text(&text, &authorities, now))
        .await
        .unwrap_or_else(|_| Err(FetchAttemptError::Http("verification task failed".into())))
}

/// Fetches the microdescriptors `nd` lacks with `get` (a GET of a path at one source, giving
/// the body): every one at once when many are missing, else in batches of
/// [`MAX_PER_REQUEST`] digests. Fails when the source gave none of the missing ones.
pub async fn fetch_missing_microdescs<F, Fut>(nd: &mut NetDir, mut get: F) -> Result<(), FetchAttemptError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let missing = nd.missing_microdescs();
    if missing.is_empty() {
        return Ok(());
    }
    let paths: Vec<String> = if missing.len() > 4 * MAX_PER_REQUEST {
        vec![MICRODESCS_PATH.to_string()]
    } else {
        missing.chunks(MAX_PER_REQUEST).map(request_path).collect()
    };
    let mut added = 0;
    for p in paths {
        let text = get(p).await.map_err(|e| FetchAttemptError::Http(format!("microdescriptors: {e}")))?;
        added += nd.add_microdescs(&text);
    }
    if added == 0 {
        return Err(FetchAttemptError::Http(format!("served none of the {} missing microdescriptors", missing.len())));
    }
    // A view where many listed relays cannot be used (a cache that has the consensus but not
    // yet its microdescriptors) is worse than the one in use: try another source.
    let (usable, listed) = (nd.relays().len(), nd.listed().len());
    if usable * MIN_USABLE_DENOM < listed * MIN_USABLE_NUM {
        return Err(FetchAttemptError::Http(format!("microdescriptors for only {usable} of {listed} listed relays")));
    }
    if added < missing.len() {
        tracing::debug!("{} of {} missing microdescriptors fetched", added, missing.len());
    }
    Ok(())
}

/// A fetched consensus is taken only when at least this share (3/4) of its listed relays have
/// their microdescriptors.
const MIN_USABLE_NUM: usize = 3;
const MIN_USABLE_DENOM: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netdir::tests::{microdescs_text, relay, signed};
    use allium_proto::doc::{ConsensusMeta, Lifetime, RelayFlags};

    /// A cache that serves only some of the missing microdescriptors fails the attempt unless
    /// three quarters of the listed relays end up usable.
    #[tokio::test]
    async fn a_view_with_too_few_microdescriptors_is_refused() {
        let lt = Lifetime { valid_after: 1000, fresh_until: 1010, valid_until: 1030 };
        let relays: Vec<_> = (1..=8).map(|i| relay(i, RelayFlags::RUNNING | RelayFlags::VALID, 1, &[])).collect();
        let (text, ids) = signed(lt, ConsensusMeta::default(), relays.clone());
        for (served, ok) in [(1, false), (5, false), (6, true), (8, true)] {
            let mut nd = NetDir::from_text(&text, &ids, 1000).unwrap();
            let body = microdescs_text(&relays[..served]);
            let r = fetch_missing_microdescs(&mut nd, |_| std::future::ready(Ok::<_, String>(body.clone()))).await;
            assert_eq!(r.is_ok(), ok, "{served} of 8 served: {r:?}");
        }
    }
}
