//! Issue 16 point 5: the README's test command, `cargo test --release --workspace`, reuses the
//! quick start's `cargo build --release`. That holds while the test build enables no feature
//! of any package the quick start builds: a dev-dependency that adds one (tokio's `test-util`,
//! the Unicode tables proptest wants from regex-syntax, a crate's test-only feature) recompiles
//! that package and every package above it, the binary included (about 2 minutes more here).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each package of `cargo tree <args>` with the feature sets it is built with.
fn features(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--locked", "--prefix", "none", "--format", "{p} [{f}]"])
        .args(args)
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).expect("UTF-8").lines() {
        let line = line.trim_end_matches(" (*)");
        if let Some((package, f)) = line.split_once(" [") {
            m.entry(package.to_string()).or_default().insert(f.trim_end_matches(']').to_string());
        }
    }
    m
}

#[test]
fn the_test_build_enables_no_feature_the_quick_start_build_lacks() {
    let quick_start = features(&["--package", "allium", "--edges", "normal,build"]);
    let tests = features(&["--workspace", "--edges", "normal,build,dev"]);
    assert!(quick_start.len() > 50 && quick_start.keys().any(|p| p.starts_with("tokio ")), "{quick_start:?}");
    let differ: Vec<String> = quick_start
        .iter()
        .filter_map(|(p, f)| tests.get(p).filter(|t| *t != f).map(|t| format!("{p}: {f:?} in the quick start, {t:?} in the tests")))
        .collect();
    assert!(differ.is_empty(), "the test build would compile these again (and everything that uses them):\n{}", differ.join("\n"));
}
