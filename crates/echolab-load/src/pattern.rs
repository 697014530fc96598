//! The bytes the load generator sends, and the check of every byte that comes back.
//!
//! Each connection sends one endless stream, cut into messages, and each stream has its
//! own number (`stream`, below 2^24). The stream is made of 8-byte words: word `w` of
//! stream `s` is `splitmix64(s << 40 | w)`, little-endian. splitmix64's mixer is a
//! bijection of `u64`, so no two words of a run are equal: not two words of one stream
//! (the word index differs), not two words of two streams (the stream number differs).
//! The stream never repeats, so no period of the generator can line up with a message
//! size, and every message of at least 15 bytes (bytes mode) holds a whole word of its
//! own: no two such messages of a run are identical, whatever the size or the
//! connection. A replayed, repeated, swapped or crossed echo is caught at the first byte
//! that differs, and the check names that byte's stream offset.
//!
//! In lines mode every message ends with `\n` and holds no other `\n` (a word byte that
//! happens to be `\n` is sent as `0x8a`), so a line server echoes it whole. A 1-byte line
//! is the bare `\n`: every such message is alike and a replay of one cannot be seen. From
//! 17 bytes a line holds a whole word of its own, and two lines are equal only if two
//! distinct words differ just where one holds `0x0a` and the other `0x8a` (a chance of
//! about 2^-60 per pair).
//!
//! Bytes are computed, not stored: one multiply-xor mix per 8 bytes, cheaper than the
//! system calls that carry them.

use std::fmt;

/// The longest piece [`Pattern::fill`] is asked for at once: the size of a worker's
/// read and write buffers.
pub const CHUNK: usize = 64 * 1024;

/// Stream numbers are taken modulo this (2^24): the word index has the 40 low bits of
/// the counter, so a stream can carry 8 TiB before its words would meet the next one's.
pub const STREAMS: u64 = 1 << 24;

/// The byte every line ends with, and the one sent instead when the stream holds it
/// elsewhere in a line.
const NEWLINE: u8 = b'\n';
const NEWLINE_STANDIN: u8 = b'\n' | 0x80;

/// How every connection's stream is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    /// Bytes per message, at least 1.
    msg_size: u64,
    /// Lines mode: the last byte of every message is `\n` and only that one.
    lines: bool,
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
    /// The streams for messages of `msg_size` bytes (0 counts as 1); in `lines` mode each
    /// message is a line.
    pub fn new(msg_size: usize, lines: bool) -> Pattern {
        Pattern {
            msg_size: msg_size.max(1) as u64,
            lines,
        }
    }

    /// Byte `pos` of stream `stream` (taken modulo [`STREAMS`]).
    pub fn byte(&self, stream: u64, pos: u64) -> u8 {
        let word = splitmix64(counter(stream, pos / 8));
        self.line_byte(pos, word.to_le_bytes()[(pos % 8) as usize])
    }

    /// Writes the bytes of stream `stream` from position `pos` on into `out` (all of it).
    pub fn fill(&self, stream: u64, pos: u64, out: &mut [u8]) {
        // The bytes up to the next word boundary, then whole words (the hot path, one
        // store per word), then the tail.
        let head = (((8 - pos % 8) % 8) as usize).min(out.len());
        if head > 0 {
            let word = splitmix64(counter(stream, pos / 8)).to_le_bytes();
            let skip = (pos % 8) as usize;
            out[..head].copy_from_slice(&word[skip..skip + head]);
        }
        let mut word_no = (pos + head as u64) / 8;
        let mut words = out[head..].chunks_exact_mut(8);
        for chunk in &mut words {
            chunk.copy_from_slice(&splitmix64(counter(stream, word_no)).to_le_bytes());
            word_no += 1;
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let word = splitmix64(counter(stream, word_no)).to_le_bytes();
            let n = tail.len();
            tail.copy_from_slice(&word[..n]);
        }
        if self.lines {
            for (k, byte) in out.iter_mut().enumerate() {
                *byte = self.line_byte(pos + k as u64, *byte);
            }
        }
    }

    /// Checks that `got` is stream `stream` from position `pos` on; on a difference,
    /// names the first differing byte. `scratch` holds the expected bytes a piece at a
    /// time (any length above 0; [`CHUNK`] is a good one).
    pub fn verify(
        &self,
        stream: u64,
        pos: u64,
        got: &[u8],
        scratch: &mut [u8],
    ) -> Result<(), Mismatch> {
        let step = scratch.len().max(1);
        let mut checked = 0;
        while checked < got.len() {
            let part = &got[checked..(checked + step).min(got.len())];
            let expected = &mut scratch[..part.len()];
            self.fill(stream, pos + checked as u64, expected);
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

    /// Lines mode: the byte at `pos` made a line's byte (`\n` at a message's end, never
    /// elsewhere); bytes mode: `raw` itself.
    fn line_byte(&self, pos: u64, raw: u8) -> u8 {
        if !self.lines {
            raw
        } else if pos % self.msg_size == self.msg_size - 1 {
            NEWLINE
        } else if raw == NEWLINE {
            NEWLINE_STANDIN
        } else {
            raw
        }
    }
}

/// The counter of word `word` of stream `stream`: the stream number in the high 24 bits
/// (the shift drops its higher bits: stream numbers count modulo [`STREAMS`]).
fn counter(stream: u64, word: u64) -> u64 {
    stream << 40 | (word & ((1 << 40) - 1))
}

/// splitmix64's output function: a bijection of `u64` that mixes every input bit into
/// every output bit.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// `len` bytes of stream `stream` from position `pos`, built byte by byte.
    fn bytes(pattern: &Pattern, stream: u64, pos: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|k| pattern.byte(stream, pos + k))
            .collect()
    }

    fn filled(pattern: &Pattern, stream: u64, pos: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        pattern.fill(stream, pos, &mut out);
        out
    }

    #[test]
    fn fill_is_byte_by_byte_from_any_position() {
        for lines in [false, true] {
            let pattern = Pattern::new(13, lines);
            for pos in 0..20 {
                for len in [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 64, 100] {
                    assert_eq!(
                        filled(&pattern, 3, pos, len),
                        bytes(&pattern, 3, pos, len),
                        "lines {lines} pos {pos} len {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_exact_echo_passes_however_it_is_split() {
        let pattern = Pattern::new(64, false);
        let sent = filled(&pattern, 3, 0, 200_000);
        let mut scratch = vec![0; 4_096];
        let mut pos = 0;
        for piece in sent.chunks(7_777) {
            assert_eq!(pattern.verify(3, pos, piece, &mut scratch), Ok(()));
            pos += piece.len() as u64;
        }
        // One call longer than the scratch buffer is checked a piece at a time.
        assert_eq!(pattern.verify(3, 0, &sent, &mut scratch), Ok(()));
    }

    #[test]
    fn a_flipped_byte_is_named_by_its_stream_offset() {
        let pattern = Pattern::new(64, false);
        let mut echo = filled(&pattern, 0, 0, 100_000);
        echo[70_001] ^= 0x20;
        let err = pattern
            .verify(0, 1_000, &echo[1_000..], &mut [0; 1_000])
            .unwrap_err();
        assert_eq!(err.offset, 70_001);
        assert_eq!(err.got, err.expected ^ 0x20);
        assert_eq!(err.expected, pattern.byte(0, 70_001));
        let named = Mismatch {
            offset: 7,
            expected: 0x0a,
            got: 0xff,
        };
        assert_eq!(
            named.to_string(),
            "byte mismatch at offset 7: expected 0x0a, got 0xff"
        );
    }

    #[test]
    fn stream_numbers_wrap_at_streams() {
        let pattern = Pattern::new(64, false);
        assert_eq!(
            filled(&pattern, 5 + STREAMS, 100, 64),
            filled(&pattern, 5, 100, 64)
        );
        assert_ne!(
            filled(&pattern, 5 + STREAMS / 2, 100, 64),
            filled(&pattern, 5, 100, 64)
        );
        // The word index keeps its 40 bits: word 2^40 of a stream is word 0 again (8 TiB
        // later), not a word of another stream.
        assert_eq!(counter(1, 1 << 40), counter(1, 0));
        assert_eq!(counter(1, (1 << 40) - 1), (1 << 41) - 1);
    }

    #[test]
    fn the_mixer_is_splitmix64() {
        // Reference values of splitmix64's first outputs from seed 0 (Vigna's C code):
        // its state advances by the golden gamma before each mix.
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(0x9e37_79b9_7f4a_7c15), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn lines_end_each_message_and_only_there() {
        for size in [1, 2, 64, 1000, 70_000] {
            let pattern = Pattern::new(size, true);
            for stream in 0..4 {
                let line = filled(&pattern, stream, 0, size * 3);
                for (i, byte) in line.iter().enumerate() {
                    assert_eq!(*byte == b'\n', i % size == size - 1, "size {size} byte {i}");
                }
            }
        }
        // A word byte that is '\n' inside a line is sent as 0x8a: find one and check it.
        let bytes_mode = Pattern::new(1 << 20, false);
        let lines_mode = Pattern::new(1 << 20, true);
        let raw = filled(&bytes_mode, 0, 0, 10_000);
        let at = raw
            .iter()
            .position(|b| *b == b'\n')
            .expect("a '\\n' in 10 kB");
        assert_eq!(lines_mode.byte(0, at as u64), 0x8a);
        assert_eq!(lines_mode.byte(0, at as u64 + 1), raw[at + 1]);
    }

    /// The message sizes the property is checked at: every size up to 80, the powers of
    /// two and their neighbours up to 1 MiB, multiples of 8 (the word) and of 65,521 (the
    /// old generator's period), and sizes spread over 1..1 MiB by a fixed mix.
    fn sizes() -> Vec<usize> {
        let mut sizes: Vec<usize> = (1..=80).collect();
        for shift in 7..=20 {
            let p = 1usize << shift;
            sizes.extend([p - 1, p, p + 1]);
        }
        sizes.extend([
            65_520,
            65_521,
            65_522,
            131_042,
            196_563,
            8 * 4_099,
            8 * 65_521,
        ]);
        sizes.extend((0..40).map(|k| 1 + (splitmix64(k) % (1 << 20)) as usize));
        sizes.retain(|s| *s <= 1 << 20);
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The smallest message that certainly holds a whole word of its own.
    fn distinct_from(lines: bool) -> usize {
        if lines {
            17
        } else {
            15
        }
    }

    /// A message's first and last 16 bytes (the whole message below 32 bytes): two
    /// messages with different fingerprints differ, and only messages with equal ones
    /// need comparing in full.
    fn fingerprint(pattern: &Pattern, stream: u64, pos: u64, size: usize) -> Vec<u8> {
        if size <= 32 {
            return filled(pattern, stream, pos, size);
        }
        let mut print = filled(pattern, stream, pos, 16);
        print.extend(filled(pattern, stream, pos + size as u64 - 16, 16));
        print
    }

    #[test]
    fn no_two_messages_of_a_run_are_identical_at_any_size() {
        // Three connections, each sending at least 256 KiB of stream (past the old
        // generator's 65,521-byte period four times) and at least 3 messages, at every
        // size of the sweep, in both modes.
        for lines in [false, true] {
            for size in sizes().into_iter().filter(|s| *s >= distinct_from(lines)) {
                let pattern = Pattern::new(size, lines);
                let per_conn = ((256 << 10) / size).max(3) as u64;
                let mut seen: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
                for stream in 0..3u64 {
                    for m in 0..per_conn {
                        let pos = m * size as u64;
                        let print = fingerprint(&pattern, stream, pos, size);
                        if let Some(&(other_stream, other_pos)) = seen.get(&print) {
                            assert_ne!(
                                filled(&pattern, stream, pos, size),
                                filled(&pattern, other_stream, other_pos, size),
                                "size {size} lines {lines}: message {m} of stream {stream} repeats one"
                            );
                        }
                        seen.insert(print, (stream, pos));
                    }
                }
            }
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any size from 1 byte to 1 MiB (and up to 8 times the old generator's period),
        /// any two messages of any two streams: distinct from the size at which a message
        /// holds a word of its own, and an echo of the one in place of the other is caught.
        #[test]
        fn any_two_messages_differ_and_a_swap_is_caught(
            size in prop_oneof![1usize..=(1 << 20), (1usize..=8).prop_map(|k| k * 65_521)],
            lines: bool,
            a in (0u64..4, 0u64..2_000),
            b in (0u64..4, 0u64..2_000),
        ) {
            prop_assume!(a != b);
            prop_assume!(size >= distinct_from(lines));
            let pattern = Pattern::new(size, lines);
            let s = size as u64;
            // Their first 4 KiB already differ (which is more than the messages differing),
            // so an echo of b where a belongs fails the check there.
            let head = size.min(4_096);
            let head_a = filled(&pattern, a.0, a.1 * s, head);
            let head_b = filled(&pattern, b.0, b.1 * s, head);
            prop_assert_ne!(&head_a, &head_b);
            let mut scratch = vec![0; CHUNK];
            prop_assert!(pattern.verify(a.0, a.1 * s, &head_b, &mut scratch).is_err());
        }
    }

    #[test]
    fn a_replayed_or_crossed_echo_is_caught_at_every_size() {
        // A server that answers message m with message 0 (replay), with message m of
        // another connection (crossed), or with message m-1 (late by one): caught at
        // message 1 from the size at which messages are distinct, and within the first
        // 16 messages below it (a byte or two per message can match by chance).
        let mut scratch = vec![0; CHUNK];
        for lines in [false, true] {
            for size in sizes() {
                if lines && size == 1 {
                    continue; // Every 1-byte line is "\n": nothing tells them apart.
                }
                let pattern = Pattern::new(size, lines);
                let s = size as u64;
                let first = filled(&pattern, 7, 0, size);
                let within = if size >= distinct_from(lines) { 1 } else { 16 };
                let mut caught_by = |wrong: &dyn Fn(u64) -> Vec<u8>| {
                    (1..=within).any(|m| pattern.verify(7, m * s, &wrong(m), &mut scratch).is_err())
                };
                assert!(
                    caught_by(&|_| first.clone()),
                    "replay, size {size} lines {lines}"
                );
                assert!(
                    caught_by(&|m| filled(&pattern, 8, m * s, size)),
                    "crossed, size {size} lines {lines}"
                );
                assert!(
                    caught_by(&|m| filled(&pattern, 7, (m - 1) * s, size)),
                    "late by one, size {size} lines {lines}"
                );
            }
        }
    }
}
