//! SIGHUP: read the node's config file again and apply what can change while it runs.
//!
//! What a reload applies at once: `node.log_level` (unless `RUST_LOG` is set, which wins).
//! Every other change is reported by key as taking effect at the next restart; a file that no
//! longer loads (bad TOML, a failed check) is reported and the running config kept. Each reload
//! logs one line at info saying which of these happened.

use std::collections::BTreeMap;
use std::path::PathBuf;

use allium_net::metrics::METRICS;

use crate::logging::LogHandle;

/// Keys a reload applies while the node runs.
pub const LIVE_KEYS: [&str; 1] = ["node.log_level"];

/// Checks a config file the way the role's loader does.
pub type Check = Box<dyn Fn(&std::path::Path) -> Result<(), String>>;

/// Everything a reload needs: the file, what was loaded from it last, the role's check and
/// the log filter.
pub struct Reloader {
    path: PathBuf,
    running: BTreeMap<String, String>,
    check: Check,
    log: LogHandle,
}

impl Reloader {
    pub fn new(path: PathBuf, check: Check, log: LogHandle) -> Self {
        let running = read_flat(&path).unwrap_or_default();
        Reloader { path, running, check, log }
    }

    /// Reads the file again, applies what can change live and logs what changed.
    pub fn reload(&mut self) {
        let path = self.path.display();
        if let Err(e) = (self.check)(&self.path) {
            tracing::error!("SIGHUP: {path} does not load ({e}); keeping the running config");
            counted(&METRICS.config_reload_failures);
            return;
        }
        let new = match read_flat(&self.path) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("SIGHUP: cannot read {path} ({e}); keeping the running config");
                counted(&METRICS.config_reload_failures);
                return;
            }
        };
        let changed = changed_keys(&self.running, &new);
        if changed.is_empty() {
            tracing::info!("SIGHUP: reloaded {path}: nothing changed");
            counted(&METRICS.config_reloads);
            return;
        }
        let (live, restart): (Vec<&String>, Vec<&String>) = changed.iter().partition(|k| LIVE_KEYS.contains(&k.as_str()));
        let (mut applied, mut ignored) = (Vec::new(), Vec::new());
        for k in &live {
            if k.as_str() == "node.log_level" {
                let level = new.get(k.as_str()).map(|v| v.trim_matches('"').to_string());
                match self.log.set_level(level.as_deref()) {
                    Ok(true) => applied.push(format!("{k} = {}", level.as_deref().unwrap_or("info"))),
                    Ok(false) => ignored.push(format!("{k} (RUST_LOG is set and wins)")),
                    Err(e) => ignored.push(format!("{k} ({e})")),
                }
            }
        }
        self.running = new;
        let restart: Vec<String> = restart.into_iter().cloned().collect();
        let list = |v: &[String]| if v.is_empty() { "nothing".to_string() } else { v.join(", ") };
        let ignored = if ignored.is_empty() { String::new() } else { format!("; not applied: {}", ignored.join(", ")) };
        tracing::info!(
            "SIGHUP: reloaded {path}: applied: {}; changed but only taking effect at the next restart: {}{ignored}",
            list(&applied),
            list(&restart),
        );
        counted(&METRICS.config_reloads);
    }
}

/// Counts a reload (or a failed one) once its log line is written, and wakes status waiters.
fn counted(c: &allium_net::metrics::Counter) {
    c.inc();
    allium_net::operator::wait::status_changed();
}

/// The file as `section.key = value` pairs (values as TOML text; arrays whole).
fn read_flat(path: &std::path::Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_string())?;
    let mut out = BTreeMap::new();
    flatten("", &toml::Value::Table(table), &mut out);
    Ok(out)
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Keys added, removed or changed between two flattened configs.
fn changed_keys(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<String> = old.keys().chain(new.keys()).filter(|k| old.get(*k) != new.get(*k)).cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(text: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        flatten("", &toml::Value::Table(text.parse().unwrap()), &mut out);
        out
    }

    #[test]
    fn changes_are_found_by_key() {
        let a = flat("[node]\nnickname = \"a\"\n[relay]\nbandwidth = 1\nfamily = []\n[[network.authorities]]\nname = \"x\"\n");
        let b = flat("[node]\nnickname = \"a\"\nlog_level = \"debug\"\n[relay]\nbandwidth = 2\nfamily = []\n[[network.authorities]]\nname = \"y\"\n");
        assert_eq!(changed_keys(&a, &b), vec!["network.authorities", "node.log_level", "relay.bandwidth"]);
        assert!(changed_keys(&a, &a).is_empty());
    }
}
