//! Accepting TCP connections: one task per connection.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Accepts connections forever, handing each to `handle` in a task of its own; a connection
/// that ends in an error is logged at debug level (it is the peer's business). Accept errors
/// (e.g. out of file descriptors) are logged and retried after a short pause.
pub async fn accept_forever<F, Fut, E>(listener: TcpListener, what: &'static str, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display,
{
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let conn = handle(sock);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("{what} connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("{what} accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
