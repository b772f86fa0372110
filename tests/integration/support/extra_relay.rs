//! A relay started beside a running test network from a config file of its own: a copy of one
//! of the network's relay configs (its `[network]`: the authorities and the test rules) with
//! its own nickname, data directory, address and OR port. Killed (by its pid) when dropped.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::testnet::Testnet;

pub struct ExtraRelay {
    /// Its scratch directory: `relay.toml`, `log` and `data/`.
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Child,
}

/// A free port on `ip` (bound, then released).
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

impl ExtraRelay {
    /// Starts `allium relay` as `nickname` on `ip` (a /16 no testnet node uses: `127.k.0.1`
    /// with k above the network's node count), listening on `listen_port` and, when
    /// `advertise` is set, publishing that address instead. `like` names a relay of `net`
    /// whose config is copied (not an exit: the copy drops `[exit]`).
    pub fn start(net: &Testnet, like: &str, nickname: &str, ip: IpAddr, listen_port: u16, advertise: Option<SocketAddr>) -> ExtraRelay {
        let dir = super::fresh_dir(nickname);
        let config = dir.join("relay.toml");
        let log = dir.join("log");
        let path = net.dir.join(like).join("config.toml");
        let mut v: toml::Value = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let t = v.as_table_mut().unwrap();
        let mut node = toml::map::Map::new();
        node.insert("nickname".into(), nickname.into());
        node.insert("data_dir".into(), dir.join("data").display().to_string().into());
        node.insert("address".into(), ip.to_string().into());
        t.insert("node".into(), toml::Value::Table(node));
        t.remove("exit");
        let mut relay = toml::map::Map::new();
        relay.insert("or_port".into(), i64::from(listen_port).into());
        if let Some(a) = advertise {
            relay.insert("advertise_address".into(), a.to_string().into());
        }
        t.insert("relay".into(), toml::Value::Table(relay));
        std::fs::write(&config, toml::to_string(&v).unwrap()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_allium"))
            .args(["relay", "--config"])
            .arg(&config)
            .arg("--log-file")
            .arg(&log)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start allium relay");
        ExtraRelay { dir, log, child }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `allium status --json` for this relay.
    pub fn status(&self) -> serde_json::Value {
        super::status_json(&self.dir.join("data"))
    }

    /// Waits until the relay's status says the consensus it holds lists it; panics after `limit`.
    pub fn wait_listed(&self, limit: Duration) {
        if let Err(e) = super::try_wait_status(&self.dir.join("data"), "in_consensus==true", limit) {
            panic!("the consensus never listed the relay ({e}); its log:\n{}", self.log());
        }
    }
}

impl Drop for ExtraRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
