//! The network status page on an authority's dir port (issue "Operators can see and steer a
//! running node", point 3): a real test network's authority serves an HTML page at `/` (and
//! `/status`) listing every relay, and headless Chromium renders it at a phone's size.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it); without it the test fails and says so.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::testnet::Testnet;

/// How long the page may take to list every relay once the network is ready.
const LISTED_DEADLINE: Duration = Duration::from_secs(120);
/// How long one Chromium run may take.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(90);

/// A Chromium binary on the PATH, or a failure saying how to get one.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no `chromium` binary on the PATH: this test renders the status page with headless Chromium. \
         Install Debian's chromium (`apt-get install -y chromium`, as .ci/run does) and run it again."
    );
}

/// A response: status code, headers (names lowercased) and body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// `GET path` from `addr` over HTTP/1.1 with `Connection: close`.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |m: &str| std::io::Error::other(m.to_string());
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no complete HTTP header"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let body = String::from_utf8(raw[split + 4..].to_vec()).map_err(|_| bad("body is not UTF-8"))?;
    Ok(Resp { status, headers, body })
}

/// Runs Chromium headless with `args` then `url`, within [`CHROMIUM_DEADLINE`]; its stdout.
fn run_chromium(bin: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]).arg(format!("--user-data-dir={}", profile.display())).args(args).arg(url);
    let out = crate::support::run_within(cmd, CHROMIUM_DEADLINE)
        .unwrap_or_else(|| panic!("chromium {args:?} {url} did not finish within {} s", CHROMIUM_DEADLINE.as_secs()));
    assert!(out.status.success(), "chromium {args:?} {url} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
}

#[test]
fn authority_serves_a_status_page_listing_every_relay() {
    // Before starting a network: without a browser the test cannot do its job.
    let browser = chromium();
    let net = Testnet::start(&[]);
    let auth = net.with_role("authority").next().expect("the testnet has an authority");
    let relays: Vec<&str> = net.nodes.iter().filter(|n| n.role == "relay" || n.role == "exit").map(|n| n.name.as_str()).collect();
    assert!(relays.len() >= 2 && net.with_role("exit").count() >= 1, "the testnet lists relays and exits: {:?}", net.nodes);
    let listed = |body: &str| relays.iter().all(|n| body.contains(&format!("<strong>{n}</strong>")));

    // Wait (on the authority's status) for a consensus listing every relay, then get the page.
    let cond = format!("published_consensus.relays>={}", relays.len());
    crate::support::wait_status(&net.dir.join(&auth.name), &cond, LISTED_DEADLINE, "a consensus listing every relay");
    let page = get(auth.addr, "/").unwrap_or_else(|e| panic!("GET / from {}: {e}", auth.name));
    assert!(page.status == 200 && listed(&page.body), "the status page of {} does not list every relay ({relays:?}): {} {}", auth.name, page.status, page.body);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let b = &page.body;
    assert!(b.starts_with("<!DOCTYPE html>") && b.contains("name=\"viewport\""), "an HTML page for phones:\n{b}");
    assert!(!b.to_ascii_lowercase().contains("<script"), "the page has no JavaScript");
    assert!(b.contains("valid now") && b.contains(" UTC</dd>"), "validity with readable dates:\n{b}");
    assert!(b.contains("authorities signed;"), "signatures:\n{b}");
    let version = format!("<td data-label=\"Version\">Allium {}</td>", env!("CARGO_PKG_VERSION"));
    assert_eq!(b.matches(&version).count(), relays.len(), "every relay's software version:\n{b}");
    for n in &relays {
        assert!(b.contains(&format!("<strong>{n}</strong>")), "{n} missing from the page");
    }
    let status = get(auth.addr, "/status").expect("GET /status");
    assert_eq!((status.status, status.header("content-type")), (200, Some("text/html; charset=utf-8")));
    assert!(listed(&status.body), "/status is the same page");

    // Rendered by a real browser at a phone's size.
    let scratch = crate::support::fresh_dir("status-page");
    let shot = scratch.join("status-page.png");
    let url = format!("http://{}/", auth.addr);
    run_chromium(&browser, &scratch.join("profile-shot"), &["--window-size=412,915", &format!("--screenshot={}", shot.display())], &url);
    let dom = run_chromium(&browser, &scratch.join("profile-dom"), &["--window-size=412,915", "--dump-dom"], &url);
    for n in &relays {
        assert!(dom.contains(&format!("<strong>{n}</strong>")), "{n} missing from the DOM Chromium rendered:\n{dom}");
    }
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "chromium wrote no screenshot at {}", shot.display());
    let _ = std::fs::remove_dir_all(scratch.join("profile-shot"));
    let _ = std::fs::remove_dir_all(scratch.join("profile-dom"));
    println!("status page screenshot ({size} bytes, 412x915): {}", shot.display());
}
