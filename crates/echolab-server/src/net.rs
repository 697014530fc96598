//! Sockets as every model wants them: a listener with a real backlog, and connections
//! with `TCP_NODELAY`.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use socket2::{Domain, Protocol, Socket, Type};

/// The listen backlog, as the book's `LISTENQ`.
///
/// `std::net::TcpListener::bind` uses 128: a burst of 200 connects then stalls on SYN
/// retransmits (a second or more) while an iterative or busy server catches up.
pub const BACKLOG: i32 = 1024;

/// Binds a listening TCP socket on `addr` (IPv4 or IPv6, port 0 for an ephemeral port).
///
/// `reuse_port` sets `SO_REUSEPORT`, so that more listeners can bind the same address and
/// the kernel spreads new connections among them (one per reactor).
pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    if reuse_port && addr.port() != 0 {
        // Linux lets a second SO_REUSEPORT listener of the same user bind a port already
        // served, and the two servers would split the connections without a word. A
        // plain bind first turns that into "address already in use".
        drop(bind_socket(addr, false)?);
    }
    bind_socket(addr, reuse_port)
}

fn bind_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `[::1]` means IPv6 only; a dual-stack listener would surprise a reader of the
        // address it printed.
        socket.set_only_v6(true)?;
    }
    // A restarted server must not wait out TIME_WAIT of its previous connections.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Another listener on the address `first` is bound to, for one more reactor thread.
/// `first` must have been bound with `reuse_port`.
pub fn bind_another(first: &TcpListener) -> io::Result<TcpListener> {
    bind_socket(first.local_addr()?, true)
}

/// `n` listeners on `first`'s address: `first` and `n - 1` more (at least one in all).
/// Every one exists before any loop starts, so a bind failure stops the server before it
/// serves anyone.
pub fn listeners_like(first: TcpListener, n: usize) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(n.max(1));
    for _ in 1..n {
        listeners.push(bind_another(&first)?);
    }
    listeners.push(first);
    Ok(listeners)
}

/// Sets the options every connection gets.
///
/// `TCP_NODELAY`: without it a message written in pieces waits about 40 ms for Nagle's
/// algorithm and the peer's delayed ACK.
pub fn configure(conn: &TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)
}

/// An OS error as a short lowercase phrase: "address already in use", not
/// "Address already in use (os error 98)".
pub fn describe(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(idx) => &text[..idx],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The OS's ways of saying "nothing to do now, try later": not errors.
pub fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// A system call interrupted by a signal: retry it.
pub fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// The process or the system ran out of descriptors (EMFILE, ENFILE), or the kernel of
/// memory for a socket: accept again later, after connections close.
pub fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A connection that went away between the kernel's accept queue and our `accept`.
pub fn aborted_before_accept(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM)
    )
}
