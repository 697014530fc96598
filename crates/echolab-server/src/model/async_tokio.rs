//! The async server: tokio's multi-threaded runtime, the way most Rust users would write
//! an echo server today. An accept loop spawns a task per connection; a task reads like
//! the lecture's thread-per-connection code, but suspends on `await` instead of blocking,
//! and tokio runs every task on `--workers` threads (default: one per core) that steal
//! work from each other.
//!
//! Trade-off: the thread model's straight-line code at the event model's memory cost per
//! connection, on every core; paid for with a runtime between the code and the kernel
//! (task wake-ups, a shared timer wheel, work stealing), which the benchmark measures.
//!
//! Written the idiomatic way (structured like tokio's mini-redis): the shared cap
//! ([`crate::admission`], where mini-redis has a semaphore) limits connections, a [`watch`] channel tells every task to stop, and the accept loop waits for
//! the tasks it spawned before returning. The bytes come from the shared [`Echo`], driven
//! by tokio's readiness (`ready`, `try_read`, `try_write`), so backpressure, half-close and
//! lines mode follow the same rules as in every other model.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{Interest, Ready};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::accept;
use crate::admission::{Admission, ConnCap};
use crate::conn::{self, End, READ_BUF};
use crate::echo::{Echo, EchoConfig, EchoError};
use crate::{cores, net, Server};

/// The most bytes a connection task moves (in plus out) before it yields to the other
/// tasks of its worker. tokio's own cooperative budget counts operations, 128 per poll, and
/// a task that is always ready is polled again before the I/O driver is: a probe beside a
/// streamer waited 100 ms to 2 s for its echo (issue 9). `yield_now` puts the task behind
/// the driver's next poll, so every ready connection gets its turn.
const BYTES_PER_TURN: u64 = 256 * 1024;

/// How long shutdown waits for connection tasks to finish before leaving them to the
/// runtime's own shutdown; keeps the whole stop within the contract's 2 seconds.
const DRAIN_DEADLINE: Duration = Duration::from_millis(1500);

pub fn run(server: Server) -> io::Result<()> {
    let Server {
        listener,
        config,
        shutdown,
        cap,
    } = server;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.unwrap_or_else(cores).max(1))
        .thread_name("async-worker")
        .enable_all()
        .build()?;
    listener.set_nonblocking(true)?;
    let settings = Settings {
        echo: config.echo,
        idle_timeout: config.idle_timeout,
    };
    // The shutdown pipe is watched by a plain thread blocked in poll(2), which tells the
    // runtime through a channel. Registering the pipe with tokio instead would need a
    // duplicate descriptor (or `unsafe`), and a server out of descriptors has none to spare.
    let (stop_signal_tx, stop_signal_rx) = oneshot::channel::<()>();
    let shutdown = &shutdown;
    let result = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("async-shutdown".to_string())
            .stack_size(64 * 1024)
            .spawn_scoped(scope, move || {
                while !shutdown.wait_timeout(Duration::from_secs(3600)) {}
                let _ = stop_signal_tx.send(());
            })?;
        let result = runtime.block_on(async move {
            let listener = TcpListener::from_std(listener)?;
            serve(listener, stop_signal_rx, settings, cap).await
        });
        // Releases the watcher when the server stopped on its own (an error).
        shutdown.trigger();
        result
    });
    // Tasks still running past the drain deadline are dropped here; a task holds only its
    // socket and buffers, so dropping it closes the connection.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

/// What every connection task needs.
#[derive(Debug, Clone, Copy)]
struct Settings {
    echo: EchoConfig,
    idle_timeout: Option<Duration>,
}

/// The accept loop; returns once `stop_signal` fires (or its sender is gone) and the
/// connection tasks have ended.
async fn serve(
    listener: TcpListener,
    stop_signal: oneshot::Receiver<()>,
    settings: Settings,
    cap: Arc<ConnCap>,
) -> io::Result<()> {
    // Sends `true` once, at shutdown; every task watches it.
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each task holds a clone of the sender; `recv` returns `None` once every task ended.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);

    let mut shutdown_ready = stop_signal;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown_ready => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // A task holds its admission until it ends.
                let admission = match cap.admit(peer) {
                    Ok(admission) => admission,
                    Err(why) => {
                        cap.refuse(stream, peer, why);
                        continue;
                    }
                };
                let stop_rx = stop_rx.clone();
                let done_tx = done_tx.clone();
                tokio::spawn(async move {
                    serve_conn(stream, peer, settings, stop_rx, admission).await;
                    drop(done_tx);
                });
            }
            Err(err) => {
                if let Some(until) = accept::after_accept_error(&err) {
                    tokio::select! {
                        biased;
                        _ = &mut shutdown_ready => break,
                        () = tokio::time::sleep_until(until.into()) => {}
                    }
                }
            }
        }
    }
    // Stop accepting first: the port is free while the connections close.
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = tokio::time::timeout(DRAIN_DEADLINE, done_rx.recv()).await;
    Ok(())
}

/// Serves one connection until it ends, and logs its opening and closing; `admission` is
/// its place under the cap, freed before the close line.
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    settings: Settings,
    stop_rx: watch::Receiver<bool>,
    admission: Admission,
) {
    let mut echo = Echo::new(settings.echo);
    let end = match stream.set_nodelay(true) {
        Ok(()) => {
            conn::log_opened(peer);
            echo_loop(&stream, &mut echo, settings, stop_rx).await
        }
        Err(err) => End::Failed(err.into()),
    };
    // The socket closes and the place under the cap is free before the close line.
    drop(stream);
    drop(admission);
    conn::log_closed(peer, &echo, &end);
}

async fn echo_loop(
    stream: &TcpStream,
    echo: &mut Echo,
    settings: Settings,
    mut stop_rx: watch::Receiver<bool>,
) -> End {
    // One timer per connection, pushed back when bytes move, rather than a new timer for
    // every wait.
    let idle_timeout = settings.idle_timeout.unwrap_or(Duration::MAX);
    let far = || {
        Instant::now()
            .checked_add(idle_timeout)
            .unwrap_or_else(far_future)
    };
    let mut idle = pin!(tokio::time::sleep_until(far()));
    let mut moved_at_last_yield = 0u64;
    loop {
        let moved_so_far = echo.bytes_in() + echo.bytes_out();
        if moved_so_far - moved_at_last_yield >= BYTES_PER_TURN {
            moved_at_last_yield = moved_so_far;
            tokio::task::yield_now().await;
        }
        let interest = match (echo.wants_read(), echo.wants_write()) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (false, true) => Interest::WRITABLE,
            // The echo neither reads (end of input) nor owes: it is finished, caught below.
            (_, false) => Interest::READABLE,
        };
        let ready = tokio::select! {
            biased;
            _ = stop_rx.changed() => return End::Shutdown,
            () = &mut idle => return End::Idle(idle_timeout),
            ready = stream.ready(interest) => ready,
        };
        let ready = match ready {
            Ok(ready) => ready,
            Err(err) => return End::Failed(err.into()),
        };
        match step(stream, echo, ready) {
            Ok(false) => {}
            Ok(true) => idle.as_mut().reset(far()),
            Err(err) => return End::Failed(err),
        }
        if echo.is_finished() {
            return End::PeerClosed;
        }
    }
}

thread_local! {
    /// The read buffer of every connection task on this worker thread. `step` never
    /// awaits, so no two tasks use it at once; a buffer per task would cost every idle
    /// connection 16 KiB (issue 9: idle memory per connection at most 1 KiB).
    static READ_BUFFER: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; READ_BUF].into_boxed_slice());
}

/// Moves what bytes the readiness allows; true if any moved.
fn step(stream: &TcpStream, echo: &mut Echo, ready: Ready) -> Result<bool, EchoError> {
    READ_BUFFER.with_borrow_mut(|buf| step_with(stream, echo, buf, ready))
}

fn step_with(
    stream: &TcpStream,
    echo: &mut Echo,
    buf: &mut [u8],
    ready: Ready,
) -> Result<bool, EchoError> {
    let mut moved = false;
    let mut writer = TryWriter(stream);
    if ready.is_writable() && echo.wants_write() {
        let before = echo.bytes_out();
        echo.flush(&mut writer)?;
        moved |= echo.bytes_out() != before;
    }
    let room = echo.read_room().min(buf.len());
    if (ready.is_readable() || ready.is_read_closed()) && room > 0 {
        match stream.try_read(&mut buf[..room]) {
            Ok(0) => {
                echo.on_eof(&mut writer)?;
                moved = true;
            }
            Ok(n) => {
                log::trace!("server received {n} bytes");
                echo.on_input(&buf[..n], &mut writer)?;
                moved = true;
            }
            // A spurious wake-up: tokio has cleared the readiness, the next `ready` waits.
            Err(err) if net::would_block(&err) || net::interrupted(&err) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(moved)
}

/// The echo's writer: tokio's non-blocking `try_write`, which returns `WouldBlock` (and
/// clears tokio's writability) when the kernel's buffer is full.
struct TryWriter<'a>(&'a TcpStream);

impl Write for TryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A deadline that never comes, for `--idle-timeout 0` (tokio rejects `Instant` overflow).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
