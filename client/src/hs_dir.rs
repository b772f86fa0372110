//! Onion-service descriptors to and from HSDirs, each over a fresh 3-hop circuit ending at the
//! HSDir (a directory stream, BEGIN_DIR, on its last hop), so the HSDir never learns who uploads
//! or fetches. See `relay::hsdir` for the answers.

use allium_directory::NetDir;
use allium_proto::dir_stream::{encode_post, encode_request, parse_response, DirResponse, MAX_RESPONSE_HEAD_LEN};
use allium_proto::doc::ConsensusRelay;
use allium_proto::hs::desc::MAX_HS_DESCRIPTOR_LEN;
use allium_proto::hs::period::current_period;
use allium_proto::hs::TimePeriod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::circmgr::CircMgr;

/// The path of descriptor uploads; fetches append `/<64 hex digits>`.
pub const HS_DESCRIPTOR_PATH: &str = "/allium/v1/hs/descriptor";

/// Why an upload or fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum HsDirError {
    #[error("circuit to the HSDir: {0}")]
    Circuit(String),
    #[error("directory stream: {0}")]
    Stream(String),
    /// The HSDir answered with this status and one-line reason.
    #[error("HSDir answered {0}: {1}")]
    Refused(u16, String),
}

/// The period a node using `nd` is in (its `valid-after`'s).
pub fn period_of(nd: &NetDir) -> TimePeriod {
    current_period(nd.valid_after(), nd.hs_period_secs())
}

/// The HSDirs responsible for `blinded_key` in `period`, per `nd`: its HSDir-flagged relays
/// (those whose microdescriptor is held) on the ring of that period.
pub fn responsible_hsdirs(nd: &NetDir, blinded_key: &[u8; 32], period: TimePeriod) -> Vec<ConsensusRelay> {
    nd.responsible_hsdirs(blinded_key, period).iter().filter_map(|id| nd.by_id(id).cloned()).collect()
}

/// One request on a directory stream of a fresh 3-hop circuit ending at `hsdir`.
async fn exchange(circuits: &CircMgr, netdir: &NetDir, hsdir: &ConsensusRelay, request: Vec<u8>) -> Result<DirResponse, HsDirError> {
    let circ = circuits.to_relay(netdir, hsdir).await.map_err(|e| HsDirError::Circuit(e.to_string()))?;
    let mut stream = circ.begin_dir().await.map_err(|r| HsDirError::Stream(format!("refused ({r:?})")))?;
    stream.write_all(&request).await.map_err(|_| HsDirError::Stream("closed".into()))?;
    let mut raw = Vec::new();
    let limit = (MAX_HS_DESCRIPTOR_LEN + MAX_RESPONSE_HEAD_LEN + 4) as u64;
    (&mut stream).take(limit + 1).read_to_end(&mut raw).await.map_err(|_| HsDirError::Stream("failed".into()))?;
    parse_response(&raw, MAX_HS_DESCRIPTOR_LEN).map_err(|e| HsDirError::Stream(e.to_string()))
}

fn reason(r: &DirResponse) -> String {
    String::from_utf8_lossy(&r.body).lines().next().unwrap_or("").to_string()
}

/// Uploads descriptor `text` to `hsdir`: its one-line answer (`stored`, `already held`).
pub async fn upload(circuits: &CircMgr, netdir: &NetDir, hsdir: &ConsensusRelay, text: &str) -> Result<String, HsDirError> {
    let r = exchange(circuits, netdir, hsdir, encode_post(HS_DESCRIPTOR_PATH, text.as_bytes())).await?;
    match r.status {
        200 => Ok(reason(&r)),
        s => Err(HsDirError::Refused(s, reason(&r))),
    }
}

/// Fetches the descriptor held for `blinded_key` from `hsdir` (not verified: the caller checks
/// it under the blinded key it computed). `None`: the HSDir holds none.
pub async fn fetch(circuits: &CircMgr, netdir: &NetDir, hsdir: &ConsensusRelay, blinded_key: &[u8; 32]) -> Result<Option<String>, HsDirError> {
    let path = format!("{HS_DESCRIPTOR_PATH}/{}", hex::encode(blinded_key));
    let r = exchange(circuits, netdir, hsdir, encode_request(&path)).await?;
    match r.status {
        200 => String::from_utf8(r.body).map(Some).map_err(|_| HsDirError::Stream("descriptor is not UTF-8".into())),
        404 if r.body.starts_with(b"no descriptor") => Ok(None),
        s => Err(HsDirError::Refused(s, reason(&r))),
    }
}
