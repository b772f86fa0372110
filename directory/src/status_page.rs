//! The network status page an authority serves on its dir port at `/` and `/status`: a
//! consensus rendered as one small HTML document for a browser, phones included (viewport
//! meta, inline CSS, a table that becomes one card per relay on a narrow screen). No
//! JavaScript, no external resource.
//!
//! Pure: a consensus and what the authority knows beside it in, a string out. Every string
//! that comes from the network (nicknames, policies, protocol names, parameter names) is
//! HTML-escaped. The server ([`crate::server`]) renders it once per consensus (and validity
//! state) and serves the cached bytes.

use std::collections::HashMap;
use std::fmt::Write as _;

use allium_net::config::AuthorityEntry;
use allium_proto::doc::{Consensus, ConsensusEntry, Microdesc, RelayFlags};
use allium_proto::ids::RelayId;
use allium_proto::policy::ExitPolicy;

use allium_proto::time::fmt_utc as format_utc;

/// What the serving authority knows about a listed relay beyond the consensus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayNotes {
    /// Start of the relay's current unbroken run of successful reachability tests by this
    /// authority (unix seconds); `None` when it has not seen one (e.g. just restarted).
    pub running_since: Option<u64>,
    /// The bandwidth the relay advertises in the descriptor this authority holds (bytes/s).
    pub advertised_bandwidth: Option<u64>,
    /// The software version in that descriptor (`platform`, e.g. `Allium 0.1.0`).
    pub platform: Option<String>,
}

/// Everything the page shows.
pub struct PageInput<'a> {
    pub consensus: &'a Consensus,
    /// The network's configured authorities (names for the signature list).
    pub authorities: &'a [AuthorityEntry],
    /// Per relay, what the authority knows beside the consensus (absent: nothing).
    pub notes: &'a HashMap<RelayId, RelayNotes>,
    /// When the page is rendered (unix seconds, the authority's clock).
    pub now: u64,
}

/// Where `now` falls in a consensus's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Validity {
    NotYetValid,
    /// Valid and fresh (before `fresh-until`).
    Fresh,
    /// Valid, past `fresh-until`.
    Stale,
    Expired,
}

impl Validity {
    pub fn of(c: &Consensus, now: u64) -> Self {
        if now < c.valid_after() {
            Validity::NotYetValid
        } else if now < c.fresh_until() {
            Validity::Fresh
        } else if now <= c.valid_until() {
            Validity::Stale
        } else {
            Validity::Expired
        }
    }

    fn label(self) -> &'static str {
        match self {
            Validity::NotYetValid => "not valid yet",
            Validity::Fresh => "valid now (fresh)",
            Validity::Stale => "valid now (no longer fresh: a newer one is due)",
            Validity::Expired => "expired",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Validity::Fresh | Validity::Stale => "ok",
            Validity::NotYetValid | Validity::Expired => "bad",
        }
    }
}

/// At most this many exit-policy rules are shown per relay (then the count).
const MAX_POLICY_RULES_SHOWN: usize = 6;

const STYLE: &str = "\
:root{color-scheme:light dark}\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;line-height:1.4;margin:0 auto;padding:.8rem;max-width:80rem}\
h1{font-size:1.35rem;margin:.2rem 0 .6rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}\
.ok{color:#1a7f37}.bad{color:#c62828}.muted{opacity:.7}\
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.15rem .8rem;margin:0}dl.kv dt{font-weight:600}dl.kv dd{margin:0}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.35rem .45rem;border-bottom:1px solid #8885;vertical-align:top}\
th{font-size:.85rem}\
code{font-size:.82em;overflow-wrap:break-word}code.fp{word-break:break-all}\
.flag{display:inline-block;padding:0 .3rem;margin:0 .15rem .15rem 0;border-radius:.3rem;background:#8883;font-size:.8rem}\
.num{white-space:nowrap}\
@media (max-width:44rem){\
table.cards thead{display:none}\
table.cards,table.cards tbody,table.cards tr,table.cards td{display:block;width:auto}\
table.cards tr{border:1px solid #8887;border-radius:.5rem;margin:0 0 .7rem;padding:.35rem .2rem}\
table.cards td{border:0;padding:.12rem .4rem}\
table.cards td::before{content:attr(data-label) \": \";font-weight:600}\
}";

/// `s` with `& < > " '` replaced by entities: safe in element content and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn head(o: &mut String, title: &str) {
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(o, "<title>{}</title>", escape(title));
    let _ = writeln!(o, "<style>{STYLE}</style>\n</head>\n<body>");
}

/// The page served while the authority holds no consensus yet.
pub fn render_no_consensus() -> String {
    let mut o = String::with_capacity(2048);
    head(&mut o, "Allium network status: no consensus yet");
    o.push_str("<h1>Allium network status</h1>\n");
    o.push_str("<p class=\"bad\">This directory authority holds no consensus yet.</p>\n");
    o.push_str("<p>Authorities agree on one every voting interval once a majority of them are up and relays have \
                uploaded their descriptors. Reload this page in a little while.</p>\n");
    o.push_str("</body>\n</html>\n");
    o
}

/// Bytes per second, readable: `0 B/s`, `512 B/s`, `1.5 KiB/s`, `20.0 MiB/s`.
fn rate(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB/s", "MiB/s", "GiB/s", "TiB/s"];
    if b < 1024 {
        return format!("{b} B/s");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A duration in seconds, readable with two units at most: `45 s`, `3 min 20 s`, `2 h 5 min`, `4 d 3 h`.
fn span(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {sec} s")
    } else {
        format!("{sec} s")
    }
}

/// A short summary of an exit policy: `not an exit`, or its first rules.
fn policy_summary(p: &ExitPolicy) -> String {
    if !p.is_exit() {
        return "not an exit".into();
    }
    let rules = p.to_rules();
    let mut s = rules.iter().take(MAX_POLICY_RULES_SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if rules.len() > MAX_POLICY_RULES_SHOWN {
        let _ = write!(s, ", … ({} rules)", rules.len());
    }
    s
}

fn flags_html(f: RelayFlags) -> String {
    let mut o = String::new();
    for (flag, name) in RelayFlags::NAMES {
        if f.contains(flag) {
            let _ = write!(o, "<span class=\"flag\">{}</span>", escape(name));
        }
    }
    if o.is_empty() {
        o.push_str("<span class=\"muted\">none</span>");
    }
    o
}

/// Renders the status page of `p.consensus`.
pub fn render(p: &PageInput<'_>) -> String {
    let c = p.consensus;
    let mut o = String::with_capacity(4096 + 900 * c.relays().len());
    head(&mut o, "Allium network status");
    o.push_str("<h1>Allium network status</h1>\n");
    let _ = writeln!(
        o,
        "<p class=\"muted\">The consensus held by this directory authority. Page rendered at {} (once per consensus: uptimes are as of then).</p>",
        format_utc(p.now)
    );

    // Validity.
    let v = Validity::of(c, p.now);
    o.push_str("<h2>Consensus</h2>\n<dl class=\"kv\">\n");
    let _ = writeln!(o, "<dt>Status</dt><dd class=\"{}\"><strong>{}</strong></dd>", v.class(), v.label());
    let _ = writeln!(o, "<dt>Valid after</dt><dd class=\"num\">{}</dd>", format_utc(c.valid_after()));
    let _ = writeln!(o, "<dt>Fresh until</dt><dd class=\"num\">{}</dd>", format_utc(c.fresh_until()));
    let _ = writeln!(o, "<dt>Valid until</dt><dd class=\"num\">{}</dd>", format_utc(c.valid_until()));
    let _ = writeln!(o, "<dt>Digest</dt><dd><code class=\"fp\">{}</code></dd>", hex::encode(c.digest()));
    let relays = c.relays();
    let count = |f: RelayFlags| relays.iter().filter(|r| r.flags.contains(f)).count();
    let total_weight: u64 = relays.iter().map(|r| r.weight).fold(0, u64::saturating_add);
    let _ = writeln!(
        o,
        "<dt>Relays</dt><dd>{} listed: {} running, {} exits, {} guards, {} stable</dd>",
        relays.len(),
        count(RelayFlags::RUNNING),
        count(RelayFlags::EXIT),
        count(RelayFlags::GUARD),
        count(RelayFlags::STABLE)
    );
    let _ = writeln!(o, "<dt>Total weight</dt><dd>{}</dd>", rate(total_weight));
    o.push_str("</dl>\n");

    signatures(&mut o, p);
    relay_table(&mut o, p);

    // Parameters, folded.
    let params: Vec<String> = c.params().iter().map(|(k, v)| format!("{}={v}", escape(k))).collect();
    o.push_str("<h2>Network parameters</h2>\n<details><summary>");
    let _ = write!(o, "{} parameters, required and recommended protocols</summary>\n<dl class=\"kv\">\n", params.len());
    let _ = writeln!(o, "<dt>Parameters</dt><dd><code>{}</code></dd>", if params.is_empty() { "(none: defaults)".into() } else { params.join(" ") });
    let _ = writeln!(o, "<dt>Required protocols</dt><dd><code>{}</code></dd>", escape(&c.meta().required_protocols.to_string()));
    let _ = writeln!(o, "<dt>Recommended protocols</dt><dd><code>{}</code></dd>", escape(&c.meta().recommended_protocols.to_string()));
    o.push_str("</dl>\n</details>\n");
    o.push_str("</body>\n</html>\n");
    o
}

/// The authorities: who voted, who signed, how many signatures a client needs.
fn signatures(o: &mut String, p: &PageInput<'_>) {
    let c = p.consensus;
    let signed = |id: &RelayId| c.signatures().iter().any(|s| s.identity() == *id);
    let configured = p.authorities.len();
    let good = p.authorities.iter().filter(|a| signed(&a.identity)).count();
    let needed = configured / 2 + 1;
    o.push_str("<h2>Signatures</h2>\n");
    let class = if good >= needed { "ok" } else { "bad" };
    let _ = writeln!(
        o,
        "<p class=\"{class}\"><strong>{good} of {configured} authorities signed; {needed} needed</strong> (a majority of the configured authorities).</p>"
    );
    o.push_str("<table class=\"cards\">\n<thead><tr><th>Authority</th><th>Fingerprint</th><th>Voted</th><th>Signed</th></tr></thead>\n<tbody>\n");
    let row = |o: &mut String, name: &str, id: &RelayId| {
        let voted = c.authorities().contains(id);
        let s = signed(id);
        let _ = writeln!(
            o,
            "<tr><td data-label=\"Authority\"><strong>{}</strong></td><td data-label=\"Fingerprint\"><code class=\"fp\">{}</code></td>\
             <td data-label=\"Voted\">{}</td><td data-label=\"Signed\" class=\"{}\">{}</td></tr>",
            escape(name),
            id.fingerprint(),
            if voted { "yes" } else { "no" },
            if s { "ok" } else { "bad" },
            if s { "yes" } else { "no" },
        );
    };
    for a in p.authorities {
        row(o, &a.name, &a.identity);
    }
    // Voters or signers this authority's configuration does not name (not expected).
    let known = |id: &RelayId| p.authorities.iter().any(|a| a.identity == *id);
    let mut others: Vec<RelayId> = c.authorities().iter().copied().chain(c.signatures().iter().map(|s| s.identity())).filter(|id| !known(id)).collect();
    others.sort();
    others.dedup();
    for id in &others {
        row(o, "(not configured here)", id);
    }
    o.push_str("</tbody>\n</table>\n");
}

/// One row (a card on a phone) per relay, sorted by nickname.
fn relay_table(o: &mut String, p: &PageInput<'_>) {
    let c = p.consensus;
    let relays = c.relays();
    // A consensus computed here holds its microdescriptors in the order of its relays; one
    // loaded from disk holds none.
    let mds = c.microdescs();
    let md_of = |i: usize| -> Option<&Microdesc> { (mds.len() == relays.len()).then(|| &mds[i]) };
    let mut order: Vec<usize> = (0..relays.len()).collect();
    order.sort_by(|&a, &b| relays[a].nickname.to_lowercase().cmp(&relays[b].nickname.to_lowercase()).then(relays[a].identity.cmp(&relays[b].identity)));

    let _ = writeln!(o, "<h2>Relays ({})</h2>", relays.len());
    o.push_str(
        "<p class=\"muted\">Weight: the consensus weight clients choose relays by (a capped bandwidth). \
         Uptime: how long this authority's reachability tests have found the relay up without a break. \
         Version: the software the relay's descriptor names (unknown when this authority holds no descriptor of it); \
         protocols: the subprotocol versions it supports.</p>\n",
    );
    if relays.is_empty() {
        o.push_str("<p>No relay is listed.</p>\n");
        return;
    }
    o.push_str(
        "<table class=\"cards\">\n<thead><tr><th>Nickname</th><th>Fingerprint</th><th>Flags</th><th>Weight</th>\
         <th>Uptime</th><th>Exit policy</th><th>Version</th><th>Protocols</th><th>Address</th></tr></thead>\n<tbody>\n",
    );
    for i in order {
        relay_row(o, &relays[i], md_of(i), p.notes.get(&relays[i].identity), p.now);
    }
    o.push_str("</tbody>\n</table>\n");
}

fn relay_row(o: &mut String, r: &ConsensusEntry, md: Option<&Microdesc>, notes: Option<&RelayNotes>, now: u64) {
    let unknown = "<span class=\"muted\">unknown</span>";
    let weight = match notes.and_then(|n| n.advertised_bandwidth) {
        Some(bw) => format!("{}<br><span class=\"muted\">advertises {}</span>", rate(r.weight), rate(bw)),
        None => rate(r.weight),
    };
    let uptime = match notes.and_then(|n| n.running_since) {
        Some(since) => escape(&span(now.saturating_sub(since))),
        None => unknown.to_string(),
    };
    let version = match notes.and_then(|n| n.platform.as_deref()) {
        Some(v) => escape(v),
        None => unknown.to_string(),
    };
    let (policy, protocols) = match md {
        Some(md) => (escape(&policy_summary(&md.policy)), format!("<code>{}</code>", escape(&md.protocols.to_string()))),
        None => (unknown.to_string(), unknown.to_string()),
    };
    let _ = writeln!(
        o,
        "<tr><td data-label=\"Nickname\"><strong>{}</strong></td><td data-label=\"Fingerprint\"><code class=\"fp\">{}</code></td>\
         <td data-label=\"Flags\">{}</td><td data-label=\"Weight\" class=\"num\">{weight}</td><td data-label=\"Uptime\" class=\"num\">{uptime}</td>\
         <td data-label=\"Exit policy\">{policy}</td><td data-label=\"Version\">{version}</td><td data-label=\"Protocols\">{protocols}</td>\
         <td data-label=\"Address\"><code>{}</code></td></tr>",
        escape(&r.nickname),
        r.identity.fingerprint(),
        flags_html(r.flags),
        escape(&r.address.to_string()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::doc::{AuthoritySigner, ConsensusRelay, Lifetime, Protocols};
    use ed25519_dalek::SigningKey;

    const T: u64 = 1_796_524_200; // 2026-12-06 02:30:00 UTC

    fn authority(seed: u8) -> (AuthorityEntry, AuthoritySigner) {
        let k = SigningKey::from_bytes(&[seed; 32]);
        let signer = AuthoritySigner::certify(&k, SigningKey::from_bytes(&[seed ^ 0x5a; 32]), 0, u64::MAX);
        let entry = AuthorityEntry { name: format!("auth{seed}"), identity: signer.identity(), address: ([127, 0, 0, 1], 7000 + u16::from(seed)).into() };
        (entry, signer)
    }

    fn relays(n: u8) -> Vec<ConsensusRelay> {
        (1..=n)
            .map(|i| ConsensusRelay {
                nickname: format!("relay{i}"),
                protocols: Protocols::new().with("Link", 1, 2),
                ..ConsensusRelay::synthetic(i)
            })
            .collect()
    }

    /// A consensus of `rs`, signed by the first `signers` of three authorities.
    fn consensus(rs: Vec<ConsensusRelay>, signers: usize) -> (Consensus, Vec<AuthorityEntry>) {
        let auths: Vec<(AuthorityEntry, AuthoritySigner)> = (1..=3).map(authority).collect();
        let ids = auths.iter().map(|(e, _)| e.identity).collect();
        let mut c = Consensus::new(Lifetime::new(T, T + 600, T + 1800).unwrap(), ids, rs);
        for (_, s) in auths.iter().take(signers) {
            assert!(c.add_signature(c.sign(s)));
        }
        (c, auths.into_iter().map(|(e, _)| e).collect())
    }

    fn page(c: &Consensus, auths: &[AuthorityEntry], notes: &HashMap<RelayId, RelayNotes>, now: u64) -> String {
        render(&PageInput { consensus: c, authorities: auths, notes, now })
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape(r#"<script>alert("x")&'</script>"#), "&lt;script&gt;alert(&quot;x&quot;)&amp;&#39;&lt;/script&gt;");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn every_relay_listed_and_network_strings_escaped() {
        let mut rs = relays(40);
        rs[3].nickname = "<b>evil</b>&\"'".into();
        rs[5].policy = ExitPolicy::default_exit();
        rs[5].flags = RelayFlags::RUNNING | RelayFlags::VALID | RelayFlags::EXIT;
        let (c, auths) = consensus(rs.clone(), 2);
        let mut notes = HashMap::new();
        notes.insert(rs[0].identity, RelayNotes { running_since: Some(T + 10 - 3 * 3600 - 300), advertised_bandwidth: Some(3 << 20), platform: Some("Allium 9.9.9<x>".into()) });
        let html = page(&c, &auths, &notes, T + 10);
        for r in &rs {
            assert!(html.contains(&escape(&r.nickname)), "{} missing", r.nickname);
            assert!(html.contains(&r.identity.fingerprint()));
        }
        assert_eq!(html.matches("<td data-label=\"Nickname\">").count(), 40);
        assert!(!html.contains("<b>evil"), "raw nickname in the page");
        assert!(html.contains("&lt;b&gt;evil&lt;/b&gt;&amp;&quot;&#39;"));
        assert!(!html.to_lowercase().contains("<script"), "no JavaScript");
        assert!(html.contains("name=\"viewport\""));
        // Validity, dates, signatures.
        assert!(html.contains("valid now (fresh)"));
        assert!(html.contains("2026-12-06 02:30:00 UTC") && html.contains("2026-12-06 02:40:00 UTC") && html.contains("2026-12-06 03:00:00 UTC"));
        assert!(html.contains("2 of 3 authorities signed; 2 needed"));
        assert!(html.contains("auth1") && html.contains("auth3"));
        // Uptime, weight, policy, protocols.
        assert!(html.contains("3 h 5 min"));
        assert!(html.contains("advertises 3.0 MiB/s"));
        assert!(html.contains("reject private:*, accept *:*"));
        assert!(html.contains("not an exit"));
        assert!(html.contains("Link=1-2"));
        assert!(html.contains("Allium 9.9.9&lt;x&gt;"), "the version, escaped");
    }

    #[test]
    fn states_and_missing_data() {
        let (c, auths) = consensus(relays(2), 1);
        let none = HashMap::new();
        let html = page(&c, &auths, &none, T + 1801);
        assert!(html.contains("<strong>expired</strong>"));
        assert!(html.contains("class=\"bad\"><strong>1 of 3 authorities signed; 2 needed"));
        assert!(html.contains("<span class=\"muted\">unknown</span>"), "no uptime known");
        assert!(page(&c, &auths, &none, T - 1).contains("not valid yet"));
        assert!(page(&c, &auths, &none, T + 900).contains("valid now (no longer fresh"));
        // Parsed from text (as loaded from disk): no microdescriptors, policy unknown.
        let (full, auths) = consensus(relays(2), 3);
        let ids: Vec<RelayId> = auths.iter().map(|a| a.identity).collect();
        let parsed = Consensus::parse(&full.encode()).unwrap().verify(&ids, T + 1).unwrap();
        assert!(parsed.microdescs().is_empty());
        let html = page(&parsed, &auths, &none, T + 1);
        assert!(html.contains("relay1") && html.contains("relay2") && html.contains("3 of 3 authorities signed"));
        assert_eq!(html.matches("<td data-label=\"Exit policy\"><span class=\"muted\">unknown</span>").count(), 2);
        let (empty, auths) = consensus(Vec::new(), 3);
        assert!(page(&empty, &auths, &none, T).contains("No relay is listed."));
    }

    #[test]
    fn no_consensus_page() {
        let html = render_no_consensus();
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains("no consensus yet") && html.contains("viewport"));
        assert!(!html.to_lowercase().contains("<script"));
    }

    #[test]
    fn readable_numbers() {
        assert_eq!(rate(0), "0 B/s");
        assert_eq!(rate(1536), "1.5 KiB/s");
        assert_eq!(rate(20 << 20), "20.0 MiB/s");
        assert_eq!(span(45), "45 s");
        assert_eq!(span(200), "3 min 20 s");
        assert_eq!(span(7500), "2 h 5 min");
        assert_eq!(span(4 * 86_400 + 3 * 3600 + 5), "4 d 3 h");
    }
}
