//! A readable rendering of a consensus, for `allium directory show`. Relay addresses are shown:
//! the consensus is public, and this output is for the operator's terminal, not for logs.

use std::fmt::Write as _;

use allium_proto::doc::{Consensus, Position, RelayFlags};
use allium_proto::time::Utc;

use crate::netdir::NetDir;

/// Renders a consensus: validity, signatures, parameters, protocols, position weights, then one
/// line per relay (nickname, short fingerprint, address, flags, weight and per-position weights).
pub fn render(nd: &NetDir, now: u64) -> String {
    let c: &Consensus = nd.consensus();
    let mut o = String::new();
    // Each time as unix seconds (for scripts: the word after the keyword), then as a UTC date.
    let t = |secs: u64| format!("{secs} ({})", Utc(secs));
    let _ = writeln!(o, "consensus valid-after {} fresh-until {} valid-until {}", t(c.valid_after()), t(c.fresh_until()), t(c.valid_until()));
    let state = if now < c.valid_after() {
        format!("not valid yet ({} s ahead of this clock)", c.valid_after() - now)
    } else if now <= c.valid_until() {
        format!("valid for {} s more (fresh for {} s)", c.valid_until() - now, c.fresh_until().saturating_sub(now))
    } else {
        format!("EXPIRED {} s ago", now - c.valid_until())
    };
    let _ = writeln!(o, "  status: {state}");
    let _ = writeln!(o, "  digest: {}", hex::encode(c.digest()));
    let _ = writeln!(o, "authorities whose votes counted: {}", c.authorities().len());
    for a in c.authorities() {
        let state = match c.signatures().iter().find(|s| s.identity() == *a) {
            Some(s) => format!("signed (valid; signing key certified until {})", Utc(s.cert.expires)),
            None => "no valid signature".to_string(),
        };
        let _ = writeln!(o, "  {} {state}", a.fingerprint());
    }
    let _ = writeln!(o, "valid signatures: {}", c.signatures().len());
    let params: Vec<String> = c.params().iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(o, "params: {}", if params.is_empty() { "(none)".into() } else { params.join(" ") });
    let _ = writeln!(o, "required-protocols: {}", c.meta().required_protocols);
    let _ = writeln!(o, "recommended-protocols: {}", c.meta().recommended_protocols);
    let _ = writeln!(o, "position weights (of 10000): {}", c.position_weights());
    let sr = nd.shared_random();
    let srv = |v: Option<allium_proto::doc::SrvValue>| v.map_or_else(|| "(none)".to_string(), |v| v.to_string());
    let _ = writeln!(o, "shared-rand-current: {}", srv(sr.current));
    let _ = writeln!(o, "shared-rand-previous: {}", srv(sr.previous));
    let _ = writeln!(o, "relays: {}", c.relays().len());
    let _ = writeln!(o, "  {:<19} {:<16} {:<22} {:>12} {:>12} {:>12} {:>12}  flags", "nickname", "identity", "address", "weight", "as-guard", "as-middle", "as-exit");
    let held = nd.listed().len() - nd.missing_microdescs().len();
    let _ = writeln!(o, "microdescriptors held: {held} of {}", nd.listed().len());
    for r in c.relays() {
        let _ = writeln!(
            o,
            "  {:<19} {:<16} {:<22} {:>12} {:>12} {:>12} {:>12}  {}{}",
            r.nickname,
            &r.identity.fingerprint()[..16],
            r.address.to_string(),
            r.weight,
            nd.position_weight_of(r.flags, r.weight, Position::Guard),
            nd.position_weight_of(r.flags, r.weight, Position::Middle),
            nd.position_weight_of(r.flags, r.weight, Position::Exit),
            r.flags,
            if r.flags.contains(RelayFlags::RUNNING) { "" } else { " (NOT RUNNING: unused)" },
        );
        let Some(full) = nd.by_id(&r.identity) else {
            let _ = writeln!(o, "      (no microdescriptor held: keys, policy and family unknown)");
            continue;
        };
        let mutual: Vec<String> =
            full.family.iter().filter(|f| nd.same_family(&r.identity, f)).map(|f| f.fingerprint()[..16].to_string()).collect();
        if !mutual.is_empty() {
            let _ = writeln!(o, "      family (mutual): {}", mutual.join(" "));
        }
    }
    o
}
