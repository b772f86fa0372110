//! SOCKS4 and SOCKS4a requests, without I/O; used by [`crate::socks::SocksServer`] when the first
//! byte of an exchange is 4.
//!
//! A request is `VN=4 CD DSTPORT(2) DSTIP(4) USERID NUL`, and for SOCKS4a (DSTIP `0.0.0.x`,
//! x ≠ 0) a host name follows: `HOST NUL`. Only CONNECT (`CD` = 1) is supported. The user id
//! (at most [`MAX_USER_ID`] bytes, any bytes but NUL) isolates streams like a SOCKS5 user name;
//! the host name is 1-[`MAX_HOST`] bytes of printable ASCII. The reply is always 8 bytes:
//! `VN=0 CD DSTPORT DSTIP`, with `CD` 0x5A (granted) or 0x5B (rejected or failed).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::socks::{SocksAuth, SocksCommand, SocksError, SocksRequest, SocksVersion, TargetAddr};

/// Longest user id, NUL excluded.
pub const MAX_USER_ID: usize = 255;
/// Longest SOCKS4a host name, NUL excluded.
pub const MAX_HOST: usize = 255;
/// Reply code: request granted.
pub const GRANTED: u8 = 0x5a;
/// Reply code: request rejected or failed.
pub const REJECTED: u8 = 0x5b;

const CMD_CONNECT: u8 = 1;

/// The 8-byte SOCKS4 reply. `bound` is written when it is an IPv4 address, zeros otherwise.
pub fn encode_reply(granted: bool, bound: Option<SocketAddr>) -> Vec<u8> {
    let mut out = vec![0, if granted { GRANTED } else { REJECTED }];
    match bound {
        Some(SocketAddr::V4(a)) => {
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&a.ip().octets());
        }
        _ => out.extend_from_slice(&[0; 6]),
    }
    out
}

/// Where the NUL that ends a field starting at `from` is, at most `max` bytes later.
/// `Ok(None)`: not arrived yet; `Err(())`: longer than `max`.
fn nul_at(b: &[u8], from: usize, max: usize) -> Result<Option<usize>, ()> {
    let field = b.get(from..).unwrap_or_default();
    match field.iter().take(max + 1).position(|&c| c == 0) {
        Some(i) => Ok(Some(from + i)),
        None if field.len() > max => Err(()),
        None => Ok(None),
    }
}

/// Parses one SOCKS4/4a request at the start of `b` (whose first byte is 4). `Ok(None)` means
/// more bytes are needed; `Ok(Some((request, used)))` a complete request of `used` bytes.
/// Fields are checked as soon as they arrive.
pub(crate) fn parse_request(b: &[u8]) -> Result<Option<(SocksRequest, usize)>, SocksError> {
    debug_assert_eq!(b.first(), Some(&4));
    let Some(&cmd) = b.get(1) else { return Ok(None) };
    if cmd != CMD_CONNECT {
        return Err(SocksError::Socks4Command(cmd));
    }
    let Some(p) = b.get(2..4) else { return Ok(None) };
    let port = u16::from_be_bytes([p[0], p[1]]);
    let Some(a) = b.get(4..8) else { return Ok(None) };
    let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    if ip.is_unspecified() {
        return Err(SocksError::Socks4ZeroAddress);
    }
    let Some(uid_end) = nul_at(b, 8, MAX_USER_ID).map_err(|_| SocksError::Socks4UserIdTooLong)? else { return Ok(None) };
    let uid = &b[8..uid_end];
    let auth = if uid.is_empty() { SocksAuth::NoAuth } else { SocksAuth::UserId(uid.to_vec()) };
    let is_4a = a[0] == 0 && a[1] == 0 && a[2] == 0;
    let (target, used) = if is_4a {
        let host_from = uid_end + 1;
        // Check the host name's bytes as they arrive.
        let partial = b.get(host_from..).unwrap_or_default();
        if partial.iter().take_while(|&&c| c != 0).any(|c| !c.is_ascii_graphic()) {
            return Err(SocksError::Socks4InvalidHost);
        }
        let Some(host_end) = nul_at(b, host_from, MAX_HOST).map_err(|_| SocksError::Socks4HostTooLong)? else { return Ok(None) };
        let host = &b[host_from..host_end];
        if host.is_empty() {
            return Err(SocksError::Socks4EmptyHost);
        }
        let name: String = host.iter().map(|&c| char::from(c)).collect();
        (TargetAddr::Domain(name, port), host_end + 1)
    } else {
        (TargetAddr::Ip(SocketAddr::new(IpAddr::V4(ip), port)), uid_end + 1)
    };
    Ok(Some((SocksRequest { version: SocksVersion::V4, command: SocksCommand::Connect, target, auth }, used)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socks::{Outcome, SocksConfig, SocksServer, MAX_PENDING};
    use proptest::prelude::*;

    /// A SOCKS4 request (IPv4 target) or SOCKS4a request (host name), as a client sends it.
    fn request(cmd: u8, target: &TargetAddr, user: &[u8]) -> Vec<u8> {
        let mut v = vec![4, cmd];
        v.extend_from_slice(&target.port().to_be_bytes());
        match target {
            TargetAddr::Ip(SocketAddr::V4(a)) => v.extend_from_slice(&a.ip().octets()),
            TargetAddr::Ip(SocketAddr::V6(_)) => panic!("SOCKS4 has no IPv6"),
            TargetAddr::Domain(..) => v.extend_from_slice(&[0, 0, 0, 1]),
        }
        v.extend_from_slice(user);
        v.push(0);
        if let TargetAddr::Domain(h, _) = target {
            v.extend_from_slice(h.as_bytes());
            v.push(0);
        }
        v
    }

    fn server() -> SocksServer {
        SocksServer::new(SocksConfig::default())
    }

    fn one_shot(data: &[u8]) -> Result<(SocksRequest, usize), SocksError> {
        let st = server().step(data)?;
        assert!(st.reply.is_empty(), "SOCKS4 has no greeting reply");
        match st.outcome {
            Outcome::Done(r) => Ok((r, st.consumed)),
            Outcome::NeedMore => panic!("NeedMore for {data:02x?}"),
        }
    }

    /// Every proper prefix needs more; the whole gives the request.
    fn byte_by_byte(data: &[u8]) -> SocksRequest {
        for n in 0..data.len() {
            let st = server().step(&data[..n]).unwrap_or_else(|e| panic!("prefix {n}: {e}"));
            assert_eq!(st.outcome, Outcome::NeedMore, "prefix {n}");
            assert_eq!(st.consumed, 0);
        }
        let (r, used) = one_shot(data).unwrap();
        assert_eq!(used, data.len());
        r
    }

    const REJECT: [u8; 8] = [0, 0x5b, 0, 0, 0, 0, 0, 0];

    #[test]
    fn socks4_ipv4_and_socks4a_names() {
        let t = TargetAddr::Ip("127.0.0.1:8000".parse().unwrap());
        let r = byte_by_byte(&request(1, &t, b""));
        assert_eq!(r, SocksRequest { version: SocksVersion::V4, command: SocksCommand::Connect, target: t.clone(), auth: SocksAuth::NoAuth });
        let r = byte_by_byte(&request(1, &t, b"alice"));
        assert_eq!(r.auth, SocksAuth::UserId(b"alice".to_vec()));
        assert!(!format!("{:?}", r.auth).contains("alice"), "Debug hides the user id");
        let d = TargetAddr::Domain("localhost".into(), 80);
        let r = byte_by_byte(&request(1, &d, b"bob"));
        assert_eq!(r.target, d);
        assert_eq!(r.version, SocksVersion::V4);
        // Longest fields.
        let d = TargetAddr::Domain("h".repeat(MAX_HOST), 1);
        let r = byte_by_byte(&request(1, &d, &[0xff; MAX_USER_ID]));
        assert_eq!(r.target, d);
        assert!(request(1, &d, &[0xff; MAX_USER_ID]).len() <= MAX_PENDING);
    }

    #[test]
    fn data_after_the_request_is_not_consumed() {
        let mut data = request(1, &TargetAddr::Domain("example.com".into(), 80), b"u");
        let n = data.len();
        data.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(one_shot(&data).unwrap().1, n);
        let mut data = request(1, &TargetAddr::Ip("1.2.3.4:5".parse().unwrap()), b"");
        data.extend_from_slice(b"\0\0\0");
        assert_eq!(one_shot(&data).unwrap().1, 9);
    }

    #[test]
    fn errors_get_the_8_byte_rejection() {
        let t = TargetAddr::Ip("1.2.3.4:80".parse().unwrap());
        let cases: Vec<(Vec<u8>, SocksError)> = vec![
            (request(2, &t, b""), SocksError::Socks4Command(2)),
            (vec![4, 0xf0], SocksError::Socks4Command(0xf0)),
            (vec![4, 1, 0, 80, 0, 0, 0, 0, 0], SocksError::Socks4ZeroAddress),
            ([&[4u8, 1, 0, 80, 1, 2, 3, 4][..], &[b'u'; MAX_USER_ID + 1]].concat(), SocksError::Socks4UserIdTooLong),
            ([&[4u8, 1, 0, 80, 0, 0, 0, 1, 0][..], &[b'h'; MAX_HOST + 1]].concat(), SocksError::Socks4HostTooLong),
            (vec![4, 1, 0, 80, 0, 0, 0, 1, 0, 0], SocksError::Socks4EmptyHost),
            (vec![4, 1, 0, 80, 0, 0, 0, 1, 0, b'a', b' '], SocksError::Socks4InvalidHost),
            (vec![4, 1, 0, 80, 0, 0, 0, 1, 0, 0xc3, 0xa9, 0], SocksError::Socks4InvalidHost),
        ];
        for (data, want) in cases {
            let e = server().step(&data).unwrap_err();
            assert_eq!(e, want, "{data:02x?}");
            assert_eq!(e.reply(), Some(REJECT.to_vec()), "{want}");
            assert!(e.to_string().contains("SOCKS4"), "{e}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(encode_reply(true, None), [0, 0x5a, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_reply(false, Some("[::1]:80".parse().unwrap())), REJECT);
        assert_eq!(encode_reply(true, Some("1.2.3.4:258".parse().unwrap())), [0, 0x5a, 1, 2, 1, 2, 3, 4]);
        let r = SocksRequest {
            version: SocksVersion::V4,
            command: SocksCommand::Connect,
            target: TargetAddr::Domain("a".into(), 1),
            auth: SocksAuth::NoAuth,
        };
        assert_eq!(r.reply(crate::socks::ReplyCode::Succeeded, None), [0, 0x5a, 0, 0, 0, 0, 0, 0]);
        for code in [crate::socks::ReplyCode::NotAllowed, crate::socks::ReplyCode::HostUnreachable, crate::socks::ReplyCode::GeneralFailure] {
            assert_eq!(r.reply(code, None), REJECT);
        }
    }

    fn target() -> impl Strategy<Value = TargetAddr> {
        prop_oneof![
            (any::<[u8; 4]>().prop_filter("not 0.0.0.x", |a| a[..3] != [0, 0, 0]), any::<u16>())
                .prop_map(|(a, p)| TargetAddr::Ip(SocketAddr::from((a, p)))),
            ("[!-~]{1,255}", any::<u16>()).prop_map(|(h, p)| TargetAddr::Domain(h, p)),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(t in target(), user in prop::collection::vec(1u8..=255, 0..=MAX_USER_ID), extra in prop::collection::vec(any::<u8>(), 0..40)) {
            let req = request(1, &t, &user);
            let mut data = req.clone();
            data.extend(&extra);
            let (r, used) = one_shot(&data).unwrap();
            prop_assert_eq!(used, req.len());
            prop_assert_eq!(&r.target, &t);
            prop_assert_eq!(r.version, SocksVersion::V4);
            let want = if user.is_empty() { SocksAuth::NoAuth } else { SocksAuth::UserId(user.clone()) };
            prop_assert_eq!(r.auth, want);
        }

        #[test]
        fn byte_by_byte_feeding(t in target(), user in prop::collection::vec(1u8..=255, 0..20)) {
            let req = request(1, &t, &user);
            let mut s = server();
            let mut buf = Vec::new();
            let mut done = None;
            for (i, &b) in req.iter().enumerate() {
                buf.push(b);
                let st = s.step(&buf).unwrap();
                buf.drain(..st.consumed);
                if let Outcome::Done(r) = st.outcome {
                    prop_assert_eq!(i + 1, req.len());
                    done = Some(r);
                }
            }
            prop_assert_eq!(done.map(|r| r.target), Some(t));
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..700)) {
            let mut all = vec![4u8];
            all.extend(data);
            match server().step(&all) {
                Ok(st) => {
                    prop_assert!(st.consumed <= all.len());
                    if st.outcome == Outcome::NeedMore {
                        prop_assert!(all.len() - st.consumed <= MAX_PENDING);
                    }
                }
                Err(e) => {
                    // Every SOCKS4 error is answered with the 8-byte rejection.
                    prop_assert_eq!(e.reply(), Some(REJECT.to_vec()));
                }
            }
        }

        #[test]
        fn one_mutated_byte_never_panics(t in target(), user in prop::collection::vec(1u8..=255, 0..20), idx in any::<prop::sample::Index>(), val in any::<u8>()) {
            let mut req = request(1, &t, &user);
            let i = idx.index(req.len());
            req[i] = val;
            for n in 0..=req.len() {
                if let Err(e) = server().step(&req[..n]) {
                    let _ = e.reply();
                    let _ = e.to_string();
                }
            }
        }
    }
}
