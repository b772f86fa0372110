//! Fixtures shared by the integration tests.

pub mod events;
pub mod extra_relay;
pub mod http;
pub mod inproc;
pub mod onion;
pub mod proxy;
pub mod socks;
pub mod streams;
pub mod testnet;
pub mod visitor;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A new, empty directory under the system temp dir, unique to this test run and call. The
/// first call removes those that test processes no longer running left behind (a test's nodes
/// may outlive its last handle on the directory, so none is removed while its process runs).
pub fn fresh_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(remove_dirs_of_ended_runs);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("allium-it-{tag}-{}-{n}-{nanos:08x}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

/// Removes the [`fresh_dir`]s (`allium-it-TAG-PID-N-NANOS`) whose process has ended.
fn remove_dirs_of_ended_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("allium-it-") else { continue };
        // TAG may hold dashes: PID is the third field from the end.
        let Some(pid) = rest.rsplit('-').nth(2).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// `allium status --json --data-dir DIR --wait CONDITION`: blocks until the node running there
/// reports a status where CONDITION holds (`PATH OP VALUE`, e.g. `bootstrap.percent>=100`), and
/// returns it; panics, saying `what`, if it does not within `limit`.
pub fn wait_status(data_dir: &std::path::Path, condition: &str, limit: Duration, what: &str) -> serde_json::Value {
    try_wait_status(data_dir, condition, limit).unwrap_or_else(|why| panic!("{what}: {why}"))
}

/// [`wait_status`] that reports a condition that did not hold instead of panicking.
pub fn try_wait_status(data_dir: &std::path::Path, condition: &str, limit: Duration) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_allium"));
    cmd.args(["status", "--json", "--data-dir"]).arg(data_dir).args(["--wait", condition, "--wait-secs", &limit.as_secs().max(1).to_string()]);
    let out = run_within(cmd, limit + Duration::from_secs(30)).ok_or("allium status --wait did not return")?;
    if !out.status.success() {
        return Err(format!("{condition} did not hold within {} s ({})", limit.as_secs(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or_default())
}

/// `allium status --json --data-dir DIR`: what the node running there reports, parsed (Null if
/// it printed nothing parseable, e.g. before it started).
pub fn status_json(data_dir: &std::path::Path) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_allium"));
    cmd.args(["status", "--json", "--data-dir"]).arg(data_dir);
    let out = run_within(cmd, Duration::from_secs(30)).unwrap_or_else(|| panic!("allium status --data-dir {} did not answer in 30 s", data_dir.display()));
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Runs `allium <args>`, which must exit by itself within 60 s (it panics otherwise, saying
/// `what`); returns its exit code and stderr.
pub fn run_to_exit(args: &[&std::ffi::OsStr], what: &str) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_allium"));
    cmd.args(args);
    let out = run_within(cmd, Duration::from_secs(60)).unwrap_or_else(|| panic!("{what}"));
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) until it exits, or kills it after
/// `limit` and returns None.
pub fn run_within(mut cmd: Command, limit: Duration) -> Option<std::process::Output> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Read both pipes meanwhile, so a chatty child never blocks on a full pipe.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    if !events::wait_exit(child.id(), limit) {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let status = child.wait().expect("wait for a child");
    Some(std::process::Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
}
