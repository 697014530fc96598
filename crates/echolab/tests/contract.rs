//! The server contract, tested once and run against every model.
//!
//! Each test body below is a function of the model's name; `contract!` at the bottom
//! expands every body into one `#[test]` per model (`iterative::basic_echo`,
//! `event::basic_echo`, ...). A model's known limit (the iterative server serves one
//! client at a time) is asserted as that model's expected behaviour, never skipped.
//!
//! Every server runs as a child process on `127.0.0.1:0`; every socket has timeouts, and
//! waits are for a log line or a kernel state with a deadline, never a bare sleep.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use support::*;

/// Models that serve one client at a time.
fn serializes(model: &str) -> bool {
    model == "iterative"
}

fn basic_echo(model: &str) {
    let server = Server::start(model, &[]);
    let mut conn = connect(server.addr);
    conn.write_all(b"hello, echo\n").unwrap();
    assert_eq!(read_n(&mut conn, 12), b"hello, echo\n");
    conn.write_all(b"again").unwrap();
    assert_eq!(read_n(&mut conn, 5), b"again");
    drop(conn);
    server.log.wait_for("closed: peer closed", 1);
}

fn binary_64k_with_nul_and_crlf(model: &str) {
    let server = Server::start(model, &[]);
    let mut payload = pattern(64 * 1024);
    for chunk in payload.chunks_mut(1000) {
        chunk[..4].copy_from_slice(b"\0\r\n\0");
    }
    assert_eq!(round_trip(server.addr, payload.clone()), payload);
}

fn streams_16_mib_with_concurrent_send_and_receive(model: &str) {
    let server = Server::start(model, &[]);
    let payload = pattern(16 * 1024 * 1024);
    let echoed = round_trip(server.addr, payload.clone());
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "16 MiB echo differs");
    let closed = server.log.wait_for("closed: peer closed", 1);
    assert!(
        closed[0].contains("16777216 bytes in, 16777216 out"),
        "{closed:?}"
    );
}

fn hundred_concurrent_clients(model: &str) {
    let server = Server::start(model, &[]);
    let addr = server.addr;
    let clients: Vec<_> = (0..100)
        .map(|client_idx| {
            std::thread::spawn(move || {
                let payload: Vec<u8> = pattern(4096)
                    .into_iter()
                    .map(|b| b ^ client_idx as u8)
                    .collect();
                assert_eq!(round_trip(addr, payload.clone()), payload);
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    server.log.wait_for("closed: peer closed", 100);
}

/// The lecture's "where does the second client block?": client 2's connect and write
/// succeed at once; an iterative server echoes to it only after client 1 leaves, a
/// concurrent one while client 1 is still connected and idle.
fn second_client_while_first_is_idle(model: &str) {
    let server = Server::start(model, &[]);
    let mut first = connect(server.addr);
    first.write_all(b"one").unwrap();
    assert_eq!(read_n(&mut first, 3), b"one");
    let first_port = first.local_addr().unwrap().port();

    let mut second = connect(server.addr);
    second.write_all(b"two").unwrap(); // Returns at once for every model: kernel buffers.
    let second_port = second.local_addr().unwrap().port();
    if serializes(model) {
        drop(first);
        assert_eq!(read_n(&mut second, 3), b"two");
        assert_closed_before_opened(&server, first_port, second_port);
    } else {
        assert_eq!(read_n(&mut second, 3), b"two");
        // The first client is still connected and idle, and still served.
        first.write_all(b"still").unwrap();
        assert_eq!(read_n(&mut first, 5), b"still");
        assert!(server
            .log
            .position(&format!(":{first_port} closed"))
            .is_none());
    }
}

fn half_close_returns_every_byte_owed(model: &str) {
    let server = Server::start(model, &[]);
    let mut conn = connect(server.addr);
    conn.write_all(b"no newline at the end").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut conn).unwrap(), b"no newline at the end");
    // Lines mode: the last line without '\n' is echoed at end of input.
    let lines = Server::start(model, &["--mode", "lines"]);
    let echoed = round_trip(lines.addr, b"first\nsecond\nlast without newline".to_vec());
    assert_eq!(echoed, b"first\nsecond\nlast without newline");
}

fn client_reset_mid_stream_costs_only_its_connection(model: &str) {
    let server = Server::start(model, &[]);
    let mut victim = connect(server.addr);
    victim.write_all(&pattern(256 * 1024)[..1024]).unwrap();
    assert_eq!(read_n(&mut victim, 1024).len(), 1024);
    // Keep bytes in flight both ways, then reset: SO_LINGER 0 makes close send RST.
    let mut writer = victim.try_clone().unwrap();
    writer.write_all(&pattern(100 * 1024)).unwrap();
    socket2::SockRef::from(&victim)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(writer);
    drop(victim);
    server.log.wait_for(" closed: ", 1);
    // Someone who closes without reading their echo.
    let mut rude = connect(server.addr);
    rude.write_all(&pattern(100 * 1024)).unwrap();
    drop(rude);
    server.log.wait_for(" closed: ", 2);
    // The server is alive and serves the next client.
    assert_eq!(round_trip(server.addr, b"alive?".to_vec()), b"alive?");
}

/// A client that resets a connection the server is only reading (its echo all sent back,
/// nothing in flight): the close line names the reset, not a peer that closed cleanly.
/// (io_uring: the receive's ECONNRESET closes the connection; treated as "no buffer free",
/// the receive was armed again, read the end of the stream and logged "peer closed".)
fn a_reset_while_reading_is_logged_as_a_reset(model: &str) {
    let server = Server::start(model, &[]);
    let mut victim = connect(server.addr);
    victim.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut victim, 4), b"ping");
    // SO_LINGER 0: close sends RST.
    socket2::SockRef::from(&victim)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(victim);
    let closed = server.log.wait_for(" closed: ", 1);
    assert!(
        closed[0].contains("reset") && !closed[0].contains("peer closed"),
        "{model}: {closed:?}"
    );
    assert!(
        closed[0].contains("(4 bytes in, 4 out)"),
        "{model}: {closed:?}"
    );
}

/// A client that sends and never reads: the server stops reading it once 64 KiB are owed,
/// so its memory stays bounded, and it keeps serving everyone else.
/// Pushes into `hog` until the kernel has said "would block" for a while: every buffer on
/// the way is full because the server stopped reading it. Returns the bytes pushed.
fn push_until_blocked(hog: &TcpStream) -> usize {
    hog.set_nonblocking(true).unwrap();
    let chunk = pattern(64 * 1024);
    let mut pushed = 0usize;
    let limit = 256 * 1024 * 1024;
    let deadline = Instant::now() + STEP;
    let mut blocked_since: Option<Instant> = None;
    while pushed < limit && Instant::now() < deadline {
        match (&*hog).write(&chunk) {
            Ok(n) => {
                pushed += n;
                blocked_since = None;
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(300) {
                    break;
                }
                std::thread::yield_now();
            }
            Err(err) => panic!("hog write failed: {err}"),
        }
    }
    assert!(
        pushed < limit,
        "the server kept reading {pushed} bytes from a client that never reads"
    );
    pushed
}

/// What one non-reading client may add to the server's anonymous memory once the server
/// is warm, in KiB: 64 KiB owed + a 16 KiB read buffer, and room for what a new connection
/// costs the allocator and a thread's stack (measured after the warm-up, debug build:
/// 0-72 KiB in every model but `process`, whose child counts ~1.2 MiB of its parent's
/// pages as its own). A connection that holds 4 MiB (`MAX_OWED` raised) is over it.
const NON_READER_GROWTH_KIB: u64 = 2 * 1024;

fn client_that_never_reads_cannot_grow_server_memory(model: &str) {
    // One loop, so that the warm-up below reaches the loop the non-reader will use.
    let server = Server::start(model, one_loop(model));
    // Warm-up: memory a model allocates once and keeps is not the non-reader's doing.
    // uring lends the kernel receive buffers of 16 KiB per loop (256 when this was measured,
    // 128 now), taken in ring order, so their 4 MiB became resident only once about 4 MiB had
    // passed through the loop: the first client that streams that much adds ~4 MiB whatever it is (measured: +4.1
    // MiB of anonymous memory in that one allocation, for a non-reader or a well-behaved
    // client alike, and nothing more for the next ones).
    let warm = pattern(8 * 1024 * 1024);
    assert!(
        round_trip(server.addr, warm.clone()) == warm,
        "warm-up echo differs"
    );
    server.log.wait_for("closed: peer closed", 1);
    // Anonymous memory, not PSS: PSS moves when other tests' servers, sharing the binary's
    // pages, start or exit (measured, debug build: one idle server's PSS went from 4,143 to
    // 10,302 KiB as three others exited, its anonymous memory 1,204 KiB throughout; with
    // the receive pool, that made uring's 8.5-9.2 MiB of "growth").
    let before = anon_kib(server.pid());
    let hog = connect(server.addr);
    let pushed = push_until_blocked(&hog);
    let grown = anon_kib(server.pid()).saturating_sub(before);
    eprintln!("{model}: a non-reader grew the warm server by {grown} KiB ({pushed} bytes pushed)");
    assert!(
        grown < NON_READER_GROWTH_KIB,
        "{model}: server memory grew {grown} KiB for one non-reading client ({pushed} bytes pushed; bound {NON_READER_GROWTH_KIB} KiB)"
    );
    if !serializes(model) {
        assert_eq!(
            round_trip(server.addr, b"others are served".to_vec()),
            b"others are served"
        );
    }
    drop(hog);
    server.log.wait_for(" closed: ", 2);
    assert_eq!(round_trip(server.addr, b"after".to_vec()), b"after");
}

/// Several clients that send and never read, then a burst of well-behaved clients: the
/// stalled ones hold only their own buffers, and everyone else is served. Pool models get
/// one loop (or enough workers) so that the stalled clients share it with the burst.
fn stalled_clients_do_not_starve_a_burst(model: &str) {
    let extra: &[&str] = match model {
        "prethreaded" => &["--workers", "16"],
        "reactor" | "uring" | "async" => &["--workers", "1"],
        _ => &[],
    };
    let server = Server::start(model, extra);
    let hogs: Vec<TcpStream> = (0..8).map(|_| connect(server.addr)).collect();
    if serializes(model) {
        // The first hog holds the only thread: the lecture's limit, asserted elsewhere.
        return;
    }
    for hog in &hogs {
        push_until_blocked(hog);
    }
    let addr = server.addr;
    let clients: Vec<_> = (0..200)
        .map(|client_idx| {
            std::thread::spawn(move || {
                let payload = vec![client_idx as u8; 1024];
                assert_eq!(round_trip(addr, payload.clone()), payload);
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    drop(hogs);
}

fn slow_partial_line_blocks_no_one(model: &str) {
    let server = Server::start(model, &["--mode", "lines"]);
    let mut slow = connect(server.addr);
    slow.write_all(b"hel").unwrap();
    let slow_port = slow.local_addr().unwrap().port();
    server.log.wait_for(&format!(":{slow_port} opened"), 1);
    if !serializes(model) {
        // Another client is served while the first one's line is incomplete.
        assert_eq!(round_trip(server.addr, b"quick\n".to_vec()), b"quick\n");
    }
    for byte in b"lo, " {
        slow.write_all(&[*byte]).unwrap();
    }
    slow.write_all(b"world\n").unwrap();
    assert_eq!(read_n(&mut slow, 13), b"hello, world\n");
    slow.write_all(b"no\0nl\r").unwrap();
    slow.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut slow).unwrap(), b"no\0nl\r");
}

/// A partial line that nearly fills the 64 KiB bound, read in full before its newline is
/// sent: the server still reads the newline and echoes the line. (io_uring: the receive
/// armed at the start ends once it has delivered most of the room; the 5,536 bytes of room
/// left are less than one receive buffer and nothing is being sent, so a receive must be
/// armed for them, or the connection waits forever.) `-vv` logs each read.
fn a_partial_line_near_the_bound_still_gets_its_newline_read(model: &str) {
    let args = [&["--mode", "lines", "-vv"], one_loop(model)].concat();
    let server = Server::start(model, &args);
    let partial: Vec<u8> = pattern(60_000).iter().map(|b| b | 0x80).collect();
    let mut conn = connect(server.addr);
    conn.write_all(&partial).unwrap();
    let received = || -> u64 {
        let lines = server.log.lines();
        let sizes = lines
            .iter()
            .filter_map(|l| l.split("server received ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok());
        sizes.sum()
    };
    assert!(
        eventually(|| received() == 60_000),
        "{model}: the server read {} of the 60,000 bytes",
        received()
    );
    conn.write_all(b"\n").unwrap();
    let line = [partial, vec![b'\n']].concat();
    assert_eq!(read_n(&mut conn, line.len()), line, "{model}");
}

fn over_long_line_closes_that_connection(model: &str) {
    let server = Server::start(model, &["--mode", "lines", "--max-line", "1000"]);
    let ok_line = [vec![b'a'; 1000], vec![b'\n']].concat();
    assert_eq!(round_trip(server.addr, ok_line.clone()), ok_line);
    let mut long = connect(server.addr);
    let port = long.local_addr().unwrap().port();
    long.write_all(&[b'x'; 5000]).unwrap();
    // The server closes: end-of-file or a reset, never an echo.
    let mut buf = [0u8; 16];
    match long.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "an over-long line was echoed"),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
    let logged = server.log.wait_for("--max-line 1000", 1);
    assert!(
        logged[0].contains(&format!(":{port}")),
        "the log line names the peer: {logged:?}"
    );
    assert_eq!(round_trip(server.addr, b"short\n".to_vec()), b"short\n");
}

fn resources_back_to_baseline_after_200_connections(model: &str) {
    let server = Server::start(model, &[]);
    let pid = server.pid();
    // One connection first, so that lazily created resources exist in the baseline.
    assert_eq!(round_trip(server.addr, b"warm".to_vec()), b"warm");
    server.log.wait_for("closed: peer closed", 1);
    assert!(
        eventually(|| children(pid).0 == 0),
        "a child is left after the warm-up"
    );
    let (fds, threads) = (fd_count(pid), thread_count(pid));
    let addr = server.addr;
    for batch in 0..10 {
        let clients: Vec<_> = (0..20)
            .map(|i| {
                std::thread::spawn(move || {
                    assert_eq!(
                        round_trip(addr, vec![batch as u8, i as u8]),
                        [batch as u8, i as u8]
                    )
                })
            })
            .collect();
        clients.into_iter().for_each(|c| c.join().unwrap());
    }
    server.log.wait_for("closed: peer closed", 201);
    assert!(
        eventually(|| children(pid) == (0, 0)),
        "children or zombies left: {:?}",
        children(pid)
    );
    assert!(
        eventually(|| fd_count(pid) <= fds),
        "descriptors: {} now, {fds} before",
        fd_count(pid)
    );
    assert!(
        eventually(|| thread_count(pid) <= threads),
        "threads: {} now, {threads} before",
        thread_count(pid)
    );
}

fn idle_timeout_closes_silent_connections(model: &str) {
    let server = Server::start(model, &["--idle-timeout", "1"]);
    let mut silent = connect(server.addr);
    let started = Instant::now();
    match silent.read(&mut [0u8; 1]) {
        Ok(n) => assert_eq!(n, 0),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the timeout"
    );
    server.log.wait_for("idle for 1s", 1);
    assert_eq!(round_trip(server.addr, b"busy".to_vec()), b"busy");
}

fn max_conns_caps_open_connections(model: &str) {
    let server = Server::start(model, &["--max-conns", "2"]);
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut conn = connect(server.addr);
            conn.write_all(b"x").unwrap();
            if !serializes(model) {
                assert_eq!(read_n(&mut conn, 1), b"x");
            }
            conn
        })
        .collect();
    let mut third = connect(server.addr);
    third.write_all(b"3").unwrap();
    if serializes(model) {
        // One connection at a time: the others wait in the backlog and are served in turn.
        for mut conn in held.drain(..) {
            assert_eq!(read_n(&mut conn, 1), b"x");
        }
        assert_eq!(read_n(&mut third, 1), b"3");
    } else {
        // Accepted and closed at once: end-of-file (or a reset, as the byte sent is unread).
        match third.read(&mut [0u8; 1]) {
            Ok(n) => assert_eq!(n, 0, "a connection over --max-conns was served"),
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
        }
        server.log.wait_for("--max-conns 2", 1);
        drop(held);
        server.log.wait_for("closed: peer closed", 2);
        // The process model counts a child until it is reaped, just after its last log line.
        assert!(eventually(|| children(server.pid()).0 == 0));
        assert_eq!(
            round_trip(server.addr, b"room again".to_vec()),
            b"room again"
        );
    }
}

/// Out of descriptors on accept: the server keeps serving what it has, does not spin, and
/// accepts again once descriptors free up.
fn survives_running_out_of_descriptors(model: &str) {
    let mut command = std::process::Command::new("prlimit");
    command.args(["--nofile=64:64", "--", env!("CARGO_BIN_EXE_echolab")]);
    // Enough workers that the pool is not what runs out (its own limit is tested elsewhere).
    let extra: &[&str] = if model == "prethreaded" {
        &["--workers", "128"]
    } else {
        &[]
    };
    let started = Instant::now();
    let server = Server::start_with(command, model, "127.0.0.1:0", extra);
    let pid = server.pid();
    let mut conns: Vec<TcpStream> = Vec::new();
    for _ in 0..90 {
        let mut conn = connect(server.addr);
        conn.write_all(b"e").unwrap();
        conns.push(conn);
    }
    // The process model's parent closes its copy of every connection, and the iterative
    // server holds one at a time: neither runs out.
    let parent_runs_out = model != "process" && !serializes(model);
    if parent_runs_out {
        server.log.wait_for("too many open files", 1);
        // A connection the server did open: with one listener per loop (reactor), the
        // first to connect may wait in the queue of a loop that ran out first.
        server.log.wait_for(" opened", 1);
        let opened = server.log.lines();
        let was_opened = |conn: &TcpStream| {
            let port = conn.local_addr().unwrap().port();
            opened
                .iter()
                .any(|l| l.contains(&format!(":{port} opened")))
        };
        let first_idx = conns
            .iter()
            .position(was_opened)
            .expect("no connection opened");
        let mut first = conns.remove(first_idx);
        if !serializes(model) {
            assert_eq!(
                read_n(&mut first, 1),
                b"e",
                "an open connection stopped being served"
            );
        }
        let ticks = cpu_ticks(pid);
        let window = Instant::now();
        // Not synchronisation: a measurement window over which a spinning accept loop
        // would burn a whole core.
        std::thread::sleep(Duration::from_millis(500));
        let burned = cpu_ticks(pid) - ticks;
        let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .unwrap()
            .unwrap() as u64;
        let window_ticks = window.elapsed().as_secs_f64() * ticks_per_sec as f64;
        assert!(
            (burned as f64) < window_ticks * 0.4,
            "server burned {burned} ticks of CPU in {window_ticks:.0} while out of descriptors"
        );
        drop(first);
    }
    // Free descriptors: everyone still waiting is accepted and served. 45 of 90 leaves
    // 45 to hold under the limit of 64, beside the server's own descriptors (16 for async:
    // tokio's 6, the shutdown pipe's 4, the SIGUSR1 pipe's 2, the listener, stdio).
    // The 45 freed are connections the server opened (its log says which): with a
    // listener per loop, an early connection may wait in the queue of a loop that ran out
    // while later ones were opened by another, and reading it first would wait forever.
    let freed = 45;
    let to_free: Vec<usize> = if parent_runs_out {
        // `first` was one of those opened.
        let opened = server.log.wait_for(" opened", freed + 1);
        let was_opened = |conn: &TcpStream| {
            let port = conn.local_addr().unwrap().port();
            opened
                .iter()
                .any(|l| l.contains(&format!(":{port} opened")))
        };
        let idx: Vec<usize> = (0..conns.len())
            .filter(|&i| was_opened(&conns[i]))
            .collect();
        assert!(
            idx.len() >= freed,
            "{} of the held connections opened",
            idx.len()
        );
        idx[..freed].to_vec()
    } else {
        (0..freed).collect()
    };
    for &i in &to_free {
        if !serializes(model) {
            assert_eq!(read_n(&mut conns[i], 1), b"e");
        }
        conns[i].shutdown(Shutdown::Both).unwrap();
    }
    for &i in to_free.iter().rev() {
        conns.remove(i);
    }
    for conn in conns.iter_mut() {
        assert_eq!(
            read_n(conn, 1),
            b"e",
            "a connection waiting for a descriptor was never served"
        );
        if serializes(model) {
            conn.shutdown(Shutdown::Both).unwrap();
        }
    }
    // The pause warnings come at most once a second for the whole server, with a count
    // (finding 12: one line per 100 ms pause per loop, 44 to 90 in 2 s).
    let seconds = started.elapsed().as_secs() + 1;
    let pauses = server
        .log
        .lines()
        .iter()
        .filter(|l| l.contains("pausing accept"))
        .count() as u64;
    assert!(
        pauses <= seconds,
        "{pauses} \"pausing accept\" lines in under {seconds} s"
    );
}

fn graceful_shutdown_releases_everything(model: &str) {
    let mut server = Server::start(model, &[]);
    let pid = server.pid();
    let mut busy = connect(server.addr);
    busy.write_all(b"mid").unwrap();
    assert_eq!(read_n(&mut busy, 3), b"mid");
    let mut idle: Vec<TcpStream> = (0..3).map(|_| connect(server.addr)).collect();
    if !serializes(model) {
        server.log.wait_for(" opened", 4);
    }
    let kids = support::family(pid);
    let started = Instant::now();
    let status = server
        .terminate(Duration::from_secs(2))
        .expect("server did not exit within 2 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Every connection sees the close.
    for conn in std::iter::once(&mut busy).chain(idle.iter_mut()) {
        match read_to_end(conn) {
            Ok(rest) => assert_eq!(rest, b""),
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
        }
    }
    // No child outlives the server.
    for kid in kids.into_iter().filter(|k| *k != pid) {
        assert!(
            eventually(|| !std::path::Path::new(&format!("/proc/{kid}")).exists()),
            "child {kid} outlived the server"
        );
    }
    // The port is free again.
    let rebind = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    rebind.set_reuse_address(true).unwrap();
    rebind
        .bind(&server.addr.into())
        .expect("port still held after shutdown");
}

fn serves_ipv6_loopback(model: &str) {
    let ipv6_works = std::net::TcpListener::bind("[::1]:0").is_ok();
    if !ipv6_works {
        eprintln!("skipping: this machine has no IPv6 loopback");
        return;
    }
    let server = Server::start_with(echolab(), model, "[::1]:0", &[]);
    assert!(server.addr.is_ipv6());
    assert_eq!(round_trip(server.addr, b"six".to_vec()), b"six");
}

/// A second loopback address for a server's second `--listen`: IPv6's if this machine has
/// it, else another of 127.0.0.0/8.
fn second_loopback() -> &'static str {
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        "[::1]:0"
    } else {
        eprintln!("no IPv6 loopback: the second --listen is 127.0.0.2");
        "127.0.0.2:0"
    }
}

/// Issue 11: `--listen` given twice is one server on two addresses: it echoes on each
/// (each printed in its own `listening on` line, in order), and connections on both count
/// against one `--max-conns`: one on each fills a cap of 2, and a third on either address
/// is refused. The iterative server serves one client at a time across both addresses.
fn every_listen_address_is_served_under_one_cap(model: &str) {
    let second = second_loopback();
    let server = Server::start(model, &["--listen", second, "--max-conns", "2"]);
    let addrs: Vec<std::net::SocketAddr> = server
        .log
        .wait_for("listening on ", 2)
        .iter()
        .map(|line| line.split(' ').nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(
        addrs[0], server.addr,
        "the first line is the first --listen"
    );
    assert_eq!(addrs[0].ip().to_string(), "127.0.0.1");
    assert_eq!(format!("{}:0", bracketed(addrs[1].ip())), second);
    // The second address first: a server that reaches it only after the first has
    // served someone fails here.
    for addr in addrs.iter().rev() {
        assert_eq!(round_trip(*addr, b"each".to_vec()), b"each", "{addr}");
    }
    // Both gone from the cap before the cap is tested: a close line follows the release,
    // and a process child holds its place until it is reaped.
    server.log.wait_for("closed: peer closed", 2);
    assert!(eventually(|| children(server.pid()).0 == 0));
    let mut on_first = connect(addrs[0]);
    on_first.write_all(b"1").unwrap();
    assert_eq!(read_n(&mut on_first, 1), b"1");
    let first_port = on_first.local_addr().unwrap().port();
    let mut on_second = connect(addrs[1]);
    on_second.write_all(b"2").unwrap();
    if serializes(model) {
        // One server: the client on the second address waits for the one on the first.
        let second_port = on_second.local_addr().unwrap().port();
        drop(on_first);
        assert_eq!(read_n(&mut on_second, 1), b"2");
        assert_closed_before_opened(&server, first_port, second_port);
        return;
    }
    assert_eq!(read_n(&mut on_second, 1), b"2");
    for addr in &addrs {
        // The cap is the server's, not each listener's: full with one on each.
        let mut over = connect(*addr);
        over.write_all(b"3").unwrap();
        match over.read(&mut [0u8; 1]) {
            Ok(n) => assert_eq!(n, 0, "a connection over --max-conns was served on {addr}"),
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
        }
    }
    server.log.wait_for("--max-conns 2", 1);
    drop(on_first);
    drop(on_second);
    assert!(eventually(|| children(server.pid()).0 == 0));
    server.log.wait_for("closed: peer closed", 4);
    for addr in &addrs {
        assert_eq!(round_trip(*addr, b"room".to_vec()), b"room", "{addr}");
    }
}

/// An IP as `--listen` spells it: IPv6 in brackets.
fn bracketed(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The options that leave a model one event loop, where a streamer and a probe must
/// share it (the prethreaded pool keeps its default workers: a streamer holds one).
fn one_loop(model: &str) -> &'static [&'static str] {
    match model {
        "reactor" | "uring" | "async" => &["--workers", "1"],
        _ => &[],
    }
}

/// The nearest-rank percentile `p` (0..=100) of `samples`, which must not be empty.
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Models whose connections one thread of the server schedules (with [`one_loop`]'s
/// options): their fairness is the loop's own code.
fn one_scheduler(model: &str) -> bool {
    matches!(model, "event" | "reactor" | "uring" | "async")
}

/// The real-time priority (SCHED_FIFO) of the fairness test's server and probe.
const FIFO_PRIORITY: i32 = 50;

/// Puts the calling thread under SCHED_FIFO at [`FIFO_PRIORITY`].
fn become_realtime() -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: FIFO_PRIORITY,
    };
    // SAFETY: a system call on the calling thread (0) with a valid parameter.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Why the fairness test cannot run its server and probe under SCHED_FIFO here, if it
/// cannot: no permission (CAP_SYS_NICE or RLIMIT_RTPRIO), or no `chrt`.
fn realtime_refused() -> Option<String> {
    // A throwaway thread tries: the test's own thread keeps its policy.
    if let Err(err) = std::thread::spawn(become_realtime).join().unwrap() {
        return Some(format!("SCHED_FIFO refused: {err}"));
    }
    match std::process::Command::new("chrt").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("no chrt".to_string()),
    }
}

/// Pins the calling thread to `cpu` (left where it is on a machine without that CPU).
fn pin_to_cpu(cpu: usize) {
    let mut cpus = nix::sched::CpuSet::new();
    if cpus.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus);
    }
}

/// The fairness budget (issue 9, item 1): a client streaming at full speed both ways
/// shares the only loop with a probe that sends 8 bytes every 20 ms; the probe's echo
/// comes back within 10 ms at the 99th percentile, in two rounds of 100 probes out of at
/// most three. An event loop that keeps reading the streamer while each read fills its buffer
/// makes the probe wait for whole bursts (before the budget: reactor p99 1.1 s, async
/// 2.3 s). How often an unbudgeted loop fails here depends on the streamer: with the
/// budget lifted, reactor failed 4 runs of 6 at load 10-14 (rounds of 25-77 ms at p99;
/// the runs that passed had later rounds of 3-6 ms, the streamer, sharing CPU 1 with other
/// builds, leaving the socket empty); a streamer under SCHED_FIFO too failed it every time
/// (71-199 ms) but, throttled, spoilt budgeted rounds (17-50 ms), so it keeps normal
/// priority. The budget's own
/// bound is pinned by `event_loop`'s unit test
/// `a_turn_reads_at_most_its_budget_and_says_bytes_are_left`.
///
/// The contract is about how the server schedules its connections, not about how a loaded
/// 2-core machine schedules the server: the server runs on CPU 0, the streamer's two
/// threads (normal priority: a weaker streamer leaves the socket empty now and then, and
/// an unbudgeted loop would pass) and the probe on CPU 1.
///
/// Where one loop schedules every connection (`one_scheduler`), the server and the probe
/// run under SCHED_FIFO, so that nothing but the loop decides when the probe is served:
/// under CFS every process here shares the CPU with the other users' builds by control
/// group, where `nice` does not reach (measured at load 14-16: nice -20 left p99 at 11-89
/// ms for every model, even thread; SCHED_FIFO 0.5-1.3 ms for event, reactor, uring and
/// async). Where it cannot (no permission, no `chrt`), the test says so and holds those
/// models to the shared machine's bound below. Thread, process and prethreaded leave the
/// scheduling of their connections to the kernel's CFS: under SCHED_FIFO equal-priority
/// threads would run until they block (thread measured 33-86 ms), which is not their
/// model; they run at `nice -10` and are held to that bound, 100 ms.
fn streamer_does_not_starve_a_probe(model: &str) {
    const PROBES: usize = 100;
    // Alone here beside other builds, every model measured 0.8-4.2 ms at p99; under CFS at
    // load 14-16, rounds of 10-90 ms, and one of 406 ms (thread), from the scheduler alone.
    const CONTRACT: Duration = Duration::from_millis(10);
    const SHARED_MACHINE: Duration = Duration::from_millis(100);
    // No round may pass this, loaded machine or not: unbudgeted async was unfair only in
    // its first round (p99 1517 and 4015 ms, then under 1 ms), which two fair rounds out of
    // three would forgive.
    const CEILING: Duration = Duration::from_secs(1);
    let refused = realtime_refused();
    let realtime = one_scheduler(model) && refused.is_none();
    let budget = match realtime {
        true => CONTRACT,
        false => SHARED_MACHINE,
    };
    if let (true, Some(why)) = (one_scheduler(model), &refused) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {model}: the {} ms contract under SCHED_FIFO ({why}); held to {} ms",
            CONTRACT.as_millis(),
            SHARED_MACHINE.as_millis()
        );
    }
    let mut command = std::process::Command::new("taskset");
    command.args(["-c", "0"]);
    match realtime {
        true => command.args(["chrt", "-f", &FIFO_PRIORITY.to_string()]),
        // `nice` runs the server anyway, with a warning, where it may not raise it.
        false => command.args(["nice", "-n", "-10"]),
    };
    command.arg(env!("CARGO_BIN_EXE_echolab"));
    let server = Server::start_with(command, model, "127.0.0.1:0", one_loop(model));
    let streamer = connect(server.addr);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut conn = streamer.try_clone().unwrap();
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            pin_to_cpu(1);
            let block = pattern(1024 * 1024);
            let deadline = Instant::now() + 2 * STEP;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                if conn.write_all(&block).is_err() {
                    break;
                }
            }
            let _ = conn.shutdown(Shutdown::Write);
        })
    };
    let reader = {
        let mut conn = streamer.try_clone().unwrap();
        std::thread::spawn(move || {
            pin_to_cpu(1);
            let mut buf = vec![0u8; 1024 * 1024];
            let mut total = 0u64;
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            total
        })
    };
    let mut probe = connect(server.addr);
    probe.set_nodelay(true).unwrap();
    if serializes(model) {
        // The lecture's limit: the probe is accepted only once the streamer leaves.
        probe.write_all(b"probe-01").unwrap();
        let probe_port = probe.local_addr().unwrap().port();
        let streamer_port = streamer.local_addr().unwrap().port();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(read_n(&mut probe, 8), b"probe-01");
        assert_closed_before_opened(&server, streamer_port, probe_port);
        return;
    }
    // Rounds of PROBES probes while the streamer keeps streaming, until two rounds are
    // within their bound (pass) or more than one (SCHED_FIFO) or two (CFS) are not (fail):
    // at most three, or four under CFS, which a burst of load from elsewhere spoils more
    // often (measured at load 7-10: two CFS rounds in a row of 168 and 110 ms,
    // prethreaded). An unbudgeted loop is unfair in most rounds (measured p99 per round:
    // reactor 349, 297, 484 ms; async 1517, 1032, 0.25 ms). The probe runs on a thread of
    // its own, so that its priority ends with it: beside a SCHED_FIFO server, SCHED_FIFO
    // on CPU 1, so that it reads its echo the moment it comes. Beside a CFS server it is
    // left alone: pinned to CPU 1 under SCHED_FIFO there, it measured p50 3.1-3.6 ms
    // against 0.06-0.07 ms unpinned (thread model).
    let unfair_allowed = match realtime {
        true => 1,
        false => 2,
    };
    let server_pid = server.pid();
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let rounds = std::thread::spawn(move || {
        if realtime {
            pin_to_cpu(1);
            become_realtime().expect("SCHED_FIFO, allowed a moment ago");
        }
        let mut rounds: Vec<Round> = Vec::with_capacity(2 + unfair_allowed);
        while rounds.iter().filter(|r| r.fair()).count() < 2
            && rounds.iter().filter(|r| !r.fair()).count() <= unfair_allowed
        {
            let mut cpu = Vec::with_capacity(PROBES + 1);
            let latencies = probe_round(&mut probe, rounds.len(), PROBES, || {
                cpu.push((Instant::now(), cpu_ticks(server_pid)));
            });
            let busiest_second = busiest_second(&cpu, ticks_per_sec);
            // The kernel throttles real-time tasks that use more than their share of a
            // period (95% of each second by default), and a probe that comes then waits
            // up to the rest of the period (50 ms): where the server was that busy in
            // some second of the round, the round is allowed that much more (measured:
            // servers 45-88% busy, and a round of 23 ms at p99 in an 88% one).
            let budget = match realtime && busiest_second >= RT_SHARE_NEAR {
                true => budget + rt_throttle_window(),
                false => budget,
            };
            rounds.push(Round {
                latencies,
                busiest_second,
                budget,
            });
        }
        rounds
    })
    .join()
    .unwrap();
    let over = rounds.iter().filter(|r| !r.fair()).count();
    let fair = rounds.len() - over;
    // The figures of the worst round a pass rests on: the second-best p99.
    let mut by_p99: Vec<&Round> = rounds.iter().collect();
    by_p99.sort_by_key(|r| r.p99());
    let latencies = &by_p99[1].latencies;
    let round_p99s: Vec<String> = rounds
        .iter()
        .map(|r| match realtime {
            true => format!(
                "{:.2} (server's busiest second {:.0}%, bound {} ms)",
                r.p99().as_secs_f64() * 1e3,
                r.busiest_second * 100.0,
                r.budget.as_millis()
            ),
            false => format!("{:.2}", r.p99().as_secs_f64() * 1e3),
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let streamed = reader.join().unwrap();
    let p50 = percentile(latencies, 50.0);
    let p99 = percentile(latencies, 99.0);
    let scheduled = match realtime {
        true => "SCHED_FIFO",
        false => "CFS",
    };
    eprintln!(
        "{model} ({scheduled}): probe echo p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {PROBES} probes (p99 of each round, ms: {}); streamer got {} MiB back",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        percentile(latencies, 100.0).as_secs_f64() * 1e3,
        round_p99s.join(", "),
        streamed >> 20
    );
    assert!(
        streamed >= 16 << 20,
        "the streamer got only {streamed} bytes back: it was not streaming at full speed"
    );
    let worst = rounds.iter().map(Round::p99).max().unwrap();
    assert!(
        worst <= CEILING,
        "{model}: one round's probe echo took {:.2} ms at p99 beside a streamer (at most {} ms in any round)",
        worst.as_secs_f64() * 1e3,
        CEILING.as_millis()
    );
    assert!(
        fair >= 2,
        "{model} ({scheduled}): the probe's echo took over its bound at p99 beside a streamer in {over} of {} rounds ({}; the contract is {} ms)",
        rounds.len(),
        round_p99s.join(", "),
        CONTRACT.as_millis()
    );
}

/// One round of the fairness probe and what it is judged against.
struct Round {
    latencies: Vec<Duration>,
    /// The server's CPU time over wall time in the busiest second of the round (its
    /// threads share CPU 0).
    busiest_second: f64,
    /// The p99 this round may reach.
    budget: Duration,
}

impl Round {
    fn p99(&self) -> Duration {
        percentile(&self.latencies, 99.0)
    }

    fn fair(&self) -> bool {
        self.p99() <= self.budget
    }
}

/// A server busier than this in some second (CPU time over wall time) may have been
/// throttled as a real-time task: the kernel's share is 95% of a period (a second) by
/// default; the margin covers the clock ticks' 10 ms and periods that straddle two probes.
const RT_SHARE_NEAR: f64 = 0.9;

/// The highest CPU share over any second of `samples` ((when, CPU clock ticks) in time
/// order), or over all of them if they span less; 0 for fewer than two samples.
fn busiest_second(samples: &[(Instant, u64)], ticks_per_sec: f64) -> f64 {
    let share = |(t0, c0): (Instant, u64), (t1, c1): (Instant, u64)| {
        let secs = t1.duration_since(t0).as_secs_f64();
        match secs > 0.0 {
            true => c1.saturating_sub(c0) as f64 / ticks_per_sec / secs,
            false => 0.0,
        }
    };
    let (Some(&first), Some(&last)) = (samples.first(), samples.last()) else {
        return 0.0;
    };
    if last.0.duration_since(first.0) < Duration::from_secs(1) {
        return share(first, last);
    }
    samples
        .iter()
        .filter_map(|&start| {
            let end = samples
                .iter()
                .find(|s| s.0.duration_since(start.0) >= Duration::from_secs(1))?;
            Some(share(start, *end))
        })
        .fold(0.0, f64::max)
}

/// How long the kernel may hold back a throttled real-time task: the part of each period
/// (`sched_rt_period_us`) beyond its runtime (`sched_rt_runtime_us`), 50 ms by default;
/// nothing where real-time tasks are not throttled (runtime -1).
fn rt_throttle_window() -> Duration {
    let read = |name: &str| -> Option<i64> {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    match (read("sched_rt_period_us"), read("sched_rt_runtime_us")) {
        (_, Some(runtime)) if runtime < 0 => Duration::ZERO,
        (Some(period), Some(runtime)) => Duration::from_micros((period - runtime).max(0) as u64),
        // Unknown: the default's window.
        _ => Duration::from_millis(50),
    }
}

/// The serialising model's order, from its log: the client on `first_port` closed before
/// the one on `second_port` was accepted. The log arrives through a pipe: this waits for
/// the second client's line, then reads the order.
fn assert_closed_before_opened(server: &Server, first_port: u16, second_port: u16) {
    server.log.wait_for(&format!(":{second_port} opened"), 1);
    let log = server.log.lines();
    let first_closed = log
        .iter()
        .position(|l| l.contains(&format!(":{first_port} closed")));
    let second_opened = log
        .iter()
        .position(|l| l.contains(&format!(":{second_port} opened")));
    assert!(
        first_closed.expect("the first client's close line") < second_opened.unwrap(),
        "the client on port {second_port} must be accepted only after the one on port \
         {first_port} left:\n{}",
        log.join("\n")
    );
}

/// One round of the fairness probe: `count` 8-byte messages, one every 20 ms, each timed
/// from its write to the end of its echo.
/// `between` runs before the first probe and after each one, outside the timing.
fn probe_round(
    probe: &mut TcpStream,
    round: usize,
    count: usize,
    mut between: impl FnMut(),
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    between();
    for probe_idx in 0..count {
        let message = format!("p{round}-{probe_idx:05}");
        let sent = Instant::now();
        probe.write_all(message.as_bytes()).unwrap();
        assert_eq!(read_n(probe, 8), message.as_bytes());
        latencies.push(sent.elapsed());
        between();
        // Pacing, not synchronisation: the probe is a client that speaks every 20 ms.
        std::thread::sleep(Duration::from_millis(20));
    }
    latencies
}

/// Known truth for the throttle check: a server busy all of the first second of a round
/// and idle the next has a busiest second of 100%, though it averaged 50%.
#[test]
fn busiest_second_finds_the_busy_second_that_an_average_hides() {
    let start = Instant::now();
    let tick = Duration::from_millis(10);
    // One sample per 10 ms clock tick for 2 s; the CPU clock runs for the first second only.
    let samples: Vec<(Instant, u64)> = (0..=200u32)
        .map(|k| (start + tick * k, u64::from(k.min(100))))
        .collect();
    assert!((busiest_second(&samples, 100.0) - 1.0).abs() < 1e-9);
    // Shorter than a second: the whole span. Fewer than two samples: nothing.
    assert!((busiest_second(&samples[150..], 100.0)).abs() < 1e-9);
    assert!((busiest_second(&samples[50..60], 100.0) - 1.0).abs() < 1e-9);
    assert_eq!(busiest_second(&samples[..1], 100.0), 0.0);
    // Half busy throughout: 50% in every second.
    let half: Vec<(Instant, u64)> = (0..=200u32)
        .map(|k| (start + tick * k, u64::from(k / 2)))
        .collect();
    assert!((busiest_second(&half, 100.0) - 0.5).abs() < 0.01);
}

/// `conn PEER closed: ... (IN bytes in, OUT out)`: the server's own count of what one
/// connection held when it closed.
fn held_counts(close_line: &str) -> (u64, u64) {
    let counts = close_line.rsplit_once('(').unwrap().1;
    let words: Vec<&str> = counts.split_whitespace().collect();
    (words[0].parse().unwrap(), words[3].parse().unwrap())
}

/// Bytes in minus bytes out on a close line.
fn held_bytes(close_line: &str) -> u64 {
    let (bytes_in, bytes_out) = held_counts(close_line);
    bytes_in - bytes_out
}

/// The memory bound (issue 9, item 2): a client that sends and never reads (with a 4 KiB
/// receive buffer) leaves at most 64 KiB owed plus one 16 KiB read buffer in the server,
/// by the server's own accounting (bytes in minus bytes out on its close line). The bound
/// is written here as numbers, not read from the server's constant, so that raising the
/// constant fails the test.
fn non_reader_holds_at_most_64k_plus_one_buffer(model: &str) {
    const BOUND: u64 = 64 * 1024 + 16 * 1024;
    let server = Server::start(model, &[]);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&server.addr.into(), STEP).unwrap();
    let hog: TcpStream = socket.into();
    hog.set_write_timeout(Some(STEP)).unwrap();
    let port = hog.local_addr().unwrap().port();
    let pushed = push_until_blocked(&hog);
    drop(hog);
    let closed = server.log.wait_for(&format!(":{port} closed"), 1);
    let held = held_bytes(&closed[0]);
    eprintln!("{model}: a non-reader left {held} bytes held ({pushed} pushed)");
    assert!(
        held <= BOUND,
        "{model}: held {held} bytes for a client that never reads (bound {BOUND}): {}",
        closed[0]
    );
}

/// Urgent data (issue 9, item 5): `hello`, one byte with MSG_OOB, `world`, in one burst.
/// Without SO_OOBINLINE the urgent byte leaves the stream, and a read stops at its mark:
/// a short read there does not mean the socket is empty. Every model echoes `helloworld`.
fn urgent_data_does_not_stall_the_stream(model: &str) {
    let server = Server::start(model, &[]);
    let mut conn = connect(server.addr);
    conn.set_nodelay(true).unwrap();
    conn.write_all(b"hello").unwrap();
    socket2::SockRef::from(&conn)
        .send_out_of_band(b"!")
        .unwrap();
    conn.write_all(b"world").unwrap();
    assert_eq!(read_n(&mut conn, 10), b"helloworld");
    // And the connection goes on.
    conn.write_all(b"more").unwrap();
    assert_eq!(read_n(&mut conn, 4), b"more");
}

/// No flag value panics a model (issue 9, item 4a): a value beyond its ceiling is refused
/// before the server starts, with one line naming the value and exit status 2.
fn absurd_flag_values_are_refused_at_parse_time(model: &str) {
    let cases: &[(&str, &str)] = &[
        ("--idle-timeout", "18446744073709551615"),
        ("--idle-timeout", "9300000000000000000"),
        ("--idle-timeout", "315360001"),
        ("--idle-timeout", "1e-10"),
        ("--idle-timeout", "-1"),
        ("--idle-timeout", "inf"),
        ("--idle-timeout", "NaN"),
        ("--workers", "18446744073709551615"),
        ("--workers", "0"),
        ("--max-conns", "0"),
        ("--max-conns", "-1"),
        ("--max-conns", "18446744073709551615"),
        ("--max-conns", "1048577"),
        ("--max-conns-per-ip", "-1"),
        ("--max-conns-per-ip", "1048577"),
        ("--workers", "-1"),
        ("--max-line", "-1"),
        ("--max-line", "18446744073709551615"),
    ];
    for (flag, value) in cases {
        let child = echolab()
            .args([
                "serve",
                "--model",
                model,
                "--listen",
                "127.0.0.1:0",
                flag,
                value,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let output = finish_bounded(child, STEP);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        // One line naming the flag and the value (finding 11: `-1` was "unexpected
        // argument '-1' found", which named no flag).
        assert!(stderr.contains(value), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{flag} {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The ceiling itself is accepted.
    let server = Server::start(model, &["--max-conns", "1048576"]);
    assert_eq!(round_trip(server.addr, b"ceiling".to_vec()), b"ceiling");
    drop(server);
    // The largest idle timeout accepted serves, and no clock overflows when a connection
    // arrives.
    let server = Server::start(model, &["--idle-timeout", "315360000"]);
    assert_eq!(round_trip(server.addr, b"decade".to_vec()), b"decade");
    assert_eq!(round_trip(server.addr, b"again".to_vec()), b"again");
}

/// A panic in any loop or worker ends the whole server with one log line and a non-zero
/// exit, never a half-alive server (issue 9, item 4b). Debug builds panic on purpose when
/// a connection sends the bytes of `ECHOLAB_FAULT_PANIC`. The process model's child is its
/// own process: it ends alone, with its connection, and the server goes on (the model's
/// isolation, asserted as such).
fn a_panic_ends_the_whole_server(model: &str) {
    let mut command = echolab();
    command.env("ECHOLAB_FAULT_PANIC", "fault-now");
    let mut server = Server::start_with(command, model, "127.0.0.1:0", &[]);
    let mut bystander = connect(server.addr);
    if !serializes(model) {
        bystander.write_all(b"here").unwrap();
        assert_eq!(read_n(&mut bystander, 4), b"here");
    }
    let mut culprit = connect(server.addr);
    culprit.write_all(b"fault-now").unwrap();
    if model == "process" {
        let mut buf = [0u8; 16];
        match culprit.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "a panicking child echoed"),
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
        }
        let logged = server.log.wait_for("panicked at", 1);
        assert!(logged[0].contains("child"), "{logged:?}");
        assert_eq!(round_trip(server.addr, b"alive".to_vec()), b"alive");
        return;
    }
    if serializes(model) {
        // The iterative server reaches the culprit after the bystander leaves.
        bystander.shutdown(Shutdown::Both).unwrap();
    }
    let status = wait_exit(&mut server.child, STEP).expect("the server outlived a panic");
    assert!(!status.success(), "exit status {status:?} after a panic");
    // The log reader sees the pipe close once the process is gone.
    server.log.wait_for("panicked at", 1);
    let lines = server.log.lines();
    let panic_lines: Vec<&String> = lines.iter().filter(|l| l.contains("panicked")).collect();
    assert_eq!(panic_lines.len(), 1, "one line about the panic: {lines:#?}");
    assert!(
        panic_lines[0].contains("ECHOLAB_FAULT_PANIC"),
        "{panic_lines:?}"
    );
    if !serializes(model) {
        match read_to_end(&mut bystander) {
            Ok(rest) => assert_eq!(rest, b""),
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
        }
    }
}

/// Idle memory (issue 9, item 3): 200 clients each send one 60,000-byte line in lines
/// mode, read its echo and stay connected, idle. The server's anonymous memory (heap and
/// maps; not PSS, which moves by megabytes as other tests' servers start and stop sharing
/// the binary's pages) grows by at most 1 KiB per idle connection: a long line's buffer goes back once it is echoed (before:
/// 55 KiB each). Models that spend a thread or a process per connection pay that too, and
/// are held to their own cost: the 64 KiB stack a connection thread may touch. The
/// iterative server and the pool cannot hold 200 idle clients (one at a time, one per
/// worker): they are asserted to serve the line and free its buffer, one client at a time.
fn idle_connections_cost_at_most_1k_after_a_long_line(model: &str) {
    const CLIENTS: usize = 200;
    let per_conn_allowance: u64 = match model {
        "event" | "reactor" | "uring" => 1024,
        // async: 1,024 bytes per idle connection over 3,000 of them (before: 1,791): tokio's
        // task cell (384 bytes, 128-byte aligned, around the 264-byte `ConnTask`), the
        // socket's registration (256, aligned likewise) and a 112-byte timer. A slope over
        // 100 connections can also catch a 64 KiB step of the worker's malloc arena (about
        // one run in eight: 1,310 and 1,556 seen; the smaller of two slopes below leaves
        // it out), and the figure moves with tokio's version: half a KiB more is allowed.
        "async" => 1536,
        "thread" => 1024 + 64 * 1024,
        _ => {
            let server = Server::start(model, &["--mode", "lines"]);
            let line = [pattern(60_000), vec![b'\n']].concat();
            for _ in 0..3 {
                assert_eq!(round_trip(server.addr, line.clone()), line);
            }
            return;
        }
    };
    // -vv logs every read ("server received N bytes"): the test waits for the first half
    // of each line to be read before it sends the rest, so every line spans two reads and
    // needs the partial-line buffer, as a line from a slow or distant client does.
    // One loop: the warm-up below then warms the only receive pool (uring keeps 1 MiB per
    // loop, written as receives land in it: not per connection, but it would show here).
    let args = [&["--mode", "lines", "-vv"], one_loop(model)].concat();
    // glibc serves allocations of 16 KiB and more from mmap, and gives them back on free:
    // a freed line buffer then leaves nothing resident, and one kept by a connection is
    // counted, whatever the heap's fragmentation (which moved this figure by 30 KB per
    // connection between runs on a loaded machine).
    let mut command = echolab();
    command
        .env("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=16384")
        .env("MALLOC_MMAP_THRESHOLD_", "16384");
    let server = Server::start_with(command, model, "127.0.0.1:0", &args);
    let pid = server.pid();
    let received = || -> u64 {
        server
            .log
            .lines()
            .iter()
            .filter_map(|l| l.split("server received ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let line: Vec<u8> = [
        pattern(60_000)
            .iter()
            .map(|b| b | 0x80)
            .collect::<Vec<u8>>(),
        vec![b'\n'],
    ]
    .concat();
    // Opens `count` more connections, each served one long line and left idle, into `idle`.
    let add = |idle: &mut Vec<std::net::TcpStream>, count: usize| {
        for _ in 0..count {
            let mut conn = connect(server.addr);
            let target = received() + 30_000;
            conn.write_all(&line[..30_000]).unwrap();
            assert!(
                eventually(|| received() >= target),
                "the first half was never read"
            );
            conn.write_all(&line[30_000..]).unwrap();
            assert_eq!(read_n(&mut conn, line.len()), line);
            idle.push(conn);
        }
    };
    // Warm-up: one whole wave, closed, before the measured ones. The cost per connection is
    // a slope over connections opened after the first half of a wave, so that what belongs
    // to the loop, not to a connection, does not count: io_uring's 1 MiB of receive buffers
    // (written as receives land in them), the allocator's free lists, a step of 2.8 MB that
    // the uring model takes once per wave whether it holds 100 or 400 connections
    // (measured; its cause is not found yet).
    let mut warm = Vec::with_capacity(CLIENTS);
    add(&mut warm, CLIENTS);
    drop(warm);
    server.log.wait_for(" closed: ", CLIENTS);
    // Two slopes, over connections 100..200 and 200..300, every one of them still open
    // (nothing freed by one is reused by the next), and the cost is the smaller: a cost per
    // connection shows in both, while a one-time step lands in one (a 64 KiB arena or slab
    // page is 655 bytes over 100 connections: async measured 1,556 once against its usual
    // 942).
    let mut idle = Vec::with_capacity(CLIENTS + CLIENTS / 2);
    add(&mut idle, CLIENTS / 2);
    let mut marks = vec![anon_kib(pid)];
    for _ in 0..2 {
        add(&mut idle, CLIENTS / 2);
        marks.push(anon_kib(pid));
    }
    let measured = (CLIENTS / 2) as u64;
    let slopes: Vec<u64> = marks
        .windows(2)
        .map(|pair| (pair[1].saturating_sub(pair[0]) * 1024) / measured)
        .collect();
    let per_conn = slopes.iter().copied().min().unwrap_or(u64::MAX);
    eprintln!("{model}: {per_conn} bytes of anonymous memory per idle connection after a 60,000-byte line (the smaller of {slopes:?}; KiB at 100, 200, 300 idle: {marks:?})");
    drop(idle);
    assert!(
        per_conn <= per_conn_allowance,
        "{model}: {per_conn} bytes per idle connection after a long line, the smaller of {slopes:?} (allowed {per_conn_allowance})"
    );
}

/// CS:APP's echoclient sends a line of 8 KiB or more in pieces of 8,191 bytes (fgets with
/// MAXLINE 8192) and waits for each piece's echo (rio_readlineb reads at most 8,191 bytes).
/// `--long-line split --max-line 8191` echoes each full piece at once, as the textbook
/// server does; `close` (the default) closes such a connection, never echoing a piece.
fn long_line_split_serves_the_textbook_echoclient(model: &str) {
    let server = Server::start(
        model,
        &[
            "--mode",
            "lines",
            "--long-line",
            "split",
            "--max-line",
            "8191",
        ],
    );
    let mut conn = connect(server.addr);
    let long_line: Vec<u8> = [
        pattern(20_000).iter().map(|b| b | 0x80).collect(),
        vec![b'\n'],
    ]
    .concat();
    // The echoclient's loop: fgets a piece of at most 8,191 bytes, send it, read its echo.
    for piece in long_line.chunks(8191) {
        conn.write_all(piece).unwrap();
        assert_eq!(read_n(&mut conn, piece.len()), piece);
    }
    conn.write_all(b"short\n").unwrap();
    assert_eq!(read_n(&mut conn, 6), b"short\n");
    drop(conn);
    // The default closes the connection instead.
    let server = Server::start(model, &["--mode", "lines", "--max-line", "8191"]);
    let mut conn = connect(server.addr);
    conn.write_all(&long_line[..8192]).unwrap();
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "--long-line close echoed a piece"),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
}

/// `--max-conns-per-ip` (issue 9, item 6): one address holds at most N connections, the
/// next from it is closed at once, another address is still served, and a flood of
/// refusals logs a bounded number of lines (at most one a second, with a count).
fn max_conns_per_ip_caps_one_address(model: &str) {
    let server = Server::start(model, &["--max-conns-per-ip", "1"]);
    let mut first = connect(server.addr);
    first.write_all(b"1").unwrap();
    assert_eq!(read_n(&mut first, 1), b"1");
    if serializes(model) {
        // One connection at a time: a second one waits in the backlog, and is served
        // once the first leaves (the cap never refuses here).
        let mut second = connect(server.addr);
        second.write_all(b"2").unwrap();
        drop(first);
        assert_eq!(read_n(&mut second, 1), b"2");
        return;
    }
    const FLOOD: usize = 30;
    for _ in 0..FLOOD {
        let mut refused = connect(server.addr);
        match refused.read(&mut [0u8; 1]) {
            Ok(n) => assert_eq!(n, 0, "a second connection from one address was served"),
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
        }
    }
    let logged = server.log.wait_for("--max-conns-per-ip 1", 1);
    assert!(
        logged.len() < FLOOD / 3,
        "{} refusal lines for {FLOOD} refusals",
        logged.len()
    );
    // Another address on the loopback network is its own peer.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    other.connect_timeout(&server.addr.into(), STEP).unwrap();
    let mut other: TcpStream = other.into();
    other.set_read_timeout(Some(STEP)).unwrap();
    other.write_all(b"other").unwrap();
    assert_eq!(read_n(&mut other, 5), b"other");
    // The first leaves: its address has room again.
    drop(first);
    server.log.wait_for("closed: peer closed", 1);
    assert!(eventually(|| children(server.pid()).0 <= 1));
    assert_eq!(round_trip(server.addr, b"again".to_vec()), b"again");
}

/// SIGTERM with a client that sends and never reads: the server's sends to it cannot
/// finish, and it must not wait for them. Every model stops in milliseconds here; a
/// tester saw uring take 1.008 s once (finding 13), not reproduced since.
fn shutdown_with_a_non_reader_is_prompt(model: &str) {
    let mut server = Server::start(model, &[]);
    let hog = connect(server.addr);
    push_until_blocked(&hog);
    let started = Instant::now();
    let status = server
        .terminate(Duration::from_secs(5))
        .expect("server did not exit within 5 s of SIGTERM");
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_millis(500),
        "{model} took {took:?} to stop on SIGTERM with a non-reading client"
    );
    println!("{model}: stopped in {took:?} with a non-reader");
}

/// `--workers` sizes the pool of the models that have one; the others refuse it (exit 2,
/// one line naming the model) rather than ignore it silently (finding 11).
fn workers_is_refused_where_it_does_nothing(model: &str) {
    if matches!(model, "prethreaded" | "reactor" | "uring" | "async") {
        let server = Server::start(model, &["--workers", "3"]);
        assert_eq!(round_trip(server.addr, b"three".to_vec()), b"three");
        return;
    }
    let child = echolab()
        .args([
            "serve",
            "--model",
            model,
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "3",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = finish_bounded(child, STEP);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--workers 3"), "{stderr}");
    assert!(stderr.contains(&format!("the {model} model")), "{stderr}");
    // Its default (no --workers) still serves.
    let server = Server::start(model, &[]);
    assert_eq!(round_trip(server.addr, b"default".to_vec()), b"default");
}

/// At shutdown every model logs each open connection's close with its byte counts, the
/// process model too (finding 10: its parent logged "child N ended" without counts, the
/// child died of SIGTERM; now the child ends the connection and logs it).
fn shutdown_close_lines_carry_byte_counts(model: &str) {
    let mut server = Server::start(model, &[]);
    let mut conn = connect(server.addr);
    conn.write_all(b"count me").unwrap();
    assert_eq!(read_n(&mut conn, 8), b"count me");
    let port = conn.local_addr().unwrap().port();
    server.log.wait_for(&format!(":{port} opened"), 1);
    let status = server
        .terminate(Duration::from_secs(5))
        .expect("server did not exit within 5 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let closed = format!(":{port} closed: server shutting down (8 bytes in, 8 out)");
    server.log.wait_for(&closed, 1);
}

/// Sends SIGUSR1 and returns the `count`th stats line the server printed.
fn usr1_stats(server: &Server, count: usize) -> String {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid()),
        nix::sys::signal::Signal::SIGUSR1,
    );
    server.log.wait_for("echolab: stats: ", count)[count - 1].clone()
}

/// Issue 11: the figures are known truth. Three connections, one after the other (the
/// iterative model serves one at a time), move exactly 1,000 + 20,000 + 300,000 bytes
/// each way; SIGUSR1 prints one line saying so and the server keeps serving.
fn stats_count_connections_and_bytes_and_usr1_keeps_serving(model: &str) {
    let server = Server::start(model, &[]);
    let sizes = [1_000, 20_000, 300_000];
    for size in sizes {
        let payload = pattern(size);
        assert!(round_trip(server.addr, payload.clone()) == payload);
    }
    server.log.wait_for("closed: peer closed", sizes.len());
    let n: usize = sizes.iter().sum();
    let line = usr1_stats(&server, 1);
    assert!(
        line.contains("conns 0 open, 3 total, 0 refused")
            && line.contains(&format!("bytes {n} in, {n} out"))
            && line.contains("ends peer_closed 3, idle 0, shutdown 0; errors 0"),
        "{line}"
    );
    // Still serving, and counting.
    let mut conn = connect(server.addr);
    conn.write_all(b"after").unwrap();
    assert_eq!(read_n(&mut conn, 5), b"after");
    let port = conn.local_addr().unwrap().port();
    server.log.wait_for(&format!(":{port} opened"), 1);
    let line = usr1_stats(&server, 2);
    assert!(line.contains("conns 1 open, 4 total"), "{line}");
    drop(conn);
    server.log.wait_for("closed: peer closed", sizes.len() + 1);
    let line = usr1_stats(&server, 3);
    let (n_in, n_out) = (n + 5, n + 5);
    assert!(
        line.contains("conns 0 open, 4 total, 0 refused")
            && line.contains(&format!("bytes {n_in} in, {n_out} out")),
        "{line}"
    );
}

/// Tests that measure time run alone: the fairness probe's tail is the scheduler's as much
/// as the server's, and a 16 MiB stream running beside it on 2 cores made every model,
/// even those with no loop to be unfair, miss its budget. Every other test shares.
static TIMING: std::sync::RwLock<()> = std::sync::RwLock::new(());

enum Turn {
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
}

fn take_turn(test: &str) -> Turn {
    // A test that failed while holding its turn leaves the lock poisoned; the others
    // still run.
    if test == "streamer_does_not_starve_a_probe" {
        Turn::Alone(TIMING.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Turn::Shared(TIMING.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Expands every contract test for one model, in a module named after it.
macro_rules! model_tests {
    ($module:ident, $model:literal: $($test:ident),* $(,)?) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    let _turn = super::take_turn(stringify!($test));
                    // Only a model the kernel refuses (io_uring in a container) is skipped,
                    // and it says so on the terminal, past the harness's capture of
                    // `eprintln!`: the harness has no "skipped" verdict, and its "ok" alone
                    // would claim a run that did not happen. ECHOLAB_REQUIRE_ALL_MODELS=1
                    // (for a CI machine known to allow io_uring) makes the skip a failure.
                    if let Some(reason) = super::support::unsupported($model) {
                        use std::io::Write as _;
                        let _ = writeln!(
                            std::io::stderr(),
                            "SKIPPED {}::{}: {reason}",
                            $model,
                            stringify!($test)
                        );
                        assert!(
                            std::env::var_os("ECHOLAB_REQUIRE_ALL_MODELS").is_none(),
                            "{} cannot run here and ECHOLAB_REQUIRE_ALL_MODELS is set: {reason}",
                            $model
                        );
                        return;
                    }
                    super::$test($model);
                }
            )*
        }
    };
}

/// Every contract test, for every model.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        model_tests!(iterative, "iterative": $($test),*);
        model_tests!(process, "process": $($test),*);
        model_tests!(event, "event": $($test),*);
        model_tests!(thread, "thread": $($test),*);
        model_tests!(prethreaded, "prethreaded": $($test),*);
        model_tests!(reactor, "reactor": $($test),*);
        model_tests!(uring, "uring": $($test),*);
        model_tests!(async_, "async": $($test),*);
    };
}

contract!(
    basic_echo,
    binary_64k_with_nul_and_crlf,
    streams_16_mib_with_concurrent_send_and_receive,
    hundred_concurrent_clients,
    second_client_while_first_is_idle,
    half_close_returns_every_byte_owed,
    client_reset_mid_stream_costs_only_its_connection,
    a_reset_while_reading_is_logged_as_a_reset,
    a_partial_line_near_the_bound_still_gets_its_newline_read,
    client_that_never_reads_cannot_grow_server_memory,
    stalled_clients_do_not_starve_a_burst,
    slow_partial_line_blocks_no_one,
    over_long_line_closes_that_connection,
    resources_back_to_baseline_after_200_connections,
    idle_timeout_closes_silent_connections,
    max_conns_caps_open_connections,
    survives_running_out_of_descriptors,
    graceful_shutdown_releases_everything,
    shutdown_with_a_non_reader_is_prompt,
    shutdown_close_lines_carry_byte_counts,
    serves_ipv6_loopback,
    streamer_does_not_starve_a_probe,
    non_reader_holds_at_most_64k_plus_one_buffer,
    urgent_data_does_not_stall_the_stream,
    absurd_flag_values_are_refused_at_parse_time,
    workers_is_refused_where_it_does_nothing,
    a_panic_ends_the_whole_server,
    idle_connections_cost_at_most_1k_after_a_long_line,
    long_line_split_serves_the_textbook_echoclient,
    stats_count_connections_and_bytes_and_usr1_keeps_serving,
    max_conns_per_ip_caps_one_address,
    every_listen_address_is_served_under_one_cap,
);

/// The process model's own promise: a parent killed without its shutdown (SIGKILL, which
/// it cannot catch) still leaves no child serving behind it.
#[test]
fn process_children_end_with_a_killed_parent() {
    let mut server = Server::start("process", &[]);
    let mut conn = connect(server.addr);
    conn.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut conn, 1), b"x");
    let kids: Vec<i32> = family(server.pid())
        .into_iter()
        .filter(|p| *p != server.pid())
        .collect();
    assert_eq!(kids.len(), 1, "one child per connection");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // The orphan gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and its client sees the close.
    match read_to_end(&mut conn) {
        Ok(rest) => assert_eq!(rest, b""),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
    assert!(eventually(|| !std::path::Path::new(&format!(
        "/proc/{}",
        kids[0]
    ))
    .exists()
        || std::fs::read_to_string(format!("/proc/{}/stat", kids[0]))
            .is_ok_and(|s| s.contains(") Z "))));
}

/// The thread model joins a connection's thread as soon as it ends (issue 9, item 8), not
/// when the next connection arrives: `-v` logs each join, and no connection follows.
#[test]
fn thread_joins_a_finished_thread_without_a_new_connection() {
    let server = Server::start("thread", &["-v"]);
    let mut conn = connect(server.addr);
    let port = conn.local_addr().unwrap().port();
    conn.write_all(b"bye").unwrap();
    assert_eq!(read_n(&mut conn, 3), b"bye");
    drop(conn);
    server
        .log
        .wait_for(&format!(":{port}: its thread joined"), 1);
}

/// Model-aware `--max-conns` defaults (issue 9, item 6), documented in `--help`: a process
/// or a thread per connection costs far more than a loop's few hundred bytes.
#[test]
fn max_conns_defaults_depend_on_the_model_and_help_says_so() {
    let output = echolab().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("256 for process, 1024 for thread")
            && help.contains("10000 for the other models"),
        "{help}"
    );
    assert!(help.contains("--max-conns-per-ip"), "{help}");
    assert!(help.contains("--long-line"), "{help}");
}

/// The child-process checks know the truth: a child this test starts is found, whether or
/// not the kernel has `/proc/PID/task/*/children`.
#[test]
fn family_finds_a_known_child() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let found = family(std::process::id() as i32).contains(&(child.id() as i32));
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "family() missed child {}", child.id());
}

/// The loop models give each loop its own SO_REUSEPORT listener, so the kernel spreads
/// connections over the loops. On one shared listener io_uring wakes the multishot accept
/// queued first: one uring loop took all 64 connections of a benchmark and the others
/// none (issue 12). Every listener serves: 30 connections reach each of 3 listeners but
/// with odds below 1e-4, and one that nobody accepted would time out its round trip.
#[test]
fn each_loop_of_reactor_and_uring_has_its_own_listener() {
    for model in ["reactor", "uring"] {
        if let Some(reason) = unsupported(model) {
            let test = "each_loop_of_reactor_and_uring_has_its_own_listener";
            let _ = writeln!(std::io::stderr(), "SKIPPED {model}::{test}: {reason}");
            continue;
        }
        let server = Server::start(model, &["--workers", "3"]);
        let port = server.addr.port();
        assert!(
            eventually(|| listeners(port) == 3),
            "{model}: {} listeners on port {port}",
            listeners(port)
        );
        for i in 0..30 {
            let payload = format!("conn {i}\n").into_bytes();
            assert_eq!(round_trip(server.addr, payload.clone()), payload, "{model}");
        }
    }
}
