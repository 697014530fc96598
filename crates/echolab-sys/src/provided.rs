//! The receive buffers both io_uring rings hand the kernel ([`crate::uring`] for TCP,
//! [`crate::uring_udp`] for UDP): one allocation of `n_bufs` buffers and the buffer ring
//! whose entries point at them. The safety rule is the rings': a buffer the kernel may
//! write is never read, and memory the kernel may still know is leaked, never freed.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// Receive buffers provided to the kernel through a buffer ring.
///
/// Both allocations are made here and freed here, never through a Rust reference to the
/// whole: the kernel writes into buffers that the program is not reading, and the program
/// only ever forms a slice of one buffer that the kernel has finished with. The ring that
/// registers them sets `registered`, and clears it only once the kernel has let go.
pub(crate) struct ProvidedBuffers {
    /// `n_bufs` entries of 16 bytes the kernel reads; the tail lives in entry 0.
    pub(crate) entries: NonNull<BufRingEntry>,
    pub(crate) entries_layout: Layout,
    /// `n_bufs * buf_size` bytes.
    pub(crate) data: NonNull<u8>,
    pub(crate) data_layout: Layout,
    pub(crate) n_bufs: u16,
    pub(crate) buf_size: u32,
    /// Our copy of the tail: entries before it are the kernel's to take.
    pub(crate) tail: u16,
    pub(crate) registered: bool,
}

impl ProvidedBuffers {
    pub(crate) fn new(n_bufs: u16, buf_size: u32) -> io::Result<ProvidedBuffers> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "receive buffers too large");
        // The kernel wants the entries page-aligned.
        let entries_layout =
            Layout::from_size_align(n_bufs as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|_| too_big())?;
        let data_layout = Layout::from_size_align(n_bufs as usize * buf_size as usize, 4096)
            .map_err(|_| too_big())?;
        // SAFETY: both layouts have a non-zero size (n_bufs >= 1, buf_size > 0).
        let entries =
            NonNull::new(unsafe { alloc::alloc_zeroed(entries_layout) }.cast::<BufRingEntry>());
        // SAFETY: as above. Not zeroed: pages are touched only as the kernel fills them,
        // so a buffer's unused payload room costs no resident memory.
        let data = NonNull::new(unsafe { alloc::alloc(data_layout) });
        match (entries, data) {
            (Some(entries), Some(data)) => Ok(ProvidedBuffers {
                entries,
                entries_layout,
                data,
                data_layout,
                n_bufs,
                buf_size,
                tail: 0,
                registered: false,
            }),
            (entries, data) => {
                // SAFETY: each pointer, if allocated, came from `alloc` with its layout.
                unsafe {
                    if let Some(entries) = entries {
                        alloc::dealloc(entries.as_ptr().cast(), entries_layout);
                    }
                    if let Some(data) = data {
                        alloc::dealloc(data.as_ptr(), data_layout);
                    }
                }
                Err(io::ErrorKind::OutOfMemory.into())
            }
        }
    }

    /// The start of buffer `bid` (`bid < n_bufs`, as every id the kernel reports is).
    pub(crate) fn buf(&self, bid: u16) -> *mut u8 {
        assert!(bid < self.n_bufs, "buffer id {bid} out of range");
        // SAFETY: in bounds of `data` (checked just above).
        unsafe {
            self.data
                .as_ptr()
                .add(bid as usize * self.buf_size as usize)
        }
    }

    /// Writes the entry for buffer `bid` at our tail; [`Self::publish`] shows it to the
    /// kernel.
    pub(crate) fn push(&mut self, bid: u16) {
        let mask = self.n_bufs - 1;
        let idx = (self.tail & mask) as usize;
        let addr = self.buf(bid);
        // SAFETY: `idx < n_bufs`, inside the entries allocation, and `RawBufEntry` has the
        // entries' layout (checked below its definition). The kernel only reads entries
        // between its head and the published tail; this one is at or past the published
        // tail, and only this thread writes. Field writes through raw pointers: a `&mut`
        // to the whole entry would also cover entry 0's last field, the ring's tail,
        // which the kernel reads concurrently.
        unsafe {
            let entry = self.entries.as_ptr().cast::<RawBufEntry>().add(idx);
            ptr::addr_of_mut!((*entry).addr).write(addr as u64);
            ptr::addr_of_mut!((*entry).len).write(self.buf_size);
            ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the entries pushed so far (a release store of the tail, after them).
    pub(crate) fn publish(&mut self) {
        // SAFETY: the tail field lies inside entry 0 of our allocation, is 2-byte aligned,
        // and the kernel reads it concurrently, hence the atomic store.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

/// The kernel's `struct io_uring_buf`; in entry 0, `resv` is the ring's tail.
#[repr(C)]
struct RawBufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    _resv: u16,
}

const _: () = assert!(std::mem::size_of::<RawBufEntry>() == std::mem::size_of::<BufRingEntry>());
const _: () = assert!(std::mem::offset_of!(RawBufEntry, _resv) == 14);

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        if self.registered {
            return; // Still known to the kernel (see `Drop for Ring` and `Drop for UdpRing`): leaked on purpose.
        }
        // SAFETY: both were allocated in `new` with these layouts, and the kernel no
        // longer knows them (unregistered, or never registered).
        unsafe {
            alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            alloc::dealloc(self.data.as_ptr(), self.data_layout);
        }
    }
}

/// A ring of `entries` requests (and four times as many completions) with its receive
/// buffers: `n_bufs` of `buf_size` bytes, registered as buffer group `group` and every one
/// handed to the kernel. Completions run only when the owning thread asks for them
/// (SINGLE_ISSUER + DEFER_TASKRUN: no interrupting the loop, all the work in the batched
/// wait); kernels before 6.1 reject those flags and get a plain ring.
///
/// The buffers come back `registered`: their `Drop` leaks them until the owner, which
/// keeps both side by side, unregisters the group (see `Drop for Ring`, `Drop for UdpRing`).
pub(crate) fn ring_with_buffers(
    entries: u32,
    n_bufs: u16,
    buf_size: u32,
    group: u16,
) -> io::Result<(IoUring, ProvidedBuffers)> {
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries)
        .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))?;
    let mut bufs = ProvidedBuffers::new(n_bufs, buf_size)?;
    // SAFETY: the entries and the buffers they point at are owned by `bufs`, which is
    // marked registered at once: from here its `Drop` leaks them rather than free memory
    // the kernel may write, until the owner unregisters the group.
    unsafe {
        ring.submitter().register_buf_ring_with_flags(
            bufs.entries.as_ptr() as u64,
            n_bufs,
            group,
            0,
        )?;
    }
    bufs.registered = true;
    for bid in 0..n_bufs {
        bufs.push(bid);
    }
    bufs.publish();
    Ok((ring, bufs))
}
