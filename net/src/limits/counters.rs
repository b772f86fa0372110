//! How often each limit acted, process-wide. Each counter goes up by one per refusal or
//! closure; [`LimitCounters::snapshot`] lists them by name (for status, metrics and logs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One counter per limit.
        pub struct LimitCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// The counters of this process.
        pub static LIMITS: LimitCounters = LimitCounters { $($name: AtomicU64::new(0),)* };

        impl LimitCounters {
            /// Every counter with its name, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Inbound connections closed at once: the listener was at `max_connections`.
    connections_total,
    /// Link writes that waited for the operator's rate limit (`relay.bandwidth_rate`).
    bandwidth_waits,
    /// Inbound connections closed at once: their address was at `max_connections_per_address`.
    connections_per_address,
    /// Accept errors (e.g. out of file descriptors); logged at most once a minute.
    accept_errors,
    /// Links closed after `link_idle_timeout_secs` without circuits.
    idle_links_closed,
    /// Circuits closed after `circuit_idle_timeout_secs` without a cell.
    idle_circuits_closed,
    /// CREATEs refused: the address's token bucket was empty or it is in its defense period.
    create_rate,
    /// CREATEs refused: the client link already held `max_circuits_per_client_link` circuits.
    circuits_per_link,
    /// CREATEs refused: the client's address already held `max_circuits_per_address` circuits
    /// (over all its links).
    circuits_per_address,
    /// CREATEs refused at once: `handshake_queue` handshakes were already waiting.
    handshake_queue_full,
    /// CREATEs refused after waiting longer than `handshake_queue_delay_ms`.
    handshake_queue_delay,
    /// BEGINs refused: the circuit's BEGIN token bucket was empty.
    begin_rate,
    /// BEGINs refused: the exit held `max_exit_connections` outbound connections.
    exit_connections,
    /// Circuits destroyed because their inbound cell queue passed its cap.
    circuit_queue_full,
    /// Circuits closed because the node's queued cells passed `max_queued_mib` and theirs
    /// were among the oldest queued.
    oom_circuits_closed,
    /// Links closed for the same reason (their writer queue held the oldest cells).
    oom_links_closed,
    /// Relay descriptors an authority refused: their address already had
    /// `max_relays_per_address` relays, all proven reachable.
    relays_per_address,
    /// Votes an authority refused before parsing them: their header names no other authority
    /// of the network.
    votes_from_strangers,
    /// Votes an authority refused (429) before parsing them: pushes naming that voter had been
    /// refused too often lately (`allium_directory::vote_gate`).
    vote_pushes_over_budget,
    /// Votes an authority refused (503) at once, unread: as many pushes naming that voter as it
    /// reads at a time were being read (`allium_directory::vote_gate`).
    vote_pushes_in_flight,
    /// Pushed votes refused (408) because their body did not arrive within
    /// `vote_read_timeout_secs`.
    vote_pushes_too_slow,
    /// Directory-port connections closed because a request head (request line and headers)
    /// was not complete `dir_header_timeout_secs` after its first byte.
    dir_header_timeouts,
    /// Relay descriptors an authority forgot (never proven reachable) to make room for another.
    descriptors_evicted,
    /// INTRODUCE1s an introduction point answered RATE_LIMITED (over the rate the service set).
    intro_rate_limited,
    /// INTRODUCE2s an onion service dropped: its introduction queue was full of ones with at
    /// least as much proof of work.
    intro_queue_dropped,
    /// INTRODUCE2s an onion service dropped for a bad or reused proof of work.
    intro_pow_refused,
    /// Descriptor uploads an HSDir refused: the blinded key is not on its part of the ring.
    hsdir_not_responsible,
    /// Descriptors an HSDir evicted (the longest stored) to make room for an upload.
    hsdir_evictions,
    /// Relay descriptors an authority refused (503): it held `max_relay_descriptors`, every
    /// one proven reachable.
    descriptors_full,
    /// CREATEs a relay refused as replays (a handshake message among the last
    /// `create_replay_memory` it saw).
    create_replays,
    /// BEGINs and BEGIN_DIRs refused (END RESOURCELIMIT): the circuit already carried
    /// `max_streams_per_circuit` streams.
    streams_per_circuit,
    /// RESOLVEs refused (RESOLVED RESOURCELIMIT): `max_resolves_per_circuit` were in flight.
    resolves_per_circuit,
    /// SOCKS and HTTP CONNECT connections closed: no whole request within
    /// `request_timeout_secs`.
    request_timeouts,
    /// Inbound connections closed because their link handshake did not complete within
    /// `link_handshake_timeout_secs`.
    link_handshake_timeouts,
    /// Links closed because a write waited `link_write_timeout_secs` for the peer to take a
    /// byte (a peer that stopped reading).
    stalled_links_closed,
    /// ESTABLISH_INTROs refused (DESTROY RESOURCELIMIT): the relay served
    /// `max_intro_circuits` introduction circuits.
    intro_circuits_full,
    /// ESTABLISH_RENDEZVOUS refused (DESTROY RESOURCELIMIT): `max_rendezvous_cookies` cookies
    /// were waiting.
    rendezvous_cookies_full,
}

impl LimitCounters {
    /// Counts one event of `c`.
    pub fn hit(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Logs, at most once per `every`, which limits acted since the last report (names and counts
/// only: never an address). Runs forever.
pub async fn report_loop(every: Duration) {
    let mut last = LIMITS.snapshot();
    loop {
        tokio::time::sleep(every).await;
        let now = LIMITS.snapshot();
        let hits: Vec<String> = now.iter().zip(&last).filter(|(n, l)| n.1 > l.1).map(|(n, l)| format!("{}={}", n.0, n.1 - l.1)).collect();
        if !hits.is_empty() {
            tracing::info!("limits acted in the last {} s: {}", every.as_secs(), hits.join(" "));
        }
        last = now;
    }
}
