//! Circuit builds on an idle network, timed by the bench itself: the client's own build code
//! (`allium_client::circuit::build`, as its circuit manager calls it) through the test
//! network's relays, one build at a time while nothing else runs.
//!
//! The client's log times its builds too, but a client builds ahead of need: the builds it logs
//! during a run of requests are successors of the circuits the requests took, made while those
//! streams close and the next requests arrive, on the same two cores as every node. Those
//! figures are reported beside these (`network.rs`), not instead of them.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use allium_net::pool::ChannelPool;
use allium_proto::doc::{ConsensusRelay, RelayFlags};

/// Builds timed (after [`WARM_UP`] untimed ones, which open the link to the guard).
pub const TIMED: usize = 40;
const WARM_UP: usize = 3;

/// Times [`TIMED`] 3-hop builds through the network whose client's config is `client_config`:
/// one guard, middles and exits taken in turn. Milliseconds, in order.
pub fn idle_builds(client_config: &Path) -> Result<Vec<f64>, String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let cfg = allium_client::ClientConfig::load(client_config).map_err(|e| format!("the client's config: {e}"))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        let localhost: IpAddr = "127.0.0.1".parse().expect("an address");
        let dir = allium_directory::fetch_consensus(&cfg.network, localhost, now, None).await.map_err(|e| format!("the consensus: {e}"))?;
        let relays: Vec<&ConsensusRelay> = dir.relays().iter().filter(|r| r.flags.contains(RelayFlags::RUNNING)).collect();
        let guard = *relays.iter().find(|r| !r.flags.contains(RelayFlags::EXIT)).ok_or("no relay that is not an exit")?;
        let exits: Vec<&ConsensusRelay> = relays.iter().copied().filter(|r| r.flags.contains(RelayFlags::EXIT)).collect();
        let middles: Vec<&ConsensusRelay> = relays.iter().copied().filter(|r| r.identity != guard.identity).collect();
        if exits.is_empty() || middles.len() < 2 {
            return Err(format!("too few relays: {} exits, {} others than the guard", exits.len(), middles.len()));
        }
        let pool = ChannelPool::new(localhost, None);
        let mut times = Vec::new();
        // Kept open until the end, so that no teardown runs alongside a later build.
        let mut built = Vec::new();
        for i in 0..WARM_UP + TIMED {
            let exit = exits[i % exits.len()];
            let middle = middles.iter().copied().cycle().skip(i).find(|m| m.identity != exit.identity).expect("two others than the guard");
            let started = Instant::now();
            let circ = allium_client::circuit::build(&pool, &[guard, middle, exit]).await.map_err(|e| format!("build {i}: {e}"))?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            built.push(circ);
            if i >= WARM_UP {
                times.push(ms);
            }
        }
        Ok(times)
    })
}
