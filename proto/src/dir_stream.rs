//! What travels on a directory stream (BEGIN_DIR): one HTTP/1.0 request, one response, then END.
//!
//! The request is `GET <path> HTTP/1.0` and optional header lines, ended by an empty line (CRLF
//! line ends), at most [`MAX_REQUEST_LEN`] bytes; of the headers only `Accept-Encoding` (a
//! `deflate` token lets the server compress) and `Content-Length` are read. A `POST <path>
//! HTTP/1.0` request (an upload) must carry `Content-Length` (at most [`MAX_POST_BODY_LEN`]) and
//! is complete once that many body bytes followed the empty line. The response is `HTTP/1.0 <code> <reason>`,
//! headers, an empty line and exactly `Content-Length` bytes of body, compressed (zlib, RFC 1950)
//! when it carries `Content-Encoding: deflate`; the serving relay then closes the stream. Both
//! parsers are total: any input gives a value or an error, never a panic, and decompression is
//! bounded (the caller's size cap, and a cap on the expansion ratio against compression bombs).

/// The consensus a cache holds (GET).
pub const CONSENSUS_PATH: &str = "/allium/v1/consensus";
/// `CONSENSUS_DIFF_PATH` + `<64 hex: SHA-256 of a consensus text>`: the diff from that consensus
/// to the one held (`crate::doc::diff`), or 404 when the cache cannot make it.
pub const CONSENSUS_DIFF_PATH: &str = "/allium/v1/consensus/diff/";
/// `BW_TEST_PATH` + `<n>` (decimal, 1 to [`MAX_BW_TEST_LEN`]): `n` zero bytes, what bandwidth
/// scanners fetch through a relay to measure it.
pub const BW_TEST_PATH: &str = "/allium/v1/bw-test/";
/// Most bytes one bandwidth-test fetch returns.
pub const MAX_BW_TEST_LEN: usize = 1 << 20;

/// Most bytes a request may take, headers included.
pub const MAX_REQUEST_LEN: usize = 2048;
/// Most bytes of a POST body (the largest onion-service descriptor).
pub const MAX_POST_BODY_LEN: usize = 32 * 1024;
/// Most bytes a whole request may take (head and POST body).
pub const MAX_REQUEST_TOTAL: usize = MAX_REQUEST_LEN + MAX_POST_BODY_LEN;
/// Most bytes a response's status line and headers may take.
pub const MAX_RESPONSE_HEAD_LEN: usize = 8192;
/// A compressed body may inflate at most this many times over (beyond the first 64 KiB).
pub const MAX_EXPANSION: usize = 25;
const EXPANSION_FREE: usize = 64 * 1024;

/// Why a request or response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirStreamError {
    #[error("request longer than {MAX_REQUEST_LEN} bytes")]
    RequestTooLong,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("request body longer than {MAX_POST_BODY_LEN} bytes")]
    BodyTooLong,
    #[error("malformed response: {0}")]
    BadResponse(&'static str),
    #[error("response body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("compressed body does not inflate: {0}")]
    BadCompression(&'static str),
}

/// The request for `path` (which starts with `/`), accepting a compressed answer.
pub fn encode_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.0\r\nAccept-Encoding: deflate\r\n\r\n").into_bytes()
}

/// An upload of `body` to `path` (which starts with `/`).
pub fn encode_post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("POST {path} HTTP/1.0\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// The method of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirRequest {
    pub method: Method,
    pub path: String,
    /// The client accepts `Content-Encoding: deflate`.
    pub deflate: bool,
    /// The body of a POST (empty for GET).
    pub body: Vec<u8>,
}

impl DirRequest {
    /// A GET of `path`.
    pub fn get(path: &str, deflate: bool) -> Self {
        DirRequest { method: Method::Get, path: path.to_string(), deflate, body: Vec::new() }
    }
}

/// Parses the start of a directory stream: `Ok(None)` while the request is incomplete, the
/// request once the empty line (and, for POST, the whole body) has arrived. Bytes after the
/// request are refused.
pub fn parse_request(buf: &[u8]) -> Result<Option<DirRequest>, DirStreamError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() >= MAX_REQUEST_LEN { Err(DirStreamError::RequestTooLong) } else { Ok(None) };
    };
    if end + 4 > MAX_REQUEST_LEN {
        return Err(DirStreamError::RequestTooLong);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| DirStreamError::BadRequest("not ASCII"))?;
    let mut head_lines = head.split("\r\n");
    let line = head_lines.next().unwrap_or("");
    let headers: Vec<(&str, &str)> = head_lines.filter_map(|l| l.split_once(':')).collect();
    let deflate = headers.iter().any(|(name, value)| {
        name.trim().eq_ignore_ascii_case("accept-encoding") && value.split(',').any(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("deflate"))
    });
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(DirStreamError::BadRequest("request line is not METHOD PATH VERSION"));
    };
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        _ => return Err(DirStreamError::BadRequest("only GET and POST are served")),
    };
    if version != "HTTP/1.0" && version != "HTTP/1.1" {
        return Err(DirStreamError::BadRequest("unknown HTTP version"));
    }
    if !path.starts_with('/') || !path.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(DirStreamError::BadRequest("bad path"));
    }
    let mut length = None;
    for (name, value) in &headers {
        if name.trim().eq_ignore_ascii_case("content-length") {
            let v = value.trim();
            if length.is_some() || v.is_empty() || v.len() > 12 || !v.bytes().all(|c| c.is_ascii_digit()) {
                return Err(DirStreamError::BadRequest("bad Content-Length"));
            }
            length = Some(v.parse::<usize>().map_err(|_| DirStreamError::BadRequest("bad Content-Length"))?);
        }
    }
    let rest = &buf[end + 4..];
    let body = match method {
        Method::Get => {
            if length.is_some_and(|n| n > 0) || !rest.is_empty() {
                return Err(DirStreamError::BadRequest("GET with a body"));
            }
            Vec::new()
        }
        Method::Post => {
            let n = length.ok_or(DirStreamError::BadRequest("POST without Content-Length"))?;
            if n > MAX_POST_BODY_LEN {
                return Err(DirStreamError::BodyTooLong);
            }
            if rest.len() < n {
                return Ok(None);
            }
            if rest.len() > n {
                return Err(DirStreamError::BadRequest("bytes after the body"));
            }
            rest.to_vec()
        }
    };
    Ok(Some(DirRequest { method, path: path.to_string(), deflate, body }))
}

/// A response with `status` (200, 400, 404, 503) and `body`.
pub fn encode_response(status: u16, body: &[u8]) -> Vec<u8> {
    encode_response_with(status, body, "")
}

/// A 200 response whose body `compressed` is zlib data ([`compress`]).
pub fn encode_compressed_response(compressed: &[u8]) -> Vec<u8> {
    encode_response_with(200, compressed, "Content-Encoding: deflate\r\n")
}

/// zlib-compresses a body for [`encode_compressed_response`].
pub fn compress(body: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec_zlib(body, 6)
}

fn encode_response_with(status: u16, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let mut out =
        format!("HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n{extra_headers}Content-Length: {}\r\n\r\n", body.len())
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
/// than `max_body` (after decompression) or one that does not match its `Content-Length`.
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
    let mut deflate = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { return Err(bad("header without a colon")) };
        if name.eq_ignore_ascii_case("content-encoding") {
            match value.trim() {
                v if v.eq_ignore_ascii_case("deflate") => deflate = true,
                v if v.eq_ignore_ascii_case("identity") => {}
                _ => return Err(bad("unknown Content-Encoding")),
            }
        }
        if name.eq_ignore_ascii_case("content-length") {
            let v = value.trim();
            if length.is_some() || v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) || v.len() > 12 {
                return Err(bad("bad Content-Length"));
            }
            length = Some(v.parse::<usize>().map_err(|_| bad("bad Content-Length"))?);
        }
    }
    let length = length.ok_or(bad("no Content-Length"))?;
    // zlib can make incompressible data slightly longer.
    let max_wire = if deflate { max_body.saturating_add(max_body / 16 + 64) } else { max_body };
    if length > max_wire {
        return Err(DirStreamError::BodyTooLarge(max_body));
    }
    let body = &buf[end + 4..];
    if body.len() != length {
        return Err(bad("body length differs from Content-Length"));
    }
    let body = if deflate { inflate(body, max_body)? } else { body.to_vec() };
    Ok(DirResponse { status, body })
}

/// Inflates zlib data to at most `max` bytes and at most [`MAX_EXPANSION`] times its size
/// (beyond the first 64 KiB), so a compression bomb costs little.
fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, DirStreamError> {
    let limit = max.min(EXPANSION_FREE.max(data.len().saturating_mul(MAX_EXPANSION)));
    match miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(data, limit) {
        Ok(v) => Ok(v),
        Err(e) if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
            Err(if limit == max { DirStreamError::BodyTooLarge(max) } else { DirStreamError::BadCompression("inflates more than 25 times over") })
        }
        Err(_) => Err(DirStreamError::BadCompression("not zlib data")),
    }
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
        assert_eq!(r, b"GET /allium/v1/consensus HTTP/1.0\r\nAccept-Encoding: deflate\r\n\r\n");
        assert_eq!(parse_request(&r).unwrap(), Some(DirRequest::get("/allium/v1/consensus", true)));
        assert_eq!(parse_request(&r[..r.len() - 1]).unwrap(), None);
        let with_headers = b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        assert_eq!(parse_request(with_headers).unwrap(), Some(DirRequest::get("/x", false)));
        let listed = b"GET /x HTTP/1.1\r\naccept-encoding: gzip, Deflate;q=0.5\r\n\r\n";
        assert!(parse_request(listed).unwrap().unwrap().deflate);
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
    fn post_requests() {
        let r = encode_post("/up", b"hello");
        assert_eq!(r, b"POST /up HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello");
        let want = DirRequest { method: Method::Post, path: "/up".into(), deflate: false, body: b"hello".to_vec() };
        assert_eq!(parse_request(&r).unwrap(), Some(want));
        for cut in 0..r.len() {
            assert_eq!(parse_request(&r[..cut]).unwrap(), None, "truncated at {cut}");
        }
        let mut extra = r.clone();
        extra.push(b'!');
        assert!(matches!(parse_request(&extra), Err(DirStreamError::BadRequest(_))), "bytes after the body");
        assert!(matches!(parse_request(b"POST /up HTTP/1.0\r\n\r\nabc"), Err(DirStreamError::BadRequest(_))), "missing length");
        assert!(matches!(parse_request(b"POST /up HTTP/1.0\r\nContent-Length: x\r\n\r\n"), Err(DirStreamError::BadRequest(_))));
        assert!(matches!(parse_request(b"POST /up HTTP/1.0\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na"), Err(DirStreamError::BadRequest(_))));
        assert!(matches!(parse_request(b"POST /up HTTP/1.0\r\nContent-Length: 99999999999999\r\n\r\n"), Err(DirStreamError::BadRequest(_))));
        let big = format!("POST /up HTTP/1.0\r\nContent-Length: {}\r\n\r\n", MAX_POST_BODY_LEN + 1);
        assert_eq!(parse_request(big.as_bytes()), Err(DirStreamError::BodyTooLong), "refused before the body arrives");
        let full = encode_post("/up", &vec![b'a'; MAX_POST_BODY_LEN]);
        assert_eq!(parse_request(&full).unwrap().unwrap().body.len(), MAX_POST_BODY_LEN);
        assert!(parse_request(b"POST /up HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap().unwrap().body.is_empty());
        assert!(matches!(parse_request(b"GET /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nab"), Err(DirStreamError::BadRequest(_))), "GET with a body");
        assert!(matches!(parse_request(b"PUT /x HTTP/1.0\r\n\r\n"), Err(DirStreamError::BadRequest(_))));
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

    #[test]
    fn compressed_bodies_inflate_within_bounds() {
        // Text-like: 16 symbols in a pseudo-random order (compresses about 2:1, as a consensus).
        let mut x = 1u32;
        let body: Vec<u8> = (0..400_000)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                b"abcdefghijklmnop"[(x >> 28) as usize]
            })
            .collect();
        let r = encode_compressed_response(&compress(&body));
        assert!(r.len() < body.len());
        assert_eq!(parse_response(&r, body.len()).unwrap().body, body);
        assert_eq!(parse_response(&r, body.len() - 1), Err(DirStreamError::BodyTooLarge(body.len() - 1)));
        // A4: a bomb (8 MiB of zeros in a few KiB) is refused by the expansion cap, not inflated.
        let bomb = encode_compressed_response(&compress(&vec![0u8; 8 << 20]));
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(parse_response(&bomb, 16 << 20), Err(DirStreamError::BadCompression("inflates more than 25 times over")));
        let junk = encode_compressed_response(b"not zlib at all");
        assert_eq!(parse_response(&junk, 1000), Err(DirStreamError::BadCompression("not zlib data")));
        let other = b"HTTP/1.0 200 OK\r\nContent-Encoding: br\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_response(other, 10).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = parse_request(&data);
            let _ = parse_response(&data, 1000);
        }

        #[test]
        fn posts_round_trip_and_mutations_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2000), pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
            let r = encode_post("/p", &body);
            prop_assert_eq!(parse_request(&r).unwrap().unwrap().body, body.clone());
            prop_assert_eq!(parse_request(&r[..cut % r.len()]), Ok(None));
            let mut m = r.clone();
            let i = pos % m.len();
            m[i] = byte;
            let _ = parse_request(&m);
        }

        #[test]
        fn mutated_responses_never_panic_and_valid_ones_round_trip(body in proptest::collection::vec(any::<u8>(), 0..600), pos in any::<usize>(), byte in any::<u8>()) {
            let r = encode_response(200, &body);
            prop_assert_eq!(&parse_response(&r, 600).unwrap().body, &body);
            let mut m = r.clone();
            let i = pos % m.len();
            m[i] = byte;
            let _ = parse_response(&m, 600);
            let _ = parse_request(&m);
            let z = encode_compressed_response(&compress(&body));
            prop_assert_eq!(parse_response(&z, 600).unwrap().body, body.clone());
            let mut zm = z.clone();
            let j = pos % zm.len();
            zm[j] = byte;
            let _ = parse_response(&zm, 600);
        }
    }
}
