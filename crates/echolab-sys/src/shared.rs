//! Counters shared by a process and every child it forks afterwards: the server's
//! figures (`echolab-server`'s `stats`) must include what the process model's children
//! count, and a child's ordinary memory is a copy the parent never sees.

use std::io;
use std::sync::atomic::AtomicU64;

/// `n` zeroed atomic counters in an anonymous `MAP_SHARED` mapping: a child forked after
/// this call adds to the same counters its parent reads. The mapping lives as long as the
/// process (it is never unmapped: the counters are the process's for good).
///
/// Atomic read-modify-write instructions on memory shared between processes are as atomic
/// as between threads on Linux (the hardware locks the cache line, not a thread's view).
pub fn shared_counters(n: usize) -> io::Result<&'static [AtomicU64]> {
    let len = n
        .checked_mul(std::mem::size_of::<AtomicU64>())
        .filter(|len| *len > 0)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh anonymous mapping aliases no Rust object; the kernel checks the
    // arguments and returns MAP_FAILED on error.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for AtomicU64), zero-filled
    // by the kernel (zero is a valid AtomicU64), never unmapped (so 'static), and only ever
    // accessed through atomics (so shared references are sound, across threads and forks).
    Ok(unsafe { std::slice::from_raw_parts(addr.cast::<AtomicU64>(), n) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_forked_child_adds_to_the_parents_counters() {
        let counters = shared_counters(3).unwrap();
        counters[1].fetch_add(5, Ordering::Relaxed);
        // The child only does an atomic add and `_exit`: safe in any child (see `fork`).
        // SAFETY: as said; no lock, no allocation in the child.
        match unsafe { crate::fork() }.unwrap() {
            crate::ForkResult::Child => {
                counters[1].fetch_add(7, Ordering::Relaxed);
                crate::exit_immediately(0)
            }
            crate::ForkResult::Parent(pid) => {
                let mut status = 0;
                // SAFETY: waits for our own child; `status` is a valid out pointer.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            }
        }
        assert_eq!(counters[1].load(Ordering::Relaxed), 12);
        assert_eq!(counters[0].load(Ordering::Relaxed), 0);
        assert_eq!(counters[2].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn zero_counters_is_refused() {
        assert!(shared_counters(0).is_err());
    }
}
