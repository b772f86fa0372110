//! A link's idle timeout is asked again at each idle check (`Channel::close_when_idle_by`): a
//! relay that dialled before this relay's consensus listed it starts with a client's short
//! timeout, and keeps its link once a newer consensus lists it (issue 18 point 2: links between
//! relays are kept for reuse). Real links over loopback TCP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use allium_net::channel::Channel;
use allium_net::limits::memquota::MemQuota;
use allium_net::link;
use allium_net::pool::ChannelPool;
use tokio::sync::mpsc;

mod support;

/// Timeouts small enough for a test: the unlisted link would close at its second check
/// (checked every 0.1 s), the listed one, checked each second, at its fourth.
const UNLISTED: Duration = Duration::from_millis(200);
const LISTED: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_link_listed_after_it_opened_keeps_the_listed_timeout() {
    let (relay, listener, peer) = support::listening_relay(6).await;
    let (asked_tx, mut asked) = mpsc::unbounded_channel::<(usize, bool)>();
    let (chan_tx, chan_rx) = tokio::sync::oneshot::channel::<Channel>();
    let secret = relay.link.to_bytes();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let l = link::accept(s, &secret).await.expect("the link handshake");
        let chan = Channel::spawn(l, None, &MemQuota::default_budget());
        // The peer is unlisted when the link opens; from the second check on, a newer
        // consensus lists it.
        let checks = AtomicUsize::new(0);
        let closing = chan.clone();
        chan.close_when_idle_by(move || {
            let n = checks.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = asked_tx.send((n, closing.is_closed()));
            if n == 1 { UNLISTED } else { LISTED }
        });
        let _ = chan_tx.send(chan);
    });
    let pool = ChannelPool::new("127.0.0.1".parse().unwrap(), None);
    let _ours = pool.get(&peer).await.expect("a link");
    let inbound = chan_rx.await.expect("the inbound channel");

    // A third check comes, a second after the moment the unlisted timeout would have closed
    // the link, and finds it open: the timeout was asked again.
    for want in 1..=3 {
        let got = tokio::time::timeout(Duration::from_secs(30), asked.recv()).await;
        assert_eq!(got, Ok(Some((want, false))), "idle check {want} on an open link");
    }

    // It is still an idle timeout: with no circuit the link closes in the end.
    let closed = tokio::time::timeout(Duration::from_secs(30), inbound.closed()).await;
    assert!(closed.is_ok(), "an idle listed link never closed");
}
