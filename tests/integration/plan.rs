//! `allium network plan` (issue "From one laptop to many hosts", point 2): a hosts file of
//! loopback "hosts" becomes every node's keys and config.toml; each node, started from its
//! generated config alone as its own process, joins the network; a client fetches a file through
//! an exit and through an onion service another client hosts; `allium keygen --fallback-entry`
//! prints the fallback entries the plan wrote.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::support::http::{http_get_via_socks, pseudo_random, FileServer, GetError};


/// A port that was free on `ip` a moment ago.
fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The node processes this test started, stopped by pid on drop (SIGTERM, then SIGKILL).
struct Nodes {
    root: PathBuf,
    out: PathBuf,
    procs: Vec<(String, Child)>,
}

impl Nodes {
    /// Starts `allium <role> --config OUT/<name>/config.toml`, logging to `OUT/<name>/log`.
    fn start(&mut self, role: &str, name: &str) {
        let dir = self.out.join(name);
        let log = File::create(dir.join("log")).expect("create the node's log");
        let child = Command::new(env!("CARGO_BIN_EXE_allium"))
            .args([role, "--config"])
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.procs.push((name.to_string(), child));
    }

    fn log(&self, name: &str) -> String {
        crate::support::tail(&self.out.join(name).join("log"), 30)
    }

    /// Panics, with its log, if a node has exited.
    fn check_alive(&mut self) {
        let dead = self.procs.iter_mut().find_map(|(name, c)| c.try_wait().ok().flatten().map(|s| (name.clone(), s)));
        if let Some((name, status)) = dead {
            panic!("{name} exited with {status}; its log ends with:\n{}", self.log(&name));
        }
    }

    /// Waits (on node `name`: `allium status --wait`) until `condition` holds in its status, or
    /// panics after `limit` (saying whether a node has exited meanwhile).
    fn wait_status(&mut self, name: &str, limit: Duration, condition: &str) {
        if let Err(e) = crate::support::try_wait_status(&self.out.join(name), condition, limit) {
            self.check_alive();
            panic!("{name}: {e}; its log ends with:\n{}", self.log(name));
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, c) in &self.procs {
            if let Some(pid) = Pid::from_raw(c.id() as i32) {
                let _ = kill_process(pid, Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, c) in self.procs.iter_mut() {
            if !crate::support::events::wait_exit(c.id(), deadline.saturating_duration_since(Instant::now())) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("planned network left in {} for inspection", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// GET through SOCKS, tried `tries` times while no stream opens (the client's view of the
/// network may lag a consensus behind the service's); a stream that opens and then fails is a
/// failure at once.
fn fetch(nodes: &mut Nodes, socks: SocketAddr, host: &str, port: u16, path: &str, tries: usize) -> Vec<u8> {
    for _ in 1..tries {
        match http_get_via_socks(socks, host, port, path) {
            Ok(body) => return body,
            Err(GetError::Connect(code)) => {
                eprintln!("SOCKS reply {code:#04x} for {host}:{port}; trying again");
                nodes.check_alive();
            }
            Err(e) => panic!("GET {path} from {host}:{port} through {socks}: {e:?}\nclient log:\n{}", nodes.log("client")),
        }
    }
    http_get_via_socks(socks, host, port, path).unwrap_or_else(|e| panic!("GET {path} from {host}:{port} through {socks}: {e:?}\nclient log:\n{}", nodes.log("client")))
}

#[test]
fn a_planned_network_runs_from_its_configs_alone() {
    let server = FileServer::start(vec![("/file", pseudo_random(300_000, 61))]);
    let root = crate::support::fresh_dir("plan");
    let out = root.join("out");
    let mut nodes = Nodes { root: root.clone(), out: out.clone(), procs: Vec::new() };

    // Authorities on 127.61.0.1-3; relays each in a /16 of its own (the path rules never put
    // two hops of one circuit in one /16); two clients, one hosting an onion service.
    let mut hosts = String::from("# Loopback \"hosts\" of the plan test.\n");
    let mut node = |name: &str, role: &str, addr: &str, extra: String| {
        hosts.push_str(&format!("[[node]]\nname = \"{name}\"\nrole = \"{role}\"\naddress = \"{addr}\"\n{extra}\n"));
    };
    for i in 1..=3 {
        let a = format!("127.61.0.{i}");
        node(&format!("auth{i}"), "authority", &a, format!("port = {}\n", free_port(ip(&a))));
    }
    for i in 1..=4 {
        let a = format!("127.{}.0.1", 61 + i);
        node(&format!("relay{i}"), "relay", &a, format!("port = {}\n", free_port(ip(&a))));
    }
    node("exit1", "exit", "127.66.0.1", format!("port = {}\n", free_port(ip("127.66.0.1"))));
    let socks = SocketAddr::new(ip("127.67.0.1"), free_port(ip("127.67.0.1")));
    node("client", "client", "127.67.0.1", format!("socks_listen = \"{socks}\"\n"));
    let hs_socks = SocketAddr::new(ip("127.68.0.1"), free_port(ip("127.68.0.1")));
    node(
        "hs",
        "client",
        "127.68.0.1",
        format!("socks_listen = \"{hs_socks}\"\n[[node.onion_service]]\nname = \"web\"\nports = [\"80 -> {}\"]\n", server.addr()),
    );
    let hosts_path = root.join("hosts.toml");
    std::fs::write(&hosts_path, hosts).unwrap();

    let plan = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_allium"));
        cmd.args(["network", "plan", "--hosts"]).arg(&hosts_path).arg("--out").arg(&out).arg("--data-root").arg(&out).args(extra);
        crate::support::run_within(cmd, Duration::from_secs(60)).expect("allium network plan finishes")
    };
    // Loopback addresses are refused on a real network, saying what allows them.
    let refused = plan(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("auth1") && stderr.contains("private or loopback") && stderr.contains("--testnet"), "{stderr}");
    assert!(!out.exists(), "a refused plan writes nothing");

    let planned = plan(&["--testnet", "--voting-interval-secs", "10"]);
    let stdout = String::from_utf8_lossy(&planned.stdout).into_owned();
    assert!(planned.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&planned.stderr));
    let onion_host = stdout
        .lines()
        .find_map(|l| l.strip_prefix("onion service web on hs: "))
        .unwrap_or_else(|| panic!("no onion address in:\n{stdout}"))
        .to_string();
    let config = |name: &str| -> toml::Value { std::fs::read_to_string(out.join(name).join("config.toml")).unwrap().parse().unwrap() };
    let client_cfg = config("client");
    assert_eq!(client_cfg["network"]["dangerous_testnet"].as_bool(), Some(true));
    assert_eq!(config("auth1")["authority"]["voting_interval_secs"].as_integer(), Some(10));

    // The fallback entries the plan wrote are what `allium keygen --fallback-entry` prints.
    let fallbacks = client_cfg["client"]["fallback_dirs"].as_array().expect("fallback_dirs").clone();
    assert_eq!(fallbacks.len(), 5);
    for f in &fallbacks {
        let name = f["nickname"].as_str().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_allium"));
        cmd.args(["keygen", "--fallback-entry", "--data-dir"]).arg(out.join(name)).args(["--address", f["address"].as_str().unwrap()]);
        let printed = crate::support::run_within(cmd, Duration::from_secs(30)).expect("keygen finishes");
        assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
        let entry: toml::Value = String::from_utf8_lossy(&printed.stdout).parse().expect("the entry is TOML");
        assert_eq!(&entry["client"]["fallback_dirs"][0], f, "keygen --fallback-entry for {name}");
    }

    // Every node from its own config, in order: authorities, relays, then the clients.
    let authorities: Vec<String> = (1..=3).map(|i| format!("auth{i}")).collect();
    for a in &authorities {
        nodes.start("authority", a);
    }
    for a in &authorities {
        nodes.wait_status(a, Duration::from_secs(30), "role~authority");
    }
    let relays: Vec<String> = (1..=4).map(|i| format!("relay{i}")).chain(["exit1".to_string()]).collect();
    for r in &relays {
        nodes.start("relay", r);
    }
    for r in &relays {
        nodes.wait_status(r, Duration::from_secs(30), "role~relay");
    }
    nodes.wait_status("auth1", Duration::from_secs(120), "published_consensus.relays>=5");
    nodes.start("client", "client");
    nodes.start("client", "hs");
    nodes.wait_status("client", Duration::from_secs(120), "bootstrap.percent>=100");

    // Through an exit, to the test's file server (an IP literal: nothing to resolve).
    let body = fetch(&mut nodes, socks, "127.0.0.1", server.addr().port(), "/file", 3);
    assert!(body == server.file("/file"), "the file through the exit differs ({} bytes)", body.len());
    // Through the onion service the hs node hosts.
    nodes.wait_status("hs", Duration::from_secs(180), "onion_publications.web>=1");
    let body = fetch(&mut nodes, socks, &onion_host, 80, "/file", 3);
    assert!(body == server.file("/file"), "the file through the onion service differs ({} bytes)", body.len());
}
