//! A bounded FIFO queue shared by producer and consumer threads: CS:APP's `sbuf`.
//!
//! The book builds `sbuf` from three semaphores (`mutex`, `slots`, `items`); this is the
//! same idea with a mutex and two condition variables: `not_full` plays `slots` (the
//! producer waits on it while the queue is full) and `not_empty` plays `items` (consumers
//! wait on it while it is empty). Because the capacity is fixed, a producer that is faster
//! than its consumers waits instead of growing memory.
//!
//! [`BoundedQueue::close`] adds what the book leaves out, a way to stop: after it, `push`
//! refuses and `pop` drains what is left and then returns `None`, so every worker thread
//! can be joined.
//!
//! Model checks: `RUSTFLAGS="--cfg loom" cargo test -p echolab-sbuf --release --target-dir target/loom`.
#![forbid(unsafe_code)]

#[cfg(loom)]
use loom::sync::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
#[cfg(not(loom))]
use std::sync::{Condvar, Mutex, MutexGuard};

/// The queue. Holding `state`'s lock is the exclusive right to change `items` and `closed`.
#[derive(Debug)]
pub struct BoundedQueue<T> {
    state: Mutex<State<T>>,
    /// Signalled when an item is taken (a slot frees up).
    not_full: Condvar,
    /// Signalled when an item is added, and on close.
    not_empty: Condvar,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    /// Invariant: `items.len() <= capacity`.
    items: VecDeque<T>,
    closed: bool,
}

impl<T> BoundedQueue<T> {
    /// A queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> BoundedQueue<T> {
        let capacity = capacity.max(1);
        BoundedQueue {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity),
                closed: false,
            }),
            not_full: Condvar::new(),
            not_empty: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section below leaves the state consistent before anything that
        // could panic, so a poisoned lock still guards valid data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `item` at the back, waiting while the queue is full (`sbuf_insert`).
    /// Gives the item back if the queue is closed.
    pub fn push(&self, item: T) -> Result<(), T> {
        let mut state = self.lock();
        while state.items.len() == self.capacity && !state.closed {
            state = self
                .not_full
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if state.closed {
            return Err(item);
        }
        state.items.push_back(item);
        drop(state);
        self.not_empty.notify_one();
        Ok(())
    }

    /// Takes the front item, waiting while the queue is empty (`sbuf_remove`).
    /// Returns `None` once the queue is closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                drop(state);
                self.not_full.notify_one();
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state = self
                .not_empty
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Closes the queue: waiting producers give up, consumers drain and then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_full.notify_all();
        self.not_empty.notify_all();
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc::RecvTimeoutError;
    use std::sync::Arc;
    use std::time::Duration;

    /// Runs `body` on a thread of its own and fails if it has not finished in 10 s: a
    /// queue that loses an item or a wake-up would otherwise hang the test, not fail it.
    /// (A hung body's thread is left blocked; the test binary still exits.)
    fn within_deadline(body: impl FnOnce() + Send + 'static) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let runner = std::thread::spawn(move || {
            body();
            let _ = done_tx.send(());
        });
        match done_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => runner.join().unwrap(),
            Err(RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(runner.join().unwrap_err())
            }
            Err(RecvTimeoutError::Timeout) => panic!("hung: the test did not finish in 10 s"),
        }
    }

    #[test]
    fn the_deadline_runs_its_body() {
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        within_deadline(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn items_come_out_in_order() {
        within_deadline(|| {
            let queue = BoundedQueue::new(3);
            assert!(queue.is_empty());
            for i in 0..3 {
                queue.push(i).unwrap();
            }
            assert!(!queue.is_empty());
            assert_eq!(queue.len(), 3);
            assert_eq!(queue.capacity(), 3);
            assert_eq!(
                (queue.pop(), queue.pop(), queue.pop()),
                (Some(0), Some(1), Some(2))
            );
        });
    }

    #[test]
    fn a_full_queue_makes_the_producer_wait_until_a_pop() {
        within_deadline(|| {
            let queue = Arc::new(BoundedQueue::new(1));
            queue.push(1).unwrap();
            let producer = {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || queue.push(2))
            };
            // The producer cannot finish before this pop frees the slot: join proves it got in.
            assert_eq!(queue.pop(), Some(1));
            producer.join().unwrap().unwrap();
            assert_eq!(queue.pop(), Some(2));
        });
    }

    #[test]
    fn close_drains_then_stops_and_refuses_pushes() {
        within_deadline(|| {
            let queue = BoundedQueue::new(2);
            queue.push(1).unwrap();
            queue.close();
            assert_eq!(queue.push(2), Err(2));
            assert_eq!(queue.pop(), Some(1));
            assert_eq!(queue.pop(), None);
        });
    }

    #[test]
    fn many_producers_and_consumers_lose_nothing() {
        within_deadline(|| {
            let queue = BoundedQueue::new(4);
            let total: u64 = std::thread::scope(|scope| {
                let queue = &queue;
                let producers: Vec<_> = (0..4u64)
                    .map(|p| {
                        scope.spawn(move || {
                            (0..1000).for_each(|i| queue.push(p * 1000 + i).unwrap())
                        })
                    })
                    .collect();
                // Each consumer also checks the bound after every pop: producers that did not
                // wait on a full queue would outrun three consumers within a few items.
                let consumers: Vec<_> = (0..3)
                    .map(|_| {
                        scope.spawn(move || {
                            let mut sum = 0;
                            while let Some(item) = queue.pop() {
                                assert!(queue.len() <= queue.capacity(), "{} items", queue.len());
                                sum += item;
                            }
                            sum
                        })
                    })
                    .collect();
                producers.into_iter().for_each(|p| p.join().unwrap());
                queue.close();
                consumers.into_iter().map(|c| c.join().unwrap()).sum()
            });
            assert_eq!(total, (0..4000).sum::<u64>());
        });
    }
}

/// Model checks with loom (see the crate documentation for the command).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn a_full_queue_blocks_and_nothing_is_lost() {
        loom::model(|| {
            let queue = Arc::new(BoundedQueue::new(1));
            let producer = {
                let queue = Arc::clone(&queue);
                thread::spawn(move || {
                    queue.push(1).unwrap();
                    queue.push(2).unwrap();
                })
            };
            // In every interleaving, including the one where the producer runs first: its
            // second push waits for the pop instead of overfilling the queue.
            assert!(queue.len() <= 1);
            assert_eq!(queue.pop(), Some(1));
            assert!(queue.len() <= 1);
            assert_eq!(queue.pop(), Some(2));
            producer.join().unwrap();
            assert!(queue.is_empty());
        });
    }

    #[test]
    fn close_wakes_a_waiting_consumer() {
        loom::model(|| {
            let queue: Arc<BoundedQueue<u32>> = Arc::new(BoundedQueue::new(1));
            let consumer = {
                let queue = Arc::clone(&queue);
                thread::spawn(move || queue.pop())
            };
            queue.close();
            assert_eq!(consumer.join().unwrap(), None);
        });
    }

    #[test]
    fn two_consumers_share_two_items() {
        loom::model(|| {
            let queue = Arc::new(BoundedQueue::new(1));
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let queue = Arc::clone(&queue);
                    thread::spawn(move || queue.pop())
                })
                .collect();
            queue.push(10).unwrap();
            queue.push(20).unwrap();
            let mut got: Vec<_> = consumers
                .into_iter()
                .map(|c| c.join().unwrap().unwrap())
                .collect();
            got.sort_unstable();
            assert_eq!(got, vec![10, 20]);
        });
    }
}
