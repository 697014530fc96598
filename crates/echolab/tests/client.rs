//! `echolab client` from the outside: round trips through the `event` model, and the
//! verdicts against small misbehaving servers written here (a corrupted byte, an early
//! close, a reset, silence). Every run is bounded by a watchdog that kills it.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use support::{echolab, finish_bounded, Server};

/// `echolab client ADDR ARGS...` with `input` on stdin (then closed).
fn client(addr: SocketAddr, args: &[&str], input: &[u8]) -> Output {
    let mut command: Command = echolab();
    command
        .arg("client")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn echolab client");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written from a thread: the client's echoes fill its stdout pipe meanwhile.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = finish_bounded(child, Duration::from_secs(60));
    writer.join().unwrap();
    output
}

/// A temporary file holding `bytes`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("echolab-client-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every byte value, NUL and `\r\n` included, position-dependent.
fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A one-connection server running `serve` on a thread; `finish` wakes its accept if the
/// client never connected, then joins it.
struct TestServer {
    addr: SocketAddr,
    handle: Option<thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(serve: impl FnOnce(TcpStream) + Send + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            if let Ok((conn, _)) = listener.accept() {
                conn.set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                conn.set_write_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                serve(conn);
            }
        });
        TestServer {
            addr,
            handle: Some(handle),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            if !handle.is_finished() {
                let _ = TcpStream::connect(self.addr);
            }
            let _ = handle.join();
        }
    }
}

/// Reads and discards until the client closes.
fn drain(mut conn: &TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

#[test]
fn a_file_round_trips_through_the_event_model() {
    let server = Server::start("event", &["--quiet"]);
    let file = TempFile::new("round-trip", &binary(3 << 20));
    let output = client(server.addr, &["--send", file.arg()], b"");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("{} bytes", 3 << 20)),
        "stdout: {stdout}"
    );
}

#[test]
fn interactive_echoes_a_last_line_without_newline_and_exits() {
    let server = Server::start("event", &["--quiet"]);
    let input = b"hello\nlast line, no newline";
    let output = client(server.addr, &[], input);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, input);
}

#[test]
fn interactive_in_lines_mode_gets_the_last_line_at_end_of_input() {
    let server = Server::start("event", &["--quiet", "--mode", "lines"]);
    let input = b"one\ntwo\nthree without newline";
    let output = client(server.addr, &[], input);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, input);
}

#[test]
fn a_corrupted_byte_is_reported_with_its_offset() {
    let server = TestServer::start(|mut conn| {
        let mut pos = 0usize;
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            if (pos..pos + n).contains(&5_000) {
                buf[5_000 - pos] ^= 1;
            }
            pos += n;
            if conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let file = TempFile::new("corrupt", &binary(100_000));
    let output = client(server.addr, &["--send", file.arg()], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        stderr.contains("mismatch at offset 5000"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
}

#[test]
fn interactive_checks_the_echo_too_and_exits_3_on_a_corrupted_byte() {
    let server = TestServer::start(|mut conn| {
        let mut pos = 0usize;
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            if (pos..pos + n).contains(&5_000) {
                buf[5_000 - pos] ^= 1;
            }
            pos += n;
            if conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let input = binary(100_000);
    let output = client(server.addr, &[], &input);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Without the check: the corrupted echo printed and exit 0 ("everything came back").
    assert_eq!(output.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        stderr.contains("mismatch at offset 5000: sent 0x"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    // What came back is printed as it came, up to and including the differing byte.
    assert!(output.stdout.len() > 5_000, "{}", output.stdout.len());
    assert_eq!(output.stdout[..5_000], input[..5_000]);
    assert_eq!(output.stdout[5_000], input[5_000] ^ 1);
}

#[test]
fn interactive_streams_more_than_it_keeps_to_compare() {
    let server = Server::start("event", &[]);
    let input = binary(echolab_load::client::MAX_OWED * 2 + 12_345);
    let output = client(server.addr, &[], &input);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout == input, "{} bytes back", output.stdout.len());
}

#[test]
fn interactive_sends_at_most_what_it_keeps_to_compare_while_no_echo_comes() {
    // A server that reads everything and echoes nothing: the client keeps what it sent to
    // compare with an echo that never comes, so it must stop sending once it holds
    // MAX_OWED bytes (plus the one read of stdin in hand), and then time out.
    let (count_tx, count_rx) = std::sync::mpsc::channel();
    let server = TestServer::start(move |mut conn| {
        let mut total = 0usize;
        let mut buf = [0u8; 65536];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        let _ = count_tx.send(total);
    });
    let input = binary(echolab_load::client::MAX_OWED * 3);
    let output = client(server.addr, &["--timeout", "500ms"], &input);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("timeout"), "{stderr}");
    let received = count_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(
        received <= echolab_load::client::MAX_OWED + 64 * 1024,
        "the server got {received} bytes"
    );
}

#[test]
fn an_early_close_is_reported_with_the_count() {
    // Echoes the first 1000 bytes, then closes its sending side and discards the rest.
    let server = TestServer::start(|mut conn| {
        let mut first = [0u8; 1_000];
        if conn.read_exact(&mut first).is_ok() && conn.write_all(&first).is_ok() {
            let _ = conn.shutdown(Shutdown::Write);
            drain(&conn);
        }
    });
    let file = TempFile::new("early", &binary(100_000));
    let output = client(server.addr, &["--send", file.arg()], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("early end of file") && stderr.contains("1000 of 100000"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_reset_is_an_error_not_a_success() {
    // Reads a little and closes with unread bytes pending: the kernel answers with RST.
    let server = TestServer::start(|mut conn| {
        let mut some = [0u8; 1_000];
        let _ = conn.read_exact(&mut some);
    });
    let file = TempFile::new("reset", &binary(8 << 20));
    let output = client(server.addr, &["--send", file.arg()], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    // Whichever side notices first: the reader sees the reset or, if the sender consumed
    // it, the end of file that follows; both name how far the echo got.
    assert!(
        stderr.contains("reset")
            || stderr.contains("early end of file")
            || stderr.contains("cannot send"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_silent_server_is_a_timeout() {
    // Reads everything, echoes nothing, and holds the connection open until the test has
    // the client's verdict.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let server = TestServer::start(move |conn| {
        drain(&conn);
        let _ = release_rx.recv_timeout(Duration::from_secs(20));
    });
    let file = TempFile::new("silent", &binary(1_000));
    let output = client(
        server.addr,
        &["--send", file.arg(), "--timeout", "0.5"],
        b"",
    );
    drop(release_tx);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("timeout") && stderr.contains("0 of 1000"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_server_that_closes_mid_session_is_an_error_never_an_echo() {
    // Takes the first line and closes without echoing it, while the client's input is
    // still open.
    let (line_tx, line_rx) = mpsc::channel();
    let server = TestServer::start(move |mut conn| {
        let mut line = [0u8; 6];
        let _ = conn.read_exact(&mut line);
        let _ = line_tx.send(());
    });
    let mut command = echolab();
    command
        .arg("client")
        .arg(server.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    line_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server got the line");
    // stdin stays open until the client has given its verdict.
    let output = finish_bounded(child, Duration::from_secs(20));
    drop(stdin);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.is_empty(),
        "printed as an echo: {:?}",
        output.stdout
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("closed the connection before the end of input"),
        "stderr: {stderr}"
    );
}

#[test]
fn an_unreachable_server_is_named() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = client(addr, &[], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains(&addr.to_string()) && stderr.contains("refused"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_directory_is_a_bad_argument_not_a_timeout() {
    // A directory opens and has a length, but cannot be read: the client once waited for
    // the echo of its 4096 "bytes" until the timeout, blaming the server.
    let server = Server::start("event", &[]);
    let dir = std::env::temp_dir();
    let output = client(
        server.addr,
        &["--send", dir.to_str().unwrap(), "--timeout", "30"],
        b"",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(dir.to_str().unwrap()) && stderr.contains("not a regular file"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_port_out_of_range_is_named() {
    let output = finish_bounded(
        echolab()
            .args(["client", "127.0.0.1:99999"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains("99999") && stderr.contains("out of range"),
        "stderr: {stderr}"
    );
}
