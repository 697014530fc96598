//! `echolab client --udp`: one datagram per line typed (its echo printed), or `--send
//! FILE` split into datagrams of `--size` bytes, each echo checked against what was sent.
//!
//! One datagram is outstanding at a time; an echo that is not the datagram awaited
//! (damaged bytes, an older datagram's) is an error, never printed as the echo. A second
//! copy of the previous echo (UDP may deliver a datagram twice) is counted and ignored.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::BUF_LEN;

/// Why a UDP client run failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be made or connected, or a send failed.
    Io(io::Error),
    /// No echo within the timeout for datagram `idx` (0-based).
    NoEcho { idx: u64, timeout: Duration },
    /// Datagram `idx`'s echo differs from it.
    Mismatch { idx: u64, sent: usize, got: usize },
    /// Input larger than one datagram can carry.
    TooLong { idx: u64, len: usize, max: usize },
    /// `--send`'s source could not be read.
    Read(io::Error),
}

impl ClientError {
    /// 3 for a wrong echo, 2 for a source that cannot be read (a bad argument: a
    /// directory), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Mismatch { .. } => 3,
            ClientError::Read(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(err) => f.write_str(&echolab_cli::describe_io(err)),
            ClientError::NoEcho { idx, timeout } => write!(
                f,
                "datagram {} got no echo within {} ms",
                idx + 1,
                timeout.as_millis()
            ),
            ClientError::Mismatch { idx, sent, got } => write!(
                f,
                "datagram {} came back different: sent {sent} bytes, got {got} bytes that differ",
                idx + 1
            ),
            ClientError::TooLong { idx, len, max } => write!(
                f,
                "line {} is {len} bytes, more than one UDP datagram carries ({max})",
                idx + 1
            ),
            ClientError::Read(err) => {
                write!(f, "cannot read: {}", echolab_cli::describe_io(err))
            }
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(err: io::Error) -> ClientError {
        ClientError::Io(err)
    }
}

/// What a session sent and what came back besides the echoes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Session {
    /// Datagrams sent, each echoed unchanged.
    pub datagrams: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Second copies of an echo already taken (UDP may deliver a datagram twice), ignored.
    pub duplicates: u64,
}

/// A socket connected to `addr` (so that only the server's datagrams are received).
pub fn connect(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: IpAddr = if addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    socket.connect(addr)?;
    Ok(socket)
}

/// Sends `payload` as datagram `idx` and returns its echo, or an error if none arrives
/// within `timeout` or it differs. A second copy of the previous datagram's echo
/// (`previous`: UDP may deliver a datagram twice) is not this one's echo, nor a wrong
/// one: it is counted in `duplicates` and the wait goes on.
pub fn round_trip(
    socket: &UdpSocket,
    idx: u64,
    payload: &[u8],
    previous: Option<&[u8]>,
    timeout: Duration,
    buf: &mut [u8],
    duplicates: &mut u64,
) -> Result<usize, ClientError> {
    socket.send(payload)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::NoEcho { idx, timeout });
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv(buf) {
            Ok(len) if buf[..len] == *payload => return Ok(len),
            Ok(len) if previous.is_some_and(|p| buf[..len] == *p) => *duplicates += 1,
            Ok(len) => {
                return Err(ClientError::Mismatch {
                    idx,
                    sent: payload.len(),
                    got: len,
                })
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// Interactive: each line of `input`, without its line ending (`\n` or `\r\n`), is one
/// datagram; its echo is written to `output` followed by `\n` if the line had an ending
/// (a last line without one gets none, as TCP client prints only what came back).
pub fn interactive(
    addr: SocketAddr,
    timeout: Duration,
    mut input: impl BufRead,
    mut output: impl Write,
) -> Result<Session, ClientError> {
    let socket = connect(addr)?;
    let max = crate::max_payload(&addr);
    let mut buf = vec![0u8; BUF_LEN];
    let mut line = Vec::new();
    let mut previous: Option<Vec<u8>> = None;
    let mut session = Session::default();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let had_newline = line.last() == Some(&b'\n');
        if had_newline {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let datagram = &line[..];
        let idx = session.datagrams;
        if datagram.len() > max {
            return Err(ClientError::TooLong {
                idx,
                len: datagram.len(),
                max,
            });
        }
        let len = round_trip(
            &socket,
            idx,
            datagram,
            previous.as_deref(),
            timeout,
            &mut buf,
            &mut session.duplicates,
        )?;
        output.write_all(&buf[..len])?;
        if had_newline {
            output.write_all(b"\n")?;
        }
        output.flush()?;
        session.datagrams += 1;
        session.bytes += len as u64;
        previous = Some(datagram.to_vec());
    }
    Ok(session)
}

/// Sends what `source` yields in datagrams of `size` bytes (the last one shorter), one at
/// a time, checking each echo. The source is read one datagram ahead, never whole, so a
/// file of any size, a pipe or a device (`/dev/zero`: until the server stops answering)
/// costs two datagrams of memory (this one and the previous, to tell its duplicate).
pub fn send_all(
    addr: SocketAddr,
    mut source: impl Read,
    size: usize,
    timeout: Duration,
) -> Result<Session, ClientError> {
    let socket = connect(addr)?;
    let mut buf = vec![0u8; BUF_LEN];
    let mut chunk = vec![0u8; size.max(1)];
    let mut previous = Vec::with_capacity(chunk.len());
    let mut session = Session::default();
    loop {
        let len = fill(&mut source, &mut chunk).map_err(ClientError::Read)?;
        if len == 0 {
            break;
        }
        let idx = session.datagrams;
        let before = (idx > 0).then_some(&previous[..]);
        round_trip(
            &socket,
            idx,
            &chunk[..len],
            before,
            timeout,
            &mut buf,
            &mut session.duplicates,
        )?;
        session.datagrams += 1;
        session.bytes += len as u64;
        if len < chunk.len() {
            // `fill` stops short only at the end of the source.
            break;
        }
        previous.clear();
        previous.extend_from_slice(&chunk[..len]);
    }
    Ok(session)
}

/// Reads into `chunk` until it is full or the source ends; returns the bytes read.
fn fill(source: &mut impl Read, chunk: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < chunk.len() {
        match source.read(&mut chunk[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a thread that answers `n` datagrams, then returns what it got.
    fn echo_server(n: usize) -> (SocketAddr, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        server_that(n, |_| {})
    }

    /// A server on a thread that answers `n` datagrams, each changed by `change` first
    /// (nothing: an echo), then returns what it got.
    fn server_that(
        n: usize,
        change: impl Fn(&mut Vec<u8>) + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        server_sending(n, 1, change)
    }

    /// A server that answers `n` datagrams, each with `copies` copies of its reply
    /// (`change` made to the received bytes); its thread returns what it received.
    fn server_sending(
        n: usize,
        copies: usize,
        change: impl Fn(&mut Vec<u8>) + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; BUF_LEN];
            for _ in 0..n {
                let (len, from) = socket.recv_from(&mut buf).unwrap();
                let mut reply = buf[..len].to_vec();
                change(&mut reply);
                for _ in 0..copies {
                    socket.send_to(&reply, from).unwrap();
                }
                got.push(buf[..len].to_vec());
            }
            got
        });
        (addr, handle)
    }

    /// Each line's datagram carries no line ending; each echo is printed with a newline
    /// if its line had one, so a last line without one gets none (as TCP client, which
    /// prints what came back). A `\r\n` ending is printed as `\n` (the contract test
    /// `bench_udp_against_echolab_is_clean_and_client_udp_sends_a_file` pins it).
    #[test]
    fn a_newline_follows_an_echo_only_when_its_line_had_one() {
        for (input, datagrams, printed) in [
            (&b"a\nbc\n"[..], vec![&b"a"[..], b"bc"], &b"a\nbc\n"[..]),
            (b"a\nbc", vec![b"a", b"bc"], b"a\nbc"),
            (b"a\r\nbc\r\n", vec![b"a", b"bc"], b"a\nbc\n"),
            (b"\n\nx", vec![b"", b"", b"x"], b"\n\nx"),
            (b"x\r", vec![b"x"], b"x"),
        ] {
            let (addr, server) = echo_server(datagrams.len());
            let mut output = Vec::new();
            let session = interactive(addr, Duration::from_secs(10), input, &mut output).unwrap();
            assert_eq!(session.datagrams, datagrams.len() as u64);
            assert_eq!(
                String::from_utf8_lossy(&output),
                String::from_utf8_lossy(printed)
            );
            assert_eq!(server.join().unwrap(), datagrams);
        }
        let mut output = Vec::new();
        let (addr, server) = echo_server(0);
        assert_eq!(
            interactive(addr, Duration::from_secs(1), &b""[..], &mut output).unwrap(),
            Session::default()
        );
        assert!(output.is_empty());
        assert!(server.join().unwrap().is_empty());
    }

    /// A line of the largest payload goes; one byte more is refused before it is sent.
    #[test]
    fn a_line_longer_than_a_datagram_is_refused_in_one_line() {
        let max = crate::MAX_PAYLOAD_V4;
        let (addr, server) = echo_server(1);
        let mut input = vec![b'x'; max];
        input.push(b'\n');
        input.extend(vec![b'y'; max + 1]);
        input.push(b'\n');
        let mut output = Vec::new();
        let err = interactive(addr, Duration::from_secs(10), &input[..], &mut output).unwrap_err();
        assert!(
            matches!(err, ClientError::TooLong { idx: 1, len, max: m } if len == max + 1 && m == max),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.to_string(),
            format!(
                "line 2 is {} bytes, more than one UDP datagram carries ({max})",
                max + 1
            )
        );
        assert_eq!(
            output.len(),
            max + 1,
            "the first line's echo and its newline"
        );
        assert_eq!(server.join().unwrap().len(), 1);
    }

    /// An echo that differs ends the session with exit 3, and is not printed.
    #[test]
    fn a_changed_echo_is_a_mismatch_never_printed() {
        let (addr, server) = server_that(2, |reply| {
            if reply == b"two" {
                reply[0] ^= 0x20;
            }
        });
        let mut output = Vec::new();
        let err = interactive(
            addr,
            Duration::from_secs(10),
            &b"one\ntwo\nthree\n"[..],
            &mut output,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Mismatch {
                    idx: 1,
                    sent: 3,
                    got: 3
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "datagram 2 came back different: sent 3 bytes, got 3 bytes that differ"
        );
        assert_eq!(output, b"one\n");
        assert_eq!(
            server.join().unwrap(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
    }

    /// No echo: the wait ends at the timeout with NoEcho (exit 1), not before and not
    /// as a socket error.
    #[test]
    fn no_echo_within_the_timeout_is_said_with_its_datagram() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let timeout = Duration::from_millis(50);
        let started = Instant::now();
        let mut output = Vec::new();
        let err = interactive(
            silent.local_addr().unwrap(),
            timeout,
            &b"a\n"[..],
            &mut output,
        )
        .unwrap_err();
        assert!(started.elapsed() >= timeout);
        assert!(matches!(err, ClientError::NoEcho { idx: 0, .. }), "{err:?}");
        assert_eq!(err.exit_code(), 1);
        assert_eq!(err.to_string(), "datagram 1 got no echo within 50 ms");
        assert!(output.is_empty());
    }

    /// Nothing listening: the kernel's ICMP report (ECONNREFUSED on the connected socket)
    /// ends the session at once as a socket error, without waiting out the timeout.
    #[test]
    fn a_refused_destination_is_a_socket_error_at_once() {
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let started = Instant::now();
        let mut output = Vec::new();
        let err = interactive(addr, Duration::from_secs(20), &b"a\n"[..], &mut output).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for the timeout"
        );
        match err {
            ClientError::Io(ref io) => {
                assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused, "{io}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.exit_code(), 1);
    }

    /// A file goes in datagrams of `size` bytes, the last one shorter; the count is the
    /// datagrams sent, each echo checked.
    #[test]
    fn a_file_goes_in_datagrams_of_the_size_each_checked() {
        let (addr, server) = echo_server(3);
        let sent = send_all(addr, &b"abcdefghij"[..], 4, Duration::from_secs(10)).unwrap();
        assert_eq!((sent.datagrams, sent.bytes, sent.duplicates), (3, 10, 0));
        assert_eq!(
            server.join().unwrap(),
            vec![b"abcd".to_vec(), b"efgh".to_vec(), b"ij".to_vec()]
        );
        let (addr, server) = echo_server(0);
        let sent = send_all(addr, &b""[..], 4, Duration::from_secs(1)).unwrap();
        assert_eq!(sent, Session::default());
        assert!(server.join().unwrap().is_empty());
        // A source that yields a byte at a time is still cut at the size.
        let (addr, server) = echo_server(2);
        let trickle = Trickle(b"abcdef".iter().copied().collect());
        assert_eq!(
            send_all(addr, trickle, 4, Duration::from_secs(10))
                .unwrap()
                .datagrams,
            2
        );
        assert_eq!(
            server.join().unwrap(),
            vec![b"abcd".to_vec(), b"ef".to_vec()]
        );
    }

    /// A server on a thread that echoes each of `n` datagrams twice.
    fn doubling_server(n: usize) -> (SocketAddr, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        server_sending(n, 2, |_| {})
    }

    /// UDP may deliver a datagram twice: the second copy of an echo, read while the next
    /// datagram's is awaited, is a duplicate, not a wrong echo (it was `datagram 2 came
    /// back different`, exit 3). Each copy is sent before the next datagram, so all but
    /// the last are read.
    #[test]
    fn a_duplicated_echo_is_counted_not_called_different() {
        let (addr, server) = doubling_server(3);
        let mut output = Vec::new();
        let session = interactive(
            addr,
            Duration::from_secs(10),
            &b"one\ntwo\nsix\n"[..],
            &mut output,
        )
        .unwrap();
        assert_eq!(output, b"one\ntwo\nsix\n");
        assert_eq!((session.datagrams, session.duplicates), (3, 2));
        server.join().unwrap();
        let (addr, server) = doubling_server(3);
        let session = send_all(addr, &b"abcdefghij"[..], 4, Duration::from_secs(10)).unwrap();
        assert_eq!(
            (session.datagrams, session.bytes, session.duplicates),
            (3, 10, 2)
        );
        server.join().unwrap();
        // A copy of an older datagram is still wrong.
        let (addr, _server) = server_that(2, |reply| *reply = b"zero".to_vec());
        let err = send_all(addr, &b"abcdefgh"[..], 4, Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(err, ClientError::Mismatch { idx: 0, .. }),
            "{err:?}"
        );
    }

    /// A source that gives one byte per read.
    struct Trickle(std::collections::VecDeque<u8>);

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            match (self.0.pop_front(), out.first_mut()) {
                (Some(byte), Some(slot)) => {
                    *slot = byte;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// An endless source (`--send /dev/zero`) that counts what was read from it and
    /// refuses to give more than a mebibyte.
    struct Endless {
        pulled: usize,
    }

    impl Read for Endless {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.pulled >= 1 << 20 {
                return Err(io::Error::other(
                    "read a mebibyte: the source is read whole",
                ));
            }
            let n = out.len().min(4096);
            out[..n].fill(0);
            self.pulled += n;
            Ok(n)
        }
    }

    /// `--send /dev/zero` (or a huge file) is read a datagram ahead, not whole: against a
    /// server that answers three datagrams, the fourth goes unanswered and the run ends,
    /// having read four datagrams' worth.
    #[test]
    fn an_endless_source_is_read_one_datagram_ahead() {
        let (addr, server) = echo_server(3);
        let mut source = Endless { pulled: 0 };
        let err = send_all(addr, &mut source, 1000, Duration::from_millis(500)).unwrap_err();
        assert!(
            matches!(err, ClientError::NoEcho { idx: 3, .. } | ClientError::Io(_)),
            "{err:?}"
        );
        assert_eq!(server.join().unwrap().len(), 3);
        assert!(source.pulled <= 4 * 4096, "read {} bytes", source.pulled);
        // A source that fails to read is a bad argument (a directory), exit 2.
        let (addr, _server) = echo_server(0);
        let err = send_all(
            addr,
            Endless { pulled: 1 << 20 },
            10,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Read(_)), "{err:?}");
        assert_eq!(err.exit_code(), 2);
    }
}
