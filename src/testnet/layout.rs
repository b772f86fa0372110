//! What a test network is made of: node names, roles, addresses, ports, and the files
//! `allium testnet` writes (each node's config.toml, `DIR/nodes`, `DIR/testnet.env`).
//! `allium network plan` (`crate::plan`) renders its configs and makes its keys with the same
//! [`render`] and [`make_keys`], under real-network [`Rules`].
//!
//! Node k (1-based, in the order authorities, middle relays, exits, client, hs) lives at
//! `127.k.0.1`, so every node has its own /16 and the path rules (no two hops in one /16) stay
//! on. Ports are found by binding port 0 on the node's address and releasing it, so several
//! test networks can run side by side.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

/// What a node does in the test network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Authority,
    /// A relay that is not an exit.
    Relay,
    /// An exit; `strict` ones keep the default exit policy (no private or loopback destinations).
    Exit { strict: bool },
    Client,
    /// A client node that hosts the test network's onion service (`[[onion_service]]`).
    OnionService,
}

impl Role {
    /// The role as written in `DIR/nodes`.
    pub fn label(self) -> &'static str {
        match self {
            Role::Authority => "authority",
            Role::Relay => "relay",
            Role::Exit { .. } => "exit",
            Role::Client => "client",
            Role::OnionService => "hs",
        }
    }

    /// The `allium` subcommand that runs this role.
    pub fn subcommand(self) -> &'static str {
        match self {
            Role::Authority => "authority",
            Role::Relay | Role::Exit { .. } => "relay",
            Role::Client | Role::OnionService => "client",
        }
    }

    pub fn is_relay(self) -> bool {
        matches!(self, Role::Relay | Role::Exit { .. })
    }
}

/// One node of the plan.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `auth1`, `relay2`, `exit1`, `client`: also the nickname and the directory name.
    pub name: String,
    pub role: Role,
    /// The node's own address (`127.k.0.1`).
    pub ip: IpAddr,
    /// The node's listening address: the dir port for an authority, the OR port for a relay,
    /// the SOCKS address for the client and the hs node.
    pub listen: SocketAddr,
    /// `DIR/<name>`: data directory (keys), config.toml and log.
    pub dir: PathBuf,
    /// Identity fingerprint, filled in once the keys exist.
    pub fingerprint: String,
    /// Link and onion public keys, filled in with the fingerprint (the client's fallback
    /// directories list them).
    pub link_key: [u8; 32],
    pub onion_key: [u8; 32],
    /// The client's HTTP CONNECT proxy address, when it has one (`--http-connect-port`).
    pub http_connect: Option<SocketAddr>,
    /// Where the node serves Prometheus metrics (`node.metrics_listen`); none: no metrics.
    pub metrics: Option<SocketAddr>,
}

impl NodeSpec {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }
}

/// How many nodes of each kind.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub authorities: usize,
    /// All relays, exits included.
    pub relays: usize,
    pub exits: usize,
    /// How many of the exits (the last ones) keep the default policy.
    pub strict_exits: usize,
    /// Clients (the first is `client`, the others `client2`, `client3`, …).
    pub clients: usize,
}

impl Counts {
    pub fn validate(&self) -> Result<(), String> {
        if self.authorities == 0 {
            return Err("--authorities must be at least 1".into());
        }
        if self.relays < 3 {
            return Err("--relays must be at least 3 (a circuit has three distinct hops)".into());
        }
        if self.exits == 0 || self.exits > self.relays {
            return Err(format!("--exits must be between 1 and --relays ({})", self.relays));
        }
        if self.strict_exits > self.exits {
            return Err(format!("--strict-exits must be at most --exits ({})", self.exits));
        }
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        let total = self.authorities + self.relays + self.clients + 1;
        if total > 254 {
            return Err(format!("{total} nodes is too many: each needs its own 127.k.0.1 (k <= 254)"));
        }
        Ok(())
    }
}

/// The address of node `k` (1-based).
pub fn node_ip(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, k as u8, 0, 1))
}

/// Where [`free_port`] looks first: below Linux's ephemeral range (32768–60999), which the
/// kernel hands out for port 0 and outgoing connections.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_768;

/// A port that was free on `ip` a moment ago (bound, then released), drawn at random from
/// [`PORT_RANGE`]. Not port 0: the kernel hands a port just released to the next bind of port
/// 0, so test networks started at once (each planning before its nodes bind) would pick the
/// same ports and one node would fail with "address in use". Falls back to port 0 when no
/// drawn port is free.
pub fn free_port(ip: IpAddr) -> io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let bind = |port: u16| TcpListener::bind((ip, port)).and_then(|l| l.local_addr()).map(|a| a.port());
    for _ in 0..32 {
        // A random draw from the standard library's per-process random hasher keys.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
        let port = PORT_RANGE.start + (h.finish() % u64::from(PORT_RANGE.end - PORT_RANGE.start)) as u16;
        if let Ok(p) = bind(port) {
            return Ok(p);
        }
    }
    bind(0).map_err(|e| io::Error::new(e.kind(), format!("cannot find a free port on {ip}: {e}")))
}

/// Plans every node. `socks_port` 0 means "pick a free one"; so does `http_connect_port`
/// `Some(0)` (`None`: the client has no HTTP CONNECT proxy).
pub fn plan(dir: &Path, counts: Counts, socks_port: u16, http_connect_port: Option<u16>) -> io::Result<Vec<NodeSpec>> {
    let mut roles: Vec<(String, Role)> = Vec::new();
    for i in 1..=counts.authorities {
        roles.push((format!("auth{i}"), Role::Authority));
    }
    for i in 1..=counts.relays - counts.exits {
        roles.push((format!("relay{i}"), Role::Relay));
    }
    for i in 1..=counts.exits {
        let strict = i > counts.exits - counts.strict_exits;
        roles.push((format!("exit{i}"), Role::Exit { strict }));
    }
    roles.push(("client".to_string(), Role::Client));
    for i in 2..=counts.clients {
        roles.push((format!("client{i}"), Role::Client));
    }
    roles.push(("hs".to_string(), Role::OnionService));

    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut nodes = Vec::with_capacity(roles.len());
    for (i, (name, role)) in roles.into_iter().enumerate() {
        let ip = node_ip(i + 1);
        // `socks_port` and `http_connect_port` are the first client's; other clients get free ports.
        let first_client = name == "client";
        let listen = match role {
            Role::Client if !first_client => SocketAddr::new(loopback, free_port(loopback)?),
            Role::Client => {
                let port = if socks_port == 0 { free_port(loopback)? } else { check_port_free(loopback, socks_port)? };
                SocketAddr::new(loopback, port)
            }
            _ => SocketAddr::new(ip, free_port(ip)?),
        };
        let http_connect = match (role, http_connect_port) {
            _ if !first_client => None,
            (Role::Client, Some(0)) => Some(SocketAddr::new(loopback, free_port_except(loopback, &[listen.port()])?)),
            (Role::Client, Some(p)) => Some(SocketAddr::new(loopback, check_port_free(loopback, p)?)),
            _ => None,
        };
        nodes.push(NodeSpec { dir: dir.join(&name), name, role, ip, listen, fingerprint: String::new(), link_key: [0; 32], onion_key: [0; 32], http_connect, metrics: None });
    }
    Ok(nodes)
}

/// A free port on `ip` other than those `taken` (which were free a moment ago too).
fn free_port_except(ip: IpAddr, taken: &[u16]) -> io::Result<u16> {
    for _ in 0..16 {
        let p = free_port(ip)?;
        if !taken.contains(&p) {
            return Ok(p);
        }
    }
    Err(io::Error::other(format!("cannot find a second free port on {ip}")))
}

fn check_port_free(ip: IpAddr, port: u16) -> io::Result<u16> {
    TcpListener::bind((ip, port)).map(|_| port).map_err(|e| {
        io::Error::new(e.kind(), format!("SOCKS port {ip}:{port} is not free ({e}); pass --socks-port 0 to pick a free one"))
    })
}

/// A TOML string literal (quoted and escaped).
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Test-only faults the test network injects (hidden `--dangerous-test-*` options; relays
/// refuse them without `network.dangerous_testnet`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Every relay flips a byte of each relay cell it forwards after the first N on a circuit.
    pub corrupt_after: Option<u64>,
    /// The first K non-exit relays (`relay1`..`relayK`) black-hole every circuit (THREATS A32).
    pub blackhole_relays: usize,
    /// Every relay forwards each INTRODUCE2 twice (THREATS A13).
    pub duplicate_introduce2: bool,
    /// The first K relays (`relay1`..`relayK`) serve altered descriptors as HSDirs (THREATS A5).
    pub mutating_hsdirs: usize,
    /// Every relay forwards N relay cells toward the exit on each circuit, then drops every
    /// later relay cell (a relay that stops forwarding).
    pub stop_forwarding_after: Option<u64>,
    /// Every non-exit relay, as a middle or guard, sends the client this message (`drop` or
    /// `introduce_ack`) once per circuit after forwarding 200 cells toward it.
    pub inject_from_middle: Option<&'static str>,
    /// Not a fault but a condition: every node delays its links' outbound data this many ms.
    pub link_delay_ms: u64,
    /// Not a fault: every authority measures relays' bandwidth (`authority.bandwidth_scan`).
    pub bandwidth_scan: bool,
    /// `relay1` is limited to the first value in bytes/s (`relay.bandwidth_rate`) and claims
    /// the second in its descriptor (a relay that lies about its bandwidth).
    pub slow_relay: Option<(u64, u64)>,
}

/// The client's first circuit-build timeout when a test network has black-holed relays: short,
/// so a build through one is abandoned in seconds rather than after the generous 60 s.
pub const BLACKHOLE_INITIAL_BUILD_TIMEOUT_MS: u64 = 3000;

impl Faults {
    fn blackholes(&self, node: &NodeSpec) -> bool {
        relay_index(node).is_some_and(|i| i <= self.blackhole_relays)
    }

    fn mutates(&self, node: &NodeSpec) -> bool {
        relay_index(node).is_some_and(|i| i <= self.mutating_hsdirs)
    }
}

/// K of a non-exit relay `relayK`.
fn relay_index(node: &NodeSpec) -> Option<usize> {
    (node.role == Role::Relay).then(|| node.name.strip_prefix("relay").and_then(|i| i.parse::<usize>().ok())).flatten()
}

impl Faults {
    /// The hook lines of a relay's `[relay]` section.
    fn relay_lines(&self, node: &NodeSpec, s: &mut String) {
        if let Some(n) = self.corrupt_after {
            let _ = writeln!(s, "dangerous_test_corrupt_after = {n}");
        }
        if let Some(n) = self.stop_forwarding_after {
            let _ = writeln!(s, "dangerous_test_stop_forwarding_after = {n}");
        }
        if let Some(kind) = self.inject_from_middle.filter(|_| node.role == Role::Relay) {
            let _ = writeln!(s, "dangerous_test_inject_from_middle = \"{kind}\"");
        }
        if self.blackholes(node) {
            let _ = writeln!(s, "dangerous_test_blackhole = true");
        }
        if self.duplicate_introduce2 {
            let _ = writeln!(s, "dangerous_test_duplicate_introduce2 = true");
        }
        if self.mutates(node) {
            let _ = writeln!(s, "dangerous_test_mutate_hs_descriptors = true");
        }
        if let Some((rate, claim)) = self.slow_relay.filter(|_| relay_index(node) == Some(1)) {
            let _ = writeln!(s, "bandwidth_rate = {rate}");
            let _ = writeln!(s, "dangerous_test_claim_bandwidth = {claim}");
        }
    }
}

/// The name of the test network's onion service (its keys are in `DIR/hs/onion-services/web`).
pub const ONION_SERVICE_NAME: &str = "web";
/// The onion service's virtual port.
pub const ONION_SERVICE_PORT: u16 = 80;

/// Who writes a set of configs, and for which network.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The config's first comment line(s).
    pub header: &'a str,
    /// `network.dangerous_testnet = true` (loopback addresses, permissive exits, fast voting);
    /// false also makes exits keep the default policy whatever their `strict`.
    pub testnet: bool,
    /// The authorities' `voting_interval_secs`; None leaves the default.
    pub voting_interval_secs: Option<u64>,
}

/// What `allium testnet` writes at the top of each config.
const TESTNET_HEADER: &str = "# Written by `allium testnet`; rewritten every time the test network starts.";

/// Renders a node's config.toml. `onion_target` is where the hs node's service sends streams.
pub fn render_config(node: &NodeSpec, all: &[NodeSpec], voting_interval_secs: u64, faults: &Faults, onion_target: SocketAddr) -> String {
    let rules = Rules { header: TESTNET_HEADER, testnet: true, voting_interval_secs: Some(voting_interval_secs) };
    let mut s = render(node, all, &rules, faults);
    if node.role == Role::OnionService {
        let _ = writeln!(s, "# The test network's onion service; its address is printed at start.");
        let _ = writeln!(s, "[[onion_service]]");
        let _ = writeln!(s, "name = {}", q(ONION_SERVICE_NAME));
        let _ = writeln!(s, "ports = [{}]", q(&format!("{ONION_SERVICE_PORT} -> {onion_target}")));
    }
    s
}

/// Renders a node's config.toml under `rules`, all but the test network's onion service (a
/// client's `[client]` section and its fallback directories come last, so `[[onion_service]]`
/// tables can be appended).
pub fn render(node: &NodeSpec, all: &[NodeSpec], rules: &Rules<'_>, faults: &Faults) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", rules.header);
    let _ = writeln!(s, "# See configs/ in the source tree for every key explained.\n");
    let _ = writeln!(s, "[node]");
    let _ = writeln!(s, "nickname = {}", q(&node.name));
    let _ = writeln!(s, "data_dir = {}", q(&node.dir.to_string_lossy()));
    let _ = writeln!(s, "address = {}", q(&node.ip.to_string()));
    if let Some(m) = node.metrics {
        let _ = writeln!(s, "metrics_listen = {}", q(&m.to_string()));
    }
    let _ = writeln!(s, "\n[network]");
    if rules.testnet {
        let _ = writeln!(s, "# Loopback addresses, permissive exits and fast voting: never on a real network.");
        let _ = writeln!(s, "dangerous_testnet = true");
    }
    if faults.link_delay_ms > 0 {
        let _ = writeln!(s, "# Each link holds its outbound data this long: real round-trip times on loopback.");
        let _ = writeln!(s, "dangerous_link_delay_ms = {}", faults.link_delay_ms);
    }
    let _ = writeln!(s);
    for a in all.iter().filter(|n| n.role == Role::Authority) {
        let _ = writeln!(s, "[[network.authorities]]");
        let _ = writeln!(s, "name = {}", q(&a.name));
        let _ = writeln!(s, "identity = {}", q(&a.fingerprint));
        let _ = writeln!(s, "address = {}\n", q(&a.listen.to_string()));
    }
    match node.role {
        Role::Authority => {
            let _ = writeln!(s, "[authority]");
            let _ = writeln!(s, "dir_port = {}", node.listen.port());
            if let Some(v) = rules.voting_interval_secs {
                let _ = writeln!(s, "voting_interval_secs = {v}");
            }
            if faults.bandwidth_scan {
                let _ = writeln!(s, "bandwidth_scan = true");
            }
        }
        Role::Relay | Role::Exit { .. } => {
            let _ = writeln!(s, "[relay]");
            let _ = writeln!(s, "or_port = {}", node.listen.port());
            faults.relay_lines(node, &mut s);
            if let Role::Exit { strict } = node.role {
                let _ = writeln!(s, "\n[exit]");
                let _ = writeln!(s, "enabled = true");
                if strict || !rules.testnet {
                    let _ = writeln!(s, "# No policy: the default one, which rejects private and loopback destinations.");
                } else {
                    let _ = writeln!(s, "# Accept everything, loopback included, so tests can reach local servers.");
                    let _ = writeln!(s, "policy = [\"accept *:*\"]");
                }
                let _ = writeln!(s, "resolver = \"system\"");
            }
        }
        Role::Client | Role::OnionService => {
            let _ = writeln!(s, "[client]");
            let _ = writeln!(s, "socks_listen = {}", q(&node.listen.to_string()));
            if let Some(h) = node.http_connect {
                let _ = writeln!(s, "http_connect_listen = {}", q(&h.to_string()));
            }
            if faults.blackhole_relays > 0 {
                let _ = writeln!(s, "dangerous_initial_build_timeout_ms = {BLACKHOLE_INITIAL_BUILD_TIMEOUT_MS}");
            }
            let _ = writeln!(s, "\n# The first consensus comes from these relays, later ones through the guards:");
            let _ = writeln!(s, "# the client never contacts an authority.");
            for r in all.iter().filter(|n| n.role.is_relay() && !faults.blackholes(n)) {
                s.push_str(&render_fallback_dir(&r.name, &r.fingerprint, r.listen, &r.link_key, &r.onion_key));
                let _ = writeln!(s);
            }
        }
    }
    s
}

/// One `[[client.fallback_dirs]]` entry: a relay's nickname, identity fingerprint, OR address,
/// link and onion public keys.
pub fn render_fallback_dir(nickname: &str, fingerprint: &str, or_address: SocketAddr, link_key: &[u8; 32], onion_key: &[u8; 32]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "[[client.fallback_dirs]]");
    let _ = writeln!(s, "nickname = {}", q(nickname));
    let _ = writeln!(s, "identity = {}", q(fingerprint));
    let _ = writeln!(s, "address = {}", q(&or_address.to_string()));
    let _ = writeln!(s, "link_key = {}", q(&hex::encode(link_key)));
    let _ = writeln!(s, "onion_key = {}", q(&hex::encode(onion_key)));
    s
}

/// Creates (or loads) a node's keys in `key_dir` and fills in its fingerprint and public keys.
/// An authority's signing key is certified by the identity in `identity_dir` as
/// `allium keygen --authority` does (`identity_dir == key_dir`: the identity stays with the
/// authority; otherwise `key_dir` gets no identity key).
pub fn make_keys(node: &mut NodeSpec, key_dir: &Path, identity_dir: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", node.name);
    if node.role == Role::Authority {
        // Its link and onion keys appear in no config: only the identity is listed.
        let lifetime = allium_directory::authkeys::DEFAULT_SIGNING_KEY_LIFETIME_SECS;
        let (id, _) = allium_directory::authkeys::certify_into(identity_dir, key_dir, lifetime, allium_net::keys::unix_now()).map_err(|e| err(&e))?;
        node.fingerprint = id.fingerprint();
        return Ok(());
    }
    let keys = allium_net::keys::load_or_create(key_dir).map_err(|e| err(&e))?;
    node.fingerprint = keys.relay_id().fingerprint();
    node.link_key = keys.link_public();
    node.onion_key = keys.onion_public();
    Ok(())
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over `path`, so a reader sees either nothing or the whole file.
pub fn write_atomic(path: &Path, contents: &str) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// `DIR/nodes`: one line per node, `name role pid address:port`.
pub fn render_nodes(nodes: &[(&NodeSpec, u32)]) -> String {
    nodes.iter().map(|(n, pid)| format!("{} {} {} {}\n", n.name, n.role.label(), pid, n.listen)).collect()
}

/// `DIR/testnet.env`: `KEY=value` lines a shell can source; `HTTP_CONNECT_PORT` only when the
/// client has an HTTP CONNECT proxy (on `SOCKS_HOST`); `ONION_HOST` (the onion service's
/// `….allium` name) only once the client has reached the service.
pub fn render_env(socks: SocketAddr, http_connect: Option<SocketAddr>, dir: &Path, onion_host: Option<&str>) -> String {
    let mut env = format!("SOCKS_HOST={}\nSOCKS_PORT={}\n", socks.ip(), socks.port());
    if let Some(h) = http_connect {
        let _ = writeln!(env, "HTTP_CONNECT_PORT={}", h.port());
    }
    let _ = writeln!(env, "TESTNET_DIR={}", shell_word(&dir.to_string_lossy()));
    if let Some(o) = onion_host {
        let _ = writeln!(env, "ONION_HOST={}", shell_word(o));
    }
    env
}

/// The value as one shell word: as is when it is plain, single-quoted otherwise.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(a: usize, r: usize, e: usize, s: usize) -> Counts {
        Counts { authorities: a, relays: r, exits: e, strict_exits: s, clients: 1 }
    }

    /// Free ports are drawn at random below the kernel's ephemeral range, not taken from port 0
    /// (which hands one just released to the next caller: parallel test networks collided).
    #[test]
    fn free_ports_are_drawn_at_random_below_the_ephemeral_range() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let ports: std::collections::BTreeSet<u16> = (0..20).map(|_| free_port(ip).unwrap()).collect();
        assert!(ports.len() >= 15, "{ports:?}");
        assert!(ports.iter().all(|p| PORT_RANGE.contains(p)), "{ports:?}");
    }

    /// Extra clients are `client2`, `client3`, … on their own addresses and free SOCKS ports;
    /// only the first has the HTTP CONNECT proxy.
    #[test]
    fn extra_clients_get_their_own_names_and_ports() {
        let dir = Path::new("/tmp/allium-plan-test");
        let nodes = plan(dir, Counts { clients: 3, ..counts(3, 5, 2, 0) }, 0, Some(0)).unwrap();
        let clients: Vec<&NodeSpec> = nodes.iter().filter(|n| n.role == Role::Client).collect();
        assert_eq!(clients.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["client", "client2", "client3"]);
        let ports: std::collections::BTreeSet<u16> = clients.iter().map(|n| n.listen.port()).collect();
        assert_eq!(ports.len(), 3, "each client its own SOCKS port");
        let ips: std::collections::BTreeSet<IpAddr> = nodes.iter().map(|n| n.ip).collect();
        assert_eq!(ips.len(), nodes.len(), "each node its own address");
        assert!(clients[0].http_connect.is_some() && clients[1..].iter().all(|n| n.http_connect.is_none()));
        assert_eq!(nodes.last().unwrap().role, Role::OnionService);
        assert!(Counts { clients: 0, ..counts(3, 5, 2, 0) }.validate().is_err());
    }

    #[test]
    fn plan_names_roles_and_addresses() {
        let dir = Path::new("/tmp/allium-plan-test");
        let nodes = plan(dir, counts(3, 5, 2, 1), 0, None).unwrap();
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["auth1", "auth2", "auth3", "relay1", "relay2", "relay3", "exit1", "exit2", "client", "hs"]);
        assert_eq!(nodes[6].role, Role::Exit { strict: false });
        assert_eq!(nodes[7].role, Role::Exit { strict: true });
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(n.ip, node_ip(i + 1));
            if n.role != Role::Client {
                assert_eq!(n.listen.ip(), n.ip);
            }
        }
        assert_eq!(nodes[8].listen.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(nodes.iter().all(|n| n.http_connect.is_none()));
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(!render_config(&nodes[8], &nodes, 10, &Faults::default(), target).contains("http_connect_listen"));
        assert!(!render_config(&nodes[8], &nodes, 10, &Faults::default(), target).contains("onion_service"));
        let env = render_env(nodes[8].listen, None, dir, None);
        assert!(!env.contains("HTTP_CONNECT_PORT") && !env.contains("ONION_HOST"));
        // The hs node: a client on its own address, hosting the service that points at the target.
        assert_eq!((nodes[9].role.label(), nodes[9].role.subcommand()), ("hs", "client"));
        assert_eq!(nodes[9].listen.ip(), nodes[9].ip);
        let hs = render_config(&nodes[9], &nodes, 10, &Faults::default(), target);
        let parsed: toml::Value = toml::from_str(&hs).unwrap();
        let svc = &parsed["onion_service"][0];
        assert_eq!(svc["name"].as_str(), Some(ONION_SERVICE_NAME));
        assert_eq!(svc["ports"][0].as_str(), Some("80 -> 127.0.0.1:8080"));
        let env = render_env(nodes[8].listen, None, dir, Some("abc.allium"));
        assert!(env.ends_with("\nONION_HOST=abc.allium\n"), "{env}");
    }

    #[test]
    fn http_connect_port_when_asked() {
        let dir = Path::new("/tmp/allium-plan-test");
        let nodes = plan(dir, counts(1, 3, 1, 0), 0, Some(0)).unwrap();
        let client = nodes.iter().find(|n| n.role == Role::Client).unwrap();
        let h = client.http_connect.expect("an HTTP CONNECT address");
        assert_ne!(h.port(), client.listen.port());
        assert!(nodes.iter().filter(|n| n.role != Role::Client).all(|n| n.http_connect.is_none()));
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(render_config(client, &nodes, 10, &Faults::default(), target).contains(&format!("http_connect_listen = \"{h}\"")));
        let env = render_env(client.listen, Some(h), dir, None);
        assert!(env.contains(&format!("\nHTTP_CONNECT_PORT={}\n", h.port())), "{env}");
    }

    #[test]
    fn counts_are_checked() {
        assert!(counts(3, 5, 2, 0).validate().is_ok());
        assert!(counts(0, 5, 2, 0).validate().is_err());
        assert!(counts(3, 2, 1, 0).validate().is_err());
        assert!(counts(3, 5, 6, 0).validate().is_err());
        assert!(counts(3, 5, 0, 0).validate().is_err());
        assert!(counts(3, 5, 2, 3).validate().is_err());
        assert!(counts(3, 249, 2, 0).validate().is_ok());
        assert!(counts(3, 250, 2, 0).validate().is_err());
    }

    #[test]
    fn env_values_are_shell_words() {
        assert_eq!(shell_word("/tmp/a-b_c.d"), "/tmp/a-b_c.d");
        assert_eq!(shell_word("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
