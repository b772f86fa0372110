//! A bounded queue shared fairly by keys (a peer's address), so that a key with many items
//! cannot delay another key's few. The next item out is the oldest of the key served least in
//! the last one to two seconds (counted per window of [`WINDOW`]; among keys served equally,
//! the one whose turn came first): an address that asks rarely, such as an honest client,
//! waits at most for the items already being worked on, however many addresses flood the
//! queue, and flooding addresses share what is left in turn. When the queue is full, a
//! newcomer displaces the newest item of the longest key if that key would still hold more
//! than the newcomer's key; otherwise the newcomer is refused.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long one window of the served counts lasts; a key's score is what it was served in the
/// current window and the one before.
pub const WINDOW: Duration = Duration::from_secs(1);

pub struct FairQueue<K, T> {
    queues: HashMap<K, VecDeque<T>>,
    /// Keys with at least one item, in the order their turns came, each with its served count
    /// over the two windows (kept here so that choosing the next key hashes nothing).
    turns: VecDeque<(K, u32)>,
    len: usize,
    capacity: usize,
    /// Items served per key in the current window and in the one before (at most every item
    /// served in two windows: bounded by the rate at which items are served).
    served: HashMap<K, u32>,
    served_before: HashMap<K, u32>,
    window_start: Option<Instant>,
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
        FairQueue { queues: HashMap::new(), turns: VecDeque::new(), len: 0, capacity: capacity.max(1), served: HashMap::new(), served_before: HashMap::new(), window_start: None }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, key: K, item: T) -> Pushed<T> {
        let mut displaced = None;
        if self.len >= self.capacity {
            let own = self.queues.get(&key).map_or(0, VecDeque::len);
            let longest = self.turns.iter().map(|t| t.0).max_by_key(|k| self.queues.get(k).map_or(0, VecDeque::len));
            match longest {
                Some(l) if self.queues.get(&l).map_or(0, VecDeque::len) > own + 1 => {
                    displaced = self.take_newest(l);
                }
                _ => return Pushed::Refused(item),
            }
        }
        let q = self.queues.entry(key).or_default();
        let new_turn = q.is_empty();
        q.push_back(item);
        if new_turn {
            let score = self.score(&key);
            self.turns.push_back((key, score));
        }
        self.len += 1;
        displaced.map_or(Pushed::Queued, Pushed::Displaced)
    }

    /// The oldest item of the key served least lately (at `now`), which is counted as served.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        self.roll(now);
        // The first of the least served, in turn order.
        let at = self.turns.iter().enumerate().min_by_key(|(i, t)| (t.1, *i)).map(|(i, _)| i)?;
        let (key, score) = self.turns.remove(at)?;
        let q = self.queues.get_mut(&key)?;
        let item = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&key);
        } else {
            self.turns.push_back((key, score + 1));
        }
        self.len -= usize::from(item.is_some());
        *self.served.entry(key).or_default() += 1;
        item
    }

    /// What `key` was served in the current and the previous window.
    fn score(&self, key: &K) -> u32 {
        self.served.get(key).copied().unwrap_or(0) + self.served_before.get(key).copied().unwrap_or(0)
    }

    /// Starts a new window of served counts if the current one is over.
    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < WINDOW {
            return;
        }
        self.served_before = if elapsed < 2 * WINDOW { std::mem::take(&mut self.served) } else { HashMap::new() };
        self.served.clear();
        self.window_start = Some(now);
        for i in 0..self.turns.len() {
            self.turns[i].1 = self.score(&self.turns[i].0);
        }
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

    /// Everything, in the order served, within one window.
    fn drain(q: &mut FairQueue<char, u32>) -> Vec<u32> {
        let t = Instant::now();
        std::iter::from_fn(|| q.pop(t)).collect()
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
    fn a_key_that_asks_rarely_goes_before_keys_that_flood() {
        let t = Instant::now();
        let mut q = FairQueue::new(1000);
        for i in 0..300 {
            q.push(['x', 'y', 'z'][i % 3], i as u32);
        }
        for _ in 0..30 {
            q.pop(t);
        }
        // h was served twice lately, x, y and z ten times each: h's next item goes first.
        q.push('h', 9000);
        q.pop(t);
        q.push('h', 9001);
        q.pop(t);
        q.push('h', 9999);
        assert_eq!(q.pop(t), Some(9999));
        // Flooding keys still take turns among themselves.
        let next: Vec<u32> = (0..3).map(|_| q.pop(t).unwrap()).collect();
        assert_eq!(next.iter().map(|v| v % 3).collect::<std::collections::BTreeSet<_>>().len(), 3, "{next:?}");
    }

    /// What a key was served counts for one to two windows, then is forgotten.
    #[test]
    fn served_counts_fade_after_two_windows() {
        let t = Instant::now();
        let mut q = FairQueue::new(100);
        for i in 0..10 {
            q.push('a', i);
        }
        for _ in 0..5 {
            q.pop(t);
        }
        q.push('b', 100);
        q.push('b', 101);
        q.push('b', 102);
        assert_eq!(q.pop(t), Some(100), "b was served less");
        assert_eq!(q.pop(t + WINDOW), Some(101), "a's 5 still count in the next window");
        // Two windows on, both start from nothing: turn order decides (a's turn came first).
        assert_eq!(q.pop(t + 3 * WINDOW), Some(5));
        assert_eq!(q.served.len() + q.served_before.len(), 1, "old counts are dropped");
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
