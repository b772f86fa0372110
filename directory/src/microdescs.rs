//! The microdescriptors a node holds, by digest, with the exact text each was received in (so
//! the text a cache serves hashes to the digest the consensus lists).
//!
//! Served on a directory stream or by an authority:
//! - `GET /allium/v1/microdescs`: every microdescriptor of the current consensus;
//! - `GET /allium/v1/microdescs/<hex>-<hex>-...`: those with these digests (64 hex digits each,
//!   at most [`MAX_PER_REQUEST`]); unknown ones are left out.
//!
//! Bodies are the microdescriptors concatenated, sorted by digest.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use allium_proto::doc::microdesc::{digest_of, parse_list};
use allium_proto::doc::{Consensus, Microdesc};

/// The path of every microdescriptor; `/<digests>` after it selects some.
pub const MICRODESCS_PATH: &str = "/allium/v1/microdescs";
/// Most digests one request may name (the request line then stays under 2 KiB).
pub const MAX_PER_REQUEST: usize = 30;

/// Microdescriptors by digest.
#[derive(Debug, Clone, Default)]
pub struct MicrodescStore {
    by_digest: BTreeMap<[u8; 32], (Microdesc, Arc<str>)>,
}

impl MicrodescStore {
    /// The microdescriptors a consensus computed here carries (empty for a parsed one).
    pub fn of_consensus(c: &Consensus) -> Self {
        let mut s = Self::default();
        for md in c.microdescs() {
            let text = md.encode();
            s.by_digest.insert(digest_of(&text), (md.clone(), text.into()));
        }
        s
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<&Microdesc> {
        self.by_digest.get(digest).map(|(m, _)| m)
    }

    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.by_digest.contains_key(digest)
    }

    /// Adds the microdescriptors in `text` whose digest is in `wanted` and that parse; the rest
    /// is ignored. Returns how many were added.
    pub fn add_text(&mut self, text: &str, wanted: &HashSet<[u8; 32]>) -> usize {
        let mut n = 0;
        for item in parse_list(text) {
            if let Ok(md) = item.parsed {
                if wanted.contains(&item.digest) && !self.by_digest.contains_key(&item.digest) {
                    self.by_digest.insert(item.digest, (md, item.text.into()));
                    n += 1;
                }
            }
        }
        n
    }

    /// Keeps only the microdescriptors in `wanted`.
    pub fn retain(&mut self, wanted: &HashSet<[u8; 32]>) {
        self.by_digest.retain(|d, _| wanted.contains(d));
    }

    /// Every held microdescriptor, concatenated in digest order.
    pub fn all_text(&self) -> String {
        self.by_digest.values().map(|(_, t)| &**t).collect()
    }

    /// The held ones among `digests`, concatenated in digest order.
    pub fn text_for(&self, digests: &[[u8; 32]]) -> String {
        let set: HashSet<&[u8; 32]> = digests.iter().collect();
        self.by_digest.iter().filter(|(d, _)| set.contains(d)).map(|(_, (_, t))| &**t).collect()
    }

    /// Merges `other` in (keeping what is held already).
    pub fn extend(&mut self, other: &MicrodescStore) {
        for (d, v) in &other.by_digest {
            self.by_digest.entry(*d).or_insert_with(|| v.clone());
        }
    }
}

/// The path asking for these digests.
pub fn request_path(digests: &[[u8; 32]]) -> String {
    let list: Vec<String> = digests.iter().map(hex::encode).collect();
    format!("{MICRODESCS_PATH}/{}", list.join("-"))
}

/// Parses the digest list of a request path's last segment; `None` if malformed or too long.
pub fn parse_digest_list(s: &str) -> Option<Vec<[u8; 32]>> {
    let parts: Vec<&str> = s.split('-').collect();
    if parts.is_empty() || parts.len() > MAX_PER_REQUEST {
        return None;
    }
    parts
        .iter()
        .map(|p| {
            let mut d = [0u8; 32];
            (p.len() == 64).then_some(())?;
            hex::decode_to_slice(p, &mut d).ok()?;
            Some(d)
        })
        .collect()
}

/// The answer to `path` from `store`: `Some(body)` for a microdescriptor path, `None` for a
/// malformed one.
pub fn answer(store: &MicrodescStore, path: &str) -> Option<String> {
    if path == MICRODESCS_PATH {
        return Some(store.all_text());
    }
    let list = path.strip_prefix(MICRODESCS_PATH)?.strip_prefix('/')?;
    Some(store.text_for(&parse_digest_list(list)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::doc::ConsensusRelay;

    fn md(i: u8) -> Microdesc {
        Microdesc::of_relay(&ConsensusRelay::synthetic(i))
    }

    #[test]
    fn add_serve_and_select() {
        let (a, b) = (md(1), md(2));
        let text = format!("{}{}", a.encode(), b.encode());
        let mut s = MicrodescStore::default();
        assert_eq!(s.add_text(&text, &[a.digest()].into_iter().collect()), 1, "only wanted ones");
        assert_eq!(s.add_text(&text, &[a.digest(), b.digest()].into_iter().collect()), 1, "no duplicates");
        assert_eq!(s.get(&b.digest()), Some(&b));
        assert_eq!(answer(&s, MICRODESCS_PATH).unwrap().len(), text.len());
        let one = answer(&s, &request_path(&[b.digest(), [9; 32]])).unwrap();
        assert_eq!(one, b.encode());
        assert_eq!(answer(&s, "/allium/v1/microdescs/zz"), None);
        assert_eq!(answer(&s, "/allium/v1/other"), None);
        s.retain(&[b.digest()].into_iter().collect());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn digest_lists_are_bounded() {
        let d = [[7u8; 32]; MAX_PER_REQUEST];
        let p = request_path(&d);
        assert!(p.len() + "GET  HTTP/1.0\r\n\r\n".len() <= allium_proto::dir_stream::MAX_REQUEST_LEN);
        assert_eq!(parse_digest_list(p.rsplit('/').next().unwrap()).unwrap().len(), MAX_PER_REQUEST);
        let too_many = request_path(&[[7u8; 32]; MAX_PER_REQUEST + 1]);
        assert!(parse_digest_list(too_many.rsplit('/').next().unwrap()).is_none());
        assert!(parse_digest_list("").is_none());
    }
}
