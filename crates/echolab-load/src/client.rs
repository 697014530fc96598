//! `echolab client`: the lecture's `echoclient` without its two bugs.
//!
//! The book's client reads a line, writes it, then reads *a line* back: a last line
//! without `\n` leaves it waiting forever, and a server that dies makes `Rio_readlineb`
//! return 0, which the loop prints as an (empty) echo. Here sending and receiving run
//! concurrently (a thread copies the input to the connection while the main thread reads
//! echoes), the end of input is a half-close (`shutdown(SHUT_WR)`) after which every owed
//! byte is still read, and the connection ending before every byte came back is an error
//! with the count, never output.
//!
//! Interactive mode checks the echo too: each byte that comes back is compared with the
//! byte sent at its offset (the input thread keeps the bytes not yet echoed, at most
//! [`MAX_OWED`]); the echo is printed as it came, and a differing byte ends the session with
//! exit status 3, as with `--send`.
//!
//! `--send FILE` is the scriptable form: the file streams out while the echo streams back
//! and is compared byte by byte with the file; the verdict names the first differing
//! offset, or the reason (reset, timeout, early end of file with N of M bytes).

use std::collections::VecDeque;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::ClientArgs;
use crate::engine::describe;

/// How a client session failed.
#[derive(Debug)]
pub enum ClientError {
    /// A bad argument (the file cannot be read): exit status 2.
    Usage(String),
    /// An echoed byte differed from the byte sent: exit status 3.
    Mismatch { offset: u64, expected: u8, got: u8 },
    /// Anything else (connect, reset, timeout, early end of file): exit status 1.
    Failed(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Usage(what) | ClientError::Failed(what) => f.write_str(what),
            ClientError::Mismatch {
                offset,
                expected,
                got,
            } => write!(
                f,
                "byte mismatch at offset {offset}: sent 0x{expected:02x}, got 0x{got:02x} back"
            ),
        }
    }
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Failed(_) => 1,
            ClientError::Usage(_) => 2,
            ClientError::Mismatch { .. } => 3,
        }
    }
}

/// Runs `echolab client` and returns its exit status (see [`ClientArgs`]).
pub fn run(args: ClientArgs) -> ExitCode {
    let result = connect(args.addr, args.timeout).and_then(|conn| match &args.send {
        Some(path) => send_file(conn, path, args.timeout).map(|(bytes, elapsed)| {
            echolab_cli::print_out(&format!(
                "ok: {bytes} bytes sent, echoed and verified in {:.3} s",
                elapsed.as_secs_f64()
            ));
        }),
        None => interactive(conn, args.timeout),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            echolab_cli::say!("echolab client: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    let conn = TcpStream::connect_timeout(&addr, timeout).map_err(|err| {
        ClientError::Failed(format!("cannot connect to {addr}: {}", describe(&err)))
    })?;
    // Small writes (a typed line) go out at once rather than waiting on Nagle.
    let _ = conn.set_nodelay(true);
    Ok(conn)
}

/// What a read error means for the verdict, with the progress so far.
fn read_failure(err: &io::Error, timeout: Duration, received: u64, sent: u64) -> ClientError {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Failed(format!(
            "timeout: no echo for {:.1} s, {received} of {sent} bytes echoed",
            timeout.as_secs_f64()
        )),
        io::ErrorKind::ConnectionReset => ClientError::Failed(format!(
            "the server reset the connection after {received} of {sent} bytes echoed"
        )),
        _ => ClientError::Failed(format!(
            "cannot read from the server after {received} of {sent} bytes echoed: {}",
            describe(err)
        )),
    }
}

/// Sends `path` over `conn` while reading the echo back and comparing it with the file.
/// Returns the byte count and the time it took.
pub fn send_file(
    conn: TcpStream,
    path: &Path,
    timeout: Duration,
) -> Result<(u64, Duration), ClientError> {
    let shown = path.display();
    // The verdict compares the echo with a second reading of the file, and needs its length
    // up front: a regular file only.
    let (source, total) = echolab_cli::open_send_file(path).map_err(ClientError::Usage)?;
    let mut source = source;
    let (expected, _) = echolab_cli::open_send_file(path).map_err(ClientError::Usage)?;
    let mut expected = BufReader::with_capacity(64 * 1024, expected);
    let started = Instant::now();
    let writer_conn = conn.try_clone().map_err(|err| {
        ClientError::Failed(format!(
            "cannot duplicate the connection: {}",
            describe(&err)
        ))
    })?;
    let _ = writer_conn.set_write_timeout(Some(timeout));
    let _ = conn.set_read_timeout(Some(timeout));
    thread::scope(|scope| {
        // The sender: the whole file, then a half-close so the server knows it has it all.
        let sender = scope.spawn(move || -> io::Result<u64> {
            let mut conn = writer_conn;
            let sent = io::copy(&mut source, &mut conn).and_then(|copied| {
                conn.shutdown(Shutdown::Write)?;
                Ok(copied)
            });
            if sent.is_err() {
                // The receiver waits for an echo of the whole file, which will not come:
                // wake it now rather than after the timeout.
                let _ = conn.shutdown(Shutdown::Both);
            }
            sent
        });
        let verdict = receive_and_verify(&conn, &mut expected, total, timeout);
        // On a failure the sender may be blocked in write on a server that stopped
        // reading: shutting the connection down both ways wakes it with an error.
        if verdict.is_err() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the sender panicked")));
        match (verdict, sent) {
            // A mismatch is the verdict whatever happened to the sender afterwards.
            (Err(err @ ClientError::Mismatch { .. }), _) => Err(err),
            // The sender failed first (the file could not be read, the server stopped
            // reading): its reason explains the receiver's early end.
            (Err(_), Err(err)) if !is_connection_error(&err) => Err(ClientError::Failed(format!(
                "cannot send {shown}: {}",
                describe(&err)
            ))),
            (Err(err), _) => Err(err),
            (Ok(received), Err(err)) => Err(ClientError::Failed(format!(
                "cannot send to the server after {received} bytes echoed: {}",
                describe(&err)
            ))),
            (Ok(received), Ok(_)) => Ok((received, started.elapsed())),
        }
    })
}

/// True for a sender error that comes from the connection (the server reset or stopped
/// reading, or the receiver shut it down after its own failure) rather than from reading
/// the file: the receiver's verdict then says better what happened.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// Reads the echo until the server closes, comparing it with `expected` (`total` bytes).
fn receive_and_verify(
    mut conn: &TcpStream,
    expected: &mut impl Read,
    total: u64,
    timeout: Duration,
) -> Result<u64, ClientError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) if received == total => return Ok(received),
            Ok(0) => {
                return Err(ClientError::Failed(format!(
                    "early end of file: the server closed the connection after {received} of {total} bytes echoed"
                )))
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(read_failure(&err, timeout, received, total)),
        };
        let owed = (total - received) as usize;
        let checked = n.min(owed);
        expected.read_exact(&mut want[..checked]).map_err(|err| {
            ClientError::Usage(format!(
                "the file changed while being sent: {}",
                describe(&err)
            ))
        })?;
        if let Some(i) = buf[..checked]
            .iter()
            .zip(&want[..checked])
            .position(|(g, w)| g != w)
        {
            return Err(ClientError::Mismatch {
                offset: received + i as u64,
                expected: want[i],
                got: buf[i],
            });
        }
        if n > owed {
            return Err(ClientError::Failed(format!(
                "the server sent {} bytes more than the {total} it was sent",
                n - owed
            )));
        }
        received += n as u64;
    }
}

/// The most bytes sent and not yet echoed that interactive mode keeps to compare with
/// the echo; past it, the input waits for echoes (a server that reads without echoing
/// then times out instead of growing the client's memory).
pub const MAX_OWED: usize = 4 * 1024 * 1024;

/// The lecture's interactive client: stdin to the server, echoes to stdout.
fn interactive(conn: TcpStream, timeout: Duration) -> Result<(), ClientError> {
    /// What the input thread shares with the main thread.
    #[derive(Debug, Default)]
    struct Input {
        /// Bytes handed to the connection; counted before the write, so the echo of a
        /// byte can never arrive before its count.
        sent: AtomicU64,
        /// The bytes sent and not yet echoed, oldest first (pushed with `sent`'s count,
        /// under this lock), compared with the echo as it comes.
        owed: Mutex<VecDeque<u8>>,
        /// Signalled when echoes take bytes off `owed`.
        echoed: Condvar,
        /// Set before the half-close: from then on, the server closing is expected.
        done: AtomicBool,
        /// Why sending failed, if it did.
        error: Mutex<Option<String>>,
    }
    let input = Arc::new(Input::default());
    let mut writer_conn = conn.try_clone().map_err(|err| {
        ClientError::Failed(format!(
            "cannot duplicate the connection: {}",
            describe(&err)
        ))
    })?;
    let shared = Arc::clone(&input);
    // Not joined on an error, nor when stdout's reader left: it may be blocked reading a
    // terminal, and returning from main ends the process with it. On success it has
    // finished (input ended).
    let stdin_thread = thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        let result = loop {
            match stdin.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    {
                        let mut owed = shared.owed.lock().unwrap_or_else(|e| e.into_inner());
                        while !owed.is_empty() && owed.len() + n > MAX_OWED {
                            owed = shared.echoed.wait(owed).unwrap_or_else(|e| e.into_inner());
                        }
                        owed.extend(&buf[..n]);
                        shared.sent.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    if let Err(err) = writer_conn.write_all(&buf[..n]) {
                        break Err(format!("cannot send to the server: {}", describe(&err)));
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(format!("cannot read stdin: {}", describe(&err))),
            }
        };
        if let Err(err) = result {
            *shared.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
        }
        shared.done.store(true, Ordering::SeqCst);
        let _ = writer_conn.shutdown(Shutdown::Write);
    });

    // Short read timeouts let the loop notice an owed echo that does not come.
    let _ = conn.set_read_timeout(Some(timeout.min(Duration::from_millis(100))));
    let mut conn = &conn;
    let mut stdout = echolab_cli::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    // Since when an echo has been owed without progress.
    let mut owed_since: Option<Instant> = None;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => {
                let sent = input.sent.load(Ordering::SeqCst);
                if !input.done.load(Ordering::SeqCst) {
                    return Err(ClientError::Failed(format!(
                        "the server closed the connection before the end of input ({received} of {sent} bytes echoed)"
                    )));
                }
                if let Some(err) = input.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    return Err(ClientError::Failed(err));
                }
                if received < sent {
                    return Err(ClientError::Failed(format!(
                        "early end of file: the server echoed {received} of {sent} bytes"
                    )));
                }
                let _ = stdin_thread.join();
                return Ok(());
            }
            Ok(n) => {
                let sent = input.sent.load(Ordering::SeqCst);
                if received + n as u64 > sent {
                    return Err(ClientError::Failed(format!(
                        "the server sent {} bytes it was never sent",
                        received + n as u64 - sent
                    )));
                }
                // Compared before it is printed; printed as it came either way.
                let mismatch = {
                    let mut owed = input.owed.lock().unwrap_or_else(|e| e.into_inner());
                    let want: Vec<u8> = owed.drain(..n).collect();
                    input.echoed.notify_all();
                    buf[..n]
                        .iter()
                        .zip(&want)
                        .position(|(got, want)| got != want)
                        .map(|i| ClientError::Mismatch {
                            offset: received + i as u64,
                            expected: want[i],
                            got: buf[i],
                        })
                };
                received += n as u64;
                owed_since = (received < sent).then(Instant::now);
                if let Err(err) = stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()) {
                    if echolab_cli::stdout_closed() {
                        // `client | head -c 10`: nobody reads the echoes on; the session
                        // ends quietly (exit 141, `echolab_cli::STDOUT_CLOSED`).
                        return Ok(());
                    }
                    return Err(ClientError::Failed(format!(
                        "cannot write to stdout: {}",
                        describe(&err)
                    )));
                }
                if let Some(mismatch) = mismatch {
                    return Err(mismatch);
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let sent = input.sent.load(Ordering::SeqCst);
                if received >= sent {
                    owed_since = None;
                    continue;
                }
                let since = *owed_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= timeout {
                    return Err(read_failure(&err, timeout, received, sent));
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                let sent = input.sent.load(Ordering::SeqCst);
                return Err(read_failure(&err, timeout, received, sent));
            }
        }
    }
}
