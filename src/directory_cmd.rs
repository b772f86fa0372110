//! `allium directory show`: fetch, verify and print the current consensus. Only wiring: the
//! fetch, verification and formatting live in `allium-directory`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use allium_net::config::{NetworkConfig, NodeConfig};
use serde::Deserialize;

/// The `[node]` and `[network]` sections of any node's config (other sections ignored).
#[derive(Deserialize)]
pub(crate) struct AnyNodeConfig {
    pub node: NodeConfig,
    pub network: NetworkConfig,
}

pub fn show(config: &Path) -> ExitCode {
    let cfg: AnyNodeConfig = match allium_net::config::load_toml(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("allium: {e}");
            return ExitCode::FAILURE;
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("allium: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(allium_directory::fetch_consensus(&cfg.network, cfg.node.address, now, None)) {
        Ok(nd) => {
            print!("{}", allium_directory::show::render(&nd, now));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("allium: {e}");
            if let Some(h) = allium_directory::cache::skew_hint(&e) {
                eprintln!("allium: {h}");
            }
            ExitCode::FAILURE
        }
    }
}
