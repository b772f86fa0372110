//! State files in `node.data_dir` (guards, vanguards): written atomically so a crash mid-write
//! leaves the old file, never half a new one; read back with a corrupt file moved aside.

use std::io::Write;
use std::path::Path;

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
