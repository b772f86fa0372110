//! `allium network plan`: the keys and a complete config.toml of every node of a network spread
//! over many hosts, from one hosts file; and `allium keygen --fallback-entry`, one relay's
//! `[[client.fallback_dirs]]` entry from its key files.
//!
//! The hosts file (TOML; README.md, "Planning a network on many hosts"):
//!
//! ```toml
//! [[node]]
//! name = "auth1"            # nickname and directory name: 1-19 ASCII letters and digits
//! role = "authority"        # authority | relay | exit | client
//! address = "203.0.113.5"   # the node's own IP address (node.address)
//! port = 9030               # optional: the dir port (authority, default 9030) or the OR port
//!                           # (relay, exit: default 9001); not for a client
//!
//! [[node]]
//! name = "laptop"
//! role = "client"
//! address = "198.51.100.7"
//! socks_listen = "127.0.0.1:9050"   # optional, client only (default 127.0.0.1:9050)
//! [[node.onion_service]]            # optional, client only: as `[[onion_service]]` in its config
//! name = "web"
//! ports = ["80 -> 127.0.0.1:8080"]
//! ```
//!
//! Each node gets `OUT/<name>/`: its keys (created, or reused when already there) and its
//! config.toml, rendered by the test network's [`layout::render`] under real-network
//! [`Rules`] (`--testnet`: test-network ones), with `node.data_dir = DATA_ROOT/<name>`. Every
//! config is loaded back with its role's loader before the plan reports success.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use allium_client::onion_service::OnionServiceConfig;
use allium_directory::authkeys::SIGNING_CERT_FILE;
use allium_directory::config::{MAX_INTERVAL_SECS, MIN_INTERVAL_SECS, MIN_TESTNET_INTERVAL_SECS};
use allium_net::keys::{IDENTITY_FILE, LINK_FILE, ONION_FILE};
use clap::Args;
use serde::Deserialize;

use crate::cli::KeygenArgs;
use crate::testnet::layout::{self, Faults, NodeSpec, Role, Rules};

/// Default dir port of an authority.
const DEFAULT_DIR_PORT: u16 = 9030;
/// Default OR port of a relay or exit.
const DEFAULT_OR_PORT: u16 = 9001;
/// Where authorities' identity keys go with `--offline-identity`: `OUT/offline-identities/<name>/`.
const OFFLINE_DIR: &str = "offline-identities";

/// Arguments of `allium network plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The hosts file: one `[[node]]` table per node (name, role, address, optional port;
    /// clients: optional socks_listen and `[[node.onion_service]]`).
    #[arg(long, value_name = "FILE")]
    pub hosts: PathBuf,
    /// Where to write `<name>/` for each node: its keys and config.toml. Created if missing;
    /// keys already there are reused, configs rewritten.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Each node's `node.data_dir` is DATA_ROOT/<name>: where `OUT/<name>/` goes on its host.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/allium")]
    pub data_root: PathBuf,
    /// A test network: every config gets `network.dangerous_testnet = true`, which private and
    /// loopback addresses need, and exits accept every destination, loopback included. Never
    /// on a real network.
    #[arg(long)]
    pub testnet: bool,
    /// The authorities' voting interval in seconds (default: 3600, or 10 with --testnet); below
    /// 300 only with --testnet.
    #[arg(long, value_name = "N")]
    pub voting_interval_secs: Option<u64>,
    /// Keep authorities' identity keys out of their directories: each is created in
    /// `OUT/offline-identities/<name>/` and certifies the signing and link keys written to
    /// `OUT/<name>/` (as `allium keygen --authority --out`). Move that directory offline.
    #[arg(long)]
    pub offline_identity: bool,
}

/// The hosts file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    #[serde(rename = "node", default)]
    nodes: Vec<Host>,
}

/// One `[[node]]` of the hosts file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Host {
    name: String,
    role: HostRole,
    address: IpAddr,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    socks_listen: Option<SocketAddr>,
    #[serde(default, rename = "onion_service")]
    onion_services: Vec<OnionServiceConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum HostRole {
    Authority,
    Relay,
    Exit,
    Client,
}

/// Runs `allium network plan`: exit 2 for a bad hosts file or command line, 1 when keys or
/// configs cannot be written.
pub fn run(args: &PlanArgs) -> ExitCode {
    let hosts: HostsFile = match allium_net::config::load_toml(&args.hosts) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("allium network plan: hosts file: {e}");
            return ExitCode::from(2);
        }
    };
    let data_root = match std::path::absolute(&args.data_root) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("allium network plan: --data-root {}: {e}", args.data_root.display());
            return ExitCode::from(2);
        }
    };
    let (mut nodes, warnings) = match check(&hosts, args, &data_root) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("allium network plan: {}: {e}", args.hosts.display());
            return ExitCode::from(2);
        }
    };
    for w in warnings {
        eprintln!("allium network plan: warning: {w}");
    }
    match write_plan(&hosts, &mut nodes, args) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("allium network plan: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the hosts file and the options; the nodes (keys not made yet) and warnings.
fn check(hosts: &HostsFile, args: &PlanArgs, data_root: &Path) -> Result<(Vec<NodeSpec>, Vec<String>), String> {
    if let Some(v) = args.voting_interval_secs {
        if !(MIN_TESTNET_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&v) {
            return Err(format!("--voting-interval-secs must be {MIN_TESTNET_INTERVAL_SECS}-{MAX_INTERVAL_SECS}"));
        }
        if v < MIN_INTERVAL_SECS && !args.testnet {
            return Err(format!("--voting-interval-secs below {MIN_INTERVAL_SECS} is only allowed with --testnet"));
        }
    }
    let mut names = BTreeSet::new();
    let mut listens = BTreeSet::new();
    let mut nodes = Vec::new();
    for h in &hosts.nodes {
        let n = &h.name;
        if n.is_empty() || n.len() > 19 || !n.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("node name {n:?} must be 1-19 ASCII letters or digits (it is the nickname and a directory name)"));
        }
        if !names.insert(n.to_ascii_lowercase()) {
            return Err(format!("node {n}: a second node of that name"));
        }
        let client = h.role == HostRole::Client;
        if client && h.port.is_some() {
            return Err(format!("node {n}: a client has no port (its SOCKS address is socks_listen)"));
        }
        if !client && (h.socks_listen.is_some() || !h.onion_services.is_empty()) {
            return Err(format!("node {n}: socks_listen and onion_service are for clients only"));
        }
        if h.port == Some(0) {
            return Err(format!("node {n}: port must be 1-65535"));
        }
        // A client's address is only the source of its connections: private (behind NAT) is fine.
        if !client && !args.testnet && allium_proto::policy::is_private(h.address) {
            return Err(format!(
                "node {n}: {} is a private or loopback address, which a real network refuses (a test network on private or loopback addresses needs --testnet)",
                h.address
            ));
        }
        allium_client::onion_service::validate(&h.onion_services).map_err(|e| format!("node {n}: {e}"))?;
        let (role, listen) = match h.role {
            HostRole::Authority => (Role::Authority, SocketAddr::new(h.address, h.port.unwrap_or(DEFAULT_DIR_PORT))),
            HostRole::Relay => (Role::Relay, SocketAddr::new(h.address, h.port.unwrap_or(DEFAULT_OR_PORT))),
            HostRole::Exit => (Role::Exit { strict: !args.testnet }, SocketAddr::new(h.address, h.port.unwrap_or(DEFAULT_OR_PORT))),
            HostRole::Client => (Role::Client, h.socks_listen.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9050))),
        };
        if !client && !listens.insert(listen) {
            return Err(format!("node {n}: {listen} is already another node's port"));
        }
        nodes.push(NodeSpec {
            name: n.clone(),
            role,
            ip: h.address,
            listen,
            dir: data_root.join(n),
            fingerprint: String::new(),
            link_key: [0; 32],
            onion_key: [0; 32],
            http_connect: None,
            metrics: None,
        });
    }
    if !nodes.iter().any(|n| n.role == Role::Authority) {
        return Err("no authority: a network needs at least one (role = \"authority\")".into());
    }
    let relays: Vec<&NodeSpec> = nodes.iter().filter(|n| n.role.is_relay()).collect();
    if relays.len() < 3 {
        return Err(format!("{} relays (exits included): a circuit needs three distinct relays", relays.len()));
    }
    let mut warnings = Vec::new();
    if !relays.iter().any(|n| matches!(n.role, Role::Exit { .. })) {
        warnings.push("no exit: the network can reach only onion services".to_string());
    }
    for (i, a) in relays.iter().enumerate() {
        for b in &relays[i + 1..] {
            if allium_client::path::same_subnet(a.ip, b.ip) {
                warnings.push(format!("{} and {} are in one /16 (IPv6: /32), so no circuit uses both", a.name, b.name));
            }
        }
    }
    Ok((nodes, warnings))
}

/// Makes every node's keys and writes its config.toml; the report for stdout.
fn write_plan(hosts: &HostsFile, nodes: &mut [NodeSpec], args: &PlanArgs) -> Result<String, String> {
    let out = &args.out;
    allium_net::keys::ensure_dir(out).map_err(|e| e.to_string())?;
    for n in nodes.iter_mut() {
        let key_dir = out.join(&n.name);
        let offline = n.role == Role::Authority && args.offline_identity;
        let identity_dir = if offline { out.join(OFFLINE_DIR).join(&n.name) } else { key_dir.clone() };
        if n.role == Role::Authority {
            let (has_id, has_cert) = (key_dir.join(IDENTITY_FILE).exists(), key_dir.join(SIGNING_CERT_FILE).exists());
            if offline && has_id {
                return Err(format!("{} holds an identity key: remove it, or plan without --offline-identity", key_dir.display()));
            }
            if !offline && has_cert && !has_id {
                return Err(format!("{} has an authority certificate but no identity key: plan with --offline-identity", key_dir.display()));
            }
            if offline {
                allium_net::keys::ensure_dir(&out.join(OFFLINE_DIR)).map_err(|e| e.to_string())?;
            }
        }
        layout::make_keys(n, &key_dir, &identity_dir)?;
    }
    let rules = Rules {
        header: "# Written by `allium network plan`; planning again rewrites it (the keys are kept).",
        testnet: args.testnet,
        voting_interval_secs: args.voting_interval_secs,
    };
    let mut report = String::new();
    let mut onions = String::new();
    for (n, h) in nodes.iter().zip(&hosts.nodes) {
        let key_dir = out.join(&n.name);
        // Authorities of a planned network measure relays' bandwidth (every one of them, so the
        // consensus weights are measured ones).
        let mut text = layout::render(n, nodes, &rules, &Faults { bandwidth_scan: true, ..Faults::default() });
        for s in &h.onion_services {
            let address = s.load_or_create_address(&key_dir).map_err(|e| format!("{}: onion service {}: {e}", n.name, s.name))?;
            let _ = writeln!(onions, "onion service {} on {}: {}", s.name, n.name, address.to_host());
            text.push_str(&render_onion_service(s));
        }
        let path = key_dir.join("config.toml");
        layout::write_atomic(&path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        check_config(n, &path)?;
        let _ = writeln!(report, "{:<19} {:<9} {:<24} {}", n.name, n.role.label(), n.listen.to_string(), n.fingerprint);
    }
    let _ = writeln!(report, "{onions}");
    let _ = writeln!(report, "wrote the keys and config.toml of {} nodes to {}/", nodes.len(), out.join("<name>").display());
    let _ = writeln!(report, "on each host, copy <name>/ to its node.data_dir (owned by the node's user, modes kept) and run, e.g.:");
    if let Some(n) = nodes.first() {
        let _ = writeln!(report, "  allium {} --config {}", n.role.subcommand(), n.dir.join("config.toml").display());
    }
    if args.offline_identity {
        let _ = writeln!(
            report,
            "authority identity keys: {}/<name>/: keep them offline; before the signing keys expire (90 days) run \
             `allium keygen --authority --data-dir <that dir> --out <new dir>` and copy the new files to the authority",
            out.join(OFFLINE_DIR).display()
        );
    }
    Ok(report)
}

/// A client's `[[onion_service]]` table, every key explicit.
fn render_onion_service(s: &OnionServiceConfig) -> String {
    let list = |v: &[String]| v.iter().map(|p| toml::Value::String(p.clone()).to_string()).collect::<Vec<_>>().join(", ");
    let mut t = String::from("[[onion_service]]\n");
    let _ = writeln!(t, "name = {}", toml::Value::String(s.name.clone()));
    let _ = writeln!(t, "ports = [{}]", list(&s.ports));
    if !s.authorized_clients.is_empty() {
        let _ = writeln!(t, "authorized_clients = [{}]", list(&s.authorized_clients));
    }
    let _ = writeln!(t, "intro_rate_per_sec = {}", s.intro_rate_per_sec);
    let _ = writeln!(t, "intro_burst = {}\n", s.intro_burst);
    t
}

/// Loads a written config with its role's loader (and an authority's identity check): a plan
/// its nodes would refuse is not reported as done.
fn check_config(n: &NodeSpec, path: &Path) -> Result<(), String> {
    let err = |e: allium_net::config::ConfigError| format!("{}: the written config does not load: {e}", n.name);
    match n.role {
        Role::Authority => {
            let cfg = allium_directory::config::AuthorityConfig::load(path).map_err(err)?;
            let id = n.fingerprint.parse().map_err(|e| format!("{}: {e}", n.name))?;
            cfg.check_identity(&id).map_err(err)
        }
        Role::Relay | Role::Exit { .. } => allium_relay::RelayConfig::load(path).map(|_| ()).map_err(err),
        Role::Client | Role::OnionService => allium_client::ClientConfig::load(path).map(|_| ()).map_err(err),
    }
}

/// `allium keygen --data-dir DIR --fallback-entry --address IP:PORT [--nickname NAME]`: prints
/// the relay's `[[client.fallback_dirs]]` entry. Exit 1 when its keys are not all there.
pub fn fallback_entry(args: &KeygenArgs) -> ExitCode {
    let (Some(dir), Some(address)) = (args.data_dir.as_deref(), args.address) else {
        eprintln!("allium keygen: --fallback-entry needs --data-dir and --address");
        return ExitCode::from(2);
    };
    let nickname = match &args.nickname {
        Some(n) => n.clone(),
        None => dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    if nickname.is_empty() || nickname.len() > 19 || !nickname.chars().all(|c| c.is_ascii_alphanumeric()) {
        eprintln!("allium keygen: nickname {nickname:?} is not 1-19 ASCII letters or digits: pass --nickname (the relay's node.nickname)");
        return ExitCode::from(2);
    }
    // Nothing is created: the entry must describe keys a relay already has.
    if let Some(missing) = [IDENTITY_FILE, LINK_FILE, ONION_FILE].into_iter().find(|f| !dir.join(f).exists()) {
        eprintln!("allium keygen: {} is missing: --data-dir must be the relay's data directory, holding its keys", dir.join(missing).display());
        return ExitCode::FAILURE;
    }
    match allium_net::keys::load_or_create(dir) {
        Ok(keys) => {
            print!("{}", layout::render_fallback_dir(&nickname, &keys.relay_id().fingerprint(), address, &keys.link_public(), &keys.onion_public()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("allium keygen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: &Path, testnet: bool, interval: Option<u64>) -> PlanArgs {
        PlanArgs {
            hosts: PathBuf::from("hosts.toml"),
            out: out.to_path_buf(),
            data_root: PathBuf::from("/var/lib/allium"),
            testnet,
            voting_interval_secs: interval,
            offline_identity: false,
        }
    }

    fn hosts(first_octet: u8) -> HostsFile {
        let mut text = String::new();
        for (i, role) in ["authority", "authority", "relay", "relay", "exit"].iter().enumerate() {
            let _ = writeln!(text, "[[node]]\nname = \"n{i}\"\nrole = \"{role}\"\naddress = \"{first_octet}.{}.0.1\"\n", i + 1);
        }
        text.push_str("[[node]]\nname = \"c\"\nrole = \"client\"\naddress = \"10.0.0.9\"\n[[node.onion_service]]\nname = \"web\"\nports = [\"80 -> 127.0.0.1:8080\"]\n");
        allium_net::config::parse_toml(&text, Path::new("hosts.toml")).unwrap()
    }

    #[test]
    fn private_addresses_and_short_intervals_need_testnet() {
        let out = Path::new("/tmp/unused");
        let root = Path::new("/var/lib/allium");
        let e = check(&hosts(10), &args(out, false, None), root).unwrap_err();
        assert!(e.contains("node n0") && e.contains("private or loopback") && e.contains("--testnet"), "{e}");
        assert!(check(&hosts(10), &args(out, true, None), root).is_ok());
        // A public network with a private client (behind NAT) is fine.
        let (nodes, warnings) = check(&hosts(203), &args(out, false, None), root).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(nodes[0].listen, "203.1.0.1:9030".parse().unwrap());
        assert_eq!(nodes[2].listen, "203.3.0.1:9001".parse().unwrap());
        assert_eq!(nodes[4].role, Role::Exit { strict: true });
        assert_eq!(nodes[5].listen, "127.0.0.1:9050".parse().unwrap());
        assert_eq!(nodes[5].dir, root.join("c"));
        let e = check(&hosts(203), &args(out, false, Some(60)), root).unwrap_err();
        assert!(e.contains("--voting-interval-secs") && e.contains("--testnet"), "{e}");
        assert!(check(&hosts(127), &args(out, true, Some(5)), root).is_ok());
        assert!(check(&hosts(127), &args(out, true, Some(1)), root).is_err());
    }

    #[test]
    fn bad_hosts_are_refused_with_the_node_named() {
        let parse = |text: &str| -> Result<HostsFile, String> { allium_net::config::parse_toml(text, Path::new("h.toml")).map_err(|e| e.to_string()) };
        let e = parse("[[node]]\nname = \"a\"\nrole = \"bridge\"\naddress = \"203.0.113.1\"\n").unwrap_err();
        assert!(e.contains("node[0].role"), "{e}");
        let out = Path::new("/tmp/unused");
        let root = Path::new("/r");
        let mut h = hosts(203);
        h.nodes[3].port = Some(9030);
        h.nodes[3].address = h.nodes[0].address;
        let e = check(&h, &args(out, false, None), root).unwrap_err();
        assert!(e.contains("node n3") && e.contains("already another node's port"), "{e}");
        let mut h = hosts(203);
        h.nodes[5].port = Some(1);
        assert!(check(&h, &args(out, false, None), root).unwrap_err().contains("a client has no port"));
        let mut h = hosts(203);
        h.nodes[1].name = "N0".into();
        assert!(check(&h, &args(out, false, None), root).unwrap_err().contains("second node"));
        let mut h = hosts(203);
        h.nodes.remove(2);
        assert!(check(&h, &args(out, false, None), root).unwrap_err().contains("three distinct relays"));
        // Two relays in one /16: a warning only.
        let mut h = hosts(203);
        h.nodes[3].address = "203.3.9.9".parse().unwrap();
        let (_, warnings) = check(&h, &args(out, false, None), root).unwrap();
        assert!(warnings.iter().any(|w| w.contains("n2 and n3")), "{warnings:?}");
    }

    #[test]
    fn a_public_plan_writes_configs_that_load_and_agree() {
        let out = std::env::temp_dir().join(format!("allium-plan-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let a = PlanArgs { offline_identity: true, ..args(&out, false, None) };
        let h = hosts(203);
        let (mut nodes, _) = check(&h, &a, Path::new("/var/lib/allium")).unwrap();
        let report = write_plan(&h, &mut nodes, &a).unwrap();
        assert!(report.contains("onion service web on c: "), "{report}");
        // Offline identities: the authority's directory has no identity key.
        assert!(!out.join("n0").join(IDENTITY_FILE).exists());
        assert!(out.join(OFFLINE_DIR).join("n0").join(IDENTITY_FILE).exists());
        let client: toml::Value = std::fs::read_to_string(out.join("c").join("config.toml")).unwrap().parse().unwrap();
        assert!(client["network"].get("dangerous_testnet").is_none());
        assert_eq!(client["node"]["data_dir"].as_str(), Some("/var/lib/allium/c"));
        assert_eq!(client["network"]["authorities"].as_array().unwrap().len(), 2);
        let fallbacks = client["client"]["fallback_dirs"].as_array().unwrap();
        assert_eq!(fallbacks.len(), 3);
        let relay = allium_net::keys::load_or_create(&out.join("n2")).unwrap();
        assert_eq!(fallbacks[0]["identity"].as_str(), Some(relay.relay_id().fingerprint().as_str()));
        assert_eq!(fallbacks[0]["onion_key"].as_str(), Some(hex::encode(relay.onion_public()).as_str()));
        assert_eq!(client["onion_service"][0]["ports"][0].as_str(), Some("80 -> 127.0.0.1:8080"));
        let exit: toml::Value = std::fs::read_to_string(out.join("n4").join("config.toml")).unwrap().parse().unwrap();
        assert!(exit["exit"].get("policy").is_none(), "a real network's exit keeps the default policy");
        // Planning again keeps every key.
        let (mut again, _) = check(&h, &a, Path::new("/var/lib/allium")).unwrap();
        write_plan(&h, &mut again, &a).unwrap();
        assert_eq!(nodes.iter().map(|n| &n.fingerprint).collect::<Vec<_>>(), again.iter().map(|n| &n.fingerprint).collect::<Vec<_>>());
        // Without --offline-identity the same directory is refused rather than re-keyed.
        let e = write_plan(&h, &mut again, &args(&out, false, None)).unwrap_err();
        assert!(e.contains("--offline-identity"), "{e}");
        let _ = std::fs::remove_dir_all(&out);
    }
}
