//! Onion services end to end through `allium testnet`: its hs node hosts a service pointed at a
//! file server of the test's, the testnet's client reaches it by its `.allium` address through
//! SOCKS (descriptor from the HSDirs, introduction, rendezvous), and nothing that could locate
//! or identify the service leaks to the relays.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use allium_proto::hs::address::encode_unchecked;
use allium_proto::hs::OnionAddress;
use base64::Engine as _;

use crate::support::http::{http_get_via_socks, pseudo_random, FileServer, GetError};
use crate::support::onion::ServiceNode;
use crate::support::testnet::Testnet;

/// What a service logs once its descriptor is on the HSDirs.
const PUBLISHED: &str = "descriptor published";

/// How long the testnet may take to write ONION_HOST after it is ready.
const ONION_DEADLINE: Duration = Duration::from_secs(240);

/// GET through SOCKS, tried again (at most 10 times) only while no stream could be opened: a
/// client whose cached descriptor is stale (a restarted service) fetches it anew on failure.
fn get(net: &Testnet, host: &str, path: &str) -> Vec<u8> {
    for _ in 1..10 {
        match http_get_via_socks(net.socks, host, 80, path) {
            Ok(body) => return body,
            Err(GetError::Connect(code)) => eprintln!("SOCKS reply {code:#04x} for the onion address; trying again"),
            Err(e) => panic!("GET {path} via the onion service failed: {e:?}\n{}", net.node_log("client")),
        }
    }
    http_get_via_socks(net.socks, host, 80, path).unwrap_or_else(|e| panic!("GET {path} via the onion service failed: {e:?}\n{}", net.node_log("client")))
}

/// Every way the service's identity key could be written down.
fn encodings(identity: &[u8; 32], host: &str) -> Vec<Vec<u8>> {
    let b64 = [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::STANDARD_NO_PAD, &base64::engine::general_purpose::URL_SAFE_NO_PAD];
    let mut v = vec![identity.to_vec(), hex::encode(identity).into_bytes(), hex::encode_upper(identity).into_bytes()];
    v.extend(b64.iter().map(|e| e.encode(identity).into_bytes()));
    let b32 = base32(identity);
    v.push(b32.to_ascii_uppercase().into_bytes());
    v.push(b32.into_bytes());
    let label = host.trim_end_matches(".allium");
    v.push(label.as_bytes().to_vec());
    v.push(label.to_ascii_uppercase().into_bytes());
    v
}

/// RFC 4648 base32, lowercase, no padding.
fn base32(data: &[u8]) -> String {
    const A: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let (mut out, mut acc, mut bits) = (String::new(), 0u32, 0);
    for &b in data {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Files under `dir` (recursively) that contain any of `needles`.
fn files_containing(dir: &Path, needles: &[Vec<u8>]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return hits };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(files_containing(&p, needles));
        } else if let Ok(bytes) = std::fs::read(&p) {
            if needles.iter().any(|n| bytes.windows(n.len()).any(|w| w == &n[..])) {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn onion_service_serves_pages_and_leaks_nothing_to_relays() {
    let small = pseudo_random(1024, 61);
    let big = pseudo_random(10_000_000, 62);
    let server = FileServer::start(vec![("/1k.bin", small.clone()), ("/10m.bin", big.clone())]);
    let target = server.addr().to_string();
    let net = Testnet::start(&["--hs-target", &target]);
    let t0 = Instant::now();
    let host = net.wait_env("ONION_HOST", ONION_DEADLINE).unwrap_or_else(|| panic!("no ONION_HOST\n{}\nhs log:\n{}", net.log_tail(20), net.node_log("hs")));
    eprintln!("ONION_HOST after {:.1} s", t0.elapsed().as_secs_f64());
    assert!(host.ends_with(".allium"), "{host}");
    let hs_out = std::fs::read_to_string(net.root.join("testnet.log")).unwrap();
    assert!(hs_out.contains(&host), "the testnet prints the address");
    assert!(net.with_role("hs").count() == 1, "DIR/nodes lists the hs node");

    let t = Instant::now();
    assert!(get(&net, &host, "/1k.bin") == small, "1 KB page byte-exact");
    eprintln!("1 KB via the onion service in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    assert!(get(&net, &host, "/10m.bin") == big, "10 MB byte-exact");
    eprintln!("10 MB via the onion service at {:.1} MB/s", 10.0 / t.elapsed().as_secs_f64());

    // The target saw the service's own node only: no relay (each on its own 127.k.0.1)
    // connected to it.
    let relays: Vec<IpAddr> = net.nodes.iter().filter(|n| n.role != "client" && n.role != "hs").map(|n| net.node_address(&n.name)).collect();
    let peers = server.peers();
    assert!(!peers.is_empty());
    for p in &peers {
        assert!(!relays.contains(&p.ip()), "relay {p} connected to the service's target");
        assert!(p.ip().is_loopback(), "{p}");
    }

    // The service's identity appears nowhere on any relay or authority: logs, caches, keys.
    let identity = *OnionAddress::parse(&host).unwrap().identity();
    let needles = encodings(&identity, &host);
    for n in net.nodes.iter().filter(|n| n.role != "client" && n.role != "hs") {
        let hits = files_containing(&net.dir.join(&n.name), &needles);
        assert!(hits.is_empty(), "the service identity is written in {hits:?}");
    }
    // The search itself works: it finds the address where it is written (the testnet's output).
    assert!(!files_containing(&net.root, &needles).is_empty());
    // The client never logs the address at info level.
    let client_log = net.node_log("client");
    assert!(!needles.iter().any(|n| client_log.as_bytes().windows(n.len()).any(|w| w == &n[..])), "the client logged the address");
}

/// A wrong checksum, an unknown version and keys that are not usable points each fail at once
/// with SOCKS 0xF6, decided in the client before any circuit, never after a timeout.
#[test]
fn mistyped_onion_address_fails_at_once() {
    let net = Testnet::start(&[]);
    let host = net.wait_env("ONION_HOST", ONION_DEADLINE).expect("ONION_HOST");
    let c = host.as_bytes()[5];
    let typo = format!("{}{}{}", &host[..5], if c == b'x' { 'y' } else { 'x' }, &host[6..]);
    let identity = *OnionAddress::parse(&host).unwrap().identity();
    let mut small_order = [0u8; 32];
    small_order[0] = 1; // the neutral element
    let mut non_canonical = [0xffu8; 32];
    non_canonical[31] = 0x7f; // y ≥ p
    let bad = [
        ("wrong checksum", typo),
        ("unknown version", encode_unchecked(&identity, 2)),
        ("small-order key", encode_unchecked(&small_order, 1)),
        ("non-canonical key", encode_unchecked(&non_canonical, 1)),
    ];
    for (what, addr) in bad {
        let t = Instant::now();
        match http_get_via_socks(net.socks, &addr, 80, "/") {
            Err(GetError::Connect(code)) => assert_eq!(code, 0xF6, "{what}: invalid onion address"),
            other => panic!("{what}: got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: answered without a timeout");
    }
    // The built-in web server answers the real one.
    let page = get(&net, &host, "/");
    assert!(String::from_utf8_lossy(&page).contains("Allium onion service"));
}

/// THREATS A21: an onion name never reaches an exit, however it is spelled. Fully-qualified,
/// upper-case and subdomain spellings of the service's address reach the service; invalid names
/// whose last label is `allium`, and Tor's `.onion` names, fail in the client with 0xF6. The
/// exits (which refuse such names, and log each refusal) never see one.
#[test]
fn a21_onion_names_never_reach_an_exit_however_spelled() {
    let net = Testnet::start(&[]);
    let host = net.wait_env("ONION_HOST", ONION_DEADLINE).expect("ONION_HOST");
    let label = &host[..host.len() - ".allium".len()];
    for spelled in [format!("{host}."), host.to_uppercase(), format!("www.{}.", label.to_uppercase()) + "ALLIUM.", format!("{label}.AlLiUm")] {
        let page = get(&net, &spelled, "/");
        assert!(String::from_utf8_lossy(&page).contains("Allium onion service"), "{spelled}");
    }
    let typo = format!("{}{}{}", &host[..5], if host.as_bytes()[5] == b'x' { 'y' } else { 'x' }, &host[6..]);
    for bad in [format!("{typo}."), "allium".to_string(), "nothing.allium.".to_string(), "example.onion".into(), "EXAMPLE.ONION.".into()] {
        let t = Instant::now();
        match http_get_via_socks(net.socks, &bad, 80, "/") {
            Err(GetError::Connect(code)) => assert_eq!(code, 0xF6, "{bad}: refused in the client as an invalid onion address"),
            other => panic!("{bad}: got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{bad}: answered without a timeout");
    }
    let exit_logs: String = net.with_role("exit").map(|n| net.node_log(&n.name)).collect();
    assert!(!exit_logs.is_empty(), "the exits' logs were read");
    assert_eq!(exit_logs.matches("refused to resolve an onion name").count(), 0, "an onion name reached an exit");
}

/// A service node that restarts keeps its address (its key is in its data directory) and is
/// reachable again: the client's old rendezvous circuit died with it, the old introduction
/// points are gone, and the client finds the new ones in the republished descriptor.
#[test]
fn restarted_service_keeps_its_address_and_stays_reachable() {
    let page = pseudo_random(4096, 63);
    let server = FileServer::start(vec![("/page", page.clone())]);
    let net = Testnet::start(&[]);
    let svc = ServiceNode::start(&net, "hsrestart", server.addr());
    svc.wait_published(Duration::from_secs(120)).unwrap();
    let address = svc.address.clone();
    assert!(get(&net, &address, "/page") == page);

    let dir = svc.stop();
    let svc = ServiceNode::spawn(dir);
    assert_eq!(svc.address, address, "same address after a restart");
    svc.wait_published(Duration::from_secs(120)).unwrap();
    assert!(get(&net, &address, "/page") == page, "reachable after the restart");
}

/// Lines of `log` containing `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// GET `/` of the testnet's service with SOCKS username `user` (a new isolation class, so a new
/// rendezvous: descriptor, introduction and rendezvous all happen again).
fn get_as(net: &Testnet, host: &str, user: &str) -> Vec<u8> {
    let mut s = crate::support::socks::socks5_connect(net.socks, host, 80, Some((user, "x"))).unwrap_or_else(|c| panic!("SOCKS reply {c:#04x} for {user}\n{}", net.node_log("client")));
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    assert!(String::from_utf8_lossy(&resp).contains("Allium onion service"), "{user}: {}", String::from_utf8_lossy(&resp));
    resp
}

/// THREATS A13: every introduction point forwards each INTRODUCE2 twice. The service answers
/// each genuine introduction once and drops every duplicate (its replay cache), and every
/// connection still works.
#[test]
fn a13_replayed_introductions_are_dropped() {
    let net = Testnet::start(&["--dangerous-test-duplicate-introduce2"]);
    let host = net.wait_env("ONION_HOST", ONION_DEADLINE).expect("ONION_HOST");
    for i in 0..3 {
        get_as(&net, &host, &format!("a13-{i}"));
    }
    let relays: Vec<String> = net.nodes.iter().filter(|n| n.role == "relay" || n.role == "exit").map(|n| n.name.clone()).collect();
    let genuine: usize = relays.iter().map(|r| count(&net.node_log(r), "test hook: forwarding an INTRODUCE2 twice")).sum();
    assert!(genuine >= 4, "the probe's and 3 introductions went through an introduction point ({genuine})");
    // The duplicates arrive right after the originals: wait until the service has seen them all.
    crate::support::wait_status(&net.dir.join("hs"), &format!("onion_introductions_replayed>={genuine}"), Duration::from_secs(30), "every duplicate seen");
    let log = net.node_log("hs");
    assert_eq!(count(&log, "replayed INTRODUCE2 dropped"), genuine, "every duplicate dropped, nothing else\n{log}");
    assert_eq!(count(&log, "rendezvous joined"), genuine, "one rendezvous per genuine introduction\n{log}");
}

/// THREATS A5: four of the five HSDirs serve every descriptor with its signature altered. The
/// client rejects what they serve and falls through to the honest one, for the testnet's service
/// and for two fresh ones (if it did not fall through, all three would fail unless the honest
/// HSDir happened to be asked first each time: 1 in 125).
#[test]
fn a5_client_falls_through_hostile_hsdirs() {
    let net = Testnet::start(&["--relays", "5", "--exits", "1", "--dangerous-test-mutating-hsdirs", "4"]);
    let host = net.wait_env("ONION_HOST", ONION_DEADLINE).unwrap_or_else(|| panic!("no ONION_HOST\n{}", net.node_log("client")));
    get_as(&net, &host, "a5-0");
    let page = pseudo_random(2048, 64);
    let server = FileServer::start(vec![("/p", page.clone())]);
    for i in 1..=2 {
        let svc = ServiceNode::start(&net, &format!("hsfresh{i}"), server.addr());
        svc.wait_published(Duration::from_secs(120)).unwrap();
        assert!(get(&net, &svc.address, "/p") == page, "fresh service {i}");
    }
    let altered: usize = net.nodes.iter().filter(|n| n.role == "relay").map(|n| count(&net.node_log(&n.name), "test hook: serving an altered descriptor")).sum();
    let rejected = count(&net.node_log("client"), "served an invalid descriptor");
    eprintln!("hostile HSDirs served {altered} altered descriptors; the client rejected {rejected}");
    assert_eq!(rejected, altered, "every altered descriptor was rejected, and only those");
}

/// THREATS A18 and the path shape: over many connections, the service's circuits start
/// at its guards and go through at most 4 second hops (its pinned vanguards), every circuit
/// with 4 distinct relays ending at the relay it needs.
#[test]
fn a18_service_circuits_use_guards_then_pinned_vanguards() {
    let net = Testnet::start(&[]);
    let host = net.wait_env("ONION_HOST", ONION_DEADLINE).expect("ONION_HOST");
    for i in 0..12 {
        get_as(&net, &host, &format!("a18-{i}"));
    }
    for node in ["hs", "client"] {
        let log = net.node_log(node);
        let paths: Vec<Vec<&str>> = log
            .lines()
            .filter_map(|l| l.split_once("circuit built in ").and_then(|(_, r)| r.split(" through ").nth(1)))
            .map(|p| p.split_whitespace().collect::<Vec<_>>())
            .filter(|p| p.len() == 4)
            .collect();
        assert!(paths.len() >= 12, "{node}: expected onion-service circuits, found {}", paths.len());
        let first: std::collections::HashSet<&str> = paths.iter().map(|p| p[0]).collect();
        let second: std::collections::HashSet<&str> = paths.iter().map(|p| p[1]).collect();
        assert!(first.len() <= 3, "{node}: first hops {first:?} (guards)");
        assert!(second.len() <= 4, "{node}: second hops {second:?} (vanguards)");
        for p in &paths {
            let distinct: std::collections::HashSet<&&str> = p.iter().collect();
            assert_eq!(distinct.len(), 4, "{node}: {p:?}");
        }
    }
}

/// Time periods of 60 s: the service publishes for each new period ahead of time, and a client
/// whose consensus has moved into the next period finds the service there (the descriptor
/// under the next blinded key, not the cached one).
#[test]
fn service_stays_reachable_across_period_boundaries() {
    const L: u64 = 60;
    let net = Testnet::start(&["--param", "hs-period-secs=60"]);
    let host = net.wait_env("ONION_HOST", ONION_DEADLINE).expect("ONION_HOST");
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let client = net.dir.join("client");
    let fresh_fetches = || crate::support::status_json(&client)["onion_connections"]["fresh"].as_u64().unwrap_or(0);
    get_as(&net, &host, "period-0");
    let before = fresh_fetches();
    // Wait until the client holds a consensus a whole period newer than the one it connected
    // with (so, whatever the periods' offset, of a later period), then connect on a new
    // rendezvous: the client fetches the descriptor anew, under the new blinded key.
    let later = format!("consensus.valid_after>={}", now() + L);
    crate::support::wait_status(&client, &later, Duration::from_secs(3 * L), "the client's consensus in a later period");
    get_as(&net, &host, "period-1");
    let fresh = format!("onion_connections.fresh>={}", before + 1);
    crate::support::wait_status(&client, &fresh, Duration::from_secs(30), "a fresh descriptor fetch in a later period");
    // Once its own consensus is in the new period, the service publishes for the period after
    // it too (a second round, for a pair of periods it had not published for).
    crate::support::wait_status(&net.dir.join("hs"), "onion_publications.web>=2", Duration::from_secs(2 * L), "a second publication round");
    let hs = net.node_log("hs");
    assert!(count(&hs, PUBLISHED) >= 2, "{hs}");
    eprintln!("crossed into period {}", now() / L);
}
