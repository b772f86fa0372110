//! `wait` on the control socket: the node answers once a field of its status satisfies a
//! condition, so that a script or test blocks on the node instead of polling it
//! (`allium status --wait 'bootstrap.percent>=100'`).
//!
//! A condition is `PATH OP VALUE`: PATH names a field by its keys, dot-separated
//! (`bootstrap.percent`, `onion_services.web`); OP is `>=`, `<=`, `>`, `<` or `==` for numbers,
//! `~` for "the text contains". The node checks again whenever something in its status changes
//! that it signals ([`status_changed`]: bootstrap steps, a new consensus, an onion service's
//! state) and, for every other field, at least every [`RECHECK`].

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Notify;

/// The longest a wait may be asked to last.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// How often a condition is checked again when nothing signalled a change.
pub const RECHECK: Duration = Duration::from_millis(100);

/// Signalled when the status changes in a way a waiter may be waiting for.
fn changes() -> &'static Notify {
    static N: OnceLock<Notify> = OnceLock::new();
    N.get_or_init(Notify::new)
}

/// Something in this node's status changed: waiting requests check again now.
pub fn status_changed() {
    changes().notify_waiters();
}

/// How a field is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ge,
    Le,
    Gt,
    Lt,
    Eq,
    Contains,
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    path: Vec<String>,
    op: Op,
    value: String,
}

impl Condition {
    /// Parses `PATH OP VALUE` (no spaces needed).
    pub fn parse(s: &str) -> Result<Condition, String> {
        if s.chars().any(char::is_control) {
            return Err("a condition is one line of text".into());
        }
        let ops = [(">=", Op::Ge), ("<=", Op::Le), ("==", Op::Eq), (">", Op::Gt), ("<", Op::Lt), ("~", Op::Contains)];
        let (at, len, op) = ops
            .iter()
            .filter_map(|(t, op)| s.find(t).map(|i| (i, t.len(), *op)))
            .min_by_key(|(i, len, _)| (*i, usize::MAX - len))
            .ok_or_else(|| format!("{s:?} is not PATH OP VALUE (OP one of >= <= > < == ~)"))?;
        let path: Vec<String> = s[..at].trim().split('.').map(str::to_string).collect();
        let value = s[at + len..].trim().to_string();
        if path.iter().any(String::is_empty) || value.is_empty() {
            return Err(format!("{s:?} is not PATH OP VALUE"));
        }
        let boolean = op == Op::Eq && (value == "true" || value == "false");
        if op != Op::Contains && !boolean && value.parse::<f64>().is_err() {
            return Err(format!("{value:?} is not a number (nor true or false, with ==)"));
        }
        Ok(Condition { path, op, value })
    }

    /// Whether `status` satisfies it (a missing field does not).
    pub fn holds(&self, status: &Map<String, Value>) -> bool {
        let mut v = status.get(&self.path[0]);
        for key in &self.path[1..] {
            v = v.and_then(|x| x.get(key));
        }
        let Some(v) = v else { return false };
        if self.op == Op::Contains {
            return v.as_str().is_some_and(|t| t.contains(&self.value));
        }
        if let Some(b) = v.as_bool() {
            return self.op == Op::Eq && self.value == b.to_string();
        }
        let (Some(x), Ok(want)) = (v.as_f64(), self.value.parse::<f64>()) else { return false };
        match self.op {
            Op::Ge => x >= want,
            Op::Le => x <= want,
            Op::Gt => x > want,
            Op::Lt => x < want,
            Op::Eq => x == want,
            Op::Contains => unreachable!("handled above"),
        }
    }
}

/// Waits until `cond` holds for the status `snapshot` gives, or `limit` passes: the last
/// status, and whether it held.
pub async fn until(cond: &Condition, limit: Duration, snapshot: impl Fn() -> Map<String, Value>) -> (Map<String, Value>, bool) {
    let deadline = tokio::time::Instant::now() + limit.min(MAX_WAIT);
    loop {
        // Registered before the check: a change between check and wait is not missed.
        let changed = changes().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let status = snapshot();
        if cond.holds(&status) {
            return (status, true);
        }
        if tokio::time::Instant::now() >= deadline {
            return (status, false);
        }
        let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + RECHECK), changed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn conditions_parse_and_hold_on_nested_fields() {
        let s = status(json!({ "bootstrap": { "percent": 75, "phase": "first circuit built" }, "relays_in_consensus": 5, "onion_services": { "web": "published to 3 HSDirs" } }));
        assert!(Condition::parse("bootstrap.percent>=75").unwrap().holds(&s));
        assert!(!Condition::parse("bootstrap.percent >= 100").unwrap().holds(&s));
        assert!(Condition::parse("relays_in_consensus==5").unwrap().holds(&s));
        assert!(Condition::parse("relays_in_consensus>4").unwrap().holds(&s));
        assert!(!Condition::parse("relays_in_consensus<5").unwrap().holds(&s));
        assert!(Condition::parse("onion_services.web~published").unwrap().holds(&s));
        let flag = status(json!({ "in_consensus": true }));
        assert!(Condition::parse("in_consensus==true").unwrap().holds(&flag));
        assert!(!Condition::parse("in_consensus==false").unwrap().holds(&flag));
        assert!(Condition::parse("in_consensus>=true").is_err());
        assert!(!Condition::parse("onion_services.other~published").unwrap().holds(&s), "a missing field never holds");
        assert!(Condition::parse("bootstrap.percent").is_err());
        assert!(Condition::parse(">=3").is_err());
        assert!(Condition::parse("a>=x").is_err(), "numbers compare with numbers");
    }

    #[tokio::test]
    async fn a_wait_ends_when_a_signalled_change_makes_the_condition_hold() {
        let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let cond = Condition::parse("n>=3").unwrap();
        let m = n.clone();
        let waiter = tokio::spawn(async move { until(&cond, Duration::from_secs(60), move || status(json!({ "n": m.load(std::sync::atomic::Ordering::SeqCst) }))).await });
        for _ in 0..3 {
            tokio::task::yield_now().await;
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            status_changed();
        }
        let (last, held) = waiter.await.unwrap();
        assert!(held && last["n"] == json!(3));
        // Never holding: the wait ends at its limit with the last status.
        let (_, held) = until(&Condition::parse("n>=9").unwrap(), Duration::from_millis(10), || status(json!({ "n": 1 }))).await;
        assert!(!held);
    }
}
