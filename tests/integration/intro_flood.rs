//! THREATS A29: an introduction flood against an onion service. A service asks its
//! introduction points for 2 introductions per second (burst 4); attacker tasks (this test, with
//! the sans-IO client pieces) send valid INTRODUCE1s without proof of work through fresh
//! circuits as fast as they can, while the test network's own client fetches from the service
//! through SOCKS 20 times, each in its own isolation class (so each is a fresh introduction).
//! The points forward the attacker's introductions only at the service's rate; the honest
//! client, refused at first like everyone, retries with a proof of work that the points charge
//! a fraction of a token for, and gets through.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_proto::hs::OnionAddress;

use crate::support::http::{http_get_via_socks, http_get_via_socks_as, FileServer};
use crate::support::onion::ServiceNode;
use crate::support::testnet::Testnet;
use crate::support::visitor::{flood_introductions, FloodCounts, Visitor};

const RATE: i64 = 2;
const BURST: i64 = 4;
/// Attacker tasks, each sending one INTRODUCE1 per fresh circuit in a loop.
const ATTACKERS: usize = 12;
const HONEST_FETCHES: usize = 20;
/// How soon an honest fetch must get through to count (THREATS A29).
const HONEST_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn a29_introduction_flood_is_held_to_the_services_rate_and_honest_clients_get_through() {
    let net = Testnet::start(&[]);
    let server = FileServer::start(vec![("/x", b"through the flood".to_vec())]);
    let svc = ServiceNode::start_with(&net, "flooded", server.addr(), &[("intro_rate_per_sec", RATE), ("intro_burst", BURST)]);
    let host = svc.address.clone();
    // The service is reachable before the flood (its descriptor is published).
    svc.wait_published(Duration::from_secs(180)).unwrap();
    assert!(http_get_via_socks(net.socks, &host, 80, "/x").is_ok(), "the service is reachable once published\n{}", svc.log());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let identity = *OnionAddress::parse(&host).unwrap().identity();
    let counts = Arc::new(FloodCounts::default());
    let (started, attackers, n_points) = rt.block_on(async {
        let mut v = Visitor::new(&net.dir.join("client").join("config.toml")).await;
        let points = v.intro_points(&identity).await;
        let n = points.len();
        (Instant::now(), flood_introductions(Arc::new(v), identity, points, ATTACKERS, counts.clone()), n)
    });
    let (sent, forwarded) = (&counts.sent, &counts.forwarded);

    // Wait until the flood has emptied the points' buckets (the attacker is being refused).
    assert!(counts.wait_refused(20, Duration::from_secs(120)), "the flood never got going: {} sent", sent.load(Ordering::Relaxed));
    let mut ok = 0;
    let mut failures = Vec::new();
    for i in 0..HONEST_FETCHES {
        // THREATS A29: a legitimate client connects within 10 s (a fetch that took longer
        // does not count, though it got through).
        let asked = Instant::now();
        match http_get_via_socks_as(net.socks, Some((&format!("honest{i}"), "x")), &host, 80, "/x") {
            Ok(body) if body == b"through the flood" && asked.elapsed() <= HONEST_WITHIN => ok += 1,
            Ok(_) if asked.elapsed() > HONEST_WITHIN => failures.push(format!("through after {:.1} s", asked.elapsed().as_secs_f64())),
            other => failures.push(format!("{other:?}")),
        }
    }
    counts.stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    rt.block_on(async {
        for t in attackers {
            let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
        }
    });
    let (sent, forwarded) = (sent.load(Ordering::Relaxed), forwarded.load(Ordering::Relaxed));
    eprintln!("A29: {sent} attacker introductions sent in {secs:.1} s, {forwarded} forwarded; {ok}/{HONEST_FETCHES} honest fetches; {n_points} points");
    let allowed = n_points as f64 * (BURST as f64 + RATE as f64 * (secs + 1.0));
    assert!(forwarded as f64 <= allowed, "the points forwarded {forwarded} of {sent} attacker introductions in {secs:.0} s; the service's rate allows {allowed:.0}");
    assert!(sent > 2 * forwarded, "the flood was not refused: {forwarded} of {sent} forwarded");
    assert!(ok >= 16, "{ok} of {HONEST_FETCHES} honest fetches got through within 10 s: {failures:?}\n{}", net.node_log("client"));
}
