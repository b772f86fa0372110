//! The example configs parse, a broken config fails with one line naming the key, and a
//! real-network config refuses everything `network.dangerous_testnet` unlocks.

use std::path::{Path, PathBuf};
use std::process::Command;

use allium_client::ClientConfig;
use allium_directory::config::AuthorityConfig;
use allium_relay::RelayConfig;

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

/// Every `configs/*.toml` loads with the loader of the role its file name says.
#[test]
fn every_example_config_loads() {
    let mut checked = Vec::new();
    let mut errors = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(configs_dir()).expect("configs/ exists").map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let result: Result<(), String> = match stem.as_str() {
            "authority" => AuthorityConfig::load(&path).map_err(|e| e.to_string()).map(|c| {
                assert!(!c.network.dangerous_testnet, "{stem}.toml must be a real-network example");
            }),
            "relay" => RelayConfig::load(&path).map_err(|e| e.to_string()).map(|c| {
                assert!(!c.network.dangerous_testnet, "{stem}.toml must be a real-network example");
                assert!(!c.exit.enabled, "relay.toml is the non-exit example");
            }),
            "exit" => RelayConfig::load(&path).map_err(|e| e.to_string()).map(|c| {
                assert!(!c.network.dangerous_testnet, "{stem}.toml must be a real-network example");
                assert!(c.exit.enabled, "exit.toml must enable [exit]");
            }),
            "client" => ClientConfig::load(&path).map_err(|e| e.to_string()).map(|c| {
                assert!(!c.network.dangerous_testnet, "{stem}.toml must be a real-network example");
            }),
            other => Err(format!("no loader for configs/{other}.toml: name example configs after their role")),
        };
        match result {
            Ok(()) => checked.push(stem),
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "example configs fail to load:\n{}", errors.join("\n"));
    for role in ["authority", "relay", "exit", "client"] {
        assert!(checked.iter().any(|c| c == role), "configs/{role}.toml is missing");
    }
}

/// A relay config that is valid except for `relay_extra` (appended to `[relay]`).
fn relay_config(data_dir: &Path, relay_extra: &str, identity: &str) -> String {
    format!(
        "[node]\nnickname = \"bad\"\ndata_dir = {dir:?}\naddress = \"127.0.0.1\"\n\n\
         [network]\ndangerous_testnet = true\n\n\
         [[network.authorities]]\nname = \"auth1\"\nidentity = \"{identity}\"\naddress = \"127.0.0.1:7000\"\n\n\
         [relay]\n{relay_extra}\n",
        dir = data_dir.display().to_string(),
    )
}

/// Runs `allium relay --config <file>` on `text`; returns (exit code, stderr).
fn run_relay(text: &str) -> (Option<i32>, String) {
    let dir = crate::support::fresh_dir("badcfg");
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let (code, stderr) = crate::support::run_to_exit(&["relay".as_ref(), "--config".as_ref(), path.as_os_str()], &format!("allium relay kept running with a bad config:\n{text}"));
    let _ = std::fs::remove_dir_all(&dir);
    (code, stderr)
}

#[test]
fn bad_config_is_one_line_naming_the_key() {
    let good_id = "AB".repeat(32);
    let data_dir = std::env::temp_dir().join("allium-never-created");
    let cases = [
        // (what, [relay] extra lines, identity, text the error must contain)
        ("unknown key", "or_port = 9001\ncolour = \"blue\"".to_string(), good_id.clone(), "colour"),
        ("wrong type", "or_port = \"many\"".to_string(), good_id.clone(), "or_port"),
        ("out of range", "or_port = 70000".to_string(), good_id.clone(), "or_port"),
        ("semantic check", "or_port = 0".to_string(), good_id.clone(), "relay.or_port"),
        ("bad fingerprint", "or_port = 9001".to_string(), "XYZ".to_string(), "identity"),
    ];
    for (what, extra, identity, key) in cases {
        let text = relay_config(&data_dir, &extra, &identity);
        let (code, stderr) = run_relay(&text);
        assert_eq!(code, Some(2), "{what}: exit code should be 2, stderr: {stderr}");
        let stderr = stderr.trim_end();
        assert_eq!(stderr.lines().count(), 1, "{what}: error should be one line, got:\n{stderr}");
        assert!(stderr.contains(key), "{what}: error should name {key:?}, got: {stderr}");
    }
    assert!(!data_dir.exists(), "a bad config must not create the data directory");
}

#[test]
fn missing_config_file_is_one_line() {
    let (code, stderr) = {
        let out = Command::new(env!("CARGO_BIN_EXE_allium"))
            .args(["client", "--config", "/nonexistent/allium/client.toml"])
            .output()
            .expect("run allium");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/allium/client.toml"), "{stderr}");
}

/// The roles whose configs [`role_config`] writes.
#[derive(Debug, Clone, Copy)]
enum Role {
    Relay,
    Authority,
    Client,
}

impl Role {
    fn command(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Authority => "authority",
            Role::Client => "client",
        }
    }

    /// Loads and validates `path` with this role's library loader (what the binary does first).
    fn load(self, path: &Path) -> Result<(), String> {
        match self {
            Role::Relay => RelayConfig::load(path).map(drop),
            Role::Authority => AuthorityConfig::load(path).map(drop),
            Role::Client => ClientConfig::load(path).map(drop),
        }
        .map_err(|e| e.to_string())
    }
}

/// A public address (TEST-NET-1: documentation only, never routed, not local), so that a
/// real-network config is refused only for the key under test. Configs with it are only ever
/// loaded, or given to the binary after the loader refused them: no node binds it.
const PUBLIC: &str = "192.0.2.10";

/// A config for `role` at `address`, `[network]` holding `dangerous_testnet = testnet` and
/// `network_extra`, the role's section (`[relay]`, `[authority]`, `[client]`; last) holding
/// `role_extra`, which may open further tables after its own keys (`[exit]`).
fn role_config(role: Role, data_dir: &Path, address: &str, testnet: bool, network_extra: &str, role_extra: &str) -> String {
    let section = match role {
        Role::Relay => "[relay]\nor_port = 9001",
        Role::Authority => "[authority]\ndir_port = 7000",
        Role::Client => "[client]",
    };
    format!(
        "[node]\nnickname = \"realnet\"\ndata_dir = {dir:?}\naddress = \"{address}\"\n\n\
         [network]\ndangerous_testnet = {testnet}\n{network_extra}\n\n\
         [[network.authorities]]\nname = \"auth1\"\nidentity = \"{id}\"\naddress = \"127.0.0.1:7000\"\n\n\
         {section}\n{role_extra}\n",
        dir = data_dir.display().to_string(),
        id = "AB".repeat(32),
    )
}

/// docs/PROTOCOL.md, "Test networks": every behaviour `network.dangerous_testnet` unlocks that
/// a config asks for (an address, an interval, a lifetime, an exit policy, a test-only option)
/// is refused without it, by the binary (exit status 2, one line naming the key), and the same
/// config with `dangerous_testnet = true` is accepted, so no refusal is for another reason.
/// (The behaviours no config asks for are shown by unit tests: directory flags, params, cache
/// and authority; the relay's exit rules.)
#[test]
fn a_real_network_config_refuses_every_testnet_behaviour() {
    let dir = crate::support::fresh_dir("realnet");
    let data_dir = dir.join("never-created");
    let exit = |rules: &str| format!("[exit]\nenabled = true\npolicy = [{rules}]");
    let cases: Vec<(&str, Role, &str, &str, String, &str)> = vec![
        // (what, role, node.address, [network] extra, role-section extra, key the error names)
        ("relay on loopback", Role::Relay, "127.0.0.1", "", String::new(), "node.address"),
        ("relay on a private address", Role::Relay, "10.1.2.3", "", String::new(), "node.address"),
        ("authority on loopback", Role::Authority, "127.0.0.1", "", String::new(), "node.address"),
        ("relay link delay", Role::Relay, PUBLIC, "dangerous_link_delay_ms = 50", String::new(), "network.dangerous_link_delay_ms"),
        ("authority link delay", Role::Authority, PUBLIC, "dangerous_link_delay_ms = 50", String::new(), "network.dangerous_link_delay_ms"),
        ("client link delay", Role::Client, "127.0.0.1", "dangerous_link_delay_ms = 50", String::new(), "network.dangerous_link_delay_ms"),
        ("voting interval 299 s", Role::Authority, PUBLIC, "", "voting_interval_secs = 299".into(), "authority.voting_interval_secs"),
        ("voting interval 10 s", Role::Authority, PUBLIC, "", "voting_interval_secs = 10".into(), "authority.voting_interval_secs"),
        ("clock offset", Role::Authority, PUBLIC, "", "dangerous_clock_offset_secs = 600".into(), "authority.dangerous_clock_offset_secs"),
        ("onion key lifetime under a day", Role::Relay, PUBLIC, "", "onion_key_lifetime_secs = 86399".into(), "relay.onion_key_lifetime_secs"),
        ("onion key lifetime 1 s", Role::Relay, PUBLIC, "", "onion_key_lifetime_secs = 1".into(), "relay.onion_key_lifetime_secs"),
        ("exit accepting everything", Role::Relay, PUBLIC, "", exit("\"accept *:*\""), "exit.policy"),
        ("exit accepting loopback only", Role::Relay, PUBLIC, "", exit("\"accept 127.0.0.1:80\", \"reject *:*\""), "exit.policy"),
        ("exit accepting IPv6 loopback", Role::Relay, PUBLIC, "", exit("\"accept [::1]:*\", \"reject *:*\""), "exit.policy"),
        ("exit rejecting private on some ports only", Role::Relay, PUBLIC, "", exit("\"reject private:1-1000\", \"accept *:*\""), "exit.policy"),
        ("client initial build timeout", Role::Client, "127.0.0.1", "", "dangerous_initial_build_timeout_ms = 3000".into(), "client.dangerous_initial_build_timeout_ms"),
        ("corrupt hook", Role::Relay, PUBLIC, "", "dangerous_test_corrupt_after = 5".into(), "relay.dangerous_test_corrupt_after"),
        ("black-hole hook", Role::Relay, PUBLIC, "", "dangerous_test_blackhole = true".into(), "relay.dangerous_test_blackhole"),
        ("duplicate INTRODUCE2 hook", Role::Relay, PUBLIC, "", "dangerous_test_duplicate_introduce2 = true".into(), "relay.dangerous_test_duplicate_introduce2"),
        ("mutate HS descriptors hook", Role::Relay, PUBLIC, "", "dangerous_test_mutate_hs_descriptors = true".into(), "relay.dangerous_test_mutate_hs_descriptors"),
        ("stop forwarding hook", Role::Relay, PUBLIC, "", "dangerous_test_stop_forwarding_after = 5".into(), "relay.dangerous_test_stop_forwarding_after"),
        ("inject from a middle hop hook", Role::Relay, PUBLIC, "", "dangerous_test_inject_from_middle = \"drop\"".into(), "relay.dangerous_test_inject_from_middle"),
    ];
    let path = dir.join("config.toml");
    // The real-network base of every role is accepted: each refusal below is its one key's.
    for role in [Role::Relay, Role::Authority, Role::Client] {
        let address = if matches!(role, Role::Client) { "127.0.0.1" } else { PUBLIC };
        std::fs::write(&path, role_config(role, &data_dir, address, false, "", "")).unwrap();
        role.load(&path).unwrap_or_else(|e| panic!("the real-network {role:?} base config is refused: {e}"));
        let exit_ok = exit("\"reject private:*\", \"accept *:*\"");
        if matches!(role, Role::Relay) {
            std::fs::write(&path, role_config(role, &data_dir, PUBLIC, false, "", &exit_ok)).unwrap();
            role.load(&path).unwrap_or_else(|e| panic!("a real-network exit rejecting private first is refused: {e}"));
        }
    }
    for (what, role, address, network_extra, role_extra, key) in &cases {
        std::fs::write(&path, role_config(*role, &data_dir, address, true, network_extra, role_extra)).unwrap();
        if let Err(e) = role.load(&path) {
            panic!("{what}: refused even with dangerous_testnet = true: {e}");
        }
        let text = role_config(*role, &data_dir, address, false, network_extra, role_extra);
        std::fs::write(&path, &text).unwrap();
        // The loader refuses it first, so the binary below never runs a node.
        match role.load(&path) {
            Ok(()) => panic!("{what}: a real-network config is accepted:\n{text}"),
            Err(e) => assert!(e.contains(key), "{what}: the loader's error should name {key:?}, got: {e}"),
        }
        let (code, stderr) = crate::support::run_to_exit(
            &[role.command().as_ref(), "--config".as_ref(), path.as_os_str()],
            &format!("{what}: allium {} kept running with a real-network config:\n{text}", role.command()),
        );
        let stderr = stderr.trim_end();
        assert_eq!(code, Some(2), "{what}: exit code should be 2, stderr: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: error should be one line, got:\n{stderr}");
        assert!(stderr.contains(key), "{what}: error should name {key:?}, got: {stderr}");
    }
    assert!(!data_dir.exists(), "a refused config must not create the data directory");
    let _ = std::fs::remove_dir_all(&dir);
}
