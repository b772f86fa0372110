//! A link's outbound cell queue: many producers (the circuits on the link), one consumer (the
//! link's writer), a cap that makes producers wait (backpressure), and storage that exists only
//! while cells wait.
//!
//! Cells are stored inline, not one allocation each (a per-cell box cost the forwarding path
//! some 7 % of its throughput), and nothing is allocated when the link opens: a channel that
//! preallocates a block of slots would cost every link, idle or not, kilobytes (THREATS A24).
//! The consumer takes every waiting cell in one swap of two buffers, so a busy link locks the
//! queue once per batch, not once per cell; a drained buffer that held a burst is freed rather
//! than handed back (one buffer at a time holds a burst), and [`WriterQueueRx::free_idle`] drops
//! both.
//!
//! The consumer's `recv` is cancel-safe (a cell is taken only when it is returned), so it can
//! sit in a `select!`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore, TryAcquireError};

/// Places taken by the consumer are handed back to producers in groups of this many (each
/// hand-back takes the semaphore's lock), and whenever the consumer is about to wait.
const RELEASE_EVERY: usize = 64;

/// Storage (in items) a drained buffer keeps when it goes back to the producers; a larger one
/// is freed, so that a burst is held by one buffer at a time, not by both.
const KEEP_DRAINED: usize = 64;

struct Inner<T> {
    state: Mutex<State<T>>,
    /// One permit per free place.
    space: Semaphore,
    /// Wakes the consumer: an item arrived or the last producer went away.
    ready: Notify,
    senders: AtomicUsize,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A producer's end; clones share the queue.
pub struct WriterQueueTx<T>(Arc<Inner<T>>);

/// The consumer's end.
pub struct WriterQueueRx<T> {
    inner: Arc<Inner<T>>,
    /// Items taken from the shared buffer in the last swap and not yet returned.
    local: VecDeque<T>,
    /// Places returned by `recv` and not yet handed back to producers.
    unreleased: usize,
}

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// `cap` items are waiting (only from `try_send`).
    Full,
    /// The consumer closed the queue.
    Closed,
}

/// A queue of at most `cap` items.
pub fn writer_queue<T>(cap: usize) -> (WriterQueueTx<T>, WriterQueueRx<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State { items: VecDeque::new(), closed: false }),
        space: Semaphore::new(cap),
        ready: Notify::new(),
        senders: AtomicUsize::new(1),
    });
    (WriterQueueTx(inner.clone()), WriterQueueRx { inner, local: VecDeque::new(), unreleased: 0 })
}

impl<T> WriterQueueTx<T> {
    /// Queues `item`, waiting while the queue is full.
    pub async fn send(&self, item: T) -> Result<(), SendError> {
        self.0.space.acquire().await.map_err(|_| SendError::Closed)?.forget();
        self.push(item).map_err(|_| SendError::Closed)
    }

    /// Queues `item` without waiting; gives it back if it was not queued.
    pub fn try_send(&self, item: T) -> Result<(), (SendError, T)> {
        match self.0.space.try_acquire() {
            Ok(p) => p.forget(),
            Err(TryAcquireError::NoPermits) => return Err((SendError::Full, item)),
            Err(TryAcquireError::Closed) => return Err((SendError::Closed, item)),
        }
        self.push(item).map_err(|item| (SendError::Closed, item))
    }

    /// True once the consumer closed the queue or went away.
    pub fn is_closed(&self) -> bool {
        self.0.space.is_closed()
    }

    fn push(&self, item: T) -> Result<(), T> {
        {
            let mut s = self.0.state.lock().expect("writer queue lock");
            // Checked under the lock: an item pushed after `close` would never be taken.
            if s.closed {
                return Err(item);
            }
            s.items.push_back(item);
        }
        self.0.ready.notify_one();
        Ok(())
    }
}

impl<T> Clone for WriterQueueTx<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        WriterQueueTx(self.0.clone())
    }
}

impl<T> Drop for WriterQueueTx<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ready.notify_one();
        }
    }
}

impl<T> WriterQueueRx<T> {
    /// The next item without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        if self.local.is_empty() {
            if self.local.capacity() > KEEP_DRAINED {
                // A burst's storage goes, not to the producers: only one buffer holds a burst.
                self.local = VecDeque::new();
            }
            let mut s = self.inner.state.lock().expect("writer queue lock");
            std::mem::swap(&mut s.items, &mut self.local);
        }
        let item = self.local.pop_front()?;
        self.unreleased += 1;
        if self.unreleased >= RELEASE_EVERY {
            self.release();
        }
        Some(item)
    }

    /// Waits for the next item; `None` once the queue is closed, or every producer has gone and
    /// every item was taken.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            self.release();
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Checked again after registering: an item pushed in between has notified us.
            {
                let s = self.inner.state.lock().expect("writer queue lock");
                if !s.items.is_empty() {
                    continue;
                }
                if s.closed || self.inner.senders.load(Ordering::Acquire) == 0 {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn release(&mut self) {
        if self.unreleased > 0 {
            self.inner.space.add_permits(std::mem::take(&mut self.unreleased));
        }
    }

    /// Refuses further items (waiting producers get [`SendError::Closed`]) and returns those
    /// still queued.
    pub fn close(&mut self) -> Vec<T> {
        let mut left: Vec<T> = self.local.drain(..).collect();
        {
            let mut s = self.inner.state.lock().expect("writer queue lock");
            s.closed = true;
            left.extend(std::mem::take(&mut s.items));
        }
        self.inner.space.close();
        left
    }

    /// Frees the queue's storage if nothing waits (a link idle for a while holds none).
    pub fn free_idle(&mut self) {
        if !self.local.is_empty() {
            return;
        }
        self.local = VecDeque::new();
        let mut s = self.inner.state.lock().expect("writer queue lock");
        if s.items.is_empty() {
            s.items = VecDeque::new();
        }
    }

    /// Bytes of storage the queue holds.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        let shared = self.inner.state.lock().expect("writer queue lock").items.capacity();
        (self.local.capacity() + shared) * std::mem::size_of::<T>()
    }
}

impl<T> Drop for WriterQueueRx<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_arrive_in_order_and_a_full_queue_makes_senders_wait() {
        let (tx, mut rx) = writer_queue::<u32>(3);
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(9), Err((SendError::Full, 9)), "a full queue gives the item back");
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(3).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a sender waits while the queue is full");
        for i in 0..4 {
            assert_eq!(rx.recv().await, Some(i), "the waiting sender gets a place once the consumer waits");
        }
        waiting.await.unwrap().unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, None, "the end is seen once every sender has gone");
    }

    #[tokio::test]
    async fn taken_places_are_handed_back_while_the_consumer_keeps_taking() {
        let (tx, mut rx) = writer_queue::<u32>(RELEASE_EVERY * 2);
        for i in 0..RELEASE_EVERY as u32 * 2 {
            tx.try_send(i).unwrap();
        }
        for _ in 0..RELEASE_EVERY {
            rx.try_recv().unwrap();
        }
        // The consumer has not waited, yet the places it took are free again.
        for i in 0..RELEASE_EVERY as u32 {
            tx.try_send(1000 + i).unwrap();
        }
        assert_eq!(tx.try_send(0), Err((SendError::Full, 0)));
    }

    #[tokio::test]
    async fn closing_refuses_senders_and_returns_what_waited() {
        let (tx, mut rx) = writer_queue::<u32>(1);
        tx.try_send(1).unwrap();
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(2).await });
        tokio::task::yield_now().await;
        assert_eq!(rx.close(), vec![1]);
        assert_eq!(waiting.await.unwrap(), Err(SendError::Closed), "a waiting sender is released");
        assert_eq!(tx.try_send(3), Err((SendError::Closed, 3)));
        assert_eq!(rx.recv().await, None, "a closed queue ends");
    }

    #[tokio::test]
    async fn an_idle_queue_holds_no_storage() {
        let (tx, mut rx) = writer_queue::<[u8; 512]>(2048);
        assert_eq!(rx.capacity(), 0, "nothing allocated when the queue is made");
        // Fewer than KEEP_DRAINED: the drained buffer is kept for the next cells.
        for _ in 0..KEEP_DRAINED - 10 {
            tx.try_send([0; 512]).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert!(rx.capacity() > 0);
        rx.free_idle();
        assert_eq!(rx.capacity(), 0, "a drained queue frees its storage");
    }

    /// Only one of the two buffers holds a burst: the consumer's, once drained, is freed rather
    /// than handed back to the producers with the burst's capacity.
    #[tokio::test]
    async fn a_drained_burst_leaves_no_storage_behind() {
        let (tx, mut rx) = writer_queue::<[u8; 512]>(2048);
        for _ in 0..1000 {
            tx.try_send([0; 512]).unwrap();
        }
        let mut n = 0;
        while rx.try_recv().is_some() {
            n += 1;
        }
        assert_eq!(n, 1000);
        assert!(rx.capacity() <= KEEP_DRAINED * 512, "{} bytes kept after the burst", rx.capacity());
        tx.try_send([1; 512]).unwrap();
        assert_eq!(rx.try_recv().map(|b| b[0]), Some(1), "the queue still works");
    }

    #[tokio::test]
    async fn recv_can_be_cancelled_without_losing_an_item() {
        let (tx, mut rx) = writer_queue::<u32>(8);
        assert!(tokio::time::timeout(Duration::from_millis(10), rx.recv()).await.is_err());
        tx.try_send(1).unwrap();
        assert_eq!(rx.recv().await, Some(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_item_or_wakeup_is_lost_between_threads() {
        let (tx, mut rx) = writer_queue::<u32>(100);
        let producers: Vec<_> = (0..2u32)
            .map(|p| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..20_000u32 {
                        tx.send(p << 16 | i).await.unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0u32; 2];
        while let Some(v) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("a wakeup was lost") {
            let p = (v >> 16) as usize;
            assert_eq!(v & 0xffff, next[p], "each producer's items stay in order");
            next[p] += 1;
        }
        assert_eq!(next, [20_000, 20_000]);
        for p in producers {
            p.await.unwrap();
        }
    }
}
