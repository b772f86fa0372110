//! Logging setup: `RUST_LOG` picks the filter, else the config's `node.log_level` (default
//! `info`); logs go to stderr or, with `--log-file`, are appended to a file. The filter can be
//! replaced while the node runs ([`LogHandle::set_level`], on SIGHUP) unless `RUST_LOG` is set.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Replaces the log filter of the running process.
pub struct LogHandle {
    set: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
    /// `RUST_LOG` was set: it wins over the config.
    env_set: bool,
}

impl LogHandle {
    /// Sets the filter to `level` (EnvFilter directives such as `info` or
    /// `info,allium_relay=debug`; None: `info`). False if `RUST_LOG` is set (it wins).
    pub fn set_level(&self, level: Option<&str>) -> Result<bool, String> {
        if self.env_set {
            return Ok(false);
        }
        let spec = level.unwrap_or("info");
        let f = EnvFilter::try_new(spec).map_err(|e| format!("bad log level {spec:?}: {e}"))?;
        (self.set)(f)?;
        Ok(true)
    }
}

/// Installs the global subscriber. Fails only if the log file cannot be opened.
pub fn init(log_file: Option<&Path>, config_level: Option<&str>) -> Result<LogHandle, String> {
    let env = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty());
    let spec = env.clone().or(config_level.map(str::to_string)).unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: ignoring log level {spec:?} ({e}); logging at info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let env_set = env.is_some();
    match log_file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            let b = builder.with_ansi(false).with_writer(Mutex::new(file)).with_filter_reloading();
            let h = b.reload_handle();
            b.init();
            Ok(LogHandle { set: Box::new(move |f| h.reload(f).map_err(|e| e.to_string())), env_set })
        }
        None => {
            let b = builder.with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).with_filter_reloading();
            let h = b.reload_handle();
            b.init();
            Ok(LogHandle { set: Box::new(move |f| h.reload(f).map_err(|e| e.to_string())), env_set })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_changes_while_running() {
        let b = tracing_subscriber::fmt().with_env_filter(EnvFilter::new("info")).with_writer(std::io::sink).with_filter_reloading();
        let h = b.reload_handle();
        let log = LogHandle { set: Box::new(move |f| h.reload(f).map_err(|e| e.to_string())), env_set: false };
        tracing::subscriber::with_default(b.finish(), || {
            assert!(!tracing::enabled!(tracing::Level::DEBUG));
            assert_eq!(log.set_level(Some("debug")), Ok(true));
            assert!(tracing::enabled!(tracing::Level::DEBUG));
            assert!(log.set_level(Some("no such=level=x")).is_err());
        });
        let pinned = LogHandle { set: Box::new(|_| panic!("RUST_LOG wins")), env_set: true };
        assert_eq!(pinned.set_level(Some("debug")), Ok(false));
    }
}
