//! State files in `node.data_dir` (guards, vanguards): written atomically so a crash mid-write
//! leaves the old file, never half a new one.

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
