//! The io_uring UDP server: N loops, each with its own SO_REUSEPORT socket and its own
//! ring. One multishot `recvmsg` stays armed on the socket and the kernel fills provided
//! buffers with datagrams as they come; each turn the loop waits for completions
//! (`io_uring_enter`), judges what arrived, and sends the admitted datagrams back with one
//! `sendmmsg` (from the buffers they arrived in), which gives every buffer back.
//!
//! Trade-off: no readiness step and no copy, two system calls per turn for any number of
//! datagrams; the cost is the buffer bookkeeping (a buffer is lent from its arrival to the
//! end of its turn, and the receive stops, `ENOBUFS`, when all are lent, until the loop
//! gives them back and re-arms it). Replies as io_uring `sendmsg` requests (one
//! submission and one completion per datagram, in the `io_uring_enter` that waits) cost
//! about the same CPU per datagram as this `sendmmsg` (1.025–1.04× against 1.03×
//! `ref_udp`'s in two sittings of scripts/bench-udp.py, 9 alternated runs each): with the
//! send path now `ref_udp`'s own, the gap (1.03–1.05× in 2026-11-30's sittings) is what
//! an armed receive costs. perf, 8 sockets × 64 B: the io_uring receive machinery
//! (`io_recvmsg`, the poll task work, buffer selection, the completion) against
//! `recvmmsg`'s loop; and, about 2% of the loop's CPU that `ref_udp` does not spend, every
//! reply's `sock_wfree` waking the socket's wait queue: the multishot receive's poll entry
//! sits on that queue for good, so each sent datagram's write-space wake-up takes the
//! queue's lock and walks it (`ref_udp` sends while no one waits there, and the kernel
//! skips the wake). Sending from another socket would avoid it, but a second socket on the
//! same port would also receive. Why the completions of sends cannot simply be skipped is
//! in [`echolab_sys::uring_udp`].
//!
//! The unsafe ring code is [`echolab_sys::uring_udp`]; this file is the scheduling.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use echolab_sys::uring_udp::{self, Datagram, UdpCompletion, UdpRing};
use nix::libc;

use crate::guard::{DropReason, Guard};
use crate::{BUF_LEN, TICK};

/// Receive buffers per ring (each with room for [`BUF_LEN`] payload bytes; pages are
/// touched only as datagrams fill them).
pub const N_BUFS: u16 = 256;

/// Turns spent echoing what is already queued once the stop flag is seen.
const FINAL_TURNS: usize = 64;

/// How long the loop waits for its cancelled receive to end.
const FINAL_WAIT: Duration = Duration::from_secs(1);

/// The models that run where io_uring does not.
const OTHER_MODELS: &str = "reactor, event, iterative, async";

/// Why this kernel refuses the ring, in one line naming the models that work instead.
pub fn refusal(err: &io::Error) -> String {
    let why = match err.raw_os_error() {
        Some(libc::EPERM) => "io_uring is not permitted here (EPERM: disabled by kernel.io_uring_disabled or a seccomp policy, common in containers)".to_string(),
        Some(libc::ENOSYS) => "this kernel has no io_uring (ENOSYS)".to_string(),
        Some(libc::EINVAL) => "this kernel's io_uring lacks provided-buffer rings (EINVAL; needs Linux 5.19 or later, 6.0 for multishot recvmsg)".to_string(),
        _ => format!("cannot set up io_uring: {err}"),
    };
    format!("{why}; models that serve UDP here: {OTHER_MODELS}")
}

/// Why this kernel cannot run the model although it makes the ring (Linux 5.19: buffer
/// rings, but no multishot `recvmsg`), in one line naming the models that work instead.
fn no_multishot() -> String {
    format!("this kernel's io_uring lacks multishot recvmsg (needs Linux 6.0 or later); models that serve UDP here: {OTHER_MODELS}")
}

/// Whether the kernel runs multishot `recvmsg` ([`uring_udp::supports_multishot_recvmsg`]).
/// Debug builds answer no when `ECHOLAB_FAULT_URING` holds `udp-multishot=no`, as a 5.19
/// kernel would (the tests of the refusal; release builds read nothing).
fn multishot_supported() -> io::Result<bool> {
    let fault = std::env::var("ECHOLAB_FAULT_URING").ok();
    multishot_unless_injected(fault.as_deref(), uring_udp::supports_multishot_recvmsg)
}

/// `probe`'s answer, or no when `fault` (the value of `ECHOLAB_FAULT_URING`, a comma list)
/// holds `udp-multishot=no` in a debug build.
fn multishot_unless_injected(
    fault: Option<&str>,
    probe: impl FnOnce() -> io::Result<bool>,
) -> io::Result<bool> {
    let injected = cfg!(debug_assertions)
        && fault.is_some_and(|spec| spec.split(',').any(|item| item == "udp-multishot=no"));
    if injected {
        return Ok(false);
    }
    probe()
}

/// The ring for `socket`, once the kernel has shown it runs what the loop needs; else the
/// one-line refusal (before the server says it listens).
fn ring_for(socket: &UdpSocket) -> Result<UdpRing, String> {
    let ring = UdpRing::new(socket.as_raw_fd(), N_BUFS, BUF_LEN).map_err(|err| refusal(&err))?;
    match multishot_supported() {
        Ok(true) => Ok(ring),
        Ok(false) => Err(no_multishot()),
        Err(err) => Err(refusal(&err)),
    }
}

/// One loop's state between turns: scratch kept (cleared, never shrunk) so that a turn
/// allocates nothing.
struct Loop<'a> {
    ring: UdpRing,
    guard: &'a Mutex<Guard>,
    completions: Vec<UdpCompletion>,
    arrived: Vec<Datagram>,
    /// The turn's admitted datagrams, and their sources and lengths (for the counts).
    replies: Vec<Datagram>,
    sources: Vec<(SocketAddr, usize)>,
    outcomes: Vec<io::Result<usize>>,
}

/// Runs one loop on `socket` until `stop` is set, then echoes what is already queued
/// (bounded). `ready` hears first whether the ring could be
/// made (the loop ends at once if not).
pub fn serve(
    socket: UdpSocket,
    guard: &Mutex<Guard>,
    stop: &AtomicBool,
    ready: SyncSender<io::Result<()>>,
) -> io::Result<()> {
    let ring = match ring_for(&socket) {
        Ok(ring) => {
            let _ = ready.send(Ok(()));
            ring
        }
        Err(line) => {
            let _ = ready.send(Err(io::Error::other(line)));
            return Ok(());
        }
    };
    let mut state = Loop::new(ring, guard);
    while !stop.load(Ordering::SeqCst) {
        state.turn(TICK, true)?;
    }
    state.finish(FINAL_WAIT)?;
    // `socket` outlives the ring (dropped after `state`), which cancels what is left.
    drop(state);
    drop(socket);
    Ok(())
}

impl<'a> Loop<'a> {
    fn new(ring: UdpRing, guard: &'a Mutex<Guard>) -> Loop<'a> {
        Loop {
            ring,
            guard,
            completions: Vec::new(),
            arrived: Vec::new(),
            replies: Vec::new(),
            sources: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    /// Echoes what is queued already (turns that each find datagrams, at most
    /// [`FINAL_TURNS`]), then cancels the receive and waits up to `wait` for its last
    /// completion.
    fn finish(&mut self, wait: Duration) -> io::Result<()> {
        for _ in 0..FINAL_TURNS {
            if self.turn(Duration::from_millis(1), true)? == 0 {
                break;
            }
        }
        if self.ring.recv_armed() {
            self.ring.cancel_recv()?;
        }
        let deadline = Instant::now() + wait;
        while self.ring.recv_armed() && Instant::now() < deadline {
            self.turn(Duration::from_millis(10), false)?;
        }
        Ok(())
    }

    /// One turn: (re-)arm the receive if it ended, wait up to `wait` for completions, then
    /// judge the datagrams that arrived and send back the admitted ones (one `sendmmsg`),
    /// which gives every buffer of the turn back. Returns how many datagrams arrived.
    fn turn(&mut self, wait: Duration, receive: bool) -> io::Result<usize> {
        // A no-op while it is armed. Every buffer is back at the end of a turn, so the
        // receive has buffers to fill whenever it is armed here.
        if receive {
            self.ring.recv_multi()?;
        }
        self.ring.submit_and_wait(wait, 1)?;
        self.ring.completions(&mut self.completions);
        for completion in self.completions.drain(..) {
            match completion {
                UdpCompletion::Received { result: Ok(d), .. } => self.arrived.push(d),
                // The receive ended: out of buffers (ENOBUFS), cancelled, or an error
                // such as an ICMP report of an earlier send; armed again next turn. Only
                // an error that says the request itself is wrong ends the loop.
                UdpCompletion::Received {
                    result: Err(err), ..
                } => {
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP)
                    ) {
                        // The datagrams of this turn go back unanswered.
                        for datagram in self.arrived.drain(..) {
                            self.ring.recycle(datagram);
                        }
                        return Err(err);
                    }
                }
            }
        }
        let n_arrived = self.arrived.len();
        if n_arrived == 0 {
            return Ok(0);
        }
        let now = Instant::now();
        {
            let mut guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
            for datagram in self.arrived.drain(..) {
                let Some(src) = datagram.src else {
                    // Not IPv4 or IPv6: cannot happen on an inet socket; nothing to reply
                    // to.
                    self.ring.recycle(datagram);
                    continue;
                };
                if datagram.truncated {
                    guard.count_drop(DropReason::Truncated, src, now);
                    self.ring.recycle(datagram);
                } else if guard.admit(src, now).is_ok() {
                    self.sources.push((src, datagram.len()));
                    self.replies.push(datagram);
                } else {
                    self.ring.recycle(datagram);
                }
            }
        }
        if self.replies.is_empty() {
            return Ok(n_arrived);
        }
        // The send runs without the guard's lock (the other loops judge meanwhile).
        self.ring.reply_all(&mut self.replies, &mut self.outcomes);
        let mut guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        count_replies(&mut guard, &mut self.sources, &mut self.outcomes, now);
        Ok(n_arrived)
    }
}

/// Counts each reply's outcome (in `sources`' order: source and datagram length) as
/// echoed, or as send-failed when it was refused or sent fewer bytes than it had; empties
/// both.
fn count_replies(
    guard: &mut Guard,
    sources: &mut Vec<(SocketAddr, usize)>,
    outcomes: &mut Vec<io::Result<usize>>,
    now: Instant,
) {
    for ((src, len), outcome) in sources.drain(..).zip(outcomes.drain(..)) {
        match outcome {
            Ok(n) if n == len => guard.echoed(len, src),
            _ => guard.count_drop(DropReason::SendFailed, src, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Policy;
    use crate::{UdpConfig, UdpError, UdpModel, UdpServer};
    use std::sync::Arc;

    /// A uring server on 127.0.0.1:0 with one loop, or None (SKIPPED said) where the
    /// kernel refuses io_uring.
    fn uring_server(policy: Policy) -> Option<UdpServer> {
        let config = UdpConfig {
            model: UdpModel::Uring,
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: Some(1),
            policy,
            ipv6_only: false,
        };
        match UdpServer::start(&config, Arc::new(AtomicBool::new(false))) {
            Ok(server) => Some(server),
            Err(UdpError::Unsupported { reason, .. }) => {
                echolab_cli::say!("SKIPPED: {reason}");
                None
            }
            Err(err) => panic!("{err}"),
        }
    }

    /// Waits until the server has judged `n` datagrams (bounded: 10 s).
    fn wait_received(server: &UdpServer, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.stats().received < n {
            assert!(Instant::now() < deadline, "{:?}", server.stats());
            std::thread::yield_now();
        }
    }

    #[test]
    fn it_echoes_what_the_guard_admits_counts_the_rest_and_counts_echoes_when_sent() {
        let Some(server) = uring_server(Policy::default()) else {
            return;
        };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![0u8; BUF_LEN];
        for size in [0usize, 1, 1400, crate::MAX_PAYLOAD_V4] {
            let sent: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
            client.send_to(&sent, server.local_addr()).unwrap();
            let (len, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(from, server.local_addr());
            assert!(buf[..len] == sent[..], "{size}-byte echo differs");
        }
        // Source port 13 (daytime) is never answered. Root may bind it; others skip.
        let reserved = UdpSocket::bind("127.0.0.1:13").ok();
        if let Some(reserved) = &reserved {
            reserved.send_to(b"loop?", server.local_addr()).unwrap();
            wait_received(&server, 5);
        } else {
            echolab_cli::say!("skipped: source port 13: cannot bind 127.0.0.1:13");
        }
        let stats = server.join().unwrap();
        let n_reserved = u64::from(reserved.is_some());
        assert_eq!(stats.received, 4 + n_reserved);
        assert_eq!(stats.echoed, 4);
        assert_eq!(stats.dropped(DropReason::ReservedPort), n_reserved);
        assert_eq!(stats.total_dropped(), n_reserved);
        if let Some(reserved) = reserved {
            reserved.set_nonblocking(true).unwrap();
            assert!(reserved.recv(&mut buf).is_err(), "a reply reached port 13");
        }
    }

    /// A loop idle for longer than its wait (two ticks: at least one wait timed out) still
    /// serves. (The sleep is the idle spell under test, not a synchronisation.)
    #[test]
    fn it_serves_after_an_idle_spell_longer_than_its_wait() {
        let Some(server) = uring_server(Policy::with_limit(false, None)) else {
            return;
        };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 8];
        for idx in 0..2u8 {
            std::thread::sleep(2 * TICK);
            client.send_to(&[idx; 3], server.local_addr()).unwrap();
            assert_eq!(client.recv(&mut buf).unwrap(), 3, "echo {idx}");
            assert_eq!(buf[..3], [idx; 3]);
        }
        let stats = server.join().unwrap();
        assert_eq!((stats.received, stats.echoed), (2, 2));
    }

    #[test]
    fn datagrams_queued_when_it_stops_are_echoed_and_counted_before_it_returns() {
        let Some(server) = uring_server(Policy::with_limit(false, None)) else {
            return;
        };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // In the server socket's queue (loopback delivers within the send) before the
        // stop flag is set.
        for idx in 0..64u8 {
            client.send_to(&[idx; 8], server.local_addr()).unwrap();
        }
        let stats = server.join().unwrap();
        // Every reply was sent and counted before join returned.
        assert_eq!((stats.received, stats.echoed), (64, 64));
        let mut buf = [0u8; 16];
        for _ in 0..64 {
            assert_eq!(client.recv(&mut buf).unwrap(), 8);
        }
    }

    #[test]
    fn a_turn_echoes_what_arrived_and_gives_every_buffer_back() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let ring = match UdpRing::new(socket.as_raw_fd(), 4, BUF_LEN) {
            Ok(ring) => ring,
            Err(err) => {
                echolab_cli::say!("SKIPPED: {}", refusal(&err));
                return;
            }
        };
        let guard = Mutex::new(Guard::new(Policy::with_limit(false, None)));
        let mut state = Loop::new(ring, &guard);
        // Nothing yet: a turn that times out echoes nothing and lends nothing.
        assert_eq!(state.turn(Duration::from_millis(1), true).unwrap(), 0);
        assert_eq!(state.ring.bufs_free(), 4);
        for idx in 0..3u8 {
            client
                .send_to(&[idx; 2], socket.local_addr().unwrap())
                .unwrap();
        }
        let mut arrived = 0;
        for _ in 0..100 {
            arrived += state.turn(Duration::from_millis(100), true).unwrap();
            assert_eq!(
                state.ring.bufs_free(),
                4,
                "a turn ends with every buffer back"
            );
            if arrived == 3 {
                break;
            }
        }
        assert_eq!(arrived, 3);
        let stats = guard.lock().unwrap().stats().clone();
        assert_eq!((stats.received, stats.echoed), (3, 3));
        assert_eq!(stats.total_dropped(), 0);
        let mut buf = [0u8; 8];
        for idx in 0..3u8 {
            assert_eq!(client.recv(&mut buf).unwrap(), 2);
            assert_eq!(buf[..2], [idx; 2]);
        }
    }

    /// The end of a loop: more datagrams queued than the ring has buffers take several
    /// turns, all echoed; then the receive is cancelled and nothing stays armed, and the
    /// cancelled receive does not wait out the time allowed.
    #[test]
    fn finishing_echoes_everything_queued_over_several_turns_then_disarms() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ring = match UdpRing::new(socket.as_raw_fd(), 4, BUF_LEN) {
            Ok(ring) => ring,
            Err(err) => {
                echolab_cli::say!("SKIPPED: {}", refusal(&err));
                return;
            }
        };
        let guard = Mutex::new(Guard::new(Policy::with_limit(false, None)));
        let mut state = Loop::new(ring, &guard);
        // Queued before the loop looks (loopback delivers within the send): 4 + 4 + 1.
        for idx in 0..9u8 {
            client
                .send_to(&[idx], socket.local_addr().unwrap())
                .unwrap();
        }
        let started = Instant::now();
        state.finish(Duration::from_secs(30)).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "finish waited out its time: {:?}",
            started.elapsed()
        );
        assert!(!state.ring.recv_armed(), "the receive is still armed");
        assert_eq!(state.ring.bufs_free(), 4);
        let stats = guard.lock().unwrap().stats().clone();
        assert_eq!((stats.received, stats.echoed), (9, 9));
        socket.set_nonblocking(true).unwrap();
        assert!(
            socket.recv(&mut [0u8; 8]).is_err(),
            "a datagram was left queued"
        );
    }

    /// A refused reply, or one that sent fewer bytes than its datagram had (no echo), is
    /// counted as send-failed; the others as echoed. (Which replies the kernel refuses is
    /// the ring's test: `a_refused_reply_is_skipped_and_the_rest_still_go`.)
    #[test]
    fn a_refused_or_short_reply_is_counted_as_send_failed() {
        let mut guard = Guard::new(Policy::with_limit(false, None));
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut sources = vec![(src, 3), (src, 3), (src, 3), (src, 0)];
        let mut outcomes = vec![
            Ok(3),
            Err(io::Error::from_raw_os_error(libc::EINVAL)),
            Ok(2),
            Ok(0),
        ];
        count_replies(&mut guard, &mut sources, &mut outcomes, Instant::now());
        assert!(sources.is_empty() && outcomes.is_empty());
        assert_eq!(guard.stats().echoed, 2);
        assert_eq!(guard.stats().dropped(DropReason::SendFailed), 2);
    }

    #[test]
    fn more_datagrams_than_buffers_at_once_are_all_echoed() {
        // 4 × N_BUFS datagrams, in bursts of 128 (well within both sockets' queues):
        // every buffer is reused four times over, and whether or not the receive runs out
        // of buffers on the way (ENOBUFS, then armed again), each datagram is echoed.
        let Some(server) = uring_server(Policy::with_limit(false, None)) else {
            return;
        };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let n = 4 * usize::from(N_BUFS);
        let mut got = 0usize;
        let mut buf = [0u8; 16];
        for round in 0..(n / 128) {
            for idx in 0..128u32 {
                let id = round as u32 * 128 + idx;
                client
                    .send_to(&id.to_le_bytes(), server.local_addr())
                    .unwrap();
            }
            let mut ids: Vec<u32> = (0..128)
                .map(|_| {
                    assert_eq!(client.recv(&mut buf).unwrap(), 4);
                    got += 1;
                    u32::from_le_bytes(buf[..4].try_into().unwrap())
                })
                .collect();
            ids.sort_unstable();
            let sent: Vec<u32> = (0..128).map(|idx| round as u32 * 128 + idx).collect();
            assert_eq!(
                ids, sent,
                "round {round}: each echo is its own datagram's bytes"
            );
        }
        assert_eq!(got, n);
        let stats = server.join().unwrap();
        assert_eq!((stats.received, stats.echoed), (n as u64, n as u64));
    }

    #[test]
    fn the_fault_spec_says_no_multishot_only_when_it_names_it() {
        let yes = || Ok(true);
        assert!(multishot_unless_injected(None, yes).unwrap());
        assert!(multishot_unless_injected(Some(""), yes).unwrap());
        assert!(multishot_unless_injected(Some("udp-multishot=yes"), yes).unwrap());
        assert!(multishot_unless_injected(Some("xudp-multishot=no"), yes).unwrap());
        // Debug builds (these tests) obey it, alone or in a list.
        assert!(!multishot_unless_injected(Some("udp-multishot=no"), yes).unwrap());
        assert!(!multishot_unless_injected(Some("setup=eperm,udp-multishot=no"), yes).unwrap());
        // Otherwise the probe answers, errors included.
        assert!(!multishot_unless_injected(None, || Ok(false)).unwrap());
        let err =
            multishot_unless_injected(None, || Err(io::Error::from_raw_os_error(libc::EPERM)));
        assert_eq!(err.unwrap_err().raw_os_error(), Some(libc::EPERM));
    }

    /// Where the kernel makes the ring, the model's own check agrees (this kernel, 6.0 or
    /// later where io_uring is allowed, runs multishot recvmsg): a wrong refusal would
    /// otherwise only show as the uring tests saying SKIPPED.
    #[test]
    fn the_ring_is_made_where_the_kernel_allows_io_uring() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Err(err) = UdpRing::new(socket.as_raw_fd(), 2, 64) {
            echolab_cli::say!("SKIPPED: {}", refusal(&err));
            return;
        }
        if std::env::var_os("ECHOLAB_FAULT_URING").is_some() {
            echolab_cli::say!("SKIPPED: ECHOLAB_FAULT_URING is set for this run");
            return;
        }
        // Multishot recvmsg came with Linux 6.0: before it, the refusal is the right answer.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut numbers = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = numbers.next().unwrap().parse().unwrap();
        if major < 6 {
            echolab_cli::say!("SKIPPED: kernel {} before 6.0", release.trim());
            return;
        }
        let ring = ring_for(&socket).unwrap();
        assert!(!ring.recv_armed());
        assert_eq!(ring.bufs_free(), usize::from(N_BUFS));
    }

    #[test]
    fn a_refusal_is_one_line_that_names_the_cause_and_the_models_that_work() {
        for (errno, cause) in [
            (libc::EPERM, "EPERM"),
            (libc::ENOSYS, "ENOSYS"),
            (libc::EINVAL, "EINVAL"),
            (libc::ENOMEM, "cannot set up io_uring"),
        ] {
            let line = refusal(&io::Error::from_raw_os_error(errno));
            assert!(line.contains(cause), "{line}");
            assert!(
                line.ends_with(OTHER_MODELS) && !line.contains('\n'),
                "{line}"
            );
        }
        let line = no_multishot();
        assert!(line.contains("multishot recvmsg") && line.contains("Linux 6.0"));
        assert!(line.ends_with(OTHER_MODELS) && !line.contains('\n'));
        let err = crate::UdpError::Unsupported {
            model: crate::UdpModel::Uring,
            reason: "why".into(),
        };
        assert_eq!(err.to_string(), "model uring cannot run here (udp): why");
        assert_eq!(err.exit_code(), 2);
    }
}
