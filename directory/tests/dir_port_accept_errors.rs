//! The authority's directory port when `accept` fails (here: the process is out of file
//! descriptors): each failure is counted (`accept_errors`) and logged at most once a minute,
//! and the port keeps going and serves the connection waiting once descriptors are free. Its
//! own test binary: it lowers this process's descriptor limit.

use std::sync::atomic::Ordering;
use std::time::Duration;

use allium_directory::access_log::DirPort;
use allium_net::limits::conn::ConnLimiter;
use allium_net::limits::counters::LIMITS;
use allium_net::log_capture::LogCapture;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "current_thread")]
async fn directory_port_accept_errors_are_counted_logged_and_survived() {
    let log = LogCapture::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).with_max_level(tracing::Level::WARN).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A request the kernel queues before the port runs out of descriptors.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"GET /x HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await.unwrap();

    // No descriptor left: every accept fails with EMFILE.
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    rlimit::Resource::NOFILE.set(open.saturating_sub(2), hard).unwrap();

    let before = LIMITS.accept_errors.load(Ordering::Relaxed);
    let port = DirPort { listener, limiter: ConnLimiter::new(16, 16), idle: Duration::from_secs(15), header_timeout: Duration::from_secs(10) };
    let app = axum::Router::new().route("/x", get(|| async { "served\n" }));
    let server = tokio::spawn(port.serve(app));

    // The first failure is logged (and counted before that).
    tokio::time::timeout(DEADLINE, log.written()).await.expect("an accept error was not logged");
    rlimit::Resource::NOFILE.set(soft, hard).unwrap();
    assert!(LIMITS.accept_errors.load(Ordering::Relaxed) > before, "counted");

    // The port kept going: the waiting request is answered.
    let mut resp = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut resp)).await.expect("never answered").unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("served\n"), "{resp}");

    let failures = LIMITS.accept_errors.load(Ordering::Relaxed) - before;
    let text = log.text();
    assert_eq!(text.matches("directory port accept failed").count(), 1, "logged once for {failures} failures:\n{text}");
    server.abort();
}
