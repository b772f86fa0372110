//! Layered, authenticated relay-cell crypto.
//!
//! Every relay cell body is [`RELAY_BODY_LEN`] = 509 bytes. The hop a cell is addressed to (or
//! that sends it) authenticates it with AES-256-GCM; every hop it passes adds or removes one
//! AES-256-CTR layer over all 509 bytes. Hop indices are 0-based: hop 0 is the guard.
//!
//! Counters: each hop keeps, per direction, a cell counter `n` (u64, starting at 0) that counts
//! every relay cell that passed it on this circuit in that direction, addressed to it or not. The
//! client keeps a mirror of every hop's two counters. A cell that passes hop `j` uses `n_j`
//! (the value before the cell) as the CTR IV of hop `j`'s layer and, if hop `j` authenticates
//! it, as the GCM nonce; then `n_j` advances by one. At [`MAX_CELLS_PER_DIRECTION`] no further
//! cell is processed ([`CellCryptoError::CounterExhausted`]): close the circuit.
//!
//! Outbound (client → hop `i`):
//! ```text
//! body[0..493] | body[493..509] = GCM-seal(Kf_auth_i, nonce(n_i), plaintext)   (ciphertext | tag)
//! for j = i, i-1, …, 0:  body ^= CTR(Kf_layer_j, iv(n_j))
//! ```
//! Relay `j` removes its layer, then tries to open with `Kf_auth_j`: success means the cell is
//! for it; failure means forward it. The last hop treats failure as tampering and destroys the
//! circuit.
//!
//! Inbound (hop `k` → client): hop `k` seals with `Kb_auth_k`, adds `Kb_layer_k`; every hop
//! `j < k` adds `Kb_layer_j`. The client removes layers 0, 1, … and tries to open as the last hop
//! first, putting one layer back per failed attempt; it advances the counters of hops `0..=k` only.
//! If no hop opens the cell, nothing advances and the circuit must be destroyed.
//!
//! The ciphers are behind [`CellAead`] and [`CellLayer`]; the whole construction is behind
//! [`ClientCellCrypto`] and [`RelayCellCrypto`], so a tagging-resistant replacement can be dropped
//! in without touching circuit code.

use super::aead::{
    AesCtrLayer, AesGcmAead, CellAead, CellLayer, RELAY_BODY_LEN, RELAY_PLAINTEXT_LEN, TAG_LEN,
};
use super::kdf::HopKeys;
use std::fmt;

/// Cells per circuit, hop and direction after which the circuit must close.
pub const MAX_CELLS_PER_DIRECTION: u64 = 1 << 32;

/// Why a relay cell could not be processed. All of them end the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CellCryptoError {
    /// A cell counter reached [`MAX_CELLS_PER_DIRECTION`]: close the circuit (not a peer fault).
    #[error("relay-cell counter exhausted; the circuit must be closed")]
    CounterExhausted,
    /// No hop could authenticate the cell (tampered, replayed, dropped or reordered cells):
    /// destroy the circuit.
    #[error("relay cell failed authentication; the circuit must be destroyed")]
    NotAuthenticated,
    /// The hop index is beyond the circuit's length (a caller bug), or the circuit has no hop.
    #[error("no such hop on this circuit")]
    NoSuchHop,
}

/// Whether an outbound cell was addressed to this relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recognized {
    /// Authenticated with our `Kf_auth`: the plaintext is in `body[..493]`.
    ForUs,
    /// Not ours: forward `body` to the next hop. At the last hop this means the cell was
    /// tampered with: destroy the circuit.
    NotForUs,
}

/// The client side of a circuit's cell crypto.
pub trait ClientCellCrypto: Send {
    /// Appends a hop (the next one after the current last hop).
    fn add_hop(&mut self, keys: &HopKeys);
    /// Number of hops.
    fn n_hops(&self) -> usize;
    /// Seals `body[..493]` for `hop` and adds the layers `hop..=0`.
    fn encrypt_outbound(
        &mut self,
        hop: usize,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<(), CellCryptoError>;
    /// Removes layers and authenticates; returns the sending hop with the plaintext in
    /// `body[..493]`.
    fn decrypt_inbound(
        &mut self,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<usize, CellCryptoError>;
}

/// The relay side of a circuit's cell crypto (one hop).
pub trait RelayCellCrypto: Send {
    /// Removes this hop's forward layer and checks whether the cell is for this hop.
    fn decrypt_outbound(
        &mut self,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<Recognized, CellCryptoError>;
    /// Seals a cell this hop originates and adds its backward layer.
    fn originate_inbound(&mut self, body: &mut [u8; RELAY_BODY_LEN])
        -> Result<(), CellCryptoError>;
    /// Adds this hop's backward layer to a cell from further hops.
    fn forward_inbound(&mut self, body: &mut [u8; RELAY_BODY_LEN]) -> Result<(), CellCryptoError>;
}

/// One direction of one hop: layer cipher, AEAD and counter.
struct Direction<A, L> {
    layer: L,
    auth: A,
    /// Cells that have passed this hop in this direction.
    n: u64,
}

impl<A: CellAead, L: CellLayer> Direction<A, L> {
    fn new(layer_key: &[u8; 32], auth_key: &[u8; 32]) -> Self {
        Direction {
            layer: L::new(layer_key),
            auth: A::new(auth_key),
            n: 0,
        }
    }

    fn check(&self) -> Result<(), CellCryptoError> {
        if self.n >= MAX_CELLS_PER_DIRECTION {
            Err(CellCryptoError::CounterExhausted)
        } else {
            Ok(())
        }
    }

    /// Returns the counter for this cell and advances it (advance first, never roll back).
    fn take(&mut self) -> u64 {
        let n = self.n;
        self.n += 1;
        n
    }

    fn seal(&self, n: u64, body: &mut [u8; RELAY_BODY_LEN]) {
        let (pt, tag_out) = split(body);
        let tag = self.auth.seal(n, pt);
        tag_out.copy_from_slice(&tag);
    }

    fn open(&self, n: u64, body: &mut [u8; RELAY_BODY_LEN]) -> bool {
        let (ct, tag) = split(body);
        let tag: [u8; TAG_LEN] = *tag;
        self.auth.open(n, ct, &tag)
    }
}

fn split(body: &mut [u8; RELAY_BODY_LEN]) -> (&mut [u8; RELAY_PLAINTEXT_LEN], &mut [u8; TAG_LEN]) {
    let (a, b) = body.split_at_mut(RELAY_PLAINTEXT_LEN);
    (
        a.try_into().expect("493-byte prefix"),
        b.try_into().expect("16-byte suffix"),
    )
}

struct Hop<A, L> {
    fwd: Direction<A, L>,
    bwd: Direction<A, L>,
}

impl<A: CellAead, L: CellLayer> Hop<A, L> {
    fn new(keys: &HopKeys) -> Self {
        Hop {
            fwd: Direction::new(&keys.kf_layer, &keys.kf_auth),
            bwd: Direction::new(&keys.kb_layer, &keys.kb_auth),
        }
    }
}

/// Client side: one entry per hop, hop 0 = guard.
pub struct ClientCrypto<A: CellAead = AesGcmAead, L: CellLayer = AesCtrLayer> {
    hops: Vec<Hop<A, L>>,
}

impl<A: CellAead, L: CellLayer> fmt::Debug for ClientCrypto<A, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counters: Vec<(u64, u64)> = self.hops.iter().map(|h| (h.fwd.n, h.bwd.n)).collect();
        f.debug_struct("ClientCrypto")
            .field("counters", &counters)
            .finish_non_exhaustive()
    }
}

impl ClientCrypto {
    /// A circuit with no hops yet, with the default ciphers.
    pub fn new() -> Self {
        Self::with_ciphers()
    }
}

impl Default for ClientCrypto {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: CellAead, L: CellLayer> ClientCrypto<A, L> {
    /// A circuit with no hops yet, with the ciphers `A` and `L`.
    pub fn with_ciphers() -> Self {
        ClientCrypto { hops: Vec::new() }
    }

    /// Appends a hop (the next one after the current last hop).
    pub fn add_hop(&mut self, keys: &HopKeys) {
        self.hops.push(Hop::new(keys));
    }

    /// Number of hops.
    pub fn n_hops(&self) -> usize {
        self.hops.len()
    }

    /// `body[..493]` holds the plaintext relay message; seals it for `hop` and adds the layers
    /// `hop..=0`; advances the forward counters of hops `0..=hop`. `body[493..]` is overwritten.
    pub fn encrypt_outbound(
        &mut self,
        hop: usize,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<(), CellCryptoError> {
        let path = self
            .hops
            .get_mut(..=hop)
            .ok_or(CellCryptoError::NoSuchHop)?;
        for h in path.iter() {
            h.fwd.check()?;
        }
        let (target, _) = path.split_last().expect("hop index is in range");
        let n = target.fwd.n;
        target.fwd.seal(n, body);
        for h in path.iter_mut().rev() {
            let n = h.fwd.take();
            h.fwd.layer.apply(n, body);
        }
        Ok(())
    }

    /// Removes layers, finds which hop sent the cell (the last hop is tried first), leaves the
    /// plaintext in `body[..493]` and returns the hop index. Advances the backward counters of
    /// hops `0..=hop` only. On error nothing advances and `body` holds unspecified bytes; destroy
    /// the circuit.
    pub fn decrypt_inbound(
        &mut self,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<usize, CellCryptoError> {
        if self.hops.is_empty() {
            return Err(CellCryptoError::NoSuchHop);
        }
        for h in &self.hops {
            h.bwd.check()?;
        }
        for h in &self.hops {
            h.bwd.layer.apply(h.bwd.n, body);
        }
        for k in (0..self.hops.len()).rev() {
            let h = &self.hops[k];
            if h.bwd.open(h.bwd.n, body) {
                for h in &mut self.hops[..=k] {
                    h.bwd.take();
                }
                return Ok(k);
            }
            // Not from hop k: put its layer back before trying hop k-1.
            h.bwd.layer.apply(h.bwd.n, body);
        }
        Err(CellCryptoError::NotAuthenticated)
    }

    /// Sets every counter of every hop to `n`. Only for tests (e.g. counter exhaustion).
    #[doc(hidden)]
    pub fn dangerous_set_counters(&mut self, n: u64) {
        for h in &mut self.hops {
            h.fwd.n = n;
            h.bwd.n = n;
        }
    }
}

impl<A: CellAead, L: CellLayer> ClientCellCrypto for ClientCrypto<A, L> {
    fn add_hop(&mut self, keys: &HopKeys) {
        ClientCrypto::add_hop(self, keys)
    }
    fn n_hops(&self) -> usize {
        ClientCrypto::n_hops(self)
    }
    fn encrypt_outbound(
        &mut self,
        hop: usize,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<(), CellCryptoError> {
        ClientCrypto::encrypt_outbound(self, hop, body)
    }
    fn decrypt_inbound(
        &mut self,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<usize, CellCryptoError> {
        ClientCrypto::decrypt_inbound(self, body)
    }
}

/// Relay side: this hop's keys and counters.
pub struct RelayCrypto<A: CellAead = AesGcmAead, L: CellLayer = AesCtrLayer> {
    hop: Hop<A, L>,
}

impl<A: CellAead, L: CellLayer> fmt::Debug for RelayCrypto<A, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayCrypto")
            .field("n_forward", &self.hop.fwd.n)
            .field("n_backward", &self.hop.bwd.n)
            .finish_non_exhaustive()
    }
}

impl RelayCrypto {
    /// This hop's state, with the default ciphers.
    pub fn new(keys: &HopKeys) -> Self {
        Self::with_ciphers(keys)
    }
}

impl<A: CellAead, L: CellLayer> RelayCrypto<A, L> {
    /// This hop's state, with the ciphers `A` and `L`.
    pub fn with_ciphers(keys: &HopKeys) -> Self {
        RelayCrypto {
            hop: Hop::new(keys),
        }
    }

    /// Removes our forward layer; if our `Kf_auth` opens the cell, the plaintext is in
    /// `body[..493]` and the result is [`Recognized::ForUs`]; otherwise `body` holds the cell to
    /// forward ([`Recognized::NotForUs`]). The counter advances either way.
    pub fn decrypt_outbound(
        &mut self,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<Recognized, CellCryptoError> {
        let d = &mut self.hop.fwd;
        d.check()?;
        let n = d.take();
        d.layer.apply(n, body);
        Ok(if d.open(n, body) {
            Recognized::ForUs
        } else {
            Recognized::NotForUs
        })
    }

    /// A cell we originate toward the client: `body[..493]` holds the plaintext; seal it with
    /// `Kb_auth`, then add our `Kb_layer`.
    pub fn originate_inbound(
        &mut self,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<(), CellCryptoError> {
        let d = &mut self.hop.bwd;
        d.check()?;
        let n = d.take();
        d.seal(n, body);
        d.layer.apply(n, body);
        Ok(())
    }

    /// A cell from further hops going toward the client: add our `Kb_layer` only.
    pub fn forward_inbound(
        &mut self,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<(), CellCryptoError> {
        let d = &mut self.hop.bwd;
        d.check()?;
        let n = d.take();
        d.layer.apply(n, body);
        Ok(())
    }

    /// Sets both counters to `n`. Only for tests (e.g. counter exhaustion).
    #[doc(hidden)]
    pub fn dangerous_set_counters(&mut self, n: u64) {
        self.hop.fwd.n = n;
        self.hop.bwd.n = n;
    }
}

impl<A: CellAead, L: CellLayer> RelayCellCrypto for RelayCrypto<A, L> {
    fn decrypt_outbound(
        &mut self,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<Recognized, CellCryptoError> {
        RelayCrypto::decrypt_outbound(self, body)
    }
    fn originate_inbound(
        &mut self,
        body: &mut [u8; RELAY_BODY_LEN],
    ) -> Result<(), CellCryptoError> {
        RelayCrypto::originate_inbound(self, body)
    }
    fn forward_inbound(&mut self, body: &mut [u8; RELAY_BODY_LEN]) -> Result<(), CellCryptoError> {
        RelayCrypto::forward_inbound(self, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::kdf::derive_hop_keys;
    use proptest::prelude::*;
    use rand::{rngs::OsRng, RngCore};

    type Body = [u8; RELAY_BODY_LEN];

    /// A client and the relays of one circuit, connected in memory.
    struct Circuit {
        client: ClientCrypto,
        relays: Vec<RelayCrypto>,
    }

    /// What happened to an outbound cell along the path.
    #[derive(Debug, PartialEq, Eq)]
    enum Delivered {
        /// Hop `usize` recognized it, with this plaintext.
        At(usize, Vec<u8>),
        /// The last hop could not open it: it destroys the circuit.
        Destroyed,
    }

    fn keys_from_rng() -> HopKeys {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        derive_hop_keys(&seed)
    }

    impl Circuit {
        fn new(n: usize) -> Self {
            let mut client = ClientCrypto::new();
            let mut relays = Vec::new();
            for _ in 0..n {
                let k = keys_from_rng();
                client.add_hop(&k);
                relays.push(RelayCrypto::new(&k));
            }
            Circuit { client, relays }
        }

        /// Relay behaviour for a cell arriving at hop `from`: each hop removes its layer; the
        /// first that recognizes the cell takes it; the last hop destroys on failure.
        /// `tamper(link, body)` runs before hop `link` receives the cell.
        fn relay_outbound(
            &mut self,
            mut body: Body,
            tamper: &mut dyn FnMut(usize, &mut Body),
        ) -> Delivered {
            let last = self.relays.len() - 1;
            for (j, r) in self.relays.iter_mut().enumerate() {
                tamper(j, &mut body);
                match r.decrypt_outbound(&mut body).unwrap() {
                    Recognized::ForUs => {
                        return Delivered::At(j, body[..RELAY_PLAINTEXT_LEN].to_vec())
                    }
                    Recognized::NotForUs if j == last => return Delivered::Destroyed,
                    Recognized::NotForUs => {}
                }
            }
            unreachable!()
        }

        fn send_out(&mut self, hop: usize, pt: &[u8]) -> Body {
            let mut body = [0u8; RELAY_BODY_LEN];
            body[..pt.len()].copy_from_slice(pt);
            self.client.encrypt_outbound(hop, &mut body).unwrap();
            body
        }

        /// Hop `from` originates `pt`; hops below forward. `tamper(link, body)` runs on the link
        /// from hop `link` toward the client (link 0 is guard → client).
        fn relay_inbound(
            &mut self,
            from: usize,
            pt: &[u8],
            tamper: &mut dyn FnMut(usize, &mut Body),
        ) -> Body {
            let mut body = [0u8; RELAY_BODY_LEN];
            body[..pt.len()].copy_from_slice(pt);
            self.relays[from].originate_inbound(&mut body).unwrap();
            tamper(from, &mut body);
            for j in (0..from).rev() {
                self.relays[j].forward_inbound(&mut body).unwrap();
                tamper(j, &mut body);
            }
            body
        }

        fn client_counters(&self) -> Vec<(u64, u64)> {
            self.client
                .hops
                .iter()
                .map(|h| (h.fwd.n, h.bwd.n))
                .collect()
        }

        fn relay_counters(&self) -> Vec<(u64, u64)> {
            self.relays
                .iter()
                .map(|r| (r.hop.fwd.n, r.hop.bwd.n))
                .collect()
        }
    }

    fn no_tamper() -> impl FnMut(usize, &mut Body) {
        |_, _| {}
    }

    fn msg(tag: &str) -> Vec<u8> {
        let mut m = tag.as_bytes().to_vec();
        m.resize(RELAY_PLAINTEXT_LEN, 0xa5);
        m
    }

    #[test]
    fn three_hop_round_trip_both_directions() {
        let mut c = Circuit::new(3);
        for round in 0..3 {
            for hop in 0..3 {
                let pt = msg(&format!("out {round} {hop}"));
                let body = c.send_out(hop, &pt);
                assert_eq!(
                    c.relay_outbound(body, &mut no_tamper()),
                    Delivered::At(hop, pt)
                );

                let pt = msg(&format!("in {round} {hop}"));
                let mut body = c.relay_inbound(hop, &pt, &mut no_tamper());
                assert_eq!(c.client.decrypt_inbound(&mut body), Ok(hop));
                assert_eq!(&body[..RELAY_PLAINTEXT_LEN], &pt[..]);
            }
        }
        // Client's mirror equals the relays' counters: guard saw 9 cells each way, middle 6,
        // exit 3.
        assert_eq!(c.client_counters(), vec![(9, 9), (6, 6), (3, 3)]);
        assert_eq!(c.relay_counters(), c.client_counters());
    }

    #[test]
    fn a14_flipped_bit_outbound_is_rejected_by_last_hop() {
        for target in 0..3 {
            for link in 0..3 {
                for byte in 0..RELAY_BODY_LEN {
                    for bit in [0u8, 5] {
                        let mut c = Circuit::new(3);
                        let body = c.send_out(target, &msg("secret"));
                        let got = c.relay_outbound(body, &mut |j, b: &mut Body| {
                            if j == link {
                                b[byte] ^= 1 << bit;
                            }
                        });
                        if link <= target {
                            // The addressed hop fails to open it and forwards; the last hop
                            // cannot open it either and destroys the circuit.
                            assert_eq!(
                                got,
                                Delivered::Destroyed,
                                "target {target} link {link} byte {byte}"
                            );
                        } else {
                            // Flipped after delivery: the cell never reached that link.
                            assert_eq!(got, Delivered::At(target, msg("secret")));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a14_flipped_bit_inbound_is_rejected_by_client_and_advances_nothing() {
        for from in 0..3 {
            for link in 0..=from {
                for byte in 0..RELAY_BODY_LEN {
                    let mut c = Circuit::new(3);
                    let mut body = c.relay_inbound(from, &msg("reply"), &mut |j, b: &mut Body| {
                        if j == link {
                            b[byte] ^= 0x10;
                        }
                    });
                    assert_eq!(
                        c.client.decrypt_inbound(&mut body),
                        Err(CellCryptoError::NotAuthenticated),
                        "from {from} link {link} byte {byte}"
                    );
                    assert_eq!(c.client_counters(), vec![(0, 0); 3]);
                }
            }
        }
    }

    #[test]
    fn a15_dropped_outbound_cell_breaks_the_next_one() {
        let mut c = Circuit::new(3);
        let _dropped = c.send_out(2, &msg("one"));
        let body = c.send_out(2, &msg("two"));
        assert_eq!(
            c.relay_outbound(body, &mut no_tamper()),
            Delivered::Destroyed
        );
    }

    #[test]
    fn a15_replayed_outbound_cell_is_rejected() {
        let mut c = Circuit::new(3);
        let body = c.send_out(2, &msg("once"));
        assert_eq!(
            c.relay_outbound(body, &mut no_tamper()),
            Delivered::At(2, msg("once"))
        );
        assert_eq!(
            c.relay_outbound(body, &mut no_tamper()),
            Delivered::Destroyed
        );
        // And the genuine next cell fails too: counters are out of step.
        let next = c.send_out(2, &msg("next"));
        assert_eq!(
            c.relay_outbound(next, &mut no_tamper()),
            Delivered::Destroyed
        );
    }

    #[test]
    fn a15_dropped_or_replayed_inbound_cell_breaks_the_next_one() {
        // Dropped at the guard: the guard saw it, the client did not.
        let mut c = Circuit::new(3);
        let _dropped = c.relay_inbound(2, &msg("one"), &mut no_tamper());
        let mut body = c.relay_inbound(2, &msg("two"), &mut no_tamper());
        assert_eq!(
            c.client.decrypt_inbound(&mut body),
            Err(CellCryptoError::NotAuthenticated)
        );

        // Replayed toward the client.
        let mut c = Circuit::new(3);
        let body = c.relay_inbound(2, &msg("one"), &mut no_tamper());
        let mut b1 = body;
        assert_eq!(c.client.decrypt_inbound(&mut b1), Ok(2));
        let mut b2 = body;
        assert_eq!(
            c.client.decrypt_inbound(&mut b2),
            Err(CellCryptoError::NotAuthenticated)
        );
    }

    #[test]
    fn same_plaintext_twice_gives_unrelated_ciphertexts() {
        let mut c = Circuit::new(3);
        let pt = msg("same");
        let mut links = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..2 {
            let mut body = c.send_out(2, &pt);
            for (j, r) in c.relays.iter_mut().enumerate() {
                links[j].push(body);
                r.decrypt_outbound(&mut body).unwrap();
            }
            assert_eq!(&body[..RELAY_PLAINTEXT_LEN], &pt[..]);
        }
        for (j, l) in links.iter().enumerate() {
            let equal = l[0].iter().zip(l[1].iter()).filter(|(a, b)| a == b).count();
            // Random bytes agree with probability 1/256: expect ~2 of 509.
            assert!(equal < 20, "link {j}: {equal} equal bytes");
        }
        // The XOR of the two cells must differ from link to link (no shared keystream).
        let xor = |a: &Body, b: &Body| -> Vec<u8> { a.iter().zip(b).map(|(x, y)| x ^ y).collect() };
        assert_ne!(
            xor(&links[0][0], &links[0][1]),
            xor(&links[1][0], &links[1][1])
        );
        assert_ne!(
            xor(&links[1][0], &links[1][1]),
            xor(&links[2][0], &links[2][1])
        );
    }

    #[test]
    fn two_circuits_differ_for_same_plaintext() {
        let mut a = Circuit::new(3);
        let mut b = Circuit::new(3);
        let pt = msg("hello");
        assert_ne!(a.send_out(2, &pt), b.send_out(2, &pt));
        assert_ne!(
            a.relay_inbound(2, &pt, &mut no_tamper()),
            b.relay_inbound(2, &pt, &mut no_tamper())
        );
    }

    #[test]
    fn backward_cell_from_middle_advances_only_hops_0_and_1() {
        let mut c = Circuit::new(3);
        // Some exit traffic first so counters differ.
        let mut b = c.relay_inbound(2, &msg("x"), &mut no_tamper());
        assert_eq!(c.client.decrypt_inbound(&mut b), Ok(2));
        let mut b = c.relay_inbound(1, &msg("from middle"), &mut no_tamper());
        assert_eq!(c.client.decrypt_inbound(&mut b), Ok(1));
        assert_eq!(&b[..RELAY_PLAINTEXT_LEN], &msg("from middle")[..]);
        assert_eq!(c.client_counters(), vec![(0, 2), (0, 2), (0, 1)]);
        assert_eq!(c.relay_counters(), c.client_counters());
        // The exit can still talk: its counter was left alone.
        let mut b = c.relay_inbound(2, &msg("y"), &mut no_tamper());
        assert_eq!(c.client.decrypt_inbound(&mut b), Ok(2));
        let mut b = c.relay_inbound(0, &msg("z"), &mut no_tamper());
        assert_eq!(c.client.decrypt_inbound(&mut b), Ok(0));
        assert_eq!(c.client_counters(), vec![(0, 4), (0, 3), (0, 2)]);
    }

    #[test]
    fn outbound_to_middle_does_not_advance_exit() {
        let mut c = Circuit::new(3);
        let b = c.send_out(1, &msg("m"));
        assert_eq!(
            c.relay_outbound(b, &mut no_tamper()),
            Delivered::At(1, msg("m"))
        );
        assert_eq!(c.client_counters(), vec![(1, 0), (1, 0), (0, 0)]);
        assert_eq!(c.relay_counters(), c.client_counters());
        let b = c.send_out(2, &msg("e"));
        assert_eq!(
            c.relay_outbound(b, &mut no_tamper()),
            Delivered::At(2, msg("e"))
        );
    }

    #[test]
    fn a15_counter_exhaustion_closes_before_wrap() {
        let mut c = Circuit::new(3);
        c.client.dangerous_set_counters(MAX_CELLS_PER_DIRECTION - 3);
        for r in &mut c.relays {
            r.dangerous_set_counters(MAX_CELLS_PER_DIRECTION - 3);
        }
        for i in 0..3 {
            let b = c.send_out(2, &msg("near the end"));
            assert_eq!(
                c.relay_outbound(b, &mut no_tamper()),
                Delivered::At(2, msg("near the end")),
                "cell {i}"
            );
            let mut b = c.relay_inbound(2, &msg("back"), &mut no_tamper());
            assert_eq!(c.client.decrypt_inbound(&mut b), Ok(2));
        }
        let mut body = [0u8; RELAY_BODY_LEN];
        assert_eq!(
            c.client.encrypt_outbound(0, &mut body),
            Err(CellCryptoError::CounterExhausted)
        );
        assert_eq!(
            c.client.decrypt_inbound(&mut body),
            Err(CellCryptoError::CounterExhausted)
        );
        for r in &mut c.relays {
            assert_eq!(
                r.decrypt_outbound(&mut body),
                Err(CellCryptoError::CounterExhausted)
            );
            assert_eq!(
                r.originate_inbound(&mut body),
                Err(CellCryptoError::CounterExhausted)
            );
            assert_eq!(
                r.forward_inbound(&mut body),
                Err(CellCryptoError::CounterExhausted)
            );
        }
        assert!(c
            .client_counters()
            .iter()
            .all(|&(f, b)| f == MAX_CELLS_PER_DIRECTION && b == f));
    }

    #[test]
    fn no_such_hop() {
        let mut c = ClientCrypto::new();
        let mut body = [0u8; RELAY_BODY_LEN];
        assert_eq!(
            c.encrypt_outbound(0, &mut body),
            Err(CellCryptoError::NoSuchHop)
        );
        assert_eq!(
            c.decrypt_inbound(&mut body),
            Err(CellCryptoError::NoSuchHop)
        );
        c.add_hop(&keys_from_rng());
        assert_eq!(c.n_hops(), 1);
        assert_eq!(
            c.encrypt_outbound(1, &mut body),
            Err(CellCryptoError::NoSuchHop)
        );
        assert_eq!(c.client_counters_for_test(), vec![(0, 0)]);
    }

    impl ClientCrypto {
        fn client_counters_for_test(&self) -> Vec<(u64, u64)> {
            self.hops.iter().map(|h| (h.fwd.n, h.bwd.n)).collect()
        }
    }

    #[test]
    fn each_hop_and_direction_uses_its_own_keys() {
        // A cell sealed for hop 1 must not open at hop 0 or hop 2 (with layers removed
        // correctly): the relays' `auth` keys are distinct.
        let mut c = Circuit::new(3);
        let body = c.send_out(1, &msg("only middle"));
        assert_eq!(
            c.relay_outbound(body, &mut no_tamper()),
            Delivered::At(1, msg("only middle"))
        );
        // A forward-sealed cell is not accepted backward by the client.
        let mut c = Circuit::new(1);
        let mut body = c.send_out(0, &msg("f"));
        assert_eq!(
            c.client.decrypt_inbound(&mut body),
            Err(CellCryptoError::NotAuthenticated)
        );
    }

    #[test]
    fn works_through_the_traits() {
        let k = keys_from_rng();
        let mut client: Box<dyn ClientCellCrypto> = Box::new(ClientCrypto::new());
        client.add_hop(&k);
        let mut relay: Box<dyn RelayCellCrypto> = Box::new(RelayCrypto::new(&k));
        let mut body = [1u8; RELAY_BODY_LEN];
        client.encrypt_outbound(0, &mut body).unwrap();
        assert_eq!(relay.decrypt_outbound(&mut body), Ok(Recognized::ForUs));
        relay.originate_inbound(&mut body).unwrap();
        assert_eq!(client.decrypt_inbound(&mut body), Ok(0));
        assert_eq!(client.n_hops(), 1);
    }

    proptest! {
        #[test]
        fn decrypt_never_panics_on_random_bodies(bytes in prop::collection::vec(any::<u8>(), RELAY_BODY_LEN)) {
            let body: Body = bytes.try_into().unwrap();
            let mut c = Circuit::new(3);
            let mut b = body;
            prop_assert_eq!(c.client.decrypt_inbound(&mut b), Err(CellCryptoError::NotAuthenticated));
            prop_assert_eq!(c.client_counters(), vec![(0, 0); 3]);
            for r in &mut c.relays {
                let mut b = body;
                prop_assert_eq!(r.decrypt_outbound(&mut b), Ok(Recognized::NotForUs));
            }
        }
    }
}
