//! One connection of the engine: its state, where its byte stream stands, and the start
//! time of every message it still owes; plus the small predicates for the OS's non-errors.

use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Token;

/// A connection's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Not connected; churn reconnects it at `retry_at`.
    Idle {
        retry_at: Instant,
    },
    Connecting,
    Active,
    /// Failed or closed for good; never reused (not churn).
    Dead,
}

/// One connection and where its byte stream stands. `issued` bytes are the messages
/// handed to the socket; `sent <= issued` of them are written; `recvd <= sent` are echoed
/// and verified.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) stream: Option<TcpStream>,
    pub(super) state: State,
    /// Bumped on every new socket of this slot, so a stale event for a closed socket
    /// (same slot, same batch) is recognised and skipped.
    pub(super) generation: u32,
    /// The number of the byte stream this connection sends ([`crate::pattern`]): the
    /// connection's index, plus the connection count for every earlier connection of
    /// this slot (churn), so no two connections of a run send the same bytes.
    pub(super) stream_no: u64,
    pub(super) issued: u64,
    pub(super) sent: u64,
    pub(super) recvd: u64,
    /// Messages completed (their whole echo received and verified).
    pub(super) done: u64,
    /// The start time (intended send time in the open loop) of every message not yet
    /// completed, oldest first: the first `in_flight()` were issued, the rest are held
    /// back by the pipeline (open loop).
    pub(super) starts: VecDeque<Instant>,
    pub(super) connect_start: Instant,
    /// The last time this connection got a byte back, connected, or started owing one.
    pub(super) last_progress: Instant,
    /// Messages of the measured window this slot completed (for fairness).
    pub(super) completed_in_window: u64,
    /// This connection already counted as starved (once per connection).
    pub(super) starved: bool,
    /// Churn: the echo is complete and the sending side shut; waiting for the server's
    /// end of stream, and any byte before it is an error.
    pub(super) closing: bool,
}

impl Conn {
    pub(super) fn new(stream_no: u64, now: Instant) -> Conn {
        Conn {
            stream: None,
            state: State::Idle { retry_at: now },
            generation: 0,
            stream_no,
            issued: 0,
            sent: 0,
            recvd: 0,
            done: 0,
            starts: VecDeque::new(),
            connect_start: now,
            last_progress: now,
            completed_in_window: 0,
            starved: false,
            closing: false,
        }
    }

    /// Messages issued and not yet completed.
    pub(super) fn in_flight(&self, msg_size: u64) -> u64 {
        self.issued / msg_size - self.done
    }

    /// Resets the stream for a new socket (churn's next connection).
    pub(super) fn reset_stream(&mut self, stream_no: u64) {
        self.stream_no = stream_no;
        self.issued = 0;
        self.sent = 0;
        self.recvd = 0;
        self.done = 0;
        self.closing = false;
        self.starts.clear();
    }
}

/// A connection's event token: its slot in the low 32 bits, its generation above.
pub(super) fn token(conn: usize, generation: u32) -> Token {
    Token(conn | (generation as usize) << 32)
}

pub(super) fn split_token(token: Token) -> (usize, u32) {
    (token.0 & 0xffff_ffff, (token.0 >> 32) as u32)
}

pub(super) fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

pub(super) fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// An OS error as a short lowercase phrase ("connection refused"), without "(os error N)".
pub fn describe(err: &io::Error) -> String {
    echolab_cli::describe_io(err)
}
