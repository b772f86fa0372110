//! Readiness checks: a port that answers, the authorities' consensus, and a probe stream
//! through the whole network.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// What the probe server writes to every connection.
pub const PROBE_LINE: &[u8] = b"allium testnet probe\n";

/// True when something accepts TCP connections on `addr`.
pub async fn port_answers(addr: SocketAddr) -> bool {
    matches!(timeout(Duration::from_secs(1), TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// A tiny TCP server that writes [`PROBE_LINE`] on each accept: on 127.0.0.1 at an ephemeral
/// port, and on [::1] at the same port when that is free, because an exit resolving `localhost`
/// may get either address.
pub struct ProbeServer {
    pub port: u16,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ProbeServer {
    pub async fn start() -> std::io::Result<ProbeServer> {
        let v4 = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = v4.local_addr()?.port();
        let mut tasks = vec![tokio::spawn(serve_probe(v4))];
        if let Ok(v6) = TcpListener::bind(("::1", port)).await {
            tasks.push(tokio::spawn(serve_probe(v6)));
        }
        Ok(ProbeServer { port, tasks })
    }
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        // Dropping a JoinHandle only detaches the task: abort it.
        self.tasks.iter().for_each(|t| t.abort());
    }
}

async fn serve_probe(listener: TcpListener) {
    while let Ok((mut sock, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = sock.write_all(PROBE_LINE).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// How one probe attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// SOCKS reply 0x00 and the probe line came back through the circuit.
    Crossed,
    /// SOCKS reply 0x02: the exit answered that its policy refuses the destination. The stream
    /// still crossed the network to an exit and back.
    RefusedByExit,
    /// Any other SOCKS reply code: not ready yet (no consensus, circuit failed, ...).
    Reply(u8),
    /// The SOCKS conversation failed (connection refused or closed, timeout, garbage).
    Failed(String),
}

/// One SOCKS5 CONNECT to `host:port` through `socks`, with no authentication.
pub async fn socks_probe(socks: SocketAddr, host: &str, port: u16, limit: Duration) -> ProbeOutcome {
    match timeout(limit, socks_probe_inner(socks, host, port)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => ProbeOutcome::Failed(e.to_string()),
        Err(_) => ProbeOutcome::Failed(format!("no answer within {} s", limit.as_secs())),
    }
}

async fn socks_probe_inner(socks: SocketAddr, host: &str, port: u16) -> std::io::Result<ProbeOutcome> {
    use std::io::{Error, ErrorKind};
    let mut s = match socks_connect(socks, host, port).await? {
        Ok(s) => s,
        Err(0x02) => return Ok(ProbeOutcome::RefusedByExit),
        Err(code) => return Ok(ProbeOutcome::Reply(code)),
    };
    let mut line = vec![0u8; PROBE_LINE.len()];
    s.read_exact(&mut line).await?;
    if line != PROBE_LINE {
        return Err(Error::new(ErrorKind::InvalidData, "the probe stream returned different bytes"));
    }
    Ok(ProbeOutcome::Crossed)
}

/// One SOCKS5 CONNECT to `host:port` (a name, resolved at the far end): the connected stream
/// once the proxy answered success, `Err(code)` for any other reply code.
pub async fn socks_connect(socks: SocketAddr, host: &str, port: u16) -> std::io::Result<Result<TcpStream, u8>> {
    use std::io::{Error, ErrorKind};
    let mut s = TcpStream::connect(socks).await?;
    s.write_all(&[0x05, 0x01, 0x00]).await?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await?;
    if choice != [0x05, 0x00] {
        return Err(Error::new(ErrorKind::InvalidData, format!("SOCKS method reply {choice:02x?}")));
    }
    let mut req = vec![0x05, 0x01, 0x00, 0x03, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[0] != 0x05 {
        return Err(Error::new(ErrorKind::InvalidData, format!("SOCKS reply version {:#04x}", head[0])));
    }
    if head[1] != 0x00 {
        return Ok(Err(head[1]));
    }
    // Skip the bound address.
    let addr_len = match head[3] {
        0x01 => 4,
        0x04 => 16,
        0x03 => {
            let mut n = [0u8; 1];
            s.read_exact(&mut n).await?;
            n[0] as usize
        }
        t => return Err(Error::new(ErrorKind::InvalidData, format!("SOCKS reply address type {t:#04x}"))),
    };
    let mut skip = vec![0u8; addr_len + 2];
    s.read_exact(&mut skip).await?;
    Ok(Ok(s))
}

/// One SOCKS5 CONNECT to an onion service's port through `socks`: `Crossed` once the service
/// answered (the client fetched its descriptor, met it at a rendezvous point, and the service
/// connected to its target), else why not.
pub async fn onion_probe(socks: SocketAddr, host: &str, port: u16, limit: Duration) -> ProbeOutcome {
    match timeout(limit, socks_connect(socks, host, port)).await {
        Ok(Ok(Ok(_))) => ProbeOutcome::Crossed,
        Ok(Ok(Err(code))) => ProbeOutcome::Reply(code),
        Ok(Err(e)) => ProbeOutcome::Failed(e.to_string()),
        Err(_) => ProbeOutcome::Failed(format!("no answer within {} s", limit.as_secs())),
    }
}

/// `GET /allium/v1/consensus` from an authority's dir port: `Ok(Some(body))` on 200, `Ok(None)`
/// on 404 (no consensus yet), `Err` otherwise.
pub async fn fetch_consensus(dir_port: SocketAddr) -> Result<Option<String>, String> {
    let fut = async {
        let mut s = TcpStream::connect(dir_port).await.map_err(|e| e.to_string())?;
        // HTTP/1.0: the server closes after the response and sends no chunked encoding.
        let req = format!("GET /allium/v1/consensus HTTP/1.0\r\nHost: {dir_port}\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let buf = timeout(Duration::from_secs(5), fut).await.map_err(|_| "timed out".to_string())??;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP header end")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head.split_whitespace().nth(1).ok_or("no HTTP status")?;
    match status {
        "200" => Ok(Some(String::from_utf8_lossy(&buf[split + 4..]).into_owned())),
        "404" => Ok(None),
        other => Err(format!("HTTP status {other}")),
    }
}

/// Which of `fingerprints` (64 hex digits each) the consensus lists. A consensus lists a relay
/// with a line `relay <nickname> <fingerprint>` (see `allium_proto::doc`); only those lines
/// count, so fingerprints elsewhere (authority lists, families, signatures) are not mistaken
/// for listed relays.
pub fn listed(consensus: &str, fingerprints: &[String]) -> Vec<bool> {
    // Readiness only: the nodes themselves verify the signatures.
    let relays: std::collections::HashSet<String> = match allium_proto::doc::Consensus::parse(consensus) {
        Ok(c) => c.dangerously_assume_valid().relays().iter().map(|r| r.identity.fingerprint()).collect(),
        Err(_) => Default::default(),
    };
    fingerprints.iter().map(|fp| relays.contains(&fp.to_ascii_uppercase())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_reads_the_consensus_entries() {
        use allium_proto::doc::{Consensus, ConsensusRelay, Lifetime};
        let lt = Lifetime::new(100, 110, 130).unwrap();
        let c = Consensus::new(lt, vec![allium_proto::ids::RelayId([5; 32])], vec![ConsensusRelay::synthetic(1)]);
        let listed_fp = ConsensusRelay::synthetic(1).identity.fingerprint();
        let other = ConsensusRelay::synthetic(2).identity.fingerprint();
        assert_eq!(listed(&c.encode(), &[listed_fp.to_lowercase(), other]), [true, false]);
        assert_eq!(listed("garbage", &[listed_fp]), [false]);
    }

    #[tokio::test]
    async fn probe_server_answers() {
        let server = ProbeServer::start().await.unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, PROBE_LINE);
    }
}
