//! The server side of an HTTP CONNECT proxy request (RFC 9110 section 9.3.6), without I/O.
//!
//! The client process feeds [`parse`] with every byte received so far. A request is
//! `CONNECT host:port HTTP/1.x` then header lines, ended by an empty line (lines end with CRLF
//! or a bare LF). `host` is a name (1-255 bytes of printable ASCII without `:/@[]`), an IPv4
//! literal or a bracketed IPv6 literal. Only the `Proxy-Authorization` header is used: its value
//! isolates streams like SOCKS credentials. The head of the request (request line and headers) is
//! capped at [`MAX_HEAD`] bytes and [`MAX_HEADERS`] header lines; bytes after it are application
//! data. The request line is checked as soon as it is complete, so a client that speaks something
//! else gets its error without waiting for the cap.
//!
//! Answers: [`encode_response`] with 200 once the stream is open, or the status of
//! [`HttpConnectError::status`] / [`status_for`] before closing.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::socks::{ReplyCode, TargetAddr};

/// Most bytes of request line plus headers.
pub const MAX_HEAD: usize = 8192;
/// Most header lines.
pub const MAX_HEADERS: usize = 100;
/// Longest host name.
pub const MAX_HOST: usize = 255;

/// A complete, valid CONNECT request.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpConnectRequest {
    pub target: TargetAddr,
    /// The `Proxy-Authorization` header's value (trimmed), if present. Never checked: it only
    /// separates streams.
    pub proxy_auth: Option<Vec<u8>>,
}

/// Does not print the credential.
impl std::fmt::Debug for HttpConnectRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConnectRequest")
            .field("target", &self.target)
            .field("proxy_auth", &self.proxy_auth.as_ref().map(|a| format!("<{} bytes redacted>", a.len())))
            .finish()
    }
}

/// What [`parse`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Wait for more bytes, then call again with everything received.
    NeedMore,
    /// The request ends after `consumed` bytes; the rest is application data.
    Done { request: HttpConnectRequest, consumed: usize },
}

/// Why a request was refused; answered with [`HttpConnectError::reply`], then the connection is
/// closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpConnectError {
    #[error("malformed HTTP CONNECT request: {0}")]
    BadRequest(&'static str),
    #[error("HTTP method is not CONNECT (this is a CONNECT-only proxy)")]
    MethodNotAllowed,
    #[error("HTTP request head longer than {MAX_HEAD} bytes or {MAX_HEADERS} header lines")]
    HeadTooLarge,
    #[error("unsupported HTTP version (only HTTP/1.0 and HTTP/1.1)")]
    VersionNotSupported,
}

impl HttpConnectError {
    pub fn status(&self) -> u16 {
        match self {
            HttpConnectError::BadRequest(_) => 400,
            HttpConnectError::MethodNotAllowed => 405,
            HttpConnectError::HeadTooLarge => 431,
            HttpConnectError::VersionNotSupported => 505,
        }
    }

    /// The response to send before closing.
    pub fn reply(&self) -> Vec<u8> {
        encode_response(self.status())
    }
}

/// The HTTP status that answers a request whose stream ended with a SOCKS5 reply code (the
/// client's internal code for every front end).
pub fn status_for(code: ReplyCode) -> u16 {
    match code {
        ReplyCode::Succeeded => 200,
        ReplyCode::NotAllowed => 403,
        ReplyCode::CommandNotSupported => 405,
        ReplyCode::AddressTypeNotSupported | ReplyCode::OnionInvalidAddress => 400,
        ReplyCode::TtlExpired => 504,
        ReplyCode::GeneralFailure | ReplyCode::NetworkUnreachable | ReplyCode::HostUnreachable | ReplyCode::ConnectionRefused => 502,
        // The service could not be reached (descriptor, introduction, rendezvous, client auth).
        ReplyCode::OnionDescNotFound
        | ReplyCode::OnionDescInvalid
        | ReplyCode::OnionIntroFailed
        | ReplyCode::OnionRendezvousFailed
        | ReplyCode::OnionMissingClientAuth
        | ReplyCode::OnionBadClientAuth => 502,
        ReplyCode::OnionIntroTimeout => 504,
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "Connection established",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// `HTTP/1.1 200 Connection established` and an empty line, or an error status with
/// `Content-Length: 0` and `Connection: close`.
pub fn encode_response(status: u16) -> Vec<u8> {
    let phrase = reason_phrase(status);
    if status == 200 {
        format!("HTTP/1.1 200 {phrase}\r\n\r\n").into_bytes()
    } else {
        format!("HTTP/1.1 {status} {phrase}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
    }
}

/// The next line of `b` from `at`: (line without its CRLF or LF, index after it), or `None` if
/// no line end arrived yet.
fn line(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = b.get(at..)?;
    let nl = rest.iter().position(|&c| c == b'\n')?;
    let l = &rest[..nl];
    let l = l.strip_suffix(b"\r").unwrap_or(l);
    Some((l, at + nl + 1))
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Parses every byte received so far. Never panics; never looks past [`MAX_HEAD`] bytes.
pub fn parse(input: &[u8]) -> Result<Parsed, HttpConnectError> {
    let b = &input[..input.len().min(MAX_HEAD)];
    // The method is checked as soon as it arrives, even before the line is complete.
    let method_end = b.iter().position(|&c| !is_tchar(c)).unwrap_or(b.len());
    if b.get(..method_end.min(7)) != Some(&b"CONNECT"[..method_end.min(7)]) || (method_end < b.len() && method_end != 7) {
        return Err(if method_end == 0 && !b.is_empty() { HttpConnectError::BadRequest("no method") } else { HttpConnectError::MethodNotAllowed });
    }
    let Some((request_line, mut at)) = line(b, 0) else { return need_more(input) };
    let target = parse_request_line(request_line)?;
    let mut proxy_auth = None;
    let mut headers = 0;
    loop {
        let Some((l, next)) = line(b, at) else { return need_more(input) };
        at = next;
        if l.is_empty() {
            return Ok(Parsed::Done { request: HttpConnectRequest { target, proxy_auth }, consumed: at });
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(HttpConnectError::HeadTooLarge);
        }
        let colon = l.iter().position(|&c| c == b':').ok_or(HttpConnectError::BadRequest("header line without a colon"))?;
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
            return Err(HttpConnectError::BadRequest("bad header name (or obsolete line folding)"));
        }
        if value.iter().any(|&c| c == 0 || c == b'\r') {
            return Err(HttpConnectError::BadRequest("control character in a header value"));
        }
        if name.eq_ignore_ascii_case(b"proxy-authorization") {
            if proxy_auth.is_some() {
                return Err(HttpConnectError::BadRequest("two Proxy-Authorization headers"));
            }
            proxy_auth = Some(value.trim_ascii().to_vec());
        }
    }
}

fn need_more(input: &[u8]) -> Result<Parsed, HttpConnectError> {
    if input.len() >= MAX_HEAD {
        Err(HttpConnectError::HeadTooLarge)
    } else {
        Ok(Parsed::NeedMore)
    }
}

/// `CONNECT SP authority SP HTTP/1.x`
fn parse_request_line(l: &[u8]) -> Result<TargetAddr, HttpConnectError> {
    let mut parts = l.split(|&c| c == b' ');
    let (Some(_method), Some(authority), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(HttpConnectError::BadRequest("request line is not `CONNECT host:port HTTP/1.1`"));
    };
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => {}
        v if v.starts_with(b"HTTP/") => return Err(HttpConnectError::VersionNotSupported),
        _ => return Err(HttpConnectError::BadRequest("request line does not end with an HTTP version")),
    }
    parse_authority(authority)
}

/// `host:port`, `[v6]:port`.
fn parse_authority(a: &[u8]) -> Result<TargetAddr, HttpConnectError> {
    let bad = HttpConnectError::BadRequest;
    let colon = a.iter().rposition(|&c| c == b':').ok_or(bad("no port in the CONNECT target"))?;
    let (host, port) = (&a[..colon], &a[colon + 1..]);
    if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        return Err(bad("bad port"));
    }
    let port: u32 = port.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0'));
    let port = u16::try_from(port).map_err(|_| bad("port above 65535"))?;
    if let Some(inner) = host.strip_prefix(b"[") {
        let inner = inner.strip_suffix(b"]").ok_or(bad("unclosed ["))?;
        let text = std::str::from_utf8(inner).map_err(|_| bad("bad IPv6 literal"))?;
        let ip: Ipv6Addr = text.parse().map_err(|_| bad("bad IPv6 literal"))?;
        return Ok(TargetAddr::Ip(SocketAddr::new(IpAddr::V6(ip), port)));
    }
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if host.len() > MAX_HOST {
        return Err(bad("host name longer than 255 bytes"));
    }
    if !host.iter().all(|&c| c.is_ascii_graphic() && !b":/@[]".contains(&c)) {
        return Err(bad("bad character in the host name"));
    }
    let text: String = host.iter().map(|&c| char::from(c)).collect();
    // An IPv4 literal (dotted quad) goes as an address; anything else as a name for the exit.
    Ok(match text.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => TargetAddr::Ip(SocketAddr::new(IpAddr::V4(ip), port)),
        Err(_) => TargetAddr::Domain(text, port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn done(input: &[u8]) -> (HttpConnectRequest, usize) {
        match parse(input) {
            Ok(Parsed::Done { request, consumed }) => (request, consumed),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn err(input: &[u8]) -> HttpConnectError {
        parse(input).expect_err(&String::from_utf8_lossy(input))
    }

    #[test]
    fn targets() {
        let (r, n) = done(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        assert_eq!(r.target, TargetAddr::Domain("example.com".into(), 443));
        assert_eq!(r.proxy_auth, None);
        assert_eq!(n, 59);
        let (r, _) = done(b"CONNECT 127.0.0.1:8000 HTTP/1.0\r\n\r\n");
        assert_eq!(r.target, TargetAddr::Ip("127.0.0.1:8000".parse().unwrap()));
        let (r, _) = done(b"CONNECT [::1]:80 HTTP/1.1\n\n");
        assert_eq!(r.target, TargetAddr::Ip("[::1]:80".parse().unwrap()));
        let (r, _) = done(b"CONNECT localhost:65535 HTTP/1.1\r\nproxy-authorization:  Basic YWxpY2U6eA== \r\nUser-Agent: x\r\n\r\n");
        assert_eq!(r.target, TargetAddr::Domain("localhost".into(), 65535));
        assert_eq!(r.proxy_auth.as_deref(), Some(&b"Basic YWxpY2U6eA=="[..]));
        assert!(!format!("{r:?}").contains("YWxp"), "Debug hides the credential");
        // Port 0 parses; the client refuses it (403).
        assert_eq!(done(b"CONNECT a:0 HTTP/1.1\r\n\r\n").0.target.port(), 0);
    }

    #[test]
    fn data_after_the_head_is_left() {
        let head = b"CONNECT a.b:1 HTTP/1.1\r\n\r\n";
        let mut all = head.to_vec();
        all.extend_from_slice(b"\x16\x03\x01 TLS hello");
        assert_eq!(done(&all).1, head.len());
    }

    #[test]
    fn incomplete_needs_more() {
        let full = b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n";
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]), Ok(Parsed::NeedMore), "prefix {n}");
        }
    }

    #[test]
    fn errors_and_statuses() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", 405),
            (b"GET", 405),
            (b"CONNECTX a:1 HTTP/1.1\r\n\r\n", 405),
            (b"\x05\x01\x00", 400),
            (b"\x16\x03\x01", 400),
            (b"CONNECT a:1 HTTP/2.0\r\n\r\n", 505),
            (b"CONNECT a:1 FTP/1.0\r\n\r\n", 400),
            (b"CONNECT a:1\r\n\r\n", 400),
            (b"CONNECT  a:1 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT a HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT a: HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT a:65536 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT a:1x HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT :80 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT [::1:80 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT [zz]:80 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT u@a:80 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT a\xc3\xa9:80 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\n folded: x\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: a\r\nProxy-Authorization: b\r\n\r\n", 400),
        ];
        for (input, status) in cases {
            let e = err(input);
            assert_eq!(e.status(), *status, "{:?}: {e}", String::from_utf8_lossy(input));
            let reply = String::from_utf8(e.reply()).unwrap();
            assert!(reply.starts_with(&format!("HTTP/1.1 {status} ")), "{reply}");
            assert!(reply.ends_with("\r\n\r\n"));
        }
        let long_host = format!("CONNECT {}:1 HTTP/1.1\r\n\r\n", "a".repeat(256));
        assert_eq!(err(long_host.as_bytes()).status(), 400);
    }

    #[test]
    fn caps() {
        // A head that never ends.
        let mut big = b"CONNECT a:1 HTTP/1.1\r\n".to_vec();
        while big.len() < MAX_HEAD {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(err(&big), HttpConnectError::HeadTooLarge);
        // A request line that never ends.
        let mut line = b"CONNECT ".to_vec();
        line.resize(MAX_HEAD + 10, b'a');
        assert_eq!(err(&line).status(), 431);
        // Too many header lines, even short ones.
        let mut many = b"CONNECT a:1 HTTP/1.1\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"A:\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(err(&many), HttpConnectError::HeadTooLarge);
    }

    #[test]
    fn responses() {
        assert_eq!(encode_response(200), b"HTTP/1.1 200 Connection established\r\n\r\n");
        assert_eq!(encode_response(504), b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert_eq!(status_for(ReplyCode::Succeeded), 200);
        assert_eq!(status_for(ReplyCode::NotAllowed), 403);
        assert_eq!(status_for(ReplyCode::HostUnreachable), 502);
        assert_eq!(status_for(ReplyCode::TtlExpired), 504);
        assert_eq!(status_for(ReplyCode::GeneralFailure), 502);
    }

    fn target() -> impl Strategy<Value = (String, TargetAddr)> {
        prop_oneof![
            ("[a-z0-9.-]{1,60}[a-z]", any::<u16>()).prop_map(|(h, p)| (format!("{h}:{p}"), TargetAddr::Domain(h, p))),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| {
                let sa = SocketAddr::from((a, p));
                (sa.to_string(), TargetAddr::Ip(sa))
            }),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| {
                let sa = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p);
                (sa.to_string(), TargetAddr::Ip(sa))
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            (text, t) in target(),
            auth in proptest::option::of("[!-~]{1,80}"),
            headers in prop::collection::vec(("[A-Za-z-]{1,20}", "[ -~]{0,40}"), 0..10),
            lf_only in any::<bool>(),
            extra in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let eol = if lf_only { "\n" } else { "\r\n" };
            let mut head = format!("CONNECT {text} HTTP/1.1{eol}");
            for (k, v) in &headers {
                if !k.eq_ignore_ascii_case("proxy-authorization") {
                    head.push_str(&format!("{k}: {v}{eol}"));
                }
            }
            if let Some(a) = &auth {
                head.push_str(&format!("Proxy-Authorization: {a}{eol}"));
            }
            head.push_str(eol);
            let mut all = head.clone().into_bytes();
            all.extend(&extra);
            let (r, n) = done(&all);
            prop_assert_eq!(n, head.len());
            prop_assert_eq!(r.target, t);
            prop_assert_eq!(r.proxy_auth, auth.map(|a| a.trim().as_bytes().to_vec()));
            // Byte by byte: NeedMore until the whole head is there.
            for k in 0..head.len() {
                prop_assert_eq!(parse(&all[..k]), Ok(Parsed::NeedMore));
            }
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..10000)) {
            match parse(&data) {
                Ok(Parsed::Done { consumed, .. }) => prop_assert!(consumed <= data.len()),
                Ok(Parsed::NeedMore) => prop_assert!(data.len() < MAX_HEAD),
                Err(e) => { let _ = e.reply(); let _ = e.to_string(); }
            }
        }

        #[test]
        fn random_bytes_after_connect_never_panic(data in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut all = b"CONNECT ".to_vec();
            all.extend(data);
            for n in 0..=all.len() {
                if let Ok(Parsed::Done { consumed, .. }) = parse(&all[..n]) {
                    prop_assert!(consumed <= n);
                }
            }
        }
    }
}
