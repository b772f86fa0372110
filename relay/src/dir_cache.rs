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
//! Anything else is 404; a malformed request is 400. The relay then closes the stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_directory::cache::Usability;
use allium_directory::{ConsensusCache, NetDir};
use allium_net::keys::unix_now;
use allium_proto::dir_stream::{encode_response, parse_request, MAX_REQUEST_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The path of the consensus on a directory stream (the same as on an authority).
pub const CONSENSUS_PATH: &str = "/allium/v1/consensus";
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer of the in-process pipe between the circuit's stream and the serving task.
pub const PIPE_BUFFER: usize = 64 * 1024;

/// The consensus this relay serves.
pub struct DirCache {
    inner: Mutex<ConsensusCache>,
}

impl DirCache {
    pub fn new(cache: ConsensusCache) -> Self {
        DirCache { inner: Mutex::new(cache) }
    }

    /// Keeps a freshly fetched, verified consensus (unless older than the kept one).
    pub fn store(&self, nd: NetDir) -> Arc<NetDir> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).store(nd)
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

    /// The response to a request for `path` at `now`.
    pub fn respond(&self, path: &str, now: u64) -> Vec<u8> {
        let Some(nd) = self.live(now) else { return encode_response(404, b"no live consensus held\n") };
        if path == CONSENSUS_PATH {
            return encode_response(200, nd.consensus_text().as_bytes());
        }
        match allium_directory::microdescs::answer(nd.microdescs(), path) {
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
            let n = pipe.read(&mut chunk[..MAX_REQUEST_LEN.saturating_sub(buf.len()).clamp(1, 512)]).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse_request(&buf) {
                Ok(None) => continue,
                Ok(Some(path)) => return Some(Ok(path)),
                Err(e) => return Some(Err(e)),
            }
        }
    })
    .await;
    let response = match request {
        Ok(Some(Ok(path))) => cache.respond(&path, unix_now()),
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
}
