//! The bench's datagram: a 12-byte header (connection id, u32 little-endian; sequence
//! number, u64 little-endian) and a pattern filling the rest, generated from the id and
//! the sequence number, so that every datagram's bytes differ from every other's and an
//! echo can be checked without keeping a copy of what was sent.

/// Header bytes: connection id (4) and sequence number (8).
pub const HEADER: usize = 12;

/// What an echo turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Header and every pattern byte as sent for (`conn_id`, `seq`), at the right length.
    Intact { conn_id: u32, seq: u64 },
    /// The header names (`conn_id`, `seq`) but a byte or the length differs.
    Damaged { conn_id: u32, seq: u64 },
    /// Too short to carry a header.
    Unreadable,
}

/// splitmix64: one well-mixed word per step, the pattern's generator.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Fills `out` with the pattern of (`conn_id`, `seq`).
fn fill_pattern(conn_id: u32, seq: u64, out: &mut [u8]) {
    // `^` and `|` agree on the first operator while seq < 2^40 (the two do not share a
    // bit): a mutant that survives, equivalent for any run shorter than days.
    let mut state = mix((u64::from(conn_id) << 40) ^ seq ^ 0xEC40_1AB0);
    for chunk in out.chunks_mut(8) {
        state = mix(state);
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// Writes the datagram (`conn_id`, `seq`) into `out`, whose length is the datagram's.
/// `out` holds at least [`HEADER`] bytes (the CLI refuses smaller sizes).
pub fn encode(conn_id: u32, seq: u64, out: &mut [u8]) {
    out[..4].copy_from_slice(&conn_id.to_le_bytes());
    out[4..HEADER].copy_from_slice(&seq.to_le_bytes());
    fill_pattern(conn_id, seq, &mut out[HEADER..]);
}

/// Checks an echo that should be `size` bytes long; `scratch` is reused to regenerate
/// the pattern (grown as needed).
pub fn parse(got: &[u8], size: usize, scratch: &mut Vec<u8>) -> Parsed {
    if got.len() < HEADER {
        return Parsed::Unreadable;
    }
    let conn_id = u32::from_le_bytes(got[..4].try_into().unwrap_or_default());
    let seq = u64::from_le_bytes(got[4..HEADER].try_into().unwrap_or_default());
    if got.len() != size {
        return Parsed::Damaged { conn_id, seq };
    }
    scratch.resize(size, 0);
    encode(conn_id, seq, scratch);
    if scratch[..] == got[..] {
        Parsed::Intact { conn_id, seq }
    } else {
        Parsed::Damaged { conn_id, seq }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_round_trips_and_every_flipped_byte_is_seen() {
        let mut buf = vec![0u8; 64];
        encode(3, 77, &mut buf);
        let mut scratch = Vec::new();
        assert_eq!(
            parse(&buf, 64, &mut scratch),
            Parsed::Intact {
                conn_id: 3,
                seq: 77
            }
        );
        for idx in HEADER..64 {
            let mut bad = buf.clone();
            bad[idx] ^= 0x01;
            assert_eq!(
                parse(&bad, 64, &mut scratch),
                Parsed::Damaged {
                    conn_id: 3,
                    seq: 77
                },
                "flip at {idx}"
            );
        }
        assert_eq!(
            parse(&buf[..63], 64, &mut scratch),
            Parsed::Damaged {
                conn_id: 3,
                seq: 77
            }
        );
        assert_eq!(parse(&buf[..11], 64, &mut scratch), Parsed::Unreadable);
    }

    #[test]
    fn patterns_differ_between_messages_and_connections() {
        let mut a = vec![0u8; 64];
        let mut b = vec![0u8; 64];
        let mut c = vec![0u8; 64];
        encode(1, 1, &mut a);
        encode(1, 2, &mut b);
        encode(2, 1, &mut c);
        assert_ne!(a[HEADER..], b[HEADER..]);
        assert_ne!(a[HEADER..], c[HEADER..]);
        // A stale echo with a rewritten header is caught by its pattern.
        let mut forged = b.clone();
        forged[4..HEADER].copy_from_slice(&1u64.to_le_bytes());
        let mut scratch = Vec::new();
        assert_eq!(
            parse(&forged, 64, &mut scratch),
            Parsed::Damaged { conn_id: 1, seq: 1 }
        );
    }

    #[test]
    fn the_generator_is_splitmix64() {
        // The reference output of splitmix64 seeded with 0 (Vigna's splitmix64.c).
        assert_eq!(mix(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn five_hundred_and_twelve_messages_have_five_hundred_and_twelve_patterns() {
        let mut seen = std::collections::HashSet::new();
        for conn_id in 0..2u32 {
            for seq in 0..256u64 {
                let mut buf = vec![0u8; 40];
                encode(conn_id, seq, &mut buf);
                seen.insert(buf[HEADER..].to_vec());
            }
        }
        assert_eq!(seen.len(), 512);
    }

    #[test]
    fn a_header_only_datagram_is_valid() {
        let mut buf = vec![0u8; HEADER];
        encode(9, u64::MAX, &mut buf);
        assert_eq!(
            parse(&buf, HEADER, &mut Vec::new()),
            Parsed::Intact {
                conn_id: 9,
                seq: u64::MAX
            }
        );
    }
}
