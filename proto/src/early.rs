//! RELAY_EARLY: how the length of a circuit is bounded without telling any relay where it sits.
//!
//! A CREATE carries nothing that depends on the receiving relay's position. Instead the client
//! sends some relay cells toward the exit as RELAY_EARLY ([`CellCmd::RelayEarly`]):
//! - every EXTEND (a relay refuses an EXTEND that did not arrive in RELAY_EARLY cells);
//! - beyond the first hop, its first [`MAX_EARLY_FROM_RELAY`] cells, whatever they carry, so
//!   that an EXTEND looks like any other early cell to the relays it passes.
//!
//! Relays pass the marking on unchanged and count it per circuit: the first hop takes at most
//! [`MAX_EARLY_FROM_CLIENT`] early cells, any other hop at most [`MAX_EARLY_FROM_RELAY`], and an
//! early cell after a plain one closes the circuit. So a circuit has at most [`MAX_PATH_LEN`]
//! hops, and a relay that marks cells the client did not (a guard signalling to a later hop)
//! gets the circuit closed: the second hop already receives the most early cells it takes
//! before the first plain one. Relays never send RELAY_EARLY toward the client; a client that
//! receives one closes the circuit.
//!
//! [`CellCmd::RelayEarly`]: crate::cell::CellCmd::RelayEarly

use crate::cell::{MAX_EARLY_FROM_CLIENT, MAX_EARLY_FROM_RELAY};

/// Why a relay refuses a circuit's relay cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EarlyError {
    #[error("more RELAY_EARLY cells than a circuit may carry")]
    TooMany,
    #[error("a RELAY_EARLY cell after a plain relay cell")]
    AfterPlain,
}

/// A relay's count of the early cells arriving from the previous hop of one circuit.
#[derive(Debug, Clone)]
pub struct EarlyGate {
    left: u8,
    plain_seen: bool,
}

impl EarlyGate {
    /// For a circuit whose previous hop is a client (this relay is the first hop).
    pub fn from_client() -> Self {
        EarlyGate { left: MAX_EARLY_FROM_CLIENT, plain_seen: false }
    }

    /// For a circuit whose previous hop is a relay.
    pub fn from_relay() -> Self {
        EarlyGate { left: MAX_EARLY_FROM_RELAY, plain_seen: false }
    }

    /// A relay cell arrived from the previous hop; `early` if it was RELAY_EARLY.
    pub fn on_cell(&mut self, early: bool) -> Result<(), EarlyError> {
        if !early {
            self.plain_seen = true;
            return Ok(());
        }
        if self.plain_seen {
            return Err(EarlyError::AfterPlain);
        }
        self.left = self.left.checked_sub(1).ok_or(EarlyError::TooMany)?;
        Ok(())
    }

    /// Whether an EXTEND that just completed arrived in early cells only.
    pub fn extend_allowed(&self) -> bool {
        !self.plain_seen
    }
}

/// The client's choice, per circuit, of which cells to send as RELAY_EARLY.
#[derive(Debug, Clone, Default)]
pub struct EarlyMarker {
    /// Early cells sent to hops beyond the first.
    beyond_first: u8,
}

impl EarlyMarker {
    /// Whether the next cell, to hop `hop` (0 is the first), goes as RELAY_EARLY.
    pub fn mark(&mut self, hop: usize, is_extend: bool) -> bool {
        if hop == 0 {
            return is_extend;
        }
        if self.beyond_first < MAX_EARLY_FROM_RELAY {
            self.beyond_first += 1;
            return true;
        }
        // Out of early cells: an EXTEND still goes early (and the first hop refuses it).
        is_extend
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::MAX_PATH_LEN;

    /// The cells a client sends building a `hops`-hop circuit and then using it: (hop, extend).
    fn cells(hops: usize, after: usize) -> Vec<(usize, bool)> {
        let mut v: Vec<(usize, bool)> = (0..hops - 1).map(|h| (h, true)).collect();
        v.extend((0..after).map(|_| (hops - 1, false)));
        v
    }

    /// What the relay at `pos` makes of the client's cells: the first failure, if any.
    fn at_relay(pos: usize, marked: &[(usize, bool, bool)]) -> Result<(), &'static str> {
        let mut gate = if pos == 0 { EarlyGate::from_client() } else { EarlyGate::from_relay() };
        for &(hop, extend, early) in marked.iter().filter(|c| c.0 >= pos) {
            gate.on_cell(early).map_err(|_| "early count")?;
            if hop == pos && extend && !gate.extend_allowed() {
                return Err("extend outside early cells");
            }
        }
        Ok(())
    }

    fn mark_all(cells: &[(usize, bool)]) -> Vec<(usize, bool, bool)> {
        let mut m = EarlyMarker::default();
        cells.iter().map(|&(h, e)| (h, e, m.mark(h, e))).collect()
    }

    #[test]
    fn a16_circuits_up_to_the_limit_pass_and_longer_ones_fail() {
        for hops in 1..=MAX_PATH_LEN {
            let marked = mark_all(&cells(hops, 20));
            for pos in 0..hops {
                assert_eq!(at_relay(pos, &marked), Ok(()), "{hops} hops, relay {pos}");
            }
        }
        let marked = mark_all(&cells(MAX_PATH_LEN + 1, 0));
        assert!(at_relay(0, &marked).is_err(), "the first hop refuses a {}-hop circuit", MAX_PATH_LEN + 1);
        // A client that marks only what it must still cannot pass the second hop.
        let lean: Vec<_> = cells(MAX_PATH_LEN + 1, 0).into_iter().map(|(h, e)| (h, e, true)).collect();
        assert!(at_relay(1, &lean).is_err());
    }

    #[test]
    fn a16_an_extend_in_a_plain_cell_and_early_after_plain_are_refused() {
        let mut g = EarlyGate::from_relay();
        g.on_cell(false).unwrap();
        assert!(!g.extend_allowed());
        assert_eq!(g.on_cell(true), Err(EarlyError::AfterPlain));
    }

    #[test]
    fn a16_a_guard_that_marks_one_more_cell_gets_the_circuit_closed() {
        // The client's cells of a 3-hop circuit that carries traffic, as the second hop sees
        // them; the guard turns the first plain one into an early one.
        let marked = mark_all(&cells(3, 20));
        let mut second = EarlyGate::from_relay();
        let mut flipped = false;
        let mut refused = false;
        for &(_, _, early) in marked.iter().filter(|c| c.0 >= 1) {
            let early = early || !std::mem::replace(&mut flipped, true);
            refused |= second.on_cell(early).is_err();
        }
        assert!(refused, "the second hop must refuse the guard's extra early cell");
    }
}
