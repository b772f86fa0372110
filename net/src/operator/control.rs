//! The control socket: `DATA_DIR/control.sock`, a Unix socket only the node's owner can open
//! (mode 0600, in a 0700 data directory). A client writes one line, `status`, and reads one
//! JSON object back; the connection then closes. `allium status` is that client. The line
//! `wait CONDITION SECS` answers the same object once CONDITION holds ([`super::wait`]), or
//! after SECS (at most 600) with `"wait_timed_out": true` added.
//!
//! Bounded though local: at most [`MAX_CONTROL_CONNS`] at once, a request line of at most
//! [`MAX_REQUEST`] bytes, read within [`REQUEST_TIMEOUT`].

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::keys::unix_now;
use crate::limits::counters::LIMITS;
use crate::metrics::METRICS;

/// The socket's file name in the data directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Control connections served at once; more wait in the kernel's backlog.
pub const MAX_CONTROL_CONNS: usize = 4;
/// The longest request line.
pub const MAX_REQUEST: u64 = 256;
/// How long a client has to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a role adds to the status: called for each `status` request.
pub type StatusFn = Box<dyn Fn() -> Map<String, Value> + Send + Sync>;

/// Binds the socket, replacing a stale one left by an earlier run, and makes it owner-only.
pub fn bind(data_dir: &Path) -> Result<UnixListener, String> {
    let path = data_dir.join(CONTROL_SOCKET);
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if !meta.file_type().is_socket() {
            return Err(format!("{} exists and is not a socket; remove it", path.display()));
        }
        // A live node would still answer on it: refuse to take over its socket.
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(format!("{} is in use: is another node running on this data directory?", path.display()));
        }
        let _ = std::fs::remove_file(&path);
    }
    let l = UnixListener::bind(&path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    Ok(l)
}

/// Serves status requests until the listener fails.
pub async fn serve(l: UnixListener, role: &'static str, status: Arc<StatusFn>) {
    let mut errors = crate::accept::AcceptErrors::new("control socket");
    let slots = Arc::new(Semaphore::new(MAX_CONTROL_CONNS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let sock = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                errors.failed(&e).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(sock, role, &status).await {
                tracing::debug!("control connection ended: {e}");
            }
        });
    }
}

async fn answer(sock: UnixStream, role: &'static str, status: &StatusFn) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, BufReader::new(r.take(MAX_REQUEST)).read_line(&mut line)).await;
    let reply = match read {
        Ok(Ok(_)) => match line.trim() {
            "status" => Value::Object(snapshot(role, status)),
            other => match other.strip_prefix("wait ").map(parse_wait) {
                Some(Ok((cond, limit))) => {
                    let (mut s, held) = super::wait::until(&cond, limit, || snapshot(role, status)).await;
                    if !held {
                        s.insert("wait_timed_out".into(), json!(true));
                    }
                    Value::Object(s)
                }
                Some(Err(e)) => json!({ "error": e }),
                None => json!({ "error": format!("unknown request {:?}; requests are \"status\" and \"wait CONDITION SECS\"", other.chars().take(40).collect::<String>()) }),
            },
        },
        Ok(Err(e)) => return Err(e),
        Err(_) => json!({ "error": "no request line within 5 s" }),
    };
    let mut bytes = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    w.shutdown().await
}

/// `CONDITION SECS` of a wait request.
fn parse_wait(rest: &str) -> Result<(super::wait::Condition, Duration), String> {
    let (cond, secs) = rest.trim().rsplit_once(' ').ok_or("a wait request is \"wait CONDITION SECS\"")?;
    let secs: u64 = secs.parse().map_err(|_| format!("{secs:?} is not a number of seconds"))?;
    Ok((super::wait::Condition::parse(cond)?, Duration::from_secs(secs)))
}

/// The status every role reports, then the role's own fields. Times are Unix seconds.
pub fn snapshot(role: &'static str, status: &StatusFn) -> Map<String, Value> {
    let m = &METRICS;
    let now = unix_now();
    let started = m.started.get().max(0) as u64;
    let links = &crate::channel::LINK_STATS;
    let limits: Map<String, Value> = LIMITS.snapshot().into_iter().filter(|(_, n)| *n > 0).map(|(k, n)| (k.to_string(), json!(n))).collect();
    let (va, vu) = (m.consensus_valid_after.get().max(0) as u64, m.consensus_valid_until.get().max(0) as u64);
    let consensus = if va == 0 {
        Value::Null
    } else {
        json!({
            "valid_after": va,
            "valid_until": vu,
            "age_secs": now.saturating_sub(va),
            "valid": (va..vu).contains(&now),
        })
    };
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    out.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    out.insert("pid".into(), json!(std::process::id()));
    out.insert("started".into(), json!(started));
    out.insert("uptime_secs".into(), json!(now.saturating_sub(started)));
    out.insert("consensus".into(), consensus);
    out.insert("circuits_open".into(), json!(m.circuits_open.get()));
    out.insert("circuits_opened".into(), json!(m.circuits_opened.get()));
    out.insert("circuits_failed".into(), json!(m.circuits_failed.total()));
    out.insert("circuit_failures".into(), Value::Object(m.circuits_failed.counts().map(|(reason, n)| (reason.to_string(), json!(n))).collect()));
    out.insert("streams_open".into(), json!(m.streams_open.get()));
    out.insert("streams_opened".into(), json!(m.streams_opened.get()));
    out.insert("links_open".into(), json!(m.links_open.get()));
    out.insert("bytes_read".into(), json!(m.bytes_read.get()));
    out.insert("bytes_written".into(), json!(links.bytes_written.load(std::sync::atomic::Ordering::Relaxed)));
    out.insert("config_reloads".into(), json!(m.config_reloads.get()));
    out.insert("config_reload_failures".into(), json!(m.config_reload_failures.get()));
    out.insert("limits_hit".into(), Value::Object(limits));
    out.insert("metrics_listen".into(), json!(super::METRICS_ADDR.get().map(|a| a.to_string())));
    out.extend(status());
    out
}

/// The control socket of the node whose data directory is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONTROL_SOCKET)
}
