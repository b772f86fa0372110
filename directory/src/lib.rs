//! Allium's directory: authorities that collect relay descriptors, vote, agree on one consensus
//! and serve it; the relay side that publishes descriptors; the client side that fetches and
//! verifies the consensus.
//!
//! # Layout
//!
//! - [`config`]: the authority's config file (`[node]`, `[network]`, `[authority]`).
//! - [`schedule`]: the voting schedule as pure functions of the interval and the time;
//!   [`clock`]: the one clock an authority reads (with a test-only offset) and HTTP dates.
//! - [`authkeys`]: the authority's key files: identity (optional at run time), signing key
//!   and certificate, link key and link-key certificate; renewal; `allium keygen --authority`.
//! - [`authority`]: the authority's state and acceptance rules ([`AuthorityState`], no I/O;
//!   it also keeps its shared-random reveals, in memory),
//!   and [`run_authority`], which serves HTTP and runs the vote / sign / publish loop.
//! - [`server`]: the HTTP endpoints (a thin layer over the state); the table of endpoints is
//!   in its module docs. [`access_log`]: the directory port's accept loop and connections
//!   (limits, idle and request-head timeouts, debug-level access log).
//! - [`bootstrap`]: bootstrap rounds, the first consensus without waiting for the schedule.
//! - [`publish`]: [`publish_descriptor`], the relay uploading its descriptor to every authority.
//! - [`fetch`]: [`fetch_consensus`], downloading and verifying a consensus.
//! - [`netdir`]: [`NetDir`], the verified, time-bounded network view clients and relays use
//!   (usable relays, mutual families, position weights, parameters, shared random value).
//! - [`flags`]: the flag rules, as pure functions; [`params`]: the consensus parameter table.
//! - [`protocols`]: the required-protocol check nodes run; [`cache`]: the consensus a node
//!   keeps across restarts and uses for a bounded grace after expiry.
//! - [`show`]: a readable rendering of a consensus (`allium directory show`);
//!   [`status_page`]: the network status page (HTML) authorities serve at `/` on the dir port.
//!
//! Document formats and their verification live in `allium_proto::doc`; the full protocol
//! (formats, endpoints, schedule, consensus rules) is in `docs/PROTOCOL.md`.
//!
//! # Not in this crate
//!
//! - Document encoding, parsing and signature checks (`allium_proto::doc`).
//! - Bandwidth measurement (weights come from capped self-reports), consensus diffs and
//!   compression: later directory work. Relays serve the consensus as caches
//!   (`allium-relay`'s `dir_cache`); clients choose where to fetch (`allium-client`'s `dir_fetch`).
//! - Path selection (`allium-client`) and the relay's decision of when to republish
//!   (`allium-relay`, using [`schedule::republish_period_secs`]).

pub mod access_log;
pub mod authkeys;
pub mod authority;
pub mod bootstrap;
pub mod cache;
pub mod clock;
pub mod config;
pub mod fetch;
pub mod microdescs;
pub mod flags;
pub mod history;
pub mod measured;
mod http;
pub mod netdir;
pub mod params;
pub mod protocols;
pub mod show;
pub mod status_page;
pub mod publish;
pub mod schedule;
pub mod server;
mod status;
pub mod vote_gate;

pub use authkeys::{AuthKeyError, AuthorityKeys};
pub use authority::{run_authority, run_authority_on, run_authority_with_status, AuthorityState, AuthorityStatus, ClockReport, VotePolicy};
pub use config::{AuthorityConfig, AuthoritySection};
pub use fetch::{fetch_consensus, FetchAttempt, FetchAttemptError, FetchError};
pub use cache::ConsensusCache;
pub use netdir::NetDir;
pub use protocols::{check_protocols, implemented_protocols};
pub use publish::publish_descriptor;

/// Why an authority stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirError {
    #[error(transparent)]
    Config(#[from] allium_net::config::ConfigError),
    #[error("cannot listen on the directory port {addr}: {err}")]
    Bind { addr: std::net::SocketAddr, err: std::io::Error },
    #[error("data directory: {0}")]
    DataDir(String),
    #[error("cannot make an HTTP client: {0}")]
    Http(String),
    #[error("authority task stopped: {0}")]
    TaskFailed(String),
}

impl From<String> for DirError {
    fn from(s: String) -> Self {
        DirError::TaskFailed(s)
    }
}
