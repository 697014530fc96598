//! `echolab client --udp`: one datagram per line typed (its echo printed), or `--send
//! FILE` split into datagrams of `--size` bytes, each echo checked against what was sent.
//!
//! One datagram is outstanding at a time; an echo that is not the datagram awaited (a
//! stale duplicate, damaged bytes) is an error, never printed as the echo.

use std::fmt;
use std::io::{self, BufRead, Write};
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
}

impl ClientError {
    /// 3 for a wrong echo, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Mismatch { .. } => 3,
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
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(err: io::Error) -> ClientError {
        ClientError::Io(err)
    }
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
/// within `timeout` or it differs.
pub fn round_trip(
    socket: &UdpSocket,
    idx: u64,
    payload: &[u8],
    timeout: Duration,
    buf: &mut [u8],
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

/// Interactive: each line of `input` (without its line ending) is one datagram; its echo
/// is written to `output` followed by a newline. Returns the number of datagrams.
pub fn interactive(
    addr: SocketAddr,
    timeout: Duration,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<u64, ClientError> {
    let socket = connect(addr)?;
    let max = crate::max_payload(&addr);
    let mut buf = vec![0u8; BUF_LEN];
    let mut n = 0u64;
    for line in input.split(b'\n') {
        let mut line = line?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > max {
            return Err(ClientError::TooLong {
                idx: n,
                len: line.len(),
                max,
            });
        }
        let len = round_trip(&socket, n, &line, timeout, &mut buf)?;
        output.write_all(&buf[..len])?;
        output.write_all(b"\n")?;
        output.flush()?;
        n += 1;
    }
    Ok(n)
}

/// Sends `data` in datagrams of at most `size` bytes, one at a time, checking each echo.
/// Returns the number of datagrams (0 for empty data).
pub fn send_all(
    addr: SocketAddr,
    data: &[u8],
    size: usize,
    timeout: Duration,
) -> Result<u64, ClientError> {
    let socket = connect(addr)?;
    let mut buf = vec![0u8; BUF_LEN];
    let mut n = 0u64;
    for chunk in data.chunks(size.max(1)) {
        round_trip(&socket, n, chunk, timeout, &mut buf)?;
        n += 1;
    }
    Ok(n)
}
