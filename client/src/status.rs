//! What the client reports on its control socket (`allium status`), beside what every role
//! reports: bootstrap, guards, hosted onion services, the build timeout.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::ClientState;

/// The client's part of the status, read from `state` on each request.
pub fn status_fn(state: Arc<ClientState>) -> allium_net::operator::StatusFn {
    Box::new(move || {
        let mut m = Map::new();
        let b = &state.bootstrap;
        m.insert("bootstrap".into(), json!({ "percent": b.percent(), "phase": b.phase() }));
        let dir = state.netdir();
        let guards: Vec<Value> = state
            .circuits
            .guard_summary()
            .into_iter()
            .map(|g| {
                let listed = dir.as_ref().and_then(|d| d.by_id(&g.id));
                json!({
                    "fingerprint": g.id.fingerprint(),
                    "nickname": listed.map(|r| r.nickname.clone()),
                    "listed": listed.is_some(),
                    "confirmed": g.confirmed.is_some(),
                    "failures": g.failures,
                })
            })
            .collect();
        m.insert("guards".into(), Value::Array(guards));
        m.insert("relays_in_consensus".into(), json!(dir.as_ref().map(|d| d.relays().len())));
        // Port → clean circuits whose exits allow it (built ahead of need).
        let ready: Map<String, Value> = state.circuits.ready_summary().into_iter().map(|(p, n)| (p.to_string(), json!(n))).collect();
        m.insert("circuits_ready".into(), Value::Object(ready));
        let metrics = &allium_net::metrics::METRICS;
        m.insert(
            "recovery".into(),
            json!({ "begin_timeouts": metrics.begin_timeouts.get(), "stalled_streams": metrics.stalled_streams.get(), "circuits_retired": metrics.circuits_retired.get() }),
        );
        m.insert("app_connections".into(), json!(state.app_conns.total()));
        m.insert("build_timeout_ms".into(), json!(state.circuits.build_timeout().as_millis() as u64));
        m.insert("build_timeout_learned".into(), json!(state.circuits.build_timeout_learned()));
        let d = *state.directory.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(
            "directory".into(),
            json!({ "consensus": d.consensus.as_str(), "from_guards": d.from_guards, "from_fallbacks": d.from_fallbacks, "from_authorities": d.from_authorities }),
        );
        m.insert("consensus_diffs".into(), json!(metrics.consensus_diffs.get()));
        let services: Map<String, Value> = state.service_states().into_iter().map(|(k, v)| (k, json!(v))).collect();
        m.insert("onion_services".into(), Value::Object(services));
        let published: Map<String, Value> = state.service_publications().into_iter().map(|(k, v)| (k, json!(v))).collect();
        m.insert("onion_publications".into(), Value::Object(published));
        let (fresh, cached) = state.onions.connections_ready();
        m.insert("onion_connections".into(), json!({ "fresh": fresh, "cached": cached }));
        m.insert("onion_introductions_replayed".into(), json!(metrics.onion_introductions_replayed.get()));
        m
    })
}
