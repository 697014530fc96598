//! Raw POSIX threads, for the lab's `thread-leak` experiment: the lecture's "a joinable
//! thread must be reaped (joined) or run detached, or its memory leaks".
//!
//! Rust's `std::thread::JoinHandle` detaches the thread when the handle is dropped, so a
//! Rust program cannot forget to reap a thread; the leak exists only one level down. Here
//! a [`RawThread`] is a joinable `pthread_t` whose drop does nothing, exactly like a C
//! program that never calls `pthread_join`: the thread's stack and descriptor stay
//! allocated (the kernel task is gone once the thread returns) until it is joined, which
//! with a dropped handle is never.

use std::io;

/// A joinable thread that has been started and not yet joined or detached. Dropping it
/// leaks the thread's stack and descriptor, on purpose (see the module doc).
#[derive(Debug)]
#[must_use = "a joinable thread that is neither joined nor detached leaks its stack"]
pub struct RawThread(libc::pthread_t);

extern "C" fn return_at_once(_arg: *mut libc::c_void) -> *mut libc::c_void {
    std::ptr::null_mut()
}

/// Starts a thread (default attributes: joinable, the default stack size) that returns at
/// once.
///
/// # Errors
/// `pthread_create`'s error code (EAGAIN when out of threads or memory).
pub fn spawn_returning() -> io::Result<RawThread> {
    let mut thread: libc::pthread_t = 0;
    // SAFETY: `thread` is a valid out-pointer; a null attribute means the defaults; the
    // start routine has the C signature pthread_create expects and ignores its argument.
    let rc = unsafe {
        libc::pthread_create(
            &mut thread,
            std::ptr::null(),
            return_at_once,
            std::ptr::null_mut(),
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(RawThread(thread))
}

impl RawThread {
    /// `pthread_join`: waits for the thread to end and frees its stack and descriptor.
    ///
    /// # Errors
    /// `pthread_join`'s error code.
    pub fn join(self) -> io::Result<()> {
        // SAFETY: the thread is joinable and has been neither joined nor detached (both
        // consume `self`); the result pointer may be null.
        let rc = unsafe { libc::pthread_join(self.0, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// `pthread_detach`: the thread's resources are freed when it ends (or at once, if it
    /// already has).
    ///
    /// # Errors
    /// `pthread_detach`'s error code.
    pub fn detach(self) -> io::Result<()> {
        // SAFETY: as in `join`: a joinable thread not yet joined or detached.
        let rc = unsafe { libc::pthread_detach(self.0) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_detach_succeed() {
        spawn_returning().unwrap().join().unwrap();
        spawn_returning().unwrap().detach().unwrap();
    }
}
