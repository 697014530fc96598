//! Latency histograms as data that leave the run: the V2 encoding of HdrHistogram
//! (compressed, base64) that `--json` carries, the interval log `--hdr-log` writes, and
//! the histogram of each interval of the window.
//!
//! Percentiles from several load machines cannot be averaged; histograms can be added.
//! Every encoding here is HdrHistogram's own (the `hdrhistogram` crate's V2 deflate
//! serializer and interval log writer), so HdrHistogram's log tools read what bench writes
//! and `echolab merge` reads theirs. Decoding then adding is exact: the merged histogram
//! of several parts is, count for count, the histogram of all their values.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, LogIteratorError,
};
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer, V2Serializer};
use hdrhistogram::Histogram;

/// The comment line of an interval log that carries the run's figures as JSON (HdrHistogram's
/// tools ignore comments): `#echolab {...}`.
pub const META_PREFIX: &str = "#echolab ";

/// `hist` as base64 of its V2 deflate encoding (HdrHistogram's "compressed histogram",
/// as in an interval log's last column).
pub fn encode(hist: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(hist, &mut bytes)
        .expect("a histogram serializes into memory");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The histogram `text` encodes (base64 of V2 or V2 deflate), or one line saying why not.
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|err| format!("not base64: {err}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|err| format!("not an HdrHistogram V2 encoding: {err:?}"))
}

/// `into += from`, or one line when their ranges cannot be added.
pub fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<(), String> {
    into.add(from)
        .map_err(|err| format!("histograms that cannot be added: {err:?}"))
}

/// One interval's histogram: open while it is recorded into, packed (V2, sparse) once
/// the recording has moved on, so that a long run holds a few bytes per interval rather
/// than a full counts array.
#[derive(Debug, Clone)]
enum Slot {
    Open(Histogram<u64>),
    Packed(Vec<u8>),
}

impl Slot {
    fn unpack(&self) -> Histogram<u64> {
        match self {
            Slot::Open(h) => h.clone(),
            Slot::Packed(bytes) => Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .expect("a histogram this module packed"),
        }
    }

    fn pack(&mut self) {
        if let Slot::Open(h) = self {
            let mut bytes = Vec::new();
            V2Serializer::new()
                .serialize(h, &mut bytes)
                .expect("a histogram serializes into memory");
            *self = Slot::Packed(bytes);
        }
    }
}

/// The window cut into intervals of `every`, from `origin`, each with its own histogram.
/// A value recorded at a time past the last interval (the drain after the window, the
/// incomplete messages accounted at its end) goes into the last one, so the intervals
/// add up to the whole window's histogram.
#[derive(Debug, Clone)]
pub struct Intervals {
    origin: Instant,
    every: Duration,
    /// Intervals in the window: `ceil(window / every)`, at least 1.
    count: u64,
    slots: BTreeMap<u64, Slot>,
    template: Histogram<u64>,
}

impl Intervals {
    /// Intervals of `every` over a window of `window` from `origin`; `template` gives
    /// the histograms' bounds (it is not recorded into). `every` zero: one interval.
    pub fn new(
        origin: Instant,
        every: Duration,
        window: Duration,
        template: &Histogram<u64>,
    ) -> Intervals {
        let every = if every.is_zero() {
            window.max(Duration::from_nanos(1))
        } else {
            every
        };
        let count = (window.as_nanos().div_ceil(every.as_nanos())).max(1);
        Intervals {
            origin,
            every,
            count: u64::try_from(count).unwrap_or(u64::MAX),
            slots: BTreeMap::new(),
            template: Histogram::new_from(template),
        }
    }

    /// The start of the first interval.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// The interval a value recorded at `at` belongs to.
    pub fn index(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin).as_nanos();
        let k = since / self.every.as_nanos();
        u64::try_from(k).unwrap_or(u64::MAX).min(self.count - 1)
    }

    /// Records `value` (nanoseconds, already clamped to the bounds) at time `at`.
    pub fn record(&mut self, at: Instant, value: u64) {
        let k = self.index(at);
        let template = &self.template;
        let slot = self
            .slots
            .entry(k)
            .or_insert_with(|| Slot::Open(Histogram::new_from(template)));
        if let Slot::Packed(_) = slot {
            *slot = Slot::Open(slot.unpack());
        }
        if let Slot::Open(h) = slot {
            h.saturating_record(value);
        }
        // Recording moves forward: pack every interval before this one.
        for (_, slot) in self.slots.range_mut(..k) {
            slot.pack();
        }
    }

    /// Adds `other`'s intervals (same origin and length) to these, interval by interval.
    pub fn merge(&mut self, other: &Intervals) {
        for (k, slot) in &other.slots {
            let theirs = slot.unpack();
            let mine = match self.slots.remove(k) {
                Some(mine) => {
                    let mut h = mine.unpack();
                    h.add(&theirs).expect("histograms with the same bounds");
                    h
                }
                None => theirs,
            };
            let mut slot = Slot::Open(mine);
            slot.pack();
            self.slots.insert(*k, slot);
        }
    }

    /// Every interval of the window with its start (from the origin), its length and its
    /// histogram, empty intervals included.
    pub fn histograms(&self) -> Vec<(Duration, Duration, Histogram<u64>)> {
        (0..self.count)
            .map(|k| {
                let start = self
                    .every
                    .saturating_mul(u32::try_from(k).unwrap_or(u32::MAX));
                let hist = self
                    .slots
                    .get(&k)
                    .map_or_else(|| Histogram::new_from(&self.template), Slot::unpack);
                (start, self.every, hist)
            })
            .collect()
    }
}

/// Writes an HdrHistogram interval log (V2 compressed histograms, values in nanoseconds,
/// the max column in milliseconds as HdrHistogram's tools expect with a divisor of 1e6):
/// a `#echolab` comment with `meta`, `StartTime`/`BaseTime` at `start` (the window's
/// start on the wall clock), then one line per interval with its start relative to it.
pub fn write_log(
    out: &mut impl Write,
    start: SystemTime,
    intervals: &[(Duration, Duration, Histogram<u64>)],
    meta: &serde_json::Value,
) -> std::io::Result<()> {
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment("Latency of an echolab bench run, values in nanoseconds")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1e6)
        .begin_log_with(out, &mut serializer)?;
    // `write_comment` adds the "#" itself.
    writer.write_comment(&format!("{}{meta}", &META_PREFIX[1..]))?;
    writer.write_comment(
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"",
    )?;
    for (from, length, hist) in intervals {
        writer
            .write_histogram(hist, *from, *length, None)
            .map_err(|err| std::io::Error::other(format!("{err:?}")))?;
    }
    Ok(())
}

/// What an interval log holds: the `#echolab` figures when present, the sum of its
/// intervals, and how many there were.
#[derive(Debug)]
pub struct Log {
    pub meta: Option<serde_json::Value>,
    pub total: Histogram<u64>,
    pub intervals: usize,
}

/// Reads an interval log (this module's or any HdrHistogram tool's), adding up every
/// interval; one line when it is not one.
pub fn read_log(text: &str) -> Result<Log, String> {
    let mut meta = None;
    for line in text.lines() {
        if let Some(json) = line.strip_prefix(META_PREFIX) {
            let value = serde_json::from_str(json)
                .map_err(|err| format!("a bad {META_PREFIX:?} line: {err}"))?;
            meta = Some(value);
        }
    }
    let mut total: Option<Histogram<u64>> = None;
    let mut intervals = 0;
    for entry in IntervalLogIterator::new(text.as_bytes()) {
        let entry = entry.map_err(|err| match err {
            LogIteratorError::ParseError { offset } => {
                format!("not an HdrHistogram interval log (unreadable from byte {offset})")
            }
        })?;
        if let LogEntry::Interval(interval) = entry {
            let hist = decode(interval.encoded_histogram())
                .map_err(|err| format!("interval {}: {err}", intervals + 1))?;
            match &mut total {
                Some(t) => add(t, &hist)?,
                None => total = Some(hist),
            }
            intervals += 1;
        }
    }
    let total = total.ok_or_else(|| "an interval log with no interval".to_string())?;
    Ok(Log {
        meta,
        total,
        intervals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap()
    }

    #[test]
    fn encode_then_decode_is_the_same_histogram() {
        let mut h = histogram();
        for v in [1, 2, 1_000, 123_456, 99_999_999_999] {
            h.record(v).unwrap();
        }
        let back = decode(&encode(&h)).unwrap();
        assert_eq!(back, h);
        assert_eq!(encode(&back), encode(&h));
    }

    #[test]
    fn garbage_is_refused_in_one_line() {
        assert!(decode("!!!").unwrap_err().contains("base64"));
        assert!(decode("aGVsbG8=").unwrap_err().contains("V2"));
        assert!(read_log("hello\n").is_err());
    }

    #[test]
    fn intervals_cut_the_window_and_add_up() {
        let t0 = Instant::now();
        let mut iv = Intervals::new(
            t0,
            Duration::from_secs(1),
            Duration::from_millis(2_500),
            &histogram(),
        );
        assert_eq!(iv.count, 3);
        assert_eq!(iv.index(t0), 0);
        assert_eq!(iv.index(t0 + Duration::from_millis(999)), 0);
        assert_eq!(iv.index(t0 + Duration::from_secs(1)), 1);
        // Past the window: the last interval.
        assert_eq!(iv.index(t0 + Duration::from_secs(60)), 2);
        iv.record(t0, 10);
        iv.record(t0 + Duration::from_millis(1_500), 20);
        // Recording moved on: the first interval is packed (a few bytes, not 230 KB).
        assert!(matches!(iv.slots[&0], Slot::Packed(_)));
        assert!(matches!(iv.slots[&1], Slot::Open(_)));
        // Out of order, into a packed interval.
        iv.record(t0 + Duration::from_millis(10), 30);
        iv.record(t0 + Duration::from_secs(9), 40);
        let hs = iv.histograms();
        assert_eq!(hs.len(), 3);
        let counts: Vec<u64> = hs.iter().map(|(_, _, h)| h.len()).collect();
        assert_eq!(counts, [2, 1, 1]);
        assert_eq!(hs[1].0, Duration::from_secs(1));
        assert_eq!(hs[2].0, Duration::from_secs(2));
        assert_eq!(hs[2].1, Duration::from_secs(1));
    }

    #[test]
    fn zero_interval_is_one_interval() {
        let t0 = Instant::now();
        let iv = Intervals::new(t0, Duration::ZERO, Duration::from_secs(5), &histogram());
        assert_eq!(iv.count, 1);
        assert_eq!(iv.every, Duration::from_secs(5));
    }

    #[test]
    fn a_written_log_reads_back_with_its_figures() {
        let t0 = Instant::now();
        let mut iv = Intervals::new(
            t0,
            Duration::from_secs(1),
            Duration::from_secs(3),
            &histogram(),
        );
        let mut whole = histogram();
        for (i, v) in [5_000u64, 7_000, 9_000, 1_000_000].iter().enumerate() {
            iv.record(t0 + Duration::from_millis(700 * i as u64), *v);
            whole.record(*v).unwrap();
        }
        let meta = serde_json::json!({"size": 64, "messages": 4});
        let mut out = Vec::new();
        write_log(
            &mut out,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            &iv.histograms(),
            &meta,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("#[StartTime: 1700000000.000"), "{text}");
        let log = read_log(&text).unwrap();
        assert_eq!(log.intervals, 3);
        assert_eq!(log.meta, Some(meta));
        assert_eq!(encode(&log.total), encode(&whole));
    }

    proptest! {
        // Each case builds several 230 KB histograms: a few dozen cases keep it quick.
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// Merge of parts == whole, bit for bit: values split among parts at random,
        /// each part encoded, decoded and added, encode to the very bytes of the one
        /// histogram recorded of all of them.
        #[test]
        fn merged_parts_are_the_whole_bit_for_bit(
            values in proptest::collection::vec((1u64..100_000_000_000, 0usize..4), 0..300)
        ) {
            let mut parts = vec![histogram(); 4];
            let mut whole = histogram();
            for (v, part) in &values {
                parts[*part].record(*v).unwrap();
                whole.record(*v).unwrap();
            }
            let mut merged = histogram();
            for part in &parts {
                add(&mut merged, &decode(&encode(part)).unwrap()).unwrap();
            }
            prop_assert_eq!(encode(&merged), encode(&whole));
            prop_assert_eq!(merged.len(), values.len() as u64);
        }

        /// Intervals merged across workers add up to the workers' whole.
        #[test]
        fn intervals_merged_are_the_whole(
            values in proptest::collection::vec((1u64..1_000_000_000, 0u64..5_000, proptest::bool::ANY), 0..200)
        ) {
            let t0 = Instant::now();
            let window = Duration::from_secs(4);
            let mut a = Intervals::new(t0, Duration::from_secs(1), window, &histogram());
            let mut b = a.clone();
            let mut whole = histogram();
            for (v, ms, which) in &values {
                if *which { &mut a } else { &mut b }.record(t0 + Duration::from_millis(*ms), *v);
                whole.record(*v).unwrap();
            }
            a.merge(&b);
            let mut sum = histogram();
            for (_, _, h) in a.histograms() {
                sum.add(&h).unwrap();
            }
            prop_assert_eq!(encode(&sum), encode(&whole));
        }
    }
}
