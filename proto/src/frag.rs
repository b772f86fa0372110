//! Reassembly of messages that span several cells (circuit handshakes now; hybrid post-quantum
//! handshakes of ~1.2 KB later).
//!
//! Reassembly holds state before anything is authenticated, so it is capped in bytes (the
//! declared total may not exceed the cap, and nothing beyond the total is accepted) and in time
//! (a message not complete within [`REASSEMBLY_TIMEOUT_MS`] of its first cell is abandoned).

use crate::reader::DecodeError;

/// How long a partial message may wait for its remaining cells.
pub const REASSEMBLY_TIMEOUT_MS: u64 = 10_000;

/// A message being reassembled.
#[derive(Debug)]
pub struct Reassembly {
    buf: Vec<u8>,
    total: usize,
    started_ms: u64,
}

/// What adding a fragment gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    NeedMore,
    Complete(Vec<u8>),
}

impl Reassembly {
    /// Starts a message of `total` bytes (checked against `cap`) with its first bytes.
    pub fn start(total: usize, cap: usize, first: &[u8], now_ms: u64) -> Result<(Self, Progress), DecodeError> {
        if total > cap {
            return Err(DecodeError::TooLong(cap));
        }
        let mut r = Reassembly { buf: Vec::with_capacity(total), total, started_ms: now_ms };
        let p = r.push(first, now_ms)?;
        Ok((r, p))
    }

    /// Adds the next fragment (its bytes beyond the message's end are padding and ignored).
    pub fn push(&mut self, frag: &[u8], now_ms: u64) -> Result<Progress, DecodeError> {
        if self.expired(now_ms) {
            return Err(DecodeError::Invalid("multi-cell message not completed in time"));
        }
        let need = self.total - self.buf.len();
        self.buf.extend_from_slice(&frag[..need.min(frag.len())]);
        if self.buf.len() == self.total {
            Ok(Progress::Complete(std::mem::take(&mut self.buf)))
        } else {
            Ok(Progress::NeedMore)
        }
    }

    /// True once the time cap has passed.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.started_ms) > REASSEMBLY_TIMEOUT_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_bytes_and_time() {
        assert!(Reassembly::start(5000, 4096, &[], 0).is_err());
        let (mut r, p) = Reassembly::start(600, 4096, &[1; 500], 0).unwrap();
        assert_eq!(p, Progress::NeedMore);
        assert!(r.push(&[2; 509], REASSEMBLY_TIMEOUT_MS + 1).is_err());
        let (mut r2, _) = Reassembly::start(600, 4096, &[1; 500], 0).unwrap();
        match r2.push(&[2; 509], 5).unwrap() {
            Progress::Complete(m) => {
                assert_eq!(m.len(), 600);
                assert_eq!(&m[500..], &[2; 100]);
            }
            p => panic!("{p:?}"),
        }
        let (_, p) = Reassembly::start(3, 4096, &[9; 10], 0).unwrap();
        assert_eq!(p, Progress::Complete(vec![9; 3]));
    }
}
