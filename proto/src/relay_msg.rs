//! Relay messages: what travels, end-to-end encrypted per hop, inside relay cells.
//!
//! The 493-byte plaintext of a relay cell (see [`crate::crypto`] for how it is sealed) is:
//!
//! ```text
//! u8 command | u16 stream id | u8 flags | u16 length | length bytes of body | zero padding
//! ```
//!
//! Flag bit 0 (`MORE`) says the message continues in the next relay cell for the same hop and
//! direction (same command and stream); the receiver reassembles up to [`MAX_RELAY_MSG_LEN`]
//! bytes. Flag bit 1 (`TOKEN`, DATA only) says the body ends with a 16-byte SENDME token (see
//! [`crate::flow::TokenSender`]) after the stream's bytes. Only EXTEND, EXTENDED, INTRODUCE1 and INTRODUCE2 may span cells. Stream id 0 means the circuit itself.
//!
//! Decoding is restricted by context: a relay parses only what a client may send it
//! ([`Direction::Outbound`]), a client only what a relay may send back ([`Direction::Inbound`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::ext::Extensions;
use crate::flow::{SendmeToken, SENDME_TOKEN_LEN};
use crate::reader::{DecodeError, Reader};

/// Bytes of relay-cell plaintext (the 509-byte body less the 16-byte tag); equals
/// `crypto::aead::RELAY_PLAINTEXT_LEN`.
pub const RELAY_PLAINTEXT_LEN: usize = 493;
const HEADER_LEN: usize = 6;
/// Body bytes in one relay cell.
pub const MAX_BODY_PER_CELL: usize = RELAY_PLAINTEXT_LEN - HEADER_LEN;
/// The longest message that may span several cells.
pub const MAX_RELAY_MSG_LEN: usize = 8192;
const FLAG_MORE: u8 = 1;
const FLAG_TOKEN: u8 = 2;

/// Relay commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RelayCmd {
    Begin = 1,
    Data = 2,
    End = 3,
    Connected = 4,
    Sendme = 5,
    Extend = 6,
    Extended = 7,
    /// Padding to a hop; dropped on receipt.
    Drop = 8,
    /// Resolve a host name at the exit (on a fresh stream id; answered by RESOLVED).
    Resolve = 9,
    /// The exit's answer to RESOLVE, on the same stream id; the id is then free again.
    Resolved = 10,
    /// Relay → client: this hop is about to destroy the circuit, and why (end to end: the
    /// DESTROY cells relays pass toward the client carry a fixed reason).
    Closing = 11,
    /// Open a directory stream to this hop's own directory cache (no exit involved).
    BeginDir = 13,
    /// Service → relay: become an introduction point for this per-introduction auth key.
    EstablishIntro = 20,
    /// Introduction point → service: ESTABLISH_INTRO accepted.
    IntroEstablished = 21,
    /// Client → introduction point: an introduction for the service behind an auth key.
    Introduce1 = 22,
    /// Introduction point → service: the INTRODUCE1 body, unchanged.
    Introduce2 = 23,
    /// Introduction point → client: whether INTRODUCE1 was forwarded.
    IntroduceAck = 24,
    /// Client → rendezvous point: remember this circuit under a one-time cookie.
    EstablishRendezvous = 25,
    /// Rendezvous point → client: ESTABLISH_RENDEZVOUS accepted.
    RendezvousEstablished = 26,
    /// Service → rendezvous point: join my circuit to the one with this cookie.
    Rendezvous1 = 27,
    /// Rendezvous point → client: the service's handshake reply; the circuits are joined.
    Rendezvous2 = 28,
    /// Stream flow control: stop sending DATA on this stream (its data waits at the receiver).
    Xoff = 43,
    /// Stream flow control: DATA on this stream may flow again.
    Xon = 44,
}

impl RelayCmd {
    fn from_u8(b: u8) -> Result<Self, DecodeError> {
        use RelayCmd::*;
        Ok(match b {
            1 => Begin,
            2 => Data,
            3 => End,
            4 => Connected,
            5 => Sendme,
            6 => Extend,
            7 => Extended,
            8 => Drop,
            9 => Resolve,
            10 => Resolved,
            11 => Closing,
            13 => BeginDir,
            20 => EstablishIntro,
            21 => IntroEstablished,
            22 => Introduce1,
            23 => Introduce2,
            24 => IntroduceAck,
            25 => EstablishRendezvous,
            26 => RendezvousEstablished,
            27 => Rendezvous1,
            28 => Rendezvous2,
            43 => Xoff,
            44 => Xon,
            b => return Err(DecodeError::UnknownCommand(b)),
        })
    }
}

/// END reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    Misc = 1,
    ResolveFailed = 2,
    ConnectRefused = 3,
    ExitPolicy = 4,
    Destroy = 5,
    Done = 6,
    Timeout = 7,
    NoRoute = 8,
    Internal = 10,
    ResourceLimit = 11,
    ConnReset = 12,
    Protocol = 13,
}

impl EndReason {
    pub fn from_u8(b: u8) -> Self {
        use EndReason::*;
        match b {
            2 => ResolveFailed,
            3 => ConnectRefused,
            4 => ExitPolicy,
            5 => Destroy,
            6 => Done,
            7 => Timeout,
            8 => NoRoute,
            10 => Internal,
            11 => ResourceLimit,
            12 => ConnReset,
            13 => Protocol,
            _ => Misc,
        }
    }
}

/// Which way a message travels, which decides what may be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → relay.
    Outbound,
    /// Relay → client.
    Inbound,
}

/// How to reach the next hop in an EXTEND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendTarget {
    pub addr: SocketAddr,
    /// The next hop's ed25519 identity.
    pub identity: [u8; 32],
    /// The next hop's Noise link key (certified by its identity in the consensus).
    pub link_key: [u8; 32],
}

impl ExtendTarget {
    /// Appends the link specifiers as EXTEND carries them:
    /// `u8 3 | address | ed25519 identity | link key`.
    pub fn encode_link_specifiers(&self, b: &mut Vec<u8>) {
        b.push(3);
        match self.addr {
            SocketAddr::V4(a) => {
                b.extend_from_slice(&[LS_IPV4, 6]);
                b.extend_from_slice(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                b.extend_from_slice(&[LS_IPV6, 18]);
                b.extend_from_slice(&a.ip().octets());
            }
        }
        b.extend_from_slice(&self.addr.port().to_be_bytes());
        b.extend_from_slice(&[LS_ED25519, 32]);
        b.extend_from_slice(&self.identity);
        b.extend_from_slice(&[LS_LINK_KEY, 32]);
        b.extend_from_slice(&self.link_key);
    }

    /// Reads `u8 n | n × (u8 type | u8 len | data)`: an address, the identity and the link key
    /// are required, unknown types are skipped (the last of a repeated type wins).
    pub fn decode_link_specifiers(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.u8()?;
        let (mut ip, mut id, mut lk) = (None, None, None);
        for _ in 0..n {
            let ty = r.u8()?;
            let len = r.u8()? as usize;
            let mut v = Reader::new(r.take(len)?);
            match ty {
                LS_IPV4 => {
                    let a = Ipv4Addr::from(v.array::<4>()?);
                    ip = Some(SocketAddr::new(a.into(), v.u16()?));
                }
                LS_IPV6 => {
                    let a = Ipv6Addr::from(v.array::<16>()?);
                    ip = Some(SocketAddr::new(a.into(), v.u16()?));
                }
                LS_ED25519 => id = Some(v.array::<32>()?),
                LS_LINK_KEY => lk = Some(v.array::<32>()?),
                _ => continue,
            }
            v.finish()?;
        }
        let (Some(addr), Some(identity), Some(link_key)) = (ip, id, lk) else {
            return Err(DecodeError::Invalid("link specifiers lack an address, identity or link key"));
        };
        Ok(ExtendTarget { addr, identity, link_key })
    }
}

/// A decoded relay message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayMsg {
    /// Open a stream to `host:port` (the exit resolves names).
    Begin { host: String, port: u16, ext: Extensions },
    Data(Vec<u8>),
    /// DATA that also carries the token a circuit-level SENDME must echo (`TOKEN` flag).
    DataToken { data: Vec<u8>, token: SendmeToken },
    End(EndReason),
    /// The exit connected; the address it connected to, if it says.
    Connected { addr: Option<IpAddr>, ext: Extensions },
    /// Flow-control acknowledgement: `u8 version`, then for version 1 the 16-byte token of the
    /// DATA it acknowledges. Only circuit-level (stream 0) SENDMEs of version 1 exist; version 0
    /// (no token) decodes, but every receiver refuses it.
    Sendme { token: Option<SendmeToken> },
    /// Stop sending DATA on this stream (empty body).
    Xoff,
    /// Resume sending DATA on this stream (empty body).
    Xon,
    Extend { target: ExtendTarget, htype: u16, hdata: Vec<u8>, ext: Extensions },
    Extended { hdata: Vec<u8>, ext: Extensions },
    Drop,
    /// Resolve `host` at the exit (same host rules as BEGIN).
    Resolve { host: String, ext: Extensions },
    /// The exit's answer to a RESOLVE: 1 to [`MAX_RESOLVED_ADDRS`] addresses, or why not.
    Resolved { result: Result<Vec<IpAddr>, EndReason>, ext: Extensions },
    /// A relay is about to destroy the circuit for this reason (toward the client only).
    Closing { reason: crate::cell::DestroyReason },
    /// Open a stream to the hop's directory cache; answered by CONNECTED (no address) or END.
    BeginDir { ext: Extensions },
    /// Service → relay: become an introduction point for `auth_key`. `sig` is the auth key's
    /// signature over the circuit binding and the body before it (checked by
    /// [`crate::hs::establish::verify`], not by the decoder).
    EstablishIntro { auth_key: [u8; 32], ext: Extensions, sig: [u8; 64] },
    /// Introduction point → service.
    IntroEstablished { ext: Extensions },
    /// Client → introduction point.
    Introduce1(IntroduceBody),
    /// Introduction point → service (the INTRODUCE1 body byte for byte).
    Introduce2(IntroduceBody),
    /// Introduction point → client: `status` is one of [`introduce_status`] (others are
    /// failures the client does not know).
    IntroduceAck { status: u8, ext: Extensions },
    /// Client → rendezvous point.
    EstablishRendezvous { cookie: [u8; REND_COOKIE_LEN], ext: Extensions },
    /// Rendezvous point → client.
    RendezvousEstablished { ext: Extensions },
    /// Service → rendezvous point: the cookie and the end-to-end handshake reply.
    Rendezvous1 { cookie: [u8; REND_COOKIE_LEN], hdata: Vec<u8>, ext: Extensions },
    /// Rendezvous point → client: the handshake reply from RENDEZVOUS1.
    Rendezvous2 { hdata: Vec<u8>, ext: Extensions },
}

/// Bytes of a rendezvous cookie.
pub const REND_COOKIE_LEN: usize = 20;

/// Bytes of the service's introduction encryption ephemeral key plus tag: the least an
/// INTRODUCE encrypted part can hold.
pub const INTRODUCE_ENCRYPTED_MIN_LEN: usize = 32 + 16;

/// The body of INTRODUCE1 and INTRODUCE2:
/// `auth key (32) | extension field | encrypted part (the rest, at least 48 bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroduceBody {
    /// The per-introduction-point auth key of the service the client wants.
    pub auth_key: [u8; 32],
    /// Cleartext extensions (the intro point may read them; they are authenticated by the
    /// encrypted part).
    pub ext: Extensions,
    /// `client ephemeral key (32) | ciphertext | tag (16)`, see [`crate::hs::introduce`].
    pub encrypted: Vec<u8>,
}

impl IntroduceBody {
    /// The cleartext bytes before the encrypted part (`auth key | extension field`).
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(33);
        b.extend_from_slice(&self.auth_key);
        self.ext.encode(&mut b);
        b
    }

    fn encode(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(&self.header_bytes());
        b.extend_from_slice(&self.encrypted);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let auth_key = r.array::<32>()?;
        let ext = Extensions::decode_checked(r, KNOWN_CRITICAL)?;
        let encrypted = r.rest().to_vec();
        if encrypted.len() < INTRODUCE_ENCRYPTED_MIN_LEN {
            return Err(DecodeError::Invalid("INTRODUCE encrypted part too short"));
        }
        Ok(IntroduceBody { auth_key, ext, encrypted })
    }
}

/// INTRODUCE_ACK status values.
pub mod introduce_status {
    /// The introduction point forwarded INTRODUCE2 to the service.
    pub const SUCCESS: u8 = 0;
    /// No service circuit for that auth key at this introduction point.
    pub const UNKNOWN_SERVICE: u8 = 1;
    /// The INTRODUCE1 was malformed.
    pub const BAD_MESSAGE: u8 = 2;
    /// The service circuit exists but the message could not be relayed to it.
    pub const CANNOT_RELAY: u8 = 3;
    /// The service asked this point to forward introductions at a rate now exceeded.
    pub const RATE_LIMITED: u8 = 4;
}

fn encode_hdata(b: &mut Vec<u8>, hdata: &[u8]) {
    b.extend_from_slice(&(hdata.len() as u16).to_be_bytes());
    b.extend_from_slice(hdata);
}

fn decode_hdata(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let n = r.u16()? as usize;
    Ok(r.take(n)?.to_vec())
}

/// Most addresses one RESOLVED carries.
pub const MAX_RESOLVED_ADDRS: usize = 16;

/// `u8 type (4 or 6) | 4 or 16 address bytes`.
pub(crate) fn encode_addr(b: &mut Vec<u8>, a: &IpAddr) {
    match a {
        IpAddr::V4(a) => {
            b.push(4);
            b.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            b.push(6);
            b.extend_from_slice(&a.octets());
        }
    }
}

/// `u8 n | n bytes host`: 1-255 bytes of printable ASCII.
fn decode_host(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let n = r.u8()? as usize;
    let host = std::str::from_utf8(r.take(n)?).map_err(|_| DecodeError::Invalid("host name is not ASCII"))?;
    if host.is_empty() || !host.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(DecodeError::Invalid("host name must be printable ASCII"));
    }
    Ok(host.to_string())
}

/// Critical extensions this version understands (none yet).
const KNOWN_CRITICAL: &[u8] = &[];

/// Link specifier types inside EXTEND.
const LS_IPV4: u8 = 0;
const LS_IPV6: u8 = 1;
const LS_ED25519: u8 = 2;
const LS_LINK_KEY: u8 = 3;

impl RelayMsg {
    pub fn cmd(&self) -> RelayCmd {
        match self {
            RelayMsg::Begin { .. } => RelayCmd::Begin,
            RelayMsg::Data(_) | RelayMsg::DataToken { .. } => RelayCmd::Data,
            RelayMsg::End(_) => RelayCmd::End,
            RelayMsg::Connected { .. } => RelayCmd::Connected,
            RelayMsg::Sendme { .. } => RelayCmd::Sendme,
            RelayMsg::Extend { .. } => RelayCmd::Extend,
            RelayMsg::Extended { .. } => RelayCmd::Extended,
            RelayMsg::Drop => RelayCmd::Drop,
            RelayMsg::Xoff => RelayCmd::Xoff,
            RelayMsg::Xon => RelayCmd::Xon,
            RelayMsg::Resolve { .. } => RelayCmd::Resolve,
            RelayMsg::Resolved { .. } => RelayCmd::Resolved,
            RelayMsg::Closing { .. } => RelayCmd::Closing,
            RelayMsg::BeginDir { .. } => RelayCmd::BeginDir,
            RelayMsg::EstablishIntro { .. } => RelayCmd::EstablishIntro,
            RelayMsg::IntroEstablished { .. } => RelayCmd::IntroEstablished,
            RelayMsg::Introduce1(_) => RelayCmd::Introduce1,
            RelayMsg::Introduce2(_) => RelayCmd::Introduce2,
            RelayMsg::IntroduceAck { .. } => RelayCmd::IntroduceAck,
            RelayMsg::EstablishRendezvous { .. } => RelayCmd::EstablishRendezvous,
            RelayMsg::RendezvousEstablished { .. } => RelayCmd::RendezvousEstablished,
            RelayMsg::Rendezvous1 { .. } => RelayCmd::Rendezvous1,
            RelayMsg::Rendezvous2 { .. } => RelayCmd::Rendezvous2,
        }
    }

    /// The message body (without the relay header).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            RelayMsg::Begin { host, port, ext } => {
                b.push(host.len() as u8);
                b.extend_from_slice(host.as_bytes());
                b.extend_from_slice(&port.to_be_bytes());
                ext.encode(&mut b);
            }
            RelayMsg::Data(d) => b.extend_from_slice(d),
            RelayMsg::DataToken { data, token } => {
                b.extend_from_slice(data);
                b.extend_from_slice(token);
            }
            RelayMsg::End(r) => b.push(*r as u8),
            RelayMsg::Connected { addr, ext } => {
                match addr {
                    None => b.push(0),
                    Some(IpAddr::V4(a)) => {
                        b.push(4);
                        b.extend_from_slice(&a.octets());
                    }
                    Some(IpAddr::V6(a)) => {
                        b.push(6);
                        b.extend_from_slice(&a.octets());
                    }
                }
                ext.encode(&mut b);
            }
            RelayMsg::Sendme { token: None } => b.push(0),
            RelayMsg::Sendme { token: Some(t) } => {
                b.push(1);
                b.extend_from_slice(t);
            }
            RelayMsg::Extend { target, htype, hdata, ext } => {
                target.encode_link_specifiers(&mut b);
                b.extend_from_slice(&htype.to_be_bytes());
                b.extend_from_slice(&(hdata.len() as u16).to_be_bytes());
                b.extend_from_slice(hdata);
                ext.encode(&mut b);
            }
            RelayMsg::Extended { hdata, ext } => {
                b.extend_from_slice(&(hdata.len() as u16).to_be_bytes());
                b.extend_from_slice(hdata);
                ext.encode(&mut b);
            }
            RelayMsg::Drop | RelayMsg::Xoff | RelayMsg::Xon => {}
            RelayMsg::Resolve { host, ext } => {
                b.push(host.len() as u8);
                b.extend_from_slice(host.as_bytes());
                ext.encode(&mut b);
            }
            RelayMsg::BeginDir { ext } => ext.encode(&mut b),
            RelayMsg::Closing { reason } => b.push(*reason as u8),
            RelayMsg::Resolved { result, ext } => {
                match result {
                    Ok(addrs) => {
                        let addrs = &addrs[..addrs.len().min(MAX_RESOLVED_ADDRS)];
                        b.extend_from_slice(&[0, addrs.len() as u8]);
                        for a in addrs {
                            encode_addr(&mut b, a);
                        }
                    }
                    Err(reason) => b.extend_from_slice(&[*reason as u8, 0]),
                }
                ext.encode(&mut b);
            }
            RelayMsg::EstablishIntro { auth_key, ext, sig } => {
                b.extend_from_slice(auth_key);
                ext.encode(&mut b);
                b.extend_from_slice(sig);
            }
            RelayMsg::IntroEstablished { ext } | RelayMsg::RendezvousEstablished { ext } => ext.encode(&mut b),
            RelayMsg::Introduce1(body) | RelayMsg::Introduce2(body) => body.encode(&mut b),
            RelayMsg::IntroduceAck { status, ext } => {
                b.push(*status);
                ext.encode(&mut b);
            }
            RelayMsg::EstablishRendezvous { cookie, ext } => {
                b.extend_from_slice(cookie);
                ext.encode(&mut b);
            }
            RelayMsg::Rendezvous1 { cookie, hdata, ext } => {
                b.extend_from_slice(cookie);
                encode_hdata(&mut b, hdata);
                ext.encode(&mut b);
            }
            RelayMsg::Rendezvous2 { hdata, ext } => {
                encode_hdata(&mut b, hdata);
                ext.encode(&mut b);
            }
        }
        b
    }

    /// Decodes a complete message from its cell header and body, for a context.
    pub fn decode_cell(h: &CellHeader, body: &[u8], dir: Direction) -> Result<RelayMsg, DecodeError> {
        if !h.token {
            return Self::decode(h.cmd, body, dir);
        }
        // `parse_plaintext` allows the flag on DATA only.
        let Some(split) = body.len().checked_sub(SENDME_TOKEN_LEN).filter(|n| *n > 0) else {
            return Err(DecodeError::Invalid("DATA with a token but no stream bytes"));
        };
        let token = body[split..].try_into().expect("16 bytes");
        Ok(RelayMsg::DataToken { data: body[..split].to_vec(), token })
    }

    /// Decodes a complete message body for a context (a cell without the `TOKEN` flag).
    pub fn decode(cmd: u8, body: &[u8], dir: Direction) -> Result<RelayMsg, DecodeError> {
        let cmd = RelayCmd::from_u8(cmd)?;
        let allowed = match dir {
            Direction::Outbound => matches!(
                cmd,
                RelayCmd::Begin
                    | RelayCmd::Data
                    | RelayCmd::End
                    | RelayCmd::Sendme
                    | RelayCmd::Xoff
                    | RelayCmd::Xon
                    | RelayCmd::Extend
                    | RelayCmd::Drop
                    | RelayCmd::Resolve
                    | RelayCmd::BeginDir
                    | RelayCmd::EstablishIntro
                    | RelayCmd::Introduce1
                    | RelayCmd::EstablishRendezvous
                    | RelayCmd::Rendezvous1
            ),
            Direction::Inbound => matches!(
                cmd,
                RelayCmd::Data
                    | RelayCmd::End
                    | RelayCmd::Connected
                    | RelayCmd::Sendme
                    | RelayCmd::Xoff
                    | RelayCmd::Xon
                    | RelayCmd::Extended
                    | RelayCmd::Drop
                    | RelayCmd::Resolved
                    | RelayCmd::Closing
                    | RelayCmd::IntroEstablished
                    | RelayCmd::Introduce2
                    | RelayCmd::IntroduceAck
                    | RelayCmd::RendezvousEstablished
                    | RelayCmd::Rendezvous2
            ),
        };
        if !allowed {
            return Err(DecodeError::NotAllowed(cmd as u8));
        }
        let mut r = Reader::new(body);
        let msg = match cmd {
            RelayCmd::Begin => {
                let host = decode_host(&mut r)?;
                let port = r.u16()?;
                if port == 0 {
                    return Err(DecodeError::Invalid("port 0"));
                }
                RelayMsg::Begin { host, port, ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? }
            }
            RelayCmd::BeginDir => RelayMsg::BeginDir { ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? },
            RelayCmd::Resolve => {
                let host = decode_host(&mut r)?;
                RelayMsg::Resolve { host, ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? }
            }
            RelayCmd::Closing => RelayMsg::Closing { reason: crate::cell::DestroyReason::from_u8(r.u8()?) },
            RelayCmd::Resolved => {
                let reason = r.u8()?;
                let n = r.u8()? as usize;
                let result = if reason == 0 {
                    if n == 0 || n > MAX_RESOLVED_ADDRS {
                        return Err(DecodeError::Invalid("RESOLVED needs 1-16 addresses"));
                    }
                    let mut addrs = Vec::with_capacity(n);
                    for _ in 0..n {
                        addrs.push(match r.u8()? {
                            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                            _ => return Err(DecodeError::Invalid("address type")),
                        });
                    }
                    Ok(addrs)
                } else {
                    if n != 0 {
                        return Err(DecodeError::Invalid("a failed RESOLVED carries no address"));
                    }
                    Err(EndReason::from_u8(reason))
                };
                RelayMsg::Resolved { result, ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? }
            }
            RelayCmd::Data => {
                if body.is_empty() {
                    return Err(DecodeError::Invalid("empty DATA"));
                }
                return Ok(RelayMsg::Data(body.to_vec()));
            }
            RelayCmd::End => RelayMsg::End(EndReason::from_u8(r.u8()?)),
            RelayCmd::Connected => {
                let addr = match r.u8()? {
                    0 => None,
                    4 => Some(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
                    6 => Some(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
                    _ => return Err(DecodeError::Invalid("address type")),
                };
                RelayMsg::Connected { addr, ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? }
            }
            RelayCmd::Sendme => match r.u8()? {
                0 => RelayMsg::Sendme { token: None },
                1 => RelayMsg::Sendme { token: Some(r.array::<SENDME_TOKEN_LEN>()?) },
                _ => return Err(DecodeError::Invalid("unknown SENDME version")),
            },
            RelayCmd::Extend => {
                let target = ExtendTarget::decode_link_specifiers(&mut r)?;
                let htype = r.u16()?;
                let hlen = r.u16()? as usize;
                let hdata = r.take(hlen)?.to_vec();
                let ext = Extensions::decode_checked(&mut r, KNOWN_CRITICAL)?;
                RelayMsg::Extend { target, htype, hdata, ext }
            }
            RelayCmd::Extended => {
                let hlen = r.u16()? as usize;
                let hdata = r.take(hlen)?.to_vec();
                RelayMsg::Extended { hdata, ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? }
            }
            RelayCmd::Drop => return Ok(RelayMsg::Drop),
            RelayCmd::Xoff => RelayMsg::Xoff,
            RelayCmd::Xon => RelayMsg::Xon,
            RelayCmd::EstablishIntro => {
                let auth_key = r.array::<32>()?;
                let ext = Extensions::decode_checked(&mut r, KNOWN_CRITICAL)?;
                let sig = r.array::<64>()?;
                RelayMsg::EstablishIntro { auth_key, ext, sig }
            }
            RelayCmd::IntroEstablished => RelayMsg::IntroEstablished { ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? },
            RelayCmd::Introduce1 => RelayMsg::Introduce1(IntroduceBody::decode(&mut r)?),
            RelayCmd::Introduce2 => RelayMsg::Introduce2(IntroduceBody::decode(&mut r)?),
            RelayCmd::IntroduceAck => {
                let status = r.u8()?;
                RelayMsg::IntroduceAck { status, ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? }
            }
            RelayCmd::EstablishRendezvous => {
                let cookie = r.array::<REND_COOKIE_LEN>()?;
                RelayMsg::EstablishRendezvous { cookie, ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? }
            }
            RelayCmd::RendezvousEstablished => {
                RelayMsg::RendezvousEstablished { ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? }
            }
            RelayCmd::Rendezvous1 => {
                let cookie = r.array::<REND_COOKIE_LEN>()?;
                let hdata = decode_hdata(&mut r)?;
                RelayMsg::Rendezvous1 { cookie, hdata, ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? }
            }
            RelayCmd::Rendezvous2 => {
                let hdata = decode_hdata(&mut r)?;
                RelayMsg::Rendezvous2 { hdata, ext: Extensions::decode_checked(&mut r, KNOWN_CRITICAL)? }
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Lays out messages into 493-byte relay-cell plaintexts.
pub fn encode_plaintexts(stream_id: u16, msg: &RelayMsg) -> Vec<[u8; RELAY_PLAINTEXT_LEN]> {
    let body = msg.encode_body();
    assert!(body.len() <= MAX_RELAY_MSG_LEN, "relay message too long");
    if msg.cmd() == RelayCmd::Data {
        assert!(body.len() <= MAX_BODY_PER_CELL, "DATA larger than a cell");
    }
    let token = if matches!(msg, RelayMsg::DataToken { .. }) { FLAG_TOKEN } else { 0 };
    let chunks: Vec<&[u8]> = if body.is_empty() { vec![&[][..]] } else { body.chunks(MAX_BODY_PER_CELL).collect() };
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut p = [0u8; RELAY_PLAINTEXT_LEN];
            p[0] = msg.cmd() as u8;
            p[1..3].copy_from_slice(&stream_id.to_be_bytes());
            p[3] = if i < last { FLAG_MORE } else { token };
            p[4..6].copy_from_slice(&(c.len() as u16).to_be_bytes());
            p[HEADER_LEN..HEADER_LEN + c.len()].copy_from_slice(c);
            p
        })
        .collect()
}

/// Encodes one DATA cell's plaintext directly from a byte slice (the hot path: no allocation).
pub fn encode_data_plaintext(stream_id: u16, data: &[u8], out: &mut [u8; RELAY_PLAINTEXT_LEN]) {
    assert!(!data.is_empty() && data.len() <= MAX_BODY_PER_CELL);
    out[0] = RelayCmd::Data as u8;
    out[1..3].copy_from_slice(&stream_id.to_be_bytes());
    out[3] = 0;
    out[4..6].copy_from_slice(&(data.len() as u16).to_be_bytes());
    out[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
    out[HEADER_LEN + data.len()..].fill(0);
}

/// The header of one relay-cell plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellHeader {
    pub cmd: u8,
    pub stream_id: u16,
    pub more: bool,
    /// DATA whose body ends with a SENDME token.
    pub token: bool,
}

/// Splits a relay-cell plaintext into header and body fragment.
pub fn parse_plaintext(p: &[u8; RELAY_PLAINTEXT_LEN]) -> Result<(CellHeader, &[u8]), DecodeError> {
    let mut r = Reader::new(p);
    let cmd = r.u8()?;
    let stream_id = r.u16()?;
    let flags = r.u8()?;
    if flags & !(FLAG_MORE | FLAG_TOKEN) != 0 {
        return Err(DecodeError::Invalid("unknown relay header flags"));
    }
    let token = flags & FLAG_TOKEN != 0;
    if token && cmd != RelayCmd::Data as u8 {
        return Err(DecodeError::Invalid("only DATA carries a SENDME token"));
    }
    let len = r.u16()? as usize;
    if len > MAX_BODY_PER_CELL {
        return Err(DecodeError::TooLong(MAX_BODY_PER_CELL));
    }
    let more = flags & FLAG_MORE != 0;
    if more && !matches!(cmd, 6 | 7 | 22 | 23) {
        return Err(DecodeError::Invalid("only EXTEND, EXTENDED, INTRODUCE1 and INTRODUCE2 may span cells"));
    }
    Ok((CellHeader { cmd, stream_id, more, token }, r.take(len)?))
}

/// Reassembles relay messages for one hop and direction.
#[derive(Debug, Default)]
pub struct MsgAssembler {
    partial: Option<(CellHeader, Vec<u8>)>,
}

impl MsgAssembler {
    /// Feeds one cell's plaintext; returns a complete (header, body) when one is ready.
    pub fn push(&mut self, p: &[u8; RELAY_PLAINTEXT_LEN]) -> Result<Option<(CellHeader, Vec<u8>)>, DecodeError> {
        let (h, frag) = parse_plaintext(p)?;
        match self.partial.take() {
            None if !h.more => Ok(Some((h, frag.to_vec()))),
            None => {
                self.partial = Some((h, frag.to_vec()));
                Ok(None)
            }
            Some((ph, mut buf)) => {
                if ph.cmd != h.cmd || ph.stream_id != h.stream_id {
                    return Err(DecodeError::Invalid("interleaved multi-cell message"));
                }
                if buf.len() + frag.len() > MAX_RELAY_MSG_LEN {
                    return Err(DecodeError::TooLong(MAX_RELAY_MSG_LEN));
                }
                buf.extend_from_slice(frag);
                if h.more {
                    self.partial = Some((ph, buf));
                    Ok(None)
                } else {
                    Ok(Some((CellHeader { more: false, ..h }, buf)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(msg: RelayMsg, dir: Direction) {
        let cells = encode_plaintexts(9, &msg);
        let mut asm = MsgAssembler::default();
        let mut out = None;
        for c in &cells {
            out = asm.push(c).unwrap();
        }
        let (h, body) = out.expect("complete");
        assert_eq!(h.stream_id, 9);
        assert_eq!(RelayMsg::decode_cell(&h, &body, dir).unwrap(), msg);
    }

    #[test]
    fn messages_round_trip() {
        use crate::ext::Extension;
        round_trip(RelayMsg::Begin { host: "localhost".into(), port: 80, ext: Extensions::none() }, Direction::Outbound);
        round_trip(RelayMsg::Data(vec![7; MAX_BODY_PER_CELL]), Direction::Inbound);
        round_trip(RelayMsg::End(EndReason::ExitPolicy), Direction::Inbound);
        round_trip(RelayMsg::Connected { addr: Some("10.1.2.3".parse().unwrap()), ext: Extensions::none() }, Direction::Inbound);
        round_trip(RelayMsg::Sendme { token: None }, Direction::Outbound);
        round_trip(RelayMsg::Xoff, Direction::Outbound);
        round_trip(RelayMsg::Xon, Direction::Inbound);
        round_trip(RelayMsg::Sendme { token: Some([0xa5; SENDME_TOKEN_LEN]) }, Direction::Inbound);
        round_trip(RelayMsg::DataToken { data: vec![7; MAX_BODY_PER_CELL - SENDME_TOKEN_LEN], token: [3; SENDME_TOKEN_LEN] }, Direction::Inbound);
        let target = ExtendTarget { addr: "127.3.0.1:5000".parse().unwrap(), identity: [1; 32], link_key: [2; 32] };
        let ext = Extensions(vec![Extension { ty: 3, data: vec![1] }]);
        round_trip(RelayMsg::Extend { target, htype: 1, hdata: vec![5; 1200], ext }, Direction::Outbound);
        round_trip(RelayMsg::Extended { hdata: vec![6; 64], ext: Extensions::none() }, Direction::Inbound);
        round_trip(RelayMsg::Resolve { host: "localhost".into(), ext: Extensions::none() }, Direction::Outbound);
        let addrs = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        round_trip(RelayMsg::Resolved { result: Ok(addrs), ext: Extensions::none() }, Direction::Inbound);
        round_trip(RelayMsg::Resolved { result: Err(EndReason::ResolveFailed), ext: Extensions::none() }, Direction::Inbound);
        let many = vec!["10.0.0.1".parse().unwrap(); MAX_RESOLVED_ADDRS];
        round_trip(RelayMsg::Resolved { result: Ok(many), ext: Extensions::none() }, Direction::Inbound);
        round_trip(RelayMsg::BeginDir { ext: Extensions::none() }, Direction::Outbound);
        round_trip(RelayMsg::Closing { reason: crate::cell::DestroyReason::ResourceLimit }, Direction::Inbound);
        assert!(RelayMsg::decode(RelayCmd::Closing as u8, &[5], Direction::Outbound).is_err(), "CLOSING travels toward the client only");
    }

    /// BEGIN_DIR's documented layout: command 13, body only the (empty) extension field; it
    /// never travels toward the client.
    #[test]
    fn begin_dir_layout() {
        let m = RelayMsg::BeginDir { ext: Extensions::none() };
        assert_eq!(m.cmd() as u8, 13);
        assert_eq!(hex::encode(m.encode_body()), "00");
        assert_eq!(RelayMsg::decode(13, &[0], Direction::Inbound), Err(DecodeError::NotAllowed(13)));
        assert!(RelayMsg::decode(13, &[], Direction::Outbound).is_err(), "missing extension field");
        assert!(RelayMsg::decode(13, &[0, 0], Direction::Outbound).is_err(), "trailing bytes");
    }

    /// The exact bodies documented in docs/PROTOCOL.md ("Relay messages").
    #[test]
    fn resolve_and_resolved_layouts() {
        let r = RelayMsg::Resolve { host: "localhost".into(), ext: Extensions::none() };
        assert_eq!(r.cmd() as u8, 9);
        assert_eq!(hex::encode(r.encode_body()), "096c6f63616c686f737400");
        let ok = RelayMsg::Resolved { result: Ok(vec!["127.0.0.1".parse().unwrap()]), ext: Extensions::none() };
        assert_eq!(ok.cmd() as u8, 10);
        assert_eq!(hex::encode(ok.encode_body()), "0001047f00000100");
        let v6 = RelayMsg::Resolved { result: Ok(vec!["::1".parse().unwrap()]), ext: Extensions::none() };
        assert_eq!(hex::encode(v6.encode_body()), format!("000106{}0100", "00".repeat(15)));
        let err = RelayMsg::Resolved { result: Err(EndReason::ExitPolicy), ext: Extensions::none() };
        assert_eq!(hex::encode(err.encode_body()), "040000");
        // Direction, counts and address types are checked.
        assert_eq!(RelayMsg::decode(9, &r.encode_body(), Direction::Inbound), Err(DecodeError::NotAllowed(9)));
        assert_eq!(RelayMsg::decode(10, &ok.encode_body(), Direction::Outbound), Err(DecodeError::NotAllowed(10)));
        for bad in [&[0u8, 0, 0][..], &[4, 1, 4, 1, 2, 3, 4, 0], &[0, 1, 5, 1, 2, 3, 4, 0], &[0, 17], &[0, 1, 4, 1, 2], &[9, 0, 0]] {
            let want_ok = bad == [9, 0, 0];
            assert_eq!(RelayMsg::decode(10, bad, Direction::Inbound).is_ok(), want_ok, "{bad:02x?}");
        }
        assert!(RelayMsg::decode(9, &[0, 0], Direction::Outbound).is_err(), "empty host");
        assert!(RelayMsg::decode(9, &[1, b' ', 0], Direction::Outbound).is_err(), "space in host");
    }

    #[test]
    fn context_restricts_commands() {
        let b = RelayMsg::Begin { host: "a".into(), port: 1, ext: Extensions::none() }.encode_body();
        assert_eq!(RelayMsg::decode(1, &b, Direction::Inbound), Err(DecodeError::NotAllowed(1)));
        assert!(RelayMsg::decode(4, &[0, 0], Direction::Outbound).is_err());
        assert!(RelayMsg::decode(2, &[], Direction::Outbound).is_err(), "empty DATA");
        assert!(RelayMsg::decode(1, &[1, 0, 0, 80, 0], Direction::Outbound).is_err(), "NUL host");
        let mut crit = Vec::new();
        Extensions(vec![crate::ext::Extension { ty: 0x90, data: vec![] }]).encode(&mut crit);
        let mut b = vec![1, b'a', 0, 80];
        b.extend(crit);
        assert_eq!(RelayMsg::decode(1, &b, Direction::Outbound), Err(DecodeError::UnknownCriticalExtension(0x90)));
    }

    #[test]
    fn header_checks() {
        let mut p = [0u8; RELAY_PLAINTEXT_LEN];
        p[0] = 2;
        p[4..6].copy_from_slice(&600u16.to_be_bytes());
        assert!(parse_plaintext(&p).is_err(), "length beyond cell");
        p[4..6].copy_from_slice(&1u16.to_be_bytes());
        p[3] = 1;
        assert!(parse_plaintext(&p).is_err(), "DATA may not span cells");
        p[3] = 4;
        assert!(parse_plaintext(&p).is_err(), "unknown flag");
        // The TOKEN flag: DATA only, and a DATA body holding more than the token.
        p[3] = 2;
        p[4..6].copy_from_slice(&17u16.to_be_bytes());
        let (h, body) = parse_plaintext(&p).unwrap();
        assert!(matches!(RelayMsg::decode_cell(&h, body, Direction::Inbound), Ok(RelayMsg::DataToken { data, .. }) if data.len() == 1));
        p[4..6].copy_from_slice(&16u16.to_be_bytes());
        let (h, body) = parse_plaintext(&p).unwrap();
        assert!(RelayMsg::decode_cell(&h, body, Direction::Inbound).is_err(), "a token and no stream bytes");
        p[0] = RelayCmd::End as u8;
        assert!(parse_plaintext(&p).is_err(), "only DATA carries a token");
    }

    fn onion_service_messages() -> Vec<(RelayMsg, Direction)> {
        use crate::ext::Extension;
        let ext = Extensions(vec![Extension { ty: 5, data: vec![1, 2] }]);
        let body = IntroduceBody { auth_key: [3; 32], ext: ext.clone(), encrypted: vec![4; 448] };
        vec![
            (RelayMsg::EstablishIntro { auth_key: [1; 32], ext: ext.clone(), sig: [2; 64] }, Direction::Outbound),
            (RelayMsg::IntroEstablished { ext: Extensions::none() }, Direction::Inbound),
            (RelayMsg::Introduce1(body.clone()), Direction::Outbound),
            (RelayMsg::Introduce2(IntroduceBody { encrypted: vec![5; 2000], ..body }), Direction::Inbound),
            (RelayMsg::IntroduceAck { status: introduce_status::UNKNOWN_SERVICE, ext: Extensions::none() }, Direction::Inbound),
            (RelayMsg::EstablishRendezvous { cookie: [6; REND_COOKIE_LEN], ext: Extensions::none() }, Direction::Outbound),
            (RelayMsg::RendezvousEstablished { ext }, Direction::Inbound),
            (RelayMsg::Rendezvous1 { cookie: [7; REND_COOKIE_LEN], hdata: vec![8; 64], ext: Extensions::none() }, Direction::Outbound),
            (RelayMsg::Rendezvous2 { hdata: vec![9; 64], ext: Extensions::none() }, Direction::Inbound),
        ]
    }

    #[test]
    fn onion_service_messages_round_trip_and_keep_to_their_direction() {
        for (m, dir) in onion_service_messages() {
            round_trip(m.clone(), dir);
            let other = if dir == Direction::Inbound { Direction::Outbound } else { Direction::Inbound };
            let cmd = m.cmd() as u8;
            assert_eq!(RelayMsg::decode(cmd, &m.encode_body(), other), Err(DecodeError::NotAllowed(cmd)), "{m:?}");
            // Every strict prefix fails, and so does one trailing byte (except INTRODUCE, whose
            // encrypted part is the rest of the body).
            let b = m.encode_body();
            for cut in 0..b.len() {
                let short = RelayMsg::decode(cmd, &b[..cut], dir);
                if !matches!(m, RelayMsg::Introduce1(_) | RelayMsg::Introduce2(_)) || cut < 33 + 3 + 48 {
                    assert!(short.is_err(), "{cmd} cut at {cut}");
                }
            }
            if !matches!(m, RelayMsg::Introduce1(_) | RelayMsg::Introduce2(_)) {
                let mut long = b.clone();
                long.push(0);
                assert!(RelayMsg::decode(cmd, &long, dir).is_err(), "{cmd} with a trailing byte");
            }
        }
    }

    /// Layouts as documented in docs/PROTOCOL.md ("Relay messages").
    #[test]
    fn onion_service_layouts() {
        let m = RelayMsg::EstablishRendezvous { cookie: [0xab; REND_COOKIE_LEN], ext: Extensions::none() };
        assert_eq!(m.cmd() as u8, 25);
        assert_eq!(hex::encode(m.encode_body()), format!("{}00", "ab".repeat(20)));
        let m = RelayMsg::IntroduceAck { status: 0, ext: Extensions::none() };
        assert_eq!((m.cmd() as u8, hex::encode(m.encode_body())), (24, "0000".to_string()));
        let m = RelayMsg::Rendezvous2 { hdata: vec![1, 2], ext: Extensions::none() };
        assert_eq!((m.cmd() as u8, hex::encode(m.encode_body())), (28, "0002010200".to_string()));
        let m = RelayMsg::EstablishIntro { auth_key: [1; 32], ext: Extensions::none(), sig: [2; 64] };
        assert_eq!(m.encode_body().len(), 32 + 1 + 64);
        // A critical extension refuses the message.
        let mut crit = vec![0x11; 32];
        Extensions(vec![crate::ext::Extension { ty: 0x90, data: vec![] }]).encode(&mut crit);
        crit.extend_from_slice(&[0; 48]);
        assert_eq!(RelayMsg::decode(22, &crit, Direction::Outbound), Err(DecodeError::UnknownCriticalExtension(0x90)));
    }

    #[test]
    fn long_introduce_spans_cells_and_others_do_not() {
        let body = IntroduceBody { auth_key: [3; 32], ext: Extensions::none(), encrypted: vec![4; 1500] };
        let cells = encode_plaintexts(0, &RelayMsg::Introduce1(body));
        assert_eq!(cells.len(), 4);
        assert!(parse_plaintext(&cells[0]).unwrap().0.more);
        let mut p = cells[0];
        p[0] = 25;
        assert!(parse_plaintext(&p).is_err(), "ESTABLISH_RENDEZVOUS may not span cells");
    }

    proptest! {
        #[test]
        fn onion_service_decoders_never_panic(cmd in 20u8..=28, body in proptest::collection::vec(any::<u8>(), 0..700), inbound in any::<bool>()) {
            let dir = if inbound { Direction::Inbound } else { Direction::Outbound };
            if let Ok(m) = RelayMsg::decode(cmd, &body, dir) {
                prop_assert_eq!(m.encode_body(), body.clone());
                prop_assert_eq!(RelayMsg::decode(cmd, &body, dir).unwrap(), m);
            }
        }

        #[test]
        fn a2_decoders_never_panic(cmd in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..1400), inbound in any::<bool>()) {
            let dir = if inbound { Direction::Inbound } else { Direction::Outbound };
            if let Ok(m) = RelayMsg::decode(cmd, &body, dir) {
                // Anything accepted re-encodes to something that decodes the same.
                prop_assert_eq!(RelayMsg::decode(cmd, &m.encode_body(), dir).unwrap(), m);
            }
        }

        #[test]
        fn assembler_never_panics(cells in proptest::collection::vec(proptest::collection::vec(any::<u8>(), RELAY_PLAINTEXT_LEN), 1..20)) {
            let mut asm = MsgAssembler::default();
            for c in cells {
                let arr: [u8; RELAY_PLAINTEXT_LEN] = c.try_into().unwrap();
                let _ = asm.push(&arr);
            }
        }
    }
}
