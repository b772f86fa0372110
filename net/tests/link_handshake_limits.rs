//! THREATS A24 at the link handshake: a peer that connects and stalls its handshake is
//! disconnected once `limits.link_handshake_timeout_secs` passes (and counted), and one that
//! announces a handshake message longer than the protocol allows is refused before the relay
//! reads or allocates it. Real loopback TCP.

use std::sync::atomic::Ordering;
use std::time::Duration;

use allium_net::limits::counters::LIMITS;
use allium_net::link::{self, LinkError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound on any wait here (the test fails, never hangs).
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a24_a_stalled_link_handshake_is_closed_at_the_timeout_and_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (sock, _) = listener.accept().await.unwrap();
    let before = LIMITS.link_handshake_timeouts.load(Ordering::Relaxed);
    let secret = [7u8; 32];
    let answering = tokio::spawn(async move { link::accept_within(sock, &secret, Duration::from_millis(300)).await });
    // Three bytes of the 8-byte preamble, then nothing.
    peer.write_all(b"ALL").await.unwrap();
    let r = tokio::time::timeout(DEADLINE, answering).await.expect("the handshake never timed out").unwrap();
    assert!(matches!(r, Err(LinkError::Timeout)), "{:?}", r.err());
    assert!(LIMITS.link_handshake_timeouts.load(Ordering::Relaxed) > before, "counted");
    // The relay's end is gone: the stalled peer reads end of file (or a reset).
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, peer.read(&mut buf)).await.expect("the connection stayed open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn a24_an_oversized_handshake_message_is_refused_before_its_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (sock, _) = listener.accept().await.unwrap();
    let answering = tokio::spawn(async move { link::accept_within(sock, &[7u8; 32], DEADLINE).await });
    // A valid anonymous preamble, then a frame announcing 60,000 bytes and sending none: the
    // relay must answer at once, not wait for (or make room for) the body.
    let mut hello = allium_proto::link::preamble(allium_proto::link::LinkKind::Anonymous).to_vec();
    hello.extend_from_slice(&60_000u16.to_be_bytes());
    peer.write_all(&hello).await.unwrap();
    let r = tokio::time::timeout(DEADLINE, answering).await.expect("waited for a body it should refuse").unwrap();
    match r {
        Err(LinkError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}"),
        other => panic!("an oversized handshake message was not refused: {:?}", other.err()),
    }
}
