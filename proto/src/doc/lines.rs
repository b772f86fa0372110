//! The line layer shared by every document: splitting and checking lines, reading sections with
//! a fixed keyword order, and the value encodings (fingerprints, base64, integers).

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;

use super::DocError;
use crate::ids::RelayId;

/// Longest keyword accepted.
const MAX_KEYWORD_LEN: usize = 64;
/// Most arguments read from one line.
pub(crate) const MAX_ARGS: usize = 256;

/// One line of a document.
#[derive(Debug, Clone)]
pub(crate) struct Line<'a> {
    /// 1-based line number.
    pub no: usize,
    /// Byte offset of the line's first byte in the document.
    pub start: usize,
    pub kw: &'a str,
    /// Everything after the keyword and its space ("" if none).
    pub rest: &'a str,
}

impl<'a> Line<'a> {
    pub fn bad(&self, reason: &'static str) -> DocError {
        DocError::BadValue { line: self.no, keyword: self.kw.to_string(), reason }
    }

    /// The arguments (split on demand, so a document's lines cost no allocation until read).
    pub fn args(&self) -> Result<Vec<&'a str>, DocError> {
        if self.rest.is_empty() {
            return Ok(Vec::new());
        }
        if self.rest.bytes().filter(|&b| b == b' ').count() >= MAX_ARGS {
            return Err(self.bad("more than 256 arguments"));
        }
        Ok(self.rest.split(' ').collect())
    }

    /// The arguments, which must number exactly `n`.
    pub fn exactly(&self, n: usize) -> Result<Vec<&'a str>, DocError> {
        let args = self.args()?;
        if args.len() == n {
            Ok(args)
        } else {
            Err(self.bad(match n {
                0 => "takes no argument",
                1 => "takes exactly one argument",
                2 => "takes exactly two arguments",
                _ => "wrong number of arguments",
            }))
        }
    }

    pub fn one(&self) -> Result<&'a str, DocError> {
        Ok(self.exactly(1)?[0])
    }
}

/// Splits `text` into lines after checking the size cap, the line cap and the byte-level rules.
pub(crate) fn split(text: &str, limit: usize, max_lines: usize) -> Result<Vec<Line<'_>>, DocError> {
    if text.len() > limit {
        return Err(DocError::TooLarge { len: text.len(), limit });
    }
    let n_lines = text.bytes().filter(|&b| b == b'\n').count();
    if n_lines > max_lines {
        return Err(DocError::TooMany { what: "lines", limit: max_lines });
    }
    if !text.ends_with('\n') {
        return Err(DocError::NoFinalNewline);
    }
    let mut out = Vec::with_capacity(n_lines);
    let mut start = 0;
    for (i, raw) in text[..text.len() - 1].split('\n').enumerate() {
        let no = i + 1;
        if raw.bytes().any(|b| !(0x20..=0x7e).contains(&b)) {
            return Err(DocError::BadByte { line: no });
        }
        if raw.is_empty() || raw.starts_with(' ') || raw.ends_with(' ') || raw.contains("  ") {
            return Err(DocError::BadSpacing { line: no });
        }
        let (kw, rest) = raw.split_once(' ').unwrap_or((raw, ""));
        let kw_ok = kw.len() <= MAX_KEYWORD_LEN
            && kw.as_bytes()[0].is_ascii_lowercase()
            && kw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !kw_ok {
            return Err(DocError::BadKeyword { line: no });
        }
        out.push(Line { no, start, kw, rest });
        start += raw.len() + 1;
    }
    Ok(out)
}

/// How often a keyword may appear in a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mult {
    /// Exactly once.
    Once,
    /// One or more times, on consecutive known lines.
    Many,
    /// Zero or more times, on consecutive known lines.
    Any,
}

/// The known lines of one section, by position in its spec.
pub(crate) struct Section<'s, 'a> {
    spec: &'static [(&'static str, Mult)],
    found: Vec<Vec<&'s Line<'a>>>,
}

impl<'s, 'a> Section<'s, 'a> {
    /// Reads `lines` against `spec` (keywords in their fixed order). `doc_keywords` lists every
    /// keyword known anywhere in the document: one of those outside `spec` is out of place.
    pub fn read(
        lines: &'s [Line<'a>],
        spec: &'static [(&'static str, Mult)],
        doc_keywords: &[&str],
    ) -> Result<Self, DocError> {
        let mut found: Vec<Vec<&Line>> = vec![Vec::new(); spec.len()];
        let mut cur = 0usize;
        for l in lines {
            match spec.iter().position(|(k, _)| *k == l.kw) {
                Some(i) => {
                    if i < cur {
                        return Err(DocError::OutOfOrder { line: l.no, keyword: l.kw.to_string() });
                    }
                    if !found[i].is_empty() {
                        if spec[i].1 == Mult::Once {
                            return Err(DocError::Duplicate { line: l.no, keyword: l.kw.to_string() });
                        }
                        if i != cur {
                            return Err(DocError::OutOfOrder { line: l.no, keyword: l.kw.to_string() });
                        }
                    }
                    cur = i;
                    found[i].push(l);
                }
                None if doc_keywords.contains(&l.kw) => {
                    return Err(DocError::OutOfOrder { line: l.no, keyword: l.kw.to_string() })
                }
                None if l.kw.starts_with("critical-") => {
                    return Err(DocError::UnknownCritical { line: l.no, keyword: l.kw.to_string() })
                }
                None => {}
            }
        }
        for (i, (k, m)) in spec.iter().enumerate() {
            if *m != Mult::Any && found[i].is_empty() {
                return Err(DocError::Missing { keyword: k });
            }
        }
        Ok(Section { spec, found })
    }

    fn index(&self, kw: &str) -> usize {
        self.spec.iter().position(|(k, _)| *k == kw).expect("keyword not in this section's spec")
    }

    /// The line of a `Once` keyword.
    pub fn get(&self, kw: &str) -> &'s Line<'a> {
        self.found[self.index(kw)][0]
    }

    /// All lines of a keyword.
    pub fn all(&self, kw: &str) -> &[&'s Line<'a>] {
        &self.found[self.index(kw)]
    }
}

// ---- values ----

pub(crate) fn fingerprint(l: &Line, s: &str) -> Result<RelayId, DocError> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        return Err(l.bad("not a fingerprint (64 uppercase hex digits)"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| l.bad("not a fingerprint (64 uppercase hex digits)"))?;
    Ok(RelayId(out))
}

pub(crate) fn b64<const N: usize>(l: &Line, s: &str) -> Result<[u8; N], DocError> {
    // Checking the length first bounds the work and rejects any padding.
    if s.len() != (N * 4).div_ceil(3) {
        return Err(l.bad("wrong length for unpadded base64 of this field"));
    }
    let v = STANDARD_NO_PAD.decode(s).map_err(|_| l.bad("not canonical unpadded base64"))?;
    v.try_into().map_err(|_| l.bad("wrong decoded length"))
}

/// Unpadded canonical base64 of a variable-length field of at most `max` bytes (at least one).
pub(crate) fn b64_var(l: &Line, s: &str, max: usize) -> Result<Vec<u8>, DocError> {
    if s.is_empty() || s.len() > (max * 4).div_ceil(3) {
        return Err(l.bad("base64 field empty or too long"));
    }
    let v = STANDARD_NO_PAD.decode(s).map_err(|_| l.bad("not canonical unpadded base64"))?;
    if v.len() > max {
        return Err(l.bad("base64 field too long"));
    }
    Ok(v)
}

pub(crate) fn enc64(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

pub(crate) fn uint(l: &Line, s: &str) -> Result<u64, DocError> {
    let canonical = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(l.bad("not a canonical decimal integer"));
    }
    s.parse().map_err(|_| l.bad("integer too large"))
}

/// A nickname: 1–19 ASCII letters or digits.
pub(crate) fn nickname_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks the first line is `<doc_type> 1`.
pub(crate) fn check_type_line(lines: &[Line], doc_type: &'static str) -> Result<(), DocError> {
    let first = lines.first().ok_or(DocError::WrongDocumentType { expected: doc_type })?;
    if first.kw != doc_type {
        return Err(DocError::WrongDocumentType { expected: doc_type });
    }
    if first.rest != "1" {
        return Err(DocError::UnsupportedVersion { line: first.no, doc: doc_type });
    }
    Ok(())
}
