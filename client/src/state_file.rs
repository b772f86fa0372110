//! State files in `node.data_dir` (guards, vanguards): written atomically so a crash mid-write
//! leaves the old file, never half a new one; read back with a corrupt file moved aside.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use allium_net::log_rate::RateLimit;

/// A state file that cannot be written is reported at most this often (with the number of
/// failures in between).
pub const SAVE_ERROR_INTERVAL: Duration = Duration::from_secs(600);

/// Checks at start that `dir` (the data directory) takes new files: creates and removes a
/// probe file. A client that cannot write there would lose its guards at every restart.
pub fn check_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::File::create(&probe)?.sync_all()?;
    std::fs::remove_file(&probe)
}

/// Reports failed saves of one state file: an error naming the file at the first failure, then
/// at most one per [`SAVE_ERROR_INTERVAL`] (counting the others); the first success after
/// failures at info.
#[derive(Debug)]
pub struct SaveReporter {
    what: &'static str,
    limit: RateLimit,
    failing: bool,
}

impl SaveReporter {
    pub fn new(what: &'static str) -> Self {
        SaveReporter { what, limit: RateLimit::new(SAVE_ERROR_INTERVAL), failing: false }
    }

    /// Logs the outcome of a save of `path`; returns the message logged at error level, if any
    /// (for tests).
    pub fn report(&mut self, path: &Path, r: &std::io::Result<()>, now: Instant) -> Option<String> {
        match r {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("{} {} saved again", self.what, path.display());
                    self.limit.reset();
                }
                None
            }
            Err(e) => {
                self.failing = true;
                let suppressed = self.limit.check(now)?;
                let more = if suppressed > 0 { format!(" ({suppressed} more failures since the last report)") } else { String::new() };
                let msg = format!(
                    "cannot write {} {}: {e}{more}; it is kept in memory only and lost at a restart until the data directory is writable",
                    self.what,
                    path.display()
                );
                tracing::error!("{msg}");
                Some(msg)
            }
        }
    }
}

/// State kept in a file and written when it changed (the guard and vanguard sets).
pub trait SavedState {
    /// Whether it changed since the last call.
    fn take_dirty(&mut self) -> bool;
    /// Changed again (a write failed).
    fn mark_dirty(&mut self);
    fn to_toml(&self) -> String;
}

/// Writes `text` to `path` atomically: a temporary file in the same directory
/// (`<name>.tmp`), synced, then renamed over `path`.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritable_directory_is_found_at_start() {
        let dir = std::env::temp_dir().join(format!("allium-statefile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        check_writable(&dir).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the probe is removed");
        // Not writable even by root.
        assert!(check_writable(Path::new("/proc/self")).is_err());
        assert!(check_writable(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every failed save is an error naming the file, rate-limited, and retried.
    #[test]
    fn failed_saves_are_reported_with_the_path_rate_limited() {
        let dir = std::env::temp_dir().join(format!("allium-statefile-save-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guards.toml");
        // The temporary file's name is taken by a directory: the write fails, even as root.
        std::fs::create_dir_all(dir.join("guards.toml.tmp")).unwrap();
        let mut r = SaveReporter::new("guard state file");
        let t0 = Instant::now();
        let e = write_atomic(&path, "x");
        assert!(e.is_err());
        let msg = r.report(&path, &e, t0).expect("the first failure is reported");
        assert!(msg.contains(&path.display().to_string()) && msg.contains("guard state file"), "{msg}");
        assert!(r.report(&path, &write_atomic(&path, "x"), t0 + Duration::from_secs(1)).is_none());
        assert!(r.report(&path, &write_atomic(&path, "x"), t0 + Duration::from_secs(2)).is_none());
        let later = r.report(&path, &write_atomic(&path, "x"), t0 + SAVE_ERROR_INTERVAL).expect("reported again");
        assert!(later.contains("2 more failures"), "{later}");
        std::fs::remove_dir(dir.join("guards.toml.tmp")).unwrap();
        assert!(r.report(&path, &write_atomic(&path, "x"), t0 + SAVE_ERROR_INTERVAL).is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
        // After a success, the next failure is reported at once.
        std::fs::create_dir_all(dir.join("guards.toml.tmp")).unwrap();
        assert!(r.report(&path, &write_atomic(&path, "y"), t0 + SAVE_ERROR_INTERVAL + Duration::from_secs(1)).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// What [`load`] found.
pub enum Loaded<T> {
    /// The file parsed.
    Read(T),
    /// No file yet.
    Missing,
    /// The file was corrupt (moved aside to `<name>.corrupt`, with a warning) or unreadable.
    Unusable,
}

/// Reads the state file `path` (`what` names it in warnings) with `parse`. A file that does
/// not parse is renamed to `<path>.corrupt` so it is kept for inspection and not read again.
pub fn load<T, E: std::fmt::Display>(path: &Path, what: &str, parse: impl FnOnce(&str) -> Result<T, E>) -> Loaded<T> {
    match std::fs::read_to_string(path) {
        Ok(text) => match parse(&text) {
            Ok(v) => Loaded::Read(v),
            Err(e) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(".corrupt");
                let aside = std::path::PathBuf::from(aside);
                let _ = std::fs::rename(path, &aside);
                tracing::warn!("{what} {} is corrupt ({e}); moved it to {} and starting afresh", path.display(), aside.display());
                Loaded::Unusable
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
        Err(e) => {
            tracing::warn!("cannot read {what} {} ({e}); starting afresh", path.display());
            Loaded::Unusable
        }
    }
}
