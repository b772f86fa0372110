//! Subprotocol versions a relay supports: `protocols Link=1 Relay=1-2 Ntor=1,3`.

use std::collections::BTreeMap;
use std::fmt;

/// Most subprotocols on one line.
pub const MAX_PROTOCOLS: usize = 32;
/// Most version ranges for one subprotocol.
pub const MAX_RANGES: usize = 16;
/// Longest subprotocol name.
const MAX_NAME_LEN: usize = 32;

/// Supported versions per subprotocol name, as sorted, merged, inclusive ranges.
///
/// Text form (one argument per subprotocol): `Name=R[,R...]` where `R` is `V` or `LO-HI`
/// (`LO <= HI`, decimal u32). Names are 1–32 ASCII letters or digits, case-sensitive, each at
/// most once. The canonical form lists names in byte order and ranges sorted and merged; the
/// parser accepts any order and normalizes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Protocols(BTreeMap<String, Vec<(u32, u32)>>);

impl Protocols {
    /// No subprotocols.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds versions `lo..=hi` of `name` (ignored if `lo > hi`).
    pub fn with(mut self, name: &str, lo: u32, hi: u32) -> Self {
        if lo <= hi {
            let v = self.0.entry(name.to_string()).or_default();
            v.push((lo, hi));
            normalize(v);
        }
        self
    }

    /// Whether `version` of `name` is supported.
    pub fn supports(&self, name: &str, version: u32) -> bool {
        self.0.get(name).is_some_and(|v| v.iter().any(|&(lo, hi)| lo <= version && version <= hi))
    }

    /// The versions of `required` that `self` does not support (empty when it supports all).
    pub fn missing(&self, required: &Protocols) -> Protocols {
        let mut out = BTreeMap::new();
        for (name, ranges) in &required.0 {
            let have: &[(u32, u32)] = self.0.get(name).map_or(&[], |v| v.as_slice());
            let mut miss = Vec::new();
            for &(lo, hi) in ranges {
                // Subtract the (sorted, merged) supported ranges from lo..=hi.
                let mut next = Some(lo);
                for &(a, b) in have {
                    let Some(n) = next else { break };
                    if b < n {
                        continue;
                    }
                    if a > hi {
                        break;
                    }
                    if a > n {
                        miss.push((n, a - 1));
                    }
                    next = b.checked_add(1).filter(|&x| x <= hi);
                }
                if let Some(n) = next {
                    if n <= hi {
                        miss.push((n, hi));
                    }
                }
            }
            if !miss.is_empty() {
                normalize(&mut miss);
                out.insert(name.clone(), miss);
            }
        }
        Protocols(out)
    }

    /// Whether no subprotocol is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges of every subprotocol.
    pub fn map(&self) -> &BTreeMap<String, Vec<(u32, u32)>> {
        &self.0
    }

    /// Parses the arguments of a `protocols` line.
    pub fn parse_args(args: &[&str]) -> Result<Self, &'static str> {
        if args.len() > MAX_PROTOCOLS {
            return Err("too many subprotocols");
        }
        let mut map = BTreeMap::new();
        for a in args {
            let (name, ranges) = a.split_once('=').ok_or("entry is not Name=versions")?;
            if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err("bad subprotocol name");
            }
            let parts: Vec<&str> = ranges.split(',').collect();
            if parts.len() > MAX_RANGES {
                return Err("too many version ranges");
            }
            let mut v = Vec::with_capacity(parts.len());
            for p in parts {
                let (lo, hi) = match p.split_once('-') {
                    Some((lo, hi)) => (version(lo)?, version(hi)?),
                    None => {
                        let x = version(p)?;
                        (x, x)
                    }
                };
                if lo > hi {
                    return Err("version range with low > high");
                }
                v.push((lo, hi));
            }
            normalize(&mut v);
            if map.insert(name.to_string(), v).is_some() {
                return Err("subprotocol listed twice");
            }
        }
        Ok(Protocols(map))
    }
}

fn version(s: &str) -> Result<u32, &'static str> {
    let ok = !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err("bad version number");
    }
    s.parse().map_err(|_| "version number too large")
}

fn normalize(v: &mut Vec<(u32, u32)>) {
    v.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
    for &(lo, hi) in v.iter() {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    *v = out;
}

/// The canonical text (the arguments of a `protocols` line, space-separated).
impl fmt::Display for Protocols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, ranges)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}=")?;
            for (j, (lo, hi)) in ranges.iter().enumerate() {
                if j > 0 {
                    f.write_str(",")?;
                }
                if lo == hi {
                    write!(f, "{lo}")?;
                } else {
                    write!(f, "{lo}-{hi}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalizes_and_round_trips() {
        let p = Protocols::parse_args(&["Relay=3,1-2", "Link=1"]).unwrap();
        assert_eq!(p.to_string(), "Link=1 Relay=1-3");
        assert!(p.supports("Relay", 2));
        assert!(!p.supports("Relay", 4));
        assert!(!p.supports("Ntor", 1));
        let again = Protocols::parse_args(&p.to_string().split(' ').collect::<Vec<_>>()).unwrap();
        assert_eq!(again, p);
        assert_eq!(Protocols::new().to_string(), "");
    }

    #[test]
    fn missing_versions() {
        let p = |s: &str| Protocols::parse_args(&s.split(' ').collect::<Vec<_>>()).unwrap();
        let have = p("Link=1-2,5 Relay=1");
        assert!(have.missing(&p("Link=1-2 Relay=1")).is_empty());
        assert!(have.missing(&Protocols::new()).is_empty());
        assert_eq!(have.missing(&p("Link=1-6")).to_string(), "Link=3-4,6");
        assert_eq!(have.missing(&p("Ntor=1 Relay=1-2")).to_string(), "Ntor=1 Relay=2");
        assert_eq!(Protocols::new().missing(&p("Link=0")).to_string(), "Link=0");
        assert!(p("Link=0-4294967295").missing(&p("Link=7")).is_empty());
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in ["Link", "Link=", "=1", "Link=2-1", "Link=01", "Link=1-", "Li-nk=1", "Link=99999999999", "Link=1,,2"] {
            assert!(Protocols::parse_args(&[bad]).is_err(), "{bad}");
        }
        assert!(Protocols::parse_args(&["Link=1", "Link=2"]).is_err());
    }
}
