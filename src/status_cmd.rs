//! `allium status`: asks a running node on its control socket (`DATA_DIR/control.sock`) for
//! its status and prints it, readably or as JSON; with `--wait CONDITION`, once the condition
//! holds (a node that is still starting — its socket not bound yet — is waited for too, within
//! the same time). Exit codes: 0 answered, 1 the node did not answer (not running, or not this
//! user's) or the condition did not hold in time, 2 a bad config or command line.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use allium_proto::time::fmt_utc as format_utc;
use serde_json::{Map, Value};

use crate::cli::StatusArgs;
use crate::directory_cmd::AnyNodeConfig;

/// How long the node has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest answer read.
const MAX_ANSWER: u64 = 4 << 20;
/// How often a node that is still starting is tried again while waiting.
const CONNECT_RETRY: Duration = Duration::from_millis(100);

pub fn run(args: &StatusArgs) -> ExitCode {
    let data_dir = match (&args.config, &args.data_dir) {
        (_, Some(d)) => d.clone(),
        (Some(c), None) => match allium_net::config::load_toml::<AnyNodeConfig>(c) {
            Ok(cfg) => cfg.node.data_dir,
            Err(e) => {
                eprintln!("allium status: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!("allium status: give --config FILE or --data-dir DIR");
            return ExitCode::from(2);
        }
    };
    if let Some(Err(e)) = args.wait.as_deref().map(allium_net::operator::wait::Condition::parse) {
        eprintln!("allium status: --wait: {e}");
        return ExitCode::from(2);
    }
    let deadline = args.wait.as_ref().map(|_| Instant::now() + Duration::from_secs(args.wait_secs));
    let status = match ask(&data_dir, args.wait.as_deref(), deadline) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("allium status: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(err) = status.get("error") {
        eprintln!("allium status: the node answered with an error: {err}");
        return ExitCode::FAILURE;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    } else {
        print!("{}", render(&status, allium_net::keys::unix_now()));
    }
    if status.get("wait_timed_out").is_some() {
        eprintln!("allium status: {} did not hold within {} s", args.wait.as_deref().unwrap_or(""), args.wait_secs);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Asks for the status, or with `wait` (until `deadline`) for the status once `wait` holds.
fn ask(data_dir: &Path, wait: Option<&str>, deadline: Option<Instant>) -> Result<Map<String, Value>, String> {
    let path: PathBuf = allium_net::operator::control::socket_path(data_dir);
    let mut s = connect(&path, deadline).map_err(|e| format!("no node answers on {}: {e} (is it running, as this user?)", path.display()))?;
    let left = deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(Instant::now()));
    let request = match wait {
        Some(cond) => format!("wait {cond} {}\n", left.as_secs().max(1)),
        None => "status\n".to_string(),
    };
    s.set_read_timeout(Some(ANSWER_TIMEOUT + left)).map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes()).map_err(|e| format!("cannot ask {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut buf).map_err(|e| format!("no answer from {}: {e}", path.display()))?;
    match serde_json::from_slice::<Value>(&buf) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) | Err(_) => Err(format!("{} answered something that is not a status object", path.display())),
    }
}

/// Connects to the control socket; while waiting (`deadline`), a node not answering yet (no
/// socket, or nobody listening on it) is tried again until the deadline.
fn connect(path: &Path, deadline: Option<Instant>) -> std::io::Result<UnixStream> {
    loop {
        match UnixStream::connect(path) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) && deadline.is_some_and(|d| Instant::now() + CONNECT_RETRY < d) => {
                std::thread::sleep(CONNECT_RETRY);
            }
            r => return r,
        }
    }
}

/// The status as lines of text for a person.
fn render(s: &Map<String, Value>, now: u64) -> String {
    let num = |k: &str| s.get(k).and_then(Value::as_i64).unwrap_or(0);
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22}{v}\n"));
    let role = s.get("role").and_then(Value::as_str).unwrap_or("?");
    let name = s.get("nickname").and_then(Value::as_str).map(|n| format!(" {n}")).unwrap_or_default();
    line("node", format!("{role}{name}, version {}, pid {}", str_of(s.get("version")), num("pid")));
    line("uptime", format!("{} (since {})", duration(num("uptime_secs").max(0) as u64), format_utc(num("started").max(0) as u64)));
    if let Some(b) = s.get("bootstrap").and_then(Value::as_object) {
        line("bootstrap", format!("{}%: {}", b.get("percent").and_then(Value::as_u64).unwrap_or(0), str_of(b.get("phase"))));
    }
    match s.get("consensus").and_then(Value::as_object) {
        Some(c) => {
            let (va, vu) = (c.get("valid_after").and_then(Value::as_u64).unwrap_or(0), c.get("valid_until").and_then(Value::as_u64).unwrap_or(0));
            let valid = if (va..vu).contains(&now) { "valid" } else { "NOT valid" };
            line("consensus", format!("{valid}: valid-after {}, valid-until {} (age {})", format_utc(va), format_utc(vu), duration(now.saturating_sub(va))));
        }
        None => line("consensus", "none yet".into()),
    }
    for k in ["exit", "in_consensus", "flags", "fingerprint", "or_port", "advertised_address", "relays_in_consensus", "onion_descriptors_stored", "relay_links", "links_preconnected", "descriptors_known", "build_timeout_ms"] {
        if let Some(v) = s.get(k).filter(|v| !v.is_null()) {
            line(&k.replace('_', " "), str_of(Some(v)));
        }
    }
    if let Some(p) = s.get("published_consensus").and_then(Value::as_object) {
        let va = p.get("valid_after").and_then(Value::as_u64).unwrap_or(0);
        line("published", format!("valid-after {}, {} relays, {} signatures", format_utc(va), str_of(p.get("relays")), str_of(p.get("signatures"))));
    }
    line("circuits", format!("{} open, {} opened, {} failed", num("circuits_open"), num("circuits_opened"), num("circuits_failed")));
    line("streams", format!("{} open, {} opened", num("streams_open"), num("streams_opened")));
    if let Some(r) = s.get("circuits_ready").and_then(Value::as_object) {
        let ports: Vec<String> = r.iter().map(|(p, n)| format!("port {p}: {}", str_of(Some(n)))).collect();
        line("built ahead", ports.join(", "));
    }
    if let Some(r) = s.get("recovery").and_then(Value::as_object) {
        let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
        line("recovery", format!("{} BEGIN timeouts, {} stalled streams, {} circuits retired", n("begin_timeouts"), n("stalled_streams"), n("circuits_retired")));
    }
    line("links", format!("{} open", num("links_open")));
    line("bytes", format!("{} read, {} written", bytes(num("bytes_read")), bytes(num("bytes_written"))));
    if let Some(guards) = s.get("guards").and_then(Value::as_array) {
        let g: Vec<String> = guards
            .iter()
            .map(|g| {
                let fp = str_of(g.get("fingerprint"));
                let name = g.get("nickname").and_then(Value::as_str).unwrap_or("(not listed)");
                let confirmed = if g.get("confirmed").and_then(Value::as_bool) == Some(true) { "confirmed" } else { "unconfirmed" };
                format!("{name} {} {confirmed}", &fp[..fp.len().min(16)])
            })
            .collect();
        line("guards", if g.is_empty() { "none yet".into() } else { g.join("; ") });
    }
    if let Some(svcs) = s.get("onion_services").and_then(Value::as_object) {
        for (name, state) in svcs {
            line("onion service", format!("{name}: {}", str_of(Some(state))));
        }
    }
    let limits = s.get("limits_hit").and_then(Value::as_object).map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
    line("limits hit", limits.filter(|l| !l.is_empty()).unwrap_or_else(|| "none".into()));
    out
}

fn str_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "?".into(),
    }
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} days {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n < 1e3 => format!("{n} B"),
        n if n < 1e6 => format!("{:.1} kB", n / 1e3),
        n if n < 1e9 => format!("{:.1} MB", n / 1e6),
        n => format!("{:.2} GB", n / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_renders_every_part() {
        let s: Value = serde_json::json!({
            "role": "client", "version": "0.1.0", "pid": 7, "started": 1_796_150_001u64, "uptime_secs": 90,
            "bootstrap": {"percent": 100, "phase": "ready"},
            "consensus": {"valid_after": 1_796_150_000u64, "valid_until": 1_796_160_000u64, "age_secs": 91, "valid": true},
            "guards": [{"fingerprint": "AB".repeat(32), "nickname": "relay1", "confirmed": true}],
            "onion_services": {"web": "published to 3 HSDirs (0 failed), 3 introduction points"},
            "circuits_open": 4, "bytes_read": 2_500_000, "limits_hit": {"create_rate": 2},
            "recovery": {"begin_timeouts": 1, "stalled_streams": 2, "circuits_retired": 3},
            "circuits_ready": {"80": 2, "8080": 1},
        });
        let text = render(s.as_object().unwrap(), 1_796_150_091);
        for want in ["client, version 0.1.0", "100%: ready", "valid: valid-after 2026-12-01 18:33:20 UTC", "relay1 ABABABABABABABAB confirmed", "web: published", "4 open", "2.5 MB read", "create_rate=2", "1 BEGIN timeouts, 2 stalled streams, 3 circuits retired", "port 80: 2, port 8080: 1"] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }
}
