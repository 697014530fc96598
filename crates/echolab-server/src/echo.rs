//! The echo logic, written once and shared by every model: what bytes go back, when,
//! and how much may wait in memory. It does no I/O of its own ("sans-IO"): a model
//! reads from its socket, hands the bytes to [`Echo::on_input`] with the socket as the
//! writer, and the echo writes what is ready, keeping only what the socket would not take.
//!
//! Two modes:
//! - [`Mode::Bytes`]: RFC 862 echo, every byte back in order, binary-safe.
//! - [`Mode::Lines`]: the lecture's line echo. A line goes back when its `\n` arrives; a
//!   last line without `\n` goes back at end of input; a line longer than
//!   `max_line` (not counting its `\n`) is an error that closes the connection.
//!
//! The lecture's `select`-based server kept one reader state per call and dropped every
//! byte after the first line of a read. Here the reader state lives in [`Echo`], for the
//! lifetime of the connection, so nothing is lost however the input is split.

use std::fmt;
use std::io::{self, Write};

/// The most bytes a connection may owe its peer before the model stops reading from it.
///
/// A client that sends but never reads fills this, and then the server stops reading
/// that client until it drains: memory per connection is bounded.
pub const MAX_OWED: usize = 64 * 1024;

/// A drained owed buffer up to this size is kept for the next burst; a larger one is freed.
const KEEP_CAPACITY: usize = 4 * 1024;

/// The default `--max-line`.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// How the server decides what to echo and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Every byte back in order, binary-safe (RFC 862).
    #[default]
    Bytes,
    /// Whole lines back, each when its newline arrives (the lecture's echo).
    Lines,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Bytes => "bytes",
            Mode::Lines => "lines",
        })
    }
}

/// The echo settings every connection of a server shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoConfig {
    pub mode: Mode,
    /// Lines mode: the longest line accepted, in bytes, not counting its `\n`.
    pub max_line: usize,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            mode: Mode::Bytes,
            max_line: DEFAULT_MAX_LINE,
        }
    }
}

/// Why a connection's echo ended with an error.
#[derive(Debug)]
pub enum EchoError {
    /// Lines mode: a line grew past the limit.
    LineTooLong { limit: usize },
    /// The socket failed (reset, broken pipe, timeout).
    Io(io::Error),
}

impl fmt::Display for EchoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EchoError::LineTooLong { limit } => {
                write!(f, "line longer than --max-line {limit} bytes")
            }
            EchoError::Io(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for EchoError {}

impl From<io::Error> for EchoError {
    fn from(err: io::Error) -> Self {
        EchoError::Io(err)
    }
}

/// The echo state of one connection.
#[derive(Debug)]
pub struct Echo {
    config: EchoConfig,
    /// Bytes ready for the peer that the socket has not taken yet, from `owed_start` on.
    /// Invariant: models read at most [`Echo::read_room`] bytes at a time, so this holds at
    /// most `MAX_OWED` bytes, plus one complete line in lines mode.
    owed: Vec<u8>,
    owed_start: usize,
    /// Lines mode: the start of a line whose `\n` has not arrived. At most `max_line` bytes.
    partial: Vec<u8>,
    /// The peer has shut down its write side (read returned 0).
    eof: bool,
    bytes_in: u64,
    bytes_out: u64,
}

impl Echo {
    pub fn new(config: EchoConfig) -> Echo {
        Echo {
            config,
            owed: Vec::new(),
            owed_start: 0,
            partial: Vec::new(),
            eof: false,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// How many bytes the model may read now; 0 means "stop reading until the peer drains".
    pub fn read_room(&self) -> usize {
        if self.eof {
            0
        } else {
            MAX_OWED.saturating_sub(self.owed_len())
        }
    }

    /// The model should poll for readability.
    pub fn wants_read(&self) -> bool {
        self.read_room() > 0
    }

    /// The model should poll for writability: some bytes wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.owed_len() > 0
    }

    /// The peer has closed its write side and every byte owed to it has been written:
    /// the model closes the connection.
    pub fn is_finished(&self) -> bool {
        self.eof && self.owed_len() == 0
    }

    /// Bytes read from the peer so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Bytes written back to the peer so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Bytes held in memory for this connection (owed plus a partial line).
    pub fn buffered(&self) -> usize {
        self.owed_len() + self.partial.len()
    }

    fn owed_len(&self) -> usize {
        self.owed.len() - self.owed_start
    }

    /// Takes bytes just read from the peer and writes what is ready through `w`.
    ///
    /// Bytes that `w` would not take (`WouldBlock`) are kept and written by a later
    /// [`Echo::flush`]. In bytes mode with nothing owed, the input goes straight from the
    /// caller's buffer to the socket, and only a remainder is copied.
    pub fn on_input<W: Write + ?Sized>(
        &mut self,
        input: &[u8],
        w: &mut W,
    ) -> Result<(), EchoError> {
        #[cfg(debug_assertions)]
        inject_fault(input);
        self.bytes_in += input.len() as u64;
        match self.config.mode {
            Mode::Bytes => self.send(input, w)?,
            Mode::Lines => {
                let Some(last_nl) = memchr::memrchr(b'\n', input) else {
                    self.partial.extend_from_slice(input);
                    return self.check_partial();
                };
                let (complete, rest) = input.split_at(last_nl + 1);
                self.check_lines(complete)?;
                if self.partial.is_empty() {
                    self.send(complete, w)?;
                } else {
                    // The first line started in an earlier read: it goes out as one piece.
                    let mut partial = std::mem::take(&mut self.partial);
                    self.owe(&partial);
                    partial.clear();
                    self.partial = partial; // Keeps its allocation for the next line.
                    self.send(complete, w)?;
                }
                self.partial.extend_from_slice(rest);
                self.check_partial()?;
            }
        }
        Ok(())
    }

    /// The peer shut down its write side: a last partial line is owed now.
    /// The model keeps flushing until [`Echo::is_finished`].
    pub fn on_eof<W: Write + ?Sized>(&mut self, w: &mut W) -> Result<(), EchoError> {
        self.eof = true;
        let partial = std::mem::take(&mut self.partial);
        self.send(&partial, w)
    }

    /// Writes owed bytes until they are all written or `w` would block.
    pub fn flush<W: Write + ?Sized>(&mut self, w: &mut W) -> io::Result<()> {
        while self.owed_len() > 0 {
            match w.write(&self.owed[self.owed_start..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.owed_start += n;
                    self.bytes_out += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            }
        }
        if self.owed_len() == 0 {
            self.owed_start = 0;
            if self.owed.capacity() > KEEP_CAPACITY {
                // An idle connection should cost almost nothing: a burst's buffer goes back
                // to the allocator once it drains.
                self.owed = Vec::new();
            } else {
                self.owed.clear();
            }
        }
        Ok(())
    }

    /// Queues `ready` behind anything owed, then flushes.
    fn send<W: Write + ?Sized>(&mut self, ready: &[u8], w: &mut W) -> Result<(), EchoError> {
        if self.owed_len() == 0 {
            let written = write_until_blocked(w, ready)?;
            self.bytes_out += written as u64;
            self.owe(&ready[written..]);
            Ok(())
        } else {
            self.owe(ready);
            Ok(self.flush(w)?)
        }
    }

    fn owe(&mut self, bytes: &[u8]) {
        if self.owed_start > 0 && self.owed_start == self.owed.len() {
            self.owed.clear();
            self.owed_start = 0;
        }
        self.owed.extend_from_slice(bytes);
    }

    /// Every complete line in `complete` (which ends in `\n`) is within the limit; the
    /// first one continues `self.partial`.
    fn check_lines(&self, complete: &[u8]) -> Result<(), EchoError> {
        let limit = self.config.max_line;
        let mut line_start_len = self.partial.len();
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', complete) {
            if line_start_len + (nl - start) > limit {
                return Err(EchoError::LineTooLong { limit });
            }
            line_start_len = 0;
            start = nl + 1;
        }
        Ok(())
    }

    fn check_partial(&self) -> Result<(), EchoError> {
        if self.partial.len() > self.config.max_line {
            Err(EchoError::LineTooLong {
                limit: self.config.max_line,
            })
        } else {
            Ok(())
        }
    }
}

/// Debug builds only: panics when `input` holds the bytes of the `ECHOLAB_FAULT_PANIC`
/// environment variable, so that the contract tests can check what a panic does in every
/// model (issue 9, item 4b). Release builds have no such path.
#[cfg(debug_assertions)]
fn inject_fault(input: &[u8]) {
    static NEEDLE: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let needle = NEEDLE.get_or_init(|| {
        std::env::var_os("ECHOLAB_FAULT_PANIC")
            .map(|v| v.into_encoded_bytes())
            .filter(|v| !v.is_empty())
    });
    if let Some(needle) = needle {
        if memchr::memmem::find(input, needle).is_some() {
            panic!("fault injected by ECHOLAB_FAULT_PANIC");
        }
    }
}

/// Writes `buf` until all of it is written or `w` would block; returns how much was.
fn write_until_blocked<W: Write + ?Sized>(w: &mut W, buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match w.write(&buf[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => return Err(err),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A socket stand-in that takes at most a scripted number of bytes per call and
    /// sometimes would block, like a non-blocking socket with a full send buffer.
    struct ShortWriter {
        out: Vec<u8>,
        script: Vec<usize>,
        call: usize,
    }

    impl Write for ShortWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let take = self.script[self.call % self.script.len()];
            self.call += 1;
            if take == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = take.min(buf.len());
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs `input` through an `Echo`, split into reads of the scripted sizes (each
    /// capped by `read_room`, as a model does), against a writer with short writes.
    fn run(
        config: EchoConfig,
        input: &[u8],
        reads: &[usize],
        writes: &[usize],
    ) -> (Vec<u8>, Result<(), String>) {
        let mut echo = Echo::new(config);
        let mut w = ShortWriter {
            out: Vec::new(),
            script: writes.to_vec(),
            call: 0,
        };
        let mut pos = 0;
        let mut read_idx = 0;
        // Bounded: every round either consumes input or flushes with a writer whose script
        // has a non-zero entry, so progress is guaranteed.
        for _ in 0..1_000_000 {
            if pos == input.len() {
                break;
            }
            let room = echo.read_room();
            if room == 0 {
                echo.flush(&mut w).unwrap();
                continue;
            }
            let n = reads[read_idx % reads.len()]
                .clamp(1, room)
                .min(input.len() - pos);
            read_idx += 1;
            if let Err(err) = echo.on_input(&input[pos..pos + n], &mut w) {
                return (w.out, Err(err.to_string()));
            }
            pos += n;
            assert!(echo.owed_len() <= MAX_OWED + config.max_line + 1);
            if config.mode == Mode::Lines {
                // Nothing of a line goes out before its newline has arrived.
                assert!(w.out.is_empty() || w.out.ends_with(b"\n"));
            }
        }
        echo.on_eof(&mut w).unwrap();
        for _ in 0..1_000_000 {
            if echo.is_finished() {
                break;
            }
            echo.flush(&mut w).unwrap();
        }
        assert!(echo.is_finished());
        assert_eq!(echo.bytes_in(), input.len() as u64);
        assert_eq!(echo.bytes_out(), w.out.len() as u64);
        (w.out, Ok(()))
    }

    fn lines_reference(input: &[u8], max_line: usize) -> Option<usize> {
        // Returns the index of the first line too long, if any.
        input
            .split(|b| *b == b'\n')
            .position(|line| line.len() > max_line)
    }

    proptest! {
        // Large inputs make each case slow in a debug build; fewer cases cover them well.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn bytes_mode_echoes_everything(
            input in proptest::collection::vec(any::<u8>(), 0..200_000),
            reads in proptest::collection::vec(1usize..70_000, 1..8),
            writes in proptest::collection::vec(0usize..70_000, 1..8),
        ) {
            let writes = ensure_progress(writes);
            let (out, result) = run(EchoConfig::default(), &input, &reads, &writes);
            prop_assert!(result.is_ok());
            prop_assert_eq!(out, input);
        }

        #[test]
        fn lines_mode_echoes_whole_lines(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(0u8), any::<u8>()], 0..5_000),
            reads in proptest::collection::vec(1usize..300, 1..8),
            writes in proptest::collection::vec(0usize..300, 1..8),
            max_line in 1usize..400,
        ) {
            let writes = ensure_progress(writes);
            let config = EchoConfig { mode: Mode::Lines, max_line };
            let (out, result) = run(config, &input, &reads, &writes);
            match lines_reference(&input, max_line) {
                None => {
                    prop_assert!(result.is_ok());
                    prop_assert_eq!(out, input);
                }
                Some(_) => {
                    prop_assert!(result.is_err());
                    // What went out before the error is whole lines, a prefix of the input.
                    prop_assert!(input.starts_with(&out));
                    prop_assert!(out.is_empty() || out.ends_with(b"\n"));
                }
            }
        }
    }

    /// A writer script must take a byte sometimes, or nothing can finish.
    fn ensure_progress(mut writes: Vec<usize>) -> Vec<usize> {
        if writes.iter().all(|n| *n == 0) {
            writes.push(1);
        }
        writes
    }

    #[test]
    fn a_line_is_held_until_its_newline() {
        let config = EchoConfig {
            mode: Mode::Lines,
            max_line: 100,
        };
        let mut echo = Echo::new(config);
        let mut out = Vec::new();
        echo.on_input(b"hel", &mut out).unwrap();
        assert_eq!(out, b"");
        echo.on_input(b"lo\nwor", &mut out).unwrap();
        assert_eq!(out, b"hello\n");
        echo.on_eof(&mut out).unwrap();
        assert_eq!(out, b"hello\nwor");
        assert!(echo.is_finished());
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_byte_more_fails() {
        let config = EchoConfig {
            mode: Mode::Lines,
            max_line: 4,
        };
        let mut out = Vec::new();
        Echo::new(config).on_input(b"abcd\n", &mut out).unwrap();
        let err = Echo::new(config)
            .on_input(b"abcde\n", &mut out)
            .unwrap_err();
        assert!(matches!(err, EchoError::LineTooLong { limit: 4 }));
        let err = Echo::new(config).on_input(b"abcde", &mut out).unwrap_err();
        assert!(matches!(err, EchoError::LineTooLong { limit: 4 }));
    }

    #[test]
    fn backpressure_stops_reading_at_the_bound() {
        let mut echo = Echo::new(EchoConfig::default());
        let mut blocked = ShortWriter {
            out: Vec::new(),
            script: vec![0],
            call: 0,
        };
        echo.on_input(&vec![7u8; MAX_OWED], &mut blocked).unwrap();
        assert_eq!(echo.read_room(), 0);
        assert!(!echo.wants_read());
        assert!(echo.wants_write());
    }
}
