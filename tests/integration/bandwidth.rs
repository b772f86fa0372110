//! Measured bandwidth (docs/PROTOCOL.md, "Measured bandwidth"): with every authority scanning,
//! a relay rate-limited to 200 kB/s (`relay.bandwidth_rate`) that claims 2 MB/s in its
//! descriptor is weighted by what it carries, not by its claim; relays the scanners have not
//! measured would get 20 kB/s (`bw-unmeasured-cap`), so only a measurement passes.

use std::time::Duration;

use crate::support::testnet::Testnet;

const RATE: u64 = 200_000;
const CLAIM: u64 = 2_000_000;

/// Every `relay <nickname> <identity> <address> <weight>` line of a consensus text.
fn weights(consensus: &str) -> Vec<(String, u64)> {
    consensus
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.strip_prefix("relay ")?.split_whitespace().collect();
            Some((f.first()?.to_string(), f.get(3)?.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_relay_claiming_ten_times_its_rate_is_weighted_by_what_it_carries() {
    let net = Testnet::start(&["--bandwidth-scan", "--dangerous-test-slow-relay", &format!("{RATE}:{CLAIM}")]);
    let weight_of = |text: &str| weights(text).into_iter().find(|(n, _)| n == "relay1").map(|(_, w)| w);
    // Within 2× of what it can carry. The client's consensus is read each time it is written
    // (bounded): the scanners measure every relay in turn and the authorities vote their
    // results in the next round.
    let mut last = String::new();
    let within = net.wait_node_file("client", "cached-consensus", Duration::from_secs(120), |text| {
        last = text.to_string();
        weight_of(text).is_some_and(|w| (RATE / 2..=RATE * 2).contains(&w)).then(|| text.to_string())
    });
    let text = within.unwrap_or_else(|| panic!("relay1's weight never came within 2x of {RATE}: {:?}\n{}", weights(&last), net.log_tail(20)));
    let all = weights(&text);
    eprintln!("consensus weights: {all:?}");
    // Its share of paths follows that weight: a measured weight, not its claim, over the total.
    let total: u64 = all.iter().map(|(_, w)| w).sum();
    let w1 = weight_of(&text).unwrap();
    assert!(w1 * 2 < CLAIM / 5, "weight {w1} is far below the claim {CLAIM}");
    assert!((w1 as f64 / total as f64) < CLAIM as f64 / (total - w1 + CLAIM) as f64 / 2.0, "share {w1}/{total}");
    // The rate limit acted on relay1, and the scanners measured: counted where operators look.
    let status = |node: &str| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_allium")).args(["status", "--json", "--data-dir"]).arg(net.dir.join(node)).output().expect("run allium status");
        serde_json::from_slice(&out.stdout).expect("status JSON")
    };
    let s = status("relay1");
    assert!(s.to_string().contains("bandwidth_waits"), "{s}");
    // Each authority keeps its measurements on disk (a restart keeps them): relay1's among them.
    let relay1 = net.node_log("relay1").lines().find_map(|l| l.split("relay fingerprint: ").nth(1).map(|f| f.trim().to_string())).expect("relay1 logs its fingerprint");
    let saved: Vec<String> = ["auth1", "auth2", "auth3"].iter().map(|a| std::fs::read_to_string(net.dir.join(a).join("bandwidth-measurements")).unwrap_or_default()).collect();
    assert!(saved.iter().filter(|m| !m.is_empty()).count() >= 2, "{saved:?}");
    assert!(saved.iter().any(|m| m.contains(&relay1)), "relay1 ({relay1}) measured: {saved:?}");
}
