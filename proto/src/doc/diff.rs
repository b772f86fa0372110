//! Consensus diffs: the lines that changed between two consensus texts.
//!
//! A cache that holds the consensus a client has and the current one can send the difference
//! instead of the whole document. The diff says which text it applies to and which it makes
//! (SHA-256 of each); the client applies it to the text it holds, checks the result's digest,
//! and then parses and verifies the result as it would a full download: the diff is never
//! trusted for anything but saving bytes. Format (`docs/PROTOCOL.md`, "Consensus diffs"):
//!
//! ```text
//! allium-consensus-diff 1
//! from <64 hex: SHA-256 of the base text>
//! to <64 hex: SHA-256 of the target text>
//! k <n>            keep the next n lines of the base
//! d <n>            drop the next n lines of the base
//! a <n>            insert the n lines that follow
//! <line>
//! …
//! end
//! ```
//!
//! Texts are split after each `\n` (a last line without one is a line too); inserted lines are
//! written as they are, so every line of a document ends with `\n` except perhaps the last,
//! and the diff's own lines are exactly the same. Every base line must be kept or dropped once,
//! in order; anything else is an error.

use sha2::{Digest, Sha256};

/// The first line of a diff.
pub const DIFF_HEADER: &str = "allium-consensus-diff 1";

/// Largest diff accepted or applied (as a consensus: the same bound).
pub const MAX_DIFF_LEN: usize = super::MAX_CONSENSUS_LEN;

/// Why a diff was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("not a consensus diff (bad header)")]
    Header,
    #[error("the diff is for another base document")]
    WrongBase,
    #[error("malformed diff line {0}")]
    Malformed(usize),
    #[error("the diff runs past the end of its base")]
    PastEnd,
    #[error("the diff leaves {0} base lines unaccounted for")]
    Unconsumed(usize),
    #[error("the result is not the document the diff names")]
    WrongResult,
    #[error("diff or result longer than {MAX_DIFF_LEN} bytes")]
    TooLong,
}

/// SHA-256 of a document's text.
pub fn text_digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// The diff that turns `from` into `to`.
pub fn make_diff(from: &str, to: &str) -> String {
    let mut out = format!("{DIFF_HEADER}\nfrom {}\nto {}\n", hex::encode(text_digest(from)), hex::encode(text_digest(to)));
    let diff = similar::TextDiff::configure().algorithm(similar::Algorithm::Myers).diff_lines(from, to);
    let mut pending: Option<(char, usize)> = None;
    let mut inserted: Vec<&str> = Vec::new();
    let flush = |out: &mut String, pending: &mut Option<(char, usize)>, inserted: &mut Vec<&str>| {
        if let Some((op, n)) = pending.take() {
            out.push_str(&format!("{op} {n}\n"));
            for l in inserted.drain(..) {
                out.push_str(l);
                if !l.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
    };
    for change in diff.iter_all_changes() {
        let op = match change.tag() {
            similar::ChangeTag::Equal => 'k',
            similar::ChangeTag::Delete => 'd',
            similar::ChangeTag::Insert => 'a',
        };
        match &mut pending {
            Some((p, n)) if *p == op => *n += 1,
            _ => {
                flush(&mut out, &mut pending, &mut inserted);
                pending = Some((op, 1));
            }
        }
        if op == 'a' {
            inserted.push(change.value());
        }
    }
    flush(&mut out, &mut pending, &mut inserted);
    // A target whose last line lacks its `\n` is marked so, to be rebuilt exactly.
    if !to.is_empty() && !to.ends_with('\n') {
        out.push_str("no-final-newline\n");
    }
    out.push_str("end\n");
    out
}

/// The base digest a diff names, read from its header alone.
pub fn diff_base(diff: &str) -> Option<[u8; 32]> {
    let mut lines = diff.lines();
    (lines.next()? == DIFF_HEADER).then_some(())?;
    let mut d = [0u8; 32];
    hex::decode_to_slice(lines.next()?.strip_prefix("from ")?, &mut d).ok()?;
    Some(d)
}

/// Applies `diff` to `base`: the target text, checked against the digest the diff names.
pub fn apply_diff(base: &str, diff: &str) -> Result<String, DiffError> {
    if diff.len() > MAX_DIFF_LEN {
        return Err(DiffError::TooLong);
    }
    let mut lines = diff.split_inclusive('\n').enumerate();
    let mut next = |want: &str| -> Result<(usize, String), DiffError> {
        let (i, l) = lines.next().ok_or(DiffError::Malformed(0))?;
        let l = l.strip_suffix('\n').ok_or(DiffError::Malformed(i + 1))?;
        match want {
            "" => Ok((i + 1, l.to_string())),
            p => l.strip_prefix(p).map(|r| (i + 1, r.to_string())).ok_or(DiffError::Malformed(i + 1)),
        }
    };
    if next("")?.1 != DIFF_HEADER {
        return Err(DiffError::Header);
    }
    let digest = |s: &str, i| -> Result<[u8; 32], DiffError> {
        let mut d = [0u8; 32];
        hex::decode_to_slice(s, &mut d).map_err(|_| DiffError::Malformed(i))?;
        Ok(d)
    };
    let (i, from) = next("from ")?;
    if digest(&from, i)? != text_digest(base) {
        return Err(DiffError::WrongBase);
    }
    let (i, to) = next("to ")?;
    let to = digest(&to, i)?;
    let mut src = base.split_inclusive('\n');
    let mut out = String::with_capacity(base.len());
    let mut final_newline = true;
    loop {
        let (i, cmd) = next("")?;
        if cmd == "end" {
            break;
        }
        if cmd == "no-final-newline" {
            final_newline = false;
            continue;
        }
        let (op, n) = cmd.split_once(' ').ok_or(DiffError::Malformed(i))?;
        let n: usize = n.parse().map_err(|_| DiffError::Malformed(i))?;
        for _ in 0..n {
            match op {
                "k" => out.push_str(src.next().ok_or(DiffError::PastEnd)?),
                "d" => {
                    src.next().ok_or(DiffError::PastEnd)?;
                }
                "a" => {
                    let (_, l) = next("")?;
                    out.push_str(&l);
                    out.push('\n');
                }
                _ => return Err(DiffError::Malformed(i)),
            }
            if out.len() > MAX_DIFF_LEN {
                return Err(DiffError::TooLong);
            }
        }
    }
    let left = src.count();
    if left > 0 {
        return Err(DiffError::Unconsumed(left));
    }
    if !final_newline && out.ends_with('\n') {
        out.pop();
    }
    if text_digest(&out) != to {
        return Err(DiffError::WrongResult);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(a: &str, b: &str) -> String {
        let d = make_diff(a, b);
        assert_eq!(diff_base(&d), Some(text_digest(a)));
        assert_eq!(apply_diff(a, &d).as_deref(), Ok(b), "diff:\n{d}");
        d
    }

    /// Diffs rebuild the target exactly: changed, inserted, dropped lines; documents with and
    /// without a final newline; empty ones; identical ones (a diff of a few lines).
    #[test]
    fn diffs_rebuild_the_target_exactly() {
        let a = "head\nrelay 1 x\nrelay 2 x\nrelay 3 x\nsig A\n";
        let b = "head\nrelay 1 x\nrelay 2 y\nrelay 4 x\nsig B\n";
        let d = roundtrip(a, b);
        assert!(d.contains("k 2\n") && d.contains("relay 4 x\n"));
        roundtrip(a, a);
        roundtrip("", a);
        roundtrip(a, "");
        roundtrip("x\ny", "x\nz");
        roundtrip("x\ny\n", "x\ny");
        roundtrip("x\ny", "x\ny\n");
        assert!(roundtrip(a, a).len() < 200);
    }

    /// A diff applied to another base, or altered, or running past its base, or leaving base
    /// lines over, is refused; so is one whose result is not the named target.
    #[test]
    fn wrong_or_altered_diffs_are_refused() {
        let a = "one\ntwo\nthree\n";
        let b = "one\n2\nthree\n";
        let d = make_diff(a, b);
        assert_eq!(apply_diff("other\n", &d), Err(DiffError::WrongBase));
        assert_eq!(apply_diff(a, &d.replace(DIFF_HEADER, "nope")), Err(DiffError::Header));
        assert_eq!(apply_diff(a, &d.replace("\n2\n", "\nX\n")), Err(DiffError::WrongResult));
        assert_eq!(apply_diff(a, &d.replace("k 1\n", "k 9\n")), Err(DiffError::PastEnd));
        let short = d.replacen("k 1\nend\n", "end\n", 1);
        assert!(matches!(apply_diff(a, &short), Err(DiffError::Unconsumed(1)) | Err(DiffError::WrongResult)), "{short}");
        assert!(matches!(apply_diff(a, &d.replace("d 1", "q 1")), Err(DiffError::Malformed(_))));
        assert!(matches!(apply_diff(a, "allium-consensus-diff 1\n"), Err(DiffError::Malformed(_))));
    }
}
