//! What travels on a directory stream (BEGIN_DIR): one HTTP/1.0 request, one response, then END.
//!
//! The request is `GET <path> HTTP/1.0` and optional header lines, ended by an empty line (CRLF
//! line ends), at most [`MAX_REQUEST_LEN`] bytes; headers are ignored. The response is
//! `HTTP/1.0 <code> <reason>`, headers, an empty line and exactly `Content-Length` bytes of body;
//! the serving relay then closes the stream. Both parsers are total: any input gives a value or
//! an error, never a panic.

/// Most bytes a request may take, headers included.
pub const MAX_REQUEST_LEN: usize = 2048;
/// Most bytes a response's status line and headers may take.
pub const MAX_RESPONSE_HEAD_LEN: usize = 8192;

/// Why a request or response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirStreamError {
    #[error("request longer than {MAX_REQUEST_LEN} bytes")]
    RequestTooLong,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("malformed response: {0}")]
    BadResponse(&'static str),
    #[error("response body larger than {0} bytes")]
    BodyTooLarge(usize),
}

/// The request for `path` (which starts with `/`).
pub fn encode_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.0\r\n\r\n").into_bytes()
}

/// Parses the start of a directory stream: `Ok(None)` while the request is incomplete, the path
/// once the empty line has arrived.
pub fn parse_request(buf: &[u8]) -> Result<Option<String>, DirStreamError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() >= MAX_REQUEST_LEN { Err(DirStreamError::RequestTooLong) } else { Ok(None) };
    };
    if end + 4 > MAX_REQUEST_LEN {
        return Err(DirStreamError::RequestTooLong);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| DirStreamError::BadRequest("not ASCII"))?;
    let line = head.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(DirStreamError::BadRequest("request line is not METHOD PATH VERSION"));
    };
    if method != "GET" {
        return Err(DirStreamError::BadRequest("only GET is served"));
    }
    if version != "HTTP/1.0" && version != "HTTP/1.1" {
        return Err(DirStreamError::BadRequest("unknown HTTP version"));
    }
    if !path.starts_with('/') || !path.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(DirStreamError::BadRequest("bad path"));
    }
    Ok(Some(path.to_string()))
}

/// A response with `status` (200, 400, 404, 503) and `body`.
pub fn encode_response(status: u16, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let mut out = format!("HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n", body.len())
        .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Parses a whole response (everything read until the stream ended), refusing a body larger
/// than `max_body` or one that does not match its `Content-Length`.
pub fn parse_response(buf: &[u8], max_body: usize) -> Result<DirResponse, DirStreamError> {
    let bad = DirStreamError::BadResponse;
    let Some(end) = find(&buf[..buf.len().min(MAX_RESPONSE_HEAD_LEN + 4)], b"\r\n\r\n") else {
        return Err(bad(if buf.len() > MAX_RESPONSE_HEAD_LEN { "head too long" } else { "truncated head" }));
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head not ASCII"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else { return Err(bad("bad status line")) };
    if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad("bad status line"));
    }
    let status: u16 = code.parse().map_err(|_| bad("bad status code"))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { return Err(bad("header without a colon")) };
        if name.eq_ignore_ascii_case("content-length") {
            let v = value.trim();
            if length.is_some() || v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) || v.len() > 12 {
                return Err(bad("bad Content-Length"));
            }
            length = Some(v.parse::<usize>().map_err(|_| bad("bad Content-Length"))?);
        }
    }
    let length = length.ok_or(bad("no Content-Length"))?;
    if length > max_body {
        return Err(DirStreamError::BodyTooLarge(max_body));
    }
    let body = &buf[end + 4..];
    if body.len() != length {
        return Err(bad("body length differs from Content-Length"));
    }
    Ok(DirResponse { status, body: body.to_vec() })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trip_and_incomplete() {
        let r = encode_request("/allium/v1/consensus");
        assert_eq!(r, b"GET /allium/v1/consensus HTTP/1.0\r\n\r\n");
        assert_eq!(parse_request(&r).unwrap().as_deref(), Some("/allium/v1/consensus"));
        assert_eq!(parse_request(&r[..r.len() - 1]).unwrap(), None);
        let with_headers = b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        assert_eq!(parse_request(with_headers).unwrap().as_deref(), Some("/x"));
    }

    #[test]
    fn bad_requests_are_refused() {
        for bad in [&b"POST /x HTTP/1.0\r\n\r\n"[..], b"GET x HTTP/1.0\r\n\r\n", b"GET /x HTTP/2\r\n\r\n", b"GET /x\r\n\r\n", b"GET  /x HTTP/1.0\r\n\r\n", b"GET /\xff HTTP/1.0\r\n\r\n"] {
            assert!(matches!(parse_request(bad), Err(DirStreamError::BadRequest(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_request(&vec![b'a'; MAX_REQUEST_LEN]), Err(DirStreamError::RequestTooLong));
        let mut long = b"GET /".to_vec();
        long.extend(vec![b'a'; MAX_REQUEST_LEN]);
        long.extend_from_slice(b" HTTP/1.0\r\n\r\n");
        assert_eq!(parse_request(&long), Err(DirStreamError::RequestTooLong));
    }

    #[test]
    fn response_round_trip_and_limits() {
        let r = encode_response(200, b"hello");
        assert_eq!(parse_response(&r, 5).unwrap(), DirResponse { status: 200, body: b"hello".to_vec() });
        assert_eq!(parse_response(&r, 4), Err(DirStreamError::BodyTooLarge(4)));
        assert!(matches!(parse_response(&r[..r.len() - 1], 100), Err(DirStreamError::BadResponse(_))), "truncated body");
        let mut extra = r.clone();
        extra.push(b'!');
        assert!(matches!(parse_response(&extra, 100), Err(DirStreamError::BadResponse(_))), "trailing bytes");
        assert_eq!(parse_response(&encode_response(404, b"no"), 10).unwrap().status, 404);
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n\r\nabc", 10).is_err(), "no Content-Length");
        assert!(parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", 10).is_err());
        assert!(parse_response(b"HTTP/1.0 2x0 OK\r\nContent-Length: 0\r\n\r\n", 10).is_err());
        let mut huge_head = b"HTTP/1.0 200 OK\r\n".to_vec();
        huge_head.extend(vec![b'a'; MAX_RESPONSE_HEAD_LEN + 10]);
        assert!(parse_response(&huge_head, 10).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = parse_request(&data);
            let _ = parse_response(&data, 1000);
        }

        #[test]
        fn mutated_responses_never_panic_and_valid_ones_round_trip(body in proptest::collection::vec(any::<u8>(), 0..600), pos in any::<usize>(), byte in any::<u8>()) {
            let r = encode_response(200, &body);
            prop_assert_eq!(parse_response(&r, 600).unwrap().body, body);
            let mut m = r.clone();
            let i = pos % m.len();
            m[i] = byte;
            let _ = parse_response(&m, 600);
            let _ = parse_request(&m);
        }
    }
}
