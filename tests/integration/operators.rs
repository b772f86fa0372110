//! What an operator can ask a running node (issue "Operators can see and steer a running
//! node", points 1 and 2), against a real test network: `allium status` over the control
//! socket, the Prometheus endpoint parsed by the Prometheus project's own text parser, and
//! SIGHUP reloading the config instead of stopping the node.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

use crate::support::testnet::Testnet;

/// `allium status --json <args>`: the parsed object (panics, with stderr, if it fails).
fn status(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_allium")).arg("status").arg("--json").args(args).stdin(Stdio::null()).output().expect("run allium status");
    assert!(out.status.success(), "allium status {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("allium status --json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Polls `allium status` of the node in `dir` until `done` holds, within `limit`.
/// The node's status once `condition` holds (`allium status --wait`: the node answers when it
/// does; no polling here).
fn wait_status(dir: &std::path::Path, limit: Duration, condition: &str) -> Value {
    crate::support::wait_status(dir, condition, limit, &format!("{}", dir.display()))
}

/// A node of the test network this test restarted (with metrics); killed when dropped.
struct Restarted(std::process::Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops testnet relay `name`, adds `metrics_listen = "<its address>:0"` to its config and
/// starts it again from that config; returns the process and the metrics address it bound
/// (from `allium status`).
fn restart_with_metrics(net: &Testnet, name: &str) -> (Restarted, SocketAddr) {
    let node = net.nodes.iter().find(|n| n.name == name).unwrap();
    let dir = net.dir.join(name);
    let cfg = dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let with = text.replacen("[node]\n", &format!("[node]\nmetrics_listen = \"{}:0\"\n", net.node_address(name)), 1);
    std::fs::write(&cfg, with).unwrap();
    kill_process(Pid::from_raw(node.pid as i32).unwrap(), Signal::TERM).unwrap();
    assert!(crate::support::events::wait_exit(node.pid, Duration::from_secs(20)), "{name} still running 20 s after SIGTERM");
    let log = std::fs::OpenOptions::new().append(true).open(dir.join("log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_allium"))
        .args(["relay", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let child = Restarted(child);
    let status = wait_status(&dir, Duration::from_secs(30), "metrics_listen~:");
    let addr = status["metrics_listen"].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{name}'s metrics address: {status}"));
    (child, addr)
}

/// One HTTP/1.1 exchange on the metrics port: (status line, body).
fn http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to metrics at {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// Parses Prometheus text with `prometheus_client.parser` (Python, the Prometheus project's
/// client; `.ci/run` installs it): each family as `name type samples`, one per line.
fn parse_with_prometheus_client(text: &str) -> Vec<(String, String, usize)> {
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n";
    let child = Command::new("python3").args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = child.expect("python3 is needed to parse metrics with prometheus_client (.ci/run installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "prometheus_client could not parse the metrics{}: {err}",
        if err.contains("ModuleNotFoundError") { " (pip install prometheus-client, as .ci/run does)" } else { "" }
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
        })
        .collect()
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' '))).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no sample {name}"))
}

#[test]
fn status_metrics_and_sighup_on_a_running_network() {
    let net = Testnet::start(&[]);
    let client_cfg = net.dir.join("client/config.toml");

    // The client reaches 100% (circuits built ahead) shortly after the network is ready.
    wait_status(&net.dir.join("client"), Duration::from_secs(60), "bootstrap.percent>=100");
    // Status by config file: the client is bootstrapped, has guards and a valid consensus.
    let s = status(&["--config", client_cfg.to_str().unwrap()]);
    assert_eq!(s["role"], "client", "{s}");
    assert_eq!(s["bootstrap"]["percent"], 100, "{s}");
    assert_eq!(s["consensus"]["valid"], true, "{s}");
    assert!(s["guards"].as_array().is_some_and(|g| !g.is_empty()), "no guards in {s}");
    assert!(s["circuits_opened"].as_u64().unwrap() > 0, "{s}");
    // The control socket is the owner's only.
    let mode = std::fs::metadata(net.dir.join("client/control.sock")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");

    // The hosting client reports its onion service once the descriptor is out.
    let hs = wait_status(&net.dir.join("hs"), Duration::from_secs(120), "onion_services.web~published");
    assert!(hs["onion_services"]["web"].as_str().is_some_and(|t| t.starts_with("published")), "{hs}");
    // A relay and an authority answer too, each with its own part.
    // (A relay's own consensus can predate its listing: wait for the one that lists it.)
    let relay = wait_status(&net.dir.join("relay1"), Duration::from_secs(60), "in_consensus==true");
    assert_eq!((relay["role"].as_str(), relay["in_consensus"].as_bool()), (Some("relay"), Some(true)), "{relay}");
    // Relays open links to one another ahead of need (limits.preconnect_relays, 16 by default):
    // each of the five ends up linked to the four others, some of those links opened ahead.
    let relays = ["relay1", "relay2", "relay3", "exit1", "exit2"];
    let mut preconnected = 0;
    for r in relays {
        let s = wait_status(&net.dir.join(r), Duration::from_secs(60), "relay_links>=4");
        assert!(s["relay_links"].as_u64() >= Some(4), "{r} is not linked to every other relay: {s}");
        preconnected += s["links_preconnected"].as_u64().expect("links_preconnected");
    }
    assert!(preconnected > 0, "no relay opened a link ahead of need");
    // (An authority whose first consensus came out different takes the peers' with their next
    // signature: wait for it, bounded.)
    let auth = wait_status(&net.dir.join("auth1"), Duration::from_secs(30), "published_consensus.signatures>=2");
    assert!(auth["published_consensus"]["signatures"].as_u64() >= Some(2), "{auth}");
    // The readable form names the parts.
    let out = Command::new(env!("CARGO_BIN_EXE_allium")).args(["status", "--config", client_cfg.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for part in ["bootstrap", "100%", "consensus", "guards", "circuits", "limits hit"] {
        assert!(text.contains(part), "{part:?} missing from allium status:\n{text}");
    }

    // Metrics: relay1 restarted with metrics_listen (port 0: the port it bound is in its
    // status), scraped once its status says it holds a valid consensus and has been tested by
    // the authorities (a link open, bytes read), then parsed by prometheus_client.
    let (_relay1, addr) = restart_with_metrics(&net, "relay1");
    for condition in ["consensus.valid==true", "links_open>=1", "bytes_read>=1"] {
        wait_status(&net.dir.join("relay1"), Duration::from_secs(60), condition);
    }
    let (line, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(line.contains("200"), "{line}");
    assert!(
        sample(&body, "allium_consensus_valid") == 1.0 && sample(&body, "allium_links_opened_total") > 0.0 && sample(&body, "allium_link_read_bytes_total") > 0.0,
        "the metrics disagree with the status (a consensus and a link):\n{body}"
    );
    let families = parse_with_prometheus_client(&body);
    let names: Vec<&str> = families.iter().map(|f| f.0.as_str()).collect();
    assert!(families.len() >= 20, "only {} families: {names:?}", families.len());
    for want in ["allium_circuits_open", "allium_circuits_opened", "allium_circuit_build_seconds", "allium_limit_hits", "allium_consensus_age_seconds", "allium_handshake_queue_delay_seconds", "allium_info"] {
        assert!(names.contains(&want), "no family {want} in {names:?}");
    }
    let build = families.iter().find(|f| f.0 == "allium_circuit_build_seconds").unwrap();
    assert_eq!(build.1, "histogram", "{build:?}");
    assert!(body.contains("allium_info{role=\"relay\","), "{body}");
    assert!(http(addr, "GET /other HTTP/1.1\r\n\r\n").0.contains("404"));
    assert!(http(addr, "POST /metrics HTTP/1.1\r\n\r\n").0.contains("400"));

    // SIGHUP: relay2 reads its config again, applies the new log level, reports a change it
    // cannot apply live, and keeps running; a broken file is refused and the relay runs on.
    let relay2 = net.nodes.iter().find(|n| n.name == "relay2").unwrap();
    let cfg_path = net.dir.join("relay2/config.toml");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let edited = original.replacen("[node]\n", "[node]\nlog_level = \"info,allium_relay=debug\"\n", 1).replacen("[relay]\n", "[relay]\nbandwidth = 123456789\n", 1);
    assert_ne!(edited, original);
    std::fs::write(&cfg_path, &edited).unwrap();
    let pid = Pid::from_raw(relay2.pid as i32).unwrap();
    kill_process(pid, Signal::HUP).unwrap();
    let r2 = net.dir.join("relay2");
    let s = wait_status(&r2, Duration::from_secs(30), "config_reloads==1");
    assert_eq!(s["config_reloads"], 1, "SIGHUP did not reload: {s}");
    let log = net.node_log("relay2");
    let line = log.lines().find(|l| l.contains("SIGHUP: reloaded")).unwrap_or_else(|| panic!("no reload line in relay2's log"));
    // The testnet sets RUST_LOG for its nodes, which wins over node.log_level (the unit test
    // in src/logging.rs shows the level applied when it is not set).
    assert!(line.contains("next restart: relay.bandwidth") && line.contains("not applied: node.log_level (RUST_LOG is set"), "{line}");
    std::fs::write(&cfg_path, "[node\nbroken").unwrap();
    kill_process(pid, Signal::HUP).unwrap();
    let s = wait_status(&r2, Duration::from_secs(30), "config_reload_failures==1");
    assert_eq!(s["config_reload_failures"], 1, "{s}");
    assert_eq!(s["pid"], relay2.pid, "relay2 was restarted?");
    std::fs::write(&cfg_path, &original).unwrap();

    // A condition that does not hold in time: the status comes back, with exit code 1.
    let dir = r2.as_os_str();
    let (code, err) = crate::support::run_to_exit(&["status".as_ref(), "--data-dir".as_ref(), dir, "--wait".as_ref(), "config_reloads>=99".as_ref(), "--wait-secs".as_ref(), "1".as_ref()], "allium status --wait did not return");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("did not hold within 1 s"), "{err}");
    // A malformed condition is a command-line error.
    let (code, err) = crate::support::run_to_exit(&["status".as_ref(), "--data-dir".as_ref(), dir, "--wait".as_ref(), "config_reloads".as_ref()], "allium status --wait did not return");
    assert_eq!(code, Some(2), "{err}");
}

/// Without a running node `allium status` fails (exit 1) and says where it looked.
#[test]
fn status_of_a_stopped_node_says_so() {
    let dir = crate::support::fresh_dir("status-none");
    let out = Command::new(env!("CARGO_BIN_EXE_allium")).args(["status", "--data-dir", dir.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("control.sock") && err.contains("is it running"), "{err}");
}
