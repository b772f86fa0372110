//! A circuit's inbound cell queue: one producer (the link's reader), one consumer (the circuit
//! task), a cap, and storage that grows only while cells wait. An idle circuit's queue holds a
//! few dozen bytes, where a channel that preallocates slots would hold kilobytes per circuit
//! (THREATS A23: tens of thousands of circuits must stay cheap).
//!
//! The producer never waits: a full queue is the peer sending more than flow control allows,
//! and the caller destroys the circuit. The consumer's `recv` is cancel-safe (a cell is only
//! taken when it is returned), so it can sit in a `select!`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use allium_proto::cell::Cell;
use tokio::sync::Notify;

struct Shared {
    state: Mutex<State>,
    /// Wakes the consumer: a cell arrived or the producer went away.
    ready: Notify,
}

struct State {
    cells: VecDeque<Cell>,
    cap: usize,
    sender_gone: bool,
    receiver_gone: bool,
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

/// A queue of at most `cap` cells.
pub fn cell_queue(cap: usize) -> (CellSender, CellReceiver) {
    let shared = Arc::new(Shared { state: Mutex::new(State { cells: VecDeque::new(), cap, sender_gone: false, receiver_gone: false }), ready: Notify::new() });
    (CellSender(shared.clone()), CellReceiver(shared))
}

impl CellSender {
    /// Queues `cell` without waiting.
    pub fn try_send(&self, cell: Cell) -> Result<(), QueueError> {
        {
            let mut s = self.0.state.lock().expect("cell queue lock");
            if s.receiver_gone {
                return Err(QueueError::Closed);
            }
            if s.cells.len() >= s.cap {
                return Err(QueueError::Full);
            }
            s.cells.push_back(cell);
        }
        self.0.ready.notify_one();
        Ok(())
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
            {
                let mut s = self.0.state.lock().expect("cell queue lock");
                if let Some(c) = s.cells.pop_front() {
                    if s.cells.is_empty() && s.cells.capacity() > RELEASE_ABOVE {
                        // A burst is over: give its storage back.
                        s.cells = VecDeque::new();
                    }
                    return Some(c);
                }
                if s.sender_gone {
                    return None;
                }
            }
            // A notification sent after the check above is kept as a permit, so none is lost.
            self.0.ready.notified().await;
        }
    }
}

/// Queue storage (in cells) kept after the queue drains; a larger one is released.
const RELEASE_ABOVE: usize = 64;

impl Drop for CellReceiver {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("cell queue lock");
        s.receiver_gone = true;
        s.cells = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::cell::CellCmd;

    fn cell(i: u32) -> Cell {
        Cell { circ_id: i, cmd: CellCmd::Relay, payload: [0; allium_proto::cell::PAYLOAD_LEN] }
    }

    #[tokio::test]
    async fn cells_arrive_in_order_up_to_the_cap_and_the_end_is_seen() {
        let (tx, mut rx) = cell_queue(3);
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
        let (tx, mut rx) = cell_queue(8);
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
        let (tx, mut rx) = cell_queue(100_000);
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
    async fn recv_can_be_cancelled_without_losing_a_cell() {
        let (tx, mut rx) = cell_queue(8);
        // Cancelled while waiting.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(10), rx.recv()).await.is_err());
        tx.try_send(cell(1)).unwrap();
        assert_eq!(rx.recv().await.unwrap().circ_id, 1);
    }
}
