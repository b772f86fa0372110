//! Network documents: relay descriptors, votes, consensuses and detached consensus signatures.
//!
//! Every document is text: ASCII, LF line ends, one `keyword arg arg...` per line. The exact
//! formats are specified in `docs/PROTOCOL.md` (directory section); this module is the reference
//! implementation of that text.
//!
//! # Check before use
//!
//! Parsers never hand out a trusted value. [`RelayDescriptor::parse`], [`Vote::parse`] and
//! [`Consensus::parse`] check syntax only and return [`UnverifiedDescriptor`],
//! [`UnverifiedVote`] and [`UnverifiedConsensus`]. Only their `verify` methods (signatures;
//! for votes and consensuses also the signing-key certificates, and for a consensus its validity
//! interval, against a caller-supplied `now`) give the value. A method that skips a check is
//! named `dangerously_*`.
//!
//! # Rules shared by every document
//!
//! - Size caps: [`MAX_DESCRIPTOR_LEN`] for a descriptor, [`MAX_VOTE_LEN`] for a vote or consensus,
//!   [`MAX_SIGNATURE_DOC_LEN`] for a detached signature; line caps [`MAX_DESCRIPTOR_LINES`] and
//!   [`MAX_VOTE_LINES`]; at most 256 arguments on a line that is read.
//! - Bytes are printable ASCII (0x20..=0x7E) or LF; the text ends with LF; no empty lines; one
//!   space between items; no leading or trailing space.
//! - Known keywords come in a fixed order; a single-valued keyword may not repeat.
//! - An unknown keyword is ignored, unless it starts with `critical-`: then the document is
//!   rejected. A keyword known to the document but in the wrong place is an error.
//! - Identities are fingerprints (64 uppercase hex digits). Other keys, digests and signatures are
//!   unpadded standard base64 (RFC 4648 §4, no `=`), in canonical form.
//! - Signatures are ed25519 (`verify_strict`) over `PREFIX || SHA-256(signed part)`, where each
//!   document type has its own prefix (domain separation) and the signed part is every byte
//!   before the signature line(s).
//!
//! # Flags, parameters, protocol versions, weights
//!
//! Relay entries carry `flags` and `weight` ([`RelayFlags`]); vote and consensus headers carry
//! `params`, `recommended-protocols` and `required-protocols`; the consensus header carries
//! `bandwidth-weights` ([`PositionWeights`]). [`compute_consensus`] takes flags by majority of
//! configured authorities, parameters and weights by low median.
//!
//! # Shared random value
//!
//! Votes carry `shared-rand-*` commit / reveal lines and the consensus header carries
//! `shared-rand-previous` and `shared-rand-current` ([`SharedRandom`]), computed by
//! [`compute_shared_random`] in [`srv`] (one SRV period per voting interval).
//!
//! # Authority signing keys
//!
//! Each authority's identity key certifies a medium-term signing key with an expiry
//! ([`AuthorityCert`], an `authority-cert` line). Votes, consensus signatures and detached
//! signatures are made by the signing key and carry that line; a signature counts only with a
//! certificate from the configured identity that is valid at the time of verification. So the
//! identity key can stay offline. Anything an old client must not ignore uses a `critical-`
//! keyword or a new document version.

mod authcert;
mod compact;
mod consensus;
mod descriptor;
pub mod diff;
mod entry;
mod flags;
pub(crate) mod lines;
pub mod microdesc;
mod protocols;
pub mod srv;
mod vote;

#[cfg(test)]
mod tests;

pub use authcert::{AuthorityCert, AuthoritySigner, CertError, AUTHORITY_CERT_KW, AUTHORITY_CERT_PREFIX, MAX_CERT_SKEW_SECS};
pub use consensus::{
    compute_consensus, low_median, Consensus, ConsensusError, ConsensusMeta, DetachedError, DetachedSignature,
    DirSignature, UnverifiedConsensus,
};
pub use descriptor::{certify_link_key, verify_link_cert, RelayDescriptor, UnverifiedDescriptor};
pub use compact::ConsensusEntry;
pub use entry::ConsensusRelay;
pub use flags::{encode_params, param_name_ok, parse_params, Position, PositionWeights, RelayFlags, MAX_PARAMS, WEIGHT_SCALE};
pub use microdesc::Microdesc;
pub use protocols::Protocols;
pub use srv::{compute_shared_random, srv_commit, srv_value, SharedRandom, SrvValue, VoteSrv};
pub use vote::{UnverifiedVote, Vote};

/// Largest relay descriptor accepted (bytes).
pub const MAX_DESCRIPTOR_LEN: usize = 16 * 1024;
/// Largest vote or consensus accepted (bytes).
pub const MAX_VOTE_LEN: usize = 8 * 1024 * 1024;
/// Largest consensus accepted (bytes); the same cap as a vote.
pub const MAX_CONSENSUS_LEN: usize = MAX_VOTE_LEN;
/// Most lines in a relay descriptor.
pub const MAX_DESCRIPTOR_LINES: usize = 512;
/// Most lines in a vote or consensus (bounds parser memory: about 12 MiB of line records).
pub const MAX_VOTE_LINES: usize = 262_144;
/// Largest detached-signature document accepted (bytes).
pub const MAX_SIGNATURE_DOC_LEN: usize = 1024;

/// Most `policy` lines in one descriptor or relay entry.
pub const MAX_POLICY_RULES: usize = 256;
/// Most family members in one descriptor or relay entry.
pub const MAX_FAMILY: usize = 128;
/// Most `directory-signature` lines in one consensus, and most `authority-cert` lines.
pub const MAX_SIGNATURES: usize = 64;

/// Domain-separation prefix of a relay descriptor signature.
pub const DESCRIPTOR_SIG_PREFIX: &[u8] = b"allium-relay-descriptor-sig-v1\0";
/// Domain-separation prefix of a vote signature.
pub const VOTE_SIG_PREFIX: &[u8] = b"allium-vote-sig-v1\0";
/// Domain-separation prefix of a consensus signature.
pub const CONSENSUS_SIG_PREFIX: &[u8] = b"allium-consensus-sig-v1\0";
/// Prefix of the message a relay's identity key signs to certify its link key.
pub use crate::link::LINK_CERT_CONTEXT as LINK_CERT_PREFIX;

/// The three times that bound a vote or consensus (unix seconds).
///
/// `valid_after < fresh_until <= valid_until`. A consensus may be used while
/// `valid_after <= now <= valid_until`; after `fresh_until` a newer one should exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lifetime {
    pub valid_after: u64,
    pub fresh_until: u64,
    pub valid_until: u64,
}

impl Lifetime {
    /// A lifetime, if the times are in order (`valid_after < fresh_until <= valid_until`).
    pub fn new(valid_after: u64, fresh_until: u64, valid_until: u64) -> Option<Lifetime> {
        (valid_after < fresh_until && fresh_until <= valid_until).then_some(Lifetime { valid_after, fresh_until, valid_until })
    }

    /// The network's voting interval `I` this lifetime implies: every consensus, regular or from
    /// a bootstrap round, has `valid-until = fresh-until + 2I` (a bootstrap consensus's
    /// `fresh-until − valid-after` is shorter than `I`). For a lifetime not made that way,
    /// `fresh-until − valid-after`.
    pub fn voting_interval(&self) -> u64 {
        match (self.valid_until - self.fresh_until) / 2 {
            0 => self.fresh_until - self.valid_after,
            i => i,
        }
    }
}

/// Why a document was rejected. Line numbers are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    #[error("document is {len} bytes, more than the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("line {line}: byte that is not printable ASCII")]
    BadByte { line: usize },
    #[error("document does not end with a newline")]
    NoFinalNewline,
    #[error("line {line}: empty line or bad spacing")]
    BadSpacing { line: usize },
    #[error("line {line}: malformed keyword")]
    BadKeyword { line: usize },
    #[error("not a {expected} document")]
    WrongDocumentType { expected: &'static str },
    #[error("line {line}: unsupported {doc} version")]
    UnsupportedVersion { line: usize, doc: &'static str },
    #[error("line {line}: keyword '{keyword}' out of place")]
    OutOfOrder { line: usize, keyword: String },
    #[error("line {line}: duplicate '{keyword}'")]
    Duplicate { line: usize, keyword: String },
    #[error("missing '{keyword}'")]
    Missing { keyword: &'static str },
    #[error("line {line}: unknown critical keyword '{keyword}'")]
    UnknownCritical { line: usize, keyword: String },
    #[error("line {line}: '{keyword}': {reason}")]
    BadValue { line: usize, keyword: String, reason: &'static str },
    #[error("line {line}: bad exit policy rule: {reason}")]
    BadPolicy { line: usize, reason: String },
    #[error("too many {what} (limit {limit})")]
    TooMany { what: &'static str, limit: usize },
    #[error("line {line}: entries not sorted by identity or duplicated")]
    Unsorted { line: usize },
    #[error("times out of order (need valid-after < fresh-until <= valid-until)")]
    BadLifetime,
    #[error("signature does not verify with the identity key in the document")]
    BadSignature,
    #[error("link-key certificate does not verify")]
    BadLinkCert,
    #[error("{0}")]
    BadCert(CertError),
}
