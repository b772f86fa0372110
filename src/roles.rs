//! Running one node: config, keys, logging, runtime, then the role's library.
//!
//! Exit codes: 0 after a stop signal, 1 on a runtime error (keys, logging, the role failing),
//! 2 on a config error (clap also uses 2 for bad command lines).

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use allium_net::config::ConfigError;
use allium_net::keys::{self, NodeKeys};

use crate::cli::{KeygenArgs, RoleArgs};
use crate::signals::StopSignals;
use crate::logging;

/// The key file whose presence means a data directory already holds keys.
const IDENTITY_FILE: &str = "identity_ed25519.key";

pub fn authority(args: &RoleArgs) -> ExitCode {
    let cfg = match allium_directory::config::AuthorityConfig::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => return config_error("authority", &e),
    };
    let data_dir = cfg.node.data_dir.clone();
    run_node("authority", args, &data_dir, "authority fingerprint", |keys| allium_directory::run_authority(cfg, keys))
}

pub fn relay(args: &RoleArgs) -> ExitCode {
    let cfg = match allium_relay::RelayConfig::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => return config_error("relay", &e),
    };
    let data_dir = cfg.node.data_dir.clone();
    run_node("relay", args, &data_dir, "relay fingerprint", |keys| allium_relay::run(cfg, keys))
}

pub fn client(args: &RoleArgs) -> ExitCode {
    let cfg = match allium_client::ClientConfig::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => return config_error("client", &e),
    };
    let data_dir = cfg.node.data_dir.clone();
    run_node("client", args, &data_dir, "client fingerprint", |keys| allium_client::run(cfg, keys))
}

pub fn keygen(args: &KeygenArgs) -> ExitCode {
    let existed = args.data_dir.join(IDENTITY_FILE).exists();
    match keys::load_or_create(&args.data_dir) {
        Ok(keys) => {
            println!("fingerprint: {}", keys.relay_id().fingerprint());
            let verb = if existed { "loaded existing" } else { "created new" };
            println!("{verb} keys in {}", args.data_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("allium keygen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a config error as one line and returns exit code 2.
fn config_error(role: &str, e: &ConfigError) -> ExitCode {
    // ConfigError's Display is one line by design; make sure of it anyway.
    let line = e.to_string().replace('\n', " ");
    eprintln!("allium {role}: {line}");
    ExitCode::from(2)
}

/// Loads the keys, prints the fingerprint, starts logging and runs `run` on a multi-thread
/// runtime until it fails or a stop signal arrives.
fn run_node<F, Fut, E>(role: &str, args: &RoleArgs, data_dir: &Path, label: &str, run: F) -> ExitCode
where
    F: FnOnce(NodeKeys) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let keys = match keys::load_or_create(data_dir) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("allium {role}: cannot load or create keys: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{label}: {}", keys.relay_id().fingerprint());
    if let Err(e) = logging::init(args.log_file.as_deref()) {
        eprintln!("allium {role}: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("allium {role}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = rt.block_on(async {
        let mut stop = StopSignals::register().map_err(|e| format!("cannot install signal handlers: {e}"))?;
        tracing::info!(config = %args.config.display(), "{role} starting");
        tokio::select! {
            r = run(keys) => r.map_err(|e| e.to_string()),
            sig = stop.recv() => {
                tracing::info!("received {sig}, stopping");
                Ok(())
            }
        }
    });
    // Tasks the role spawned are cancelled here; don't wait long for blocking ones.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{role} stopped: {e}");
            eprintln!("allium {role}: fatal: {e}");
            ExitCode::FAILURE
        }
    }
}
