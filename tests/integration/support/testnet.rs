//! A whole test network: `allium testnet` started as a child process, ready when it writes
//! `DIR/testnet.env`, stopped (and checked to leave nothing running) on drop.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use super::events::{self, Ended};

/// How long `allium testnet` may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(180);
/// How long it may take to stop after SIGTERM (it gives nodes 5 s before SIGKILL).
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// One line of `DIR/nodes`.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// `authority`, `relay`, `exit`, `client` or `hs` (the client hosting the onion service).
    pub role: String,
    pub pid: u32,
    /// Dir port (authority), OR port (relay, exit) or SOCKS address (client, hs).
    pub addr: SocketAddr,
}

/// A running test network. Dropping it stops the network and, unless the test is already
/// failing, asserts that the orchestrator and every node process are gone.
pub struct Testnet {
    /// The test's scratch directory: holds `net/` (the testnet's DIR) and `testnet.log`.
    pub root: PathBuf,
    /// The testnet's DIR.
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    /// The client's SOCKS5 address, from `DIR/testnet.env`.
    pub socks: SocketAddr,
    child: Option<Child>,
}

impl Testnet {
    /// Runs `allium testnet --dir <fresh dir> --socks-port 0 <args>` and waits until it is ready.
    pub fn start(args: &[&str]) -> Testnet {
        Self::start_with_env(args, &[])
    }

    /// [`Self::start`] with extra environment variables for the testnet and every node.
    ///
    /// Started once more if a node found its port taken: `allium testnet` picks free ports at
    /// random, and another test's network may bind the same one on the same loopback address
    /// between the pick and the node's start.
    pub fn start_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Testnet {
        match Self::try_start(args, env) {
            Ok(net) => net,
            Err(why) if why.contains("Address already in use") => {
                eprintln!("a test network node's port was taken meanwhile; starting another network:\n{why}");
                Self::try_start(args, env).unwrap_or_else(|why| panic!("{why}"))
            }
            Err(why) => panic!("{why}"),
        }
    }

    /// Starts a network, or says why `allium testnet` exited before it was ready.
    fn try_start(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<Testnet, String> {
        let root = super::fresh_dir("net");
        let dir = root.join("net");
        let log_path = root.join("testnet.log");
        let log = File::create(&log_path).expect("create testnet.log");
        let child = Command::new(env!("CARGO_BIN_EXE_allium"))
            .arg("testnet")
            .arg("--dir")
            .arg(&dir)
            .args(["--socks-port", "0"])
            // Tests read these debug lines from the node logs: the client's circuit paths and
            // directory fetches, the addresses that connect to an authority's dir port, and what
            // an onion service does with each introduction.
            .env("RUST_LOG", "info,allium_client::circuit=debug,allium_client::dir_fetch=debug,allium_directory::access_log=debug,allium_client::hs_service=debug")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start allium testnet");
        // From here on, a panic drops `net`, which stops the testnet.
        let mut net = Testnet { root, dir, nodes: Vec::new(), socks: SocketAddr::from(([0, 0, 0, 0], 0)), child: Some(child) };
        let env_path = net.dir.join("testnet.env");
        let pid = net.child.as_ref().expect("child present").id();
        let env = match events::wait_file(&env_path, Some(pid), READY_DEADLINE, || read_env(&env_path)) {
            Ok(env) => env,
            Err(Ended::Exited) => {
                let status = net.child.take().expect("child present").wait().expect("reap allium testnet");
                return Err(format!("allium testnet exited ({status}) before it was ready; its output ends with:\n{}", super::tail(&log_path, 40)));
            }
            Err(Ended::TimedOut) => panic!(
                "allium testnet not ready after {} s; its output ends with:\n{}",
                READY_DEADLINE.as_secs(),
                super::tail(&log_path, 40)
            ),
        };
        let host: IpAddr = env_value(&env, "SOCKS_HOST").parse().expect("SOCKS_HOST is an IP address");
        let port: u16 = env_value(&env, "SOCKS_PORT").parse().expect("SOCKS_PORT is a port");
        net.socks = SocketAddr::new(host, port);
        let listed_dir = env_value(&env, "TESTNET_DIR");
        assert_eq!(Path::new(&listed_dir), net.dir.canonicalize().unwrap(), "TESTNET_DIR in testnet.env");
        net.nodes = parse_nodes(&std::fs::read_to_string(net.dir.join("nodes")).expect("DIR/nodes exists once testnet.env does"));
        Ok(net)
    }

    /// The nodes with the given role.
    pub fn with_role<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.iter().filter(move |n| n.role == role)
    }

    /// The `node.address` of a node, from its config.toml (the client's is not in `DIR/nodes`,
    /// which lists its SOCKS address).
    pub fn node_address(&self, name: &str) -> IpAddr {
        let path = self.dir.join(name).join("config.toml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let value: toml::Value = text.parse().unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        let addr = value.get("node").and_then(|n| n.get("address")).and_then(|a| a.as_str()).expect("node.address");
        addr.parse().expect("node.address is an IP address")
    }

    /// A node's log so far (`DIR/<name>/log`; empty if not written yet).
    pub fn node_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name).join("log")).unwrap_or_default()
    }

    /// Waits up to `limit` for `KEY=` in `DIR/testnet.env` (rewritten when the testnet learns
    /// more, e.g. `ONION_HOST`); its value, or None.
    pub fn wait_env(&self, key: &str, limit: Duration) -> Option<String> {
        let prefix = format!("{key}=");
        let env_path = self.dir.join("testnet.env");
        let found = events::wait_file(&env_path, None, limit, || read_env(&env_path).filter(|env| env.lines().any(|l| l.starts_with(&prefix))));
        found.ok().map(|env| env_value(&env, key))
    }

    /// Waits up to `limit` until `check` accepts the text of file `file` in node `node`'s data
    /// directory (read again each time it is written), and returns what `check` gave; None if
    /// it never did.
    pub fn wait_node_file<T>(&self, node: &str, file: &str, limit: Duration, mut check: impl FnMut(&str) -> Option<T>) -> Option<T> {
        let path = self.dir.join(node).join(file);
        events::wait_file(&path, None, limit, || check(&std::fs::read_to_string(&path).ok()?)).ok()
    }

    /// The testnet's own output so far (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        super::tail(&self.root.join("testnet.log"), lines)
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = Pid::from_raw(child.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let stopped_in_time = wait_exit(&mut child, STOP_DEADLINE);
        if !stopped_in_time {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Nodes are the orchestrator's children: once it has stopped and reaped them they are
        // gone. Give the kernel a moment before calling a node a survivor.
        let deadline = Instant::now() + Duration::from_secs(10);
        let survivors: Vec<&Node> = self.nodes.iter().filter(|n| !events::wait_exit(n.pid, deadline.saturating_duration_since(Instant::now()))).collect();
        let names: Vec<String> = survivors.iter().map(|n| format!("{} (pid {})", n.name, n.pid)).collect();
        for n in &survivors {
            if let Some(pid) = Pid::from_raw(n.pid as i32) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("test network left in {} for inspection", self.root.display());
            return;
        }
        assert!(stopped_in_time, "allium testnet still running {} s after SIGTERM", STOP_DEADLINE.as_secs());
        assert!(names.is_empty(), "node processes survived the testnet: {}", names.join(", "));
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Waits up to `limit` for the child to exit (and reaps it); true if it did.
fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    events::wait_exit(child.id(), limit) && child.try_wait().is_ok()
}

/// The env file's lines, once it is complete (it is written atomically, so present = complete).
fn read_env(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().any(|l| l.starts_with("SOCKS_PORT=")).then_some(text)
}

/// A `KEY=value` from the env file, with shell single quotes removed.
fn env_value(env: &str, key: &str) -> String {
    let raw = env
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("testnet.env has no {key}:\n{env}"));
    match raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        Some(inner) => inner.replace(r"'\''", "'"),
        None => raw.to_string(),
    }
}

/// Parses `DIR/nodes`: `name role pid address:port` per line.
fn parse_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 4, "bad line in DIR/nodes: {l:?}");
            Node {
                name: f[0].to_string(),
                role: f[1].to_string(),
                pid: f[2].parse().unwrap_or_else(|_| panic!("bad pid in DIR/nodes: {l:?}")),
                addr: f[3].parse().unwrap_or_else(|_| panic!("bad address in DIR/nodes: {l:?}")),
            }
        })
        .collect()
}
