//! The relay's descriptor: built from config and keys, signed, uploaded to every authority at
//! start and then periodically; and a watcher that reports whether the consensus lists us.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_proto::doc::{Protocols, RelayDescriptor};
use allium_proto::ids::RelayId;

use crate::{RelayConfig, RelayCtx, RelayError};

/// Subprotocol versions this relay speaks (advertised in its descriptor).
pub fn our_protocols() -> Protocols {
    Protocols::new().with("Link", 1, 1).with("Relay", 1, 1).with("Ntor", 1, 1)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The longest a relay waits between uploads, whatever the voting interval (as Tor's 18 h).
const MAX_REPUBLISH_SECS: u64 = 18 * 3600;

/// How often the descriptor is re-uploaded: a third of the authorities' descriptor lifetime
/// for the network's voting interval (`allium_directory::schedule::republish_period_secs`; the
/// interval is read off the consensus: fresh-until − valid-after), at most 18 h. Before the
/// first consensus, as for the shortest interval a real network may use. Test networks: 10 s
/// at most.
fn republish_every(testnet: bool, interval_secs: Option<u64>) -> Duration {
    let interval = interval_secs.unwrap_or(allium_directory::config::MIN_INTERVAL_SECS);
    let secs = allium_directory::schedule::republish_period_secs(interval).min(MAX_REPUBLISH_SECS);
    Duration::from_secs(if testnet { secs.min(10) } else { secs })
}

/// The voting interval of the consensus this relay holds.
fn consensus_interval(ctx: &RelayCtx) -> Option<u64> {
    ctx.dir.current().map(|d| d.fresh_until().saturating_sub(d.valid_after())).filter(|i| *i > 0)
}

/// How long after a failed consensus fetch a relay tries again.
fn fetch_retry(testnet: bool) -> Duration {
    // A test network's first consensus comes within a second of its start (bootstrap rounds).
    if testnet {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(60)
    }
}

/// Builds this relay's signed descriptor.
pub fn build_descriptor(cfg: &RelayConfig, ctx: &RelayCtx, published: u64) -> Result<String, RelayError> {
    let d = RelayDescriptor {
        nickname: cfg.node.nickname.clone(),
        identity: ctx.id,
        onion_key: ctx.onion_keys().current_public(),
        link_key: ctx.keys.link_public(),
        link_cert: allium_proto::link::certify_link_key(&ctx.keys.identity, &ctx.keys.link_public()),
        // Where others reach the OR port: `relay.advertise_address` when set (NAT, port forward).
        address: cfg.advertised_or_address(),
        policy: ctx.exit.policy.clone(),
        family: cfg.family_ids()?,
        bandwidth: cfg.relay.reported_bandwidth(|offered| ctx.observed.lock().unwrap_or_else(|e| e.into_inner()).reported(offered)),
        protocols: our_protocols(),
        published,
        platform: Some(format!("Allium {}", env!("CARGO_PKG_VERSION"))),
    };
    Ok(d.encode_signed(&ctx.keys.identity))
}

/// First retry delay of an upload round; doubles per failed attempt up to the cap.
const RETRY_BASE: Duration = Duration::from_millis(500);

/// One upload round: the authorities that have not yet taken this relay's descriptor, and how
/// often they failed. Sans-IO: [`UploadRound::next`] says when to upload again.
#[derive(Debug, Clone)]
pub struct UploadRound {
    pending: Vec<RelayId>,
    total: usize,
    attempts: u32,
}

/// What to do after an upload attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextUpload {
    /// Some authorities still lack the descriptor: upload to them after this delay.
    Retry(Duration),
    /// Every authority has it: start a new round at the republish period.
    Done,
}

impl UploadRound {
    /// A round to every authority in `all`.
    pub fn new(all: &[RelayId]) -> Self {
        UploadRound { pending: all.to_vec(), total: all.len(), attempts: 0 }
    }

    /// The authorities still to upload to.
    pub fn pending(&self) -> &[RelayId] {
        &self.pending
    }

    /// How many authorities have the descriptor.
    pub fn accepted(&self) -> usize {
        self.total - self.pending.len()
    }

    /// Records the authorities that accepted it in one attempt. Those that did not are tried
    /// again (every one of them, not only until one accepts: the consensus lists a relay only
    /// when a majority voted for it), after a delay doubling from [`RETRY_BASE`] up to `cap`
    /// and drawn in its upper half by `r`, so relays refused together do not retry together.
    pub fn on_attempt(&mut self, accepted: &[RelayId], cap: Duration, r: u64) -> NextUpload {
        self.pending.retain(|id| !accepted.contains(id));
        if self.pending.is_empty() {
            return NextUpload::Done;
        }
        let step = RETRY_BASE.saturating_mul(1 << self.attempts.min(16)).min(cap);
        self.attempts += 1;
        let half = step.as_millis() as u64 / 2;
        NextUpload::Retry(Duration::from_millis(half + r % half.max(1)))
    }
}

/// Longest wait between retries of an upload round (test networks: 2 s).
fn retry_cap(testnet: bool) -> Duration {
    Duration::from_secs(if testnet { 2 } else { 60 })
}

/// Uploads the descriptor now and then periodically, and at once when the onion key rotates
/// ([`RelayCtx::republish`]) or a consensus leaves this relay out; within a round, retries the
/// authorities that did not take it (with backoff) until every one has. A new round to every
/// authority starts at the republish period even while one still refuses or is down, so that
/// those that took the descriptor get it again before their copy expires.
pub async fn publish_loop(cfg: RelayConfig, ctx: Arc<RelayCtx>) -> Result<(), RelayError> {
    let all: Vec<RelayId> = cfg.network.authorities.iter().map(|a| a.identity).collect();
    let majority = all.len() / 2 + 1;
    let mut round = UploadRound::new(&all);
    let next_round = |ctx: &RelayCtx| Instant::now() + republish_every(cfg.network.dangerous_testnet, consensus_interval(ctx));
    let mut round_due = next_round(&ctx);
    let mut announced = false;
    loop {
        let text = build_descriptor(&cfg, &ctx, now())?;
        let targets: Vec<_> = cfg.network.authorities.iter().filter(|a| round.pending().contains(&a.identity)).cloned().collect();
        let accepted = allium_directory::publish::publish_descriptor_to(&targets, cfg.node.address, &text).await;
        let before = round.accepted();
        let next = round.on_attempt(&accepted, retry_cap(cfg.network.dangerous_testnet), rand::random());
        if !announced && round.accepted() >= majority {
            tracing::info!("descriptor accepted by {} of {} authorities", round.accepted(), all.len());
            announced = true;
        } else if before < majority && round.accepted() < majority && next != NextUpload::Done {
            tracing::info!("descriptor accepted by {} of {} authorities so far (a majority is needed to be listed); retrying the others", round.accepted(), all.len());
        }
        let wake = match next {
            NextUpload::Retry(d) => (Instant::now() + d).min(round_due),
            NextUpload::Done => round_due,
        };
        let reason = tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => None,
            _ = ctx.republish.notified() => Some("the onion key rotated"),
            _ = ctx.unlisted.notified() => Some("the consensus does not list this relay"),
        };
        if let Some(why) = reason {
            tracing::info!("republishing the descriptor: {why}");
        }
        if reason.is_some() || Instant::now() >= round_due {
            round = UploadRound::new(&all);
            round_due = next_round(&ctx);
        }
    }
}

/// Fetches the consensus from the authorities after each `fresh-until` (a relay is public, so
/// it may), keeps it in the directory cache it serves to clients, stops if the network requires
/// protocol versions we lack, and says once whether the consensus lists this relay.
pub async fn consensus_watch(cfg: RelayConfig, ctx: Arc<RelayCtx>) -> Result<(), RelayError> {
    let mut listed = false;
    // At most one round of links opened ahead of need at a time.
    let mut preconnecting: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let t = now();
        let previous = ctx.dir.current();
        let wait = match allium_directory::fetch::fetch_consensus(&cfg.network, cfg.node.address, t, previous.as_deref()).await {
            Ok(dir) => {
                // A relay lacking a version the network requires stops, saying so.
                if let Err(e) = allium_directory::check_protocols(&our_protocols(), &dir) {
                    tracing::error!("{e}");
                    return Err(e.into());
                }
                let dir = ctx.dir.store(dir);
                if preconnecting.as_ref().is_none_or(|h| h.is_finished()) {
                    preconnecting = Some(tokio::spawn(crate::preconnect::preconnect(ctx.clone(), dir.clone())));
                }
                let now_listed = dir.consensus().relay(&ctx.id).is_some();
                if now_listed != listed {
                    tracing::info!("the consensus {} this relay", if now_listed { "lists" } else { "no longer lists" });
                    listed = now_listed;
                }
                if !now_listed {
                    // Perhaps the authorities lost or dropped our descriptor: upload it now.
                    ctx.unlisted.notify_one();
                }
                // In the caches' window after fresh-until, before clients ask (schedule.rs).
                let at = allium_directory::schedule::refetch_at_ms(&dir.consensus().lifetime(), allium_directory::schedule::Fetcher::Cache, rand::random());
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                Duration::from_millis(at.saturating_sub(now_ms).max(1000))
            }
            Err(e) => {
                tracing::debug!("no consensus yet: {e}");
                fetch_retry(cfg.network.dangerous_testnet)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directory timings `dangerous_testnet` shortens (docs/PROTOCOL.md, "Test networks")
    /// keep their real-network values without it.
    #[test]
    fn a_real_network_relay_keeps_real_directory_timings() {
        assert_eq!(fetch_retry(false), Duration::from_secs(60));
        assert_eq!(fetch_retry(true), Duration::from_millis(200));
        assert_eq!(republish_every(false, Some(3600)), Duration::from_secs(3600));
        assert_eq!(republish_every(true, Some(3600)), Duration::from_secs(10));
        assert_eq!(republish_every(true, Some(2)), Duration::from_secs(10));
    }

    /// Issue 18: a relay that one of three authorities accepted stopped retrying and stayed out
    /// of every consensus. A round retries every authority that has not taken the descriptor,
    /// with a growing, jittered delay, until all have.
    #[test]
    fn an_upload_round_retries_every_authority_that_refused() {
        let ids: Vec<RelayId> = (1..=3).map(|i| RelayId([i; 32])).collect();
        let cap = Duration::from_secs(60);
        let mut round = UploadRound::new(&ids);
        let NextUpload::Retry(d1) = round.on_attempt(&ids[..1], cap, 0) else { panic!("one of three is not done") };
        assert_eq!(round.pending(), &ids[1..]);
        assert_eq!(d1, Duration::from_millis(250));
        let NextUpload::Retry(d2) = round.on_attempt(&[], cap, 0) else { panic!() };
        assert!(d2 > d1);
        for i in 0..20 {
            let NextUpload::Retry(d) = round.on_attempt(&[], cap, u64::MAX) else { panic!() };
            // Doubling to the cap (reached after 7 steps of 0.5 s doubling), never past it.
            assert!(d <= cap && (i < 6 || d >= cap / 2), "attempt {i}: {d:?}");
        }
        assert_eq!(round.on_attempt(&ids[1..2], cap, 0), NextUpload::Retry(Duration::from_secs(30)));
        assert_eq!(round.accepted(), 2);
        assert_eq!(round.on_attempt(&ids[2..], cap, 0), NextUpload::Done);
    }

    /// `relay.advertise_address` (NAT, port forward) is the descriptor's `address`; without it,
    /// `node.address:or_port` is.
    #[tokio::test]
    async fn the_descriptor_names_the_advertised_address() {
        let dir = std::env::temp_dir().join(format!("allium-relay-advertise-{}-{}", std::process::id(), rand::random::<u64>()));
        for (advertise, expect) in [(Some("198.51.100.7:443"), "198.51.100.7:443"), (None, "192.0.2.10:9001")] {
            let adv = advertise.map(|a| format!("advertise_address = \"{a}\"\n")).unwrap_or_default();
            let text = format!(
                "[node]\nnickname = \"r\"\ndata_dir = {dir:?}\naddress = \"192.0.2.10\"\n[network]\n\
                 [[network.authorities]]\nname = \"a\"\nidentity = \"{id}\"\naddress = \"192.0.2.1:9030\"\n[relay]\nor_port = 9001\n{adv}",
                dir = dir.display().to_string(),
                id = "ab".repeat(32),
            );
            let cfg: RelayConfig = allium_net::config::parse_toml(&text, std::path::Path::new("t.toml")).unwrap();
            cfg.validate().unwrap();
            let keys = allium_net::keys::load_or_create(&dir).unwrap();
            let relay = crate::InertRelay::new(cfg.clone(), keys).unwrap();
            let text = build_descriptor(&cfg, &relay.ctx, now()).unwrap();
            assert!(text.lines().any(|l| l == format!("address {expect}")), "{text}");
            let d = allium_proto::doc::RelayDescriptor::parse(&text).unwrap().verify().unwrap();
            assert_eq!(d.address, expect.parse().unwrap());
            assert_eq!(d.identity, relay.ctx.id);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 13: a relay that re-uploaded hourly whatever the interval dropped out of every
    /// consensus of a network voting more often than every 1,200 s. For every interval a real
    /// network may use, and before the first consensus, two uploads in a row may fail and the
    /// descriptor is still within the authorities' lifetime.
    #[test]
    fn descriptors_outlive_two_failed_uploads_at_every_interval() {
        use allium_directory::config::{MAX_INTERVAL_SECS, MIN_INTERVAL_SECS};
        use allium_directory::schedule::descriptor_max_age;
        for interval in (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).step_by(60).chain([MAX_INTERVAL_SECS]) {
            let every = republish_every(false, Some(interval)).as_secs();
            assert!(3 * every <= descriptor_max_age(interval), "interval {interval}: republish every {every} s");
            assert!(3 * republish_every(false, None).as_secs() <= descriptor_max_age(interval), "interval {interval}, no consensus yet");
        }
        for interval in 2..=600 {
            assert!(3 * republish_every(true, Some(interval)).as_secs() <= descriptor_max_age(interval), "testnet interval {interval}");
        }
    }
}
