//! Integration tests of the `allium` binary: one test binary (run with
//! `cargo test --test integration`), one module per area.
//!
//! - [`configs`]: the example configs in `configs/` parse, and config errors are one line.
//! - [`deploy_files`]: the systemd units in `configs/systemd/` are hardened and run each role.
//! - [`advertise`]: a relay behind a port forward, listed and used at `relay.advertise_address`.
//! - [`dir_fetch`]: clients fetch the directory through fallbacks and guards, never authorities.
//! - [`authority_loss`]: two of three authorities down: the last consensus for the grace only (A34).
//! - [`authority_restarts`]: authorities keep relays' uptime history and descriptors across
//!   restarts.
//! - [`flow_params`]: the consensus's flow-control windows are used by both ends of circuits.
//! - [`e2e`]: whole networks started with `allium testnet`, carrying real traffic.
//! - [`clients`]: `allium testnet --clients N`: every client carries streams.
//! - [`hundred_relays`]: 100 relays and 10 clients on one machine carry 200 concurrent fetches.
//! - [`predicted_ports`]: circuits are built ahead for the ports streams used.
//! - [`extend_target`]: relays extend only to the consensus's address and link key (A11).
//! - [`control_cells`]: DROP or an onion-service acknowledgement from a middle hop closes the
//!   client's circuit (A17).
//! - [`tamper`]: relays that alter cells get circuits destroyed (THREATS A14).
//! - [`destroy_reasons`]: a far hop's DESTROY reason reaches the client end to end, relays see a
//!   fixed one (THREATS A17).
//! - [`early_cells`]: RELAY_EARLY bounds circuit length; every position sees the same CREATE
//!   (THREATS A16).
//! - [`embed`]: a program using the client through `allium_client::embed` (and the fetch example).
//! - [`socks_front`]: SOCKS4/4a, SOCKS5 (IPv6, RESOLVE) and HTTP CONNECT front ends of the client.
//! - [`exit_retry`]: a stream one exit refuses is retried on another exit.
//! - [`latency`]: 1 MiB downloads, one at a time and 8 at once, at 10 ms per link.
//! - [`stall_recovery`]: a relay that stops forwarding: stalled streams are ended, BEGINs
//!   without CONNECTED retried elsewhere, the circuit retired.
//! - [`blackhole`]: a relay that never answers makes builds time out and succeed elsewhere (A32).
//! - [`hs_circuits`]: HSDir upload and fetch over 4-hop vanguard circuits (`CircMgr::to_relay`).
//! - [`onion_connect`]: a SOCKS client reaching onion services by `.allium` address.
//! - [`rendezvous`]: relays as introduction and rendezvous points, joining two circuits.
//! - [`onion`]: the testnet's onion service reached by its address through SOCKS (A5, A7, A13,
//!   A18, A20, restarts, period boundaries).
//! - [`small_network`]: an onion service on a network too small for its paths says why and
//!   starts once relays join.
//! - [`onion_service`]: a client hosting an onion service, reached by introduction and rendezvous.
//! - [`keygen`]: `allium keygen --authority` and authorities with an offline identity (A8).
//! - [`plan`]: `allium network plan`: a network of loopback "hosts" run from its generated
//!   configs alone, carrying a file through an exit and an onion service.
//! - [`messages`]: what operators read: key permissions, config and listen errors, no warning
//!   from a healthy network.
//! - [`status_page`]: an authority's HTML status page lists every relay; headless Chromium
//!   renders it at a phone's size (needs Debian's `chromium`).
//! - [`wrap`]: `allium run -- COMMAND` sends TCP and names through the client, refuses UDP.
//! - [`test_build`]: the test command reuses the quick start's build (no feature differs).
//! - [`support`]: the shared fixtures (a test network, a SOCKS5 client, an HTTP file server).
//!
//! Tests that start networks run in parallel (6 at a time: `.cargo/config.toml`): each gets its
//! own directory and ephemeral ports. libtest starts them in name order, so the longest (the
//! authority tests, which wait out consensus lifetimes and restarts) are in modules named early.

mod advertise;
mod authority_loss;
mod authority_restarts;
mod bandwidth;
mod blackhole;
mod clients;
mod configs;
mod consensus_diff;
mod control_cells;
mod destroy_reasons;
mod deploy_files;
mod dir_fetch;
mod dos;
mod e2e;
mod early_cells;
mod embed;
mod extend_target;
mod flow_params;
mod exit_retry;
mod hs_circuits;
mod hundred_relays;
mod intro_flood;
mod keygen;
mod short_sends;
mod latency;
mod link_reuse;
mod memory;
mod messages;
mod onion;
mod onion_connect;
mod onion_rotation;
mod onion_service;
mod operators;
mod socks_front;
mod paths;
mod predicted_ports;
mod plan;
mod rendezvous;
mod small_network;
mod stall_recovery;
mod status_page;
mod tamper;
mod upload_burst;
mod upload_retry;
mod test_build;
mod wrap;
mod support;
