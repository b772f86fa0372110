//! Circuits ready for streams: reused for the same isolation class for a bounded time, built on
//! demand otherwise.

use std::sync::Arc;
use std::time::Duration;

use allium_directory::netdir::NetDir;
use allium_net::pool::ChannelPool;
use tokio::sync::Mutex;

use crate::circuit::{self, CircError, CircHandle};
use crate::path::{choose_path, ExitNeed, PathError};

/// How long a circuit takes new streams.
pub const MAX_CIRCUIT_DIRTINESS: Duration = Duration::from_secs(600);
/// Paths tried for one stream before giving up.
const BUILD_ATTEMPTS: usize = 3;

/// Streams with different keys never share a circuit (SOCKS username/password for now).
pub type IsolationKey = Vec<u8>;

/// Why no circuit could be had.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("circuit build failed {BUILD_ATTEMPTS} times; last: {0}")]
    Build(CircError),
}

/// The client's circuits.
pub struct CircMgr {
    pool: ChannelPool,
    circs: Mutex<Vec<(IsolationKey, CircHandle)>>,
}

impl CircMgr {
    pub fn new(pool: ChannelPool) -> Self {
        CircMgr { pool, circs: Mutex::new(Vec::new()) }
    }

    /// A circuit whose exit allows `need`, for isolation class `iso`.
    pub async fn get(&self, dir: &Arc<NetDir>, need: ExitNeed, iso: &IsolationKey) -> Result<CircHandle, GetError> {
        // Holding the lock while building means concurrent requests share one new circuit.
        let mut circs = self.circs.lock().await;
        circs.retain(|(_, c)| !c.is_closed() && c.built_at.elapsed() < MAX_CIRCUIT_DIRTINESS);
        if let Some((_, c)) = circs.iter().find(|(k, c)| k == iso && need.allowed_by(&c.exit)) {
            return Ok(c.clone());
        }
        let mut last = None;
        for _ in 0..BUILD_ATTEMPTS {
            let path = choose_path(dir.relays(), need, &mut rand::thread_rng())?;
            match circuit::build(&self.pool, &path).await {
                Ok(c) => {
                    circs.push((iso.clone(), c.clone()));
                    return Ok(c);
                }
                Err(e) => {
                    tracing::info!("circuit build failed ({e}); trying another path");
                    last = Some(e);
                }
            }
        }
        Err(GetError::Build(last.expect("at least one attempt")))
    }
}
