//! The systemd units in `configs/systemd/` (docs/DEPLOY.md): one per role, each starting that
//! role with a config under /etc/allium, reloading with SIGHUP, and hardened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The roles that have a unit, `allium-<role>.service`.
const ROLES: [&str; 3] = ["authority", "relay", "client"];

/// Settings every unit must have exactly so (section, key, value).
const REQUIRED: &[(&str, &str, &str)] = &[
    ("Service", "User", "allium"),
    ("Service", "NoNewPrivileges", "yes"),
    ("Service", "ProtectSystem", "strict"),
    ("Service", "ProtectHome", "yes"),
    ("Service", "PrivateTmp", "yes"),
    ("Service", "PrivateDevices", "yes"),
    ("Service", "ProtectKernelTunables", "yes"),
    ("Service", "ProtectKernelModules", "yes"),
    ("Service", "ProtectControlGroups", "yes"),
    ("Service", "LockPersonality", "yes"),
    ("Service", "MemoryDenyWriteExecute", "yes"),
    ("Service", "LimitNOFILE", "65536"),
    ("Service", "Restart", "on-failure"),
    ("Service", "RestartSec", "5"),
    ("Service", "KillSignal", "SIGTERM"),
    ("Service", "TimeoutStopSec", "10"),
    ("Install", "WantedBy", "multi-user.target"),
];

/// A unit file: section → key → every value given (a key may repeat), comments and blank
/// lines dropped, continuation lines (`\` at the end) joined.
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(path: &Path) -> Unit {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut unit = Unit::new();
    let mut section: Option<String> = None;
    let mut pending = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            unit.entry(name.to_string()).or_default();
            continue;
        }
        let where_ = format!("{}:{}", path.display(), n + 1);
        let sec = section.clone().unwrap_or_else(|| panic!("{where_}: a setting before any [section]"));
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("{where_}: not KEY=VALUE: {line:?}"));
        unit.entry(sec).or_default().entry(k.trim().to_string()).or_default().push(v.trim().to_string());
    }
    unit
}

/// The one value of `key` in `section` (panics if absent or given twice).
fn one<'u>(unit: &'u Unit, file: &str, section: &str, key: &str) -> &'u str {
    let vals = unit.get(section).and_then(|s| s.get(key)).unwrap_or_else(|| panic!("{file}: [{section}] {key}= is missing"));
    assert_eq!(vals.len(), 1, "{file}: [{section}] {key}= is given {} times: {vals:?}", vals.len());
    &vals[0]
}

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join("systemd")
}

#[test]
fn every_role_has_a_hardened_systemd_unit() {
    let mut found: Vec<String> = std::fs::read_dir(units_dir()).expect("configs/systemd exists").map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    found.sort();
    let mut expected: Vec<String> = ROLES.iter().map(|r| format!("allium-{r}.service")).collect();
    expected.sort();
    assert_eq!(found, expected, "configs/systemd holds one unit per role");

    for role in ROLES {
        let file = format!("allium-{role}.service");
        let unit = parse_unit(&units_dir().join(&file));
        for (section, key, value) in REQUIRED {
            assert_eq!(one(&unit, &file, section, key), *value, "{file}: [{section}] {key}=");
        }

        // ExecStart runs this role with a config file under /etc/allium named after it.
        let exec = one(&unit, &file, "Service", "ExecStart");
        let args: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(args.first(), Some(&"/usr/local/bin/allium"), "{file}: ExecStart={exec}");
        assert_eq!(args.get(1), Some(&role), "{file}: ExecStart must name the role: {exec}");
        let config = args.iter().position(|a| *a == "--config").and_then(|i| args.get(i + 1)).unwrap_or_else(|| panic!("{file}: ExecStart has no --config FILE: {exec}"));
        assert_eq!(*config, format!("/etc/allium/{role}.toml"), "{file}: ExecStart's config");
        assert_eq!(args.len(), 4, "{file}: ExecStart has unexpected arguments: {exec}");

        // Reload = SIGHUP to the node (it reads its config again).
        let reload = one(&unit, &file, "Service", "ExecReload");
        let r: Vec<&str> = reload.split_whitespace().collect();
        assert!(r.first().is_some_and(|c| c.ends_with("/kill")) && r.contains(&"-HUP") && r.last() == Some(&"$MAINPID"), "{file}: ExecReload must send SIGHUP to $MAINPID: {reload}");

        // State only under /var/lib/allium/<role>, private to the user.
        assert_eq!(one(&unit, &file, "Service", "StateDirectory"), format!("allium/{role}"), "{file}");
        assert_eq!(one(&unit, &file, "Service", "StateDirectoryMode"), "0700", "{file}");

        // No capabilities (every example port is above 1024).
        assert_eq!(one(&unit, &file, "Service", "CapabilityBoundingSet"), "", "{file}: CapabilityBoundingSet= must be empty");
        if let Some(amb) = unit["Service"].get("AmbientCapabilities") {
            assert!(amb.iter().all(|v| v.is_empty()), "{file}: AmbientCapabilities={amb:?}");
        }

        // Internet, Unix sockets (the control socket); a relay also netlink (its interface
        // addresses, so an exit refuses its own); nothing else.
        let families: Vec<&str> = one(&unit, &file, "Service", "RestrictAddressFamilies").split_whitespace().collect();
        for f in ["AF_INET", "AF_INET6", "AF_UNIX"] {
            assert!(families.contains(&f), "{file}: RestrictAddressFamilies lacks {f}: {families:?}");
        }
        let allowed_extra: &[&str] = if role == "relay" { &["AF_NETLINK"] } else { &[] };
        for f in &families {
            assert!(["AF_INET", "AF_INET6", "AF_UNIX"].contains(f) || allowed_extra.contains(f), "{file}: RestrictAddressFamilies allows {f}");
        }

        // The system-call allow list.
        let filters = unit["Service"].get("SystemCallFilter").unwrap_or_else(|| panic!("{file}: no SystemCallFilter="));
        assert!(filters.iter().any(|f| f == "@system-service"), "{file}: SystemCallFilter={filters:?}");
    }
}

/// `allium <role> --config FILE` is what the units run: the binary knows those commands.
#[test]
fn the_units_commands_exist() {
    for role in ROLES {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_allium"));
        cmd.args([role, "--help"]);
        let out = crate::support::run_within(cmd, std::time::Duration::from_secs(30)).expect("allium --help exits");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && help.contains("--config"), "allium {role} --help:\n{help}");
    }
}

/// The parser reads what systemd reads (repeated keys, continuations, comments).
#[test]
fn the_unit_parser_reads_repeats_and_continuations() {
    let dir = crate::support::fresh_dir("unit");
    let path = dir.join("x.service");
    std::fs::write(&path, "# c\n[Service]\n; c\nA=1\nA=2\nB=x \\\n  y\nC=\n").unwrap();
    let u = parse_unit(&path);
    assert_eq!(u["Service"]["A"], ["1", "2"]);
    assert_eq!(u["Service"]["B"], ["x  y"]);
    assert_eq!(u["Service"]["C"], [""]);
    let _ = std::fs::remove_dir_all(&dir);
}
