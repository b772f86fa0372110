//! Issue 13 point 1: authorities keep each relay's reachability history on disk, so flags that
//! need uptime survive authority restarts. The test network's thresholds are raised (20 s of
//! uptime, never relative below 20 s): without the history, every run restarts at 0 with the
//! authorities and the first consensus after a restart has no Guard, Stable or HSDir.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use allium_proto::doc::{Consensus, RelayFlags};
use rustix::process::{kill_process, Pid, Signal};

use crate::support::testnet::Testnet;

const UPTIME_FLAGS: [RelayFlags; 3] = [RelayFlags::GUARD, RelayFlags::STABLE, RelayFlags::HSDIR];

/// The consensus an authority serves now (signatures not checked: the test reads flags).
fn consensus(dir_port: SocketAddr) -> Option<Consensus> {
    let mut s = TcpStream::connect_timeout(&dir_port, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /allium/v1/consensus HTTP/1.0\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.lines().next()?.split(' ').nth(1).filter(|c| *c == "200")?;
    Consensus::parse(body).ok().map(|u| u.dangerously_assume_valid())
}

/// Waits up to `limit` until the consensus authority `name` published (and saved, each time it
/// publishes one) satisfies `done`.
fn wait_consensus(net: &Testnet, name: &str, limit: Duration, done: impl Fn(&Consensus) -> bool) -> Option<Consensus> {
    net.wait_node_file(name, "cached-consensus", limit, |text| Consensus::parse(text).ok().map(|u| u.dangerously_assume_valid()).filter(|c| done(c)))
}

fn all_have_uptime_flags(c: &Consensus) -> bool {
    !c.relays().is_empty() && c.relays().iter().all(|r| UPTIME_FLAGS.iter().all(|f| r.flags.contains(*f)))
}

/// Authorities this test started again; killed when dropped.
struct Restarted(Vec<Child>);

impl Drop for Restarted {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Stops every authority of `net` (SIGTERM) and starts each again from its config; when that was.
fn restart_every_authority(net: &Testnet) -> (Restarted, u64) {
    let auths: Vec<_> = net.with_role("authority").cloned().collect();
    for a in &auths {
        kill_process(Pid::from_raw(a.pid as i32).unwrap(), Signal::TERM).unwrap();
    }
    for a in &auths {
        assert!(crate::support::events::wait_exit(a.pid, Duration::from_secs(20)), "{} still running 20 s after SIGTERM", a.name);
    }
    let restarted_at = allium_net::keys::unix_now();
    let mut children = Restarted(Vec::new());
    for a in &auths {
        let dir = net.dir.join(&a.name);
        let log = std::fs::OpenOptions::new().append(true).create(true).open(dir.join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_allium"))
            .args(["authority", "--config"])
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restart an authority");
        children.0.push(child);
    }
    (children, restarted_at)
}

#[test]
fn restarted_authorities_keep_every_uptime_flag() {
    let params = ["guard-min-uptime=20", "stable-min-uptime=20", "hsdir-min-uptime=20", "flag-uptime-floor=20"];
    let mut args = Vec::new();
    for p in params {
        args.extend(["--param", p]);
    }
    let net = Testnet::start(&args);
    let auths: Vec<_> = net.with_role("authority").cloned().collect();
    let first = &auths[0].name;
    let before = wait_consensus(&net, first, Duration::from_secs(120), all_have_uptime_flags).expect("relays reach Guard, Stable and HSDir after 20 s");
    let relays = before.relays().len();

    // All at once: every authority stops (SIGTERM) and starts again from its config.
    let (children, restarted_at) = restart_every_authority(&net);
    // The first consensus made after the restart.
    let after = wait_consensus(&net, first, Duration::from_secs(120), |c| c.valid_after() > restarted_at).expect("a consensus after the restart");
    let lost: Vec<String> = after
        .relays()
        .iter()
        .filter(|r| !UPTIME_FLAGS.iter().all(|f| r.flags.contains(*f)))
        .map(|r| format!("{} ({})", r.nickname, r.flags))
        .collect();
    assert_eq!(after.relays().len(), relays, "every relay is still listed");
    assert!(lost.is_empty(), "relays lost uptime flags across the restart: {lost:?}");
    let saved = std::fs::read_to_string(net.dir.join(&auths[0].name).join("relay-history")).expect("the history file");
    assert!(saved.matches("[[relay]]").count() >= relays, "{saved}");
    drop(children);
}

/// A network's first consensus comes from a bootstrap round, before any regular round's
/// reachability tests: authorities restarted right then still know every relay (they saved
/// their history and descriptors with that consensus), so the first consensus after the
/// restart lists them all, not none.
#[test]
fn authorities_restarted_right_after_the_first_consensus_keep_every_relay() {
    let net = Testnet::start(&[]);
    let first = net.with_role("authority").next().unwrap().addr;
    let before = consensus(first).expect("a consensus once the network is ready");
    let relays = before.relays().len();
    assert!(relays >= 5, "{relays}");
    let (children, restarted_at) = restart_every_authority(&net);
    let after = wait_consensus(&net, &net.with_role("authority").next().unwrap().name, Duration::from_secs(60), |c| c.valid_after() > restarted_at).expect("a consensus after the restart");
    assert_eq!(after.relays().len(), relays, "the first consensus after the restart lists every relay");
    drop(children);
}
