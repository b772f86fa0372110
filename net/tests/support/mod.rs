//! Shared by the link tests: a relay's keys and its listener on loopback.

use allium_net::keys::NodeKeys;
use allium_net::link::PeerInfo;
use tokio::net::TcpListener;

/// Keys made from `seed` (identity), `seed + 1` (onion) and `seed + 2` (link), a listener on
/// 127.0.0.1, and the peer a client dials to reach it.
pub async fn listening_relay(seed: u8) -> (NodeKeys, TcpListener, PeerInfo) {
    let relay = NodeKeys {
        identity: ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
        onion: x25519_dalek::StaticSecret::from([seed + 1; 32]),
        link: x25519_dalek::StaticSecret::from([seed + 2; 32]),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = PeerInfo { addr: listener.local_addr().unwrap(), identity: relay.relay_id(), link_key: relay.link_public() };
    (relay, listener, peer)
}
