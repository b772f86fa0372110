//! `allium keygen`, and the authority's key files (THREATS A8): `keygen --authority` certifies a
//! signing key for an authority whose identity stays elsewhere, and an authority holding only
//! an expired certificate refuses to start with a one-line error saying how to fix it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use allium_directory::authkeys::{certify_into, LINK_CERT_FILE, SIGNING_CERT_FILE, SIGNING_KEY_FILE};
use allium_net::keys::{unix_now, IDENTITY_FILE, LINK_FILE};
use allium_proto::doc::AuthorityCert;

fn allium(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allium")).args(args).stdin(Stdio::null()).output().expect("run allium")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn stdout_fingerprint(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let fp = text.lines().find_map(|l| l.strip_prefix("fingerprint: ")).unwrap_or_else(|| panic!("no fingerprint in:\n{text}"));
    assert!(fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit()), "{fp}");
    fp.to_string()
}

#[test]
fn a8_keygen_authority_writes_the_runtime_files_elsewhere() {
    let (id_dir, run_dir) = (crate::support::fresh_dir("keygen-id"), crate::support::fresh_dir("keygen-run"));
    let out = allium(&["keygen", "--authority", "--data-dir", path(&id_dir), "--out", path(&run_dir), "--signing-key-lifetime-days", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fp = stdout_fingerprint(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("signing key certified until ") && text.contains(" UTC (2 days)"), "{text}");

    assert!(id_dir.join(IDENTITY_FILE).exists());
    assert!(!run_dir.join(IDENTITY_FILE).exists(), "the identity key stays in --data-dir");
    for f in [SIGNING_KEY_FILE, SIGNING_CERT_FILE, LINK_FILE, LINK_CERT_FILE] {
        let mode = std::fs::metadata(run_dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let cert = AuthorityCert::parse(&std::fs::read_to_string(run_dir.join(SIGNING_CERT_FILE)).unwrap()).unwrap();
    let now = unix_now();
    assert_eq!(cert.identity.fingerprint(), fp);
    assert!(cert.valid_at(now).is_ok());
    assert!(cert.expires.abs_diff(now + 2 * 86_400) < 120, "expires {} now {now}", cert.expires);
    // The plain form loads the same identity.
    assert_eq!(stdout_fingerprint(&allium(&["keygen", "--data-dir", path(&id_dir)])), fp);
    // Options that only make sense with --authority are refused without it.
    assert_eq!(allium(&["keygen", "--data-dir", path(&id_dir), "--out", path(&run_dir)]).status.code(), Some(2));
    for d in [id_dir, run_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a8_authority_with_an_expired_signing_key_certificate_refuses_to_start() {
    let (id_dir, run_dir) = (crate::support::fresh_dir("expired-id"), crate::support::fresh_dir("expired-run"));
    // Certified for one day, three days ago.
    let (id, _) = certify_into(&id_dir, &run_dir, 86_400, unix_now() - 3 * 86_400).unwrap();
    let config = run_dir.join("authority.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nnickname = \"auth1\"\ndata_dir = {dir:?}\naddress = \"127.0.0.1\"\n\n\
             [network]\ndangerous_testnet = true\n\n\
             [[network.authorities]]\nname = \"auth1\"\nidentity = \"{fp}\"\naddress = \"127.0.0.1:9\"\n\n\
             [authority]\ndir_port = 9\n",
            dir = path(&run_dir),
            fp = id.fingerprint()
        ),
    )
    .unwrap();
    let (code, stderr) = crate::support::run_to_exit(&["authority".as_ref(), "--config".as_ref(), config.as_os_str()], "the authority started with an expired certificate");
    assert_eq!(code, Some(1), "{stderr}");
    let stderr = stderr.trim_end();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("expired") && stderr.contains("allium keygen --authority"), "{stderr}");
    for d in [id_dir, run_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}
