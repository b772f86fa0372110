//! What a relay keeps as a rendezvous point, sans-IO: circuits waiting under a cookie, and the
//! pairs of joined circuits (docs/PROTOCOL.md, "Rendezvous"). `C` names a circuit.
//!
//! Once joined, a forward cell on either circuit that this relay's key does not open is sent
//! backward on the [`RendPointTable::peer`] circuit instead of destroying the circuit, and when
//! one circuit of a pair closes, the other is destroyed with the same reason.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use crate::ext::Extensions;
use crate::relay_msg::{RelayMsg, REND_COOKIE_LEN};

/// Seconds a cookie waits for RENDEZVOUS1.
pub const COOKIE_TIMEOUT_SECS: u64 = 300;
/// Default cap on waiting cookies.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

type Cookie = [u8; REND_COOKIE_LEN];

/// Why the circuit that sent the message must be destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RendPointError {
    /// Cookie in use, a second ESTABLISH_RENDEZVOUS, or a rendezvous message on a joined or
    /// waiting circuit (PROTOCOL).
    #[error("rendezvous message not allowed on this circuit")]
    NotAllowedHere,
    /// RENDEZVOUS1 for no waiting cookie (PROTOCOL).
    #[error("unknown rendezvous cookie")]
    UnknownCookie,
    /// Too many waiting cookies (RESOURCELIMIT).
    #[error("too many waiting rendezvous circuits")]
    Full,
}

/// Waiting and joined circuits of one relay.
#[derive(Debug)]
pub struct RendPointTable<C> {
    waiting: HashMap<Cookie, (C, u64)>,
    cookie_of: HashMap<C, Cookie>,
    order: VecDeque<(Cookie, u64)>,
    joined: HashMap<C, C>,
    max_pending: usize,
}

impl<C: Copy + Eq + Hash> Default for RendPointTable<C> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PENDING)
    }
}

impl<C: Copy + Eq + Hash> RendPointTable<C> {
    pub fn new(max_pending: usize) -> Self {
        RendPointTable { waiting: HashMap::new(), cookie_of: HashMap::new(), order: VecDeque::new(), joined: HashMap::new(), max_pending }
    }

    /// Circuits waiting for RENDEZVOUS1.
    pub fn pending(&self) -> usize {
        self.waiting.len()
    }

    fn busy(&self, c: &C) -> bool {
        self.cookie_of.contains_key(c) || self.joined.contains_key(c)
    }

    /// ESTABLISH_RENDEZVOUS on `circ` at `now`: the RENDEZVOUS_ESTABLISHED to send back.
    pub fn establish(&mut self, circ: C, cookie: &Cookie, now: u64) -> Result<RelayMsg, RendPointError> {
        self.expire(now);
        if self.busy(&circ) || self.waiting.contains_key(cookie) {
            return Err(RendPointError::NotAllowedHere);
        }
        if self.waiting.len() >= self.max_pending {
            return Err(RendPointError::Full);
        }
        let deadline = now.saturating_add(COOKIE_TIMEOUT_SECS);
        self.waiting.insert(*cookie, (circ, deadline));
        self.cookie_of.insert(circ, *cookie);
        self.order.push_back((*cookie, deadline));
        Ok(RelayMsg::RendezvousEstablished { ext: Extensions::none() })
    }

    /// RENDEZVOUS1 on `service` at `now`: the client circuit and the RENDEZVOUS2 to send on it;
    /// the two circuits are joined from now on.
    pub fn rendezvous1(&mut self, service: C, cookie: &Cookie, hdata: &[u8], now: u64) -> Result<(C, RelayMsg), RendPointError> {
        self.expire(now);
        if self.busy(&service) {
            return Err(RendPointError::NotAllowedHere);
        }
        let (client, _) = self.waiting.remove(cookie).ok_or(RendPointError::UnknownCookie)?;
        self.cookie_of.remove(&client);
        self.joined.insert(client, service);
        self.joined.insert(service, client);
        Ok((client, RelayMsg::Rendezvous2 { hdata: hdata.to_vec(), ext: Extensions::none() }))
    }

    /// The circuit joined to `circ`, if any.
    pub fn peer(&self, circ: &C) -> Option<C> {
        self.joined.get(circ).copied()
    }

    /// Drops cookies older than [`COOKIE_TIMEOUT_SECS`]; returns their circuits (destroy them,
    /// TIMEOUT).
    pub fn expire(&mut self, now: u64) -> Vec<C> {
        let mut out = Vec::new();
        while let Some(&(cookie, deadline)) = self.order.front() {
            if deadline > now {
                break;
            }
            self.order.pop_front();
            if let Some(&(c, d)) = self.waiting.get(&cookie) {
                if d == deadline {
                    self.waiting.remove(&cookie);
                    self.cookie_of.remove(&c);
                    out.push(c);
                }
            }
        }
        // Entries whose cookie was used or whose circuit closed linger in `order` until their
        // deadline; bound them too.
        while self.order.len() > 2 * self.max_pending.max(1) {
            let (cookie, d) = self.order.pop_front().expect("non-empty");
            if let Some(&(c, wd)) = self.waiting.get(&cookie) {
                if wd == d {
                    self.waiting.remove(&cookie);
                    self.cookie_of.remove(&c);
                    out.push(c);
                }
            }
        }
        out
    }

    /// Forgets a closed circuit; returns its joined peer, to destroy with the same reason.
    pub fn circuit_closed(&mut self, circ: C) -> Option<C> {
        if let Some(cookie) = self.cookie_of.remove(&circ) {
            self.waiting.remove(&cookie);
        }
        let peer = self.joined.remove(&circ)?;
        self.joined.remove(&peer);
        Some(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn establish_join_close() {
        let mut t = RendPointTable::new(10);
        let cookie = [7; REND_COOKIE_LEN];
        assert_eq!(t.establish(1u32, &cookie, 100), Ok(RelayMsg::RendezvousEstablished { ext: Extensions::none() }));
        assert_eq!(t.establish(2, &cookie, 100), Err(RendPointError::NotAllowedHere), "cookie in use");
        assert_eq!(t.establish(1, &[8; REND_COOKIE_LEN], 100), Err(RendPointError::NotAllowedHere), "second cookie on a circuit");
        assert_eq!(t.rendezvous1(2, &[9; REND_COOKIE_LEN], &[1], 110), Err(RendPointError::UnknownCookie));
        let (client, m) = t.rendezvous1(2, &cookie, &[1, 2, 3], 110).unwrap();
        assert_eq!((client, m), (1, RelayMsg::Rendezvous2 { hdata: vec![1, 2, 3], ext: Extensions::none() }));
        assert_eq!((t.peer(&1), t.peer(&2)), (Some(2), Some(1)));
        // One-time cookie; joined circuits take no more rendezvous messages.
        assert_eq!(t.rendezvous1(3, &cookie, &[1], 111), Err(RendPointError::UnknownCookie));
        assert_eq!(t.establish(1, &[5; REND_COOKIE_LEN], 111), Err(RendPointError::NotAllowedHere));
        assert_eq!(t.rendezvous1(2, &[5; REND_COOKIE_LEN], &[], 111), Err(RendPointError::NotAllowedHere));
        assert_eq!(t.circuit_closed(2), Some(1));
        assert_eq!(t.peer(&1), None);
        assert_eq!(t.circuit_closed(1), None);
    }

    #[test]
    fn cookies_time_out_and_are_capped() {
        let mut t = RendPointTable::new(2);
        t.establish(1u8, &[1; 20], 0).unwrap();
        t.establish(2, &[2; 20], 100).unwrap();
        assert_eq!(t.establish(3, &[3; 20], 200), Err(RendPointError::Full));
        assert_eq!(t.expire(300), vec![1]);
        assert_eq!(t.rendezvous1(9, &[1; 20], &[], 300), Err(RendPointError::UnknownCookie));
        t.establish(3, &[3; 20], 300).unwrap();
        t.circuit_closed(2);
        assert_eq!(t.pending(), 1);
        assert_eq!(t.expire(10_000), vec![3]);
        assert_eq!(t.pending(), 0);
    }
}
