//! A blocking SOCKS5 client (RFC 1928, with RFC 1929 username/password), for talking to the
//! testnet client's proxy.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// Returned instead of a reply code when no valid SOCKS reply arrived (connection refused or
/// closed, timeout, or a malformed answer). Real reply codes are 0x00–0x08.
pub const NO_REPLY: u8 = 0xff;

/// How long to wait for the proxy's answers (a circuit may have to be built first).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens a stream to `host:port` through the SOCKS5 proxy at `socks`. `host` is sent as an IP
/// address if it parses as one, as a domain name otherwise. `user` switches to username/password
/// authentication (which a Tor-like client uses to isolate streams). On failure returns the
/// proxy's reply code, or [`NO_REPLY`].
pub fn socks5_connect(socks: SocketAddr, host: &str, port: u16, user: Option<(&str, &str)>) -> Result<TcpStream, u8> {
    let io = |e: std::io::Error| {
        eprintln!("socks5_connect {host}:{port} via {socks}: {e}");
        NO_REPLY
    };
    let mut s = TcpStream::connect_timeout(&socks, Duration::from_secs(10)).map_err(io)?;
    s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    s.set_nodelay(true).map_err(io)?;

    let method = if user.is_some() { 0x02 } else { 0x00 };
    s.write_all(&[0x05, 0x01, method]).map_err(io)?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).map_err(io)?;
    if choice != [0x05, method] {
        eprintln!("socks5_connect: proxy chose method {choice:02x?}, we offered {method:#04x}");
        return Err(NO_REPLY);
    }
    if let Some((name, pass)) = user {
        assert!(name.len() <= 255 && pass.len() <= 255, "SOCKS5 credentials are at most 255 bytes each");
        let mut auth = vec![0x01, name.len() as u8];
        auth.extend_from_slice(name.as_bytes());
        auth.push(pass.len() as u8);
        auth.extend_from_slice(pass.as_bytes());
        s.write_all(&auth).map_err(io)?;
        let mut status = [0u8; 2];
        s.read_exact(&mut status).map_err(io)?;
        if status[1] != 0x00 {
            eprintln!("socks5_connect: username/password refused ({status:02x?})");
            return Err(NO_REPLY);
        }
    }

    let mut req = vec![0x05, 0x01, 0x00];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            req.push(0x01);
            req.extend_from_slice(&a.octets());
        }
        Ok(IpAddr::V6(a)) => {
            req.push(0x04);
            req.extend_from_slice(&a.octets());
        }
        Err(_) => {
            assert!(host.len() <= 255, "SOCKS5 host names are at most 255 bytes");
            req.push(0x03);
            req.push(host.len() as u8);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).map_err(io)?;

    let mut head = [0u8; 4];
    s.read_exact(&mut head).map_err(io)?;
    if head[0] != 0x05 {
        eprintln!("socks5_connect: reply version {:#04x}", head[0]);
        return Err(NO_REPLY);
    }
    if head[1] != 0x00 {
        return Err(head[1]);
    }
    let addr_len = match head[3] {
        0x01 => 4,
        0x04 => 16,
        0x03 => {
            let mut n = [0u8; 1];
            s.read_exact(&mut n).map_err(io)?;
            n[0] as usize
        }
        t => {
            eprintln!("socks5_connect: reply address type {t:#04x}");
            return Err(NO_REPLY);
        }
    };
    let mut bound = vec![0u8; addr_len + 2];
    s.read_exact(&mut bound).map_err(io)?;
    Ok(s)
}
