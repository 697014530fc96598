//! The runner of N event loops (reactor, uring): one thread per loop, the last on the
//! calling thread, every one joined. The first loop that fails or panics fires the
//! shutdown so the others stop too: the server ends whole, never half alive.

use std::io;

use crate::shutdown::Shutdown;

/// Runs `run_one` on each of `loops`, `loops[0..n-1]` on threads named `NAME-1`, ...,
/// the last on the calling thread, and returns once all have returned: `Ok` if all did,
/// else the first error (a panic counts as one).
///
/// If a thread cannot be spawned, the shutdown fires, `on_spawn_failure(k)` is told that
/// `k` loops will never start (so that loops waiting for them can stop), and the spawn
/// error is returned once the started loops have ended.
pub fn run_loops<L: Send>(
    name: &str,
    loops: Vec<L>,
    shutdown: &Shutdown,
    run_one: &(dyn Fn(L) -> io::Result<()> + Sync),
    on_spawn_failure: &(dyn Fn(usize) + Sync),
) -> io::Result<()> {
    let n_loops = loops.len();
    let mut loops = loops.into_iter();
    let Some(last) = loops.next_back() else {
        return Ok(());
    };
    // Each loop's failure stops the others, and so does its panic (the guard's drop runs
    // while the panic unwinds): the loop on the calling thread must not wait for a
    // shutdown that only the join of a panicked thread would fire.
    let guarded = |one: L| {
        let stop_on_panic = StopOnPanic(shutdown);
        let result = run_one(one);
        if result.is_err() {
            shutdown.trigger();
        }
        drop(stop_on_panic);
        result
    };
    let guarded = &guarded;
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(n_loops);
        for (loop_idx, one) in loops.enumerate() {
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{}", loop_idx + 1))
                .spawn_scoped(scope, move || guarded(one));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(err) => {
                    shutdown.trigger();
                    on_spawn_failure(n_loops - handles.len());
                    return Err(err);
                }
            }
        }
        let mut result = guarded(last);
        for handle in handles {
            let loop_result = handle.join().unwrap_or_else(|_| {
                shutdown.trigger();
                Err(io::Error::other(format!("a {name} loop panicked")))
            });
            result = result.and(loop_result);
        }
        result
    })
}

/// Fires the shutdown if dropped while its thread panics.
struct StopOnPanic<'a>(&'a Shutdown);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.trigger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_loop_runs_and_the_first_error_stops_the_others() {
        let shutdown = Shutdown::install().unwrap();
        let ran = AtomicUsize::new(0);
        let result = run_loops(
            "test",
            vec![0, 1, 2],
            &shutdown,
            &|loop_idx| {
                ran.fetch_add(1, Ordering::SeqCst);
                if loop_idx == 1 {
                    return Err(io::Error::other("loop 1 failed"));
                }
                // The others run until the shutdown fires (bounded: loop 1 fires it).
                while !shutdown.wait_timeout(std::time::Duration::from_secs(20)) {}
                Ok(())
            },
            &|_| {},
        );
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        assert!(shutdown.is_triggered());
        assert_eq!(result.unwrap_err().to_string(), "loop 1 failed");
    }

    #[test]
    fn a_panicking_loop_is_an_error_and_stops_the_others() {
        let shutdown = Shutdown::install().unwrap();
        let result = run_loops(
            "test",
            vec![0, 1],
            &shutdown,
            &|loop_idx| {
                if loop_idx == 0 {
                    panic!("loop 0 panics");
                }
                while !shutdown.wait_timeout(std::time::Duration::from_secs(20)) {}
                Ok(())
            },
            &|_| {},
        );
        assert!(shutdown.is_triggered());
        assert_eq!(result.unwrap_err().to_string(), "a test loop panicked");
    }

    #[test]
    fn no_loops_is_nothing_to_run() {
        let shutdown = Shutdown::install().unwrap();
        let result = run_loops("test", Vec::<()>::new(), &shutdown, &|()| Ok(()), &|_| {});
        assert!(result.is_ok());
        assert!(!shutdown.is_triggered());
    }
}
