//! The tokio layer shared by every Allium role.
//!
//! Layout:
//! - [`accept`]: accepting TCP connections, one task each, within the connection limits.
//! - [`limits`]: what a peer can make this node spend: limits, token buckets, counters.
//! - [`config`]: config sections shared by all roles and TOML loading with one-line errors.
//! - [`keys`]: a node's long-term keys in its data directory.
//! - [`link`]: TCP plus the Noise link handshake.
//! - [`level_io`]: TCP reads and writes that never wait on a socket after a short transfer.
//! - [`frame_reader`]: a link's transport messages read cancel-safely (a quiet link frees its buffer).
//! - [`log_rate`]: warn only when an expected failure lasts; rate-limit repeated errors.
//! - [`mem_trim`]: freed memory handed back to the system after a burst.
//! - [`cell_queue`]: a circuit's inbound cell queue (storage only while cells wait).
//! - `writer_queue`: a link's outbound cell queue (backpressure; storage only while cells wait).
//! - [`channel`]: the channel reactor (reader and writer tasks of one link, its circuit table).
//! - [`stream`]: streams on a circuit end: congestion window, XON/XOFF, SENDMEs; an open stream
//!   as a value (`DataStream`: spliced to a socket, or read and written in place); BEGINs answered.
//! - [`reactor`]: the one loop that drives a circuit end (client or relay hop) over its link:
//!   cells, stream events, answers to incoming streams, the end's own events and deadlines.
//! - [`pool`]: open links by peer identity.
//! - [`metrics`]: process-wide counters, gauges and histograms (Prometheus text).
//! - [`operator`]: the control socket (`allium status`) and the metrics endpoint.
//!
//! Not in this crate: protocol encodings and crypto (`allium-proto`), role logic (`allium-relay`,
//! `allium-client`, `allium-directory`).

pub mod accept;
pub mod cell_queue;
mod writer_queue;
pub mod limits;
pub mod config;
pub mod keys;
pub mod channel;
pub mod link;
pub mod level_io;
pub mod frame_reader;
pub mod log_capture;
pub mod log_rate;
pub mod mem_trim;
pub mod stream;
pub mod reactor;
pub mod pool;
pub mod metrics;
pub mod operator;
