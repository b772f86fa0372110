//! `allium`: one executable for every role of the Allium network.
//!
//! Layout:
//! - [`cli`]: the command line (clap): `authority`, `relay`, `client`, `keygen`, `testnet`.
//! - [`roles`]: runs one node: load its config, load or create its keys, start logging, hand
//!   over to the role's library (`allium-directory`, `allium-relay`, `allium-client`).
//! - [`logging`]: the tracing subscriber (`RUST_LOG`, optional `--log-file`).
//! - [`signals`]: waiting for Ctrl-C / SIGTERM (stop) and SIGHUP (reload).
//! - [`reload`]: SIGHUP reads the config again and applies what can change live.
//! - [`testnet`]: `allium testnet`, a whole loopback network of node processes.
//! - [`plan`]: `allium network plan`, keys and configs for a network on many hosts, and
//!   `allium keygen --fallback-entry`.
//! - [`directory_cmd`]: `allium directory show`, the current consensus printed readably.
//! - [`status_cmd`]: `allium status`, a running node's status from its control socket.
//!
//! Not in this crate: any protocol logic. The binary only wires files, processes and the
//! libraries together.

#![deny(unsafe_code)]

mod bwscan;
mod cli;
mod directory_cmd;
mod logging;
mod plan;
mod reload;
mod roles;
mod signals;
mod status_cmd;
mod testnet;
mod wrap;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Authority(args) => roles::authority(&args),
        cli::Command::Relay(args) => roles::relay(&args),
        cli::Command::Client(args) => roles::client(&args),
        cli::Command::Keygen(args) if args.fallback_entry => plan::fallback_entry(&args),
        cli::Command::Keygen(args) => roles::keygen(&args),
        cli::Command::Testnet(args) => testnet::run(args),
        cli::Command::Network(cli::NetworkCommand::Plan(args)) => plan::run(&args),
        cli::Command::Run(args) => wrap::run(args),
        cli::Command::Directory(cli::DirectoryCommand::Show { config }) => directory_cmd::show(&config),
        cli::Command::Status(args) => status_cmd::run(&args),
    }
}
