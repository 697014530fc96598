//! `backlog`: where does the second client of an iterative server block? Not in
//! `connect`: the kernel completes the handshake and queues the connection in the listen
//! backlog. Not in `write`: the kernel buffers the bytes. In `read`, until the server is
//! done with the first client and finally accepts the second.
//!
//! Trade-off: the iterative server is the simplest there is and serialises its clients;
//! the kernel's queueing hides that from `connect` and `write`, so a client cannot tell it
//! is waiting until it expects an answer.
//!
//! The server is the project's own `iterative` model, started as `echolab serve --model
//! iterative --listen 127.0.0.1:0` (this binary, re-executed) and killed afterwards.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::experiment::{ms, Deadline, Experiment, Report, Settings};
use crate::plot::{Bar, Panel, Picture};
use crate::watchdog::WatchedChild;

pub const EXPERIMENT: Experiment = Experiment {
    name: "backlog",
    summary: "iterative server: client 2's connect and write return at once, its read waits for client 1 (--trials: runs)",
    max_trials: 1_000,
    run,
};

/// How long client 1 keeps the server busy.
pub const HOLD: Duration = Duration::from_millis(300);

/// What client 2 saw, in milliseconds since the start of the run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timeline {
    /// Client 1's echo came back: the server is now busy with it.
    pub client1_served_ms: f64,
    /// How long client 2's connect, write and read each took.
    pub client2_connect_ms: f64,
    pub client2_write_ms: f64,
    pub client2_read_ms: f64,
    /// When client 1 closed, and when client 2's read returned.
    pub client1_left_ms: f64,
    pub client2_answered_ms: f64,
}

/// Starts an iterative server from `exe` and returns it with its address.
pub fn start_iterative(
    exe: &std::path::Path,
    deadline: Deadline,
) -> io::Result<(WatchedChild, SocketAddr)> {
    let args: Vec<String> = [
        "serve",
        "--model",
        "iterative",
        "--listen",
        "127.0.0.1:0",
        "--quiet",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let mut server = WatchedChild::spawn_reading(exe, &args, true, &[])?;
    while let Some(line) = server.next_line(deadline) {
        // `listening on 127.0.0.1:PORT (model iterative)`
        if let Some(rest) = line.text.strip_prefix("listening on ") {
            let addr = rest.split_whitespace().next().unwrap_or("");
            let addr = addr.parse().map_err(|_| {
                io::Error::other(format!(
                    "cannot read the server's address from {:?}",
                    line.text
                ))
            })?;
            return Ok((server, addr));
        }
    }
    let stderr = server.kill_and_reap();
    Err(io::Error::other(format!(
        "the iterative server from {} did not announce its address in time{}",
        exe.display(),
        if stderr.is_empty() {
            String::new()
        } else {
            format!(": {}", stderr.trim())
        }
    )))
}

/// One run against the server at `addr`: client 1 holds it for `hold`.
pub fn timeline(addr: SocketAddr, hold: Duration, deadline: Deadline) -> io::Result<Timeline> {
    let start = Instant::now();
    let since = |at: Instant| ms(at - start);
    let limit = Some(deadline.remaining().max(Duration::from_millis(1)));
    let mut client1 = TcpStream::connect(addr)?;
    client1.set_read_timeout(limit)?;
    client1.write_all(b"client 1\n")?;
    let mut echo = [0u8; 9];
    client1.read_exact(&mut echo)?;
    let client1_served = Instant::now();

    let mut client2 = TcpStream::connect(addr)?;
    let connected = Instant::now();
    client2.write_all(b"client 2\n")?;
    let written = Instant::now();
    client2.set_read_timeout(limit)?;
    let (client1_left, answered) = std::thread::scope(|scope| {
        let leaver = scope.spawn(move || {
            // Client 1 stays for `hold` (the experiment's independent variable), then leaves.
            std::thread::sleep(hold);
            // The moment it leaves is taken before the close: taken after, it could come
            // later than client 2's answer, which the close itself sets off.
            let leaving = Instant::now();
            drop(client1);
            leaving
        });
        let mut echo = [0u8; 9];
        let read = client2.read_exact(&mut echo).map(|()| Instant::now());
        let left = leaver
            .join()
            .map_err(|_| io::Error::other("client 1's thread panicked"))?;
        match read {
            Ok(at) if &echo == b"client 2\n" => Ok((left, at)),
            Ok(_) => Err(io::Error::other(format!(
                "client 2 got {:?} back",
                String::from_utf8_lossy(&echo)
            ))),
            Err(err) => Err(io::Error::new(
                err.kind(),
                format!("client 2's read never returned: {err}"),
            )),
        }
    })?;
    Ok(Timeline {
        client1_served_ms: since(client1_served),
        client2_connect_ms: ms(connected - client1_served),
        client2_write_ms: ms(written - connected),
        client2_read_ms: ms(answered - written),
        client1_left_ms: since(client1_left),
        client2_answered_ms: since(answered),
    })
}

fn run(settings: &Settings) -> io::Result<Report> {
    let trials = settings.trials_or(1);
    let deadline = settings.deadline();
    let (mut server, addr) = start_iterative(&settings.exe, deadline)?;
    let mut timelines = Vec::new();
    // At least one run; the rest only while the deadline allows.
    while timelines.len() < trials && (timelines.is_empty() || !deadline.passed()) {
        timelines.push(timeline(addr, HOLD, deadline)?);
    }
    server.kill_and_reap();
    let first = timelines[0];
    let mut measured = vec![
        format!("server: echolab serve --model iterative on {addr}; client 1 connected, echoed, and keeps the server busy for {} ms", HOLD.as_millis()),
        format!("{:>8.3} ms  client 1 served (t=0 is client 1's connect)", first.client1_served_ms),
        format!("{:>8.3} ms  client 2 connect() returned after {:.3} ms: queued in the listen backlog, not accepted", first.client1_served_ms + first.client2_connect_ms, first.client2_connect_ms),
        format!(
            "{:>8.3} ms  client 2 write() returned after {:.3} ms: the kernel buffered the bytes",
            first.client1_served_ms + first.client2_connect_ms + first.client2_write_ms,
            first.client2_write_ms
        ),
        format!("{:>8.3} ms  client 1 left", first.client1_left_ms),
        format!(
            "{:>8.3} ms  client 2 read() returned its echo, after blocking {:.1} ms",
            first.client2_answered_ms, first.client2_read_ms
        ),
    ];
    if trials > 1 {
        let reads: Vec<String> = timelines
            .iter()
            .map(|t| format!("{:.1}", t.client2_read_ms))
            .collect();
        measured.push(format!(
            "client 2 read blocked (ms) per run: {}",
            reads.join(", ")
        ));
    }
    let picture = Picture::new(
        "Client 2 against a busy iterative server",
        "milliseconds",
        vec![Panel::new(
            "how long each call of client 2 took",
            vec![
                Bar::new("connect", first.client2_connect_ms),
                Bar::new("write", first.client2_write_ms),
                Bar::new("read", first.client2_read_ms),
            ],
        )],
    );
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Where does the second client block?",
        claim: "Against an iterative server busy with client 1, client 2's connect returns (the TCP listen backlog queues it), its write returns (the kernel buffers it), and its read blocks: the server hasn't written anything for it yet.",
        did: format!(
            "Started the project's iterative server, connected client 1 and had it echo once, then timed client 2's connect, write and read while client 1 stayed {} ms before leaving.",
            HOLD.as_millis()
        ),
        measured,
        meaning: format!(
            "connect took {:.2} ms and write {:.2} ms: neither waits for the server. read took {:.0} ms, ending right after client 1 left at {:.0} ms: \
             that is where the second client blocks, and it cannot tell it is queued until then.",
            first.client2_connect_ms, first.client2_write_ms, first.client2_read_ms, first.client1_left_ms
        ),
        fix: "Serve clients concurrently: a process, thread or event loop per connection (echolab serve --model process|thread|event...) answers client 2 while client 1 stays.".to_string(),
        hangs: Vec::new(),
        figures: json!({ "hold_ms": HOLD.as_millis() as u64, "runs": timelines }),
        svg: Some(picture.svg()),
    })
}
