//! What an operator can ask a running node, locally: its status on the control socket
//! ([`control`]; with [`wait`], once a condition holds) and its metrics over HTTP
//! ([`metrics_http`]). Every role starts both with
//! [`spawn`].

pub mod control;
pub mod metrics_http;
pub mod wait;

use std::path::Path;
use std::sync::Arc;

use crate::config::NodeConfig;
use crate::keys::unix_now;
use crate::metrics::METRICS;

pub use control::{StatusFn, CONTROL_SOCKET};

/// Where this process serves metrics (the bound address: `metrics_listen` may give port 0).
pub static METRICS_ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();

/// Starts the control socket in the node's data directory and, if `metrics_listen` is set,
/// the metrics endpoint. A control socket that cannot be bound is logged and skipped (the node
/// still runs); a metrics address that cannot be bound is an error (the operator asked for it).
pub async fn spawn<E: From<String> + Send + 'static>(
    node: &NodeConfig,
    role: &'static str,
    status: StatusFn,
    tasks: &mut tokio::task::JoinSet<Result<(), E>>,
) -> Result<(), String> {
    METRICS.started.set(unix_now() as i64);
    start_control(&node.data_dir, role, status, tasks);
    if let Some(addr) = node.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on node.metrics_listen {addr}: {e}"))?;
        let addr = l.local_addr().unwrap_or(addr);
        let _ = METRICS_ADDR.set(addr);
        tracing::info!("metrics on http://{addr}/metrics");
        tasks.spawn(async move {
            metrics_http::serve(l, role).await;
            Err(E::from("the metrics listener stopped".to_string()))
        });
    }
    Ok(())
}

fn start_control<E: Send + 'static>(data_dir: &Path, role: &'static str, status: StatusFn, tasks: &mut tokio::task::JoinSet<Result<(), E>>) {
    match control::bind(data_dir) {
        Ok(l) => {
            let status: Arc<StatusFn> = Arc::new(status);
            tasks.spawn(async move {
                control::serve(l, role, status).await;
                // Losing the control socket must not stop a relay: wait forever instead.
                std::future::pending::<Result<(), E>>().await
            });
        }
        Err(e) => tracing::warn!("no control socket: {e}"),
    }
}
