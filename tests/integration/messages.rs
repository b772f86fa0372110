//! What operators read (issue "Operators can see and steer a running node", point 5): loose key
//! permissions refused and an open data directory made private, config errors about an
//! authority's own identity exiting 2, listen errors naming the address, and a healthy network
//! logging no warning.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use allium_net::keys::IDENTITY_FILE;

use crate::support::testnet::Testnet;

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `allium keygen --data-dir dir`; the fingerprint it prints.
fn keygen(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_allium")).args(["keygen", "--data-dir", path(dir)]).stdin(Stdio::null()).output().expect("run allium keygen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|l| l.strip_prefix("fingerprint: ")).unwrap_or_else(|| panic!("no fingerprint in {text}")).to_string()
}

/// A test-network config for `role` (`relay`, `authority`, `client`): data in `data_dir`, one
/// authority `identity` at 127.0.0.1:9 (nothing listens there), and `section` (the role's
/// table with its keys).
fn config(dir: &Path, data_dir: &Path, identity: &str, section: &str) -> std::path::PathBuf {
    let text = format!(
        "[node]\nnickname = \"msgs\"\ndata_dir = {data:?}\naddress = \"127.0.0.1\"\n\n\
         [network]\ndangerous_testnet = true\n\n\
         [[network.authorities]]\nname = \"auth1\"\nidentity = \"{identity}\"\naddress = \"127.0.0.1:9\"\n\n\
         {section}\n",
        data = path(data_dir),
    );
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `allium <role> --config <config>`, which must exit by itself; (exit code, stderr, how
/// long it took).
fn run(role: &str, config: &Path) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let (code, stderr) = crate::support::run_to_exit(&[role.as_ref(), "--config".as_ref(), config.as_os_str()], &format!("allium {role} kept running"));
    (code, stderr, started.elapsed())
}

/// Tor's rule: a node whose identity key others can read refuses to start (exit 1 within 5 s),
/// saying which file, its mode and how to fix it; its data directory, world-writable, is set
/// to 0700 with a warning.
#[test]
fn a_key_readable_by_others_is_refused_and_an_open_data_dir_made_private() {
    let dir = crate::support::fresh_dir("perms");
    let data = dir.join("data");
    keygen(&data);
    assert_eq!(mode(&data), 0o700, "a new data directory is created private");
    for f in ["identity_ed25519.key", "link_x25519.key", "onion_x25519.key"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f} is created private");
    }
    let key = data.join(IDENTITY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = config(&dir, &data, &"AB".repeat(32), "[relay]\nor_port = 9");
    let (code, stderr, took) = run("relay", &cfg);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let refusal = stderr.lines().find(|l| l.contains(IDENTITY_FILE)).unwrap_or_else(|| panic!("no line names the key: {stderr}"));
    assert!(refusal.contains("permissions") && refusal.contains("0666") && refusal.contains(path(&key)) && refusal.contains("chmod 600"), "{refusal}");
    assert_eq!(mode(&key), 0o666, "a refused key is not touched");
    // The data directory was fixed, and the operator told.
    assert_eq!(mode(&data), 0o700);
    assert!(stderr.contains(path(&data)) && stderr.contains("0777") && stderr.contains("0700"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An authority whose key is not among `network.authorities` has a config error: exit 2, one
/// line naming the key, like every other config error (it exited 1 from inside the runtime).
#[test]
fn an_authority_missing_from_its_own_config_is_a_config_error() {
    let dir = crate::support::fresh_dir("own-id");
    let data = dir.join("data");
    let cfg = config(&dir, &data, &"AB".repeat(32), "[authority]\ndir_port = 9");
    let (code, stderr, _) = run("authority", &cfg);
    let stderr = stderr.trim_end();
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("network.authorities") && stderr.contains("own identity"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every listener that cannot bind says which address: SOCKS, HTTP CONNECT, OR port, dir port.
#[test]
fn listen_errors_name_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let port = addr.port();
    let dir = crate::support::fresh_dir("listen");
    let data = dir.join("data");
    let fingerprint = keygen(&data);
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cases = [
        ("client", fingerprint.clone(), format!("[client]\nsocks_listen = \"{addr}\""), "client.socks_listen"),
        ("client", fingerprint.clone(), format!("[client]\nsocks_listen = \"{free}\"\nhttp_connect_listen = \"{addr}\""), "client.http_connect_listen"),
        ("relay", fingerprint.clone(), format!("[relay]\nor_port = {port}"), "OR port"),
        ("authority", fingerprint.clone(), format!("[authority]\ndir_port = {port}"), "directory port"),
    ];
    for (role, id, section, what) in cases {
        let cfg = config(&dir, &data, &id, &section);
        let (code, stderr, _) = run(role, &cfg);
        assert_eq!(code, Some(1), "{role} {what}: {stderr}");
        let line = stderr.lines().find(|l| l.contains("cannot listen")).unwrap_or_else(|| panic!("{role} {what}: {stderr}"));
        assert!(line.contains(what) && line.contains(&addr.to_string()), "{role} {what}: the error should name {addr}: {line}");
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A healthy network logs no warning while it starts: no "no consensus yet" while relays and
/// clients bootstrap, no failed pushes to a peer authority not up yet, no "no usable guard" in
/// the first consensus. Checked over several voting periods after the network is ready.
#[test]
fn a_healthy_network_logs_no_warning_while_it_starts() {
    let net = Testnet::start(&[]);
    // Three more voting periods (10 s each) after ready: pushes, fetches and republishing of
    // a running network, the first periods' signature pushes among them. Waited for on an
    // authority: a consensus valid from 30 s after now has been published.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let auth = net.with_role("authority").next().expect("an authority");
    let later = format!("published_consensus.valid_after>={}", now + 30);
    crate::support::wait_status(&net.dir.join(&auth.name), &later, Duration::from_secs(90), "three more voting periods");
    let mut warnings = Vec::new();
    for n in &net.nodes {
        let log = net.node_log(&n.name);
        assert!(!log.is_empty(), "{} wrote no log", n.name);
        warnings.extend(log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("WARN:")).map(|l| format!("{}: {l}", n.name)));
    }
    assert!(warnings.is_empty(), "a healthy network logged warnings:\n{}", warnings.join("\n"));
}
