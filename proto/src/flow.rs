//! Flow control (sans-IO).
//!
//! **Circuits**: the sender may have as many DATA cells unacknowledged as its congestion window
//! allows ([`crate::congestion`], Vegas with slow start), never more than the circuit window.
//! The receiver sends a circuit-level SENDME each time the application has *consumed* an
//! increment's worth of cells (written them to its socket), never merely on receipt, so a
//! reader that stops reading stops the sender, and a sender beyond the circuit window is a
//! protocol violation. **Streams** have no window: a stream's receiver sends XOFF when more than
//! [`FlowParams::xoff_cells`] of its cells wait for its application, and XON once half of them
//! were written; the sender stops reading the stream's socket in between.

use std::collections::VecDeque;

use crate::congestion::CcParams;
use crate::ext::{Extension, Extensions};
use crate::relay_msg::MAX_BODY_PER_CELL;

/// Default circuit window: the most DATA cells a sender may have unacknowledged, which its
/// congestion window never exceeds (2.5 MB, a 30 ms round trip at 80 MB/s).
pub const CIRCUIT_WINDOW: u32 = 5000;
/// Cells acknowledged by one circuit-level SENDME (each gives the sender a round-trip sample).
pub const CIRCUIT_SENDME_INC: u32 = 50;
/// Cells of one stream waiting for its application before its receiver sends XOFF.
pub const XOFF_CELLS: u32 = 500;

/// Bounds of the circuit window (the `circuit-window` consensus parameter's).
pub const CIRCUIT_WINDOW_RANGE: (u32, u32) = (100, 10_000);
/// Bounds of the XOFF threshold (the `stream-xoff` consensus parameter's).
pub const XOFF_RANGE: (u32, u32) = (50, 5_000);
/// The extension (in the circuit handshake's client data) carrying [`FlowParams`]. Critical: a
/// hop that cannot honour it must refuse the circuit rather than use other parameters.
pub const EXT_FLOW_PARAMS: u8 = 0x81;

/// The flow-control and congestion-control parameters both ends of a circuit use. The client
/// picks them (from its consensus's parameters) and sends them to every hop in its CREATE, so
/// the ends always agree, whatever consensus each holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowParams {
    pub circuit_window: u32,
    pub circuit_sendme_inc: u32,
    pub xoff_cells: u32,
    pub cc: CcParams,
}

/// Why flow parameters were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowParamError {
    #[error("flow-control extension is not 16 bytes")]
    BadLength,
    #[error("flow-control parameters out of bounds (see docs/PROTOCOL.md, \"Flow and congestion control\")")]
    OutOfBounds,
}

impl Default for FlowParams {
    fn default() -> Self {
        FlowParams { circuit_window: CIRCUIT_WINDOW, circuit_sendme_inc: CIRCUIT_SENDME_INC, xoff_cells: XOFF_CELLS, cc: CcParams::default() }
    }
}

impl FlowParams {
    /// Checks the bounds: the circuit window in its range, the increment from 1 to half the
    /// window, the XOFF threshold in its range, `alpha ≤ beta ≤ delta`, and the initial window
    /// and every Vegas parameter at most the circuit window's upper bound (a circuit's window
    /// starts at the initial window clamped to two increments..the circuit window).
    pub fn checked(self) -> Result<Self, FlowParamError> {
        let within = |v: u32, (lo, hi): (u32, u32)| (lo..=hi).contains(&v);
        let (w, inc, c) = (self.circuit_window, self.circuit_sendme_inc, self.cc);
        let ok = within(w, CIRCUIT_WINDOW_RANGE)
            && (1..=w / 2).contains(&inc)
            && within(self.xoff_cells, XOFF_RANGE)
            && (2..=CIRCUIT_WINDOW_RANGE.1).contains(&c.cwnd_init)
            && c.alpha <= c.beta
            && c.beta <= c.delta
            && c.delta <= CIRCUIT_WINDOW_RANGE.1
            && c.gamma <= CIRCUIT_WINDOW_RANGE.1;
        ok.then_some(self).ok_or(FlowParamError::OutOfBounds)
    }

    /// The extension carrying these parameters, eight `u16`s: circuit window, circuit SENDME
    /// increment, XOFF threshold, initial congestion window, Vegas alpha, beta, gamma, delta.
    pub fn to_extension(self) -> Extension {
        let c = self.cc;
        let mut data = Vec::with_capacity(16);
        for v in [self.circuit_window, self.circuit_sendme_inc, self.xoff_cells, c.cwnd_init, c.alpha, c.beta, c.gamma, c.delta] {
            data.extend_from_slice(&(v.min(u16::MAX as u32) as u16).to_be_bytes());
        }
        Extension { ty: EXT_FLOW_PARAMS, data }
    }

    /// The parameters a client asked for in `ext`, checked; the defaults when it asked for none.
    pub fn from_extensions(ext: &Extensions) -> Result<Self, FlowParamError> {
        let Some(e) = ext.0.iter().find(|e| e.ty == EXT_FLOW_PARAMS) else { return Ok(Self::default()) };
        let d: [u8; 16] = e.data.as_slice().try_into().map_err(|_| FlowParamError::BadLength)?;
        let v = |i: usize| u32::from(u16::from_be_bytes([d[2 * i], d[2 * i + 1]]));
        let cc = CcParams { cwnd_init: v(3), alpha: v(4), beta: v(5), gamma: v(6), delta: v(7) };
        FlowParams { circuit_window: v(0), circuit_sendme_inc: v(1), xoff_cells: v(2), cc }.checked()
    }
}

/// A peer broke flow control.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("peer sent DATA beyond the window")]
    WindowExceeded,
    #[error("peer sent a SENDME that was not due")]
    UnexpectedSendme,
    #[error("peer sent a circuit SENDME without the token of the DATA it acknowledges")]
    BadSendmeToken,
    #[error("peer sent DATA with a SENDME token where none was due, or none where one was")]
    MisplacedToken,
}

/// Bytes of the token that authenticates a circuit-level SENDME.
pub const SENDME_TOKEN_LEN: usize = 16;
/// The token a circuit-level SENDME echoes.
pub type SendmeToken = [u8; SENDME_TOKEN_LEN];

/// Authenticated circuit-level SENDMEs, sending side (THREATS A27). The DATA cell that completes
/// each increment of the circuit window (cell number k × increment, counting every DATA cell of
/// the circuit in order) carries a fresh random token; the SENDME for that increment must echo
/// it. A peer that did not receive and decrypt that cell cannot open the window: a client can
/// no longer make an exit queue data it never reads.
#[derive(Debug, Clone)]
pub struct TokenSender {
    queued: u64,
    inc: u64,
    expected: VecDeque<SendmeToken>,
}

impl TokenSender {
    pub fn new(p: &FlowParams) -> Self {
        TokenSender { queued: 0, inc: u64::from(p.circuit_sendme_inc), expected: VecDeque::new() }
    }
    /// Whether the next DATA cell queued must carry a token.
    pub fn due(&self) -> bool {
        (self.queued + 1) % self.inc == 0
    }
    /// How to split `n` bytes read at once from one stream into the next DATA cells: each cell's
    /// length and whether it carries a token (then it holds at most 471 bytes). Cells are filled
    /// in order and the last is the partly filled one, as without tokens — except when the
    /// bytes would have filled whole cells exactly: then a token's 16 bytes go into a short
    /// first cell, so the last cell stays full (a receiver reads a full last cell as "the
    /// sender had more ready", see the stall rule in docs/PROTOCOL.md).
    pub fn plan(&self, n: usize) -> Vec<(usize, bool)> {
        let token_at = |j: usize| (self.queued + 1 + j as u64) % self.inc == 0;
        let cap = |j: usize| if token_at(j) { MAX_BODY_PER_CELL - SENDME_TOKEN_LEN } else { MAX_BODY_PER_CELL };
        let mut cells = Vec::new();
        let mut left = n;
        while left > 0 {
            let len = left.min(cap(cells.len()));
            cells.push((len, token_at(cells.len())));
            left -= len;
        }
        let m = cells.len();
        let last_short = cells.last().is_some_and(|&(len, _)| len < cap(m - 1));
        if n % MAX_BODY_PER_CELL != 0 || !last_short || !cells.iter().any(|c| c.1) {
            return cells;
        }
        // Fill from the back; the first cell takes what is left, if anything.
        let mut back = cells.clone();
        let mut left = n;
        for (j, c) in back.iter_mut().enumerate().skip(1).rev() {
            c.0 = cap(j).min(left);
            left -= c.0;
        }
        if left == 0 || left > cap(0) || back.iter().any(|c| c.0 == 0) {
            return cells;
        }
        back[0].0 = left;
        back
    }

    /// A DATA cell was queued for sending, with `token` (which must be given exactly when due).
    pub fn on_data(&mut self, token: Option<SendmeToken>) {
        debug_assert_eq!(token.is_some(), self.due());
        self.queued += 1;
        if let Some(t) = token {
            self.expected.push_back(t);
        }
    }
    /// A circuit-level SENDME arrived carrying `token`.
    pub fn on_sendme(&mut self, token: Option<&SendmeToken>) -> Result<(), FlowError> {
        match (self.expected.front(), token) {
            (Some(want), Some(got)) if want == got => {
                self.expected.pop_front();
                Ok(())
            }
            _ => Err(FlowError::BadSendmeToken),
        }
    }
}

/// Authenticated circuit-level SENDMEs, receiving side: keeps the token of every increment's
/// last DATA cell until the SENDME that acknowledges it.
#[derive(Debug, Clone)]
pub struct TokenReceiver {
    received: u64,
    inc: u64,
    held: VecDeque<SendmeToken>,
}

impl TokenReceiver {
    pub fn new(p: &FlowParams) -> Self {
        TokenReceiver { received: 0, inc: u64::from(p.circuit_sendme_inc), held: VecDeque::new() }
    }
    /// A DATA cell arrived (after the window check); a token where none is due, or none where
    /// one is, is a violation.
    pub fn on_data(&mut self, token: Option<SendmeToken>) -> Result<(), FlowError> {
        self.received += 1;
        let due = self.received % self.inc == 0;
        match token {
            Some(t) if due => self.held.push_back(t),
            None if !due => {}
            _ => return Err(FlowError::MisplacedToken),
        }
        Ok(())
    }
    /// The token for the next circuit-level SENDME. Always there for a SENDME that is due: a
    /// SENDME is due once k × increment cells were consumed, so cell k × increment, which
    /// carried the token, was received.
    pub fn next_sendme(&mut self) -> Option<SendmeToken> {
        self.held.pop_front()
    }
}

/// The receiving side of the circuit window.
#[derive(Debug, Clone)]
pub struct RecvWindow {
    /// Cells the peer may still send.
    remaining: u32,
    /// Cells consumed but not yet acknowledged.
    consumed: u32,
    inc: u32,
}

impl RecvWindow {
    pub fn new(max: u32, inc: u32) -> Self {
        RecvWindow { remaining: max, consumed: 0, inc }
    }
    pub fn circuit(p: &FlowParams) -> Self {
        Self::new(p.circuit_window, p.circuit_sendme_inc)
    }
    /// Cells the peer may still send before it needs a SENDME.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }
    /// A DATA cell arrived.
    pub fn on_data(&mut self) -> Result<(), FlowError> {
        if self.remaining == 0 {
            return Err(FlowError::WindowExceeded);
        }
        self.remaining -= 1;
        Ok(())
    }
    /// The application consumed `n` cells; returns how many SENDMEs to send now.
    pub fn on_consumed(&mut self, n: u32) -> u32 {
        self.consumed += n;
        let k = self.consumed / self.inc;
        self.consumed -= k * self.inc;
        self.remaining += k * self.inc;
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters with a circuit window of `w` and an increment of `inc`, otherwise defaults
    /// scaled to fit.
    fn params(w: u32, inc: u32) -> FlowParams {
        let cc = CcParams { cwnd_init: 2 * inc, alpha: 0, beta: 0, gamma: 0, delta: 0 };
        FlowParams { circuit_window: w, circuit_sendme_inc: inc, xoff_cells: 50, cc }
    }

    #[test]
    fn the_circuit_window_opens_only_on_consumption() {
        let p = params(200, 50);
        let mut r = RecvWindow::circuit(&p);
        for _ in 0..200 {
            r.on_data().unwrap();
        }
        assert_eq!(r.on_data(), Err(FlowError::WindowExceeded));
        assert_eq!(r.on_consumed(49), 0);
        assert_eq!(r.on_consumed(1), 1);
        assert_eq!(r.remaining(), 50);
        r.on_data().unwrap();
    }

    #[test]
    fn a27_circuit_sendmes_must_echo_the_token_of_the_data_they_acknowledge() {
        let p = params(100, 10);
        let (mut tx, mut rx) = (TokenSender::new(&p), TokenReceiver::new(&p));
        for i in 1..=30u8 {
            let t = tx.due().then_some([i; SENDME_TOKEN_LEN]);
            assert_eq!(t.is_some(), i % 10 == 0);
            tx.on_data(t);
            rx.on_data(t).unwrap();
        }
        // A forged SENDME (a guessed token, or none) is refused; the real ones pass in order.
        assert_eq!(tx.on_sendme(Some(&[0; SENDME_TOKEN_LEN])), Err(FlowError::BadSendmeToken));
        assert_eq!(tx.on_sendme(None), Err(FlowError::BadSendmeToken));
        let mut fresh = TokenSender::new(&p);
        assert_eq!(fresh.on_sendme(Some(&[10; SENDME_TOKEN_LEN])), Err(FlowError::BadSendmeToken), "nothing sent yet");
        for _ in 0..3 {
            let t = rx.next_sendme().expect("a token per increment");
            tx.on_sendme(Some(&t)).unwrap();
        }
        assert_eq!(rx.next_sendme(), None);
        // A sender that puts a token where none is due, or leaves one out, is refused.
        let mut rx = TokenReceiver::new(&p);
        assert_eq!(rx.on_data(Some([1; SENDME_TOKEN_LEN])), Err(FlowError::MisplacedToken));
        let mut rx = TokenReceiver::new(&p);
        for _ in 0..9 {
            rx.on_data(None).unwrap();
        }
        assert_eq!(rx.on_data(None), Err(FlowError::MisplacedToken));
    }

    #[test]
    fn data_plans_put_tokens_where_due_and_keep_a_full_last_cell_full() {
        const M: usize = MAX_BODY_PER_CELL;
        let p = params(1000, 10);
        let mut tx = TokenSender::new(&p);
        for _ in 0..5 {
            tx.on_data(None);
        }
        let check = |plan: &[(usize, bool)], n: usize, first: u64| {
            assert_eq!(plan.iter().map(|c| c.0).sum::<usize>(), n);
            for (j, &(len, tok)) in plan.iter().enumerate() {
                assert_eq!(tok, (first + j as u64) % 10 == 0, "token exactly where due");
                assert!(len >= 1 && len <= if tok { M - SENDME_TOKEN_LEN } else { M });
            }
        };
        // A partly filled last cell stays the last: 3 cells, token on the 5th (position 10).
        let plan = tx.plan(M * 4 + 100);
        check(&plan, M * 4 + 100, 6);
        assert_eq!(plan.iter().map(|c| c.0).collect::<Vec<_>>(), vec![M, M, M, M, 100]);
        let plan = tx.plan(M * 5 + 10);
        check(&plan, M * 5 + 10, 6);
        assert_eq!(plan.last().unwrap().0, 26, "the token's 16 bytes move to the short last cell");
        // Whole cells exactly: the last stays full, a short first cell takes the 16 bytes.
        let plan = tx.plan(M * 8);
        check(&plan, M * 8, 6);
        assert_eq!(plan.len(), 9);
        assert_eq!(plan[0].0, SENDME_TOKEN_LEN);
        assert_eq!(plan.last().unwrap().0, M);
        // No token in reach: plain cells.
        let plan = tx.plan(M * 2);
        assert_eq!(plan, vec![(M, false), (M, false)]);
        for n in [1, 16, 17, 470, 471, 472, M, M + 1, 2 * M, 64 * M, 64 * M - 1, 300 * M] {
            for queued in 0..10u64 {
                let mut t = TokenSender::new(&p);
                (0..queued).for_each(|_| t.on_data(None));
                check(&t.plan(n), n, queued + 1);
            }
        }
        // Every cell a token cell (increment 1): each holds 471 bytes.
        let one = TokenSender::new(&FlowParams { circuit_sendme_inc: 1, ..p });
        let plan = one.plan(M * 3);
        check_all_tokens(&plan, M * 3);
    }

    fn check_all_tokens(plan: &[(usize, bool)], n: usize) {
        assert!(plan.iter().all(|c| c.1 && c.0 <= MAX_BODY_PER_CELL - SENDME_TOKEN_LEN && c.0 >= 1));
        assert_eq!(plan.iter().map(|c| c.0).sum::<usize>(), n);
    }

    #[test]
    fn flow_params_travel_in_an_extension_and_are_bounded() {
        let cc = CcParams { cwnd_init: 400, alpha: 100, beta: 200, gamma: 150, delta: 300 };
        let p = FlowParams { circuit_window: 2000, circuit_sendme_inc: 40, xoff_cells: 800, cc };
        let e = p.to_extension();
        assert_eq!(hex::encode(&e.data), "07d00028032001900064".to_string() + "00c80096012c");
        assert_eq!(FlowParams::from_extensions(&Extensions(vec![e])), Ok(p));
        assert_eq!(FlowParams::from_extensions(&Extensions::none()), Ok(FlowParams::default()));
        let bad = |d: &str| FlowParams::from_extensions(&Extensions(vec![Extension { ty: EXT_FLOW_PARAMS, data: hex::decode(d).unwrap() }]));
        assert_eq!(bad("07d0002803200190006400c8009601"), Err(FlowParamError::BadLength), "15 bytes");
        let with = |f: &dyn Fn(&mut FlowParams)| {
            let mut q = p;
            f(&mut q);
            FlowParams::from_extensions(&Extensions(vec![q.to_extension()]))
        };
        assert_eq!(with(&|q| q.circuit_window = 50), Err(FlowParamError::OutOfBounds), "circuit window below 100");
        assert_eq!(with(&|q| q.circuit_sendme_inc = 1001), Err(FlowParamError::OutOfBounds), "increment above half the window");
        assert_eq!(with(&|q| q.circuit_sendme_inc = 0), Err(FlowParamError::OutOfBounds), "increment 0");
        assert_eq!(with(&|q| q.xoff_cells = 5001), Err(FlowParamError::OutOfBounds), "XOFF threshold 5001");
        assert_eq!(with(&|q| q.cc.cwnd_init = 1), Err(FlowParamError::OutOfBounds), "initial window below 2");
        assert_eq!(with(&|q| q.cc.alpha = 201), Err(FlowParamError::OutOfBounds), "alpha above beta");
        assert_eq!(with(&|q| q.cc.delta = 10_001), Err(FlowParamError::OutOfBounds), "delta above the largest window");
        assert_eq!(with(&|q| q.cc.cwnd_init = 3000), Ok(FlowParams { cc: CcParams { cwnd_init: 3000, ..cc }, ..p }), "an initial window above the circuit window is clamped where used");
        assert!(FlowParams::default().checked().is_ok());
    }
}
