//! One connection served on a blocking socket: the lecture's `echo(connfd)`, shared by
//! the iterative, process, thread and prethreaded models, plus the log lines every model
//! writes when a connection opens and closes.

use std::fmt;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::accept::LogThrottle;
use crate::echo::{Echo, EchoConfig, EchoError};
use crate::net;

/// The read buffer of a blocking connection. Small enough for a 64 KiB thread stack
/// (it lives on the heap anyway), large enough for one read per 16 KiB message.
pub const READ_BUF: usize = 16 * 1024;

/// How a connection ended.
#[derive(Debug)]
pub enum End {
    /// The peer shut down its write side and got every byte back.
    PeerClosed,
    /// Nothing was read or written for the idle timeout.
    Idle(Duration),
    /// The server is shutting down.
    Shutdown,
    /// The echo failed: a reset, a broken pipe, an over-long line.
    Failed(EchoError),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::PeerClosed => f.write_str("peer closed"),
            End::Idle(timeout) => write!(f, "idle for {}s (--idle-timeout)", timeout.as_secs_f64()),
            End::Shutdown => f.write_str("server shutting down"),
            End::Failed(EchoError::Io(err)) => f.write_str(&net::describe(err)),
            End::Failed(err) => err.fmt(f),
        }
    }
}

/// Counts and logs a connection from `peer` accepted but dropped before it was served,
/// because its socket options could not be set (`err`).
pub fn log_dropped(peer: SocketAddr, err: &io::Error) {
    crate::stats::global().dropped();
    log::warn!(
        "conn {peer} dropped: cannot configure it: {}",
        net::describe(err)
    );
}

/// Logs that a connection from `peer` was accepted.
pub fn log_opened(peer: SocketAddr) {
    crate::stats::global().opened();
    log::debug!("conn {peer} opened");
}

/// Logs that the connection from `peer` ended, why, and how many bytes it moved.
pub fn log_closed(peer: SocketAddr, echo: &Echo, end: &End) {
    log_closed_counts(peer, echo.bytes_in(), echo.bytes_out(), end);
}

/// [`log_closed`] for a model that counts the bytes out itself (io_uring counts what the
/// kernel confirmed sent, not what went into a send buffer).
pub fn log_closed_counts(peer: SocketAddr, bytes_in: u64, bytes_out: u64, end: &End) {
    crate::stats::global().closed(crate::stats::EndKind::of(end));
    match end {
        // A warning, since the client broke the server's rule, but at most one line a
        // second (with a count of the others), like refusals: a client that opens
        // connection after connection with over-long lines must not flood the log. Every
        // close is still a debug line and counted in the stats.
        End::Failed(EchoError::LineTooLong { limit }) => {
            let admitted = LONG_LINE_LOG
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .admit(Instant::now(), LONG_LINE_LOG_INTERVAL);
            let counts = format!("({bytes_in} bytes in, {bytes_out} out)");
            match admitted {
                Some(0) => log::warn!("conn {peer} closed: line longer than --max-line {limit} bytes {counts}"),
                Some(more) => log::warn!("conn {peer} closed: line longer than --max-line {limit} bytes {counts} ({more} more closed for a long line since the last such line)"),
                None => log::debug!("conn {peer} closed: {end} {counts}"),
            }
        }
        _ => log::debug!("conn {peer} closed: {end} ({bytes_in} bytes in, {bytes_out} out)"),
    }
}

/// The warnings about connections closed for an over-long line: at most one per
/// [`LONG_LINE_LOG_INTERVAL`] for the whole server (per process in the process model).
static LONG_LINE_LOG: Mutex<LogThrottle> = Mutex::new(LogThrottle::new());

/// At most one "line longer than --max-line" warning this often.
pub const LONG_LINE_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What a blocking connection needs besides its socket.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings<'a> {
    pub echo: EchoConfig,
    pub idle_timeout: Option<Duration>,
    /// Set when the server shuts down; tells a read that returned 0 after the server shut
    /// the socket down apart from a peer that closed.
    pub shutting_down: &'a AtomicBool,
}

impl<'a> ConnSettings<'a> {
    /// The settings of `config`, with `shutting_down` as the server's shutdown flag.
    pub fn new(config: &crate::ServeConfig, shutting_down: &'a AtomicBool) -> ConnSettings<'a> {
        ConnSettings {
            echo: config.echo,
            idle_timeout: config.idle_timeout,
            shutting_down,
        }
    }
}

/// Serves `conn` until the peer closes, the connection fails or idles, or the server
/// shuts it down. Logs the open and the close; `place` (the connection's place under the
/// cap, or `()`) is dropped just before the close line, so that a client who sees the
/// line can count on the place being free.
///
/// Blocking I/O with the idle timeout set as `SO_RCVTIMEO`/`SO_SNDTIMEO`: a silent client
/// times out in `read`, a client that never reads times out in `write` once the kernel's
/// buffers are full. Either way the thread is freed.
pub fn serve_blocking<P>(
    conn: &TcpStream,
    peer: SocketAddr,
    settings: ConnSettings<'_>,
    place: P,
) -> End {
    log_opened(peer);
    let mut echo = Echo::new(settings.echo);
    let end = echo_loop(conn, &mut echo, settings);
    drop(place);
    log_closed(peer, &echo, &end);
    end
}

fn echo_loop(conn: &TcpStream, echo: &mut Echo, settings: ConnSettings<'_>) -> End {
    if let Err(err) = conn
        .set_read_timeout(settings.idle_timeout)
        .and_then(|()| conn.set_write_timeout(settings.idle_timeout))
    {
        return End::Failed(EchoError::Io(err));
    }
    let idle = |err: &io::Error| {
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    let mut buf = vec![0u8; READ_BUF];
    let mut writer = conn;
    loop {
        let room = echo.read_room().min(buf.len());
        match (&*conn).read(&mut buf[..room]) {
            Ok(0) => {
                if settings.shutting_down.load(Ordering::SeqCst) {
                    return End::Shutdown;
                }
                if let Err(err) = echo.on_eof(&mut writer) {
                    return End::Failed(err);
                }
                // A blocking write only stops early on the send timeout.
                return if echo.is_finished() {
                    End::PeerClosed
                } else {
                    End::Idle(settings.idle_timeout.unwrap_or_default())
                };
            }
            Ok(n) => {
                log::trace!("server received {n} bytes");
                if let Err(err) = echo.on_input(&buf[..n], &mut writer) {
                    return if settings.shutting_down.load(Ordering::SeqCst) {
                        End::Shutdown
                    } else {
                        End::Failed(err)
                    };
                }
                if echo.wants_write() {
                    // The send timeout expired with bytes still owed: the peer stopped reading.
                    return End::Idle(settings.idle_timeout.unwrap_or_default());
                }
            }
            Err(err) if net::interrupted(&err) => {}
            Err(err) if idle(&err) => return End::Idle(settings.idle_timeout.unwrap_or_default()),
            Err(err) => {
                return if settings.shutting_down.load(Ordering::SeqCst) {
                    End::Shutdown
                } else {
                    End::Failed(EchoError::Io(err))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Shutdown as Direction, TcpListener};

    #[test]
    fn ends_read_as_the_log_says() {
        assert_eq!(End::PeerClosed.to_string(), "peer closed");
        assert_eq!(
            End::Idle(Duration::from_millis(1500)).to_string(),
            "idle for 1.5s (--idle-timeout)"
        );
        assert_eq!(End::Shutdown.to_string(), "server shutting down");
        assert_eq!(
            End::Failed(EchoError::LineTooLong { limit: 7 }).to_string(),
            "line longer than --max-line 7 bytes"
        );
    }

    /// A connected pair on loopback: (the client's end, the server's end, the client's address).
    fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        (client, server, peer)
    }

    fn settings(flag: &AtomicBool, idle: Option<Duration>) -> ConnSettings<'_> {
        ConnSettings {
            echo: EchoConfig::default(),
            idle_timeout: idle,
            shutting_down: flag,
        }
    }

    #[test]
    fn a_blocking_connection_echoes_until_the_peer_closes() {
        let (mut client, server, peer) = pair();
        let flag = AtomicBool::new(false);
        let served = std::thread::spawn(move || {
            let end = serve_blocking(
                &server,
                peer,
                settings(&flag, Some(Duration::from_secs(20))),
                (),
            );
            matches!(end, End::PeerClosed)
        });
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        client.shutdown(Direction::Write).unwrap();
        assert_eq!(client.read(&mut buf).unwrap(), 0);
        assert!(served.join().unwrap());
    }

    #[test]
    fn a_silent_blocking_connection_ends_idle() {
        let (_client, server, peer) = pair();
        let flag = AtomicBool::new(false);
        let timeout = Duration::from_millis(50);
        let end = serve_blocking(&server, peer, settings(&flag, Some(timeout)), ());
        assert!(matches!(end, End::Idle(t) if t == timeout), "{end}");
    }

    #[test]
    fn a_reset_is_a_failure_not_an_idle_connection() {
        let (client, server, peer) = pair();
        let flag = AtomicBool::new(false);
        // SO_LINGER 0: closing sends a reset.
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        let end = serve_blocking(
            &server,
            peer,
            settings(&flag, Some(Duration::from_secs(20))),
            (),
        );
        assert!(matches!(end, End::Failed(EchoError::Io(_))), "{end}");
    }

    #[test]
    fn a_read_of_zero_while_shutting_down_is_the_shutdown() {
        let (client, server, peer) = pair();
        let flag = AtomicBool::new(true);
        client.shutdown(Direction::Write).unwrap();
        let end = serve_blocking(&server, peer, settings(&flag, None), ());
        assert!(matches!(end, End::Shutdown), "{end}");
    }
}
