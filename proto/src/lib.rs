//! Sans-IO protocol core of Allium.
//!
//! Bytes in, values out. Nothing in this crate reads a clock, opens a socket or spawns a task:
//! time is passed in as unix seconds (`now: u64`) and randomness as `&mut impl RngCore + CryptoRng`.
//!
//! Layout:
//! - [`ids`]: relay identities and fingerprints.
//! - [`ext`]: the extension field carried by every message that the roadmap will extend.
//! - [`cell`]: fixed-size link cells and their commands.
//! - [`circuit`]: client and relay circuits as state machines (cells and time in, events and cells out).
//! - [`early`]: RELAY_EARLY, which bounds circuit length without revealing positions.
//! - [`flow`]: flow-control parameters, the circuit receive window and SENDME tokens.
//! - [`congestion`]: a circuit sender's congestion window (Vegas with slow start).
//! - [`frag`]: reassembly of handshake messages that span several cells (capped in bytes and time).
//! - [`relay_msg`]: relay messages carried inside relay cells.
//! - [`link`]: the link handshake payloads (version negotiation, initiator certificate).
//! - [`crypto`]: the per-hop circuit handshake (ntor), key derivation and layered relay-cell crypto.
//! - [`socks`], [`socks4`]: the SOCKS5 and SOCKS4/4a server-side parser.
//! - [`hs`]: onion services (addresses, blinded keys, descriptors and their encryption, the HSDir
//!   ring and cache, the ring value of a period).
//! - [`http_connect`]: the HTTP CONNECT proxy request parser.
//! - [`policy`]: exit policies.
//! - [`dir_stream`]: the request and response on a directory stream (BEGIN_DIR).
//! - [`doc`]: network documents (relay descriptor, vote, consensus) returned unchecked until verified.
//! - [`time`]: Unix times as readable UTC dates, the one formatter for logs and operator output.
//!
//! Not in this crate: anything with I/O (see `allium-net`), authority scheduling (`allium-directory`).

pub mod cell;
pub mod circuit;
pub mod congestion;
pub mod crypto;
pub mod dir_stream;
pub mod doc;
pub mod early;
pub mod ext;
pub mod flow;
pub mod frag;
pub mod hs;
pub mod http_connect;
pub mod ids;
pub mod link;
pub mod policy;
pub mod reader;
pub mod relay_msg;
pub mod socks;
pub mod socks4;
pub mod time;
