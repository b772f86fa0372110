//! A circuit's inbound cell queue: one producer (the link's reader), one consumer (the circuit
//! task), a cap, and storage that grows only while cells wait. An idle circuit's queue holds a
//! few dozen bytes, where a channel that preallocates slots would hold kilobytes per circuit
//! (THREATS A23: tens of thousands of circuits must stay cheap).
//!
//! The producer never waits: a full queue is the peer sending more than flow control allows,
//! and the caller destroys the circuit. The consumer's `recv` is cancel-safe (a cell is only
//! taken when it is returned), so it can sit in a `select!`.
//!
//! Every waiting cell is charged to the node's [`MemQuota`], with the time it arrived; over
//! budget the quota may [`CellSender::reclaim`] the queue: its cells are dropped at once and
//! the consumer sees the end, with [`CellReceiver::reclaimed`] telling it why.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use allium_proto::cell::Cell;
use tokio::sync::Notify;

use crate::limits::memquota::{stamp, HeldMem, MemQuota, CELL_MEM};

struct Shared {
    state: Mutex<State>,
    /// Wakes the consumer: a cell arrived or the producer went away.
    ready: Notify,
    quota: Arc<MemQuota>,
    /// What the circuit holds besides its queue (stream data), offered for reclaiming with it.
    held: Arc<HeldMem>,
}

struct State {
    /// Each cell with the [`stamp`] of its arrival.
    cells: VecDeque<(Cell, u32)>,
    cap: usize,
    sender_gone: bool,
    receiver_gone: bool,
    /// The quota closed this queue to free memory.
    reclaimed: bool,
}

impl State {
    /// Drops every queued cell; returns the bytes to release.
    fn clear(&mut self) -> usize {
        let n = self.cells.len();
        self.cells = VecDeque::new();
        n * CELL_MEM
    }
}

/// The producer's end.
pub struct CellSender(Arc<Shared>);

/// The consumer's end.
pub struct CellReceiver(Arc<Shared>);

/// Why a cell was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// `cap` cells are waiting.
    Full,
    /// The consumer has gone (the circuit closed).
    Closed,
}

/// A queue of at most `cap` cells, charged to `quota`.
pub fn cell_queue(cap: usize, quota: Arc<MemQuota>) -> (CellSender, CellReceiver) {
    let state = State { cells: VecDeque::new(), cap, sender_gone: false, receiver_gone: false, reclaimed: false };
    let held = HeldMem::new(quota.clone());
    let shared = Arc::new(Shared { state: Mutex::new(state), ready: Notify::new(), quota, held });
    (CellSender(shared.clone()), CellReceiver(shared))
}

impl CellSender {
    /// Queues `cell` without waiting.
    pub fn try_send(&self, cell: Cell) -> Result<(), QueueError> {
        // Charged before the cell is queued (the consumer releases it once taken), with the
        // lock not held: going over budget may reclaim this very queue.
        self.0.quota.charge(CELL_MEM);
        let refused = {
            let mut s = self.0.state.lock().expect("cell queue lock");
            if s.receiver_gone || s.reclaimed {
                Some(QueueError::Closed)
            } else if s.cells.len() >= s.cap {
                Some(QueueError::Full)
            } else {
                s.cells.push_back((cell, stamp()));
                None
            }
        };
        if let Some(e) = refused {
            self.0.quota.release(CELL_MEM);
            return Err(e);
        }
        self.0.ready.notify_one();
        Ok(())
    }

    /// The [`stamp`] of the oldest data the circuit holds (waiting cells and [`HeldMem`]) and
    /// its bytes, if it holds any.
    pub fn queued(&self) -> Option<(u32, usize)> {
        let cells = {
            let s = self.0.state.lock().expect("cell queue lock");
            s.cells.front().map(|(_, t)| (*t, s.cells.len() * CELL_MEM))
        };
        match (cells, self.0.held.held()) {
            (Some((t1, b1)), Some((t2, b2))) => {
                let now = stamp();
                let oldest = if now.wrapping_sub(t1) >= now.wrapping_sub(t2) { t1 } else { t2 };
                Some((oldest, b1 + b2))
            }
            (a, b) => a.or(b),
        }
    }

    /// Drops every waiting cell and ends the queue: the consumer's `recv` returns `None` and
    /// [`CellReceiver::reclaimed`] is true (the circuit is closed for lack of memory).
    pub fn reclaim(&self) {
        let freed = {
            let mut s = self.0.state.lock().expect("cell queue lock");
            s.reclaimed = true;
            s.clear()
        };
        self.0.held.set_reclaimed();
        self.0.quota.release(freed);
        self.0.ready.notify_one();
    }
}

impl Drop for CellSender {
    fn drop(&mut self) {
        self.0.state.lock().expect("cell queue lock").sender_gone = true;
        self.0.ready.notify_one();
    }
}

impl CellReceiver {
    /// The next cell; `None` once the producer has gone and every queued cell was taken.
    pub async fn recv(&mut self) -> Option<Cell> {
        loop {
            if let Some(c) = self.try_recv() {
                return Some(c);
            }
            {
                let s = self.0.state.lock().expect("cell queue lock");
                // Checked under the lock after the queue was found empty: a cell queued before
                // the producer went away is taken first.
                if !s.cells.is_empty() {
                    continue;
                }
                if s.sender_gone || s.reclaimed {
                    return None;
                }
            }
            // A notification sent after the check above is kept as a permit, so none is lost.
            self.0.ready.notified().await;
        }
    }

    /// The next cell if one is waiting (`None` says nothing about the end: [`Self::recv`] does).
    pub fn try_recv(&mut self) -> Option<Cell> {
        let c = {
            let mut s = self.0.state.lock().expect("cell queue lock");
            let (c, _) = s.cells.pop_front()?;
            if s.cells.is_empty() && s.cells.capacity() > RELEASE_ABOVE {
                // A burst is over: give its storage back.
                s.cells = VecDeque::new();
            }
            c
        };
        self.0.quota.release(CELL_MEM);
        Some(c)
    }

    /// Where the circuit charges data it holds outside this queue (its streams').
    pub fn held_mem(&self) -> Arc<HeldMem> {
        self.0.held.clone()
    }

    /// True when the queue ended because the node's memory budget reclaimed it.
    pub fn reclaimed(&self) -> bool {
        self.0.state.lock().expect("cell queue lock").reclaimed
    }
}

/// Queue storage (in cells) kept after the queue drains; a larger one is released.
const RELEASE_ABOVE: usize = 64;

impl Drop for CellReceiver {
    fn drop(&mut self) {
        let freed = {
            let mut s = self.0.state.lock().expect("cell queue lock");
            s.receiver_gone = true;
            s.clear()
        };
        self.0.quota.release(freed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::cell::CellCmd;

    fn quota() -> Arc<MemQuota> {
        MemQuota::default_budget()
    }

    fn cell(i: u32) -> Cell {
        Cell { circ_id: i, cmd: CellCmd::Relay, payload: [0; allium_proto::cell::PAYLOAD_LEN] }
    }

    #[tokio::test]
    async fn cells_arrive_in_order_up_to_the_cap_and_the_end_is_seen() {
        let (tx, mut rx) = cell_queue(3, quota());
        for i in 0..3 {
            tx.try_send(cell(i)).unwrap();
        }
        assert_eq!(tx.try_send(cell(9)), Err(QueueError::Full));
        for i in 0..3 {
            assert_eq!(rx.recv().await.unwrap().circ_id, i);
        }
        tx.try_send(cell(3)).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.unwrap().circ_id, 3, "queued cells outlive the sender");
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_closed_receiver_refuses_and_a_waiting_one_is_woken() {
        let (tx, mut rx) = cell_queue(8, quota());
        let waiter = tokio::spawn(async move {
            let c = rx.recv().await.map(|c| c.circ_id);
            (c, rx)
        });
        tokio::task::yield_now().await;
        tx.try_send(cell(7)).unwrap();
        let (got, rx) = waiter.await.unwrap();
        assert_eq!(got, Some(7));
        drop(rx);
        assert_eq!(tx.try_send(cell(8)), Err(QueueError::Closed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wakeup_is_lost_between_threads() {
        let (tx, mut rx) = cell_queue(100_000, quota());
        let producer = std::thread::spawn(move || {
            for i in 0..50_000 {
                tx.try_send(cell(i)).unwrap();
                if i % 97 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        for i in 0..50_000 {
            let c = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv()).await.expect("a wakeup was lost").unwrap();
            assert_eq!(c.circ_id, i);
        }
        producer.join().unwrap();
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn waiting_cells_are_charged_and_a_reclaimed_queue_ends_and_releases_them() {
        let quota = quota();
        let (tx, mut rx) = cell_queue(8, quota.clone());
        tx.try_send(cell(1)).unwrap();
        tx.try_send(cell(2)).unwrap();
        assert_eq!(quota.used(), 2 * CELL_MEM);
        assert_eq!(tx.queued().map(|q| q.1), Some(2 * CELL_MEM));
        assert_eq!(rx.recv().await.unwrap().circ_id, 1);
        assert_eq!(quota.used(), CELL_MEM);
        tx.reclaim();
        assert_eq!(quota.used(), 0);
        assert!(rx.recv().await.is_none() && rx.reclaimed());
        assert_eq!(tx.try_send(cell(3)), Err(QueueError::Closed));
        let (tx, rx) = cell_queue(8, quota.clone());
        tx.try_send(cell(4)).unwrap();
        drop(rx);
        assert_eq!(quota.used(), 0, "a dropped receiver releases what waited");
        assert!(tx.queued().is_none());
    }

    #[tokio::test]
    async fn recv_can_be_cancelled_without_losing_a_cell() {
        let (tx, mut rx) = cell_queue(8, quota());
        // Cancelled while waiting.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(10), rx.recv()).await.is_err());
        tx.try_send(cell(1)).unwrap();
        assert_eq!(rx.recv().await.unwrap().circ_id, 1);
    }
}
