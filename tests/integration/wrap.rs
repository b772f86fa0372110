//! `allium run -- COMMAND`: the program's TCP connections and names go through the client's
//! SOCKS5 proxy (proxychains-ng), its UDP is refused with a message (torsocks). Needs the Debian
//! packages `proxychains4` and `torsocks`, plus `curl` and `bash`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::Duration;

use crate::support::http::{pseudo_random, FileServer};
use crate::support::testnet::Testnet;

/// How long one `allium run` may take (a curl waits up to 120 s for its circuit).
const RUN_DEADLINE: Duration = Duration::from_secs(180);
/// How long the testnet may take to write ONION_HOST after it is ready.
const ONION_DEADLINE: Duration = Duration::from_secs(240);

/// Panics, naming the packages, unless the tools `allium run` and these tests use are installed.
fn require_tools() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = |name: &str| std::env::split_paths(&path).any(|d| d.join(name).is_file());
    for (tool, package) in [("proxychains4", "proxychains4"), ("torsocks", "torsocks"), ("curl", "curl"), ("bash", "bash")] {
        assert!(found(tool), "`{tool}` is not installed: `allium run` and its tests need the Debian package `{package}` (apt-get install --no-install-recommends {package})");
    }
}

/// What one `allium run` did.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `allium <args>` to its end (at most RUN_DEADLINE).
fn allium(args: &[&OsStr], path_env: Option<&OsStr>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_allium"));
    cmd.args(args);
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let out = crate::support::run_within(cmd, RUN_DEADLINE).unwrap_or_else(|| panic!("allium {args:?} still running after {} s", RUN_DEADLINE.as_secs()));
    Run { code: out.status.code(), stdout: out.stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// `allium run --socks SOCKS -- CMD…`.
fn run_via(socks: SocketAddr, cmd: &[&str]) -> Run {
    let socks = socks.to_string();
    let mut args: Vec<&OsStr> = vec!["run".as_ref(), "--socks".as_ref(), socks.as_ref(), "--".as_ref()];
    args.extend(cmd.iter().map(|c| OsStr::new(*c)));
    allium(&args, None)
}

/// curl's arguments for a GET that fails on HTTP errors and gives a circuit time to build.
fn curl(url: &str) -> Vec<&str> {
    vec!["curl", "-sS", "-f", "--max-time", "150", url]
}

/// Runs `cmd` through the proxy until it succeeds (a stream may fail on a circuit through a
/// relay that went away), at most `tries` times; the successful run.
fn until_ok(tries: usize, mut attempt: impl FnMut() -> Run, what: &str) -> Run {
    let mut failures = Vec::new();
    for _ in 0..tries {
        let r = attempt();
        if r.code == Some(0) {
            return r;
        }
        failures.push(format!("exit {:?}: {}", r.code, r.stderr.trim()));
    }
    panic!("{what} failed {tries} times:\n{}", failures.join("\n"));
}

/// Through a real test network: a loopback web server is reached by IP address (the connection
/// comes from an exit, never from here), an onion service by its `.allium` name (a name only the
/// client can resolve), with the proxy taken from the client's config; UDP is refused with a
/// message and nothing arrives.
#[test]
fn run_sends_tcp_and_names_through_the_network_and_refuses_udp() {
    require_tools();
    let page = pseudo_random(4096, 71);
    let web = FileServer::start(vec![("/page", page.clone())]);
    let onion_page = pseudo_random(2048, 72);
    let hs_target = FileServer::start(vec![("/onion-page", onion_page.clone())]);
    let net = Testnet::start(&["--hs-target", &hs_target.addr().to_string()]);

    // By IP address: the server sees exits only.
    crate::support::wait_status(&net.dir.join("client"), "bootstrap.percent>=100", Duration::from_secs(120), "the client bootstraps");
    let url = format!("http://127.0.0.1:{}/page", web.addr().port());
    let r = until_ok(3, || run_via(net.socks, &curl(&url)), "allium run curl (IP address)");
    assert!(r.stdout == page, "the body arrived intact ({} bytes of {})", r.stdout.len(), page.len());
    let exits: HashSet<IpAddr> = net.with_role("exit").map(|n| n.addr.ip()).collect();
    let peers = web.peers();
    assert!(!peers.is_empty(), "the server saw no connection");
    for p in &peers {
        assert!(exits.contains(&p.ip()), "connection from {p}, which is not an exit ({exits:?}): curl was not sent through the network");
    }

    // By name, the proxy from the client's config: a `.allium` name resolves nowhere but in
    // the client.
    let host = net.wait_env("ONION_HOST", ONION_DEADLINE).unwrap_or_else(|| panic!("no ONION_HOST\n{}", net.log_tail(20)));
    let config = net.dir.join("client").join("config.toml");
    let url = format!("http://{host}/onion-page");
    let r = until_ok(
        5,
        || {
            let mut args: Vec<&OsStr> = vec!["run".as_ref(), "--config".as_ref(), config.as_os_str(), "--".as_ref()];
            args.extend(curl(&url).into_iter().map(OsStr::new));
            allium(&args, None)
        },
        "allium run --config curl (onion name)",
    );
    assert!(r.stdout == onion_page, "the onion service's page arrived intact ({} bytes)", r.stdout.len());

    // UDP: refused in the program, reported by allium run, nothing sent.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let script = format!("echo leak > /dev/udp/127.0.0.1/{}", sink.local_addr().unwrap().port());
    let r = run_via(net.socks, &["bash", "-c", &script]);
    assert_ne!(r.code, Some(0), "the UDP send succeeded; stderr: {}", r.stderr);
    assert!(r.stderr.contains("allium run: refused UDP for"), "no refusal message; stderr:\n{}", r.stderr);
    assert!(r.stderr.contains("Allium carries only TCP"), "{}", r.stderr);
    let mut buf = [0u8; 64];
    if let Ok((n, from)) = sink.recv_from(&mut buf) {
        panic!("a {n}-byte UDP datagram from {from} got through");
    }
    // The program's exit status is passed on.
    let r = run_via(net.socks, &["sh", "-c", "exit 7"]);
    assert_eq!(r.code, Some(7), "{}", r.stderr);
}

/// A proxy that accepts and drops every connection: the program's connection fails, and the
/// server sees nothing (the program did not go around the proxy).
#[test]
fn run_never_connects_directly() {
    require_tools();
    let web = FileServer::start(vec![("/page", pseudo_random(1024, 73))]);
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for conn in proxy.incoming() {
            drop(conn);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let url = format!("http://127.0.0.1:{}/page", web.addr().port());
    let r = run_via(proxy_addr, &["curl", "-sS", "-f", "--max-time", "20", &url]);
    assert_ne!(r.code, Some(0), "curl succeeded without a working proxy; stderr: {}", r.stderr);
    assert!(r.stdout.is_empty(), "curl got {} bytes", r.stdout.len());
    assert!(web.peers().is_empty(), "curl reached the server directly: {:?}", web.peers());
    // allium run's check, and at least one attempt of curl's.
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2, "curl never tried the proxy");

    // Nothing listening at all: allium run says so and runs nothing.
    drop(web);
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let r = run_via(free, &["curl", "-sS", &url]);
    assert_eq!(r.code, Some(125), "{}", r.stderr);
    assert!(r.stderr.contains("no SOCKS5 proxy answers at"), "{}", r.stderr);
}

/// Without the tools, allium run names the Debian packages to install.
#[test]
fn run_names_the_packages_when_the_tools_are_missing() {
    let empty = crate::support::fresh_dir("no-tools");
    let args: Vec<&OsStr> = vec!["run".as_ref(), "--socks".as_ref(), "127.0.0.1:9".as_ref(), "--".as_ref(), "/bin/true".as_ref()];
    let r = allium(&args, Some(empty.as_os_str()));
    assert_eq!(r.code, Some(125), "{}", r.stderr);
    for needed in ["proxychains4", "torsocks", "apt-get install"] {
        assert!(r.stderr.contains(needed), "the message does not say {needed:?}: {}", r.stderr);
    }
    let _ = std::fs::remove_dir(&empty);
}
