//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::testnet::TestnetArgs;

/// Allium: an onion-routed anonymity network. One binary runs every role.
#[derive(Debug, Parser)]
#[command(name = "allium", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a directory authority (votes on and serves the consensus).
    Authority(RoleArgs),
    /// Run a relay; with `[exit] enabled = true` in its config it is also an exit.
    Relay(RoleArgs),
    /// Run a client: builds circuits and offers a SOCKS5 proxy to applications.
    Client(RoleArgs),
    /// Create the node keys in a data directory (or load them) and print the fingerprint;
    /// with --authority, also certify an authority signing key.
    Keygen(KeygenArgs),
    /// Start a whole test network on loopback addresses, each node its own process.
    Testnet(TestnetArgs),
    /// Plan a network spread over many hosts.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Run a program with its TCP connections and name lookups sent through a client's SOCKS5
    /// proxy and its UDP refused (proxychains-ng + torsocks): `allium run -- COMMAND [ARGS...]`.
    Run(crate::wrap::RunArgs),
    /// Inspect the directory.
    #[command(subcommand)]
    Directory(DirectoryCommand),
    /// Ask a running node (on its control socket) what it is doing: role, uptime, bootstrap,
    /// consensus, guards, circuits, streams, bytes, onion services, limits hit.
    Status(StatusArgs),
}

/// Arguments of `allium status`: which node (its config, or its data directory).
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node's TOML config file (its [node] data_dir holds the control socket).
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir", required_unless_present = "data_dir")]
    pub config: Option<PathBuf>,
    /// The node's data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print the status as one JSON object (times are Unix seconds).
    #[arg(long)]
    pub json: bool,
    /// Answer only once CONDITION holds: `PATH OP VALUE`, PATH the status field's keys joined
    /// by dots (as in --json), OP one of >= <= > < == for numbers or ~ for "the text contains",
    /// e.g. `bootstrap.percent>=100`. Exits 1 if it does not hold within --wait-secs.
    #[arg(long, value_name = "CONDITION")]
    pub wait: Option<String>,
    /// How long --wait waits at most.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub wait_secs: u64,
}

/// `allium directory ...`
#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Fetch and verify the current consensus from the authorities in a node's config and print
    /// it readably: validity, signatures, parameters, protocols, weights, relays and flags.
    Show {
        /// Any node's TOML config: its [node] address and [network] authorities are used.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// `allium network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Read a hosts file (one `[[node]]` per node: name, role, address, port) and write, for
    /// each node, `OUT/<name>/` with its keys and a complete config.toml (see README.md,
    /// "Planning a network on many hosts").
    Plan(crate::plan::PlanArgs),
}

/// Arguments shared by the node roles.
#[derive(Debug, Args)]
pub struct RoleArgs {
    /// The node's TOML config file (see configs/ for documented examples).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Append logs to this file instead of writing them to stderr.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// Arguments of `allium keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The node's data directory (the `node.data_dir` of its config). Created if missing. With
    /// `--authority`: where the identity key is kept (it can stay offline).
    #[arg(long, value_name = "DIR", required_unless_present = "onion_client_auth")]
    pub data_dir: Option<PathBuf>,
    /// Also certify a fresh authority signing key (and the link key) with the identity, and
    /// write the signing key, its certificate and the link-key certificate to `--out`.
    #[arg(long)]
    pub authority: bool,
    /// Lifetime of the signing-key certificate, in days (with `--authority`).
    #[arg(long, value_name = "N", default_value_t = 90, requires = "authority", value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub signing_key_lifetime_days: u64,
    /// Where to write the authority's run-time files (default: `--data-dir`). Copy them to the
    /// authority's data directory.
    #[arg(long, value_name = "DIR2", requires = "authority")]
    pub out: Option<PathBuf>,
    /// Instead: print a fresh client-authorization key pair for onion services (`secret:` for
    /// the client's `[[client.onion_auth]]`, `public:` for the service's
    /// `authorized_clients`). Nothing is written.
    #[arg(long, conflicts_with_all = ["authority", "data_dir"])]
    pub onion_client_auth: bool,
    /// Instead: print this relay's `[[client.fallback_dirs]]` entry (nickname, identity,
    /// address, link and onion public keys) from the key files in `--data-dir`, for clients'
    /// configs. Creates nothing: the keys must exist.
    #[arg(long, requires_all = ["data_dir", "address"], conflicts_with_all = ["authority", "onion_client_auth"])]
    pub fallback_entry: bool,
    /// The relay's OR address, IP:PORT (its `node.address` and `relay.or_port`), with
    /// `--fallback-entry`.
    #[arg(long, value_name = "IP:PORT", requires = "fallback_entry")]
    pub address: Option<std::net::SocketAddr>,
    /// The relay's nickname, with `--fallback-entry` (default: the data directory's name).
    #[arg(long, value_name = "NAME", requires = "fallback_entry")]
    pub nickname: Option<String>,
}
