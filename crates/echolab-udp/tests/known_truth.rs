//! Known truth for the UDP bench: deliberately wrong echo servers, written here, whose
//! effect on the measurement can be computed by hand (drop every 10th datagram: 10%
//! loss; hold every 5th back until three later ones are echoed: reordering of distance
//! 3; ...), each asserted exactly.
//!
//! Every rule is stated in the server's own order of arrival, never in time, so the
//! expected counts do not depend on how fast this machine is. Timeouts only separate
//! "answered" from "lost" and are generous for the datagrams that are answered.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use echolab_udp::bench::{run, UdpBenchConfig, UdpReport};

/// What the wrong server does with the datagram it receives `idx`-th (0-based, over all
/// sources).
#[derive(Debug, Clone, Copy)]
enum Act {
    Echo,
    Drop,
    Twice,
    /// Echo with its last byte flipped.
    Flip,
    /// Keep it, and echo it right after echoing the `n`-th datagram that arrives after it.
    HoldFor(usize),
    /// Echo it this many times, back to back.
    Flood(usize),
}

struct WrongServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WrongServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// Starts a server on 127.0.0.1:0 that applies `rule`; it ends when dropped, or after
/// 60 s whatever happens.
fn wrong_server(rule: fn(u64) -> Act) -> WrongServer {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = vec![0u8; 65_536];
        let mut held: Vec<(Vec<u8>, SocketAddr, usize)> = Vec::new();
        let mut idx = 0u64;
        while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
            let Ok((len, src)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let data = buf[..len].to_vec();
            let act = rule(idx);
            idx += 1;
            match act {
                Act::Echo => {
                    socket.send_to(&data, src).unwrap();
                }
                Act::Drop => {}
                Act::Twice => {
                    socket.send_to(&data, src).unwrap();
                    socket.send_to(&data, src).unwrap();
                }
                Act::Flood(n) => {
                    for _ in 0..n {
                        socket.send_to(&data, src).unwrap();
                    }
                }
                Act::Flip => {
                    let mut bad = data.clone();
                    *bad.last_mut().unwrap() ^= 0x20;
                    socket.send_to(&bad, src).unwrap();
                }
                Act::HoldFor(n) => {
                    held.push((data, src, n));
                    continue;
                }
            }
            for entry in held.iter_mut() {
                entry.2 -= 1;
            }
            for (data, src, _) in held.iter().filter(|h| h.2 == 0) {
                socket.send_to(data, *src).unwrap();
            }
            held.retain(|h| h.2 > 0);
        }
    });
    WrongServer {
        addr,
        stop,
        thread: Some(thread),
    }
}

fn config(addr: SocketAddr, n_conns: usize, count: u64, timeout_ms: u64) -> UdpBenchConfig {
    UdpBenchConfig {
        addr,
        n_conns,
        size: 64,
        // The count ends the run; the duration is only a bound.
        duration: Duration::from_secs(30),
        count: Some(count),
        rate: None,
        timeout: Duration::from_millis(timeout_ms),
        n_threads: 2,
    }
}

fn bench(config: &UdpBenchConfig) -> UdpReport {
    let report = run(config, &AtomicBool::new(false)).unwrap();
    eprintln!("{}", report.text());
    report
}

#[test]
fn a_server_that_drops_every_tenth_datagram_gives_ten_percent_loss() {
    let server = wrong_server(|idx| if idx % 10 == 9 { Act::Drop } else { Act::Echo });
    let report = bench(&config(server.addr, 4, 100, 100));
    let c = &report.counts;
    assert_eq!((c.sent, c.echoed, c.lost), (400, 360, 40));
    assert_eq!(c.loss_ratio(), 0.1);
    assert_eq!((c.late, c.duplicates, c.corrupt, c.reordered), (0, 0, 0, 0));
    assert_eq!(report.verdict(0.0).0, 1, "loss above --max-loss 0");
    assert_eq!(report.verdict(10.0).0, 0, "loss at --max-loss 10");
    assert_eq!(report.latency.len(), 360);
}

#[test]
fn a_server_that_holds_every_fifth_back_three_gives_reordering_of_distance_three() {
    // Open loop on one socket, so that later datagrams are sent while one is held.
    let server = wrong_server(|idx| {
        if idx % 5 == 4 {
            Act::HoldFor(3)
        } else {
            Act::Echo
        }
    });
    let mut cfg = config(server.addr, 1, 98, 5_000);
    cfg.rate = Some(2_000.0);
    let report = bench(&cfg);
    let c = &report.counts;
    // Held: 4, 9, ..., 94 (19 datagrams), each echoed after the next three.
    assert_eq!(c.reordered, 19);
    assert_eq!(c.max_reorder_distance, 3);
    assert_eq!((c.sent, c.echoed, c.lost, c.late), (98, 98, 0, 0));
}

#[test]
fn a_server_that_echoes_every_seventh_twice_gives_its_duplicates() {
    let server = wrong_server(|idx| if idx % 7 == 6 { Act::Twice } else { Act::Echo });
    // 68 datagrams: the doubled ones are 6, 13, ..., 62 (9), each followed by more
    // datagrams, so that every second copy arrives before the run ends.
    let report = bench(&config(server.addr, 1, 68, 1_000));
    let c = &report.counts;
    assert_eq!(c.duplicates, 9);
    assert_eq!((c.sent, c.echoed, c.lost, c.corrupt), (68, 68, 0, 0));
}

#[test]
fn a_duplicate_of_the_last_echo_is_counted_too() {
    // Two sockets on one thread, one datagram each (closed loop). The first to arrive is
    // held until the second has been echoed twice, so that when the run ends (on the held
    // echo) the second socket's duplicate is already queued behind its echo. The closed
    // loop stops reading a socket once nothing is awaited, and that duplicate was never
    // counted (a server that doubles every datagram gave duplicates = sent - sockets).
    let server = wrong_server(|idx| {
        if idx == 0 {
            Act::HoldFor(1)
        } else {
            Act::Twice
        }
    });
    let mut cfg = config(server.addr, 2, 1, 5_000);
    cfg.n_threads = 1;
    let report = bench(&cfg);
    let c = &report.counts;
    assert_eq!((c.sent, c.echoed, c.lost, c.corrupt), (2, 2, 0, 0));
    assert_eq!(c.duplicates, 1);
}

#[test]
fn echoes_the_bench_sockets_drop_are_counted_from_the_kernel() {
    // Two sockets on one thread, one 60,000-byte datagram each. The first to arrive is held
    // until the second has been echoed 1000 times back to back. The closed loop reads the
    // second socket's first copy and then nothing of it until the run ends (nothing is
    // awaited there), so its receive queue (at most 8 MiB: ~140 such datagrams) overflows
    // and the kernel drops the rest; the end of the run reads what was queued. Every copy
    // after the first is a duplicate read or a drop, and none is a lost echo.
    const COPIES: u64 = 1000;
    let server = wrong_server(|idx| {
        if idx == 0 {
            Act::HoldFor(1)
        } else {
            Act::Flood(COPIES as usize)
        }
    });
    let mut cfg = config(server.addr, 2, 1, 5_000);
    cfg.n_threads = 1;
    cfg.size = 60_000;
    let report = bench(&cfg);
    let c = &report.counts;
    assert_eq!((c.sent, c.echoed, c.lost, c.corrupt), (2, 2, 0, 0));
    assert!(c.bench_drops >= 1, "{c:?}");
    // The kernel may still be delivering the last copies when the drops are read.
    assert!(c.duplicates + c.bench_drops < COPIES, "{c:?}");
    let text = report.text();
    assert!(
        text.contains("no echo was lost, so none was an echo awaited (duplicates)"),
        "{text}"
    );
    assert_eq!(report.json()["bench_drops"], c.bench_drops);
}

#[test]
fn a_server_that_flips_a_byte_gives_corrupt_echoes_and_exit_3() {
    let server = wrong_server(|idx| if idx % 10 == 0 { Act::Flip } else { Act::Echo });
    let report = bench(&config(server.addr, 2, 50, 1_000));
    let c = &report.counts;
    assert_eq!(c.corrupt, 10);
    assert_eq!((c.sent, c.echoed, c.lost), (100, 90, 0));
    assert_eq!(report.verdict(100.0).0, 3);
    // Each flipped echo still names its datagram: it answers it, wrongly. The JSON has
    // what loss_ratio is over (sent = echoed + lost + corrupt_answers at the end).
    let doc = report.json();
    assert_eq!(
        (doc["corrupt"].as_u64(), doc["corrupt_answers"].as_u64()),
        (Some(10), Some(10))
    );
}

#[test]
fn the_echo_rate_leaves_out_the_wait_for_a_last_lost_datagram() {
    // 10 datagrams, the last dropped: the run waits out its 1 s timeout, which is no time
    // of echoing (the rate was halved, or worse, by it).
    let server = wrong_server(|idx| if idx == 9 { Act::Drop } else { Act::Echo });
    let report = bench(&config(server.addr, 1, 10, 1_000));
    let c = &report.counts;
    assert_eq!((c.sent, c.echoed, c.lost), (10, 9, 1));
    assert!(
        report.elapsed >= report.active + Duration::from_secs(1),
        "{report:?}"
    );
    assert_eq!(report.echoes_per_sec(), 9.0 / report.active.as_secs_f64());
}

#[test]
fn an_echo_held_past_the_timeout_is_lost_then_late() {
    // Closed loop: datagram 9 is held, counted lost after 100 ms, then the bench sends 10,
    // 11, 12 and the server releases 9 after echoing 12.
    let server = wrong_server(|idx| {
        if idx % 10 == 9 {
            Act::HoldFor(3)
        } else {
            Act::Echo
        }
    });
    let report = bench(&config(server.addr, 1, 95, 100));
    let c = &report.counts;
    assert_eq!((c.sent, c.echoed, c.lost, c.late), (95, 86, 9, 9));
    assert_eq!((c.duplicates, c.reordered, c.corrupt), (0, 0, 0));
}

#[test]
fn nothing_listening_is_total_loss_and_socket_errors_not_a_hang() {
    // A port that was just free: the kernel answers with ICMP port unreachable.
    let addr = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    let report = bench(&config(addr, 1, 3, 50));
    let c = &report.counts;
    assert_eq!(c.echoed, 0);
    assert_eq!(c.lost, c.sent);
    assert!(c.sent >= 1);
    assert!(report.socket_errors >= 1, "ECONNREFUSED is counted");
    assert_eq!(
        report.socket_error_kinds.keys().collect::<Vec<_>>(),
        ["connection refused"]
    );
    assert!(report.text().contains("nothing listens on"));
    assert_eq!(report.verdict(100.0).0, 1);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_send_the_kernel_refuses_is_said_as_it_is_not_as_nothing_listening() {
    // A server that answers, reached through its IPv4-mapped IPv6 address with datagrams
    // too large for IPv4: every send fails with EMSGSIZE. The report said "ECONNREFUSED:
    // nothing listens" for any socket error.
    let server = wrong_server(|_| Act::Echo);
    if std::net::UdpSocket::bind("[::]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 socket here, so no IPv4-mapped destination");
        return;
    }
    let std::net::IpAddr::V4(v4) = server.addr.ip() else {
        unreachable!("the server binds 127.0.0.1")
    };
    let mapped = SocketAddr::new(v4.to_ipv6_mapped().into(), server.addr.port());
    let mut cfg = config(mapped, 1, 3, 50);
    cfg.size = 65_527;
    // No send succeeds, so the count is never reached: the duration ends the run.
    cfg.duration = Duration::from_millis(300);
    let report = bench(&cfg);
    assert_eq!((report.counts.sent, report.counts.echoed), (0, 0));
    assert!(report.socket_errors >= 1);
    assert_eq!(
        report.socket_error_kinds.keys().collect::<Vec<_>>(),
        ["message too long"]
    );
    let text = report.text();
    assert!(!text.contains("listens"), "{text}");
    assert!(
        text.contains(&format!("{} message too long)", report.socket_errors)),
        "{text}"
    );
}

#[test]
fn a_server_that_answers_from_another_port_is_said_so_not_blamed_on_a_rate_limit() {
    // The echo leaves from a second socket (a multi-homed or careless server): the bench's
    // connected socket never sees it, and the report must not guess a rate limit.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        for _ in 0..3 {
            let Ok((len, src)) = socket.recv_from(&mut buf) else {
                return;
            };
            other.send_to(&buf[..len], src).unwrap();
        }
    });
    let report = bench(&config(addr, 1, 3, 50));
    server.join().unwrap();
    let c = &report.counts;
    assert_eq!((c.sent, c.echoed, c.lost, c.corrupt), (3, 0, 3, 0));
    let text = report.text();
    assert!(
        text.contains(&format!("nothing came back from {addr}")),
        "{text}"
    );
    assert!(!text.contains("rate-limited"), "{text}");
}

#[test]
fn a_correct_server_gives_a_clean_report() {
    let server = wrong_server(|_| Act::Echo);
    let mut cfg = config(server.addr, 3, 200, 2_000);
    cfg.rate = Some(5_000.0);
    let report = bench(&cfg);
    let c = &report.counts;
    assert_eq!((c.sent, c.echoed), (600, 600));
    assert_eq!(
        (c.lost, c.late, c.duplicates, c.reordered, c.corrupt),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(report.verdict(0.0).0, 0);
    let json = report.json();
    assert_eq!(json["echoed"], 600);
    assert_eq!(json["loss_ratio"], 0.0);
    assert!(report.echoes_per_sec() > 0.0);
}

#[test]
fn an_open_loop_faster_than_any_generator_accounts_every_datagram_due() {
    // 100 million datagrams/s over 2 sockets for 50 ms: socket 0 is due at 0, 20, 40 ns,
    // ..., socket 1 at 10, 30, 50 ns, ...: exactly 5,000,000 send times in the window, far
    // more than one thread can send. Those it could not send must be counted, not dropped.
    let server = wrong_server(|_| Act::Echo);
    let cfg = UdpBenchConfig {
        addr: server.addr,
        n_conns: 2,
        size: 64,
        duration: Duration::from_millis(50),
        count: None,
        rate: Some(100_000_000.0),
        timeout: Duration::from_millis(200),
        n_threads: 1,
    };
    let report = bench(&cfg);
    let c = &report.counts;
    assert_eq!(c.intended(), 5_000_000, "every send time of the window");
    assert_eq!(c.sent + c.unsent, 5_000_000);
    assert!(c.unsent > 0 && c.sent > 0, "{c:?}");
    assert_eq!(
        c.echoed + c.lost + c.corrupt,
        c.sent,
        "every datagram sent resolved"
    );
    let (code, sentence) = report.verdict(100.0);
    assert_eq!(code, 1, "{sentence}");
    assert!(
        sentence.starts_with(&format!("FAIL: {} of 5000000 datagrams due", c.unsent)),
        "{sentence}"
    );
    assert_eq!(report.json()["unsent"], c.unsent);
    assert_eq!(report.json()["intended"], 5_000_000);
}

#[test]
fn an_open_loop_accounts_exactly_the_send_times_of_its_window() {
    // 1,000 datagrams/s over 2 sockets for 100 ms: exactly 100 send times (0, 1, ..., 99 ms).
    let server = wrong_server(|_| Act::Echo);
    let cfg = UdpBenchConfig {
        addr: server.addr,
        n_conns: 2,
        size: 64,
        duration: Duration::from_millis(100),
        count: None,
        rate: Some(1_000.0),
        timeout: Duration::from_secs(2),
        n_threads: 1,
    };
    let report = bench(&cfg);
    let c = &report.counts;
    // Exactly 100 due; a stall of this busy machine at the end may leave some unsent,
    // and then they are counted.
    assert_eq!(c.intended(), 100);
    assert_eq!(c.sent + c.unsent, 100);
    assert_eq!(c.echoed + c.lost, c.sent);
    assert_eq!(report.verdict(100.0).0, if c.unsent == 0 { 0 } else { 1 });
}

#[test]
fn a_slot_due_before_the_window_ends_is_sent_late_not_counted_unsent() {
    // The turn that sees the window end (here at once: the run is interrupted before it
    // starts) still sends the slots already due: socket 0's first is due at 0. It was
    // counted unsent, and every open loop ended with a few such (a --rate 5000 run that
    // kept its rate said `FAIL: 4 of 5000 datagrams due ... could not keep --rate 5000`;
    // Ctrl-C gave exit 1, not 130).
    let server = wrong_server(|_| Act::Echo);
    let cfg = UdpBenchConfig {
        addr: server.addr,
        n_conns: 1,
        size: 64,
        duration: Duration::from_secs(10),
        count: None,
        rate: Some(1.0),
        timeout: Duration::from_secs(5),
        n_threads: 1,
    };
    let report = run(&cfg, &AtomicBool::new(true)).unwrap();
    eprintln!("{}", report.text());
    let c = &report.counts;
    assert_eq!((c.intended(), c.sent, c.unsent, c.echoed), (1, 1, 0, 1));
    assert_eq!(report.verdict(0.0).0, 130, "{}", report.verdict(0.0).1);
}

#[test]
fn an_interrupted_run_waits_a_short_grace_not_the_whole_timeout() {
    // A server that never answers and a 30 s timeout: interrupted (here before it starts;
    // the open loop's first slot, due at 0, still goes), the run gives its datagram 1 s,
    // then counts it lost and given up. It waited the whole timeout.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = UdpBenchConfig {
        addr: socket.local_addr().unwrap(),
        n_conns: 1,
        size: 64,
        duration: Duration::from_secs(10),
        count: None,
        rate: Some(1.0),
        timeout: Duration::from_secs(30),
        n_threads: 1,
    };
    let started = Instant::now();
    let report = run(&cfg, &AtomicBool::new(true)).unwrap();
    let took = started.elapsed();
    eprintln!("{}", report.text());
    let c = &report.counts;
    assert_eq!((c.sent, c.echoed, c.lost, c.given_up), (1, 0, 1, 1));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(report
        .text()
        .contains("interrupt   1 datagram still awaited 1.00 s after the interrupt counted lost, before their --timeout of 30.00 s"));
    assert_eq!(report.json()["given_up"], 1);
    assert_eq!(report.verdict(100.0).0, 130);
}

/// `--interval`: progress lines while the run goes, their figures never ahead of the
/// final counts and never going backwards. Every 10th datagram is dropped and each drop
/// stalls its socket for the 100 ms timeout, so the run lasts about a second: the 0.1 s
/// ticks see it.
#[test]
fn progress_ticks_report_counts_that_only_grow_up_to_the_final_ones() {
    use echolab_udp::bench::{run_with_progress, Progress};
    let server = wrong_server(|idx| if idx % 10 == 9 { Act::Drop } else { Act::Echo });
    let cfg = config(server.addr, 4, 100, 100);
    let ticks = std::sync::Mutex::new(Vec::<(Progress, String)>::new());
    let report = run_with_progress(
        &cfg,
        &AtomicBool::new(false),
        Duration::from_millis(100),
        |now, before| {
            ticks.lock().unwrap().push((now.clone(), now.line(before)));
        },
    )
    .unwrap();
    let ticks = ticks.into_inner().unwrap();
    let c = &report.counts;
    assert_eq!((c.sent, c.echoed, c.lost), (400, 360, 40));
    eprintln!("{} ticks in {:?}", ticks.len(), report.elapsed);
    assert!(
        !ticks.is_empty(),
        "a run of {:?} had no tick",
        report.elapsed
    );
    let mut before = Progress::default();
    for (now, line) in &ticks {
        eprintln!("{line}");
        assert!(
            line.starts_with("bench: ") && line.contains(" echoes/s, "),
            "{line}"
        );
        assert!(now.sent >= before.sent && now.echoed >= before.echoed && now.lost >= before.lost);
        assert!(now.sent <= c.sent && now.echoed <= c.echoed && now.lost <= c.lost);
        assert!(now.elapsed > before.elapsed);
        before = now.clone();
    }
}
