//! The reflection guard: the one check every UDP model runs on every datagram before it
//! echoes, and the counts of what it refused.
//!
//! UDP echo answers whoever the source address says sent the datagram, and that address
//! can be forged. Three rules keep the server from being used against a third party:
//!
//! - **No reply to the small services** (source port 0, 7 echo, 13 daytime, 17 qotd,
//!   19 chargen, 37 time), ever: two such services can be made to bounce one forged
//!   datagram between each other forever (the old inetd echo ↔ chargen loop).
//! - **No reply to privileged ports** (1 to 1023) unless `--udp-allow-privileged-ports`:
//!   a well-behaved client sends from an ephemeral port; a privileged one is a service.
//! - **A token bucket per source address** (`--udp-rate-per-source`): a forged source
//!   receives at most that many replies per second (burst: one second's worth), so the
//!   server reflects a bounded amount at any victim. The table of buckets is bounded too
//!   ([`MAX_SOURCES`]); see [`Guard::admit`] for what happens when it is full.
//!
//! The reply is the request's own bytes, so it is never larger than the request: the
//! server amplifies nothing. Every refused datagram is counted by [`DropReason`] and
//! logged at a bounded rate (one warning per reason per second, with the count suppressed).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Source ports that are never answered: 0 and the small services of inetd.
pub const RESERVED_PORTS: [u16; 6] = [0, 7, 13, 17, 19, 37];

/// The most source addresses with a token bucket at once (about 40 bytes each, so the
/// table stays under 4 MiB however many addresses send).
pub const MAX_SOURCES: usize = 65_536;

/// How often a full table is swept for buckets that have refilled (and so can be
/// forgotten without changing any decision). Bounds the sweep's cost to one O(n) pass per
/// interval, whatever the datagram rate.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// The default `--udp-rate-per-source`, in replies per second per source address.
pub const DEFAULT_RATE_PER_SOURCE: u32 = 10_000;

/// Why a datagram was not echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Source port 0, 7, 13, 17, 19 or 37.
    ReservedPort,
    /// Source port below 1024 (and not allowed by the policy).
    PrivilegedPort,
    /// The source address spent its token bucket.
    RateLimited,
    /// The bucket table was full of active sources and this one was new.
    TableFull,
    /// The datagram did not fit the receive buffer (cannot happen with our buffer sizes;
    /// counted so that it would be seen if it did).
    Truncated,
    /// The reply could not be sent (ECONNREFUSED from an ICMP error, ENOBUFS, ...).
    SendFailed,
}

impl DropReason {
    /// Every reason, in the order the stats list them.
    pub const ALL: [DropReason; 6] = [
        DropReason::ReservedPort,
        DropReason::PrivilegedPort,
        DropReason::RateLimited,
        DropReason::TableFull,
        DropReason::Truncated,
        DropReason::SendFailed,
    ];

    /// The reason's name in logs, stats and JSON.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::ReservedPort => "reserved-port",
            DropReason::PrivilegedPort => "privileged-port",
            DropReason::RateLimited => "rate-limited",
            DropReason::TableFull => "table-full",
            DropReason::Truncated => "truncated",
            DropReason::SendFailed => "send-failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the guard allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Answer source ports 1 to 1023 (except [`RESERVED_PORTS`]).
    pub allow_privileged: bool,
    /// Replies per second per source address; `None` for no limit.
    pub rate_per_source: Option<u32>,
    /// Whether `rate_per_source` applies to loopback sources too (an explicit
    /// `--udp-rate-per-source`); the default limit spares them (see the module doc).
    pub limit_loopback: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            allow_privileged: false,
            rate_per_source: Some(DEFAULT_RATE_PER_SOURCE),
            limit_loopback: false,
        }
    }
}

impl Policy {
    /// The policy with an explicit limit (`--udp-rate-per-source`), which applies to
    /// every source, loopback included.
    pub fn with_limit(allow_privileged: bool, rate_per_source: Option<u32>) -> Policy {
        Policy {
            allow_privileged,
            rate_per_source,
            limit_loopback: true,
        }
    }
}

/// Whether `ip` is a loopback address, IPv4-mapped ones included (a dual-stack socket
/// sees 127.0.0.1 as ::ffff:127.0.0.1).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Datagrams seen by a server, and what became of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams echoed.
    pub echoed: u64,
    /// Datagrams not echoed, by [`DropReason`] (indexed as [`DropReason::ALL`]).
    pub dropped: [u64; 6],
}

impl Stats {
    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Datagrams dropped for any reason.
    pub fn total_dropped(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// The server's closing line: `udp stopped: R received, E echoed, D dropped
    /// (reserved-port 2, privileged-port 0, ...)`.
    pub fn summary(&self) -> String {
        let reasons: Vec<String> = DropReason::ALL
            .iter()
            .map(|r| format!("{} {}", r.name(), self.dropped(*r)))
            .collect();
        format!(
            "udp stopped: {} received, {} echoed, {} dropped ({})",
            self.received,
            self.echoed,
            self.total_dropped(),
            reasons.join(", ")
        )
    }
}

/// A token bucket: `tokens` replies may be sent now; it refills at the policy's rate up
/// to one second's worth.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One warning per reason per second at most; the lines in between are counted and the
/// count is said in the next warning.
#[derive(Debug, Default)]
struct DropLog {
    last: [Option<Instant>; 6],
    suppressed: [u64; 6],
}

impl DropLog {
    fn note(&mut self, reason: DropReason, src: SocketAddr, now: Instant) {
        let idx = reason.index();
        let due = match self.last[idx] {
            None => true,
            Some(at) => now.saturating_duration_since(at) >= Duration::from_secs(1),
        };
        if due {
            let more = match self.suppressed[idx] {
                0 => String::new(),
                n => format!(" (and {n} more for this reason since the last warning)"),
            };
            log::warn!(
                "udp: dropped a datagram from {src}: {}{more}",
                explain(reason)
            );
            self.last[idx] = Some(now);
            self.suppressed[idx] = 0;
        } else {
            self.suppressed[idx] += 1;
        }
    }
}

fn explain(reason: DropReason) -> &'static str {
    match reason {
        DropReason::ReservedPort => {
            "reserved-port (source port 0 or a small service: echo, daytime, qotd, chargen, time)"
        }
        DropReason::PrivilegedPort => {
            "privileged-port (source port below 1024; --udp-allow-privileged-ports answers it)"
        }
        DropReason::RateLimited => "rate-limited (its address spent --udp-rate-per-source)",
        DropReason::TableFull => "table-full (too many active source addresses)",
        DropReason::Truncated => "truncated (larger than the receive buffer)",
        DropReason::SendFailed => "send-failed (the reply could not be sent)",
    }
}

/// The reflection guard and the server's counts. One per server, shared by its loops
/// (behind a mutex, taken once per batch), so that a source address has one bucket
/// whichever loop its datagrams reach.
#[derive(Debug)]
pub struct Guard {
    policy: Policy,
    /// Buckets by source address; at most [`MAX_SOURCES`] entries.
    buckets: HashMap<IpAddr, Bucket>,
    /// When a full table was last swept.
    last_sweep: Option<Instant>,
    stats: Stats,
    log: DropLog,
}

impl Guard {
    /// A guard enforcing `policy`, with zero counts.
    pub fn new(policy: Policy) -> Guard {
        Guard {
            policy,
            buckets: HashMap::new(),
            last_sweep: None,
            stats: Stats::default(),
            log: DropLog::default(),
        }
    }

    /// Decides whether a datagram from `src`, received at `now`, may be echoed. Counts it
    /// as received and, when refused, as dropped (and logs at a bounded rate).
    ///
    /// When the bucket table is full and `src` is new, the table is swept of refilled
    /// buckets (at most once per [`SWEEP_INTERVAL`]); if that frees nothing, the datagram
    /// is dropped as [`DropReason::TableFull`]: a flood of forged addresses can make the
    /// server refuse new sources for a while, never reflect more or use more memory.
    pub fn admit(&mut self, src: SocketAddr, now: Instant) -> Result<(), DropReason> {
        self.stats.received += 1;
        let verdict = self.check(src, now);
        if let Err(reason) = verdict {
            self.count_drop(reason, src, now);
        }
        verdict
    }

    /// Counts a datagram that reached the server but cannot be echoed for a reason found
    /// outside the guard (truncated on receive: counted as received too; a failed send:
    /// already counted as received by [`Guard::admit`]).
    pub fn count_drop(&mut self, reason: DropReason, src: SocketAddr, now: Instant) {
        if reason == DropReason::Truncated {
            self.stats.received += 1;
        }
        self.stats.dropped[reason.index()] += 1;
        log::debug!("udp: dropped datagram from {src}: {reason}");
        self.log.note(reason, src, now);
    }

    /// Counts an echo that was sent whole.
    pub fn echoed(&mut self, len: usize, dst: SocketAddr) {
        self.stats.echoed += 1;
        log::debug!("udp: echoed {len} bytes to {dst}");
    }

    /// The counts so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Source addresses with a bucket.
    pub fn n_sources(&self) -> usize {
        self.buckets.len()
    }

    fn check(&mut self, src: SocketAddr, now: Instant) -> Result<(), DropReason> {
        let port = src.port();
        if RESERVED_PORTS.contains(&port) {
            return Err(DropReason::ReservedPort);
        }
        if port < 1024 && !self.policy.allow_privileged {
            return Err(DropReason::PrivilegedPort);
        }
        let Some(rate) = self.policy.rate_per_source else {
            return Ok(());
        };
        let ip = src.ip();
        if !self.policy.limit_loopback && is_loopback(ip) {
            return Ok(());
        }
        let rate = f64::from(rate);
        let burst = rate;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_SOURCES {
            self.sweep(now, rate, burst);
            if self.buckets.len() >= MAX_SOURCES {
                return Err(DropReason::TableFull);
            }
        }
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(DropReason::RateLimited)
        }
    }

    /// Forgets every bucket that has refilled by `now`: a refilled bucket and a new one
    /// decide alike, so forgetting it changes nothing.
    fn sweep(&mut self, now: Instant, rate: f64, burst: f64) {
        if let Some(at) = self.last_sweep {
            if now.saturating_duration_since(at) < SWEEP_INTERVAL {
                return;
            }
        }
        self.last_sweep = Some(now);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * rate < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn from(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::from(ip), port))
    }

    #[test]
    fn small_services_and_port_zero_are_never_answered_even_when_privileged_is_allowed() {
        let mut guard = Guard::new(Policy::with_limit(true, None));
        let now = Instant::now();
        for port in RESERVED_PORTS {
            assert_eq!(
                guard.admit(from([10, 0, 0, 1], port), now),
                Err(DropReason::ReservedPort),
                "port {port}"
            );
        }
        for port in [1, 6, 8, 12, 14, 18, 20, 36, 38, 1023, 1024, 65535] {
            assert_eq!(
                guard.admit(from([10, 0, 0, 1], port), now),
                Ok(()),
                "{port}"
            );
        }
        assert_eq!(guard.stats().dropped(DropReason::ReservedPort), 6);
        assert_eq!(guard.stats().received, 18);
    }

    #[test]
    fn privileged_ports_are_refused_by_default_and_1024_is_not_privileged() {
        let mut guard = Guard::new(Policy::default());
        let now = Instant::now();
        assert_eq!(
            guard.admit(from([10, 0, 0, 1], 1023), now),
            Err(DropReason::PrivilegedPort)
        );
        assert_eq!(
            guard.admit(from([10, 0, 0, 1], 1), now),
            Err(DropReason::PrivilegedPort)
        );
        assert_eq!(guard.admit(from([10, 0, 0, 1], 1024), now), Ok(()));
        assert_eq!(guard.stats().dropped(DropReason::PrivilegedPort), 2);
    }

    #[test]
    fn a_bucket_gives_its_burst_then_exactly_its_rate() {
        let mut guard = Guard::new(Policy::with_limit(false, Some(10)));
        let t0 = Instant::now();
        let src = from([10, 0, 0, 1], 40000);
        let admitted = (0..100).filter(|_| guard.admit(src, t0).is_ok()).count();
        assert_eq!(admitted, 10, "burst is one second's worth");
        // Half a second later: 5 more tokens, no more.
        let t1 = t0 + Duration::from_millis(500);
        let admitted = (0..100).filter(|_| guard.admit(src, t1).is_ok()).count();
        assert_eq!(admitted, 5);
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        let admitted = (0..100).filter(|_| guard.admit(src, t2).is_ok()).count();
        assert_eq!(admitted, 10);
        // Another address (any port) has its own bucket.
        let other = from([10, 0, 0, 2], 40000);
        assert!(guard.admit(other, t2).is_ok());
        assert_eq!(guard.stats().dropped(DropReason::RateLimited), 90 + 95 + 90);
        assert_eq!(guard.stats().received, 301);
    }

    #[test]
    fn the_default_limit_spares_loopback_sources_and_an_explicit_one_does_not() {
        let t0 = Instant::now();
        let burst = DEFAULT_RATE_PER_SOURCE as usize;
        let loopbacks: [IpAddr; 4] = [
            Ipv4Addr::LOCALHOST.into(),
            Ipv4Addr::new(127, 1, 2, 3).into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
            Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(),
        ];
        // Default policy: twice the burst at one instant, all admitted, no bucket kept.
        let mut guard = Guard::new(Policy::default());
        for ip in loopbacks {
            let src = SocketAddr::new(ip, 40000);
            let admitted = (0..2 * burst)
                .filter(|_| guard.admit(src, t0).is_ok())
                .count();
            assert_eq!(admitted, 2 * burst, "{ip}");
        }
        assert_eq!(guard.n_sources(), 0);
        // ... while any other source gets exactly the burst.
        let other = from([10, 0, 0, 1], 40000);
        let admitted = (0..2 * burst)
            .filter(|_| guard.admit(other, t0).is_ok())
            .count();
        assert_eq!(admitted, burst);
        assert_eq!(guard.stats().dropped(DropReason::RateLimited), burst as u64);
        // An explicit limit applies to loopback too.
        let mut guard = Guard::new(Policy::with_limit(false, Some(10)));
        for ip in loopbacks {
            let src = SocketAddr::new(ip, 40000);
            let admitted = (0..100).filter(|_| guard.admit(src, t0).is_ok()).count();
            assert_eq!(admitted, 10, "{ip}");
        }
    }

    #[test]
    fn no_limit_admits_everything_and_keeps_no_table() {
        let mut guard = Guard::new(Policy::with_limit(false, None));
        let now = Instant::now();
        for idx in 0..1000u32 {
            let src = SocketAddr::from((Ipv4Addr::from(idx), 50000));
            assert!(guard.admit(src, now).is_ok());
        }
        assert_eq!(guard.n_sources(), 0);
    }

    #[test]
    fn the_table_never_grows_past_its_bound_and_frees_refilled_buckets() {
        let mut guard = Guard::new(Policy::with_limit(false, Some(1)));
        let t0 = Instant::now();
        for idx in 0..MAX_SOURCES as u32 {
            let src = SocketAddr::from((Ipv4Addr::from(idx), 50000));
            assert!(guard.admit(src, t0).is_ok());
        }
        assert_eq!(guard.n_sources(), MAX_SOURCES);
        // Full of active (emptied) buckets: a new source is refused, the table holds.
        let newcomer = from([192, 168, 1, 1], 50000);
        assert_eq!(guard.admit(newcomer, t0), Err(DropReason::TableFull));
        assert_eq!(guard.n_sources(), MAX_SOURCES);
        // Within the sweep interval the table is not swept again, even once refilled.
        let t1 = t0 + SWEEP_INTERVAL / 2;
        assert_eq!(guard.admit(newcomer, t1), Err(DropReason::TableFull));
        // One second on every bucket has refilled: the sweep forgets them all.
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(guard.admit(newcomer, t2), Ok(()));
        assert_eq!(guard.n_sources(), 1);
        assert_eq!(guard.stats().dropped(DropReason::TableFull), 2);
    }

    #[test]
    fn a_known_source_is_still_judged_by_its_bucket_when_the_table_is_full() {
        let mut guard = Guard::new(Policy::with_limit(false, Some(1)));
        let t0 = Instant::now();
        for idx in 0..MAX_SOURCES as u32 {
            let src = SocketAddr::from((Ipv4Addr::from(idx), 50000));
            assert!(guard.admit(src, t0).is_ok());
        }
        let known = SocketAddr::from((Ipv4Addr::from(7u32), 50000));
        assert_eq!(guard.admit(known, t0), Err(DropReason::RateLimited));
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(guard.admit(known, later), Ok(()));
    }

    #[test]
    fn a_full_table_is_swept_at_most_once_per_interval() {
        // 1000/s: a bucket that spent one token refills in 1 ms.
        let mut guard = Guard::new(Policy::with_limit(false, Some(1000)));
        let t0 = Instant::now();
        for idx in 0..MAX_SOURCES as u32 {
            let src = SocketAddr::from((Ipv4Addr::from(idx), 50000));
            assert!(guard.admit(src, t0).is_ok());
        }
        let newcomer = from([192, 168, 1, 1], 50000);
        // Swept at t0: every bucket is one token short, nothing is freed.
        assert_eq!(guard.admit(newcomer, t0), Err(DropReason::TableFull));
        // Every bucket has refilled, but the last sweep was less than an interval ago.
        let t1 = t0 + SWEEP_INTERVAL / 2;
        assert_eq!(guard.admit(newcomer, t1), Err(DropReason::TableFull));
        assert_eq!(guard.n_sources(), MAX_SOURCES);
        // Exactly one interval later the sweep runs and frees the refilled buckets.
        let t2 = t0 + SWEEP_INTERVAL;
        assert_eq!(guard.admit(newcomer, t2), Ok(()));
        assert_eq!(guard.n_sources(), 1);
    }

    #[test]
    fn reasons_have_names_and_explanations() {
        for reason in DropReason::ALL {
            assert_eq!(reason.to_string(), reason.name());
            assert!(explain(reason).starts_with(reason.name()), "{reason}");
        }
        assert_eq!(DropReason::RateLimited.to_string(), "rate-limited");
    }

    #[test]
    fn a_sweep_keeps_buckets_that_are_still_refilling() {
        let mut guard = Guard::new(Policy::with_limit(false, Some(1)));
        let t0 = Instant::now();
        for idx in 0..MAX_SOURCES as u32 {
            let src = SocketAddr::from((Ipv4Addr::from(idx), 50000));
            assert!(guard.admit(src, t0).is_ok());
        }
        // Half refilled after 0.5 s: nothing may be forgotten, the newcomer is refused.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            guard.admit(from([192, 168, 1, 1], 50000), t1),
            Err(DropReason::TableFull)
        );
        assert_eq!(guard.n_sources(), MAX_SOURCES);
    }

    #[test]
    fn truncated_and_failed_sends_are_counted_by_reason() {
        let mut guard = Guard::new(Policy::default());
        let now = Instant::now();
        let src = from([10, 0, 0, 1], 40000);
        guard.count_drop(DropReason::Truncated, src, now);
        assert!(guard.admit(src, now).is_ok());
        guard.count_drop(DropReason::SendFailed, src, now);
        guard.echoed(3, src);
        let stats = guard.stats();
        assert_eq!(stats.received, 2);
        assert_eq!(stats.echoed, 1);
        assert_eq!(stats.total_dropped(), 2);
        assert_eq!(
            stats.summary(),
            "udp stopped: 2 received, 1 echoed, 2 dropped (reserved-port 0, privileged-port 0, \
             rate-limited 0, table-full 0, truncated 1, send-failed 1)"
        );
    }

    #[test]
    fn the_drop_log_says_how_many_it_suppressed() {
        let mut log = DropLog::default();
        let src = from([10, 0, 0, 1], 7);
        let t0 = Instant::now();
        log.note(DropReason::ReservedPort, src, t0);
        log.note(
            DropReason::ReservedPort,
            src,
            t0 + Duration::from_millis(10),
        );
        log.note(
            DropReason::ReservedPort,
            src,
            t0 + Duration::from_millis(20),
        );
        assert_eq!(log.suppressed[DropReason::ReservedPort.index()], 2);
        log.note(DropReason::ReservedPort, src, t0 + Duration::from_secs(1));
        assert_eq!(log.suppressed[DropReason::ReservedPort.index()], 0);
        assert_eq!(log.last[0], Some(t0 + Duration::from_secs(1)));
    }
}
