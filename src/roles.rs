//! Running one node: config, keys, logging, runtime, then the role's library.
//!
//! Exit codes: 0 after a stop signal, 1 on a runtime error (keys, logging, the role failing),
//! 2 on a config error (clap also uses 2 for bad command lines), including an authority whose
//! key is not one of the configured authorities.
//!
//! Permissions (as Tor): a key file its group or others may read or write is refused (exit 1,
//! one line naming the file and its mode); a data directory open to its group or others is set
//! to 0700 with a warning on stderr (logging is not started yet).

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use allium_net::config::ConfigError;
use allium_directory::authkeys::{self, AuthorityKeys};
use allium_net::keys::{self, NodeKeys, IDENTITY_FILE};

use crate::cli::{KeygenArgs, RoleArgs};
use crate::reload::Reloader;
use crate::signals::{Asked, NodeSignals};
use crate::logging;

pub fn authority(args: &RoleArgs) -> ExitCode {
    let cfg = match allium_directory::config::AuthorityConfig::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => return config_error("authority", &e),
    };
    allium_net::channel::set_link_delay(cfg.network.link_delay());
    if !secure_data_dir("authority", &cfg.node.data_dir) {
        return ExitCode::FAILURE;
    }
    // The authority's own clock (shifted on a test network that injects an offset).
    let keys = match AuthorityKeys::load(&cfg.node.data_dir, cfg.clock().now_secs()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("allium authority: cannot load keys: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A config error that needs the key to be seen: exit 2 like every other config error.
    if let Err(e) = cfg.check_identity(&keys.relay_id()) {
        return config_error("authority", &e);
    }
    let fingerprint = keys.relay_id().fingerprint();
    let check: crate::reload::Check = Box::new(|p| allium_directory::config::AuthorityConfig::load(p).map(|_| ()).map_err(|e| e.to_string()));
    let level = cfg.node.log_level.clone();
    run_node("authority", args, "authority fingerprint", &fingerprint, level.as_deref(), check, || async move {
        if cfg.authority.bandwidth_scan {
            tokio::spawn(crate::bwscan::scan(cfg.clone(), keys.relay_id()));
        }
        allium_directory::run_authority(cfg, keys).await
    })
}

pub fn relay(args: &RoleArgs) -> ExitCode {
    let cfg = match allium_relay::RelayConfig::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => return config_error("relay", &e),
    };
    allium_net::channel::set_link_delay(cfg.network.link_delay());
    if let Some(rate) = cfg.relay.bandwidth_rate {
        allium_net::limits::rate::set_link_rate(rate, cfg.relay.bandwidth_burst.unwrap_or(rate));
    }
    let Some(keys) = node_keys("relay", &cfg.node.data_dir) else { return ExitCode::FAILURE };
    let fingerprint = keys.relay_id().fingerprint();
    let check: crate::reload::Check = Box::new(|p| allium_relay::RelayConfig::load(p).map(|_| ()).map_err(|e| e.to_string()));
    let level = cfg.node.log_level.clone();
    run_node("relay", args, "relay fingerprint", &fingerprint, level.as_deref(), check, || allium_relay::run(cfg, keys))
}

pub fn client(args: &RoleArgs) -> ExitCode {
    let cfg = match allium_client::ClientConfig::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => return config_error("client", &e),
    };
    allium_net::channel::set_link_delay(cfg.network.link_delay());
    let Some(keys) = node_keys("client", &cfg.node.data_dir) else { return ExitCode::FAILURE };
    // Printed on stdout for the operator, never logged.
    for s in &cfg.onion_services {
        match s.load_or_create_address(&cfg.node.data_dir) {
            Ok(a) => println!("onion service {}: {}", s.name, a.to_host()),
            Err(e) => {
                eprintln!("allium client: onion service {}: cannot load or create its key: {e}", s.name);
                return ExitCode::FAILURE;
            }
        }
    }
    let fingerprint = keys.relay_id().fingerprint();
    let check: crate::reload::Check = Box::new(|p| allium_client::ClientConfig::load(p).map(|_| ()).map_err(|e| e.to_string()));
    let level = cfg.node.log_level.clone();
    run_node("client", args, "client fingerprint", &fingerprint, level.as_deref(), check, || allium_client::run(cfg, keys))
}

/// Loads or creates a node's keys, printing why not on failure.
fn node_keys(role: &str, data_dir: &Path) -> Option<NodeKeys> {
    if !secure_data_dir(role, data_dir) {
        return None;
    }
    keys::load_or_create(data_dir).map_err(|e| eprintln!("allium {role}: cannot load or create keys: {e}")).ok()
}

/// Sets an existing data directory open to its group or others to 0700, saying so on stderr
/// (logging is not started yet). False (printed) if it cannot.
fn secure_data_dir(role: &str, data_dir: &Path) -> bool {
    if !data_dir.exists() {
        return true;
    }
    match keys::secure_dir(data_dir) {
        Ok(None) => true,
        Ok(Some(old)) => {
            eprintln!(
                "allium {role}: WARN: data directory {} had permissions {old:04o}; set them to 0700 (readable only by its owner)",
                data_dir.display()
            );
            true
        }
        Err(e) => {
            eprintln!("allium {role}: cannot make the data directory private: {e}");
            false
        }
    }
}

pub fn keygen(args: &KeygenArgs) -> ExitCode {
    if args.onion_client_auth {
        let (secret, public) = allium_client::onion_auth::generate();
        println!("secret: {secret}");
        println!("public: {public}");
        return ExitCode::SUCCESS;
    }
    let Some(data_dir) = args.data_dir.as_deref() else {
        eprintln!("allium keygen: --data-dir is required");
        return ExitCode::from(2);
    };
    if !secure_data_dir("keygen", data_dir) {
        return ExitCode::FAILURE;
    }
    let existed = data_dir.join(IDENTITY_FILE).exists();
    if args.authority {
        let out = args.out.as_deref().unwrap_or(data_dir);
        let lifetime = args.signing_key_lifetime_days * 86_400;
        return match authkeys::certify_into(data_dir, out, lifetime, keys::unix_now()) {
            Ok((id, cert)) => {
                println!("fingerprint: {}", id.fingerprint());
                println!("signing key certified until {} ({} days)", allium_proto::time::fmt_utc(cert.expires), args.signing_key_lifetime_days);
                let verb = if existed { "loaded existing" } else { "created new" };
                println!("{verb} identity key in {}", data_dir.display());
                println!(
                    "wrote {}, {}, {} and {} to {}",
                    authkeys::SIGNING_KEY_FILE,
                    authkeys::SIGNING_CERT_FILE,
                    keys::LINK_FILE,
                    authkeys::LINK_CERT_FILE,
                    out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("allium keygen: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match keys::load_or_create(data_dir) {
        Ok(keys) => {
            println!("fingerprint: {}", keys.relay_id().fingerprint());
            let verb = if existed { "loaded existing" } else { "created new" };
            println!("{verb} keys in {}", data_dir.display());
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

/// Prints the fingerprint, starts logging and runs `run` on a multi-thread runtime until it
/// fails or a stop signal arrives; SIGHUP reloads the config ([`Reloader`]) meanwhile.
fn run_node<F, Fut, E>(role: &str, args: &RoleArgs, label: &str, fingerprint: &str, log_level: Option<&str>, check: crate::reload::Check, run: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    println!("{label}: {fingerprint}");
    let log = match logging::init(args.log_file.as_deref(), log_level) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("allium {role}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut reloader = Reloader::new(args.config.clone(), check, log);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("allium {role}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = rt.block_on(async {
        let mut signals = NodeSignals::register().map_err(|e| format!("cannot install signal handlers: {e}"))?;
        tracing::info!(config = %args.config.display(), "{role} starting");
        tokio::spawn(allium_net::mem_trim::run());
        let node = run();
        tokio::pin!(node);
        loop {
            tokio::select! {
                r = &mut node => break r.map_err(|e| e.to_string()),
                asked = signals.recv() => match asked {
                    Asked::Stop(sig) => {
                        tracing::info!("received {sig}, stopping");
                        break Ok(());
                    }
                    Asked::Reload => reloader.reload(),
                },
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
