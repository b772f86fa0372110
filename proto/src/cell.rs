//! Fixed-size link cells.
//!
//! Every cell on every link is exactly [`CELL_LEN`] = 514 bytes:
//!
//! ```text
//! u32 circuit id (big-endian) | u8 command | 509 bytes of payload
//! ```
//!
//! Circuit id 0 is the link itself (only PADDING uses it). Circuit ids are per link; the node
//! that opened the link picks ids with the high bit set, the other side ids with it clear, so the
//! two never collide.

use crate::reader::{DecodeError, Reader};

pub const CELL_LEN: usize = 514;
pub const PAYLOAD_LEN: usize = 509;
/// The largest circuit-handshake message a CREATE/CREATED sequence may carry (bytes).
pub const MAX_HANDSHAKE_LEN: usize = 4096;
/// RELAY_EARLY cells a relay accepts on a circuit whose previous hop is another relay; more
/// close the circuit. Every EXTEND must arrive in one, so this bounds the hops after the second:
/// a circuit has at most 2 + 6 = [`MAX_PATH_LEN`] hops.
pub const MAX_EARLY_FROM_RELAY: u8 = 6;
/// RELAY_EARLY cells the first hop accepts from a client: the EXTEND to the second hop and the
/// [`MAX_EARLY_FROM_RELAY`] cells the client sends beyond the first hop as RELAY_EARLY.
pub const MAX_EARLY_FROM_CLIENT: u8 = MAX_EARLY_FROM_RELAY + 1;
/// The longest circuit relays allow.
pub const MAX_PATH_LEN: usize = 2 + MAX_EARLY_FROM_RELAY as usize;

/// Cell commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CellCmd {
    /// Link padding; ignored.
    Padding = 0,
    /// Start a circuit: `u16 htype | u8 reserved (0) | u16 total length | first bytes`.
    Create = 1,
    /// Reply to CREATE: `u16 total length | first bytes`.
    Created = 2,
    /// A relay cell: 509 bytes of onion-encrypted body.
    Relay = 3,
    /// Tear down a circuit: `u8 reason`.
    Destroy = 4,
    /// More bytes of the CREATE or CREATED message in progress on this circuit.
    Continue = 5,
    /// A relay cell the client marked "early" (only toward the exit): EXTEND travels only in
    /// these, and a relay takes a bounded number of them per circuit (see [`MAX_EARLY_FROM_RELAY`]).
    RelayEarly = 6,
}

impl CellCmd {
    pub fn from_u8(b: u8) -> Result<Self, DecodeError> {
        Ok(match b {
            0 => CellCmd::Padding,
            1 => CellCmd::Create,
            2 => CellCmd::Created,
            3 => CellCmd::Relay,
            4 => CellCmd::Destroy,
            5 => CellCmd::Continue,
            6 => CellCmd::RelayEarly,
            b => return Err(DecodeError::UnknownCommand(b)),
        })
    }
}

/// DESTROY reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DestroyReason {
    None = 0,
    /// The peer broke the protocol (including a relay cell that failed authentication).
    Protocol = 1,
    Internal = 2,
    /// The client asked for it.
    Requested = 3,
    /// Out of a resource (queue cap, memory, circuits).
    ResourceLimit = 5,
    /// Could not connect to the next hop.
    ConnectFailed = 6,
    /// The next hop's identity did not match.
    OrIdentity = 7,
    /// The link carrying the circuit closed.
    ChannelClosed = 8,
    Finished = 9,
    Timeout = 10,
    Destroyed = 11,
}

impl DestroyReason {
    pub fn from_u8(b: u8) -> Self {
        use DestroyReason::*;
        match b {
            1 => Protocol,
            2 => Internal,
            3 => Requested,
            5 => ResourceLimit,
            6 => ConnectFailed,
            7 => OrIdentity,
            8 => ChannelClosed,
            9 => Finished,
            10 => Timeout,
            11 => Destroyed,
            _ => None,
        }
    }
}

/// One link cell.
#[derive(Clone, PartialEq, Eq)]
pub struct Cell {
    pub circ_id: u32,
    pub cmd: CellCmd,
    pub payload: [u8; PAYLOAD_LEN],
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cell({:#x}, {:?})", self.circ_id, self.cmd)
    }
}

impl Cell {
    /// A cell with a zeroed payload.
    pub fn new(circ_id: u32, cmd: CellCmd) -> Self {
        Cell { circ_id, cmd, payload: [0; PAYLOAD_LEN] }
    }

    /// A cell whose payload starts with `data` (zero-padded). `data` longer than the payload is
    /// a caller bug.
    pub fn with_payload(circ_id: u32, cmd: CellCmd, data: &[u8]) -> Self {
        let mut c = Cell::new(circ_id, cmd);
        c.payload[..data.len()].copy_from_slice(data);
        c
    }

    pub fn destroy(circ_id: u32, reason: DestroyReason) -> Self {
        Cell::with_payload(circ_id, CellCmd::Destroy, &[reason as u8])
    }

    /// Writes the 514-byte wire form.
    pub fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.circ_id.to_be_bytes());
        out[4] = self.cmd as u8;
        out[5..CELL_LEN].copy_from_slice(&self.payload);
    }

    /// Appends the wire form to a buffer.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + CELL_LEN, 0);
        self.encode(&mut out[start..]);
    }

    /// Reads one cell from exactly 514 bytes.
    pub fn decode(b: &[u8]) -> Result<Cell, DecodeError> {
        if b.len() != CELL_LEN {
            return Err(DecodeError::Truncated);
        }
        let circ_id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let cmd = CellCmd::from_u8(b[4])?;
        if circ_id == 0 && cmd != CellCmd::Padding {
            return Err(DecodeError::Invalid("circuit id 0 is only for link padding"));
        }
        let mut payload = [0u8; PAYLOAD_LEN];
        payload.copy_from_slice(&b[5..]);
        Ok(Cell { circ_id, cmd, payload })
    }
}

/// The first cell of a CREATE: handshake type, a reserved zero byte, total length, first bytes.
/// Nothing in it depends on where the receiving relay sits in the circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateHeader {
    pub htype: u16,
    pub total_len: usize,
}

const CREATE_HDR: usize = 5;
const CREATED_HDR: usize = 2;

/// Splits a circuit-handshake message into a CREATE cell and as many CONTINUE cells as needed.
pub fn create_cells(circ_id: u32, htype: u16, msg: &[u8]) -> Vec<Cell> {
    let mut head = Vec::with_capacity(PAYLOAD_LEN);
    head.extend_from_slice(&htype.to_be_bytes());
    head.push(0);
    head.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    split(circ_id, CellCmd::Create, head, msg)
}

/// Splits a circuit-handshake reply into a CREATED cell and CONTINUE cells.
pub fn created_cells(circ_id: u32, msg: &[u8]) -> Vec<Cell> {
    split(circ_id, CellCmd::Created, (msg.len() as u16).to_be_bytes().to_vec(), msg)
}

fn split(circ_id: u32, cmd: CellCmd, mut head: Vec<u8>, msg: &[u8]) -> Vec<Cell> {
    assert!(msg.len() <= MAX_HANDSHAKE_LEN, "handshake message too long");
    let first = (PAYLOAD_LEN - head.len()).min(msg.len());
    head.extend_from_slice(&msg[..first]);
    let mut cells = vec![Cell::with_payload(circ_id, cmd, &head)];
    for chunk in msg[first..].chunks(PAYLOAD_LEN) {
        cells.push(Cell::with_payload(circ_id, CellCmd::Continue, chunk));
    }
    cells
}

/// Parses the header of a CREATE cell; returns it and the bytes of the message it carries.
pub fn parse_create(payload: &[u8; PAYLOAD_LEN]) -> Result<(CreateHeader, &[u8]), DecodeError> {
    let mut r = Reader::new(payload);
    let htype = r.u16()?;
    if r.u8()? != 0 {
        return Err(DecodeError::Invalid("CREATE reserved byte is not zero"));
    }
    let total_len = r.u16()? as usize;
    if total_len > MAX_HANDSHAKE_LEN {
        return Err(DecodeError::TooLong(MAX_HANDSHAKE_LEN));
    }
    let first = total_len.min(PAYLOAD_LEN - CREATE_HDR);
    Ok((CreateHeader { htype, total_len }, r.take(first)?))
}

/// Parses a CREATED cell; returns the total length and the first bytes.
pub fn parse_created(payload: &[u8; PAYLOAD_LEN]) -> Result<(usize, &[u8]), DecodeError> {
    let mut r = Reader::new(payload);
    let total_len = r.u16()? as usize;
    if total_len > MAX_HANDSHAKE_LEN {
        return Err(DecodeError::TooLong(MAX_HANDSHAKE_LEN));
    }
    let first = total_len.min(PAYLOAD_LEN - CREATED_HDR);
    Ok((total_len, r.take(first)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cell_round_trip() {
        let c = Cell::with_payload(0x8000_0001, CellCmd::Relay, b"hello");
        let mut buf = Vec::new();
        c.encode_to(&mut buf);
        assert_eq!(buf.len(), CELL_LEN);
        assert_eq!(Cell::decode(&buf).unwrap(), c);
        assert!(Cell::decode(&buf[..513]).is_err());
        buf[4] = 99;
        assert_eq!(Cell::decode(&buf), Err(DecodeError::UnknownCommand(99)));
        let mut z = Vec::new();
        Cell::new(0, CellCmd::Relay).encode_to(&mut z);
        assert!(Cell::decode(&z).is_err(), "circuit 0 carries only padding");
    }

    #[test]
    fn long_handshake_spans_cells() {
        let msg: Vec<u8> = (0..1200u32).map(|i| i as u8).collect();
        let cells = create_cells(7, 2, &msg);
        assert_eq!(cells.len(), 3);
        let (h, first) = parse_create(&cells[0].payload).unwrap();
        assert_eq!(h, CreateHeader { htype: 2, total_len: 1200 });
        let mut marked = cells[0].payload;
        marked[2] = 5;
        assert!(parse_create(&marked).is_err(), "the reserved byte must be zero (no relay-settable field)");
        let mut got = first.to_vec();
        for c in &cells[1..] {
            assert_eq!(c.cmd, CellCmd::Continue);
            let need = (1200 - got.len()).min(PAYLOAD_LEN);
            got.extend_from_slice(&c.payload[..need]);
        }
        assert_eq!(got, msg);
        let short = created_cells(7, &msg[..64]);
        assert_eq!(short.len(), 1);
        assert_eq!(parse_created(&short[0].payload).unwrap(), (64, &msg[..64]));
    }

    proptest! {
        #[test]
        fn a1_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(c) = Cell::decode(&bytes) {
                let mut out = Vec::new();
                c.encode_to(&mut out);
                prop_assert_eq!(out, bytes.clone());
                if c.cmd == CellCmd::Create { let _ = parse_create(&c.payload); }
                if c.cmd == CellCmd::Created { let _ = parse_created(&c.payload); }
            }
        }
    }
}
