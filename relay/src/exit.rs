//! Exit streams: resolve the requested host, check the exit policy against the **resolved**
//! address, connect from the relay's own address. Outside a test network an exit never reaches
//! a private address (however embedded: docs/PROTOCOL.md "Exits") nor one of its own, and never
//! resolves an onion name.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use allium_net::link::tcp_connect;
use allium_proto::hs::address::OnionAddress;
use allium_proto::policy::{is_private, same_host, ExitPolicy};
use allium_proto::relay_msg::{EndReason, MAX_RESOLVED_ADDRS};
use tokio::net::TcpStream;

use crate::config::Resolver;

/// How long an exit waits for a destination to accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What an exit needs to decide and open a stream.
#[derive(Debug, Clone)]
pub struct ExitRules {
    pub policy: ExitPolicy,
    pub resolver: Resolver,
    /// Test network: private destinations are allowed when the policy allows them.
    pub testnet: bool,
    pub bind_ip: IpAddr,
    /// This host's own addresses (every local interface, `bind_ip` and the advertised one),
    /// never a destination outside a test network.
    pub own: Vec<IpAddr>,
}

impl ExitRules {
    /// May this relay connect to `ip:port`? Outside a test network, a private destination is
    /// refused whatever the policy says.
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        self.may_reveal(ip) && self.policy.allows(ip, port)
    }

    /// Outside a test network: false for private addresses and this host's own.
    fn may_reveal(&self, ip: IpAddr) -> bool {
        self.testnet || !(is_private(ip) || self.own.iter().any(|o| same_host(*o, ip)))
    }

    /// This host's addresses: `bind_ip`, the address it is reached at when that differs
    /// (`relay.advertise_address`, behind NAT) and every local interface's (none if they cannot
    /// be listed; the private ones are refused anyway).
    pub fn own_addresses(bind_ip: IpAddr, advertised: Option<IpAddr>) -> Vec<IpAddr> {
        let mut v = vec![bind_ip];
        v.extend(advertised);
        match if_addrs::get_if_addrs() {
            Ok(ifs) => v.extend(ifs.into_iter().map(|i| i.ip())),
            Err(e) => tracing::warn!("cannot list this host's interface addresses ({e}); refusing only the configured one as a destination"),
        }
        v.sort();
        v.dedup();
        v
    }

    /// Resolves a BEGIN's host. `localhost` and IP literals never reach a resolver.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, EndReason> {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        if OnionAddress::is_reserved_name(h) {
            // An honest client never sends one (it handles onion names itself).
            tracing::info!("refused to resolve an onion name (a client asked the exit for one)");
            return Err(EndReason::ResolveFailed);
        }
        if let Ok(ip) = h.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") {
            return Ok(vec![IpAddr::from([127, 0, 0, 1])]);
        }
        match self.resolver {
            Resolver::None => Err(EndReason::ResolveFailed),
            Resolver::System => {
                let addrs = tokio::net::lookup_host((h, port)).await.map_err(|e| {
                    // END RESOLVEFAILED tells the client; the name itself is never logged.
                    tracing::debug!("could not resolve a requested host name: {e}");
                    EndReason::ResolveFailed
                })?;
                let v: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                if v.is_empty() {
                    Err(EndReason::ResolveFailed)
                } else {
                    Ok(v)
                }
            }
        }
    }

    /// Answers a RESOLVE: the same resolver rules as BEGIN, but outside a test network a private
    /// address is never returned (RESOLVED carries RESOLVEFAILED when nothing else is left).
    /// The exit policy is not applied: it decides connections, not answers.
    pub async fn resolve_for_client(&self, host: &str) -> Result<Vec<IpAddr>, EndReason> {
        let mut out: Vec<IpAddr> = Vec::new();
        for ip in self.resolve(host, 0).await? {
            if self.may_reveal(ip) && !out.contains(&ip) && out.len() < MAX_RESOLVED_ADDRS {
                out.push(ip);
            }
        }
        if out.is_empty() {
            return Err(EndReason::ResolveFailed);
        }
        Ok(out)
    }

    /// Resolves, applies the policy to each address, connects to the first allowed one.
    pub async fn open(&self, host: &str, port: u16) -> Result<(TcpStream, IpAddr), EndReason> {
        let addrs = self.resolve(host, port).await?;
        let allowed: Vec<IpAddr> = addrs.into_iter().filter(|ip| self.allows(*ip, port)).collect();
        let Some(&ip) = allowed.first() else { return Err(EndReason::ExitPolicy) };
        match tokio::time::timeout(CONNECT_TIMEOUT, tcp_connect(self.bind_ip, SocketAddr::new(ip, port))).await {
            Err(_) => Err(EndReason::Timeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(EndReason::ConnectRefused),
            Ok(Err(_)) => Err(EndReason::NoRoute),
            Ok(Ok(s)) => Ok((s, ip)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(policy: ExitPolicy, testnet: bool) -> ExitRules {
        ExitRules { policy, resolver: Resolver::None, testnet, bind_ip: IpAddr::from([127, 0, 0, 1]), own: vec!["203.0.113.7".parse().unwrap(), "2001:db8::7".parse().unwrap()] }
    }

    #[tokio::test]
    async fn default_policy_refuses_private_even_by_name() {
        for testnet in [false, true] {
            let r = rules(ExitPolicy::default_exit(), testnet);
            assert_eq!(r.open("127.0.0.1", 80).await.unwrap_err(), EndReason::ExitPolicy);
            assert_eq!(r.open("10.1.2.3", 80).await.unwrap_err(), EndReason::ExitPolicy);
            assert_eq!(r.open("localhost", 80).await.unwrap_err(), EndReason::ExitPolicy);
            assert_eq!(r.open("[::1]", 80).await.unwrap_err(), EndReason::ExitPolicy);
            assert!(r.allows("1.1.1.1".parse().unwrap(), 443));
        }
        assert_eq!(rules(ExitPolicy::default_exit(), false).open("example.test", 80).await.unwrap_err(), EndReason::ResolveFailed);
    }

    #[tokio::test]
    async fn resolve_never_returns_private_outside_a_testnet() {
        let open = ExitPolicy::parse_rules(&["accept *:*"]).unwrap();
        let real = rules(ExitPolicy::default_exit(), false);
        for host in ["localhost", "a.localhost", "127.0.0.1", "10.1.2.3", "[::1]", "192.168.0.1"] {
            assert_eq!(real.resolve_for_client(host).await.unwrap_err(), EndReason::ResolveFailed, "{host}");
        }
        assert_eq!(real.resolve_for_client("1.1.1.1").await.unwrap(), vec![IpAddr::from([1, 1, 1, 1])]);
        assert_eq!(real.resolve_for_client("[2001:db8::1]").await.unwrap(), vec!["2001:db8::1".parse::<IpAddr>().unwrap()]);
        // No resolver: names fail without any lookup.
        assert_eq!(real.resolve_for_client("example.test").await.unwrap_err(), EndReason::ResolveFailed);
        // A test network answers with loopback, whatever the policy.
        for policy in [open, ExitPolicy::default_exit()] {
            let test = rules(policy, true);
            assert_eq!(test.resolve_for_client("localhost").await.unwrap(), vec![IpAddr::from([127, 0, 0, 1])]);
        }
    }

    #[tokio::test]
    async fn permissive_policy_reaches_loopback_only_in_a_testnet() {
        let open = ExitPolicy::parse_rules(&["accept *:*"]).unwrap();
        assert!(!rules(open.clone(), false).allows("127.0.0.1".parse().unwrap(), 80));
        assert!(rules(open, true).allows("127.0.0.1".parse().unwrap(), 80));
    }

    /// THREATS A22: outside a test network an exit refuses its own addresses (in any form) and
    /// never resolves onion names, whatever its policy says.
    #[tokio::test]
    async fn a22_exit_refuses_its_own_addresses_and_onion_names() {
        let open = ExitPolicy::parse_rules(&["accept *:*"]).unwrap();
        let real = rules(open.clone(), false);
        for own in ["203.0.113.7", "2001:db8::7", "::ffff:203.0.113.7", "2002:cb00:7107::1"] {
            assert!(!real.allows(own.parse().unwrap(), 80), "{own}");
            assert_eq!(real.open(own, 80).await.unwrap_err(), EndReason::ExitPolicy, "{own}");
            assert_eq!(real.resolve_for_client(own).await.unwrap_err(), EndReason::ResolveFailed, "{own}");
        }
        assert!(real.allows("203.0.113.8".parse().unwrap(), 80), "a neighbour is not this host");
        for name in ["x.allium", "X.ALLIUM.", "www.x.onion", "x.onion."] {
            assert_eq!(real.open(name, 80).await.unwrap_err(), EndReason::ResolveFailed, "{name}");
            assert_eq!(real.resolve_for_client(name).await.unwrap_err(), EndReason::ResolveFailed, "{name}");
        }
        // A test network reaches its own addresses (its nodes live there) but no onion name.
        let test = rules(open, true);
        assert!(test.allows("203.0.113.7".parse().unwrap(), 80));
        assert_eq!(test.resolve_for_client("x.allium.").await.unwrap_err(), EndReason::ResolveFailed);
    }

    #[test]
    fn own_addresses_include_the_configured_one_and_loopback() {
        let own = ExitRules::own_addresses("203.0.113.7".parse().unwrap(), Some("198.51.100.9".parse().unwrap()));
        assert!(own.contains(&"203.0.113.7".parse().unwrap()));
        assert!(own.contains(&"127.0.0.1".parse().unwrap()), "the loopback interface is listed: {own:?}");
        assert!(own.contains(&"198.51.100.9".parse().unwrap()), "relay.advertise_address is listed: {own:?}");
    }
}
