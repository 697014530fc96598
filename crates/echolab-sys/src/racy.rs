//! The lecture's racy `cnt++` (badcnt.c) as the three machine instructions of its assembly
//! slide: load the counter into a register (L), add one to the register (U), store the
//! register back (S). Written in `asm!` so that no compiler can fuse them into one
//! read-modify-write instruction (`addq $1, cnt(%rip)`): a context switch can land
//! between L and S, so two threads lose updates on one core as on many.
//!
//! Rust code could not express this race without undefined behaviour (a plain `u64`
//! shared mutably does not compile, and a relaxed atomic load-then-store is legally fused
//! into one `add` to memory, which no preemption can split). Inline assembly is opaque to
//! the optimiser and to the memory model: each `mov` is one aligned 8-byte access, which
//! the hardware performs indivisibly, so the only thing that can go wrong is the
//! lecture's interleaving.
//!
//! The function is exported unmangled as [`RACY_SYMBOL`], so that a disassembler can find
//! it in the binary (the lab's counter shows that listing beside its result, and a test
//! checks that the loop is a separate load, add and store).

use std::sync::atomic::AtomicU64;

/// The symbol of the racy loop in the binary, for `objdump --disassemble=SYMBOL`.
pub const RACY_SYMBOL: &str = "echolab_racy_add";

/// Adds `n` to `counter` one at a time, each time as load, add, store (three
/// instructions, not atomic as a whole). Two threads calling this on the same counter
/// lose updates whenever one's load and store straddle the other's store.
pub fn racy_add(counter: &AtomicU64, n: u64) {
    // SAFETY: `counter.as_ptr()` points to a live, aligned u64 for the whole call (the
    // borrow outlives it); the assembly reads and writes only those 8 bytes.
    unsafe { echolab_racy_add(counter.as_ptr(), n) }
}

/// The racy loop itself; see [`racy_add`].
///
/// # Safety
///
/// `counter` must point to a live, 8-byte aligned `u64` for the whole call. Other threads
/// may read and write it concurrently (only through atomics or this function): every
/// access here is one aligned 8-byte `mov`.
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn echolab_racy_add(counter: *mut u64, n: u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller guarantees `counter` is valid and aligned; the loop touches only
    // `*counter`, the two named registers and the flags, and no stack.
    unsafe {
        core::arch::asm!(
            "test {n}, {n}",
            "jz 3f",
            "2:",
            "mov {v}, qword ptr [{p}]", // L: load cnt into a register
            "add {v}, 1",               // U: update the register
            "mov qword ptr [{p}], {v}", // S: store the register into cnt
            "dec {n}",
            "jnz 2b",
            "3:",
            p = in(reg) counter,
            n = inout(reg) n => _,
            v = out(reg) _,
            options(nostack),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        core::arch::asm!(
            "cbz {n}, 3f",
            "2:",
            "ldr {v}, [{p}]",     // L
            "add {v}, {v}, #1",   // U
            "str {v}, [{p}]",     // S
            "subs {n}, {n}, #1",
            "b.ne 2b",
            "3:",
            p = in(reg) counter,
            n = inout(reg) n => _,
            v = out(reg) _,
            options(nostack),
        );
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        // No assembly for this architecture: volatile accesses, kept apart by a
        // black box, are still a separate load and store.
        for _ in 0..n {
            // SAFETY: the caller guarantees `counter` is valid and aligned.
            let value = unsafe { core::ptr::read_volatile(counter) };
            let value = core::hint::black_box(value) + 1;
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(counter, value) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_counts_exactly() {
        let counter = AtomicU64::new(5);
        racy_add(&counter, 0);
        assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 5);
        racy_add(&counter, 1_000);
        assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 1_005);
    }
}
