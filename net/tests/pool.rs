//! The link pool over real loopback TCP: concurrent requests for one relay share one link
//! (one dial at a time per peer), as circuits built together through one guard must.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use allium_net::link;
use allium_net::pool::ChannelPool;

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_relay_share_one_link() {
    let (relay, listener, peer) = support::listening_relay(3).await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let (count, secret) = (accepted.clone(), relay.link.to_bytes());
    tokio::spawn(async move {
        let mut links = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if let Ok(l) = link::accept(s, &secret).await {
                links.push(l); // kept open
            }
        }
    });
    let pool = Arc::new(ChannelPool::new("127.0.0.1".parse().unwrap(), None));
    let gets: Vec<_> = (0..8)
        .map(|_| {
            let (pool, peer) = (pool.clone(), peer.clone());
            tokio::spawn(async move { pool.get(&peer).await.map(|c| c.peer) })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap().expect("a link"), Some(relay.relay_id()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "8 concurrent requests opened more than one link");
    // A later request reuses it too.
    pool.get(&peer).await.expect("a link");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
