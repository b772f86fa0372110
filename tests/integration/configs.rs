//! The example configs parse, and a broken config fails with one line naming the key.

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
