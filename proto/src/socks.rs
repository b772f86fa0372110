//! The server side of SOCKS5 (RFC 1928) with username/password authentication (RFC 1929) and
//! Tor's RESOLVE extension (command 0xF0), and of SOCKS4/SOCKS4a ([`crate::socks4`]), without I/O.
//! The first byte of an exchange decides the version.
//!
//! The client process feeds [`SocksServer::step`] with the bytes an application sent that were
//! not consumed yet, sends back [`Step::reply`], drops [`Step::consumed`] bytes from the front of
//! its buffer, and reads more when the outcome is [`Outcome::NeedMore`]. The parser keeps no
//! bytes: it looks only at `input`, so the caller's buffer is the only buffer.
//!
//! One call handles every complete message in `input` (a client may send its greeting and its
//! request together), so `NeedMore` always means "wait for more bytes". When the outcome is
//! [`Outcome::Done`], the bytes after the request are not consumed: they are application data for
//! the stream. The parser never answers the request itself; once the stream is open (or failed)
//! the caller sends [`SocksRequest::reply`], which answers in the request's own version.
//!
//! On an error the caller sends [`SocksError::reply`] (if any) and closes the connection.
//!
//! The longest valid message is a username/password message, 513 bytes; with more than
//! [`MAX_PENDING`] unconsumed bytes and no complete message the exchange fails.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Most bytes that may be waiting without forming a complete message.
pub const MAX_PENDING: usize = 600;

const VERSION: u8 = 5;
const USERPASS_VERSION: u8 = 1;
const METHOD_NO_AUTH: u8 = 0x00;
const METHOD_USER_PASS: u8 = 0x02;
const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const CMD_RESOLVE: u8 = 0xf0;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// Which authentication methods the server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocksConfig {
    /// Method 0x00, no authentication.
    pub allow_no_auth: bool,
    /// Method 0x02, username/password. Any credentials are accepted: they only isolate streams.
    pub allow_user_pass: bool,
}

impl Default for SocksConfig {
    fn default() -> Self {
        SocksConfig { allow_no_auth: true, allow_user_pass: true }
    }
}

/// What the application asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocksCommand {
    /// Open a TCP stream to the target.
    Connect,
    /// Tor's extension (SOCKS5 command 0xF0): resolve the target's host name through the exit
    /// and answer with the address in the reply's BND.ADDR (the port is ignored).
    Resolve,
}

/// Which SOCKS version the request came in, so the reply uses the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocksVersion {
    /// SOCKS4 or SOCKS4a: 8-byte replies.
    V4,
    V5,
}

/// Where the application wants to go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    Ip(SocketAddr),
    /// A host name (1-255 bytes of printable ASCII, no spaces) and a port. Not interpreted: an
    /// IP address written as a host name stays a host name.
    Domain(String, u16),
}

impl TargetAddr {
    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(a) => a.port(),
            TargetAddr::Domain(_, p) => *p,
        }
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(a) => write!(f, "{a}"),
            TargetAddr::Domain(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// How the application authenticated. The credentials are never checked; they separate streams
/// that must not share a circuit.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum SocksAuth {
    NoAuth,
    /// Username and password, each 0-255 bytes.
    UserPass(Vec<u8>, Vec<u8>),
    /// A SOCKS4 user id (1-255 bytes; an empty one is [`SocksAuth::NoAuth`]).
    UserId(Vec<u8>),
}

/// Does not print credentials: browsers put the visited site in them.
impl fmt::Debug for SocksAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocksAuth::NoAuth => f.write_str("NoAuth"),
            SocksAuth::UserPass(u, p) => write!(f, "UserPass(<{} + {} bytes redacted>)", u.len(), p.len()),
            SocksAuth::UserId(u) => write!(f, "UserId(<{} bytes redacted>)", u.len()),
        }
    }
}

/// A complete, valid request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocksRequest {
    pub version: SocksVersion,
    pub command: SocksCommand,
    pub target: TargetAddr,
    pub auth: SocksAuth,
}

impl SocksRequest {
    /// The answer to this request in its own version. SOCKS5 sends `code` and `bound`
    /// (0.0.0.0:0 when `None`); SOCKS4 maps [`ReplyCode::Succeeded`] to 0x5A and every other
    /// code to 0x5B, and writes `bound` only when it is IPv4.
    pub fn reply(&self, code: ReplyCode, bound: Option<SocketAddr>) -> Vec<u8> {
        match self.version {
            SocksVersion::V5 => encode_reply(code, bound),
            SocksVersion::V4 => crate::socks4::encode_reply(code == ReplyCode::Succeeded, bound),
        }
    }
}

/// The result of one [`SocksServer::step`].
#[derive(Debug)]
pub struct Step {
    /// Bytes of `input` used up; never more than `input.len()`.
    pub consumed: usize,
    /// Bytes to send to the application now (possibly empty).
    pub reply: Vec<u8>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Wait for more bytes, then call `step` again with everything not consumed.
    NeedMore,
    /// The request is complete. The rest of the input is application data.
    Done(SocksRequest),
}

/// Reply codes of a SOCKS5 reply (RFC 1928 section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode {
    Succeeded = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
    // Tor's extended codes for onion services (proposal 304), 0xF0..=0xF7.
    /// No HSDir responsible for the address holds a descriptor for it.
    OnionDescNotFound = 0xF0,
    /// The descriptor found is not valid: bad signature, another blinded key or period, or an
    /// encrypted part that does not decrypt.
    OnionDescInvalid = 0xF1,
    /// Introduction failed on every introduction point tried.
    OnionIntroFailed = 0xF2,
    /// The rendezvous failed (circuit to the rendezvous point, or the service's handshake).
    OnionRendezvousFailed = 0xF3,
    /// The service requires client authorization and this client has no key for it.
    OnionMissingClientAuth = 0xF4,
    /// This client's authorization key for the service is not accepted.
    OnionBadClientAuth = 0xF5,
    /// The `.allium` name is not a valid onion address (bad length or alphabet, unknown
    /// version, wrong checksum, or not a usable key).
    OnionInvalidAddress = 0xF6,
    /// Introduction or rendezvous did not complete in time.
    OnionIntroTimeout = 0xF7,
}

/// A SOCKS5 reply: `VER REP RSV ATYP BND.ADDR BND.PORT`. `bound: None` encodes 0.0.0.0:0.
pub fn encode_reply(code: ReplyCode, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[VERSION, code as u8, 0]);
    match bound.ip() {
        IpAddr::V4(a) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&a.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

fn command_name(cmd: u8) -> &'static str {
    match cmd {
        2 => "BIND",
        3 => "UDP ASSOCIATE",
        0xf0 => "RESOLVE",
        0xf1 => "RESOLVE_PTR",
        _ => "unknown",
    }
}

/// Why the exchange failed. The connection is closed after sending [`SocksError::reply`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    #[error("not a SOCKS4 or SOCKS5 client (first byte {0:#04x})")]
    NotSocks(u8),
    #[error("unsupported SOCKS4 command {0:#04x} (only CONNECT)")]
    Socks4Command(u8),
    #[error("SOCKS4 destination 0.0.0.0")]
    Socks4ZeroAddress,
    #[error("SOCKS4 user id longer than {} bytes", crate::socks4::MAX_USER_ID)]
    Socks4UserIdTooLong,
    #[error("SOCKS4a host name longer than {} bytes", crate::socks4::MAX_HOST)]
    Socks4HostTooLong,
    #[error("empty SOCKS4a host name")]
    Socks4EmptyHost,
    #[error("SOCKS4a host name contains a byte that is not printable ASCII")]
    Socks4InvalidHost,
    #[error("SOCKS5 greeting offers no authentication method")]
    NoMethods,
    #[error("no acceptable authentication method offered (offered {0:02x?})")]
    NoAcceptableMethod(Vec<u8>),
    #[error("username/password message version {0:#04x}, expected 0x01")]
    BadAuthVersion(u8),
    #[error("SOCKS5 request version {0:#04x}, expected 0x05")]
    BadRequestVersion(u8),
    #[error("unsupported SOCKS5 command {0:#04x} ({name})", name = command_name(*.0))]
    UnsupportedCommand(u8),
    #[error("reserved byte of the request is {0:#04x}, must be 0")]
    NonZeroReserved(u8),
    #[error("unsupported address type {0:#04x}")]
    UnsupportedAddressType(u8),
    #[error("empty host name")]
    EmptyDomain,
    #[error("host name contains a byte that is not printable ASCII (control character, space, NUL or non-ASCII)")]
    InvalidDomain,
    #[error("more than {MAX_PENDING} bytes without a complete SOCKS5 message")]
    TooLong,
    #[error("the SOCKS5 exchange is already over")]
    Finished,
    /// `error` is in a message that arrived together with earlier, valid messages of the same
    /// exchange; `replies` answer those and go out before the error's own reply.
    #[error("{error}")]
    AfterReplies { replies: Vec<u8>, error: Box<SocksError> },
}

impl SocksError {
    /// Bytes to send before closing, if the protocol has an answer for this error.
    pub fn reply(&self) -> Option<Vec<u8>> {
        let request_reply = |code| Some(encode_reply(code, None));
        match self {
            SocksError::NotSocks(_) => None,
            SocksError::Socks4Command(_)
            | SocksError::Socks4ZeroAddress
            | SocksError::Socks4UserIdTooLong
            | SocksError::Socks4HostTooLong
            | SocksError::Socks4EmptyHost
            | SocksError::Socks4InvalidHost => Some(crate::socks4::encode_reply(false, None)),
            SocksError::NoMethods | SocksError::NoAcceptableMethod(_) => Some(vec![VERSION, METHOD_NONE_ACCEPTABLE]),
            SocksError::BadAuthVersion(_) => Some(vec![USERPASS_VERSION, 0x01]),
            SocksError::BadRequestVersion(_)
            | SocksError::NonZeroReserved(_)
            | SocksError::EmptyDomain
            | SocksError::InvalidDomain => request_reply(ReplyCode::GeneralFailure),
            SocksError::UnsupportedCommand(_) => request_reply(ReplyCode::CommandNotSupported),
            SocksError::UnsupportedAddressType(_) => request_reply(ReplyCode::AddressTypeNotSupported),
            SocksError::TooLong | SocksError::Finished => None,
            SocksError::AfterReplies { replies, error } => {
                let mut out = replies.clone();
                out.extend(error.reply().unwrap_or_default());
                Some(out)
            }
        }
    }

    /// The error itself, looking through [`SocksError::AfterReplies`].
    pub fn root(&self) -> &SocksError {
        match self {
            SocksError::AfterReplies { error, .. } => error.root(),
            e => e,
        }
    }
}

#[derive(Debug)]
enum State {
    Greeting,
    UserPass,
    Request(SocksAuth),
    /// Done or failed.
    Over,
}

/// What parsing the next message gave.
enum Parsed {
    Incomplete,
    /// A message of `used` bytes was handled; `reply` answers it.
    Next {
        used: usize,
        reply: Vec<u8>,
        state: State,
    },
    Done {
        used: usize,
        request: SocksRequest,
    },
}

/// The server side of one SOCKS5 exchange.
#[derive(Debug)]
pub struct SocksServer {
    cfg: SocksConfig,
    state: State,
}

impl SocksServer {
    pub fn new(cfg: SocksConfig) -> Self {
        SocksServer { cfg, state: State::Greeting }
    }

    /// Feed all bytes received so far that were not yet consumed. Returns how many bytes were
    /// consumed, bytes to send back (may be empty), and the outcome. Never panics.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, SocksError> {
        let mut consumed = 0;
        let mut reply = Vec::new();
        loop {
            let rest = input.get(consumed..).unwrap_or_default();
            let state = std::mem::replace(&mut self.state, State::Over);
            let parsed = match state {
                State::Greeting => parse_greeting(&self.cfg, rest),
                State::UserPass => parse_user_pass(rest),
                State::Request(ref auth) => parse_request(rest, auth),
                State::Over => Err(SocksError::Finished),
            };
            match parsed {
                Err(error) if reply.is_empty() => return Err(error),
                Err(error) => return Err(SocksError::AfterReplies { replies: reply, error: Box::new(error) }),
                Ok(Parsed::Incomplete) => {
                    if rest.len() > MAX_PENDING {
                        return Err(SocksError::TooLong);
                    }
                    self.state = state;
                    return Ok(Step { consumed, reply, outcome: Outcome::NeedMore });
                }
                Ok(Parsed::Next { used, reply: r, state }) => {
                    consumed += used;
                    reply.extend(r);
                    self.state = state;
                }
                Ok(Parsed::Done { used, request }) => {
                    consumed += used;
                    return Ok(Step { consumed, reply, outcome: Outcome::Done(request) });
                }
            }
        }
    }
}

/// `VER NMETHODS METHODS...`
fn parse_greeting(cfg: &SocksConfig, b: &[u8]) -> Result<Parsed, SocksError> {
    let Some(&ver) = b.first() else { return Ok(Parsed::Incomplete) };
    match ver {
        VERSION => {}
        4 => {
            return Ok(match crate::socks4::parse_request(b)? {
                None => Parsed::Incomplete,
                Some((request, used)) => Parsed::Done { used, request },
            })
        }
        v => return Err(SocksError::NotSocks(v)),
    }
    let Some(&n) = b.get(1) else { return Ok(Parsed::Incomplete) };
    if n == 0 {
        return Err(SocksError::NoMethods);
    }
    let used = 2 + usize::from(n);
    let Some(methods) = b.get(2..used) else { return Ok(Parsed::Incomplete) };
    let (method, state) = if cfg.allow_user_pass && methods.contains(&METHOD_USER_PASS) {
        (METHOD_USER_PASS, State::UserPass)
    } else if cfg.allow_no_auth && methods.contains(&METHOD_NO_AUTH) {
        (METHOD_NO_AUTH, State::Request(SocksAuth::NoAuth))
    } else {
        return Err(SocksError::NoAcceptableMethod(methods.to_vec()));
    };
    Ok(Parsed::Next { used, reply: vec![VERSION, method], state })
}

/// `VER ULEN UNAME PLEN PASSWD` (RFC 1929). Empty names and passwords are accepted.
fn parse_user_pass(b: &[u8]) -> Result<Parsed, SocksError> {
    let Some(&ver) = b.first() else { return Ok(Parsed::Incomplete) };
    if ver != USERPASS_VERSION {
        return Err(SocksError::BadAuthVersion(ver));
    }
    let Some(&ulen) = b.get(1) else { return Ok(Parsed::Incomplete) };
    let u_end = 2 + usize::from(ulen);
    let Some(user) = b.get(2..u_end) else { return Ok(Parsed::Incomplete) };
    let Some(&plen) = b.get(u_end) else { return Ok(Parsed::Incomplete) };
    let used = u_end + 1 + usize::from(plen);
    let Some(pass) = b.get(u_end + 1..used) else { return Ok(Parsed::Incomplete) };
    Ok(Parsed::Next {
        used,
        reply: vec![USERPASS_VERSION, 0x00],
        state: State::Request(SocksAuth::UserPass(user.to_vec(), pass.to_vec())),
    })
}

/// `VER CMD RSV ATYP DST.ADDR DST.PORT`. Fields are checked as soon as they arrive.
fn parse_request(b: &[u8], auth: &SocksAuth) -> Result<Parsed, SocksError> {
    let Some(&ver) = b.first() else { return Ok(Parsed::Incomplete) };
    if ver != VERSION {
        return Err(SocksError::BadRequestVersion(ver));
    }
    let Some(&cmd) = b.get(1) else { return Ok(Parsed::Incomplete) };
    let command = match cmd {
        CMD_CONNECT => SocksCommand::Connect,
        CMD_RESOLVE => SocksCommand::Resolve,
        other => return Err(SocksError::UnsupportedCommand(other)),
    };
    let Some(&rsv) = b.get(2) else { return Ok(Parsed::Incomplete) };
    if rsv != 0 {
        return Err(SocksError::NonZeroReserved(rsv));
    }
    let Some(&atyp) = b.get(3) else { return Ok(Parsed::Incomplete) };
    let port_at = |at: usize| b.get(at..at + 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
    let (target, used) = match atyp {
        ATYP_V4 => {
            let Some(a) = b.get(4..8) else { return Ok(Parsed::Incomplete) };
            let Some(port) = port_at(8) else { return Ok(Parsed::Incomplete) };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            (TargetAddr::Ip(SocketAddr::new(IpAddr::V4(ip), port)), 10)
        }
        ATYP_V6 => {
            let Some(a) = b.get(4..20) else { return Ok(Parsed::Incomplete) };
            let Some(port) = port_at(20) else { return Ok(Parsed::Incomplete) };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(a);
            (TargetAddr::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)), 22)
        }
        ATYP_DOMAIN => {
            let Some(&len) = b.get(4) else { return Ok(Parsed::Incomplete) };
            if len == 0 {
                return Err(SocksError::EmptyDomain);
            }
            let end = 5 + usize::from(len);
            let Some(name) = b.get(5..end) else { return Ok(Parsed::Incomplete) };
            if !name.iter().all(|c| c.is_ascii_graphic()) {
                return Err(SocksError::InvalidDomain);
            }
            let Some(port) = port_at(end) else { return Ok(Parsed::Incomplete) };
            let name: String = name.iter().map(|&c| char::from(c)).collect();
            (TargetAddr::Domain(name, port), end + 2)
        }
        other => return Err(SocksError::UnsupportedAddressType(other)),
    };
    Ok(Parsed::Done { used, request: SocksRequest { version: SocksVersion::V5, command, target, auth: auth.clone() } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- client-side encoders, for the tests only ----

    fn greeting(methods: &[u8]) -> Vec<u8> {
        let mut v = vec![5, methods.len() as u8];
        v.extend_from_slice(methods);
        v
    }
    fn user_pass(u: &[u8], p: &[u8]) -> Vec<u8> {
        let mut v = vec![1, u.len() as u8];
        v.extend_from_slice(u);
        v.push(p.len() as u8);
        v.extend_from_slice(p);
        v
    }
    fn request(cmd: u8, target: &TargetAddr) -> Vec<u8> {
        let mut v = vec![5, cmd, 0];
        match target {
            TargetAddr::Ip(SocketAddr::V4(a)) => {
                v.push(1);
                v.extend_from_slice(&a.ip().octets());
            }
            TargetAddr::Ip(SocketAddr::V6(a)) => {
                v.push(4);
                v.extend_from_slice(&a.ip().octets());
            }
            TargetAddr::Domain(h, _) => {
                v.push(3);
                v.push(h.len() as u8);
                v.extend_from_slice(h.as_bytes());
            }
        }
        v.extend_from_slice(&target.port().to_be_bytes());
        v
    }

    /// Acts like the client process: a buffer of unconsumed bytes, filled `chunks` bytes at a
    /// time (cycling), drained by `consumed`. Returns the final result, all replies and how many
    /// bytes of `data` were consumed in total.
    fn drive(s: &mut SocksServer, data: &[u8], chunks: &[usize]) -> (Result<Outcome, SocksError>, Vec<u8>, usize) {
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut total = 0;
        let mut replies = Vec::new();
        let mut i = 0;
        loop {
            let n = chunks.get(i % chunks.len().max(1)).copied().unwrap_or(1).max(1);
            i += 1;
            let take = n.min(data.len() - fed);
            buf.extend_from_slice(&data[fed..fed + take]);
            fed += take;
            match s.step(&buf) {
                Err(e) => return (Err(e), replies, total),
                Ok(st) => {
                    assert!(st.consumed <= buf.len());
                    buf.drain(..st.consumed);
                    total += st.consumed;
                    replies.extend(st.reply);
                    match st.outcome {
                        Outcome::Done(r) => return (Ok(Outcome::Done(r)), replies, total),
                        Outcome::NeedMore => {
                            assert!(buf.len() <= MAX_PENDING);
                            if fed == data.len() {
                                return (Ok(Outcome::NeedMore), replies, total);
                            }
                        }
                    }
                }
            }
        }
    }

    fn server() -> SocksServer {
        SocksServer::new(SocksConfig::default())
    }

    fn v4_target() -> TargetAddr {
        TargetAddr::Ip("93.184.216.34:80".parse().unwrap())
    }

    /// Feeds `exchange` one byte at a time, like a slow client; checks NeedMore until the last
    /// byte, and that the right replies came out.
    fn byte_by_byte(cfg: SocksConfig, exchange: &[u8], want_replies: &[u8]) -> SocksRequest {
        let mut s = SocksServer::new(cfg);
        let mut buf = Vec::new();
        let mut replies = Vec::new();
        for (i, &b) in exchange.iter().enumerate() {
            buf.push(b);
            let st = s.step(&buf).unwrap();
            buf.drain(..st.consumed);
            replies.extend(st.reply);
            match st.outcome {
                Outcome::NeedMore => assert!(i + 1 < exchange.len(), "NeedMore at the end"),
                Outcome::Done(r) => {
                    assert_eq!(i + 1, exchange.len(), "Done too early");
                    assert!(buf.is_empty());
                    assert_eq!(replies, want_replies);
                    return r;
                }
            }
        }
        panic!("never done");
    }

    /// Feeds every prefix of `exchange` to a fresh server: NeedMore for all but the whole.
    fn growing_prefixes(exchange: &[u8]) -> SocksRequest {
        for n in 0..exchange.len() {
            let st = server().step(&exchange[..n]).unwrap();
            assert_eq!(st.outcome, Outcome::NeedMore, "prefix {n}");
            assert!(st.consumed <= n);
        }
        let st = server().step(exchange).unwrap();
        assert_eq!(st.consumed, exchange.len());
        match st.outcome {
            Outcome::Done(r) => r,
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn no_auth_ipv4_domain_ipv6_byte_by_byte() {
        let targets = [
            v4_target(),
            TargetAddr::Domain("example.com".into(), 443),
            TargetAddr::Ip("[2001:db8::1]:8080".parse().unwrap()),
            TargetAddr::Domain("x".repeat(255), 1),
        ];
        for t in targets {
            let mut ex = greeting(&[0]);
            ex.extend(request(1, &t));
            let r = byte_by_byte(SocksConfig::default(), &ex, &[5, 0]);
            assert_eq!(r, SocksRequest { version: SocksVersion::V5, command: SocksCommand::Connect, target: t.clone(), auth: SocksAuth::NoAuth });
            assert_eq!(growing_prefixes(&ex), r);
        }
    }

    #[test]
    fn user_pass_exchange() {
        let t = TargetAddr::Domain("example.org".into(), 80);
        let mut ex = greeting(&[0, 2]);
        ex.extend(user_pass(b"alice", b"secret"));
        ex.extend(request(1, &t));
        let r = byte_by_byte(SocksConfig::default(), &ex, &[5, 2, 1, 0]);
        assert_eq!(r.auth, SocksAuth::UserPass(b"alice".to_vec(), b"secret".to_vec()));
        assert_eq!(r.target, t);
        assert_eq!(growing_prefixes(&ex), r);
        // Empty and maximal credentials are accepted too.
        for (u, p) in [(vec![], vec![]), (vec![0xff; 255], vec![0; 255])] {
            let mut ex = greeting(&[2]);
            ex.extend(user_pass(&u, &p));
            ex.extend(request(1, &t));
            assert_eq!(growing_prefixes(&ex).auth, SocksAuth::UserPass(u, p));
        }
        // Debug does not print credentials.
        assert!(!format!("{r:?}").contains("secret"));
    }

    #[test]
    fn method_choice() {
        // user/pass preferred when offered and allowed.
        let st = server().step(&greeting(&[0, 2])).unwrap();
        assert_eq!(st.reply, [5, 2]);
        // user/pass not allowed: no-auth.
        let cfg = SocksConfig { allow_no_auth: true, allow_user_pass: false };
        let st = SocksServer::new(cfg).step(&greeting(&[2, 0])).unwrap();
        assert_eq!(st.reply, [5, 0]);
        assert_eq!(st.consumed, 4);
    }

    #[test]
    fn no_acceptable_method() {
        let e = server().step(&greeting(&[1, 0x80])).unwrap_err();
        assert_eq!(e, SocksError::NoAcceptableMethod(vec![1, 0x80]));
        assert_eq!(e.reply(), Some(vec![5, 0xff]));
        let cfg = SocksConfig { allow_no_auth: false, allow_user_pass: true };
        let e = SocksServer::new(cfg).step(&greeting(&[0])).unwrap_err();
        assert_eq!(e.reply(), Some(vec![5, 0xff]));
        let e = server().step(&[5, 0]).unwrap_err();
        assert_eq!(e, SocksError::NoMethods);
        assert_eq!(e.reply(), Some(vec![5, 0xff]));
    }

    /// Greeting, then `req` in a second call; the error of the second call.
    fn request_error(req: &[u8]) -> SocksError {
        let mut s = server();
        assert_eq!(s.step(&greeting(&[0])).unwrap().reply, [5, 0]);
        let e = s.step(req).unwrap_err();
        // The server is over after an error.
        assert_eq!(s.step(req).unwrap_err(), SocksError::Finished);
        e
    }

    fn reply_code(e: &SocksError) -> u8 {
        let r = e.reply().expect("a reply");
        assert_eq!(r.len(), 10);
        assert_eq!(r[0], 5);
        r[1]
    }

    #[test]
    fn bind_and_udp_associate_are_refused_with_code_7() {
        for cmd in [2u8, 3, 0xf1, 0] {
            let e = request_error(&request(cmd, &v4_target()));
            assert_eq!(e, SocksError::UnsupportedCommand(cmd));
            assert_eq!(reply_code(&e), 7);
            // Refused as soon as the command byte arrives.
            assert_eq!(request_error(&[5, cmd]), e);
        }
        assert!(SocksError::UnsupportedCommand(2).to_string().contains("BIND"));
        assert!(SocksError::UnsupportedCommand(3).to_string().contains("UDP ASSOCIATE"));
    }

    #[test]
    fn unknown_address_type_is_code_8() {
        let e = request_error(&[5, 1, 0, 9, 1, 2, 3, 4, 0, 80]);
        assert_eq!(e, SocksError::UnsupportedAddressType(9));
        assert_eq!(reply_code(&e), 8);
    }

    #[test]
    fn bad_domains() {
        let e = request_error(&[5, 1, 0, 3, 0, 0, 80]);
        assert_eq!(e, SocksError::EmptyDomain);
        assert_eq!(reply_code(&e), 1);
        for bad in [&b"exa\0mple.com"[..], b"a b", b"tab\there", b"new\nline", b"\x7f", b"caf\xc3\xa9"] {
            let mut req = vec![5, 1, 0, 3, bad.len() as u8];
            req.extend_from_slice(bad);
            req.extend_from_slice(&[0, 80]);
            let e = request_error(&req);
            assert_eq!(e, SocksError::InvalidDomain, "{bad:?}");
            assert_eq!(reply_code(&e), 1);
        }
    }

    #[test]
    fn reserved_byte_must_be_zero() {
        let mut req = request(1, &v4_target());
        req[2] = 1;
        let e = request_error(&req);
        assert_eq!(e, SocksError::NonZeroReserved(1));
        assert_eq!(reply_code(&e), 1);
    }

    #[test]
    fn bad_request_version() {
        let mut req = request(1, &v4_target());
        req[0] = 4;
        let e = request_error(&req);
        assert_eq!(e, SocksError::BadRequestVersion(4));
        assert_eq!(reply_code(&e), 1);
    }

    #[test]
    fn bad_user_pass_version() {
        let mut s = server();
        s.step(&greeting(&[2])).unwrap();
        let e = s.step(&[5, 1, b'a', 1, b'b']).unwrap_err();
        assert_eq!(e, SocksError::BadAuthVersion(5));
        assert_eq!(e.reply(), Some(vec![1, 1]));
    }

    #[test]
    fn socks4_and_other_protocols() {
        // SOCKS4 is decided on the first byte (see `socks4` for the rest).
        let socks4 = [4u8, 1, 0, 80, 1, 2, 3, 4, 0];
        let st = server().step(&socks4).unwrap();
        assert!(matches!(st.outcome, Outcome::Done(SocksRequest { version: SocksVersion::V4, .. })));
        assert_eq!(server().step(&[4]).unwrap().outcome, Outcome::NeedMore);
        let e = server().step(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert_eq!(e, SocksError::NotSocks(b'G'));
        assert_eq!(e.reply(), None);
    }

    #[test]
    fn resolve_command() {
        for t in [TargetAddr::Domain("localhost".into(), 0), TargetAddr::Ip("[::1]:0".parse().unwrap())] {
            let mut ex = greeting(&[0]);
            ex.extend(request(0xf0, &t));
            let r = byte_by_byte(SocksConfig::default(), &ex, &[5, 0]);
            assert_eq!(r.command, SocksCommand::Resolve);
            assert_eq!(r.target, t);
            assert_eq!(growing_prefixes(&ex), r);
        }
        assert!(SocksError::UnsupportedCommand(0xf1).to_string().contains("RESOLVE_PTR"));
        // The answer carries the address.
        let r = SocksRequest { version: SocksVersion::V5, command: SocksCommand::Resolve, target: TargetAddr::Domain("a".into(), 0), auth: SocksAuth::NoAuth };
        assert_eq!(r.reply(ReplyCode::Succeeded, Some("127.0.0.1:0".parse().unwrap())), [5, 0, 0, 1, 127, 0, 0, 1, 0, 0]);
        assert_eq!(r.reply(ReplyCode::HostUnreachable, None), [5, 4, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn pipelined_data_left_unconsumed() {
        let mut ex = greeting(&[0]);
        let req = request(1, &TargetAddr::Domain("example.com".into(), 80));
        ex.extend(&req);
        let head = ex.len();
        ex.extend_from_slice(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
        // All in one call.
        let st = server().step(&ex).unwrap();
        assert_eq!(st.consumed, head);
        assert_eq!(st.reply, [5, 0]);
        assert!(matches!(st.outcome, Outcome::Done(_)));
        // Greeting first, then request + data.
        let mut s = server();
        let st = s.step(&greeting(&[0])).unwrap();
        assert_eq!((st.consumed, st.outcome), (3, Outcome::NeedMore));
        let mut rest = req.clone();
        rest.extend_from_slice(b"hello");
        let st = s.step(&rest).unwrap();
        assert_eq!(st.consumed, req.len());
        assert!(st.reply.is_empty());
        assert!(matches!(st.outcome, Outcome::Done(_)));
        // The exchange is over.
        assert_eq!(s.step(b"hello").unwrap_err(), SocksError::Finished);
    }

    #[test]
    fn error_after_pipelined_greeting_keeps_earlier_reply() {
        let mut ex = greeting(&[0]);
        ex.extend(request(2, &v4_target()));
        let e = server().step(&ex).unwrap_err();
        assert_eq!(e.root(), &SocksError::UnsupportedCommand(2));
        let mut want = vec![5, 0];
        want.extend(encode_reply(ReplyCode::CommandNotSupported, None));
        assert_eq!(e.reply(), Some(want));
        assert!(e.to_string().contains("BIND"));
    }

    #[test]
    fn reply_encoding() {
        assert_eq!(encode_reply(ReplyCode::Succeeded, None), [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            encode_reply(ReplyCode::HostUnreachable, Some("1.2.3.4:258".parse().unwrap())),
            [5, 4, 0, 1, 1, 2, 3, 4, 1, 2]
        );
        let r = encode_reply(ReplyCode::ConnectionRefused, Some("[::1]:80".parse().unwrap()));
        assert_eq!(r.len(), 22);
        assert_eq!(&r[..4], &[5, 5, 0, 4]);
        assert_eq!(r[19], 1);
        assert_eq!(&r[20..], &[0, 80]);
        assert_eq!(ReplyCode::AddressTypeNotSupported as u8, 8);
        assert_eq!(ReplyCode::OnionInvalidAddress as u8, 0xF6);
    }

    /// The onion-service codes are Tor's extended SOCKS5 codes, on the wire as such; SOCKS4
    /// has one failure code for them all.
    #[test]
    fn onion_reply_codes_on_the_wire() {
        let codes = [
            (ReplyCode::OnionDescNotFound, 0xF0),
            (ReplyCode::OnionDescInvalid, 0xF1),
            (ReplyCode::OnionIntroFailed, 0xF2),
            (ReplyCode::OnionRendezvousFailed, 0xF3),
            (ReplyCode::OnionMissingClientAuth, 0xF4),
            (ReplyCode::OnionBadClientAuth, 0xF5),
            (ReplyCode::OnionInvalidAddress, 0xF6),
            (ReplyCode::OnionIntroTimeout, 0xF7),
        ];
        for (code, byte) in codes {
            assert_eq!(encode_reply(code, None), [5, byte, 0, 1, 0, 0, 0, 0, 0, 0], "{code:?}");
            assert_eq!(crate::socks4::encode_reply(code == ReplyCode::Succeeded, None)[1], 0x5b, "{code:?}");
        }
    }

    #[test]
    fn target_display() {
        assert_eq!(v4_target().to_string(), "93.184.216.34:80");
        assert_eq!(TargetAddr::Domain("a.b".into(), 1).to_string(), "a.b:1");
        assert_eq!(TargetAddr::Ip("[::1]:2".parse().unwrap()).to_string(), "[::1]:2");
    }

    fn target() -> impl Strategy<Value = TargetAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| TargetAddr::Ip(SocketAddr::from((a, p)))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(a, p)| TargetAddr::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p))),
            ("[!-~]{1,255}", any::<u16>()).prop_map(|(h, p)| TargetAddr::Domain(h, p)),
        ]
    }

    fn auth() -> impl Strategy<Value = SocksAuth> {
        prop_oneof![
            Just(SocksAuth::NoAuth),
            (prop::collection::vec(any::<u8>(), 0..=255), prop::collection::vec(any::<u8>(), 0..=255))
                .prop_map(|(u, p)| SocksAuth::UserPass(u, p)),
        ]
    }

    fn exchange(t: &TargetAddr, a: &SocksAuth) -> Vec<u8> {
        match a {
            SocksAuth::NoAuth => {
                let mut v = greeting(&[0]);
                v.extend(request(1, t));
                v
            }
            SocksAuth::UserId(_) => unreachable!("SOCKS4 only"),
            SocksAuth::UserPass(u, p) => {
                let mut v = greeting(&[0, 1, 2]);
                v.extend(user_pass(u, p));
                v.extend(request(1, t));
                v
            }
        }
    }

    proptest! {
        #[test]
        fn a6_random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..800), chunks in prop::collection::vec(1usize..64, 1..4)) {
            let st = server().step(&data);
            if let Ok(st) = st {
                prop_assert!(st.consumed <= data.len());
            }
            let _ = drive(&mut server(), &data, &chunks);
        }

        #[test]
        fn random_bytes_after_valid_start_never_panic(
            prefix in prop_oneof![Just(vec![5u8, 1, 0]), Just(vec![5u8, 1, 2]), Just(vec![5u8, 1, 2, 1])],
            data in prop::collection::vec(any::<u8>(), 0..800),
        ) {
            let mut all = prefix;
            all.extend(data);
            if let Ok(st) = server().step(&all) {
                prop_assert!(st.consumed <= all.len());
                if st.outcome == Outcome::NeedMore {
                    prop_assert!(all.len() - st.consumed <= MAX_PENDING);
                }
            }
        }

        #[test]
        fn a6_one_mutated_byte_never_panics(
            t in target(), a in auth(), idx in any::<prop::sample::Index>(), val in any::<u8>(),
            chunks in prop::collection::vec(1usize..40, 1..4),
        ) {
            let mut ex = exchange(&t, &a);
            let i = idx.index(ex.len());
            ex[i] = val;
            let (res, _replies, total) = drive(&mut server(), &ex, &chunks);
            prop_assert!(total <= ex.len());
            if let Err(e) = res {
                let _ = e.reply();
                let _ = e.to_string();
            }
        }

        #[test]
        fn round_trip(t in target(), a in auth(), extra in prop::collection::vec(any::<u8>(), 0..50), chunks in prop::collection::vec(1usize..300, 1..4)) {
            let ex = exchange(&t, &a);
            let mut data = ex.clone();
            data.extend(&extra);
            // In one call.
            let st = server().step(&data).unwrap();
            prop_assert_eq!(st.consumed, ex.len());
            let want = SocksRequest { version: SocksVersion::V5, command: SocksCommand::Connect, target: t, auth: a };
            prop_assert_eq!(st.outcome, Outcome::Done(want.clone()));
            // In chunks.
            let (res, replies, total) = drive(&mut server(), &data, &chunks);
            prop_assert_eq!(res.unwrap(), Outcome::Done(want.clone()));
            prop_assert!(total == ex.len());
            let want_replies: &[u8] = if want.auth == SocksAuth::NoAuth { &[5, 0] } else { &[5, 2, 1, 0] };
            prop_assert_eq!(replies, want_replies);
        }
    }
}
