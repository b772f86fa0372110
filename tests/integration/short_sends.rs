//! Issue 17's root cause ("Downloads stall at ~400 KB"): in a network simulator (Shadow) a
//! 1 MiB download stopped part-way and the circuit never moved again. Shadow's TCP takes at
//! most 64 KiB per `send` however much room it has, and reports a socket writable only when
//! that changes. tokio takes a short write as proof that the socket buffer is full and waits
//! for the next writable event — which such a stack never sends while the socket stays
//! writable. A busy link writer (up to 256 KiB per write) or stream writer then waits for
//! ever, with its cells stranded behind it. Allium's sockets now forget readiness only on
//! `EWOULDBLOCK` (`allium_net::level_io`).
//!
//! Here every node runs with an LD_PRELOAD library that makes each `send` take at most
//! 16 KiB (Shadow's limit is 64 KiB; the smaller one makes short sends certain on every busy
//! link, whatever the timing, where with 64 KiB a run with congestion control sometimes had
//! none); on Linux the writer then waits for an event that comes only if the peer happens to
//! send something. With 64 KiB and before the fix the first 1 MiB download stopped at ~475 KB
//! and later ones at ~60 KB (every run); with 16 KiB and tokio's own writes instead of
//! `LevelIo`'s, 10 of 10 downloads failed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::fresh_dir;
use crate::support::http::{download_rounds, pseudo_random, FileServer};
use crate::support::testnet::Testnet;

/// Downloads one after another, then one round of 8 at once (each its own circuit).
const SERIAL: usize = 2;
const PARALLEL_ROUNDS: usize = 1;

#[test]
fn downloads_complete_when_each_send_is_cut_short() {
    let root = fresh_dir("short-sends");
    let shim = build_shim(&root);
    let mark = root.join("a-send-was-shortened");
    let file = pseudo_random(1 << 20, 73);
    let server = FileServer::start(vec![("/1m", file.clone())]);
    let net = Testnet::start_with_env(
        &["--link-delay-ms", "10"],
        &[("LD_PRELOAD", shim.as_os_str()), ("ALLIUM_TEST_SHORT_SEND_MARK", mark.as_os_str())],
    );
    let failures = download_rounds(net.socks, server.addr().port(), "/1m", &file, SERIAL, PARALLEL_ROUNDS);
    assert!(mark.exists(), "no node ever had a send shortened: the library was not loaded, and this test proved nothing");
    assert!(failures.is_empty(), "{} of {} downloads failed: {failures:?}; client log:\n{}", failures.len(), SERIAL + 8 * PARALLEL_ROUNDS, net.log_tail(30));
    drop(net);
    let _ = std::fs::remove_dir_all(&root);
}

/// Builds `support/short_send_shim.rs` into `dir` with the toolchain's rustc.
fn build_shim(dir: &Path) -> PathBuf {
    let src = dir.join("short_send_shim.rs");
    std::fs::write(&src, include_str!("support/short_send_shim.rs")).expect("write the shim source");
    let out = dir.join("libshortsend.so");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "cdylib", "-O", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run rustc");
    assert!(status.success(), "rustc failed to build the LD_PRELOAD shim");
    out
}
