//! The bytes the load generator sends, and the check of every byte that comes back.
//!
//! Each connection sends one endless stream, cut into messages. Byte `pos` of connection
//! `conn_idx`'s stream is `bytes[(pos + offset(conn_idx)) % period]`, where `bytes` is a
//! pseudo-random sequence of prime period. The value of a byte therefore depends on its
//! position in the stream and on its connection: an echo that drops, repeats, reorders or
//! swaps bytes between connections is caught at the first misplaced byte, and the check
//! names that byte's stream offset. (A fixed message, such as 64 × `'a'`, would let a server
//! that mixes two connections' replies pass.)
//!
//! In lines mode every message ends with `\n` and holds no other `\n`, so a line server
//! echoes it whole; the period is then a multiple of the message size and every
//! connection's offset starts a message.

use std::fmt;

/// The period of the byte stream when messages are not lines: a prime, so that message
/// sizes (powers of two, typically) never line up with it.
const PRIME_PERIOD: usize = 65_521;

/// The longest slice [`Pattern::slice`] hands out. The sequence is stored one `CHUNK`
/// longer than its period, so any slice this long is contiguous in memory.
pub const CHUNK: usize = 64 * 1024;

/// The pseudo-random stream every connection sends, each from its own offset.
#[derive(Clone)]
pub struct Pattern {
    /// `period + CHUNK` bytes; `bytes[i] == bytes[i - period]` for `i >= period`.
    bytes: Box<[u8]>,
    /// The stream repeats after this many bytes.
    period: usize,
    /// Lines mode: offsets are multiples of this so that every message ends in `\n`.
    msg_size: usize,
    lines: bool,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pattern")
            .field("period", &self.period)
            .field("msg_size", &self.msg_size)
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

/// The first byte of an echo that was not the byte sent at that position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// The position of the byte in its connection's stream, counted from 0.
    pub offset: u64,
    pub expected: u8,
    pub got: u8,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "byte mismatch at offset {}: expected 0x{:02x}, got 0x{:02x}",
            self.offset, self.expected, self.got
        )
    }
}

impl Pattern {
    /// The stream for messages of `msg_size` bytes (at least 1); in `lines` mode each
    /// message is a line.
    pub fn new(msg_size: usize, lines: bool) -> Pattern {
        let msg_size = msg_size.max(1);
        let period = if lines {
            msg_size * PRIME_PERIOD.div_ceil(msg_size)
        } else {
            PRIME_PERIOD
        };
        let mut bytes = vec![0u8; period + CHUNK];
        let mut state = 0x9e37_79b9_u32;
        for (i, byte) in bytes.iter_mut().take(period).enumerate() {
            let mut b = (xorshift32(&mut state) >> 11) as u8;
            if lines {
                b = if i % msg_size == msg_size - 1 {
                    b'\n'
                } else if b == b'\n' {
                    b'x'
                } else {
                    b
                };
            }
            *byte = b;
        }
        for i in period..period + CHUNK {
            bytes[i] = bytes[i - period];
        }
        Pattern {
            bytes: bytes.into_boxed_slice(),
            period,
            msg_size,
            lines,
        }
    }

    /// Where connection `conn_idx`'s stream starts in the sequence: a fixed function of the
    /// index, so two connections rarely share an offset and a rerun sends the same bytes.
    pub fn conn_offset(&self, conn_idx: usize) -> usize {
        let mixed = splitmix64(conn_idx as u64);
        if self.lines {
            let n_messages = self.period / self.msg_size;
            (mixed % n_messages as u64) as usize * self.msg_size
        } else {
            (mixed % self.period as u64) as usize
        }
    }

    /// The stream bytes from position `pos`, at most `max_len` of them and at most
    /// [`CHUNK`], for a connection whose stream starts at `offset`.
    pub fn slice(&self, offset: usize, pos: u64, max_len: usize) -> &[u8] {
        let start = ((pos + offset as u64) % self.period as u64) as usize;
        &self.bytes[start..start + max_len.min(CHUNK)]
    }

    /// Checks that `got` is the stream from position `pos` on, for a connection whose
    /// stream starts at `offset`; on a difference, names the first differing byte.
    pub fn verify(&self, offset: usize, pos: u64, got: &[u8]) -> Result<(), Mismatch> {
        let mut checked = 0;
        while checked < got.len() {
            let part = &got[checked..(checked + CHUNK).min(got.len())];
            let expected = self.slice(offset, pos + checked as u64, part.len());
            // The common case is one memcmp; the byte loop runs only to name the culprit.
            if expected != part {
                let i = expected
                    .iter()
                    .zip(part)
                    .position(|(e, g)| e != g)
                    .unwrap_or(0);
                return Err(Mismatch {
                    offset: pos + (checked + i) as u64,
                    expected: expected[i],
                    got: part[i],
                });
            }
            checked += part.len();
        }
        Ok(())
    }
}

fn xorshift32(state: &mut u32) -> u32 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    x
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream of one connection, `len` bytes from position 0, built byte by byte.
    fn stream(pattern: &Pattern, offset: usize, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|pos| pattern.slice(offset, pos, 1)[0])
            .collect()
    }

    #[test]
    fn an_exact_echo_passes_however_it_is_split() {
        let pattern = Pattern::new(64, false);
        let offset = pattern.conn_offset(3);
        let sent = stream(&pattern, offset, 200_000);
        let mut pos = 0;
        for piece in sent.chunks(7_777) {
            assert_eq!(pattern.verify(offset, pos, piece), Ok(()));
            pos += piece.len() as u64;
        }
        // One call longer than CHUNK is checked chunk by chunk.
        assert_eq!(pattern.verify(offset, 0, &sent), Ok(()));
    }

    #[test]
    fn a_flipped_byte_is_named_by_its_stream_offset() {
        let pattern = Pattern::new(64, false);
        let offset = pattern.conn_offset(0);
        let mut echo = stream(&pattern, offset, 100_000);
        echo[70_001] ^= 0x20;
        let err = pattern.verify(offset, 1_000, &echo[1_000..]).unwrap_err();
        assert_eq!(err.offset, 70_001);
        assert_eq!(err.got, err.expected ^ 0x20);
    }

    #[test]
    fn another_connections_bytes_are_caught() {
        let pattern = Pattern::new(64, false);
        let (a, b) = (pattern.conn_offset(0), pattern.conn_offset(1));
        assert_ne!(a, b);
        let from_b = stream(&pattern, b, 64);
        assert!(pattern.verify(a, 0, &from_b).is_err());
    }

    #[test]
    fn a_repeated_message_is_caught() {
        let pattern = Pattern::new(64, false);
        let offset = pattern.conn_offset(5);
        let first = stream(&pattern, offset, 64);
        // The server echoes message 0 again where message 1 belongs.
        assert!(pattern.verify(offset, 64, &first).is_err());
    }

    #[test]
    fn lines_end_each_message_and_only_there() {
        for size in [1, 2, 64, 1000, 70_000] {
            let pattern = Pattern::new(size, true);
            for conn_idx in 0..4 {
                let offset = pattern.conn_offset(conn_idx);
                let bytes = stream(&pattern, offset, size * 3);
                for (i, byte) in bytes.iter().enumerate() {
                    assert_eq!(*byte == b'\n', i % size == size - 1, "size {size} byte {i}");
                }
            }
        }
    }
}
