//! CREATE handshakes off the forwarding path (THREATS A25): a few dedicated threads take
//! handshakes from a bounded queue. A full queue refuses a CREATE at once, and a handshake
//! that waited longer than the delay cutoff is refused instead of run, so a flood of CREATEs
//! costs the relay at most its handshake threads and never delays cells on open circuits.
//! Replays of one CREATE are refused before any public-key work ([`ReplayFilter`]).

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allium_net::limits::counters::{LimitCounters, LIMITS};
use tokio::sync::oneshot;

/// Why a handshake was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    #[error("the handshake queue is full")]
    QueueFull,
    #[error("the handshake waited past the queue-delay cutoff")]
    Delay,
}

type Job = Box<dyn FnOnce(Instant) + Send>;

/// The handshake threads and their queue.
pub struct HandshakePool {
    tx: SyncSender<(Instant, Job)>,
}

impl HandshakePool {
    /// Starts `workers` threads sharing a queue of `queue` handshakes; one that waited longer
    /// than `cutoff` is refused. The threads end when the pool is dropped.
    pub fn new(workers: usize, queue: usize, cutoff: Duration) -> Self {
        let (tx, rx) = sync_channel::<(Instant, Job)>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("handshake-{i}")).spawn(move || worker(&rx, cutoff));
            if let Err(e) = spawned {
                tracing::warn!("cannot start a handshake thread: {e}");
            }
        }
        HandshakePool { tx }
    }

    /// Runs `f` on a handshake thread, unless the queue is full or `f` waited past the cutoff.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Overloaded> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |deadline_passed_at: Instant| {
            let r = if Instant::now() > deadline_passed_at { Err(Overloaded::Delay) } else { Ok(f()) };
            if r.is_ok() {
                allium_net::metrics::METRICS.handshakes.inc();
            }
            let _ = done.send(r);
        });
        match self.tx.try_send((Instant::now(), job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                LimitCounters::hit(&LIMITS.handshake_queue_full);
                return Err(Overloaded::QueueFull);
            }
        }
        let r = result.await.map_err(|_| Overloaded::QueueFull)?;
        if r.is_err() {
            LimitCounters::hit(&LIMITS.handshake_queue_delay);
        }
        r
    }
}

fn worker(rx: &Mutex<Receiver<(Instant, Job)>>, cutoff: Duration) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((queued, job)) = next else { return };
        allium_net::metrics::METRICS.handshake_queue_delay.observe(queued.elapsed());
        job(queued + cutoff);
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
        let on_tokio = pool.run(|| tokio::runtime::Handle::try_current().is_ok()).await.unwrap();
        assert!(!on_tokio, "a handshake ran on a runtime thread");
        // The one worker busy, the queue of one filled: the next is refused at once.
        let release = occupy(&pool);
        let mut queued = Box::pin(pool.run(|| 1));
        assert!(futures_poll_once(&mut queued).await.is_none());
        let before = LIMITS.handshake_queue_full.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(pool.run(|| 3).await, Err(Overloaded::QueueFull));
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
        let mut late = Box::pin(pool.run(move || r2.store(true, std::sync::atomic::Ordering::SeqCst)));
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

    /// Keeps the (single) worker of `pool` busy until the returned sender sends.
    fn occupy(pool: &HandshakePool) -> std::sync::mpsc::Sender<()> {
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let job: Job = Box::new(move |_| {
            started_tx.send(()).unwrap();
            let _ = gate.recv();
        });
        assert!(pool.tx.try_send((Instant::now(), job)).is_ok());
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
