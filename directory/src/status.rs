//! What an authority reports on its control socket (`allium status`), beside what every role
//! reports: its published consensus and the relays it knows.

use std::sync::Arc;

use serde_json::{json, Map};

use crate::authority::Shared;

/// The authority's part of the status, read from the shared state on each request.
pub(crate) fn status_fn(sh: Arc<Shared>, nickname: String) -> allium_net::operator::StatusFn {
    Box::new(move || {
        let mut m = Map::new();
        m.insert("nickname".into(), json!(nickname));
        m.insert("authorities".into(), json!(sh.authority_ids.len()));
        let state = sh.lock();
        let published = state.published_consensus().map(|c| {
            json!({
                "valid_after": c.valid_after(),
                "fresh_until": c.fresh_until(),
                "valid_until": c.valid_until(),
                "relays": c.relays().len(),
                "signatures": c.signatures().len(),
            })
        });
        m.insert("published_consensus".into(), json!(published));
        m.insert("descriptors_known".into(), json!(state.descriptor_count()));
        m
    })
}
