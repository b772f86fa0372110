//! Allium relay: accepts links, keeps the circuit table, forwards cells, runs exit streams and
//! publishes its descriptor.
//!
//! Layout:
//! - [`config`]: the relay's TOML config.
//! - [`circuit`]: one circuit's owner task (crypto, forwarding, extending, exit streams).
//! - [`exit`]: resolving, exit-policy decisions and connecting for BEGIN.
//! - [`handshakes`]: CREATE handshakes on their own threads, with a bounded queue and a replay
//!   filter (THREATS A25).
//! - [`fair_queue`]: a bounded queue served round-robin by source address (the handshake queue).
//! - [`hs_points`]: this relay as an introduction and rendezvous point (shared tables).
//! - [`dir_cache`]: the consensus this relay keeps and serves on directory streams (BEGIN_DIR).
//! - [`hsdir`]: onion-service descriptors stored and served while the consensus flags it HSDir.
//! - [`observed`]: the bandwidth the relay has carried, which its descriptor reports.
//! - [`preconnect`]: links to the relays circuits likely extend to, opened after each consensus.
//! - [`publish`]: building the signed descriptor and uploading it to every authority.
//! - [`rotation`]: replacing the onion key on schedule, keeping the previous one for a grace.
//!
//! Startup is an inert step ([`InertRelay::new`]: config and keys, no runtime) and then
//! [`InertRelay::run`], which runs the listener, the publisher and the consensus watcher as
//! named tasks; any of them ending is an error.
//!
//! Not in this crate: link encryption and reactors (`allium-net`), documents (`allium-proto`).

pub mod circuit;
pub mod config;
pub mod dir_cache;
pub mod exit;
pub mod fair_queue;
pub mod handshakes;
pub mod hs_points;
pub mod hsdir;
pub mod observed;
pub mod preconnect;
pub mod publish;
pub mod rotation;
pub mod status;
pub mod test_hooks;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use allium_net::channel::{Channel, CreateHandler};
use allium_net::keys::{unix_now, NodeKeys, OnionKeys};
use allium_net::limits::bucket::AddrBuckets;
use allium_net::limits::conn::{AddrKey, ConnLimiter, ConnPermit};
use allium_net::limits::counters::{LimitCounters, LIMITS};
use allium_net::limits::LimitsConfig;
use allium_net::link::{self, RelayCredentials};
use allium_net::pool::ChannelPool;
use allium_proto::cell::{self, Cell, DestroyReason};
use allium_proto::early::EarlyGate;
use allium_proto::circuit::RelayHop;
use allium_proto::crypto::kdf::HopKeys;
use allium_proto::crypto::ntor::{self, OnionKeyPair, HTYPE_NTOR};
use allium_proto::ext::Extensions;
use allium_proto::flow::{FlowParams, EXT_FLOW_PARAMS};
use allium_proto::ids::RelayId;
use allium_proto::reader::Reader;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use config::RelayConfig;

/// Everything a relay's tasks share.
pub struct RelayCtx {
    pub id: RelayId,
    /// Identity and link keys; its `onion` field is only the key at startup: use [`RelayCtx::onion`].
    pub keys: NodeKeys,
    /// The live onion keys (current and, during a rotation's grace, previous).
    pub onion: RwLock<OnionKeys>,
    /// Notified when the descriptor must be republished now (the onion key changed).
    pub republish: tokio::sync::Notify,
    /// Notified when a fetched consensus does not list this relay (republish now).
    pub unlisted: tokio::sync::Notify,
    /// What the links have carried (sampled by [`observe_loop`]).
    pub observed: std::sync::Mutex<observed::ObservedBandwidth>,
    pub pool: ChannelPool,
    pub exit: exit::ExitRules,
    /// The consensus served to clients on directory streams.
    pub dir: Arc<dir_cache::DirCache>,
    pub testnet: bool,
    /// Introduction and rendezvous circuits.
    pub hs: Arc<hs_points::HsPoints>,
    /// The `[limits]` of this relay.
    pub limits: LimitsConfig,
    /// Inbound links on the OR port (consensus relays count only in the total).
    pub or_conns: Arc<ConnLimiter>,
    /// Open circuits per client address (consensus relays are not counted).
    pub client_circuits: Arc<ConnLimiter>,
    /// CREATE rate per address (addresses holding `create_min_links` links or more).
    pub create_rates: Mutex<AddrBuckets>,
    /// Recent CREATE handshake messages (a replay is refused before any crypto).
    pub replays: Mutex<handshakes::ReplayFilter>,
    /// Where CREATE handshakes run.
    pub handshakes: handshakes::HandshakePool,
    /// Outbound exit connections (one permit per open stream socket).
    pub exit_conns: Arc<tokio::sync::Semaphore>,
    pub corrupt_after: Option<u64>,
    /// Test hook: drop every CREATE and every cell of the circuit (never answer).
    pub blackhole: bool,
    /// Test hook: forward every INTRODUCE2 twice.
    pub duplicate_introduce2: bool,
    /// Test hook: stop forwarding relay cells on a circuit after this many toward the exit.
    pub stop_forwarding_after: Option<u64>,
    /// Test hook: what a relay with a next hop injects toward the client once.
    pub inject_from_middle: Option<circuit::Injection>,
}

/// A relay with its config and keys, not yet running.
pub struct InertRelay {
    cfg: RelayConfig,
    ctx: Arc<RelayCtx>,
}

/// Any error that stops the relay.
pub type RelayError = Box<dyn std::error::Error + Send + Sync>;

impl InertRelay {
    pub fn new(cfg: RelayConfig, keys: NodeKeys) -> Result<Self, RelayError> {
        let policy = cfg.exit_policy()?;
        let creds = RelayCredentials::new(&keys);
        let rotation = cfg.onion_rotation()?;
        let mut onion = OnionKeys::load_or_create(&cfg.node.data_dir, unix_now())?;
        if onion.current_public() != keys.onion_public() {
            tracing::warn!("the onion key in {} differs from the one loaded at startup; using the file's", cfg.node.data_dir.display());
        }
        // Catch up with the schedule before the first descriptor (e.g. after a long stop).
        onion.apply_schedule(&cfg.node.data_dir, &rotation, unix_now())?;
        let authorities: Vec<RelayId> = cfg.network.authorities.iter().map(|a| a.identity).collect();
        let saved = allium_directory::ConsensusCache::load(&cfg.node.data_dir, &authorities, cfg.network.dangerous_testnet, unix_now());
        let limits = cfg.limits.clone();
        let dir = Arc::new(dir_cache::DirCache::with_identity(saved, keys.relay_id(), hsdir::HsDir::with_limits(&limits)));
        let relays = dir.clone();
        let or_conns = ConnLimiter::with_exemption(limits.connections(), limits.max_connections_per_address, Box::new(move |ip| relays.is_relay_address(ip)));
        let ctx = RelayCtx {
            id: keys.relay_id(),
            dir,
            or_conns,
            client_circuits: ConnLimiter::counting(usize::MAX, limits.max_circuits_per_address, &LIMITS.circuits_per_address, &LIMITS.circuits_per_address),
            create_rates: Mutex::new(AddrBuckets::new(limits.create_rate_per_address, limits.create_burst_per_address, limits.create_defense())),
            replays: Mutex::new(handshakes::ReplayFilter::new(limits.create_replay_memory)),
            handshakes: handshakes::HandshakePool::new(limits.handshake_threads(), limits.handshake_queue, limits.handshake_queue_delay()),
            exit_conns: Arc::new(tokio::sync::Semaphore::new(limits.exit_connections())),
            limits,
            pool: ChannelPool::new(cfg.node.address, Some(creds)),
            exit: exit::ExitRules {
                policy,
                resolver: cfg.exit.resolver,
                testnet: cfg.network.dangerous_testnet,
                bind_ip: cfg.node.address,
                own: exit::ExitRules::own_addresses(cfg.node.address, cfg.relay.advertise_address.map(|a| a.ip())),
            },
            testnet: cfg.network.dangerous_testnet,
            hs: Arc::new(hs_points::HsPoints::with_limits(&cfg.limits)),
            corrupt_after: cfg.relay.dangerous_test_corrupt_after,
            blackhole: cfg.relay.dangerous_test_blackhole,
            duplicate_introduce2: cfg.relay.dangerous_test_duplicate_introduce2,
            stop_forwarding_after: cfg.relay.dangerous_test_stop_forwarding_after,
            inject_from_middle: match cfg.relay.dangerous_test_inject_from_middle.as_deref() {
                None => None,
                Some("drop") => Some(circuit::Injection::Message(allium_proto::relay_msg::RelayMsg::Drop)),
                Some("introduce_ack") => Some(circuit::Injection::Message(allium_proto::relay_msg::RelayMsg::IntroduceAck { status: 1, ext: Default::default() })),
                Some("relay_early") => Some(circuit::Injection::MarkEarly),
                Some(other) => return Err(format!("relay.dangerous_test_inject_from_middle: unknown kind {other:?} (drop, introduce_ack or relay_early)").into()),
            },
            keys,
            onion: RwLock::new(onion),
            republish: tokio::sync::Notify::new(),
            unlisted: tokio::sync::Notify::new(),
            observed: Default::default(),
        };
        ctx.dir.hsdir.set_mutate_answers(cfg.relay.dangerous_test_mutate_hs_descriptors);
        ctx.pool.set_mem_quota(allium_net::limits::memquota::MemQuota::new(ctx.limits.max_queued_bytes()));
        ctx.pool.set_write_timeout(ctx.limits.link_write_timeout());
        Ok(InertRelay { cfg, ctx: Arc::new(ctx) })
    }

    /// The budget this relay's queued cells are charged to (`limits.max_queued_mib`).
    pub fn mem_quota(&self) -> Arc<allium_net::limits::memquota::MemQuota> {
        self.ctx.pool.mem_quota()
    }

    /// Runs until a task fails.
    pub async fn run(self) -> Result<(), RelayError> {
        let ctx = self.ctx;
        let handler: Arc<dyn CreateHandler> = Arc::new(Creates(ctx.clone()));
        ctx.pool.set_create_handler(handler.clone());
        // This relay dials relays only (to extend circuits): links between relays.
        ctx.pool.set_idle_timeout(ctx.limits.idle_timeout_for(true));
        let addr = self.cfg.or_listen_address();
        let listener = allium_net::accept::listen(addr).map_err(|e| format!("cannot listen on the OR port {addr}: {e}"))?;
        tracing::info!("relay {} listening; exit: {}", self.cfg.node.nickname, ctx.exit.policy.is_exit());
        if let Some(adv) = self.cfg.relay.advertise_address {
            tracing::info!("OR port {addr} advertised as {adv} (relay.advertise_address): it must forward there");
        }
        let mut tasks = JoinSet::new();
        let status = status::status_fn(ctx.clone(), self.cfg.node.nickname.clone(), addr, self.cfg.relay.advertise_address);
        allium_net::operator::spawn(&self.cfg.node, "relay", status, &mut tasks).await?;
        tasks.spawn(accept_loop(listener, ctx.clone(), handler));
        tasks.spawn(publish::publish_loop(self.cfg.clone(), ctx.clone()));
        tasks.spawn(publish::consensus_watch(self.cfg.clone(), ctx.clone()));
        tasks.spawn(observe_loop(ctx.clone()));
        tasks.spawn(async {
            allium_net::limits::counters::report_loop(std::time::Duration::from_secs(60)).await;
            Ok(())
        });
        tasks.spawn(hs_points::expire_loop(ctx.hs.clone()));
        tasks.spawn(rotation::rotation_loop(ctx.clone(), self.cfg.node.data_dir.clone(), self.cfg.onion_rotation()?));
        match tasks.join_next().await {
            Some(Ok(Err(e))) => Err(e),
            Some(Ok(Ok(()))) => Err("a relay task ended".into()),
            Some(Err(e)) => Err(format!("a relay task panicked: {e}").into()),
            None => Err("no relay tasks".into()),
        }
    }
}

/// Samples the bytes this process's links have written, every [`observed::SAMPLE_SECS`].
async fn observe_loop(ctx: Arc<RelayCtx>) -> Result<(), RelayError> {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(observed::SAMPLE_SECS));
    loop {
        tick.tick().await;
        let written = allium_net::channel::LINK_STATS.bytes_written.load(std::sync::atomic::Ordering::Relaxed);
        ctx.observed.lock().unwrap_or_else(|e| e.into_inner()).sample(written, unix_now());
    }
}

/// Runs the relay until a fatal error.
pub async fn run(cfg: RelayConfig, keys: NodeKeys) -> Result<(), RelayError> {
    InertRelay::new(cfg, keys)?.run().await
}

/// Whether an inbound link whose peer proved `proved_key` (and an identity the consensus lists
/// as `listed`: address and link key) is a link from that relay: only if the keys agree (a
/// claimed identity with another key is someone else).
fn is_listed_relay_link(proved_key: Option<[u8; 32]>, listed: Option<(std::net::SocketAddr, [u8; 32])>) -> bool {
    matches!((proved_key, listed), (Some(p), Some((_, k))) if p == k)
}

async fn accept_loop(listener: TcpListener, ctx: Arc<RelayCtx>, handler: Arc<dyn CreateHandler>) -> Result<(), RelayError> {
    let limiter = ctx.or_conns.clone();
    allium_net::accept::accept_forever(listener, "inbound link", limiter, |sock, permit| {
        let ctx = ctx.clone();
        let handler = handler.clone();
        async move {
            let mut l = link::accept_within(sock, &ctx.keys.link.to_bytes(), ctx.limits.link_handshake_timeout()).await?;
            l.permit = Some(permit);
            // A relay the consensus lists, under the identity and link key it proved, keeps its
            // link open as long as this relay's own links to relays; anyone else briefly. Asked
            // again at each idle check: a relay that dialled before this relay's consensus
            // listed it keeps its link once a newer one does.
            let (peer, peer_key) = (l.peer, l.peer_link_key);
            let chan = Channel::spawn(l, Some(handler), &ctx.pool.mem_quota());
            let listing = ctx.clone();
            chan.close_when_idle_by(move || {
                let listed = peer.is_some_and(|id| is_listed_relay_link(peer_key, listing.dir.listed_relay(&id)));
                listing.limits.idle_timeout_for(listed)
            });
            chan.set_write_timeout(ctx.limits.link_write_timeout());
            ctx.pool.insert(chan);
            Ok::<(), link::LinkError>(())
        }
    })
    .await;
    Err("the OR port stopped accepting".into())
}

/// Handles CREATE on new circuit ids: one task per circuit.
struct Creates(Arc<RelayCtx>);

impl CreateHandler for Creates {
    fn on_create(&self, chan: &Channel, cell: Cell) {
        let ctx = self.0.clone();
        let chan = chan.clone();
        let id = cell.circ_id;
        let metrics = &allium_net::metrics::METRICS;
        // Held by the circuit's task: its place under the address's circuit cap.
        let place = match admit_create(&ctx, &chan, &cell) {
            Ok(p) => p,
            Err(reason) => {
                metrics.circuits_failed.inc(if reason == DestroyReason::ResourceLimit { "refused_by_limit" } else { "other" });
                chan.destroy(id, reason);
                return;
            }
        };
        let mut rx = chan.accept_circuit(id);
        if ctx.blackhole {
            // Never answer: swallow the CREATE and every later cell until DESTROY or link close.
            tracing::info!("test hook: black-holing a circuit");
            tokio::spawn(async move {
                let _place = place;
                while let Some(c) = rx.recv().await {
                    if c.cmd == allium_proto::cell::CellCmd::Destroy {
                        break;
                    }
                }
                chan.close_circuit(id);
            });
            return;
        }
        tokio::spawn(async move {
            let _place = place;
            let started = Instant::now();
            let keys = match create(&ctx, &chan, &cell, &mut rx).await {
                Ok(k) => k,
                Err(reason) => {
                    metrics.circuits_failed.inc(if reason == DestroyReason::ResourceLimit { "refused_by_limit" } else { "handshake" });
                    chan.destroy(id, reason);
                    return;
                }
            };
            metrics.circuit_build.observe(started.elapsed());
            metrics.circuits_opened.inc();
            let _open = metrics.circuits_open.open();
            let (hop, hop_keys, flow) = keys;
            circuit::Accepted { ctx, prev: chan, prev_id: id, prev_rx: rx, hop, hop_keys, flow }.run().await;
        });
    }
}

/// The checks a CREATE passes before any work (THREATS A23): a peer that is not a consensus
/// relay may hold at most `max_circuits_per_client_link` circuits on one link and
/// `max_circuits_per_address` over all its links (the returned place, held while the circuit
/// is open), and an address holding `create_min_links` links or more is held to its CREATE
/// token bucket.
fn admit_create(ctx: &RelayCtx, chan: &Channel, cell: &Cell) -> Result<Option<ConnPermit>, DestroyReason> {
    // A CREATE that fits one cell is checked for a replay here, before a circuit or a task
    // exists for it (a longer one after reassembly, in `create`).
    if let Some(msg) = single_cell_create(cell) {
        if ctx.replayed(msg) {
            return Err(DestroyReason::Protocol);
        }
    }
    let Some(ip) = chan.peer_addr else { return Ok(None) };
    if ctx.dir.is_relay_address(ip) {
        return Ok(None);
    }
    if chan.n_circuits() >= ctx.limits.max_circuits_per_client_link {
        LimitCounters::hit(&LIMITS.circuits_per_link);
        return Err(DestroyReason::ResourceLimit);
    }
    if ctx.or_conns.count(ip) >= ctx.limits.create_min_links {
        let ok = ctx.create_rates.lock().unwrap_or_else(|e| e.into_inner()).take(AddrKey::from(ip), Instant::now());
        if !ok {
            LimitCounters::hit(&LIMITS.create_rate);
            return Err(DestroyReason::ResourceLimit);
        }
    }
    // Last, so that a CREATE refused above takes no place.
    ctx.client_circuits.try_admit(ip).map(Some).map_err(|_| DestroyReason::ResourceLimit)
}

/// The handshake message of a CREATE that holds all of it in its first cell.
fn single_cell_create(cell: &Cell) -> Option<&[u8]> {
    let (hdr, bytes) = cell::parse_create(&cell.payload).ok()?;
    (bytes.len() == hdr.total_len).then_some(bytes)
}

impl RelayCtx {
    /// Whether a CREATE's handshake message is among the last `limits.create_replay_memory`
    /// seen (then it is refused: counted, logged at debug); remembers it otherwise.
    fn replayed(&self, msg: &[u8]) -> bool {
        let replay = !self.replays.lock().unwrap_or_else(|e| e.into_inner()).first_time(msg);
        if replay {
            LimitCounters::hit(&LIMITS.create_replays);
            tracing::debug!("CREATE refused: a replayed handshake");
        }
        replay
    }
}

/// Answers a CREATE: reassembles it, runs the server side of ntor, sends CREATED.
async fn create(ctx: &Arc<RelayCtx>, chan: &Channel, first: &Cell, rx: &mut allium_net::cell_queue::CellReceiver) -> Result<(RelayHop, HopKeys, FlowParams), DestroyReason> {
    let (hdr, msg) = circuit::read_create(first, rx).await?;
    test_hooks::record_create(&ctx.id, &first.payload);
    if hdr.htype != HTYPE_NTOR {
        return Err(DestroyReason::Protocol);
    }
    if single_cell_create(first).is_none() && ctx.replayed(&msg) {
        return Err(DestroyReason::Protocol);
    }
    let mut server_ext = Vec::new();
    Extensions::none().encode(&mut server_ext);
    // On a handshake thread: the current and the previous onion key; the client message names
    // which `B` it used.
    let job_ctx = ctx.clone();
    // One turn per source address, relays' like clients'.
    let from = AddrKey::from(chan.peer_addr.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()));
    let out = ctx
        .handshakes
        .run(from, move || {
            let onion = job_ctx.onion_keys();
            let keys: Vec<OnionKeyPair<'_>> = onion.pairs();
            ntor::server_respond(&mut rand::rngs::OsRng, &job_ctx.id, &keys, &msg, &server_ext)
        })
        .await
        .map_err(|e| {
            tracing::debug!("CREATE refused: {e}");
            DestroyReason::ResourceLimit
        })?
        .map_err(|e| {
        tracing::debug!("CREATE refused: {e}");
        DestroyReason::Protocol
    })?;
    // The client's flow-control parameters (critical: refused if out of bounds).
    let ext = Extensions::decode_checked(&mut Reader::new(&out.client_ext), &[EXT_FLOW_PARAMS]).map_err(|_| DestroyReason::Protocol)?;
    let flow = FlowParams::from_extensions(&ext).map_err(|e| {
        tracing::debug!("CREATE refused: {e}");
        DestroyReason::Protocol
    })?;
    for c in cell::created_cells(first.circ_id, &out.reply) {
        chan.send(c).await.map_err(|_| DestroyReason::ChannelClosed)?;
    }
    // The first hop (its previous hop is a client) takes one more early cell: the EXTEND to the
    // second hop (docs/PROTOCOL.md, "RELAY_EARLY").
    let early = if chan.peer.is_none() { EarlyGate::from_client() } else { EarlyGate::from_relay() };
    Ok((RelayHop::new(&out.keys, early), out.keys, flow))
}

#[cfg(test)]
mod tests {
    use super::is_listed_relay_link;

    /// An inbound link counts as a listed relay's only with the link key the consensus lists
    /// for the identity it proved: not when the identity is unlisted, nor with another key,
    /// nor for a peer that proved no key (a client).
    #[test]
    fn only_a_listed_relay_with_its_own_key_gets_a_relay_link() {
        let addr = "127.0.0.1:9001".parse().unwrap();
        assert!(is_listed_relay_link(Some([1; 32]), Some((addr, [1; 32]))));
        assert!(!is_listed_relay_link(Some([2; 32]), Some((addr, [1; 32]))));
        assert!(!is_listed_relay_link(Some([1; 32]), None));
        assert!(!is_listed_relay_link(None, Some((addr, [1; 32]))));
    }
}
