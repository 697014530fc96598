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

/// Writes `text` and its newline on stdout in one write, and carries on if stdout is gone:
/// the JSON document of a refusal (`bench --json`) must not turn its exit status into a
/// panic's 101 when stdout is full or closed.
pub fn print_out(text: &str) {
    let _ = write_line(&mut std::io::stdout().lock(), text);
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
/// says it (it was 0, the page lost); 1 without a word for a pipe closed by its reader.
pub fn help_printed(printed: std::io::Result<()>) -> std::process::ExitCode {
    use std::io::Write;
    match printed.and_then(|()| std::io::stdout().flush()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `echolab --help | head -1`: the reader stopped reading, as it meant to.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::ExitCode::FAILURE,
        Err(err) => {
            crate::say!("echolab: cannot write to stdout: {err}");
            std::process::ExitCode::FAILURE
        }
    }
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

    #[test]
    fn an_os_error_is_one_lowercase_phrase() {
        // 2 is ENOENT on Linux: "No such file or directory (os error 2)".
        let err = std::io::Error::from_raw_os_error(2);
        assert_eq!(describe_io(&err), "no such file or directory");
        assert_eq!(describe_io(&std::io::Error::other("Gone")), "gone");
    }
}
