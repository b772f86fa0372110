//! Limits on what a peer can make this node spend (THREATS A23–A30), each with a default, a
//! bound and a counter.
//!
//! Layout:
//! - [`counters`]: one process-wide counter per limit, counted each time it refuses or closes.
//! - [`conn`]: inbound connections, in all and per address, below the file-descriptor limit.
//! - [`bucket`]: token buckets (a rate with a burst), alone and per address.
//! - [`memquota`]: one budget for queued cells; over it the oldest queued data is closed.
//! - [`timed_io`]: a connection closed when it makes no progress (slow or silent peers).
//! - [`rate`]: the operator's rate limit on every byte a relay sends.
//!
//! The values live in a node's optional `[limits]` section ([`LimitsConfig`]); every key has a
//! default and bounds, documented in docs/PROTOCOL.md ("Limits").

pub mod bucket;
pub mod conn;
pub mod counters;
pub mod memquota;
pub mod rate;
pub mod timed_io;

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

pub use counters::LIMITS;

/// The `[limits]` section of any node's config. Zero in a `max_*` key means "derived from the
/// file-descriptor limit" where that is said.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Inbound connections this node keeps open on each listener. 0: half the process's
    /// file-descriptor limit (the rest is kept for outbound links, exit streams and files).
    pub max_connections: usize,
    /// Inbound connections one address keeps open on each listener (IPv6: one /64). Relays
    /// listed in the consensus are not counted on the OR port.
    pub max_connections_per_address: usize,
    /// Seconds a link with no circuits stays open before it is closed.
    pub link_idle_timeout_secs: u64,
    /// The same for a link between two relays (this relay's own links to relays, and inbound
    /// links from relays the consensus lists under the identity and link key they proved):
    /// kept long, so that circuits extend over links that are already open.
    pub relay_link_idle_timeout_secs: u64,
    /// Relays a relay opens links to ahead of need after each consensus (the most weighted;
    /// 0: none), so that circuits extend over open links.
    pub preconnect_relays: usize,
    /// Seconds a directory (HTTP) connection may go without moving a byte before it is closed.
    pub dir_idle_timeout_secs: u64,
    /// Seconds a directory (HTTP) request's head may take to arrive, from its first byte.
    pub dir_header_timeout_secs: u64,
    /// Seconds a relay keeps a circuit on which no cell moved in either direction.
    pub circuit_idle_timeout_secs: u64,
    /// CREATEs per second an address may send (token refill) once it holds at least
    /// `create_min_links` links. Relays listed in the consensus are exempt.
    pub create_rate_per_address: u32,
    /// The burst of that token bucket.
    pub create_burst_per_address: u32,
    /// Links an address must hold before its CREATEs are rate-limited (an ordinary client holds
    /// one link per relay).
    pub create_min_links: usize,
    /// Seconds an address that emptied its bucket has every CREATE refused.
    pub create_defense_secs: u64,
    /// Circuits a link from a client (a peer that proved no relay identity) may hold open.
    pub max_circuits_per_client_link: usize,
    /// Circuits all links from one client address (not a consensus relay) may hold open.
    pub max_circuits_per_address: usize,
    /// Threads that run CREATE handshakes. 0: one fewer than the cores (at least one), so
    /// that a flood of handshakes leaves a core to the threads that forward cells.
    pub handshake_threads: usize,
    /// CREATE handshakes waiting for a worker before new ones are refused at once.
    pub handshake_queue: usize,
    /// A CREATE that waited longer than this for a worker is answered DESTROY (resource limit)
    /// instead of being processed: the queue is over capacity.
    pub handshake_queue_delay_ms: u64,
    /// BEGINs per second one circuit may open at an exit (token refill), and the burst.
    pub begin_rate_per_circuit: u32,
    pub begin_burst_per_circuit: u32,
    /// Outbound connections an exit keeps open for streams. 0: a quarter of the process's
    /// file-descriptor limit.
    pub max_exit_connections: usize,
    /// MiB of cells this node may hold queued (circuit queues and link writer queues) before
    /// it closes the circuits and links holding the oldest queued data.
    pub max_queued_mib: u64,
    /// Relays an authority lists per IP address (more descriptors for one address are refused
    /// unless one there was never proven reachable, which is then forgotten).
    pub max_relays_per_address: usize,
    /// Relay descriptors an authority holds in all (when full it forgets expired ones, then
    /// ones never proven reachable, and refuses only if every one held is proven).
    pub max_relay_descriptors: usize,
    /// Refused vote pushes naming one voter allowed in a row before pushes naming it are
    /// refused unparsed (refilled by one per voting interval).
    pub vote_push_burst: u64,
    /// CREATE handshake messages a relay remembers to refuse replays of.
    pub create_replay_memory: usize,
    /// Streams one circuit may carry at once (at a relay and at an onion service).
    pub max_streams_per_circuit: usize,
    /// RESOLVEs one circuit may have in flight at an exit.
    pub max_resolves_per_circuit: usize,
    /// Onion-service descriptors an HSDir stores, in count and in MiB (over either it evicts
    /// the longest stored).
    pub hsdir_max_descriptors: usize,
    pub hsdir_max_mib: u64,
    /// Seconds a SOCKS or HTTP CONNECT client has to send its whole request.
    pub request_timeout_secs: u64,
    /// Introduction circuits (one per service key) a relay serves as introduction point.
    pub max_intro_circuits: usize,
    /// Cookies waiting at a relay as rendezvous point.
    pub max_rendezvous_cookies: usize,
    /// Seconds a link's write may wait for the peer to take a byte before the link is closed.
    pub link_write_timeout_secs: u64,
    /// Seconds an inbound connection has to complete its link handshake.
    pub link_handshake_timeout_secs: u64,
    /// Seconds a pushed vote's body has to arrive in full (authorities).
    pub vote_read_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 0,
            max_connections_per_address: 50,
            link_idle_timeout_secs: 180,
            relay_link_idle_timeout_secs: 3600,
            preconnect_relays: 16,
            dir_idle_timeout_secs: 15,
            dir_header_timeout_secs: 10,
            circuit_idle_timeout_secs: 3600,
            create_rate_per_address: 3,
            create_burst_per_address: 90,
            create_min_links: 3,
            create_defense_secs: 3600,
            max_circuits_per_client_link: 1024,
            max_circuits_per_address: 8192,
            handshake_threads: 0,
            handshake_queue: 1024,
            handshake_queue_delay_ms: 1750,
            begin_rate_per_circuit: 100,
            begin_burst_per_circuit: 300,
            max_exit_connections: 0,
            max_queued_mib: 48,
            max_relays_per_address: 2,
            max_relay_descriptors: 20_000,
            vote_push_burst: 3,
            create_replay_memory: 65_536,
            max_streams_per_circuit: 1024,
            max_resolves_per_circuit: 32,
            hsdir_max_descriptors: 10_000,
            hsdir_max_mib: 50,
            request_timeout_secs: 30,
            max_intro_circuits: 10_000,
            max_rendezvous_cookies: 10_000,
            link_write_timeout_secs: 30,
            link_handshake_timeout_secs: 10,
            vote_read_timeout_secs: 60,
        }
    }
}

impl LimitsConfig {
    /// Checks every key's bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let within = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::invalid(&format!("limits.{key}"), &format!("must be from {lo} to {hi}")))
            }
        };
        within("max_connections", self.max_connections as u64, 0, 1_000_000)?;
        within("max_connections_per_address", self.max_connections_per_address as u64, 1, 1_000_000)?;
        within("link_idle_timeout_secs", self.link_idle_timeout_secs, 1, 86_400)?;
        within("relay_link_idle_timeout_secs", self.relay_link_idle_timeout_secs, 1, 86_400)?;
        within("preconnect_relays", self.preconnect_relays as u64, 0, 1_000)?;
        within("dir_idle_timeout_secs", self.dir_idle_timeout_secs, 1, 3600)?;
        within("dir_header_timeout_secs", self.dir_header_timeout_secs, 1, 3600)?;
        within("circuit_idle_timeout_secs", self.circuit_idle_timeout_secs, 1, 7 * 86_400)?;
        within("create_rate_per_address", self.create_rate_per_address.into(), 1, 1_000_000)?;
        within("create_burst_per_address", self.create_burst_per_address.into(), 1, 1_000_000)?;
        within("create_min_links", self.create_min_links as u64, 0, 1_000_000)?;
        within("create_defense_secs", self.create_defense_secs, 1, 7 * 86_400)?;
        within("max_circuits_per_client_link", self.max_circuits_per_client_link as u64, 1, 1_000_000)?;
        within("max_circuits_per_address", self.max_circuits_per_address as u64, 1, 10_000_000)?;
        within("handshake_threads", self.handshake_threads as u64, 0, 1024)?;
        within("handshake_queue", self.handshake_queue as u64, 1, 1_000_000)?;
        within("handshake_queue_delay_ms", self.handshake_queue_delay_ms, 1, 60_000)?;
        within("begin_rate_per_circuit", self.begin_rate_per_circuit.into(), 1, 1_000_000)?;
        within("begin_burst_per_circuit", self.begin_burst_per_circuit.into(), 1, 1_000_000)?;
        within("max_exit_connections", self.max_exit_connections as u64, 0, 1_000_000)?;
        within("max_queued_mib", self.max_queued_mib, 1, 1 << 20)?;
        within("max_relays_per_address", self.max_relays_per_address as u64, 1, 1_000_000)?;
        within("max_relay_descriptors", self.max_relay_descriptors as u64, 1, 1_000_000)?;
        within("vote_push_burst", self.vote_push_burst, 1, 1_000)?;
        within("create_replay_memory", self.create_replay_memory as u64, 1, 16_777_216)?;
        within("max_streams_per_circuit", self.max_streams_per_circuit as u64, 1, 65_535)?;
        within("max_resolves_per_circuit", self.max_resolves_per_circuit as u64, 1, 65_535)?;
        within("hsdir_max_descriptors", self.hsdir_max_descriptors as u64, 1, 10_000_000)?;
        within("hsdir_max_mib", self.hsdir_max_mib, 1, 1 << 20)?;
        within("request_timeout_secs", self.request_timeout_secs, 1, 3600)?;
        within("max_intro_circuits", self.max_intro_circuits as u64, 1, 10_000_000)?;
        within("max_rendezvous_cookies", self.max_rendezvous_cookies as u64, 1, 10_000_000)?;
        within("link_write_timeout_secs", self.link_write_timeout_secs, 1, 3600)?;
        within("link_handshake_timeout_secs", self.link_handshake_timeout_secs, 1, 120)?;
        within("vote_read_timeout_secs", self.vote_read_timeout_secs, 1, 3600)?;
        Ok(())
    }

    /// Inbound connections per listener, with 0 resolved from the file-descriptor limit.
    pub fn connections(&self) -> usize {
        if self.max_connections > 0 {
            self.max_connections
        } else {
            (conn::fd_limit() / 2).max(64) as usize
        }
    }

    /// Outbound exit connections, with 0 resolved from the file-descriptor limit.
    pub fn exit_connections(&self) -> usize {
        if self.max_exit_connections > 0 {
            self.max_exit_connections
        } else {
            (conn::fd_limit() / 4).max(32) as usize
        }
    }

    /// The queued-cell budget in bytes.
    pub fn max_queued_bytes(&self) -> usize {
        (self.max_queued_mib as usize).saturating_mul(1 << 20)
    }

    pub fn link_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.link_idle_timeout_secs)
    }

    /// How long a link without circuits stays open: long between relays (`relay_link`: the
    /// peer is a relay this node dialled, or one the consensus lists as what it proved), short
    /// otherwise.
    pub fn idle_timeout_for(&self, relay_link: bool) -> Duration {
        Duration::from_secs(if relay_link { self.relay_link_idle_timeout_secs } else { self.link_idle_timeout_secs })
    }

    pub fn dir_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.dir_idle_timeout_secs)
    }

    pub fn dir_header_timeout(&self) -> Duration {
        Duration::from_secs(self.dir_header_timeout_secs)
    }

    pub fn circuit_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.circuit_idle_timeout_secs)
    }

    pub fn create_defense(&self) -> Duration {
        Duration::from_secs(self.create_defense_secs)
    }

    /// Handshake threads, with 0 resolved from the number of cores.
    pub fn handshake_threads(&self) -> usize {
        match self.handshake_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1).max(1),
            n => n,
        }
    }

    pub fn handshake_queue_delay(&self) -> Duration {
        Duration::from_millis(self.handshake_queue_delay_ms)
    }

    pub fn link_write_timeout(&self) -> Duration {
        Duration::from_secs(self.link_write_timeout_secs)
    }

    pub fn link_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.link_handshake_timeout_secs)
    }

    pub fn vote_read_timeout(&self) -> Duration {
        Duration::from_secs(self.vote_read_timeout_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The HSDir's byte budget.
    pub fn hsdir_max_bytes(&self) -> usize {
        (self.hsdir_max_mib as usize).saturating_mul(1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_within_bounds_and_keys_are_checked() {
        LimitsConfig::default().validate().unwrap();
        let c: LimitsConfig = toml::from_str("max_connections_per_address = 0").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("limits.max_connections_per_address"));
        let c: LimitsConfig = toml::from_str("create_rate_per_address = 7").unwrap();
        assert_eq!(c.create_rate_per_address, 7);
        assert_eq!(c.create_burst_per_address, 90, "unset keys keep their defaults");
        assert!(toml::from_str::<LimitsConfig>("bogus = 1").is_err());
        assert!(LimitsConfig::default().connections() >= 64);
        // Every key refuses a value past its bounds, naming itself.
        for (key, bad) in [
            ("max_relay_descriptors", "0"),
            ("dir_header_timeout_secs", "0"),
            ("dir_header_timeout_secs", "3601"),
            ("vote_push_burst", "1001"),
            ("create_replay_memory", "0"),
            ("max_streams_per_circuit", "65536"),
            ("max_resolves_per_circuit", "0"),
            ("hsdir_max_descriptors", "0"),
            ("hsdir_max_mib", "0"),
            ("request_timeout_secs", "0"),
            ("max_intro_circuits", "0"),
            ("max_rendezvous_cookies", "0"),
            ("link_write_timeout_secs", "0"),
            ("link_handshake_timeout_secs", "0"),
            ("link_handshake_timeout_secs", "121"),
            ("vote_read_timeout_secs", "0"),
            ("handshake_threads", "1025"),
        ] {
            let c: LimitsConfig = toml::from_str(&format!("{key} = {bad}")).unwrap();
            assert!(c.validate().unwrap_err().to_string().contains(&format!("limits.{key}")), "{key}");
        }
        let d = LimitsConfig::default();
        assert_eq!((d.max_streams_per_circuit, d.max_resolves_per_circuit, d.request_timeout()), (1024, 32, Duration::from_secs(30)));
        assert_eq!(d.hsdir_max_bytes(), 50 << 20);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(d.handshake_threads(), (cores - 1).max(1), "one core left to forwarding");
        let c: LimitsConfig = toml::from_str("handshake_threads = 3").unwrap();
        assert_eq!(c.handshake_threads(), 3);
    }

    /// Links between relays outlive client links by default (an hour against 3 minutes), each
    /// from its own key, and the relay key is bounded like the other.
    #[test]
    fn relay_links_stay_open_longer_than_client_links() {
        let d = LimitsConfig::default();
        assert_eq!((d.idle_timeout_for(true), d.idle_timeout_for(false)), (Duration::from_secs(3600), Duration::from_secs(180)));
        let c: LimitsConfig = toml::from_str("relay_link_idle_timeout_secs = 7\nlink_idle_timeout_secs = 9").unwrap();
        assert_eq!((c.idle_timeout_for(true), c.idle_timeout_for(false)), (Duration::from_secs(7), Duration::from_secs(9)));
        let c: LimitsConfig = toml::from_str("relay_link_idle_timeout_secs = 0").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("limits.relay_link_idle_timeout_secs"));
        assert_eq!(d.preconnect_relays, 16);
        let c: LimitsConfig = toml::from_str("preconnect_relays = 1001").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("limits.preconnect_relays"));
    }
}
