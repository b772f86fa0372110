//! Link setup: TCP plus a Noise handshake (see `allium_proto::link` for the bytes).
//!
//! [`connect`] dials a relay whose link key and identity come from the consensus, so a process
//! that does not hold that relay's link key cannot complete the handshake (an impostor fails).
//! Clients dial with `Noise_NK` and present nothing; relays dial with `Noise_XK` and prove their
//! identity with a link-key certificate. [`accept`] answers either kind.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use allium_proto::ids::RelayId;
use allium_proto::link::{self, Hello, InitiatorCert, LinkKind, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::limits::conn::ConnPermit;
use crate::limits::counters::{LimitCounters, LIMITS};

/// How long a whole link handshake may take: every dial, and every answer unless the relay's
/// `limits.link_handshake_timeout_secs` says otherwise ([`accept_within`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a link could not be set up. `Peer*` variants are the other side's fault.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("link handshake timed out")]
    Timeout,
    #[error("peer failed the Noise handshake (wrong link key, or not an Allium node): {0}")]
    PeerNoise(snow::Error),
    #[error("peer sent a malformed handshake: {0}")]
    PeerMalformed(#[from] allium_proto::reader::DecodeError),
    #[error("no common link protocol version (peer offers {0:?})")]
    PeerIncompatible(Vec<u16>),
    #[error("peer's link-key certificate does not verify")]
    PeerBadCert,
}

/// What the initiator knows about the relay it dials.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub identity: RelayId,
    pub link_key: [u8; 32],
}

/// A relay's credentials for dialling other relays (`Noise_XK`).
pub struct RelayCredentials {
    pub link_secret: [u8; 32],
    pub cert: InitiatorCert,
}

impl RelayCredentials {
    /// A relay's link key and the certificate its identity gives that key.
    pub fn new(keys: &crate::keys::NodeKeys) -> Self {
        let link_public = keys.link_public();
        let sig = link::certify_link_key(&keys.identity, &link_public);
        RelayCredentials { link_secret: keys.link.to_bytes(), cert: InitiatorCert { identity: keys.relay_id(), sig } }
    }
}

/// An established link, before its reactor starts.
pub struct Link {
    pub stream: TcpStream,
    pub transport: Arc<snow::StatelessTransportState>,
    pub version: u16,
    /// The peer's relay identity when it proved one (the dialled relay, or a relay initiator).
    pub peer: Option<RelayId>,
    /// The link key the peer proved it holds (its Noise static key): the dialled key, or a relay
    /// initiator's certified one. With `peer`, what the link is filed under in a pool.
    pub peer_link_key: Option<[u8; 32]>,
    pub initiator: bool,
    /// The peer's IP address (per-address limits are kept under it).
    pub peer_addr: Option<IpAddr>,
    /// The inbound connection's place under the listener's limits, held while the link lives.
    pub permit: Option<ConnPermit>,
}

/// Opens a TCP connection from our own address (so a peer can tell which node connected).
pub async fn tcp_connect(bind_ip: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if bind_ip.is_ipv4() == addr.is_ipv4() {
        sock.bind(SocketAddr::new(bind_ip, 0))?;
    }
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn write_frame(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(msg.len() + 2);
    buf.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    buf.extend_from_slice(msg);
    s.write_all(&buf).await
}

/// Reads one `u16 length | body` handshake frame; one longer than [`link::MAX_HANDSHAKE_MSG`]
/// is refused before its body is read.
pub async fn read_frame<R: AsyncReadExt + Unpin>(s: &mut R, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len > link::MAX_HANDSHAKE_MSG {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a {len}-byte link handshake message")));
    }
    buf.resize(len, 0);
    s.read_exact(buf).await?;
    Ok(())
}

/// Dials a relay and completes the handshake.
pub async fn connect(bind_ip: IpAddr, peer: &PeerInfo, creds: Option<&RelayCredentials>) -> Result<Link, LinkError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connect_inner(bind_ip, peer, creds)).await.map_err(|_| LinkError::Timeout)?
}

/// Test networks with a link delay (`network.dangerous_link_delay_ms`): waits as long as
/// `one_ways` one-way trips of the handshake would take on a network with that latency, so a
/// new link costs what it costs there (the cells after the handshake go through the link
/// writer's timed queue instead).
async fn handshake_latency(one_ways: u32) {
    if let Some(d) = crate::channel::link_delay() {
        tokio::time::sleep(d * one_ways).await;
    }
}

async fn connect_inner(bind_ip: IpAddr, peer: &PeerInfo, creds: Option<&RelayCredentials>) -> Result<Link, LinkError> {
    let mut s = tcp_connect(bind_ip, peer.addr).await?;
    // SYN and SYN-ACK, then the first handshake message on its way.
    handshake_latency(3).await;
    let kind = if creds.is_some() { LinkKind::Relay } else { LinkKind::Anonymous };
    let pattern = if creds.is_some() { link::NOISE_RELAY } else { link::NOISE_ANON };
    let prologue = link::prologue(kind);
    let builder = snow::Builder::new(pattern.parse().expect("valid Noise pattern")).prologue(&prologue).remote_public_key(&peer.link_key);
    let builder = match creds {
        Some(c) => builder.local_private_key(&c.link_secret),
        None => builder,
    };
    let mut hs = builder.build_initiator().map_err(LinkError::PeerNoise)?;
    s.write_all(&link::preamble(kind)).await?;
    let mut out = vec![0u8; link::MAX_HANDSHAKE_MSG];
    let n = hs.write_message(&Hello::ours().encode(), &mut out).map_err(LinkError::PeerNoise)?;
    write_frame(&mut s, &out[..n]).await?;
    let mut frame = Vec::new();
    read_frame(&mut s, &mut frame).await?;
    let mut payload = vec![0u8; link::MAX_HANDSHAKE_MSG];
    let n = hs.read_message(&frame, &mut payload).map_err(LinkError::PeerNoise)?;
    let welcome = Welcome::decode(&payload[..n])?;
    if !link::LINK_VERSIONS.contains(&welcome.version) {
        return Err(LinkError::PeerIncompatible(vec![welcome.version]));
    }
    if let Some(c) = creds {
        let n = hs.write_message(&c.cert.encode(), &mut out).map_err(LinkError::PeerNoise)?;
        write_frame(&mut s, &out[..n]).await?;
    }
    let transport = hs.into_stateless_transport_mode().map_err(LinkError::PeerNoise)?;
    Ok(Link { stream: s, transport: Arc::new(transport), version: welcome.version, peer: Some(peer.identity), peer_link_key: Some(peer.link_key), initiator: true, peer_addr: Some(peer.addr.ip()), permit: None })
}

/// Answers a link handshake on an accepted connection, within [`HANDSHAKE_TIMEOUT`].
pub async fn accept(s: TcpStream, link_secret: &[u8; 32]) -> Result<Link, LinkError> {
    accept_within(s, link_secret, HANDSHAKE_TIMEOUT).await
}

/// [`accept`] within `timeout`: a peer that has not completed its handshake by then is
/// disconnected and counted (`link_handshake_timeouts`; THREATS A24: half-open handshakes
/// would otherwise hold a descriptor each for as long as the peer likes).
pub async fn accept_within(s: TcpStream, link_secret: &[u8; 32], timeout: Duration) -> Result<Link, LinkError> {
    tokio::time::timeout(timeout, accept_inner(s, link_secret)).await.unwrap_or_else(|_| {
        LimitCounters::hit(&LIMITS.link_handshake_timeouts);
        Err(LinkError::Timeout)
    })
}

async fn accept_inner(mut s: TcpStream, link_secret: &[u8; 32]) -> Result<Link, LinkError> {
    s.set_nodelay(true)?;
    let peer_addr = s.peer_addr().ok().map(|a| a.ip());
    let mut pre = [0u8; 8];
    s.read_exact(&mut pre).await?;
    let kind = link::parse_preamble(&pre)?;
    let pattern = if kind == LinkKind::Relay { link::NOISE_RELAY } else { link::NOISE_ANON };
    let prologue = link::prologue(kind);
    let mut hs = snow::Builder::new(pattern.parse().expect("valid Noise pattern"))
        .prologue(&prologue)
        .local_private_key(link_secret)
        .build_responder()
        .map_err(LinkError::PeerNoise)?;
    let mut frame = Vec::new();
    let mut payload = vec![0u8; link::MAX_HANDSHAKE_MSG];
    read_frame(&mut s, &mut frame).await?;
    let n = hs.read_message(&frame, &mut payload).map_err(LinkError::PeerNoise)?;
    let hello = Hello::decode(&payload[..n])?;
    let version = link::negotiate(&hello.versions).ok_or_else(|| LinkError::PeerIncompatible(hello.versions.clone()))?;
    let mut out = vec![0u8; link::MAX_HANDSHAKE_MSG];
    let n = hs.write_message(&Welcome { version, ext: Default::default() }.encode(), &mut out).map_err(LinkError::PeerNoise)?;
    // The answer's way back. (The initiator's last message then travels with its first cells,
    // which the link writer delays.)
    handshake_latency(1).await;
    write_frame(&mut s, &out[..n]).await?;
    let mut peer = None;
    let mut peer_link_key = None;
    if kind == LinkKind::Relay {
        read_frame(&mut s, &mut frame).await?;
        let n = hs.read_message(&frame, &mut payload).map_err(LinkError::PeerNoise)?;
        let cert = InitiatorCert::decode(&payload[..n])?;
        let remote: [u8; 32] = hs.get_remote_static().and_then(|k| k.try_into().ok()).ok_or(LinkError::PeerBadCert)?;
        if !link::verify_link_cert(&cert.identity, &remote, &cert.sig) {
            return Err(LinkError::PeerBadCert);
        }
        peer = Some(cert.identity);
        peer_link_key = Some(remote);
    }
    let transport = hs.into_stateless_transport_mode().map_err(LinkError::PeerNoise)?;
    Ok(Link { stream: s, transport: Arc::new(transport), version, peer, peer_link_key, initiator: false, peer_addr, permit: None })
}
