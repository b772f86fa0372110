//! Relay flags, consensus parameters and position weights: what authorities add to the relay
//! list beyond the relays' own descriptors.

use std::collections::BTreeMap;
use std::fmt;

/// The flags an authority assigns to a relay (`flags` line of a relay entry).
///
/// Text form: the names of the set flags, space-separated, in the order of [`RelayFlags::NAMES`]
/// (alphabetical). Readers ignore unknown flag names (a later version may add flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayFlags(u16);

impl RelayFlags {
    pub const EMPTY: RelayFlags = RelayFlags(0);
    /// The authority's operator marked the relay as a bad exit: never use it as an exit.
    pub const BAD_EXIT: RelayFlags = RelayFlags(1 << 0);
    /// Its exit policy allows the common ports (80 and 443).
    pub const EXIT: RelayFlags = RelayFlags(1 << 1);
    /// Its (capped) bandwidth is at least the `fast-min-bw` parameter.
    pub const FAST: RelayFlags = RelayFlags(1 << 2);
    /// Suitable as a guard (entry) relay.
    pub const GUARD: RelayFlags = RelayFlags(1 << 3);
    /// Suitable as an onion-service directory.
    pub const HSDIR: RelayFlags = RelayFlags(1 << 4);
    /// It answered the authority's last reachability test.
    pub const RUNNING: RelayFlags = RelayFlags(1 << 5);
    /// Up long enough for long-lived circuits.
    pub const STABLE: RelayFlags = RelayFlags(1 << 6);
    /// Its descriptor verified and the authority did not reject it.
    pub const VALID: RelayFlags = RelayFlags(1 << 7);

    /// Every known flag with its name, in text order.
    pub const NAMES: [(RelayFlags, &'static str); 8] = [
        (Self::BAD_EXIT, "BadExit"),
        (Self::EXIT, "Exit"),
        (Self::FAST, "Fast"),
        (Self::GUARD, "Guard"),
        (Self::HSDIR, "HSDir"),
        (Self::RUNNING, "Running"),
        (Self::STABLE, "Stable"),
        (Self::VALID, "Valid"),
    ];

    /// `self | other` in a `const` context.
    pub const fn union(self, other: RelayFlags) -> RelayFlags {
        RelayFlags(self.0 | other.0)
    }

    /// Whether every flag of `other` is set here.
    pub fn contains(self, other: RelayFlags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn insert(&mut self, other: RelayFlags) {
        self.0 |= other.0;
    }
    pub fn remove(&mut self, other: RelayFlags) {
        self.0 &= !other.0;
    }
    /// `self` with `other` set when `on`.
    pub fn with_if(mut self, other: RelayFlags, on: bool) -> RelayFlags {
        if on {
            self.insert(other);
        }
        self
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The individual known flags that are set.
    pub fn iter(self) -> impl Iterator<Item = RelayFlags> {
        Self::NAMES.into_iter().map(|(f, _)| f).filter(move |f| self.contains(*f))
    }

    /// Parses the arguments of a `flags` line (unknown names ignored; a name twice is an error).
    pub fn parse_args(args: &[&str]) -> Result<Self, &'static str> {
        let mut out = RelayFlags::EMPTY;
        let mut seen = std::collections::BTreeSet::new();
        for a in args {
            if a.is_empty() || a.len() > 32 || !a.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err("bad flag name");
            }
            if !seen.insert(*a) {
                return Err("flag listed twice");
            }
            if let Some((f, _)) = Self::NAMES.iter().find(|(_, n)| n == a) {
                out.insert(*f);
            }
        }
        Ok(out)
    }
}

impl std::ops::BitOr for RelayFlags {
    type Output = RelayFlags;
    fn bitor(self, o: RelayFlags) -> RelayFlags {
        RelayFlags(self.0 | o.0)
    }
}

/// The canonical text: the arguments of a `flags` line.
impl fmt::Display for RelayFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(" ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Most parameters on one `params` line.
pub const MAX_PARAMS: usize = 64;

/// Whether `name` is a well-formed parameter name: 1–32 characters of `a-z 0-9 -`, starting
/// with a letter.
pub fn param_name_ok(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses the arguments of a `params` line: `name=value` items, names in strictly ascending
/// byte order (so each once), values decimal i64 in canonical form (no `+`, no leading zero,
/// no `-0`).
pub fn parse_params(args: &[&str]) -> Result<BTreeMap<String, i64>, &'static str> {
    if args.len() > MAX_PARAMS {
        return Err("too many parameters");
    }
    let mut out = BTreeMap::new();
    let mut last: Option<&str> = None;
    for a in args {
        let (name, value) = a.split_once('=').ok_or("parameter is not name=value")?;
        if !param_name_ok(name) {
            return Err("bad parameter name");
        }
        if last.is_some_and(|l| l >= name) {
            return Err("parameters not sorted by name or listed twice");
        }
        last = Some(name);
        let v: i64 = value.parse().map_err(|_| "parameter value is not a 64-bit integer")?;
        if v.to_string() != value {
            return Err("parameter value not in canonical form");
        }
        out.insert(name.to_string(), v);
    }
    Ok(out)
}

/// The arguments of a `params` line (sorted by name).
pub fn encode_params(p: &BTreeMap<String, i64>) -> String {
    p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// How much of each class of relay's weight goes to each path position, in units of 1/10000
/// (`bandwidth-weights` line of the consensus). Classes by flags: `g` Guard (not a usable
/// exit), `e` usable exit (Exit without BadExit, not Guard), `d` both, `m` neither. Names read
/// `W<position><class>`: `wgd` is the share of a Guard+Exit relay's weight used in the guard
/// position. For every class the shares sum to at most 10000.
///
/// Computed by [`PositionWeights::compute`]; see that function for the rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PositionWeights {
    pub wgg: u32,
    pub wgd: u32,
    pub wmg: u32,
    pub wmm: u32,
    pub wme: u32,
    pub wmd: u32,
    pub wee: u32,
    pub wed: u32,
}

/// The denominator of [`PositionWeights`].
pub const WEIGHT_SCALE: u32 = 10_000;

/// A path position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    Guard,
    Middle,
    Exit,
}

impl PositionWeights {
    const NAMES: [&'static str; 8] = ["Wed", "Wee", "Wgd", "Wgg", "Wmd", "Wme", "Wmg", "Wmm"];

    fn values(&self) -> [u32; 8] {
        [self.wed, self.wee, self.wgd, self.wgg, self.wmd, self.wme, self.wmg, self.wmm]
    }

    /// The relay class of a relay with these flags: `'g'`, `'e'`, `'d'` or `'m'`.
    pub fn class(flags: RelayFlags) -> char {
        let exit = flags.contains(RelayFlags::EXIT) && !flags.contains(RelayFlags::BAD_EXIT);
        match (flags.contains(RelayFlags::GUARD), exit) {
            (true, true) => 'd',
            (true, false) => 'g',
            (false, true) => 'e',
            (false, false) => 'm',
        }
    }

    /// The share (out of [`WEIGHT_SCALE`]) of a relay with `flags` used in `pos`. A relay that
    /// cannot serve a position (a non-Guard as guard, a non-exit as exit) gets 0 there.
    pub fn share(&self, flags: RelayFlags, pos: Position) -> u32 {
        match (pos, Self::class(flags)) {
            (Position::Guard, 'g') => self.wgg,
            (Position::Guard, 'd') => self.wgd,
            (Position::Middle, 'g') => self.wmg,
            (Position::Middle, 'm') => self.wmm,
            (Position::Middle, 'e') => self.wme,
            (Position::Middle, 'd') => self.wmd,
            (Position::Exit, 'e') => self.wee,
            (Position::Exit, 'd') => self.wed,
            _ => 0,
        }
    }

    /// The deterministic rule, from each relay's flags and consensus weight. Every position
    /// should carry a third of the total weight `T`. With `G`, `M`, `E`, `D` the summed weights
    /// of the classes:
    ///
    /// - Exit capacity `X = E + D` is scarce when `3X ≤ T`: exit-capable relays are then used as
    ///   exits only (`Wee = Wed = 10000`, `Wme = Wmd = Wgd = 0`).
    ///   Otherwise the exit position takes `f = T / (3X)` of each exit's weight
    ///   (`Wee = Wed = ⌊10000 T / 3X⌋`); an Exit-only relay gives the rest to the middle
    ///   (`Wme = 10000 − Wee`), a Guard+Exit relay gives the rest to guard and middle, half each
    ///   (`Wgd = ⌊(10000 − Wed) / 2⌋`, `Wmd = 10000 − Wed − Wgd`).
    /// - Guard capacity `G` is scarce when `3G ≤ T`: Guard relays are used as guards only
    ///   (`Wgg = 10000`, `Wmg = 0`); otherwise `Wgg = ⌊10000 T / 3G⌋`, `Wmg = 10000 − Wgg`.
    /// - Other relays are middles only: `Wmm = 10000`.
    ///
    /// Integer arithmetic (u128) only, so every node computes the same values.
    pub fn compute(relays: impl IntoIterator<Item = (RelayFlags, u64)>) -> PositionWeights {
        let (mut g, mut m, mut e, mut d) = (0u128, 0u128, 0u128, 0u128);
        for (flags, w) in relays {
            let w = w as u128;
            match Self::class(flags) {
                'g' => g += w,
                'e' => e += w,
                'd' => d += w,
                _ => m += w,
            }
        }
        let t = g + m + e + d;
        let s = WEIGHT_SCALE as u128;
        let share = |cap: u128| -> u32 {
            if cap == 0 || 3 * cap <= t {
                WEIGHT_SCALE
            } else {
                (s * t / (3 * cap)).min(s) as u32
            }
        };
        let x = e + d;
        let wee = share(x);
        let (wgd, wmd) = if wee == WEIGHT_SCALE {
            (0, 0)
        } else {
            let rest = WEIGHT_SCALE - wee;
            (rest / 2, rest - rest / 2)
        };
        let wgg = share(g);
        PositionWeights { wgg, wgd, wmg: WEIGHT_SCALE - wgg, wmm: WEIGHT_SCALE, wme: WEIGHT_SCALE - wee, wmd, wee, wed: wee }
    }

    /// Parses the arguments of a `bandwidth-weights` line: exactly the eight names in the order
    /// `Wed Wee Wgd Wgg Wmd Wme Wmg Wmm`, each `=value` with value 0–10000 in canonical decimal.
    pub fn parse_args(args: &[&str]) -> Result<Self, &'static str> {
        if args.len() != 8 {
            return Err("need exactly 8 weights");
        }
        let mut v = [0u32; 8];
        for (i, a) in args.iter().enumerate() {
            let (name, value) = a.split_once('=').ok_or("weight is not name=value")?;
            if name != Self::NAMES[i] {
                return Err("weights not in the order Wed Wee Wgd Wgg Wmd Wme Wmg Wmm");
            }
            let x: u32 = value.parse().map_err(|_| "bad weight value")?;
            if x.to_string() != value || x > WEIGHT_SCALE {
                return Err("weight value not canonical or above 10000");
            }
            v[i] = x;
        }
        Ok(PositionWeights { wed: v[0], wee: v[1], wgd: v[2], wgg: v[3], wmd: v[4], wme: v[5], wmg: v[6], wmm: v[7] })
    }
}

/// The canonical text: the arguments of a `bandwidth-weights` line.
impl fmt::Display for PositionWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = Self::NAMES.iter().zip(self.values()).map(|(n, v)| format!("{n}={v}")).collect();
        f.write_str(&items.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_and_unknown_ignored() {
        let f = RelayFlags::RUNNING | RelayFlags::GUARD | RelayFlags::EXIT;
        assert_eq!(f.to_string(), "Exit Guard Running");
        assert_eq!(RelayFlags::parse_args(&["Running", "Exit", "Guard", "Future"]).unwrap(), f);
        assert!(RelayFlags::parse_args(&["Exit", "Exit"]).is_err());
        assert!(RelayFlags::parse_args(&["Ex-it"]).is_err());
        assert_eq!(RelayFlags::EMPTY.to_string(), "");
    }

    #[test]
    fn params_canonical_form() {
        let p = parse_params(&["a=1", "b-c=-5", "z9=0"]).unwrap();
        assert_eq!(encode_params(&p), "a=1 b-c=-5 z9=0");
        for bad in [&["b=1", "a=1"][..], &["a=1", "a=2"], &["a=01"], &["a=+1"], &["a=-0"], &["A=1"], &["1a=1"], &["a"], &["a=99999999999999999999"]] {
            assert!(parse_params(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn position_weights_keep_scarce_exits_for_exit() {
        let exit = RelayFlags::RUNNING | RelayFlags::EXIT;
        let guard = RelayFlags::RUNNING | RelayFlags::GUARD;
        let mid = RelayFlags::RUNNING;
        // Exits are 10% of the total: scarce, used only as exits.
        let w = PositionWeights::compute([(exit, 10), (guard, 45), (mid, 45)]);
        assert_eq!((w.wee, w.wme), (10_000, 0));
        // Guards 45%: more than a third, a share goes to the middle.
        assert_eq!(w.wgg, 10_000 * 100 / (3 * 45));
        assert_eq!(w.wgg + w.wmg, 10_000);
        // Exits are 60%: only a third of the total goes to the exit position.
        let w = PositionWeights::compute([(exit, 60), (guard, 20), (mid, 20)]);
        assert_eq!(w.wee, 10_000 * 100 / 180);
        assert_eq!(w.wee + w.wme, 10_000);
        assert_eq!(w.share(exit, Position::Guard), 0);
        assert_eq!(w.share(exit | RelayFlags::BAD_EXIT, Position::Exit), 0, "a bad exit is never an exit");
        // Round trip.
        let text = w.to_string();
        assert_eq!(PositionWeights::parse_args(&text.split(' ').collect::<Vec<_>>()).unwrap(), w);
        assert!(PositionWeights::parse_args(&["Wee=1"]).is_err());
        // Empty network: no division by zero.
        assert_eq!(PositionWeights::compute([]).wee, 10_000);
    }
}
