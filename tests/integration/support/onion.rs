//! A further onion service on a running test network: an `allium client` process of the test's
//! own, configured like the testnet's hs node (same network, fallback directories) but with its
//! own data directory, SOCKS port and `[[onion_service]]`, so its address is fresh.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

use super::events::Ended;
use super::testnet::Testnet;

/// How long the node may take to print its address.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running service node; stopped (SIGTERM, then SIGKILL) on drop.
pub struct ServiceNode {
    /// The node's directory: config.toml, log, stdout, keys.
    pub dir: PathBuf,
    /// The service's `….allium` name, as the node printed it.
    pub address: String,
    child: Child,
}

impl ServiceNode {
    /// Writes the config of node `name` (a nickname: letters and digits) running a service `svc`
    /// whose port 80 leads to `target` into
    /// `DIR/<name>/` and starts it.
    pub fn start(net: &Testnet, name: &str, target: SocketAddr) -> ServiceNode {
        Self::start_with(net, name, target, &[])
    }

    /// [`Self::start`] with further keys of the service's `[[onion_service]]` table.
    pub fn start_with(net: &Testnet, name: &str, target: SocketAddr, service_keys: &[(&str, i64)]) -> ServiceNode {
        let base = std::fs::read_to_string(net.dir.join("hs").join("config.toml")).expect("the testnet's hs config");
        let mut cfg: toml::Table = base.parse().expect("hs config parses");
        let dir = net.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let node = cfg.get_mut("node").and_then(|n| n.as_table_mut()).expect("[node]");
        node.insert("nickname".into(), name.into());
        node.insert("data_dir".into(), dir.to_string_lossy().into_owned().into());
        // Its own node: the metrics port is the hs node's.
        node.remove("metrics_listen");
        let socks = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let client = cfg.get_mut("client").and_then(|n| n.as_table_mut()).expect("[client]");
        client.insert("socks_listen".into(), socks.to_string().into());
        let mut svc = toml::Table::new();
        svc.insert("name".into(), "svc".into());
        svc.insert("ports".into(), toml::Value::Array(vec![format!("80 -> {target}").into()]));
        for (k, v) in service_keys {
            svc.insert((*k).into(), (*v).into());
        }
        cfg.insert("onion_service".into(), toml::Value::Array(vec![svc.into()]));
        std::fs::write(dir.join("config.toml"), toml::to_string(&cfg).unwrap()).unwrap();
        Self::spawn(dir)
    }

    /// Starts (or restarts) the node whose config is in `dir`; waits for its printed address.
    pub fn spawn(dir: PathBuf) -> ServiceNode {
        let stdout = dir.join("stdout");
        let log = File::create(dir.join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_allium"))
            .arg("client")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("RUST_LOG", "info,allium_client::circuit=debug,allium_client::hs_service=debug")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(log)
            .spawn()
            .expect("start allium client");
        let mut node = ServiceNode { dir, address: String::new(), child };
        let printed = || {
            let out = std::fs::read_to_string(&stdout).unwrap_or_default();
            out.lines().find_map(|l| l.strip_prefix("onion service svc: ")).map(|a| a.split_whitespace().next().unwrap_or("").to_string())
        };
        node.address = match super::events::wait_file(&stdout, Some(node.child.id()), START_DEADLINE, printed) {
            Ok(address) => address,
            Err(Ended::Exited) => panic!("the service node exited ({:?}): {}", node.child.wait(), node.log()),
            Err(Ended::TimedOut) => panic!("the service node printed no address: {:?}\n{}", std::fs::read_to_string(&stdout), node.log()),
        };
        node
    }

    /// The node's process id (the flood benchmark reads its CPU time and RSS).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Waits (on the node: `allium status --wait`) until an HSDir stored the service's
    /// descriptor; why not, after `limit`.
    pub fn wait_published(&self, limit: Duration) -> Result<(), String> {
        super::try_wait_status(&self.dir, "onion_publications.svc>=1", limit).map(|_| ()).map_err(|e| format!("the service's descriptor was not stored by an HSDir: {e}\n{}", self.log()))
    }

    /// Stops the node and waits for it to exit; returns its directory (to restart it).
    pub fn stop(mut self) -> PathBuf {
        self.terminate();
        std::mem::take(&mut self.dir)
    }

    fn terminate(&mut self) {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        if super::events::wait_exit(self.child.id(), Duration::from_secs(10)) && self.child.try_wait().is_ok() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceNode {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}
