//! A bounded queue served round-robin by key (a peer's address), so that one key with many
//! items cannot delay another key's few: the next item out is the oldest of the key whose turn
//! it is, and a key newly in the queue waits at most one item of every other key. When the
//! queue is full, a newcomer displaces the newest item of the longest key if that key would
//! still hold more than the newcomer's key; otherwise the newcomer is refused.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub struct FairQueue<K, T> {
    queues: HashMap<K, VecDeque<T>>,
    /// Keys with at least one item, in serving order.
    turns: VecDeque<K>,
    len: usize,
    capacity: usize,
}

/// What [`FairQueue::push`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// Queued.
    Queued,
    /// Queued, and this item of the longest key was taken out to make room.
    Displaced(T),
    /// Not queued: the queue is full and no key holds more than one item over the item's key.
    Refused(T),
}

impl<K: Copy + Eq + Hash, T> FairQueue<K, T> {
    /// A queue of at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        FairQueue { queues: HashMap::new(), turns: VecDeque::new(), len: 0, capacity: capacity.max(1) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, key: K, item: T) -> Pushed<T> {
        let mut displaced = None;
        if self.len >= self.capacity {
            let own = self.queues.get(&key).map_or(0, VecDeque::len);
            let longest = self.turns.iter().copied().max_by_key(|k| self.queues.get(k).map_or(0, VecDeque::len));
            match longest {
                Some(l) if self.queues.get(&l).map_or(0, VecDeque::len) > own + 1 => {
                    displaced = self.take_newest(l);
                }
                _ => return Pushed::Refused(item),
            }
        }
        let q = self.queues.entry(key).or_default();
        if q.is_empty() {
            self.turns.push_back(key);
        }
        q.push_back(item);
        self.len += 1;
        displaced.map_or(Pushed::Queued, Pushed::Displaced)
    }

    /// The oldest item of the key whose turn it is.
    pub fn pop(&mut self) -> Option<T> {
        let key = self.turns.pop_front()?;
        let q = self.queues.get_mut(&key)?;
        let item = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&key);
        } else {
            self.turns.push_back(key);
        }
        self.len -= usize::from(item.is_some());
        item
    }

    /// The newest item of `key`, which holds at least two (so it keeps its turn).
    fn take_newest(&mut self, key: K) -> Option<T> {
        let item = self.queues.get_mut(&key)?.pop_back();
        self.len -= usize::from(item.is_some());
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut FairQueue<char, u32>) -> Vec<u32> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn keys_take_turns_and_each_key_keeps_its_order() {
        let mut q = FairQueue::new(100);
        for i in 0..5 {
            assert_eq!(q.push('a', i), Pushed::Queued);
        }
        assert_eq!(q.push('b', 100), Pushed::Queued);
        assert_eq!(q.push('c', 200), Pushed::Queued);
        assert_eq!(q.push('b', 101), Pushed::Queued);
        assert_eq!(drain(&mut q), vec![0, 100, 200, 1, 101, 2, 3, 4]);
        assert_eq!(q.len(), 0);
        assert!(q.queues.is_empty() && q.turns.is_empty());
    }

    #[test]
    fn a_key_new_to_a_busy_queue_waits_one_item_of_each_other_key() {
        let mut q = FairQueue::new(1000);
        for i in 0..300 {
            q.push(['x', 'y', 'z'][i % 3], i as u32);
        }
        q.pop();
        q.push('h', 9999);
        let order = drain(&mut q);
        assert_eq!(order.iter().position(|&v| v == 9999), Some(3), "behind one item of x, y and z at most: {:?}", &order[..5]);
    }

    #[test]
    fn when_full_the_longest_key_gives_way_and_is_refused_itself() {
        let mut q = FairQueue::new(4);
        for i in 0..4 {
            assert_eq!(q.push('a', i), Pushed::Queued);
        }
        assert_eq!(q.push('a', 4), Pushed::Refused(4), "the longest key is refused");
        assert_eq!(q.push('b', 10), Pushed::Displaced(3), "another key displaces the longest's newest");
        assert_eq!(q.push('c', 20), Pushed::Displaced(2));
        assert_eq!(q.len(), 4);
        // a: 2, b: 1, c: 1: displacing one of a's would only even them out.
        assert_eq!(q.push('b', 11), Pushed::Refused(11));
        assert_eq!(drain(&mut q), vec![0, 10, 20, 1]);
    }

    #[test]
    fn equal_shares_are_not_displaced() {
        let mut q = FairQueue::new(2);
        q.push('a', 1);
        q.push('b', 2);
        assert_eq!(q.push('c', 3), Pushed::Refused(3));
        let mut q = FairQueue::new(2);
        q.push('a', 1);
        q.push('a', 2);
        assert_eq!(q.push('b', 3), Pushed::Displaced(2));
        assert_eq!(q.push('c', 4), Pushed::Refused(4));
        assert_eq!(drain(&mut q), vec![1, 3]);
        assert!(q.turns.is_empty() && q.queues.is_empty());
    }
}
