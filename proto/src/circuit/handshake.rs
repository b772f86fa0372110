//! A circuit handshake message spread over a CREATE (or CREATED) cell and CONTINUE cells: the
//! one place it is put back together, capped at [`MAX_HANDSHAKE_LEN`] bytes and
//! [`REASSEMBLY_TIMEOUT_MS`] from its first cell (docs/PROTOCOL.md, "Circuit handshake").

use std::time::{Duration, Instant};

use crate::cell::{self, Cell, CellCmd, CreateHeader, MAX_HANDSHAKE_LEN, PAYLOAD_LEN};
use crate::frag::{Progress, Reassembly, REASSEMBLY_TIMEOUT_MS};
use crate::reader::DecodeError;

/// A handshake message waiting for its CONTINUE cells.
#[derive(Debug)]
pub struct HandshakeReader {
    r: Reassembly,
    started: Instant,
}

/// What a cell of a handshake gave.
#[derive(Debug)]
pub enum HandshakeRead {
    /// The whole message.
    Done(Vec<u8>),
    /// More CONTINUE cells are due: feed them to the reader.
    More(HandshakeReader),
}

impl HandshakeReader {
    /// The first cell of a CREATE (its payload): the header and the message or a reader.
    pub fn create(payload: &[u8; PAYLOAD_LEN], now: Instant) -> Result<(CreateHeader, HandshakeRead), DecodeError> {
        let (hdr, first) = cell::parse_create(payload)?;
        let read = Self::start(hdr.total_len, first, now)?;
        Ok((hdr, read))
    }

    /// The first cell of a CREATED (its payload): the reply or a reader.
    pub fn created(payload: &[u8; PAYLOAD_LEN], now: Instant) -> Result<HandshakeRead, DecodeError> {
        let (total, first) = cell::parse_created(payload)?;
        Self::start(total, first, now)
    }

    fn start(total: usize, first: &[u8], now: Instant) -> Result<HandshakeRead, DecodeError> {
        let (r, p) = Reassembly::start(total, MAX_HANDSHAKE_LEN, first, 0)?;
        Ok(HandshakeReader { r, started: now }.step(p))
    }

    /// The next cell, which must be a CONTINUE arriving within the time cap.
    pub fn push(mut self, cell: &Cell, now: Instant) -> Result<HandshakeRead, DecodeError> {
        if cell.cmd != CellCmd::Continue {
            return Err(DecodeError::Invalid("expected CONTINUE"));
        }
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        let p = self.r.push(&cell.payload, ms)?;
        Ok(self.step(p))
    }

    /// When the message is abandoned if still incomplete.
    pub fn deadline(&self) -> Instant {
        self.started + Duration::from_millis(REASSEMBLY_TIMEOUT_MS)
    }

    fn step(self, p: Progress) -> HandshakeRead {
        match p {
            Progress::Complete(m) => HandshakeRead::Done(m),
            Progress::NeedMore => HandshakeRead::More(self),
        }
    }
}
