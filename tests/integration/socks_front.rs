//! The client's application front ends on a real test network: SOCKS4, SOCKS4a, SOCKS5 to an
//! IPv6 literal, HTTP CONNECT and the SOCKS5 RESOLVE extension all work, and a malformed request
//! in each protocol gets that protocol's error (never a hang).
//!
//! No DNS leaves the machine: destinations are IP literals and `localhost` only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::http::{pseudo_random, FileServer};
use crate::support::testnet::Testnet;

const TIMEOUT: Duration = Duration::from_secs(60);

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Everything the proxy sends until it closes (or the timeout: then the test fails, a hang).
fn read_all(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    if let Err(e) = s.read_to_end(&mut got) {
        panic!("{what}: no close within {} s after {got:02x?} ({e})", TIMEOUT.as_secs());
    }
    got
}

/// `GET path` on an open tunnel; the body of a 200 response.
fn get(mut s: TcpStream, path: &str, what: &str) -> Vec<u8> {
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
    let resp = read_all(&mut s, what);
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("{what}: no HTTP head in {} bytes", resp.len()));
    let head = String::from_utf8_lossy(&resp[..split]);
    assert!(head.starts_with("HTTP/1.0 200"), "{what}: {head}");
    resp[split + 4..].to_vec()
}

/// A SOCKS4 (IPv4 `host`) or SOCKS4a (name) CONNECT; the reply's 8 bytes and the stream.
fn socks4(proxy: SocketAddr, host: &str, port: u16, user: &[u8]) -> ([u8; 8], TcpStream) {
    let mut req = vec![4, 1];
    req.extend_from_slice(&port.to_be_bytes());
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => req.extend_from_slice(&ip.octets()),
        Err(_) => req.extend_from_slice(&[0, 0, 0, 1]),
    }
    req.extend_from_slice(user);
    req.push(0);
    if host.parse::<std::net::Ipv4Addr>().is_err() {
        req.extend_from_slice(host.as_bytes());
        req.push(0);
    }
    socks4_raw(proxy, &req)
}

fn socks4_raw(proxy: SocketAddr, req: &[u8]) -> ([u8; 8], TcpStream) {
    let mut s = connect(proxy);
    s.write_all(req).unwrap();
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).unwrap_or_else(|e| panic!("SOCKS4 reply to {req:02x?}: {e}"));
    (reply, s)
}

/// A SOCKS5 exchange without authentication: greeting, then `request`; the whole answer after
/// the method choice, read until the proxy closes or `want` bytes arrived.
fn socks5_raw(proxy: SocketAddr, request: &[u8], want: usize) -> (Vec<u8>, TcpStream) {
    let mut s = connect(proxy);
    s.write_all(&[5, 1, 0]).unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).unwrap();
    assert_eq!(choice, [5, 0]);
    s.write_all(request).unwrap();
    let mut got = vec![0u8; want];
    s.read_exact(&mut got).unwrap_or_else(|e| panic!("SOCKS5 reply to {request:02x?}: {e}"));
    (got, s)
}

/// A SOCKS5 RESOLVE (command 0xF0) of `name`; the 10- or 22-byte reply.
fn resolve(proxy: SocketAddr, name: &str) -> Vec<u8> {
    let mut req = vec![5, 0xf0, 0, 3, name.len() as u8];
    req.extend_from_slice(name.as_bytes());
    req.extend_from_slice(&[0, 0]);
    let (head, mut s) = socks5_raw(proxy, &req, 4);
    let rest = read_all(&mut s, "RESOLVE");
    [head, rest].concat()
}

/// An HTTP CONNECT request head; the response head and the tunnel.
fn http_connect(proxy: SocketAddr, head: &str) -> (String, TcpStream) {
    let mut s = connect(proxy);
    s.write_all(head.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let mut b = [0u8; 1];
    while !resp.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => resp.push(b[0]),
            Ok(_) => break,
            Err(e) => panic!("HTTP CONNECT {head:?}: no answer ({e}) after {:?}", String::from_utf8_lossy(&resp)),
        }
    }
    (String::from_utf8_lossy(&resp).into_owned(), s)
}

/// A port nothing listens on (bound and released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn env_port(net: &Testnet, key: &str) -> u16 {
    let env = std::fs::read_to_string(net.dir.join("testnet.env")).unwrap();
    env.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("testnet.env has no {key}:\n{env}"))
        .parse()
        .unwrap()
}

#[test]
fn every_front_end_fetches_the_same_file_and_malformed_requests_get_their_errors() {
    let file = pseudo_random(300_000, 41);
    let v4 = FileServer::start(vec![("/f", file.clone())]);
    let v6 = FileServer::start_on("[::1]:0", vec![("/f", file.clone())]);
    let net = Testnet::start(&["--http-connect-port", "0"]);
    let http_proxy = SocketAddr::new(net.socks.ip(), env_port(&net, "HTTP_CONNECT_PORT"));
    let port = v4.addr().port();

    // SOCKS4a with a host name (resolved by the exit) and a user id.
    let (reply, s) = socks4(net.socks, "localhost", port, b"alice");
    assert_eq!(reply[..2], [0, 0x5a], "SOCKS4a reply {reply:02x?}\n{}", net.log_tail(20));
    assert_eq!(get(s, "/f", "SOCKS4a"), file);

    // SOCKS4 to an IPv4 address.
    let (reply, s) = socks4(net.socks, "127.0.0.1", port, b"");
    assert_eq!(reply[..2], [0, 0x5a], "SOCKS4 reply {reply:02x?}");
    assert_eq!(get(s, "/f", "SOCKS4"), file);

    // SOCKS5 to an IPv6 literal.
    let mut req = vec![5, 1, 0, 4];
    req.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    req.extend_from_slice(&v6.addr().port().to_be_bytes());
    let (reply, s) = socks5_raw(net.socks, &req, 10);
    assert_eq!(reply[..2], [5, 0], "SOCKS5 [::1] reply {reply:02x?}");
    assert_eq!(get(s, "/f", "SOCKS5 [::1]"), file);
    assert!(v6.peers().iter().all(|p| p.is_ipv6()) && !v6.peers().is_empty());

    // HTTP CONNECT, with a Proxy-Authorization header (an isolation credential).
    let (head, s) = http_connect(http_proxy, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nProxy-Authorization: Basic Ym9iOng=\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 200 "), "HTTP CONNECT answered {head:?}");
    assert_eq!(get(s, "/f", "HTTP CONNECT"), file);
    let (head, s) = http_connect(http_proxy, &format!("CONNECT localhost:{port} HTTP/1.0\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 200 "), "HTTP CONNECT to a name answered {head:?}");
    assert_eq!(get(s, "/f", "HTTP CONNECT localhost"), file);

    // RESOLVE through the exit: localhost is 127.0.0.1 in a test network.
    assert_eq!(resolve(net.socks, "localhost"), [5, 0, 0, 1, 127, 0, 0, 1, 0, 0]);
    // An IP literal is its own answer; an onion name never leaves the client.
    let mut req = vec![5, 0xf0, 0, 1, 10, 1, 2, 3, 0, 0];
    assert_eq!(socks5_raw(net.socks, &req, 10).0, [5, 0, 0, 1, 10, 1, 2, 3, 0, 0]);
    assert_eq!(resolve(net.socks, "abc.onion")[..2], [5, 0xf6], "not an onion address: Tor's extended code F6");
    // A mistyped .allium address fails at once with F6, before any circuit; so does a valid
    // address with a checksum for another version.
    let good = allium_proto::hs::OnionAddress::from_identity(ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key().to_bytes()).unwrap().to_host();
    let c = good.as_bytes()[3];
    let typo = format!("{}{}{}", &good[..3], if c == b'a' { 'b' } else { 'a' }, &good[4..]);
    let connect_to = |host: &str| {
        let mut req = vec![5, 1, 0, 3, host.len() as u8];
        req.extend_from_slice(host.as_bytes());
        req.extend_from_slice(&80u16.to_be_bytes());
        socks5_raw(net.socks, &req, 10).0
    };
    assert_eq!(connect_to(&typo)[..2], [5, 0xf6], "mistyped onion address");
    assert_eq!(resolve(net.socks, &typo)[..2], [5, 0xf6], "RESOLVE of a mistyped onion address");
    // RESOLVE_PTR is not supported: 7.
    req[1] = 0xf1;
    assert_eq!(socks5_raw(net.socks, &req, 10).0[..2], [5, 7]);

    // Failures through the network get each protocol's code.
    let closed = closed_port();
    let (reply, mut s) = socks4(net.socks, "127.0.0.1", closed, b"");
    assert_eq!(reply, [0, 0x5b, 0, 0, 0, 0, 0, 0], "SOCKS4 to a closed port");
    assert!(read_all(&mut s, "SOCKS4 refused").is_empty());
    let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&closed.to_be_bytes());
    assert_eq!(socks5_raw(net.socks, &req, 10).0[..2], [5, 5], "SOCKS5 to a closed port: connection refused");
    let (head, _) = http_connect(http_proxy, &format!("CONNECT 127.0.0.1:{closed} HTTP/1.1\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 502 "), "HTTP CONNECT to a closed port answered {head:?}");
    let (head, _) = http_connect(http_proxy, "CONNECT 127.0.0.1:0 HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 403 "), "HTTP CONNECT to port 0 answered {head:?}");

    // Malformed requests: SOCKS4 BIND, SOCKS4a with an empty host, SOCKS5 unknown address type,
    // HTTP with another method, and bytes that are not HTTP.
    let (reply, mut s) = socks4_raw(net.socks, &[4, 2, 0, 80, 127, 0, 0, 1, 0]);
    assert_eq!(reply, [0, 0x5b, 0, 0, 0, 0, 0, 0], "SOCKS4 BIND");
    assert!(read_all(&mut s, "SOCKS4 BIND").is_empty());
    let (reply, _) = socks4_raw(net.socks, &[4, 1, 0, 80, 0, 0, 0, 1, 0, 0]);
    assert_eq!(reply, [0, 0x5b, 0, 0, 0, 0, 0, 0], "SOCKS4a empty host");
    let (reply, mut s) = socks5_raw(net.socks, &[5, 1, 0, 9, 1, 2, 3, 4, 0, 80], 10);
    assert_eq!(reply[..2], [5, 8], "SOCKS5 address type 9");
    assert!(read_all(&mut s, "SOCKS5 address type 9").is_empty());
    let (head, mut s) = http_connect(http_proxy, "GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405 "), "HTTP GET answered {head:?}");
    assert!(read_all(&mut s, "HTTP GET").is_empty());
    let (head, _) = http_connect(http_proxy, "\x05\x01\x00");
    assert!(head.starts_with("HTTP/1.1 400 "), "SOCKS bytes on the HTTP port answered {head:?}");
    let (head, _) = http_connect(http_proxy, "CONNECT nohost HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400 "), "CONNECT without a port answered {head:?}");

    // Still serving after all that.
    let (reply, s) = socks4(net.socks, "localhost", port, b"");
    assert_eq!(reply[..2], [0, 0x5a]);
    assert_eq!(get(s, "/f", "SOCKS4a again"), file);
}
