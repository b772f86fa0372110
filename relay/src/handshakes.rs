//! CREATE handshakes off the forwarding path (THREATS A25): a few dedicated threads take
//! handshakes from a bounded queue that
//! serves first the source address served least in the last second or two ([`FairQueue`]). A
//! full queue refuses a CREATE at once (or, from an address with few queued, displaces the
//! newest of the address with most), and a handshake that waited longer than the delay cutoff
//! is refused instead of run, so a flood of CREATEs costs the relay at most its handshake
//! threads, never delays cells on open circuits, and barely delays the CREATE of an address
//! that asks rarely (an honest client): it waits for the handshakes already running.
//! Replays of one CREATE are refused before any public-key work ([`ReplayFilter`]).

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use allium_net::limits::conn::AddrKey;
use allium_net::limits::counters::{LimitCounters, LIMITS};
use tokio::sync::oneshot;

use crate::fair_queue::{FairQueue, Pushed};

/// Why a handshake was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    #[error("the handshake queue is full")]
    QueueFull,
    #[error("the handshake waited past the queue-delay cutoff")]
    Delay,
}

/// A queued handshake: run with `Ok`, or told why it was not.
type Job = Box<dyn FnOnce(Result<(), Overloaded>) + Send>;

struct Queued {
    at: Instant,
    job: Job,
}

struct State {
    queue: FairQueue<AddrKey, Queued>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handshake threads and their queue. The queue serves first the address the CREATE came
/// from that was served least lately ([`FairQueue`]): a client's CREATE goes before those of
/// addresses that flood, however many they have queued.
pub struct HandshakePool {
    shared: Arc<Shared>,
}

impl HandshakePool {
    /// Starts `workers` threads sharing a queue of `queue` handshakes; one that waited longer
    /// than `cutoff` is refused. The threads end when the pool is dropped.
    pub fn new(workers: usize, queue: usize, cutoff: Duration) -> Self {
        let shared = Arc::new(Shared { state: Mutex::new(State { queue: FairQueue::new(queue), closed: false }), ready: Condvar::new() });
        for i in 0..workers.max(1) {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new().name(format!("handshake-{i}")).spawn(move || worker(&shared, cutoff));
            if let Err(e) = spawned {
                tracing::warn!("cannot start a handshake thread: {e}");
            }
        }
        HandshakePool { shared }
    }

    /// Runs `f` (a CREATE from `from`) on a handshake thread, unless the queue is full, it is
    /// displaced by another address's handshake, or it waited past the cutoff.
    pub async fn run<T: Send + 'static>(&self, from: AddrKey, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Overloaded> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |admitted| {
            let r = admitted.map(|()| f());
            if r.is_ok() {
                allium_net::metrics::METRICS.handshakes.inc();
            }
            let _ = done.send(r);
        });
        let pushed = self.shared.lock().queue.push(from, Queued { at: Instant::now(), job });
        match pushed {
            Pushed::Queued => self.shared.ready.notify_one(),
            Pushed::Displaced(other) => {
                (other.job)(Err(Overloaded::QueueFull));
                self.shared.ready.notify_one();
            }
            Pushed::Refused(_) => {
                LimitCounters::hit(&LIMITS.handshake_queue_full);
                return Err(Overloaded::QueueFull);
            }
        }
        let r = result.await.map_err(|_| Overloaded::QueueFull)?;
        match r {
            Err(Overloaded::Delay) => LimitCounters::hit(&LIMITS.handshake_queue_delay),
            Err(Overloaded::QueueFull) => LimitCounters::hit(&LIMITS.handshake_queue_full),
            Ok(_) => {}
        }
        r
    }
}

impl Drop for HandshakePool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

fn worker(shared: &Shared, cutoff: Duration) {
    loop {
        let next = {
            let mut state = shared.lock();
            loop {
                if state.closed {
                    return;
                }
                if let Some(q) = state.queue.pop(Instant::now()) {
                    break q;
                }
                state = shared.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let waited = next.at.elapsed();
        allium_net::metrics::METRICS.handshake_queue_delay.observe(waited);
        (next.job)(if waited > cutoff { Err(Overloaded::Delay) } else { Ok(()) });
    }
}

/// Remembers the last `capacity` CREATE handshake messages (by a keyed hash), so a replayed
/// one is refused without public-key work. An honest client's message holds a fresh
/// ephemeral key, so it never repeats.
pub struct ReplayFilter {
    hasher: RandomState,
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl ReplayFilter {
    pub fn new(capacity: usize) -> Self {
        ReplayFilter { hasher: RandomState::new(), seen: HashSet::new(), order: VecDeque::new(), capacity }
    }

    /// True the first time `msg` is seen (within the last `capacity` messages).
    pub fn first_time(&mut self, msg: &[u8]) -> bool {
        let h = self.hasher.hash_one(msg);
        if !self.seen.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshakes_run_off_the_runtime_and_a_full_queue_refuses_at_once() {
        let pool = HandshakePool::new(1, 1, Duration::from_secs(60));
        let on_tokio = pool.run(addr(1), || tokio::runtime::Handle::try_current().is_ok()).await.unwrap();
        assert!(!on_tokio, "a handshake ran on a runtime thread");
        // The one worker busy, the queue of one filled: the next is refused at once.
        let release = occupy(&pool);
        let mut queued = Box::pin(pool.run(addr(1), || 1));
        assert!(futures_poll_once(&mut queued).await.is_none());
        let before = LIMITS.handshake_queue_full.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(pool.run(addr(1), || 3).await, Err(Overloaded::QueueFull));
        assert!(LIMITS.handshake_queue_full.load(std::sync::atomic::Ordering::Relaxed) > before, "counted");
        release.send(()).unwrap();
        assert_eq!(queued.await, Ok(1));
    }

    #[tokio::test]
    async fn a_handshake_that_waited_past_the_cutoff_is_refused_not_run() {
        let pool = HandshakePool::new(1, 8, Duration::from_millis(1));
        let release = occupy(&pool);
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r2 = ran.clone();
        let mut late = Box::pin(pool.run(addr(1), move || r2.store(true, std::sync::atomic::Ordering::SeqCst)));
        assert!(futures_poll_once(&mut late).await.is_none());
        std::thread::sleep(Duration::from_millis(20));
        release.send(()).unwrap();
        assert_eq!(late.await, Err(Overloaded::Delay));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst), "a late handshake must not be run");
    }

    #[test]
    fn a_replayed_message_is_refused_and_the_filter_is_bounded() {
        let mut f = ReplayFilter::new(3);
        assert!(f.first_time(b"a"));
        assert!(!f.first_time(b"a"));
        for m in [b"b", b"c", b"d"] {
            assert!(f.first_time(m));
        }
        assert!(f.first_time(b"a"), "forgotten after `capacity` newer messages");
        assert!(f.seen.len() <= 3 && f.order.len() <= 3);
    }

    #[tokio::test]
    async fn another_address_displaces_a_queued_flood_and_is_served_next() {
        let pool = HandshakePool::new(1, 4, Duration::from_secs(60));
        let release = occupy(&pool);
        let mut flood: Vec<_> = (0..4).map(|i| Box::pin(pool.run(addr(1), move || i))).collect();
        for f in flood.iter_mut() {
            assert!(futures_poll_once(f).await.is_none());
        }
        let before = LIMITS.handshake_queue_full.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(pool.run(addr(1), || 9).await, Err(Overloaded::QueueFull), "the flooding address is refused when full");
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        let mut honest = Box::pin(pool.run(addr(2), move || o.lock().unwrap().push("honest")));
        assert!(futures_poll_once(&mut honest).await.is_none());
        assert_eq!(flood.pop().unwrap().await, Err(Overloaded::QueueFull), "the flood's newest gave way");
        assert!(LIMITS.handshake_queue_full.load(std::sync::atomic::Ordering::Relaxed) >= before + 2, "both counted");
        release.send(()).unwrap();
        let first = flood.remove(0);
        assert_eq!(first.await, Ok(0));
        honest.await.unwrap();
        for (i, f) in flood.into_iter().enumerate() {
            assert_eq!(f.await, Ok(i as i32 + 1));
        }
        assert_eq!(*order.lock().unwrap(), vec!["honest"]);
    }

    fn addr(n: u8) -> AddrKey {
        AddrKey::from(std::net::IpAddr::from([10, 0, 0, n]))
    }

    /// Keeps the (single) worker of `pool` busy until the returned sender sends.
    fn occupy(pool: &HandshakePool) -> std::sync::mpsc::Sender<()> {
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let job: Job = Box::new(move |_| {
            started_tx.send(()).unwrap();
            let _ = gate.recv();
        });
        assert!(matches!(pool.shared.lock().queue.push(addr(99), Queued { at: Instant::now(), job }), Pushed::Queued));
        pool.shared.ready.notify_one();
        started.recv().unwrap();
        release
    }

    /// Polls a future once; `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        use std::task::Poll;
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}
