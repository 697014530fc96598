//! The conventions every echolab command shares, in one place so that `serve`, `client`,
//! `bench`, `compare`, `lab` and the UDP flags spell them alike.
//!
//! # Layout
//!
//! - `units`: flag values: durations with units (`500ms`, `2s`, `1m`; a bare number is
//!   seconds), sizes with units (`1.5K`, `64KiB`, `1G`; a bare number is bytes), whole
//!   counts, and socket addresses. Each parser returns one lowercase sentence for clap to
//!   put after "invalid value 'V' for '--FLAG'".
//! - [`describe_io`]: an I/O error as the lowercase phrase every message ends with.
//! - `provenance`: what every JSON document carries about the run that wrote it (schema
//!   version, echolab's version and git revision, command line, CPU model, kernel).
#![forbid(unsafe_code)]

pub mod provenance;
pub mod units;

/// Opens the file a client's `--send` names: a regular file only. A pipe, a device or a
/// directory has no end to read up to and no length to compare the echo with, and a FIFO
/// with no writer would block the open itself, so the kind is looked up before the open
/// (and checked again on what was opened). Returns the file and its length in bytes.
///
/// Errors: the sentence to print after the command's name, `cannot send PATH: not a
/// regular file` or `cannot read PATH: WHY`.
pub fn open_send_file(path: &std::path::Path) -> Result<(std::fs::File, u64), String> {
    let shown = path.display();
    let cannot_read = |err: &std::io::Error| format!("cannot read {shown}: {}", describe_io(err));
    let not_regular = || format!("cannot send {shown}: not a regular file");
    let kind = std::fs::metadata(path).map_err(|err| cannot_read(&err))?;
    if !kind.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::File::open(path).map_err(|err| cannot_read(&err))?;
    let opened = file.metadata().map_err(|err| cannot_read(&err))?;
    if !opened.is_file() {
        return Err(not_regular());
    }
    Ok((file, opened.len()))
}

/// An I/O error as one lowercase phrase, without Rust's " (os error N)":
/// `no such file or directory`, for "cannot read FILE: no such file or directory".
pub fn describe_io(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}

/// A count and its noun, the noun plural unless the count is 1: `counted(1, "conn")` is
/// "1 conn", `counted(8, "conn")` "8 conns" (the nouns printed with counts are regular).
pub fn counted<N: Copy + PartialEq + From<u8> + std::fmt::Display>(n: N, noun: &str) -> String {
    let s = if n == N::from(1) { "" } else { "s" };
    format!("{n} {noun}{s}")
}

/// `eprintln!` that carries on when stderr is gone (see [`announce`]): the arguments of
/// `format!`, one line on stderr in one write, never a panic.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::announce(&::std::format!($($arg)*))
    };
}

/// Writes `line` and its newline on stderr in one write, and carries on if stderr is gone:
/// a server's announcements (`listening on ADDR`) must not end it when the reader of its
/// stderr has left (`echolab serve 2>&1 | grep -m1 listening`: `eprintln!` panics on the
/// closed pipe, and the server exited 101 at its next announcement). Every message said on
/// the way to an exit status goes through it too, so that the status stays 2 (or 1), not
/// a panic's 101, when stderr is closed or full (`echolab serve --bogus 2>/dev/full`).
pub fn announce(line: &str) {
    let _ = write_line(&mut std::io::stderr().lock(), line);
}

/// The exit status of a command whose stdout was closed by its reader (`echolab bench ...
/// | head -3`): 141, what a shell reports for a process killed by SIGPIPE (128 + 13), as
/// for any Unix tool in that place. echolab ignores SIGPIPE (Rust's runtime does, so
/// that a client's closed socket is an error, not a death); every write to stdout goes
/// through [`stdout`], which notes the closed pipe, and `main` ends with [`exit_status`].
pub const STDOUT_CLOSED: u8 = 141;

static STDOUT_CLOSED_SEEN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The first other error a write to stdout met (a full disk), in words.
static STDOUT_FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Stdout, locked, noting a write that found it closed by its reader (EPIPE): then
/// [`stdout_closed`] is true, a running command stops its work, and [`exit_status`] is
/// [`STDOUT_CLOSED`]; any other write error (a full disk) makes [`exit_status`] a failure.
/// Every write of a command's output on stdout goes through it.
#[derive(Debug)]
pub struct Stdout(std::io::StdoutLock<'static>);

/// Stdout for a command's output (see [`Stdout`]).
pub fn stdout() -> Stdout {
    Stdout(std::io::stdout().lock())
}

impl Stdout {
    fn note<T>(result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(err) = &result {
            match err.kind() {
                std::io::ErrorKind::BrokenPipe => {
                    STDOUT_CLOSED_SEEN.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                std::io::ErrorKind::Interrupted => {}
                _ => {
                    let _ = STDOUT_FAILED.set(describe_io(err));
                }
            }
        }
        result
    }
}

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Self::note(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::note(self.0.flush())
    }
}

/// True once a write to stdout found it closed by its reader: nobody reads the output,
/// so a running command (a `--json-stream` bench, `lab all`, a client) stops its work.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED_SEEN.load(std::sync::atomic::Ordering::SeqCst)
}

/// `code`, or [`STDOUT_CLOSED`] once stdout was found closed by its reader: the status
/// `main` returns, the same for every command. Output lost otherwise (`bench --json >
/// results.json` on a full disk) turns a success into 1, said in one line, as for
/// `--help` (it was 0, the results gone without a word); a failure keeps its status.
pub fn exit_status(code: std::process::ExitCode) -> std::process::ExitCode {
    if stdout_closed() {
        return std::process::ExitCode::from(STDOUT_CLOSED);
    }
    match STDOUT_FAILED.get() {
        Some(why) if code == std::process::ExitCode::SUCCESS => {
            say!("echolab: cannot write to stdout: {why}");
            std::process::ExitCode::FAILURE
        }
        _ => code,
    }
}

/// Writes `text` and its newline on stdout in one write, and carries on if stdout is gone:
/// the JSON document of a refusal (`bench --json`) must not turn its exit status into a
/// panic's 101 when stdout is full or closed.
pub fn print_out(text: &str) {
    let _ = write_line(&mut stdout(), text);
}

/// `text` and its newline in one write (so that lines of several threads or processes on
/// one stream never interleave mid-line), then a flush.
fn write_line(out: &mut impl std::io::Write, text: &str) -> std::io::Result<()> {
    let mut whole = String::with_capacity(text.len() + 1);
    whole.push_str(text);
    whole.push('\n');
    out.write_all(whole.as_bytes())?;
    out.flush()
}

/// The exit status of `--help` or `--version` once `printed` (clap's `Error::print`): 0, or
/// 1 and one line on stderr when stdout did not take it (a full disk), as `echolab man`
/// says it (it was 0, the page lost); [`STDOUT_CLOSED`] without a word for a pipe closed
/// by its reader.
pub fn help_printed(printed: std::io::Result<()>) -> std::process::ExitCode {
    use std::io::Write;
    // Noted as any write to stdout is, and said by the one place that says it.
    let _ = Stdout::note(printed.and_then(|()| std::io::stdout().flush()));
    exit_status(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_of_one_takes_the_singular() {
        assert_eq!(counted(1usize, "conn"), "1 conn");
        assert_eq!(counted(0u64, "socket"), "0 sockets");
        assert_eq!(counted(2u32, "thread"), "2 threads");
    }

    /// The only test of this binary that touches the flags: once set, they stay set.
    #[test]
    fn a_closed_stdout_is_noted_and_ends_with_141() {
        use std::io::{Error, ErrorKind};
        use std::process::ExitCode;
        assert!(Stdout::note::<()>(Err(Error::from(ErrorKind::StorageFull))).is_err());
        assert!(!stdout_closed(), "a full disk is not a reader that left");
        assert_eq!(exit_status(ExitCode::from(3)), ExitCode::from(3));
        // Lost output fails a success (and says so on stderr), not a failure.
        assert_eq!(exit_status(ExitCode::SUCCESS), ExitCode::FAILURE);
        assert_eq!(Stdout::note(Ok(7)).unwrap(), 7);
        assert!(Stdout::note::<()>(Err(Error::from(ErrorKind::BrokenPipe))).is_err());
        assert!(stdout_closed());
        assert_eq!(
            exit_status(ExitCode::from(3)),
            ExitCode::from(STDOUT_CLOSED)
        );
        assert_eq!(
            help_printed(Err(Error::from(ErrorKind::BrokenPipe))),
            ExitCode::from(STDOUT_CLOSED)
        );
    }

    #[test]
    fn an_os_error_is_one_lowercase_phrase() {
        // 2 is ENOENT on Linux: "No such file or directory (os error 2)".
        let err = std::io::Error::from_raw_os_error(2);
        assert_eq!(describe_io(&err), "no such file or directory");
        assert_eq!(describe_io(&std::io::Error::other("Gone")), "gone");
    }
}
