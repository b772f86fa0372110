//! What benchmarks send to an authority's directory port: relay descriptors signed by fresh
//! identities, and plain HTTP/1.1 requests from a chosen loopback source address.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use allium_proto::doc::{Protocols, RelayDescriptor};
use allium_proto::ids::RelayId;
use allium_proto::policy::ExitPolicy;

/// A signed descriptor of a relay with a fresh identity at `address`, no exit.
pub fn relay_descriptor(nickname: &str, address: SocketAddr, published: u64) -> String {
    let mut rng = rand::thread_rng();
    let identity = ed25519_dalek::SigningKey::generate(&mut rng);
    let link = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
    let link_key = x25519_dalek::PublicKey::from(&link).to_bytes();
    let onion = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
    let d = RelayDescriptor {
        nickname: nickname.into(),
        identity: RelayId(identity.verifying_key().to_bytes()),
        onion_key: x25519_dalek::PublicKey::from(&onion).to_bytes(),
        link_key,
        link_cert: allium_proto::link::certify_link_key(&identity, &link_key),
        address,
        policy: ExitPolicy::reject_all(),
        family: vec![],
        bandwidth: 1_000_000,
        protocols: Protocols::new().with("Link", 1, 1).with("Relay", 1, 1).with("Ntor", 1, 1),
        published,
        platform: Some("benchmark".into()),
    };
    d.encode_signed(&identity)
}

/// One request (`Connection: close`) from `from` to `to`; the HTTP status and the body, or
/// what went wrong.
pub async fn request(from: IpAddr, to: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(from, 0)).map_err(|e| format!("bind: {}", e.kind()))?;
    let mut s = sock.connect(to).await.map_err(|e| format!("connect: {}", e.kind()))?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.map_err(|e| format!("write: {}", e.kind()))?;
    // The server may answer (and close) before taking the whole body: what it said counts.
    let _ = s.write_all(body).await;
    let mut resp = Vec::new();
    if let Err(e) = s.read_to_end(&mut resp).await {
        if resp.is_empty() {
            return Err(format!("read: {}", e.kind()));
        }
    }
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(resp.len(), |i| i + 4);
    let status = String::from_utf8_lossy(&resp[..split]).split_whitespace().nth(1).and_then(|c| c.parse().ok());
    status.map(|s| (s, resp[split..].to_vec())).ok_or_else(|| format!("no HTTP status in {} bytes", resp.len()))
}
