//! Flag values with units: one parser per kind, used by every subcommand.
//!
//! - Durations: a number and an optional unit, `ns`, `us` (or `µs`), `ms`, `s`, `m` (or
//!   `min`), `h`, `d`; a bare number is seconds (`0.5` = `500ms`), because every duration
//!   flag took plain seconds before units existed, and scripts still pass them.
//! - Sizes: a number and an optional unit, case-insensitive. `K`, `M`, `G`, `T` and `KiB`,
//!   `MiB`, `GiB`, `TiB` are powers of 1024; `KB`, `MB`, `GB`, `TB` powers of 1000 (GNU
//!   dd's convention); `B` or nothing is bytes. `1.5K` is 1536 bytes; a size that is not a
//!   whole number of bytes (`0.3K`) is refused.
//! - Counts: whole numbers, no sign, no unit.
//! - Addresses: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (resolved; its first address).
//!
//! Numbers are decimal (`1.25`), parsed exactly: no exponent (`1e-10` is refused as not a
//! number), no `inf` or `NaN`, no sign. Each parser checks its flag's range, whose ends the
//! caller gives (the ceilings live beside the flags), and says what is wrong in one
//! lowercase sentence without the value: clap's line already names the flag and the value
//! (`invalid value '0.5ms' for '--timeout <DURATION>': ...`).
//!
//! Why not humantime: its grammar refuses a bare number ("time unit needed") and fractions
//! (`0.5s`), both of which our flags have always taken.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Fraction digits kept: enough for nanoseconds of a day, or bytes of a tebibyte.
const MAX_FRACTION_DIGITS: usize = 18;
/// Whole digits kept: any more overflows every range a flag has.
const MAX_WHOLE_DIGITS: usize = 30;

/// A decimal number `WHOLE[.FRACTION]`, exactly: `value = whole + fraction / 10^digits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    whole: u128,
    fraction: u128,
    digits: u32,
}

impl Decimal {
    /// `self * scale`, rounded down, and whether the rounding dropped anything.
    fn times(self, scale: u128) -> Option<(u128, bool)> {
        let whole = self.whole.checked_mul(scale)?;
        let frac = self.fraction.checked_mul(scale)?;
        let denom = 10u128.pow(self.digits);
        Some((whole.checked_add(frac / denom)?, frac % denom != 0))
    }
}

/// What went wrong with a number, before any unit or range.
#[derive(Debug, PartialEq, Eq)]
enum NumberError {
    Negative,
    NotANumber,
    TooLong,
}

/// Splits `text` into a decimal number and what follows it (the unit, trimmed).
fn split_number(text: &str) -> Result<(Decimal, &str), NumberError> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(NumberError::Negative);
    }
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(NumberError::NotANumber);
    }
    if whole.len() > MAX_WHOLE_DIGITS || fraction.len() > MAX_FRACTION_DIGITS {
        return Err(NumberError::TooLong);
    }
    let parse = |digits: &str| -> u128 {
        // Only ASCII digits, at most 30 of them: this cannot fail or overflow.
        digits.bytes().fold(0, |n, d| n * 10 + u128::from(d - b'0'))
    };
    let decimal = Decimal {
        whole: parse(whole),
        fraction: parse(fraction),
        digits: fraction.len() as u32,
    };
    Ok((decimal, unit.trim()))
}

const DURATION_HINT: &str = "write a number and a unit, such as 500ms, 2s or 1m (a bare number is seconds; units ns, us, ms, s, m, h, d)";

/// Nanoseconds in one of a duration's units.
fn duration_unit(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => return None,
    })
}

/// A duration from `min` to `max` (both included). Below a nanosecond it rounds down.
pub fn duration(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let nanos = duration_nanos(text)?;
    if nanos < min.as_nanos() {
        return Err(format!(
            "at least {}, at most {}",
            format_duration(min),
            format_duration(max)
        ));
    }
    if nanos > max.as_nanos() {
        return Err(format!("at most {}", format_duration(max)));
    }
    // At most `max`, a Duration, so it fits.
    Ok(Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    ))
}

/// The shortest timeout of a client: below a millisecond it would fire before a round
/// trip.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// The longest timeout of a client: a day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A client's timeout for an echo (`echolab client`, TCP and UDP alike): from
/// [`MIN_TIMEOUT`] to [`MAX_TIMEOUT`].
pub fn timeout(text: &str) -> Result<Duration, String> {
    duration(text, MIN_TIMEOUT, MAX_TIMEOUT)
}

/// A duration from `min` to `max`, or 0 (which the flag says means none or never).
pub fn duration_or_zero(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    match duration_nanos(text)? {
        0 => Ok(Duration::ZERO),
        _ => duration(text, min, max).map_err(|err| format!("0 (none) or {err}")),
    }
}

fn duration_nanos(text: &str) -> Result<u128, String> {
    let (number, unit) = split_number(text).map_err(|err| match err {
        NumberError::Negative => "a duration cannot be negative".to_string(),
        NumberError::NotANumber => format!("not a duration: {DURATION_HINT}"),
        NumberError::TooLong => "too many digits for a duration".to_string(),
    })?;
    let scale = duration_unit(unit)
        .ok_or_else(|| format!("unknown unit {unit:?} for a duration: {DURATION_HINT}"))?;
    number
        .times(scale)
        .map(|(nanos, _)| nanos)
        .ok_or_else(|| "too long a duration".to_string())
}

/// A duration as a flag would take it back, in its largest whole unit: `100ms`, `1h`,
/// `3650d`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    let units: [(u128, &str); 7] = [
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    match units
        .iter()
        .find(|(scale, _)| nanos != 0 && nanos.is_multiple_of(*scale))
    {
        Some((scale, unit)) => format!("{}{unit}", nanos / scale),
        None => "0s".to_string(),
    }
}

const SIZE_HINT: &str = "write bytes, or a number and a unit, such as 64, 1.5K, 64KiB or 1G (K, M, G = 1024-based; KB, MB, GB = 1000-based)";

/// Bytes in one of a size's units (case-insensitive).
fn size_unit(unit: &str) -> Option<u128> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    })
}

/// A size in bytes from `min` to `max` (both included).
pub fn size(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let (number, unit) = split_number(text).map_err(|err| match err {
        NumberError::Negative => "a size cannot be negative".to_string(),
        NumberError::NotANumber => format!("not a size: {SIZE_HINT}"),
        NumberError::TooLong => format!("too many digits for a size; at most {}", bytes(max)),
    })?;
    let scale =
        size_unit(unit).ok_or_else(|| format!("unknown unit {unit:?} for a size: {SIZE_HINT}"))?;
    let (n, rounded) = number
        .times(scale)
        .ok_or_else(|| format!("at most {}", bytes(max)))?;
    if rounded {
        return Err("not a whole number of bytes".to_string());
    }
    if n < u128::from(min) {
        return Err(format!("at least {}, at most {}", bytes(min), bytes(max)));
    }
    if n > u128::from(max) {
        return Err(format!("at most {}", bytes(max)));
    }
    Ok(n as u64)
}

/// A byte count as a flag would take it back: `64 MiB` when whole, else bytes.
fn bytes(n: u64) -> String {
    match n {
        0 => "0 bytes".to_string(),
        1 => "1 byte".to_string(),
        n if n.is_multiple_of(1 << 30) => format!("{} GiB", n >> 30),
        n if n.is_multiple_of(1 << 20) => format!("{} MiB", n >> 20),
        n if n.is_multiple_of(1 << 10) && n >= 1 << 12 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// A whole number from `min` to `max` (both included): connections, threads, trials.
pub fn count(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("cannot be negative; at least {min}"));
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("not a whole number; from {min} to {max}"));
    }
    match text.parse::<u64>() {
        Ok(n) if n < min => Err(format!("at least {min}")),
        Ok(n) if n <= max => Ok(n),
        // Too large for u64 is too large for the flag too.
        _ => Err(format!("at most {max}")),
    }
}

/// A socket address with a port: `127.0.0.1:7007`, `[::1]:7007`, or `HOST:PORT` resolved
/// (its first address). An IPv6 address may carry a scope id, the interface of a
/// link-local address: its index (`[fe80::1%2]:7007`) or its name (`[fe80::1%eth0]:7007`,
/// looked up with if_nametoindex(3)). One set of messages for every command: no port, a
/// port out of range, a host that does not resolve, no interface of that name.
pub fn addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if let Some(numbered) = scope_by_index(text) {
        return addr(&numbered?);
    }
    const USAGE: &str =
        "not an address with a port (try 127.0.0.1:7007, [::1]:7007 or localhost:7007)";
    let (host, port) = text.rsplit_once(':').ok_or(USAGE)?;
    // `::1` without brackets splits into host `:` and port `1`, `[::1` (a bracket left
    // open) into host `[:`: not a HOST:PORT either.
    if host.is_empty() || host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(USAGE.to_string());
    }
    if port.parse::<u16>().is_err() {
        return Err(
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                "port out of range (0 to 65535)".to_string()
            } else {
                USAGE.to_string()
            },
        );
    }
    // A name's first IPv4 address, else its first (`localhost` is 127.0.0.1 where it has
    // both, as the loopback examples everywhere assume).
    let addrs: Vec<SocketAddr> = text.to_socket_addrs().into_iter().flatten().collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("cannot resolve host {host:?}"))
}

/// `[fe80::1%lo]:7007` with the scope id's interface name replaced by its index,
/// `[fe80::1%1]:7007`, which std parses; `None` when `text` has no scope id that is a name.
fn scope_by_index(text: &str) -> Option<Result<String, String>> {
    let (inside, after) = text.strip_prefix('[')?.split_once(']')?;
    let (ip, scope) = inside.split_once('%')?;
    if !scope.is_empty() && scope.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match nix::net::if_::if_nametoindex(scope) {
        Ok(index) => Ok(format!("[{ip}%{index}]{after}")),
        Err(_) => Err(format!(
            "no network interface {scope:?} (an IPv6 scope id is an interface name or index: [fe80::1%lo]:7007, [fe80::1%1]:7007)"
        )),
    })
}

/// A server to connect or send to: an [`addr`] whose port is not 0 (port 0 means "any
/// free port" to `bind`, and no server listens on it).
pub fn destination(text: &str) -> Result<SocketAddr, String> {
    let addr = addr(text)?;
    if addr.port() == 0 {
        return Err("port 0 is no server's port (1 to 65535)".to_string());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_timeout_is_a_millisecond_to_a_day() {
        assert_eq!(timeout("1ms"), Ok(MS));
        assert_eq!(timeout("1d"), Ok(DAY));
        assert_eq!(timeout("86400"), Ok(DAY));
        assert_eq!(timeout("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(
            timeout("999us"),
            Err("at least 1ms, at most 1d".to_string())
        );
        assert_eq!(timeout("86401"), Err("at most 1d".to_string()));
    }

    #[test]
    fn durations_accepted() {
        let table: &[(&str, Duration)] = &[
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1min", Duration::from_secs(60)),
            ("1.5h", Duration::from_secs(5_400)),
            ("1d", DAY),
            ("5", Duration::from_secs(5)),
            ("0.5", Duration::from_millis(500)),
            (".25", Duration::from_millis(250)),
            ("2.", Duration::from_secs(2)),
            (" 1500 ms ", Duration::from_millis(1_500)),
            ("0.1", Duration::from_millis(100)),
            ("1000us", MS),
            ("1000µs", MS),
            ("1000000ns", MS),
            ("0.001", MS),
            ("86400", DAY),
        ];
        for (text, want) in table {
            assert_eq!(duration(text, MS, DAY), Ok(*want), "{text:?}");
        }
    }

    #[test]
    fn durations_refused() {
        let table: &[(&str, &str)] = &[
            ("0", "at least 1ms, at most 1d"),
            ("0.0009", "at least 1ms"),
            ("0.5ms", "at least 1ms"),
            ("1e-10", "unknown unit \"e-10\""),
            ("-1", "cannot be negative"),
            ("-0.5s", "cannot be negative"),
            ("18446744073709551615", "at most 1d"),
            ("340282366920938463463374607431768211455", "too many digits"),
            ("99999999999999999999999999999d", "too long"),
            ("86400.000000001", "at most 1d"),
            ("1.5.2", "not a duration"),
            ("soon", "not a duration"),
            ("", "not a duration"),
            ("s", "not a duration"),
            (".", "not a duration"),
            ("5 furlongs", "unknown unit \"furlongs\""),
            ("5M", "unknown unit \"M\""),
            ("inf", "not a duration"),
            ("NaN", "not a duration"),
            ("0x10", "unknown unit \"x10\""),
            ("1m30s", "unknown unit \"m30s\""),
        ];
        for (text, want) in table {
            let err = duration(text, MS, DAY).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
            assert!(!err.contains('\n'), "{err:?}");
        }
    }

    #[test]
    fn digits_are_bounded_at_30_whole_and_18_fraction() {
        let whole30 = "1".repeat(30);
        assert!(size(&whole30, 1, u64::MAX)
            .unwrap_err()
            .starts_with("at most"));
        let whole31 = "1".repeat(31);
        assert!(size(&whole31, 1, u64::MAX)
            .unwrap_err()
            .starts_with("too many digits"));
        let frac18 = format!("0.{}1", "0".repeat(17));
        assert_eq!(duration(&frac18, Duration::ZERO, DAY), Ok(Duration::ZERO));
        assert_eq!(
            duration(&format!("{frac18}d"), Duration::ZERO, DAY),
            Ok(Duration::ZERO),
            "1e-18 days is under a nanosecond"
        );
        let frac19 = format!("0.{}1", "0".repeat(18));
        assert!(duration(&frac19, Duration::ZERO, DAY)
            .unwrap_err()
            .contains("too many digits"));
        assert_eq!(
            size(&format!("1.{}K", "0".repeat(18)), 1, u64::MAX),
            Ok(1024)
        );
    }

    #[test]
    fn zero_means_none_only_where_the_flag_says_so() {
        assert_eq!(duration_or_zero("0", MS, DAY), Ok(Duration::ZERO));
        assert_eq!(duration_or_zero("0ms", MS, DAY), Ok(Duration::ZERO));
        assert_eq!(duration_or_zero("2s", MS, DAY), Ok(Duration::from_secs(2)));
        let err = duration_or_zero("1ns", MS, DAY).unwrap_err();
        assert_eq!(err, "0 (none) or at least 1ms, at most 1d");
        assert!(duration_or_zero("2d", MS, DAY)
            .unwrap_err()
            .contains("at most 1d"));
        assert!(duration_or_zero("-0", MS, DAY).is_err());
    }

    #[test]
    fn the_ends_of_a_range_are_included() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(3_600));
        assert_eq!(duration("100ms", min, max), Ok(min));
        assert_eq!(duration("1h", min, max), Ok(max));
        assert!(duration("99999999ns", min, max).is_err());
        assert!(duration("3600.000000001", min, max).is_err());
        // Ten years, the idle timeout's ceiling, in seconds and in days.
        let ten_years = Duration::from_secs(315_360_000);
        assert_eq!(duration("3650d", MS, ten_years), Ok(ten_years));
        assert!(duration("315360001", MS, ten_years)
            .unwrap_err()
            .contains("at most 3650d"));
    }

    #[test]
    fn durations_are_said_in_their_largest_whole_unit() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_nanos(1)), "1ns");
        assert_eq!(format_duration(Duration::from_micros(3)), "3us");
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(7_200)), "2h");
        assert_eq!(format_duration(DAY), "1d");
    }

    const MAX: u64 = 64 << 20;

    #[test]
    fn sizes_accepted() {
        let table: &[(&str, u64)] = &[
            ("64", 64),
            ("64b", 64),
            ("64B", 64),
            ("1.5K", 1_536),
            ("1.5k", 1_536),
            ("16KiB", 16_384),
            ("16kib", 16_384),
            ("16KB", 16_000),
            ("1M", 1 << 20),
            ("1MiB", 1 << 20),
            ("1MB", 1_000_000),
            ("0.5M", 1 << 19),
            ("64MiB", MAX),
            (" 2 K ", 2_048),
            ("1", 1),
        ];
        for (text, want) in table {
            assert_eq!(size(text, 1, MAX), Ok(*want), "{text:?}");
        }
        assert_eq!(size("1G", 1, 1 << 30), Ok(1 << 30));
        assert_eq!(size("1GB", 1, 1 << 30), Ok(1_000_000_000));
        assert_eq!(size("1T", 1, u64::MAX), Ok(1 << 40));
        assert_eq!(size("1TB", 1, u64::MAX), Ok(1_000_000_000_000));
        assert_eq!(size("18446744073709551615", 1, u64::MAX), Ok(u64::MAX));
    }

    #[test]
    fn sizes_refused() {
        let table: &[(&str, &str)] = &[
            ("0", "at least 1 byte, at most 64 MiB"),
            ("1G", "at most 64 MiB"),
            ("64.000001M", "not a whole number of bytes"),
            ("0.3K", "not a whole number of bytes"),
            ("1.5", "not a whole number of bytes"),
            ("1e-10", "unknown unit \"e-10\""),
            ("-1", "cannot be negative"),
            ("18446744073709551615", "at most 64 MiB"),
            ("18446744073709551616T", "at most 64 MiB"),
            ("1234567890123456789012345678901", "too many digits"),
            ("12 furlongs", "unknown unit \"furlongs\""),
            ("garbage", "not a size"),
            ("", "not a size"),
            ("NaN", "not a size"),
            ("1KiBB", "unknown unit"),
        ];
        for (text, want) in table {
            let err = size(text, 1, MAX).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
        assert_eq!(
            size("11", 12, 65_527).unwrap_err(),
            "at least 12 bytes, at most 65527 bytes"
        );
        assert_eq!(size("65536", 1, 65_536), Ok(65_536));
        assert_eq!(size("64K", 1, 65_536), Ok(65_536));
        assert_eq!(size("65537", 1, 65_536).unwrap_err(), "at most 64 KiB");
    }

    #[test]
    fn byte_counts_are_said_in_their_largest_whole_binary_unit() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(1), "1 byte");
        assert_eq!(bytes(1_024), "1024 bytes", "under 4 KiB: in bytes");
        assert_eq!(bytes(4_096), "4 KiB");
        assert_eq!(bytes(65_527), "65527 bytes");
        assert_eq!(bytes(3 << 20), "3 MiB");
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(3 << 30), "3 GiB");
    }

    #[test]
    fn counts() {
        assert_eq!(count("1", 1, 4096), Ok(1));
        assert_eq!(count("4096", 1, 4096), Ok(4096));
        assert_eq!(count(" 7 ", 1, 4096), Ok(7));
        assert_eq!(count("0", 0, 4096), Ok(0));
        assert_eq!(count("18446744073709551615", 1, u64::MAX), Ok(u64::MAX));
        let table: &[(&str, &str)] = &[
            ("0", "at least 1"),
            ("4097", "at most 4096"),
            ("18446744073709551615", "at most 4096"),
            ("18446744073709551616", "at most 4096"),
            ("-1", "cannot be negative"),
            ("1e-10", "not a whole number"),
            ("1.5", "not a whole number"),
            ("+3", "not a whole number"),
            ("", "not a whole number"),
            ("many", "not a whole number; from 1 to 4096"),
        ];
        for (text, want) in table {
            let err = count(text, 1, 4096).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            addr("127.0.0.1:7007"),
            Ok("127.0.0.1:7007".parse().unwrap())
        );
        assert_eq!(addr("[::1]:9"), Ok("[::1]:9".parse().unwrap()));
        let local = addr("localhost:7007").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 7007, "{local}");
        let table: &[(&str, &str)] = &[
            ("127.0.0.1", "not an address with a port"),
            ("localhost", "not an address with a port"),
            ("::1", "not an address with a port"),
            ("[::1", "not an address with a port"),
            ("[::1]", "not an address with a port"),
            (":7007", "not an address with a port"),
            ("127.0.0.1:", "not an address with a port"),
            ("127.0.0.1:-1", "not an address with a port"),
            ("127.0.0.1:http", "not an address with a port"),
            ("127.0.0.1:99999", "port out of range (0 to 65535)"),
            ("localhost:99999", "port out of range (0 to 65535)"),
            ("127.0.0.1:18446744073709551616", "port out of range"),
            (
                "no-such-host.invalid:7007",
                "cannot resolve host \"no-such-host.invalid\"",
            ),
            ("", "not an address with a port"),
        ];
        for (text, want) in table {
            let err = addr(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn an_ipv6_scope_id_is_an_interface_index_or_name() {
        let scope = |text: &str| match addr(text) {
            Ok(SocketAddr::V6(v6)) => Ok((v6.scope_id(), v6.port())),
            Ok(v4) => panic!("{text}: {v4}"),
            Err(err) => Err(err),
        };
        assert_eq!(scope("[::1%1]:7"), Ok((1, 7)));
        // The loopback interface is the first of every Linux network namespace: index 1.
        assert_eq!(scope("[fe80::1%lo]:7007"), Ok((1, 7007)));
        assert_eq!(scope("[::1%lo]:0"), Ok((1, 0)));
        let err = scope("[fe80::1%nosuch0]:7007").unwrap_err();
        assert!(err.starts_with("no network interface \"nosuch0\""), "{err}");
        assert!(scope("[fe80::1%]:7007")
            .unwrap_err()
            .contains("no network interface"));
        // The port's checks still apply after the name is replaced.
        let err = scope("[fe80::1%lo]:99999").unwrap_err();
        assert_eq!(err, "port out of range (0 to 65535)");
        assert_eq!(
            destination("[::1%lo]:0"),
            Err("port 0 is no server's port (1 to 65535)".to_string())
        );
    }

    #[test]
    fn a_destination_is_an_address_whose_port_is_not_0() {
        assert_eq!(
            destination("127.0.0.1:7"),
            Ok("127.0.0.1:7".parse().unwrap())
        );
        for text in ["127.0.0.1:0", "[::1]:0", "localhost:0"] {
            assert_eq!(
                destination(text),
                Err("port 0 is no server's port (1 to 65535)".to_string()),
                "{text}"
            );
        }
        assert_eq!(destination("127.0.0.1:99999"), addr("127.0.0.1:99999"));
    }
}
