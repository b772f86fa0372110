//! What a relay reports on its control socket (`allium status`), beside what every role
//! reports: who it is, whether the consensus lists it and with which flags, what it serves.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::RelayCtx;

/// The relay's part of the status, read from `ctx` on each request.
/// `or_port` is where the OR port listens; `advertised` the `relay.advertise_address`, if set.
pub fn status_fn(ctx: Arc<RelayCtx>, nickname: String, or_port: std::net::SocketAddr, advertised: Option<std::net::SocketAddr>) -> allium_net::operator::StatusFn {
    Box::new(move || {
        let mut m = Map::new();
        m.insert("nickname".into(), json!(nickname));
        m.insert("fingerprint".into(), json!(ctx.id.fingerprint()));
        m.insert("or_port".into(), json!(or_port.to_string()));
        if let Some(a) = advertised {
            m.insert("advertised_address".into(), json!(a.to_string()));
        }
        m.insert("exit".into(), json!(ctx.exit.policy.is_exit()));
        let dir = ctx.dir.current();
        let me = dir.as_ref().and_then(|d| d.by_id(&ctx.id));
        m.insert("in_consensus".into(), json!(me.is_some()));
        m.insert("flags".into(), json!(me.map(|r| r.flags.to_string())));
        m.insert("relays_in_consensus".into(), json!(dir.as_ref().map(|d| d.relays().len())));
        m.insert("onion_descriptors_stored".into(), json!(ctx.dir.hsdir.len()));
        m.insert("relay_links".into(), json!(ctx.pool.relay_links()));
        m.insert("links_preconnected".into(), json!(allium_net::metrics::METRICS.links_preconnected.get()));
        m.insert("extends".into(), Value::Object(allium_net::metrics::METRICS.extends.counts().map(|(link, n)| (link.to_string(), json!(n))).collect()));
        m.insert("or_connections".into(), json!(ctx.or_conns.total()));
        m.insert("client_circuits".into(), json!(ctx.client_circuits.total()));
        m.insert("exit_connections".into(), json!(ctx.limits.exit_connections().saturating_sub(ctx.exit_conns.available_permits())));
        let onion = ctx.onion.read().unwrap_or_else(|e| e.into_inner());
        m.insert("onion_key".into(), json!(hex::encode(onion.current_public())));
        m.insert("previous_onion_key".into(), json!(onion.previous_public().map_or_else(|| "none".to_string(), hex::encode)));
        m
    })
}
