//! Exit streams: resolve the requested host, check the exit policy against the **resolved**
//! address, connect from the relay's own address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use allium_net::link::tcp_connect;
use allium_proto::policy::{is_private, ExitPolicy};
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
}

impl ExitRules {
    /// May this relay connect to `ip:port`? Outside a test network, a private destination is
    /// refused whatever the policy says.
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        (self.testnet || !is_private(ip)) && self.policy.allows(ip, port)
    }

    /// Resolves a BEGIN's host. `localhost` and IP literals never reach a resolver.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, EndReason> {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = h.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") {
            return Ok(vec![IpAddr::from([127, 0, 0, 1])]);
        }
        match self.resolver {
            Resolver::None => Err(EndReason::ResolveFailed),
            Resolver::System => {
                let addrs = tokio::net::lookup_host((h, port)).await.map_err(|_| EndReason::ResolveFailed)?;
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
            if (self.testnet || !is_private(ip)) && !out.contains(&ip) && out.len() < MAX_RESOLVED_ADDRS {
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
        ExitRules { policy, resolver: Resolver::None, testnet, bind_ip: IpAddr::from([127, 0, 0, 1]) }
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
}
