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
///
/// `ipv6_only` sets `IPV6_V6ONLY` on an IPv6 listener; without it the kernel's default
/// holds: on Linux (`net.ipv6.bindv6only = 0`) `[::]` is dual-stack and also accepts IPv4
/// connections, which appear as `[::ffff:a.b.c.d]` peers.
pub fn bind(addr: SocketAddr, reuse_port: bool, ipv6_only: bool) -> io::Result<TcpListener> {
    if reuse_port && addr.port() != 0 {
        // Linux lets a second SO_REUSEPORT listener of the same user bind a port already
        // served, and the two servers would split the connections without a word. A
        // plain bind first turns that into "address already in use".
        drop(bind_socket(addr, false, ipv6_only)?);
    }
    bind_socket(addr, reuse_port, ipv6_only)
}

/// `HOST:PORT` as a listen address: an IP literal as it is, a host name resolved (the
/// first IPv4 address it has, else the first; `localhost:7007` is `127.0.0.1:7007`).
pub fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    // The one address parser of every subcommand, so serve, client and bench say the same.
    echolab_cli::units::addr(text)
}

fn bind_socket(addr: SocketAddr, reuse_port: bool, ipv6_only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && ipv6_only {
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

/// A listener on `addr` with SO_REUSEPORT beside others already there (a `--processes`
/// worker's own), without [`bind`]'s check that the port is free.
pub fn bind_beside(addr: SocketAddr, ipv6_only: bool) -> io::Result<TcpListener> {
    bind_socket(addr, true, ipv6_only)
}

/// Another listener on the address `first` is bound to, for one more reactor thread.
/// Without `SO_REUSEPORT` on `first` (a socket passed by the service manager without
/// `ReusePort=yes`), the same listener again: the loops then share one accept queue.
pub fn bind_another(first: &TcpListener) -> io::Result<TcpListener> {
    let first_socket = socket2::SockRef::from(first);
    if !first_socket.reuse_port()? {
        return first.try_clone();
    }
    let addr = first.local_addr()?;
    bind_socket(addr, true, addr.is_ipv6() && first_socket.only_v6()?)
}

/// For `n_loops` loops, each its own listener on every address of `listeners` (the
/// `--listen` addresses, in order): `result[i]` are loop i's, one per address, made by
/// [`listeners_like`].
pub fn listeners_per_loop(
    listeners: impl IntoIterator<Item = TcpListener>,
    n_loops: usize,
) -> io::Result<Vec<Vec<TcpListener>>> {
    let mut per_loop: Vec<Vec<TcpListener>> = (0..n_loops.max(1)).map(|_| Vec::new()).collect();
    for listener in listeners {
        for (one, mine) in listeners_like(listener, n_loops)?
            .into_iter()
            .zip(&mut per_loop)
        {
            mine.push(one);
        }
    }
    Ok(per_loop)
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
    echolab_cli::describe_io(err)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_literals_and_host_names_with_a_port() {
        assert_eq!(
            resolve_listen("[::1]:7").unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(
            resolve_listen("0.0.0.0:0").unwrap(),
            "0.0.0.0:0".parse().unwrap()
        );
        // localhost is in /etc/hosts as 127.0.0.1 (and often ::1): IPv4 first.
        assert_eq!(
            resolve_listen("localhost:7007").unwrap(),
            "127.0.0.1:7007".parse().unwrap()
        );
        for bad in [
            "localhost",
            "localhost:99999",
            ":7007",
            "127.0.0.1",
            "",
            "a b:1x",
        ] {
            // clap names the flag and the value; the parser says what is wrong.
            let err = resolve_listen(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn an_ipv6_listener_is_dual_stack_unless_ipv6_only() {
        // Loopback only (a test binds no wildcard address). Linux makes a socket bound to
        // a plain IPv6 address IPv6-only whatever was asked; [::ffff:127.0.0.1], IPv4's
        // loopback as an IPv6 address, can only be bound by a socket that takes IPv4.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:0".parse().unwrap();
        let default_v6only = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only")
            .map(|s| s.trim() == "1")
            .unwrap_or(false);
        assert_eq!(bind(mapped, false, false).is_ok(), !default_v6only);
        assert!(bind(mapped, false, true).is_err());
        let only = bind("[::1]:0".parse().unwrap(), false, true).unwrap();
        assert!(socket2::SockRef::from(&only).only_v6().unwrap());
        if !default_v6only {
            // A second reactor listener keeps the first one's choice.
            let first = bind(mapped, true, false).unwrap();
            let second = bind_another(&first).unwrap();
            assert!(!socket2::SockRef::from(&second).only_v6().unwrap());
        }
    }
}
