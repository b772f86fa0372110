//! Exit policies: which destinations an exit relay agrees to connect to.
//!
//! A policy is an ordered list of rules; the first rule that matches a destination decides, and a
//! destination that no rule matches is rejected (so the empty policy rejects everything).
//!
//! One rule is written `accept|reject ADDR:PORTS`, with one or more spaces after the action:
//!
//! - ADDR: `*` (every IPv4 and IPv6 address), `*4`, `*6`, `private` (every address for which
//!   [`is_private`] is true), an IPv4 address with an optional prefix length (`10.0.0.0/8`), or an
//!   IPv6 address in brackets with an optional prefix length (`[fc00::]/7`). Bits after the prefix
//!   must be zero, so every rule has a single spelling.
//! - PORTS: `*` (1-65535), `N` or `N-M` with 1 <= N <= M <= 65535.
//!
//! Port 0 is never matched by any rule, so it is always rejected.
//!
//! Matching is done on the resolved address. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is
//! the IPv4 address `a.b.c.d` to the policy: IPv4 rules and `*4` match it, IPv6 rules and `*6` do
//! not. (A dual-stack socket connecting to `::ffff:127.0.0.1` reaches 127.0.0.1, so the policy must
//! see it that way.) For the same reason a rule whose IPv6 pattern lies entirely inside
//! `::ffff:0:0/96` is refused: it could never match anything.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most rules accepted in one policy.
pub const MAX_RULES: usize = 1024;

/// IPv4 blocks that [`is_private`] covers, as (network, prefix length).
const PRIVATE_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),      // "this network", includes the unspecified address
    ([10, 0, 0, 0], 8),     // RFC 1918
    ([100, 64, 0, 0], 10),  // carrier-grade NAT (RFC 6598)
    ([127, 0, 0, 0], 8),    // loopback
    ([169, 254, 0, 0], 16), // link-local
    ([172, 16, 0, 0], 12),  // RFC 1918
    ([192, 168, 0, 0], 16), // RFC 1918
    ([224, 0, 0, 0], 4),    // multicast
    ([240, 0, 0, 0], 4),    // reserved, includes the broadcast address
];

/// Native IPv6 blocks that [`is_private`] covers, as (network, prefix length).
const PRIVATE_V6: &[(u128, u8)] = &[
    (0, 128),                 // unspecified
    (1, 128),                 // loopback
    (0xfc00_u128 << 112, 7),  // unique-local
    (0xfe80_u128 << 112, 10), // link-local
    (0xfec0_u128 << 112, 10), // site-local (deprecated, still routable inside sites)
    (0xff00_u128 << 112, 8),  // multicast
    (0x0064_ff9b_0001_u128 << 80, 48), // local-use NAT64 (RFC 8215): a local translator
    (0x2001_0000_u128 << 96, 32), // Teredo (RFC 4380): a host behind a NAT, reached by tunnel
];

/// 6to4 (RFC 3056): `2002:V4ADDR::/48`, the IPv4 address in bits 16–48.
const SIX_TO_FOUR: (u128, u8) = (0x2002_u128 << 112, 16);
/// Teredo (RFC 4380): `2001:0000:SERVER:FLAGS:PORT:CLIENT`, the client's IPv4 address inverted in
/// the last 32 bits and the server's in bits 32–64. The whole block is private (above); these
/// are only used to recognise this host's own addresses.
const TEREDO: (u128, u8) = (0x2001_0000_u128 << 96, 32);
/// IPv4-compatible addresses (`::a.b.c.d`, deprecated by RFC 4291), `::` and `::1` aside.
const COMPATIBLE: (u128, u8) = (0, 96);

/// The IPv4-mapped block `::ffff:0:0/96`.
const MAPPED: (u128, u8) = (0xffff_u128 << 32, 96);
/// The well-known NAT64 prefix `64:ff9b::/96` (RFC 6052). It must never carry a private IPv4
/// address, but an exit behind a NAT64 gateway that did translate one would reach the gateway's
/// private network, so such addresses count as private too.
const NAT64: (u128, u8) = (0x0064_ff9b_u128 << 96, 96);

/// True for addresses an exit must never connect to under the default policy, and that a real
/// network never accepts in a descriptor: unspecified, "this network" (0.0.0.0/8), loopback,
/// private (RFC 1918), carrier-grade NAT, link-local, unique-local, site-local, multicast,
/// reserved (240.0.0.0/4) and broadcast, local-use NAT64 (`64:ff9b:1::/48`) and Teredo
/// (`2001::/32`). IPv6 addresses that carry an IPv4 address — IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), well-known-prefix NAT64 (`64:ff9b::a.b.c.d`) and 6to4
/// (`2002:AABB:CCDD::/48`) — are private when the IPv4 address they carry is.
pub fn is_private(addr: IpAddr) -> bool {
    match normalize(addr) {
        IpAddr::V4(a) => v4_is_private(a),
        IpAddr::V6(a) => {
            let x = u128::from(a);
            PRIVATE_V6.iter().any(|&(net, len)| in_prefix(x, net, len, 128)) || embedded_v4(a).into_iter().flatten().any(v4_is_private)
        }
    }
}

/// The IPv4 addresses an IPv6 address carries and would lead to: NAT64 (well-known prefix),
/// 6to4, Teredo (client and server), IPv4-compatible. (IPv4-mapped ones are turned into IPv4
/// first, by `normalize`.)
fn embedded_v4(a: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let x = u128::from(a);
    let v4 = |bits: u128| Some(Ipv4Addr::from(bits as u32));
    if in_prefix(x, NAT64.0, NAT64.1, 128) {
        [v4(x), None]
    } else if in_prefix(x, SIX_TO_FOUR.0, SIX_TO_FOUR.1, 128) {
        [v4(x >> 80), None]
    } else if in_prefix(x, TEREDO.0, TEREDO.1, 128) {
        [v4(!x), v4(x >> 64)]
    } else if in_prefix(x, COMPATIBLE.0, COMPATIBLE.1, 128) && x > 1 {
        [v4(x), None]
    } else {
        [None, None]
    }
}

/// Whether `a` and `b` lead to the same host: equal once IPv4-mapped addresses are turned into
/// IPv4, or one is an IPv4 address the other carries (NAT64, 6to4, Teredo, IPv4-compatible).
pub fn same_host(a: IpAddr, b: IpAddr) -> bool {
    let forms = |ip: IpAddr| -> [Option<IpAddr>; 3] {
        match normalize(ip) {
            IpAddr::V6(v6) => {
                let [e1, e2] = embedded_v4(v6);
                [Some(IpAddr::V6(v6)), e1.map(IpAddr::V4), e2.map(IpAddr::V4)]
            }
            v4 => [Some(v4), None, None],
        }
    };
    let fb = forms(b);
    forms(a).into_iter().flatten().any(|x| fb.contains(&Some(x)))
}

fn v4_is_private(a: Ipv4Addr) -> bool {
    let x = u128::from(u32::from(a));
    PRIVATE_V4.iter().any(|&(net, len)| in_prefix(x, u128::from(u32::from_be_bytes(net)), len, 32))
}

/// An IPv4-mapped IPv6 address becomes the IPv4 address it carries; anything else is unchanged.
fn normalize(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
        v4 => v4,
    }
}

/// All-ones in the host part of a `bits`-wide address with a `len`-bit prefix.
fn host_mask(len: u8, bits: u8) -> u128 {
    let host_bits = u32::from(bits.saturating_sub(len));
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

fn in_prefix(x: u128, net: u128, len: u8, bits: u8) -> bool {
    let m = host_mask(len, bits);
    (x & !m) == (net & !m)
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Accept,
    Reject,
}

/// The address part of a rule. Networks are stored with zero host bits; prefix length 0 is
/// stored as `Any4` / `Any6` so that equal sets have equal representations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddrPattern {
    Any,
    Any4,
    Any6,
    Private,
    V4(Ipv4Addr, u8),
    V6(Ipv6Addr, u8),
}

impl AddrPattern {
    /// `addr` must already be normalized.
    fn matches(&self, addr: IpAddr) -> bool {
        match (*self, addr) {
            (AddrPattern::Any, _) => true,
            (AddrPattern::Any4, a) => a.is_ipv4(),
            (AddrPattern::Any6, a) => a.is_ipv6(),
            (AddrPattern::Private, a) => is_private(a),
            (AddrPattern::V4(net, len), IpAddr::V4(a)) => {
                in_prefix(u128::from(u32::from(a)), u128::from(u32::from(net)), len, 32)
            }
            (AddrPattern::V6(net, len), IpAddr::V6(a)) => in_prefix(u128::from(a), u128::from(net), len, 128),
            _ => false,
        }
    }
}

impl fmt::Display for AddrPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AddrPattern::Any => f.write_str("*"),
            AddrPattern::Any4 => f.write_str("*4"),
            AddrPattern::Any6 => f.write_str("*6"),
            AddrPattern::Private => f.write_str("private"),
            AddrPattern::V4(a, 32) => write!(f, "{a}"),
            AddrPattern::V4(a, len) => write!(f, "{a}/{len}"),
            AddrPattern::V6(a, 128) => write!(f, "[{a}]"),
            AddrPattern::V6(a, len) => write!(f, "[{a}]/{len}"),
        }
    }
}

/// An inclusive port range, `1 <= lo <= hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ports {
    lo: u16,
    hi: u16,
}

impl Ports {
    const ALL: Ports = Ports { lo: 1, hi: u16::MAX };
    fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Ports::ALL {
            f.write_str("*")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    action: Action,
    addr: AddrPattern,
    ports: Ports,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = match self.action {
            Action::Accept => "accept",
            Action::Reject => "reject",
        };
        write!(f, "{a} {}:{}", self.addr, self.ports)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A policy that did not parse: which rule and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("exit policy rule #{} ({}): {kind}", .index + 1, quote(.rule))]
pub struct PolicyError {
    /// Position of the offending rule in the list, counting from 0 (the message counts from 1).
    pub index: usize,
    /// The rule as written (at most 100 characters of it).
    pub rule: String,
    pub kind: PolicyErrorKind,
}

/// Why a rule was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyErrorKind {
    #[error("empty rule")]
    Empty,
    #[error("leading or trailing whitespace")]
    SurroundingWhitespace,
    #[error("a rule starts with \"accept\" or \"reject\", then one or more spaces, then ADDR:PORTS")]
    UnknownAction,
    #[error("only spaces may separate the action from ADDR:PORTS")]
    BadSeparator,
    #[error("missing ADDR:PORTS after the action")]
    MissingPattern,
    #[error("unexpected whitespace after ADDR:PORTS")]
    WhitespaceInPattern,
    #[error("missing \":PORTS\" after the address (\":*\" means every port)")]
    MissingPorts,
    #[error("invalid address {}: expected *, *4, *6, private, an IPv4 address or a bracketed IPv6 address, each network with an optional /prefix", quote(.0))]
    BadAddress(String),
    #[error("IPv6 addresses must be written in brackets, like [::1]:80 or [fc00::]/7:*")]
    UnbracketedIpv6,
    #[error("invalid prefix length {}: IPv4 allows 0-32, IPv6 0-128, no leading zeros", quote(.0))]
    BadPrefix(String),
    #[error("{given} has bits set after the prefix; did you mean {suggested}?")]
    HostBitsSet { given: String, suggested: String },
    #[error("IPv4-mapped IPv6 addresses are matched as IPv4: write the IPv4 address or network instead")]
    MappedIpv6,
    #[error("invalid port {}: ports are 1-65535, no leading zeros, written *, N or N-M", quote(.0))]
    BadPort(String),
    #[error("port range {0}-{1} ends before it starts")]
    ReversedPorts(u16, u16),
    #[error("more than {MAX_RULES} rules")]
    TooManyRules,
}

/// Quote user text for an error message: escaped and at most 100 characters.
fn quote(s: &str) -> String {
    let mut out: String = s.chars().take(100).collect::<String>().escape_debug().collect();
    if s.chars().nth(100).is_some() {
        out.push('…');
    }
    format!("\"{out}\"")
}

fn clip(s: &str) -> String {
    s.chars().take(100).collect()
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// A decimal number without sign or leading zeros, at most `max`.
fn parse_dec(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&n| n <= max)
}

fn parse_prefix(s: Option<&str>, max: u8) -> Result<u8, PolicyErrorKind> {
    match s {
        None => Ok(max),
        Some(p) => parse_dec(p, u32::from(max))
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| PolicyErrorKind::BadPrefix(clip(p))),
    }
}

fn parse_port(s: &str) -> Result<u16, PolicyErrorKind> {
    parse_dec(s, 65535)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n != 0)
        .ok_or_else(|| PolicyErrorKind::BadPort(clip(s)))
}

fn parse_ports(s: &str) -> Result<Ports, PolicyErrorKind> {
    if s == "*" {
        return Ok(Ports::ALL);
    }
    match s.split_once('-') {
        None => {
            let p = parse_port(s)?;
            Ok(Ports { lo: p, hi: p })
        }
        Some((a, b)) => {
            let (lo, hi) = (parse_port(a)?, parse_port(b)?);
            if lo > hi {
                return Err(PolicyErrorKind::ReversedPorts(lo, hi));
            }
            Ok(Ports { lo, hi })
        }
    }
}

fn parse_addr(s: &str) -> Result<AddrPattern, PolicyErrorKind> {
    let bad = || PolicyErrorKind::BadAddress(clip(s));
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
        let prefix = match after {
            "" => None,
            _ => Some(after.strip_prefix('/').ok_or_else(bad)?),
        };
        let addr: Ipv6Addr = inner.parse().map_err(|_| bad())?;
        let len = parse_prefix(prefix, 128)?;
        if len == 0 {
            return check_host_bits(u128::from(addr), 0, 128, s).map(|_| AddrPattern::Any6);
        }
        if len >= MAPPED.1 && in_prefix(u128::from(addr), MAPPED.0, MAPPED.1, 128) {
            return Err(PolicyErrorKind::MappedIpv6);
        }
        check_host_bits(u128::from(addr), len, 128, s)?;
        return Ok(AddrPattern::V6(addr, len));
    }
    match s {
        "*" => return Ok(AddrPattern::Any),
        "*4" => return Ok(AddrPattern::Any4),
        "*6" => return Ok(AddrPattern::Any6),
        "private" => return Ok(AddrPattern::Private),
        _ => {}
    }
    let (a, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let len = parse_prefix(prefix, 32)?;
    check_host_bits(u128::from(u32::from(addr)), len, 32, s)?;
    if len == 0 {
        Ok(AddrPattern::Any4)
    } else {
        Ok(AddrPattern::V4(addr, len))
    }
}

fn check_host_bits(x: u128, len: u8, bits: u8, given: &str) -> Result<(), PolicyErrorKind> {
    let m = host_mask(len, bits);
    if x & m == 0 {
        return Ok(());
    }
    let net = x & !m;
    let suggested = if bits == 32 {
        format!("{}/{len}", Ipv4Addr::from(net as u32))
    } else {
        format!("[{}]/{len}", Ipv6Addr::from(net))
    };
    Err(PolicyErrorKind::HostBitsSet { given: clip(given), suggested })
}

fn parse_rule(rule: &str) -> Result<Rule, PolicyErrorKind> {
    if rule.is_empty() {
        return Err(PolicyErrorKind::Empty);
    }
    if rule.trim() != rule {
        return Err(PolicyErrorKind::SurroundingWhitespace);
    }
    let (word, rest) = match rule.find(' ') {
        Some(i) => rule.split_at(i),
        None => (rule, ""),
    };
    let action = match word {
        "accept" => Action::Accept,
        "reject" => Action::Reject,
        _ => {
            let after_word = word.strip_prefix("accept").or_else(|| word.strip_prefix("reject"));
            return Err(match after_word {
                Some(tail) if tail.starts_with(char::is_whitespace) => PolicyErrorKind::BadSeparator,
                _ => PolicyErrorKind::UnknownAction,
            });
        }
    };
    // `rest` is empty or starts with a space; the rule has no trailing whitespace.
    let pattern = rest.trim_start_matches(' ');
    if pattern.is_empty() {
        return Err(PolicyErrorKind::MissingPattern);
    }
    if pattern.starts_with(char::is_whitespace) {
        return Err(PolicyErrorKind::BadSeparator);
    }
    if pattern.contains(char::is_whitespace) {
        return Err(PolicyErrorKind::WhitespaceInPattern);
    }
    let (addr, ports) = if pattern.starts_with('[') {
        // The port separator is the first ':' after the closing bracket.
        let close = pattern.find(']').ok_or_else(|| PolicyErrorKind::BadAddress(clip(pattern)))?;
        let colon = pattern[close..].find(':').ok_or(PolicyErrorKind::MissingPorts)?;
        pattern.split_at(close + colon)
    } else {
        match pattern.matches(':').count() {
            0 => return Err(PolicyErrorKind::MissingPorts),
            1 => pattern.split_at(pattern.find(':').unwrap_or(0)),
            _ => return Err(PolicyErrorKind::UnbracketedIpv6),
        }
    };
    let ports = &ports[1..]; // skip the ':'
    let addr = parse_addr(addr)?;
    let ports = parse_ports(ports)?;
    Ok(Rule { action, addr, ports })
}

// ---------------------------------------------------------------------------------------------
// Address-set arithmetic used to answer "is some destination accepted?" exactly.
// ---------------------------------------------------------------------------------------------

/// A set of addresses of one family: sorted, disjoint, non-adjacent inclusive intervals over the
/// address as an integer (IPv4 addresses use the low 32 bits).
type Set = Vec<(u128, u128)>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Region {
    All,
    Private,
    Public,
}

fn prefix_interval(net: u128, len: u8, bits: u8) -> (u128, u128) {
    let m = host_mask(len, bits);
    (net & !m, net | m)
}

fn make_set(mut v: Vec<(u128, u128)>) -> Set {
    v.sort_unstable();
    let mut out: Set = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if last.1 == u128::MAX || lo <= last.1 + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn subtract(a: &Set, b: &Set) -> Set {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        let mut cur = lo;
        let mut alive = true;
        for &(blo, bhi) in b {
            if !alive || blo > hi {
                break;
            }
            if bhi < cur {
                continue;
            }
            if blo > cur {
                out.push((cur, blo - 1));
            }
            if bhi >= hi {
                alive = false;
            } else {
                cur = bhi + 1;
            }
        }
        if alive {
            out.push((cur, hi));
        }
    }
    out
}

/// The smallest element of `a ∩ b`, if any.
fn first_common(a: &Set, b: &Set) -> Option<u128> {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if lo <= hi {
            return Some(lo);
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    None
}

fn full(f: Family) -> Set {
    match f {
        Family::V4 => vec![(0, u128::from(u32::MAX))],
        // Mapped addresses are IPv4 addresses to the policy.
        Family::V6 => subtract(&vec![(0, u128::MAX)], &vec![prefix_interval(MAPPED.0, MAPPED.1, 128)]),
    }
}

fn private_set(f: Family) -> Set {
    let v4 = || PRIVATE_V4.iter().map(|&(n, l)| (u128::from(u32::from_be_bytes(n)), l));
    match f {
        Family::V4 => make_set(v4().map(|(n, l)| prefix_interval(n, l, 32)).collect()),
        Family::V6 => make_set(
            PRIVATE_V6
                .iter()
                .map(|&(n, l)| prefix_interval(n, l, 128))
                .chain(v4().map(|(n, l)| prefix_interval(NAT64.0 | n, NAT64.1 + l, 128)))
                .chain(v4().map(|(n, l)| prefix_interval(SIX_TO_FOUR.0 | (n << 80), SIX_TO_FOUR.1 + l, 128)))
                .chain(v4().map(|(n, l)| prefix_interval(COMPATIBLE.0 | n, COMPATIBLE.1 + l, 128)))
                .collect(),
        ),
    }
}

fn region_set(r: Region, f: Family) -> Set {
    match r {
        Region::All => full(f),
        Region::Private => private_set(f),
        Region::Public => subtract(&full(f), &private_set(f)),
    }
}

fn pattern_set(p: AddrPattern, f: Family) -> Set {
    match (p, f) {
        (AddrPattern::Any, _) | (AddrPattern::Any4, Family::V4) | (AddrPattern::Any6, Family::V6) => full(f),
        (AddrPattern::Private, _) => private_set(f),
        (AddrPattern::V4(n, l), Family::V4) => vec![prefix_interval(u128::from(u32::from(n)), l, 32)],
        (AddrPattern::V6(n, l), Family::V6) => vec![prefix_interval(u128::from(n), l, 128)],
        _ => Vec::new(),
    }
}

fn to_addr(x: u128, f: Family) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(x as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(x)),
    }
}

// ---------------------------------------------------------------------------------------------
// The policy
// ---------------------------------------------------------------------------------------------

/// An exit policy: ordered rules, first match wins, no match means reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitPolicy {
    rules: Vec<Rule>,
}

impl ExitPolicy {
    /// Parses rules as written in the configuration or in a descriptor, one rule per string.
    pub fn parse_rules<S: AsRef<str>>(rules: &[S]) -> Result<ExitPolicy, PolicyError> {
        let mut out = Vec::with_capacity(rules.len().min(MAX_RULES));
        for (index, r) in rules.iter().enumerate() {
            let r = r.as_ref();
            let err = |kind| PolicyError { index, rule: clip(r), kind };
            if index >= MAX_RULES {
                return Err(err(PolicyErrorKind::TooManyRules));
            }
            out.push(parse_rule(r).map_err(err)?);
        }
        Ok(ExitPolicy { rules: out })
    }

    /// `reject *:*`: the policy of a relay that is not an exit.
    pub fn reject_all() -> ExitPolicy {
        ExitPolicy { rules: vec![Rule { action: Action::Reject, addr: AddrPattern::Any, ports: Ports::ALL }] }
    }

    /// `reject private:*`, `accept *:*`.
    pub fn default_exit() -> ExitPolicy {
        ExitPolicy {
            rules: vec![
                Rule { action: Action::Reject, addr: AddrPattern::Private, ports: Ports::ALL },
                Rule { action: Action::Accept, addr: AddrPattern::Any, ports: Ports::ALL },
            ],
        }
    }

    /// Whether a connection to `addr:port` is allowed. `addr` is the resolved address the exit
    /// would connect to (never decide on a host name). Port 0 is never allowed.
    pub fn allows(&self, addr: IpAddr, port: u16) -> bool {
        let addr = normalize(addr);
        self.rules
            .iter()
            .find(|r| r.ports.contains(port) && r.addr.matches(addr))
            .is_some_and(|r| r.action == Action::Accept)
    }

    /// Whether some public (not [`is_private`]) address is accepted on `port`. Used to pick an
    /// exit for a host name whose address is not known yet. Exact, not a heuristic.
    pub fn allows_port_somewhere(&self, port: u16) -> bool {
        self.accepted_witness(Region::Public, port, port).is_some()
    }

    /// Whether the policy accepts any destination at all (private ones included).
    pub fn is_exit(&self) -> bool {
        self.accepted_witness(Region::All, 1, u16::MAX).is_some()
    }

    /// Whether some private, loopback or otherwise [`is_private`] address could be accepted on
    /// some port. Configurations refuse such a policy outside a test network.
    pub fn accepts_private(&self) -> bool {
        self.accepted_witness(Region::Private, 1, u16::MAX).is_some()
    }

    /// The rules in canonical text; `parse_rules(&p.to_rules()) == Ok(p)`.
    pub fn to_rules(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.to_string()).collect()
    }

    /// Some destination in `region` with a port in `lo..=hi` that the policy accepts, if any.
    ///
    /// Ports are split into ranges on which every rule's port test is constant; for one port of
    /// each range, the rules are walked in order while keeping the set of addresses in the region
    /// that no earlier rule matched. The first accept rule that meets that set has a witness.
    fn accepted_witness(&self, region: Region, lo: u16, hi: u16) -> Option<(IpAddr, u16)> {
        let lo = lo.max(1);
        if lo > hi {
            return None;
        }
        let mut starts: Vec<u16> = vec![lo];
        for r in &self.rules {
            for b in [u32::from(r.ports.lo), u32::from(r.ports.hi) + 1] {
                if u32::from(lo) < b && b <= u32::from(hi) {
                    starts.push(b as u16);
                }
            }
        }
        starts.sort_unstable();
        starts.dedup();
        for fam in [Family::V4, Family::V6] {
            let reg = region_set(region, fam);
            for &port in &starts {
                let mut unclaimed = reg.clone();
                for r in self.rules.iter().filter(|r| r.ports.contains(port)) {
                    if unclaimed.is_empty() {
                        break;
                    }
                    let s = pattern_set(r.addr, fam);
                    match r.action {
                        Action::Accept => {
                            if let Some(x) = first_common(&unclaimed, &s) {
                                return Some((to_addr(x, fam), port));
                            }
                        }
                        Action::Reject => unclaimed = subtract(&unclaimed, &s),
                    }
                }
            }
        }
        None
    }
}

impl fmt::Display for ExitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(rules: &[&str]) -> ExitPolicy {
        ExitPolicy::parse_rules(rules).unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn err(rule: &str) -> PolicyErrorKind {
        ExitPolicy::parse_rules(&[rule]).unwrap_err().kind
    }

    const PRIVATE_SAMPLES: &[&str] = &[
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "172.31.255.255",
        "169.254.1.1",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::10.0.0.1",
    ];
    const PUBLIC_SAMPLES: &[&str] = &[
        "1.1.1.1",
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "2001:4860::8888",
        "::ffff:1.1.1.1",
        "64:ff9b::1.1.1.1",
        "2002:0101:0101::1", // 6to4 of 1.1.1.1
        "::1.1.1.1",         // IPv4-compatible 1.1.1.1
    ];

    /// THREATS A22: private IPv4 addresses embedded in 6to4, Teredo, NAT64 (both prefixes) and
    /// IPv4-compatible forms are private; so is every Teredo address.
    #[test]
    fn a22_embedded_private_addresses_are_private() {
        for a in [
            "2002:7f00:0001::1",           // 6to4 of 127.0.0.1
            "2002:0a00:0001:1::5",         // 6to4 of 10.0.0.1
            "2002:c0a8:0101::",            // 6to4 of 192.168.1.1
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo (client 192.0.2.45)
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo (client 127.0.0.1)
            "64:ff9b::7f00:1",             // NAT64 of 127.0.0.1
            "64:ff9b:1::1.1.1.1",          // local-use NAT64
            "::127.0.0.1",                 // IPv4-compatible 127.0.0.1
            "::10.1.2.3",
        ] {
            assert!(is_private(ip(a)), "{a}");
        }
        // The policy's notion of "private" is the same set.
        let p = ExitPolicy::parse_rules(&["reject private:*", "accept *:*"]).unwrap();
        for a in ["2002:7f00:0001::1", "2001:0:4136:e378:8000:63bf:80ff:fffe", "::127.0.0.1", "64:ff9b:1::1"] {
            assert!(!p.allows(ip(a), 80), "{a}");
        }
        assert!(p.allows(ip("2002:0101:0101::1"), 80));
    }

    /// An exit recognises its own address in every form that leads to it.
    #[test]
    fn same_host_sees_through_embeddings() {
        let own = ip("203.0.113.7");
        for a in ["203.0.113.7", "::ffff:203.0.113.7", "2002:cb00:7107::1", "64:ff9b::203.0.113.7", "::203.0.113.7", "2001:0:cb00:7107::1"] {
            assert!(same_host(own, ip(a)) && same_host(ip(a), own), "{a}");
        }
        assert!(!same_host(own, ip("203.0.113.8")));
        assert!(same_host(ip("2001:db8::7"), ip("2001:db8::7")));
        assert!(!same_host(ip("2001:db8::7"), ip("2001:db8::8")));
    }

    #[test]
    fn is_private_samples() {
        for a in PRIVATE_SAMPLES {
            assert!(is_private(ip(a)), "{a}");
        }
        for a in PUBLIC_SAMPLES {
            assert!(!is_private(ip(a)), "{a}");
        }
    }

    #[test]
    fn default_exit_rejects_private_accepts_public() {
        let d = ExitPolicy::default_exit();
        for a in PRIVATE_SAMPLES {
            assert!(!d.allows(ip(a), 80), "{a}");
        }
        assert!(d.allows(ip("1.1.1.1"), 443));
        assert!(d.allows(ip("2001:4860::8888"), 443));
        assert!(!d.allows(ip("1.1.1.1"), 0));
        assert!(d.is_exit());
        assert!(!d.accepts_private());
        assert_eq!(d.to_rules(), ["reject private:*", "accept *:*"]);
        assert_eq!(d.to_string(), "reject private:*, accept *:*");
        assert_eq!(p(&["reject private:*", "accept *:*"]), d);
    }

    #[test]
    fn reject_all_is_not_exit() {
        let r = ExitPolicy::reject_all();
        assert_eq!(r.to_rules(), ["reject *:*"]);
        assert!(!r.is_exit());
        assert!(!r.accepts_private());
        assert!(!r.allows(ip("1.1.1.1"), 443));
        assert!(!r.allows_port_somewhere(443));
        let empty = p(&[]);
        assert!(!empty.is_exit());
        assert!(!empty.allows(ip("1.1.1.1"), 443));
    }

    #[test]
    fn first_match_wins() {
        let a = p(&["accept 1.2.3.4:80", "reject 1.2.3.0/24:*", "accept *:*"]);
        assert!(a.allows(ip("1.2.3.4"), 80));
        assert!(!a.allows(ip("1.2.3.4"), 81));
        assert!(!a.allows(ip("1.2.3.5"), 80));
        assert!(a.allows(ip("1.2.4.5"), 80));
        let b = p(&["reject 1.2.3.0/24:*", "accept 1.2.3.4:80", "accept *:*"]);
        assert!(!b.allows(ip("1.2.3.4"), 80));
        // Nothing matches: reject.
        let c = p(&["accept 1.2.3.4:80"]);
        assert!(!c.allows(ip("1.2.3.4"), 81));
    }

    #[test]
    fn port_ranges() {
        let a = p(&["accept *:80-90", "accept *:443", "reject *:*"]);
        assert!(!a.allows(ip("8.8.8.8"), 79));
        assert!(a.allows(ip("8.8.8.8"), 80));
        assert!(a.allows(ip("8.8.8.8"), 85));
        assert!(a.allows(ip("8.8.8.8"), 90));
        assert!(!a.allows(ip("8.8.8.8"), 91));
        assert!(a.allows(ip("8.8.8.8"), 443));
        assert!(a.allows(ip("::1"), 443));
        assert!(p(&["accept *:65535"]).allows(ip("8.8.8.8"), 65535));
        assert_eq!(p(&["accept *:1-65535"]).to_rules(), ["accept *:*"]);
        assert_eq!(p(&["accept *:7-7"]).to_rules(), ["accept *:7"]);
    }

    #[test]
    fn families_and_ipv6_prefixes() {
        let a = p(&["accept [2001:db8::]/32:*", "reject *:*"]);
        assert!(a.allows(ip("2001:db8:1::1"), 22));
        assert!(!a.allows(ip("2001:db9::1"), 22));
        assert!(!a.allows(ip("1.2.3.4"), 22));
        let four = p(&["accept *4:*"]);
        assert!(four.allows(ip("1.2.3.4"), 1));
        assert!(four.allows(ip("::ffff:1.2.3.4"), 1)); // mapped = IPv4
        assert!(!four.allows(ip("2001::1"), 1));
        let six = p(&["accept *6:*"]);
        assert!(six.allows(ip("2001::1"), 1));
        assert!(!six.allows(ip("1.2.3.4"), 1));
        assert!(!six.allows(ip("::ffff:1.2.3.4"), 1));
        // An IPv4 reject also covers the mapped form.
        let m = p(&["reject 1.2.3.4:*", "accept *:*"]);
        assert!(!m.allows(ip("::ffff:1.2.3.4"), 80));
        assert!(p(&["accept [::1]:*"]).allows(ip("::1"), 5));
        assert_eq!(p(&["accept [::1]/128:*"]).to_rules(), ["accept [::1]:*"]);
        assert_eq!(p(&["accept [fc00::]/7:1-2"]).to_rules(), ["accept [fc00::]/7:1-2"]);
        assert_eq!(p(&["accept [::]/0:*"]).to_rules(), ["accept *6:*"]);
        assert_eq!(p(&["accept 0.0.0.0/0:*"]).to_rules(), ["accept *4:*"]);
        assert_eq!(p(&["accept 1.2.3.4/32:*"]).to_rules(), ["accept 1.2.3.4:*"]);
    }

    #[test]
    fn allows_port_somewhere_cases() {
        let a = p(&["reject *:25", "accept *:*"]);
        assert!(!a.allows_port_somewhere(25));
        assert!(a.allows_port_somewhere(80));
        assert!(!a.allows_port_somewhere(0));
        let d = ExitPolicy::default_exit();
        assert!(d.allows_port_somewhere(80));
        // Only private destinations accepted: no public address on any port.
        let t = p(&["accept private:*", "reject *:*"]);
        assert!(!t.allows_port_somewhere(80));
        assert!(t.is_exit());
        assert!(t.accepts_private());
        // One public /32 is enough.
        let one = p(&["accept 8.8.8.8:53", "reject *:*"]);
        assert!(one.allows_port_somewhere(53));
        assert!(!one.allows_port_somewhere(54));
        // Everything public rejected piecewise on IPv4 but IPv6 open.
        let six = p(&["reject *4:*", "accept *:443"]);
        assert!(six.allows_port_somewhere(443));
        assert!(!p(&["reject *4:*", "reject *6:*", "accept *:443"]).allows_port_somewhere(443));
    }

    #[test]
    fn accepts_private_cases() {
        assert!(!p(&["reject private:*", "accept *:*"]).accepts_private());
        assert!(p(&["accept *:*"]).accepts_private());
        assert!(p(&["accept 10.0.0.0/8:80"]).accepts_private());
        assert!(p(&["accept [fe80::]/10:80"]).accepts_private());
        assert!(!p(&["accept 8.8.8.8:*"]).accepts_private());
        // Private rejected only on some ports.
        assert!(p(&["reject private:1-1000", "accept *:*"]).accepts_private());
        assert!(!p(&["reject private:1-1000", "reject private:1001-65535", "accept *:*"]).accepts_private());
        // Rejecting the pieces one by one is as good as "private".
        let pieces = p(&[
            "reject 0.0.0.0/8:*",
            "reject 10.0.0.0/8:*",
            "reject 100.64.0.0/10:*",
            "reject 127.0.0.0/8:*",
            "reject 169.254.0.0/16:*",
            "reject 172.16.0.0/12:*",
            "reject 192.168.0.0/16:*",
            "reject 224.0.0.0/3:*",
            "reject *6:*",
            "accept *:*",
        ]);
        assert!(!pieces.accepts_private());
        assert!(pieces.allows_port_somewhere(80));
        // A broad IPv6 accept covers ::1.
        assert!(p(&["accept [::]/64:*"]).accepts_private());
    }

    #[test]
    fn parse_errors() {
        use PolicyErrorKind as K;
        assert!(matches!(err("accept 1.2.3.4/33:*"), K::BadPrefix(_)));
        assert!(matches!(err("accept [::1]/129:*"), K::BadPrefix(_)));
        assert!(matches!(err("accept 1.2.3.4/:*"), K::BadPrefix(_)));
        assert!(matches!(err("accept 1.2.3.4/08:*"), K::BadPrefix(_)));
        assert!(matches!(err("accept *:0"), K::BadPort(_)));
        assert!(matches!(err("accept *:70000"), K::BadPort(_)));
        assert!(matches!(err("accept *:080"), K::BadPort(_)));
        assert!(matches!(err("accept *:-5"), K::BadPort(_)));
        assert!(matches!(err("accept *:5-"), K::BadPort(_)));
        assert!(matches!(err("accept *:1-2-3"), K::BadPort(_)));
        assert_eq!(err("accept *:90-80"), K::ReversedPorts(90, 80));
        assert_eq!(err("accept"), K::MissingPattern);
        assert_eq!(err("accept  "), K::SurroundingWhitespace);
        assert_eq!(err("maybe *:*"), K::UnknownAction);
        assert_eq!(err("ACCEPT *:*"), K::UnknownAction);
        assert_eq!(err("accept*:*"), K::UnknownAction);
        assert_eq!(err("accept\t*:*"), K::BadSeparator);
        assert_eq!(err("accept 1.2.3.4"), K::MissingPorts);
        assert_eq!(err("accept [::1]"), K::MissingPorts);
        assert_eq!(err("accept ::1:80"), K::UnbracketedIpv6);
        assert_eq!(err("accept *:* extra"), K::WhitespaceInPattern);
        assert_eq!(err(""), K::Empty);
        assert_eq!(err(" accept *:*"), K::SurroundingWhitespace);
        assert!(matches!(err("accept 1.2.3:*"), K::BadAddress(_)));
        assert!(matches!(err("accept 01.2.3.4:*"), K::BadAddress(_)));
        assert!(matches!(err("accept */8:*"), K::BadAddress(_)));
        assert!(matches!(err("accept [1.2.3.4]:*"), K::BadAddress(_)));
        assert!(matches!(err("accept [::1:*"), K::BadAddress(_)));
        assert!(matches!(err("accept [::1]x:*"), K::BadAddress(_)));
        assert!(matches!(err("accept example.com:*"), K::BadAddress(_)));
        assert_eq!(err("accept [::ffff:127.0.0.1]:*"), K::MappedIpv6);
        assert_eq!(
            err("accept 10.1.2.3/8:*"),
            K::HostBitsSet { given: "10.1.2.3/8".into(), suggested: "10.0.0.0/8".into() }
        );
        assert!(matches!(err("accept [fc00::1]/7:*"), K::HostBitsSet { .. }));

        let e = ExitPolicy::parse_rules(&["accept *:*", "accept *:70000"]).unwrap_err();
        assert_eq!(e.index, 1);
        let msg = e.to_string();
        assert!(msg.contains("rule #2") && msg.contains("70000") && msg.contains("1-65535"), "{msg}");

        let many: Vec<String> = (0..=MAX_RULES).map(|_| "accept *:*".to_string()).collect();
        assert_eq!(ExitPolicy::parse_rules(&many).unwrap_err().kind, K::TooManyRules);
    }

    fn addr_pattern() -> impl Strategy<Value = AddrPattern> {
        prop_oneof![
            Just(AddrPattern::Any),
            Just(AddrPattern::Any4),
            Just(AddrPattern::Any6),
            Just(AddrPattern::Private),
            (any::<u32>(), 1u8..=32)
                .prop_map(|(a, l)| { AddrPattern::V4(Ipv4Addr::from(a & !(host_mask(l, 32) as u32)), l) }),
            (any::<u128>(), 1u8..=128)
                .prop_map(|(a, l)| AddrPattern::V6(Ipv6Addr::from(a & !host_mask(l, 128)), l))
                .prop_filter("mapped", |p| match p {
                    AddrPattern::V6(a, l) => !(*l >= 96 && in_prefix(u128::from(*a), MAPPED.0, MAPPED.1, 128)),
                    _ => true,
                }),
            // Small networks near interesting places, so that rules overlap.
            (prop::sample::select(vec![0x0a00_0000u32, 0x7f00_0000, 0x0808_0808, 0xc0a8_0000]), 8u8..=32)
                .prop_map(|(a, l)| AddrPattern::V4(Ipv4Addr::from(a & !(host_mask(l, 32) as u32)), l)),
        ]
    }

    fn rule() -> impl Strategy<Value = Rule> {
        let ports = prop_oneof![
            Just(Ports::ALL),
            (1u16..=65535).prop_map(|p| Ports { lo: p, hi: p }),
            (1u16..=65535, 1u16..=65535).prop_map(|(a, b)| Ports { lo: a.min(b), hi: a.max(b) }),
            (1u16..=100, 1u16..=100).prop_map(|(a, b)| Ports { lo: a.min(b), hi: a.max(b) }),
        ];
        (any::<bool>(), addr_pattern(), ports).prop_map(|(acc, addr, ports)| Rule {
            action: if acc { Action::Accept } else { Action::Reject },
            addr,
            ports,
        })
    }

    fn policy() -> impl Strategy<Value = ExitPolicy> {
        prop::collection::vec(rule(), 0..8).prop_map(|rules| ExitPolicy { rules })
    }

    fn sample_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            prop::sample::select(PRIVATE_SAMPLES.iter().chain(PUBLIC_SAMPLES).map(|s| ip(s)).collect::<Vec<_>>()),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = ExitPolicy::parse_rules(&[s]);
        }

        #[test]
        fn parse_never_panics_near_valid(
            s in "(accept|reject|acc|maybe)?[ \t]{0,2}(\\*|\\*4|\\*6|private|[0-9./]{0,20}|\\[[0-9a-f:.]{0,42}\\]?(/[0-9]{0,4})?)(:[0-9*-]{0,13})?[ ]?"
        ) {
            if let Ok(pol) = ExitPolicy::parse_rules(&[&s]) {
                // Whatever parses is in canonical form or re-parses to the same policy.
                prop_assert_eq!(ExitPolicy::parse_rules(&pol.to_rules()).unwrap(), pol);
            }
        }

        #[test]
        fn round_trip(pol in policy()) {
            let text = pol.to_rules();
            prop_assert_eq!(ExitPolicy::parse_rules(&text).unwrap(), pol.clone());
            prop_assert_eq!(pol.to_string(), text.join(", "));
        }

        #[test]
        fn allows_never_panics_and_is_consistent(pol in policy(), addrs in prop::collection::vec(sample_addr(), 1..20), port in any::<u16>()) {
            for a in addrs {
                if pol.allows(a, port) {
                    prop_assert!(port != 0);
                    prop_assert!(pol.is_exit());
                    if is_private(a) {
                        prop_assert!(pol.accepts_private(), "{} accepts {}:{}", pol, a, port);
                    } else {
                        prop_assert!(pol.allows_port_somewhere(port), "{} accepts {}:{}", pol, a, port);
                    }
                }
            }
        }

        #[test]
        fn witnesses_are_real(pol in policy(), port in 1u16..=65535) {
            for (region, lo, hi) in [(Region::All, 1, 65535), (Region::Private, 1, 65535), (Region::Public, port, port)] {
                if let Some((a, p)) = pol.accepted_witness(region, lo, hi) {
                    prop_assert!(pol.allows(a, p), "{} witness {}:{}", pol, a, p);
                    prop_assert!(lo <= p && p <= hi);
                    match region {
                        Region::All => {}
                        Region::Private => prop_assert!(is_private(a)),
                        Region::Public => prop_assert!(!is_private(a)),
                    }
                }
            }
        }
    }
}
