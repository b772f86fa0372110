//! A listener whose `accept` fails (here: the process is out of file descriptors) counts every
//! failure (`accept_errors`), logs it at most once a minute, keeps going, and accepts again once
//! descriptors are free. Its own test binary: it lowers this process's descriptor limit.

use std::sync::atomic::Ordering;
use std::time::Duration;

use allium_net::accept::accept_forever;
use allium_net::limits::conn::ConnLimiter;
use allium_net::limits::counters::LIMITS;
use allium_net::log_capture::LogCapture;
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(30);

/// Waits (bounded) until the accept-error counter has grown by `n`.
async fn errors_reach(before: u64, n: u64) {
    tokio::time::timeout(DEADLINE, async {
        while LIMITS.accept_errors.load(Ordering::Relaxed) < before + n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("accept errors were not counted");
}

#[tokio::test(flavor = "current_thread")]
async fn accept_errors_are_counted_logged_once_and_survived() {
    let log = LogCapture::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A connection the kernel completes and queues before the node runs out of descriptors.
    let _waiting = TcpStream::connect(addr).await.unwrap();

    // No descriptor left: every accept fails with EMFILE.
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    rlimit::Resource::NOFILE.set(open.saturating_sub(2), hard).unwrap();

    let before = LIMITS.accept_errors.load(Ordering::Relaxed);
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(accept_forever(listener, "test", ConnLimiter::new(16, 16), move |_sock, _permit| {
        let _ = accepted_tx.send(());
        async { Ok::<(), std::io::Error>(()) }
    }));
    errors_reach(before, 3).await;
    rlimit::Resource::NOFILE.set(soft, hard).unwrap();

    tokio::time::timeout(DEADLINE, accepted.recv()).await.expect("the listener never accepted again").expect("a connection");
    let text = log.text();
    assert_eq!(text.matches("test accept failed").count(), 1, "logged once for 3 or more failures:\n{text}");
    server.abort();
}
