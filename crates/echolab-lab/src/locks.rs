//! The lab's own locks: two readers-writers locks that differ only in whom they let in
//! first, so that the starvation experiment can put them side by side.
//!
//! [`ReaderPreferringLock`] is CS:APP's first readers-writers solution: a reader waits
//! only while a writer is inside, so a continuous stream of overlapping readers keeps a
//! writer out for as long as the stream lasts (the lecture's yellow car). The fix,
//! [`WriterPreferringLock`], also makes new readers wait while a writer is waiting, so the
//! readers inside drain and the writer gets in after at most one read's length.
//!
//! Both are a mutex and a condition variable over a small state, with the invariant
//! `writer == false || readers == 0`. The loom tests at the bottom check exclusion and
//! progress under every interleaving of small cases:
//! `RUSTFLAGS="--cfg loom" cargo test -p echolab-lab --release --target-dir target/loom locks`.

#[cfg(loom)]
use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Who is inside and who waits. Invariant: `!writer || readers == 0`.
#[derive(Debug, Default)]
struct State {
    /// Readers inside.
    readers: usize,
    /// A writer is inside.
    writer: bool,
    /// Writers waiting to get in (only the writer-preferring lock lets this stop readers).
    writers_waiting: usize,
}

/// The common body: `prefer_writers` is the one difference between the two locks.
#[derive(Debug, Default)]
struct RwCore {
    state: Mutex<State>,
    /// Signalled whenever the lock may have become free for someone.
    changed: Condvar,
}

impl RwCore {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section here panics, so a poisoned state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reader_may_enter(state: &State, prefer_writers: bool) -> bool {
        !(state.writer || (prefer_writers && state.writers_waiting > 0))
    }

    fn read_lock(&self, prefer_writers: bool) {
        let mut state = self.lock();
        while !Self::reader_may_enter(&state, prefer_writers) {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.readers += 1;
    }

    fn read_unlock(&self) {
        let mut state = self.lock();
        state.readers -= 1;
        if state.readers == 0 {
            self.changed.notify_all();
        }
    }

    fn write_lock(&self) {
        let mut state = self.lock();
        state.writers_waiting += 1;
        while state.writer || state.readers > 0 {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.writers_waiting -= 1;
        state.writer = true;
    }

    /// Like `write_lock`, but gives up at `deadline`: false if it never got in.
    fn write_lock_before(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        state.writers_waiting += 1;
        while state.writer || state.readers > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.writers_waiting -= 1;
                // Readers held back for us may enter now.
                self.changed.notify_all();
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .map(|(state, _)| state)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        state.writers_waiting -= 1;
        state.writer = true;
        true
    }

    fn write_unlock(&self) {
        let mut state = self.lock();
        state.writer = false;
        self.changed.notify_all();
    }
}

macro_rules! rw_lock {
    ($name:ident, $prefer_writers:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Default)]
        pub struct $name {
            core: RwCore,
        }

        impl $name {
            pub fn new() -> $name {
                $name::default()
            }

            /// Runs `f` holding the lock shared.
            pub fn read<R>(&self, f: impl FnOnce() -> R) -> R {
                self.core.read_lock($prefer_writers);
                let result = f();
                self.core.read_unlock();
                result
            }

            /// Runs `f` holding the lock exclusively.
            pub fn write<R>(&self, f: impl FnOnce() -> R) -> R {
                self.core.write_lock();
                let result = f();
                self.core.write_unlock();
                result
            }

            /// Runs `f` holding the lock exclusively if it gets in before `deadline`.
            pub fn write_before<R>(&self, deadline: Instant, f: impl FnOnce() -> R) -> Option<R> {
                if !self.core.write_lock_before(deadline) {
                    return None;
                }
                let result = f();
                self.core.write_unlock();
                Some(result)
            }
        }
    };
}

rw_lock!(
    ReaderPreferringLock,
    false,
    "A readers-writers lock that admits a reader whenever no writer is inside (CS:APP's \
     first readers-writers problem): readers never wait for a waiting writer, so writers \
     can starve."
);
rw_lock!(
    WriterPreferringLock,
    true,
    "A readers-writers lock that stops admitting readers while a writer waits: the \
     readers inside drain, then the writer enters. Readers can starve under a stream \
     of writers instead; the starvation experiment has one writer."
);

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Two readers are inside at once (reader A, inside, waits for reader B to enter,
    /// bounded by [`SHARE_WAIT`]), and no one is inside with a writer. With `read` made
    /// exclusive, B cannot enter while A waits, and the test fails after `SHARE_WAIT`.
    fn check_readers_share_and_writers_exclude(
        read: &(dyn Fn(&dyn Fn()) + Sync),
        write: &(dyn Fn(&dyn Fn()) + Sync),
    ) {
        const SHARE_WAIT: Duration = Duration::from_secs(10);
        let (a_inside_tx, a_inside_rx) = std::sync::mpsc::channel::<()>();
        let (b_inside_tx, b_inside_rx) = std::sync::mpsc::channel::<()>();
        let a_saw_b = std::thread::scope(|scope| {
            let a = scope.spawn(move || {
                let saw_b = std::cell::Cell::new(false);
                read(&|| {
                    a_inside_tx.send(()).unwrap();
                    saw_b.set(b_inside_rx.recv_timeout(SHARE_WAIT).is_ok());
                });
                saw_b.get()
            });
            scope.spawn(move || {
                a_inside_rx.recv().unwrap();
                read(&|| {
                    let _ = b_inside_tx.send(());
                });
            });
            a.join().unwrap()
        });
        assert!(a_saw_b, "reader B never entered while reader A was inside");

        let inside = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        write(&|| {
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                            inside.fetch_sub(1, Ordering::SeqCst);
                        });
                        read(&|| assert!(inside.load(Ordering::SeqCst) == 0));
                    }
                });
            }
        });
    }

    #[test]
    fn readers_share_and_writers_exclude() {
        let lock = WriterPreferringLock::new();
        check_readers_share_and_writers_exclude(&|f| lock.read(f), &|f| lock.write(f));
        let lock = ReaderPreferringLock::new();
        check_readers_share_and_writers_exclude(&|f| lock.read(f), &|f| lock.write(f));
    }

    #[test]
    fn write_before_gives_up_while_a_reader_stays() {
        let lock = ReaderPreferringLock::new();
        lock.read(|| {
            let deadline = Instant::now() + Duration::from_millis(20);
            assert_eq!(lock.write_before(deadline, || ()), None);
        });
        assert_eq!(
            lock.write_before(Instant::now() + Duration::from_secs(5), || 7),
            Some(7)
        );
    }
}

/// Model checks with loom: exclusion, and that a writer always gets in once readers stop.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    fn check<L: Send + Sync + 'static>(lock: L, read: fn(&L, &dyn Fn()), write: fn(&L, &dyn Fn())) {
        let lock = Arc::new(lock);
        let inside_writers = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (lock, inside_writers) = (lock.clone(), inside_writers.clone());
            thread::spawn(move || {
                read(&lock, &|| {
                    assert_eq!(inside_writers.load(Ordering::SeqCst), 0)
                })
            })
        };
        let writer = {
            let (lock, inside_writers) = (lock.clone(), inside_writers.clone());
            thread::spawn(move || {
                write(&lock, &|| {
                    assert_eq!(inside_writers.fetch_add(1, Ordering::SeqCst), 0);
                    inside_writers.fetch_sub(1, Ordering::SeqCst);
                })
            })
        };
        write(&lock, &|| {
            assert_eq!(inside_writers.fetch_add(1, Ordering::SeqCst), 0);
            inside_writers.fetch_sub(1, Ordering::SeqCst);
        });
        reader.join().unwrap();
        writer.join().unwrap();
    }

    #[test]
    fn reader_preferring_lock_excludes() {
        loom::model(|| {
            check(
                ReaderPreferringLock::new(),
                |lock, f| lock.read(f),
                |lock, f| lock.write(f),
            );
        });
    }

    #[test]
    fn writer_preferring_lock_excludes() {
        loom::model(|| {
            check(
                WriterPreferringLock::new(),
                |lock, f| lock.read(f),
                |lock, f| lock.write(f),
            );
        });
    }
}
