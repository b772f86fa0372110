//! Flow-control windows (sans-IO).
//!
//! Each circuit and each stream has, per direction, a window of DATA cells the sender may send
//! before it must wait for a SENDME. The receiver sends a SENDME each time the application has
//! *consumed* an increment's worth of cells (written them to its socket), never merely on
//! receipt, so a reader that stops reading stops the sender. A sender that exceeds the window is
//! a protocol violation.

/// Initial circuit window (cells).
pub const CIRCUIT_WINDOW: u32 = 1000;
/// Cells acknowledged by one circuit-level SENDME.
pub const CIRCUIT_SENDME_INC: u32 = 100;
/// Initial stream window (cells).
pub const STREAM_WINDOW: u32 = 500;
/// Cells acknowledged by one stream-level SENDME.
pub const STREAM_SENDME_INC: u32 = 50;

/// A peer broke flow control.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("peer sent DATA beyond the window")]
    WindowExceeded,
    #[error("peer sent a SENDME that was not due")]
    UnexpectedSendme,
}

/// The sending side of a window.
#[derive(Debug, Clone)]
pub struct SendWindow {
    avail: u32,
    max: u32,
    inc: u32,
}

impl SendWindow {
    pub fn new(max: u32, inc: u32) -> Self {
        SendWindow { avail: max, max, inc }
    }
    pub fn circuit() -> Self {
        Self::new(CIRCUIT_WINDOW, CIRCUIT_SENDME_INC)
    }
    pub fn stream() -> Self {
        Self::new(STREAM_WINDOW, STREAM_SENDME_INC)
    }
    /// Cells that may be sent now.
    pub fn available(&self) -> u32 {
        self.avail
    }
    /// Takes one cell's worth; false if the window is closed.
    pub fn take(&mut self) -> bool {
        if self.avail == 0 {
            return false;
        }
        self.avail -= 1;
        true
    }
    /// A SENDME arrived.
    pub fn on_sendme(&mut self) -> Result<(), FlowError> {
        if self.avail + self.inc > self.max {
            return Err(FlowError::UnexpectedSendme);
        }
        self.avail += self.inc;
        Ok(())
    }
}

/// The receiving side of a window.
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
    pub fn circuit() -> Self {
        Self::new(CIRCUIT_WINDOW, CIRCUIT_SENDME_INC)
    }
    pub fn stream() -> Self {
        Self::new(STREAM_WINDOW, STREAM_SENDME_INC)
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

    #[test]
    fn windows_open_only_on_consumption() {
        let mut s = SendWindow::stream();
        let mut r = RecvWindow::stream();
        for _ in 0..STREAM_WINDOW {
            assert!(s.take());
            r.on_data().unwrap();
        }
        assert!(!s.take());
        assert_eq!(r.on_data(), Err(FlowError::WindowExceeded));
        assert_eq!(r.on_consumed(49), 0);
        assert_eq!(r.on_consumed(1), 1);
        s.on_sendme().unwrap();
        assert_eq!(s.available(), STREAM_SENDME_INC);
        r.on_data().unwrap();
        let mut fresh = SendWindow::circuit();
        assert_eq!(fresh.on_sendme(), Err(FlowError::UnexpectedSendme));
    }
}
