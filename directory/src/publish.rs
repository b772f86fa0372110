//! The relay side: uploading a signed descriptor to every authority.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use allium_net::config::{AuthorityEntry, NetworkConfig};
use allium_proto::ids::RelayId;
use tokio::task::JoinSet;

use crate::http::{self, PostError};

/// How long one upload may take.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Uploads the descriptor `text` to every configured authority at once (each with
/// [`PUBLISH_TIMEOUT`]), from a socket bound to `bind`. Returns how many accepted it.
///
/// Failures are logged at warn with the authority's name and the reason (addresses only at
/// debug). A relay should upload on start, when its descriptor changes, and every
/// [`crate::schedule::republish_period_secs`].
pub async fn publish_descriptor(net: &NetworkConfig, bind: IpAddr, text: &str) -> usize {
    publish_descriptor_to(&net.authorities, bind, text).await.len()
}

/// Uploads the descriptor `text` to each of `authorities` at once, as [`publish_descriptor`];
/// returns the identities of those that accepted it.
pub async fn publish_descriptor_to(authorities: &[AuthorityEntry], bind: IpAddr, text: &str) -> Vec<RelayId> {
    let client = match http::client(bind) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot publish the descriptor: {e}");
            return Vec::new();
        }
    };
    let body: Arc<str> = text.into();
    let mut set = JoinSet::new();
    for a in authorities.iter().cloned() {
        let client = client.clone();
        let body = body.clone();
        set.spawn(async move {
            let r = tokio::time::timeout(PUBLISH_TIMEOUT, http::post(&client, &a, "/allium/v1/descriptor", &body, PUBLISH_TIMEOUT))
                .await
                .unwrap_or_else(|_| Err(PostError::Transport("timed out".into())));
            match &r {
                Ok(()) => tracing::debug!(authority = %a.name, "descriptor accepted"),
                Err(e) => {
                    tracing::warn!(authority = %a.name, "descriptor upload failed: {e}");
                    tracing::debug!(authority = %a.name, address = %a.address, "descriptor upload failed");
                }
            }
            r.is_ok().then_some(a.identity)
        });
    }
    let mut accepted = Vec::new();
    while let Some(r) = set.join_next().await {
        accepted.extend(r.ok().flatten());
    }
    tracing::debug!(accepted = accepted.len(), authorities = authorities.len(), "descriptor published");
    accepted
}
