//! Inbound connections: a cap for a listener in all and one per address, each connection
//! holding a [`ConnPermit`] until it closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use super::counters::{LimitCounters, LIMITS};

/// The process's file-descriptor limit, after raising the soft limit to the hard one (once).
pub fn fd_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(raise_nofile)
}

fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n.min(1 << 24),
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(1024),
    }
}

/// What a per-address count is kept under: the IPv4 address, or the IPv6 /64 (one host can
/// hold a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(u128);

impl From<IpAddr> for AddrKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddrKey(u32::from(v4) as u128),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey(u32::from(v4) as u128),
                None => AddrKey((u128::from(v6) >> 64 << 64) | (1 << 32)),
            },
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnRefused {
    #[error("the listener is at its connection limit")]
    Total,
    #[error("the address is at its per-address connection limit")]
    PerAddress,
}

/// Decides which peers are not counted per address (relays in the consensus, on the OR port).
pub type ExemptFn = dyn Fn(IpAddr) -> bool + Send + Sync;

/// What a listener counts its refusals on.
const CONNECTION_COUNTERS: [&AtomicU64; 2] = [&LIMITS.connections_total, &LIMITS.connections_per_address];

/// The open connections of one listener (or other things counted per address).
pub struct ConnLimiter {
    max_total: usize,
    max_per_addr: usize,
    /// Counted when the total, or an address's count, refuses one.
    refused: [&'static AtomicU64; 2],
    exempt: Option<Box<ExemptFn>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    per_addr: HashMap<AddrKey, usize>,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    key: Option<AddrKey>,
}

impl ConnLimiter {
    pub fn new(max_total: usize, max_per_addr: usize) -> Arc<Self> {
        Arc::new(ConnLimiter { max_total, max_per_addr, refused: CONNECTION_COUNTERS, exempt: None, state: Mutex::new(State::default()) })
    }

    /// Like [`ConnLimiter::new`] for things other than connections (circuits per address):
    /// refusals are counted on `total` and `per_addr`.
    pub fn counting(max_total: usize, max_per_addr: usize, total: &'static AtomicU64, per_addr: &'static AtomicU64) -> Arc<Self> {
        Arc::new(ConnLimiter { max_total, max_per_addr, refused: [total, per_addr], exempt: None, state: Mutex::new(State::default()) })
    }

    /// Like [`ConnLimiter::new`]; addresses for which `exempt` is true are counted only in the
    /// total.
    pub fn with_exemption(max_total: usize, max_per_addr: usize, exempt: Box<ExemptFn>) -> Arc<Self> {
        Arc::new(ConnLimiter { max_total, max_per_addr, refused: CONNECTION_COUNTERS, exempt: Some(exempt), state: Mutex::new(State::default()) })
    }

    /// Admits a connection from `ip`, or says which limit refuses it (and counts it).
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, ConnRefused> {
        let key = match &self.exempt {
            Some(f) if f(ip) => None,
            _ => Some(AddrKey::from(ip)),
        };
        let mut s = self.state.lock().expect("limiter lock");
        if s.total >= self.max_total {
            LimitCounters::hit(self.refused[0]);
            return Err(ConnRefused::Total);
        }
        if let Some(k) = key {
            let n = s.per_addr.entry(k).or_insert(0);
            if *n >= self.max_per_addr {
                LimitCounters::hit(self.refused[1]);
                return Err(ConnRefused::PerAddress);
            }
            *n += 1;
        }
        s.total += 1;
        Ok(ConnPermit { limiter: self.clone(), key })
    }

    /// Connections `ip` holds open here (0 for an exempt address).
    pub fn count(&self, ip: IpAddr) -> usize {
        self.state.lock().expect("limiter lock").per_addr.get(&AddrKey::from(ip)).copied().unwrap_or(0)
    }

    /// Connections open in all.
    pub fn total(&self) -> usize {
        self.state.lock().expect("limiter lock").total
    }

    /// Counts an event on `counter` (for callers that refuse for reasons of their own).
    pub fn hit(counter: &AtomicU64) {
        LimitCounters::hit(counter);
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut s = self.limiter.state.lock().expect("limiter lock");
        s.total -= 1;
        if let Some(k) = self.key {
            if let Some(n) = s.per_addr.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    s.per_addr.remove(&k);
                }
            }
        }
    }
}

impl std::fmt::Debug for ConnPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnPermit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_address_and_in_all_and_permits_free_their_place() {
        let l = ConnLimiter::new(5, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.try_admit(a).unwrap();
        let _p2 = l.try_admit(a).unwrap();
        assert_eq!(l.try_admit(a).unwrap_err(), ConnRefused::PerAddress);
        drop(p1);
        let _p3 = l.try_admit(a).unwrap();
        let _q: Vec<_> = (0..2).map(|_| l.try_admit(b).unwrap()).collect();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let _r = l.try_admit(c).unwrap();
        assert_eq!(l.try_admit(c).unwrap_err(), ConnRefused::Total);
        assert_eq!((l.total(), l.count(a), l.count(c)), (5, 2, 1));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_address_and_exempt_peers_count_only_in_all() {
        let k = |s: &str| AddrKey::from(s.parse::<IpAddr>().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.1"), k("192.0.2.1"));
        let relay: IpAddr = "192.0.2.9".parse().unwrap();
        let l = ConnLimiter::with_exemption(3, 1, Box::new(move |ip| ip == relay));
        let _p: Vec<_> = (0..3).map(|_| l.try_admit(relay).unwrap()).collect();
        assert_eq!(l.try_admit(relay).unwrap_err(), ConnRefused::Total);
    }

    #[test]
    fn the_fd_limit_is_known() {
        assert!(fd_limit() >= 64);
    }
}
