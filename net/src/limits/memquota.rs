//! One memory budget per node for queued cells (THREATS A27, A28).
//!
//! Every cell waiting in a circuit's inbound queue or in a link's writer queue is charged to
//! its node's [`MemQuota`]. When a charge takes the total over the budget, the quota asks its
//! holders (the node's links) what they have queued and since when, and closes the holders of
//! the *oldest* queued data first — a circuit (DESTROY both ways) or a whole link — until the
//! total is back under the low-water mark (90 % of the budget). Data that has waited longest
//! belongs to whoever stopped reading: a sniper or a dead peer, not a busy honest circuit whose
//! cells move. Counted in [`LIMITS`]`.oom_circuits_closed` / `.oom_links_closed`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::counters::{LimitCounters, LIMITS};

/// The cost charged for one queued cell (the cell, its timestamp and queue slot overhead).
pub const CELL_MEM: usize = std::mem::size_of::<allium_proto::cell::Cell>() + 8;

/// A coarse timestamp: milliseconds since this process first asked (wraps after 49 days,
/// far beyond any queued cell's life). Read from the kernel's coarse clock (a few milliseconds'
/// resolution, several times cheaper than a precise read): it is taken for every queued cell.
pub fn stamp() -> u32 {
    static EPOCH: OnceLock<coarsetime::Instant> = OnceLock::new();
    let now = coarsetime::Instant::now();
    now.duration_since(*EPOCH.get_or_init(|| now)).as_millis() as u32
}

/// Something that holds queued data and can give it up by closing.
pub trait MemHolder: Send + Sync {
    /// Appends what this holder has queued.
    fn queued(&self, out: &mut Vec<Queued>);
}

/// Data queued in one place, and how to free it.
pub struct Queued {
    /// [`stamp`] of the oldest data queued there.
    pub since: u32,
    pub bytes: usize,
    pub kind: QueuedKind,
    /// Closes whatever holds the data (a circuit, a link); its memory is released soon after.
    pub close: Box<dyn FnOnce() + Send>,
}

/// What a [`Queued`] entry closes when it is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuedKind {
    /// A circuit, by its id on the link it came in on (named in the log).
    Circuit(u32),
    Link,
}

/// How often a reclaim is logged at warn level at most (the rest at debug, counted).
const RECLAIM_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Circuits a reclaim's log line names, oldest first.
const RECLAIM_LOG_NAMES: usize = 8;

/// A node's budget for queued cells.
pub struct MemQuota {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    holders: Mutex<Vec<Weak<dyn MemHolder>>>,
    reclaiming: Mutex<()>,
    /// Bytes of links the last reclaim closed (released only as their tasks end), and when.
    closing: AtomicUsize,
    closed_at: AtomicU32,
    /// Circuits and links this quota's reclaims closed.
    closed: AtomicUsize,
    /// Tasks in [`MemQuota::wait_until`]: only while there are any does a change notify.
    watchers: AtomicUsize,
    /// Reclaims logged at warn level, at most once a minute.
    reported: Mutex<crate::log_rate::RateLimit>,
    changed: tokio::sync::Notify,
}

/// How long bytes of closed links count as on their way out (their tasks end within it).
const CLOSING_GRACE_MS: u32 = 500;

impl MemQuota {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemQuota {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            holders: Mutex::new(Vec::new()),
            reclaiming: Mutex::new(()),
            closing: AtomicUsize::new(0),
            closed_at: AtomicU32::new(0),
            closed: AtomicUsize::new(0),
            watchers: AtomicUsize::new(0),
            reported: Mutex::new(crate::log_rate::RateLimit::new(RECLAIM_LOG_EVERY)),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// The default budget (`limits.max_queued_mib`'s default), for nodes and tools without a
    /// `[limits]` section.
    pub fn default_budget() -> Arc<Self> {
        Self::new(super::LimitsConfig::default().max_queued_bytes())
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        // SeqCst (a plain load on x86), as are the updates and the watcher count: a waiter
        // that registers and then reads `used` and a charge that updates `used` and then
        // reads the watcher count cannot both miss each other.
        self.used.load(Ordering::SeqCst)
    }

    /// The most ever charged at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Circuits and links closed so far because this quota was over budget.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// Waits until `done` holds for this quota, checking it again each time a charge, release
    /// or reclaim changes the quota (for tests and tools that watch a node's memory; costs the
    /// data path one atomic load per charge when nobody waits).
    pub async fn wait_until(&self, done: impl Fn(&MemQuota) -> bool) {
        struct Watching<'a>(&'a AtomicUsize);
        impl Drop for Watching<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.watchers.fetch_add(1, Ordering::SeqCst);
        let _watching = Watching(&self.watchers);
        loop {
            // Registered before the check: a change between check and wait is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    /// Wakes [`MemQuota::wait_until`], if anyone waits.
    fn notify(&self) {
        if self.watchers.load(Ordering::SeqCst) != 0 {
            self.changed.notify_waiters();
        }
    }

    /// Registers a holder the quota may close when it is over budget (kept weakly).
    pub fn register(&self, h: Weak<dyn MemHolder>) {
        let mut hs = self.holders.lock().expect("quota lock");
        if hs.len() >= 64 && hs.len().is_power_of_two() {
            hs.retain(|w| w.strong_count() > 0);
        }
        hs.push(h);
    }

    /// Charges `bytes`; over budget, closes the holders of the oldest data first. Call with no
    /// queue or circuit-table lock held (reclaiming takes them).
    pub fn charge(&self, bytes: usize) {
        let now = self.used.fetch_add(bytes, Ordering::SeqCst).wrapping_add(bytes);
        if now > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        if now > self.limit {
            self.reclaim();
        }
        self.notify();
    }

    /// Gives back `bytes` charged earlier.
    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
        self.notify();
    }

    fn reclaim(&self) {
        // One reclaim at a time; a charge that finds one running leaves the work to it.
        let Ok(_one) = self.reclaiming.try_lock() else { return };
        // Links closed by the last reclaim give their bytes back as their tasks end: for a
        // moment they are not counted, or every charge meanwhile would close more.
        let closing = if stamp().wrapping_sub(self.closed_at.load(Ordering::Relaxed)) < CLOSING_GRACE_MS { self.closing.load(Ordering::Relaxed) } else { 0 };
        let used = self.used().saturating_sub(closing);
        if used <= self.limit {
            return;
        }
        let holders: Vec<Arc<dyn MemHolder>> = {
            let mut hs = self.holders.lock().expect("quota lock");
            hs.retain(|w| w.strong_count() > 0);
            hs.iter().filter_map(Weak::upgrade).collect()
        };
        let mut all = Vec::new();
        for h in &holders {
            h.queued(&mut all);
        }
        let low_water = self.limit / 10 * 9;
        let Reclaimed { circuits, links, freed, oldest, link_bytes, named } = close_oldest(all, used.saturating_sub(low_water));
        self.closed.fetch_add(circuits + links, Ordering::SeqCst);
        self.closing.store(link_bytes, Ordering::Relaxed);
        self.closed_at.store(stamp(), Ordering::Relaxed);
        let age_ms = stamp().wrapping_sub(oldest);
        // Circuit ids are local to a link: they name circuits to the operator, not to whom they belong.
        let names = named.iter().map(|id| format!("{id:#010x}")).collect::<Vec<_>>().join(", ");
        let what = format!(
            "memory over budget ({used} of {} bytes queued): closed {circuits} circuits and {links} links holding {freed} bytes, the oldest queued {age_ms} ms ago; oldest circuits closed: [{names}]",
            self.limit
        );
        match self.reported.lock().expect("quota lock").check(std::time::Instant::now()) {
            Some(0) => tracing::warn!("{what}"),
            Some(n) => tracing::warn!("{what} ({n} earlier reclaims logged at debug level)"),
            None => tracing::debug!("{what}"),
        }
    }
}

/// What one reclaim closed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reclaimed {
    circuits: usize,
    links: usize,
    freed: usize,
    /// [`stamp`] of the oldest data queued.
    oldest: u32,
    /// Bytes of the links closed.
    link_bytes: usize,
    /// The first [`RECLAIM_LOG_NAMES`] circuits closed (their ids), oldest first.
    named: Vec<u32>,
}

/// Closes entries oldest first until `need` bytes are freed.
fn close_oldest(mut all: Vec<Queued>, need: usize) -> Reclaimed {
    let now = stamp();
    // Oldest first: the largest age (timestamps wrap, so compare ages, not stamps).
    all.sort_by_key(|q| std::cmp::Reverse(now.wrapping_sub(q.since)));
    let mut r = Reclaimed { oldest: all.first().map(|q| q.since).unwrap_or(now), ..Reclaimed::default() };
    for q in all {
        if r.freed >= need {
            break;
        }
        r.freed += q.bytes;
        match q.kind {
            QueuedKind::Circuit(id) => {
                r.circuits += 1;
                if r.named.len() < RECLAIM_LOG_NAMES {
                    r.named.push(id);
                }
                LimitCounters::hit(&LIMITS.oom_circuits_closed);
            }
            QueuedKind::Link => {
                r.links += 1;
                r.link_bytes += q.bytes;
                LimitCounters::hit(&LIMITS.oom_links_closed);
            }
        }
        (q.close)();
    }
    r
}

/// Memory one circuit holds outside its cell queue (stream data waiting for the circuit
/// window, or for the application or destination to take it), charged to the quota while it
/// is held. Offered for reclaiming with the circuit's queue.
pub struct HeldMem {
    quota: Arc<MemQuota>,
    bytes: AtomicUsize,
    /// [`stamp`] of when `bytes` last went from zero to more.
    since: AtomicU32,
    reclaimed: AtomicBool,
}

/// Bytes held until this is dropped.
pub struct Held {
    mem: Arc<HeldMem>,
    bytes: usize,
}

impl HeldMem {
    pub fn new(quota: Arc<MemQuota>) -> Arc<Self> {
        Arc::new(HeldMem { quota, bytes: AtomicUsize::new(0), since: AtomicU32::new(0), reclaimed: AtomicBool::new(false) })
    }

    /// Charges `bytes` until the returned token is dropped.
    pub fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        if self.bytes.fetch_add(bytes, Ordering::Relaxed) == 0 {
            self.since.store(stamp(), Ordering::Relaxed);
        }
        self.quota.charge(bytes);
        Held { mem: self.clone(), bytes }
    }

    /// When the held bytes started being held, and how many there are, if any.
    pub fn held(&self) -> Option<(u32, usize)> {
        let bytes = self.bytes.load(Ordering::Relaxed);
        (bytes > 0).then(|| (self.since.load(Ordering::Relaxed), bytes))
    }

    /// Marks the owner as closed by the quota: whatever it holds should be dropped at once.
    pub fn set_reclaimed(&self) {
        self.reclaimed.store(true, Ordering::Relaxed);
    }

    pub fn reclaimed(&self) -> bool {
        self.reclaimed.load(Ordering::Relaxed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.mem.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        self.mem.quota.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds fixed entries; records which were closed.
    struct Fake {
        entries: Vec<(u32, usize)>,
        closed: Arc<Mutex<Vec<u32>>>,
        quota: Arc<MemQuota>,
    }

    impl MemHolder for Fake {
        fn queued(&self, out: &mut Vec<Queued>) {
            for &(since, bytes) in &self.entries {
                if self.closed.lock().unwrap().contains(&since) {
                    continue;
                }
                let closed = self.closed.clone();
                let quota = self.quota.clone();
                out.push(Queued {
                    since,
                    bytes,
                    kind: QueuedKind::Circuit(since),
                    close: Box::new(move || {
                        closed.lock().unwrap().push(since);
                        quota.release(bytes);
                    }),
                });
            }
        }
    }

    #[test]
    fn over_budget_the_oldest_are_closed_until_under_low_water() {
        let quota = MemQuota::new(1000);
        let closed = Arc::new(Mutex::new(Vec::new()));
        let ago = |ms: u32| stamp().wrapping_sub(ms);
        let (s9, s7, s5, s1) = (ago(9000), ago(7000), ago(5000), ago(1000));
        let fake: Arc<dyn MemHolder> = Arc::new(Fake { entries: vec![(s5, 300), (s9, 300), (s1, 300), (s7, 300)], closed: closed.clone(), quota: quota.clone() });
        quota.register(Arc::downgrade(&fake));
        quota.charge(900);
        assert!(closed.lock().unwrap().is_empty(), "under budget nothing is closed");
        let before = LIMITS.oom_circuits_closed.load(Ordering::Relaxed);
        quota.charge(300);
        // 1,200 charged, low water 900: 300 must go, then the oldest single entry suffices.
        assert_eq!(*closed.lock().unwrap(), vec![s9]);
        assert_eq!(quota.used(), 900);
        assert!(quota.peak() >= 1200);
        assert!(LIMITS.oom_circuits_closed.load(Ordering::Relaxed) > before);
        quota.charge(700);
        assert_eq!(*closed.lock().unwrap(), vec![s9, s7, s5, s1], "oldest first, until under 900");
    }

    /// THREATS A27: a reclaim is logged at warn level (at most once a minute) with the ids of the
    /// circuits it closed, oldest first; later ones within the minute at debug level.
    #[test]
    fn a27_a_reclaim_logs_the_oldest_circuits_it_closed() {
        let log = crate::log_capture::LogCapture::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).with_max_level(tracing::Level::WARN).finish();
        let quota = MemQuota::new(1000);
        let ago = |ms: u32| stamp().wrapping_sub(ms);
        let (s9, s7, s1) = (ago(9000), ago(7000), ago(1000));
        let fake: Arc<dyn MemHolder> = Arc::new(Fake { entries: vec![(s1, 400), (s9, 400), (s7, 400)], closed: Default::default(), quota: quota.clone() });
        quota.register(Arc::downgrade(&fake));
        tracing::subscriber::with_default(subscriber, || {
            // 1,600 queued, low water 900: the two oldest (800 bytes) go.
            quota.charge(1600);
            // Over budget again within the minute: not logged at warn.
            quota.charge(1000);
        });
        let text = log.text();
        assert_eq!(text.matches("memory over budget").count(), 1, "{text}");
        assert!(text.contains("WARN"), "{text}");
        // The fake names each circuit by its stamp: the two oldest went, oldest first.
        assert!(text.contains(&format!("oldest circuits closed: [{s9:#010x}, {s7:#010x}]")), "{text}");
    }

    /// A closed link gives its bytes back only when its tasks end: charges meanwhile do not
    /// close more (they would, counting the link's bytes as still held).
    #[test]
    fn bytes_of_a_closing_link_are_not_reclaimed_twice() {
        struct Links(Mutex<Vec<(u32, usize)>>, Arc<Mutex<usize>>);
        impl MemHolder for Links {
            fn queued(&self, out: &mut Vec<Queued>) {
                for &(since, bytes) in self.0.lock().unwrap().iter() {
                    let closed = self.1.clone();
                    out.push(Queued { since, bytes, kind: QueuedKind::Link, close: Box::new(move || *closed.lock().unwrap() += 1) });
                }
            }
        }
        let quota = MemQuota::new(1000);
        let closed = Arc::new(Mutex::new(0));
        let h: Arc<dyn MemHolder> = Arc::new(Links(Mutex::new(vec![(stamp().wrapping_sub(5000), 600), (stamp().wrapping_sub(1000), 600)]), closed.clone()));
        quota.register(Arc::downgrade(&h));
        quota.charge(1200);
        assert_eq!(*closed.lock().unwrap(), 1, "the oldest link");
        quota.charge(10);
        assert_eq!(*closed.lock().unwrap(), 1, "its 600 bytes are on their way out");
    }

    #[test]
    fn held_bytes_are_charged_until_dropped() {
        let quota = MemQuota::new(1 << 20);
        let mem = HeldMem::new(quota.clone());
        let a = mem.hold(100);
        let b = mem.hold(50);
        assert_eq!((quota.used(), mem.held().map(|h| h.1)), (150, Some(150)));
        drop(a);
        drop(b);
        assert_eq!((quota.used(), mem.held()), (0, None));
    }

    #[test]
    fn dropped_holders_are_forgotten() {
        let quota = MemQuota::new(10);
        let hit = Arc::new(AtomicBool::new(false));
        struct Never(Arc<AtomicBool>);
        impl MemHolder for Never {
            fn queued(&self, _: &mut Vec<Queued>) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let h: Arc<dyn MemHolder> = Arc::new(Never(hit.clone()));
        quota.register(Arc::downgrade(&h));
        drop(h);
        quota.charge(20);
        assert!(!hit.load(Ordering::Relaxed));
        quota.release(20);
        assert_eq!(quota.used(), 0);
    }
}
