//! What a bench run measured: the figures, the errors by kind, and their two renderings
//! (a human summary and one JSON document).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde_json::json;

use crate::engine::{BenchConfig, Workload};
use crate::latency::LatencySummary;
use crate::pattern::Mismatch;

/// Errors of a run, counted by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ErrorCounts {
    /// A connection could not be established (refused, timed out, no local port left).
    pub connect: u64,
    /// The server reset a connection (ECONNRESET, EPIPE).
    pub reset: u64,
    /// The server closed a connection while echoes were owed or before any was asked.
    pub eof: u64,
    /// A connection made no progress for `--timeout` while echoes were owed.
    pub timeout: u64,
    /// An echoed byte differed from the byte sent at that position.
    pub mismatch: u64,
    /// The server sent more bytes than it was sent.
    pub extra: u64,
}

/// One kind of error, as [`ErrorCounts`] counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    Connect,
    Reset,
    Eof,
    Timeout,
    Mismatch,
    Extra,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Reset => "reset",
            ErrorKind::Eof => "eof",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Extra => "extra",
        }
    }
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.reset + self.eof + self.timeout + self.mismatch + self.extra
    }

    pub fn count(&mut self, kind: ErrorKind) {
        *match kind {
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::Reset => &mut self.reset,
            ErrorKind::Eof => &mut self.eof,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Mismatch => &mut self.mismatch,
            ErrorKind::Extra => &mut self.extra,
        } += 1;
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.reset += other.reset;
        self.eof += other.eof;
        self.timeout += other.timeout;
        self.mismatch += other.mismatch;
        self.extra += other.extra;
    }
}

impl fmt::Display for ErrorCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.total() == 0 {
            return f.write_str("none");
        }
        write!(
            f,
            "{} (connect {}, reset {}, eof {}, timeout {}, mismatch {}, extra {})",
            self.total(),
            self.connect,
            self.reset,
            self.eof,
            self.timeout,
            self.mismatch,
            self.extra
        )
    }
}

/// The first byte mismatch of a run, with the connection it happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MismatchAt {
    pub conn_idx: usize,
    #[serde(flatten)]
    pub mismatch: Mismatch,
}

/// Everything one bench run measured. Messages, rates and latencies cover the measured
/// window only: warm-up and the final drain are excluded.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Completed echoes in the measured window (churn: completed connections).
    pub messages: u64,
    /// The measured window, in seconds (shorter than asked when interrupted).
    pub seconds: f64,
    /// Round-trip latency: closed loop from the send, open loop from the intended send
    /// time, churn from the start of the connect to the end of the echo.
    pub latency: LatencySummary,
    /// Churn only: from the start of the connect to the connection being established.
    pub connect_latency: Option<LatencySummary>,
    pub errors: ErrorCounts,
    pub first_mismatch: Option<MismatchAt>,
    /// The first message of each kind of error, for the summary.
    pub error_samples: BTreeMap<ErrorKind, String>,
    /// Connections established (churn: in total, over the run).
    pub conns_established: u64,
    /// Connections that completed at least one echo (not churn).
    pub conns_echoed: u64,
    /// Open loop: messages that fell due but were never sent (the run ended first).
    pub unsent: u64,
    /// The run was stopped by SIGINT/SIGTERM before its end.
    pub interrupted: bool,
    /// Every connection was closed or reset by the server before the end.
    pub server_gone: bool,
}

impl BenchReport {
    pub fn messages_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.messages as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Payload megabytes (10^6) per second, one way, like loadgen's `mbps`.
    pub fn mb_per_sec(&self, msg_size: usize) -> f64 {
        self.messages_per_sec() * msg_size as f64 / 1e6
    }

    /// The exit status of `echolab bench` for this run: 3 for a byte mismatch, 1 for any
    /// other error, 130 when interrupted, 0 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.errors.mismatch > 0 {
            3
        } else if self.errors.total() > 0 || self.server_gone {
            1
        } else if self.interrupted {
            130
        } else {
            0
        }
    }

    /// The run as one JSON document: the configuration and every figure. The top-level
    /// keys `messages_per_sec`, `mb_per_sec`, `p50_us`, `p99_us`, `p999_us` and `errors`
    /// (the total) are a contract with scripts.
    pub fn to_json(&self, config: &BenchConfig) -> serde_json::Value {
        let samples: BTreeMap<&str, &str> = self
            .error_samples
            .iter()
            .map(|(k, v)| (k.name(), v.as_str()))
            .collect();
        json!({
            "config": config_json(config),
            "workload": config.workload().name(),
            "messages": self.messages,
            "seconds": self.seconds,
            "messages_per_sec": self.messages_per_sec(),
            "mb_per_sec": self.mb_per_sec(config.msg_size),
            "connections_per_sec": matches!(config.workload(), Workload::Churn).then(|| self.messages_per_sec()),
            "mean_us": self.latency.mean_us,
            "p50_us": self.latency.p50_us,
            "p90_us": self.latency.p90_us,
            "p99_us": self.latency.p99_us,
            "p999_us": self.latency.p999_us,
            "max_us": self.latency.max_us,
            "connect_latency": self.connect_latency,
            "errors": self.errors.total(),
            "errors_by_kind": self.errors,
            "first_mismatch": self.first_mismatch,
            "error_samples": samples,
            "conns_established": self.conns_established,
            "conns_echoed": self.conns_echoed,
            "unsent": self.unsent,
            "interrupted": self.interrupted,
            "server_gone": self.server_gone,
        })
    }

    /// The human summary, several lines, the way loadgen prints its own.
    pub fn to_text(&self, config: &BenchConfig) -> String {
        let mut out = String::new();
        let workload = config.workload();
        let _ = writeln!(
            out,
            "echolab bench {}: {}, {} conns, {} B messages{}, pipeline {}, {} threads, warm-up {:.1} s, measured {:.2} s{}",
            config.addr,
            workload.describe(),
            config.n_conns,
            config.msg_size,
            if config.lines { " (lines)" } else { "" },
            config.pipeline,
            config.effective_threads(),
            config.warmup.as_secs_f64(),
            self.seconds,
            if self.interrupted { " (interrupted)" } else { "" },
        );
        let unit = if matches!(workload, Workload::Churn) {
            "connections"
        } else {
            "messages"
        };
        let _ = writeln!(
            out,
            "  {unit}/s: {:.0}   payload MB/s (one way): {:.2}",
            self.messages_per_sec(),
            self.mb_per_sec(config.msg_size)
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "  latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
        );
        if let Some(c) = &self.connect_latency {
            let _ = writeln!(
                out,
                "  connect latency us: p50 {:.1}  p99 {:.1}  max {:.1}",
                c.p50_us, c.p99_us, c.max_us
            );
        }
        let _ = writeln!(out, "  errors: {}", self.errors);
        for (kind, sample) in &self.error_samples {
            let _ = writeln!(out, "    first {}: {sample}", kind.name());
        }
        if let Some(m) = &self.first_mismatch {
            let _ = writeln!(out, "  MISMATCH on conn {}: {}", m.conn_idx, m.mismatch);
        }
        if !matches!(workload, Workload::Churn) {
            let _ = writeln!(
                out,
                "  connections: {} of {} established, {} completed at least one echo",
                self.conns_established, config.n_conns, self.conns_echoed
            );
        }
        if self.unsent > 0 {
            let _ = writeln!(
                out,
                "  {} messages fell due but were not sent before the end (the server could not keep up with --rate)",
                self.unsent
            );
        }
        if self.server_gone {
            let _ = writeln!(
                out,
                "  the server closed or reset every connection: it stopped or crashed"
            );
        }
        out
    }
}

fn config_json(config: &BenchConfig) -> serde_json::Value {
    json!({
        "addr": config.addr.to_string(),
        "conns": config.n_conns,
        "size": config.msg_size,
        "duration_secs": config.duration.as_secs_f64(),
        "warmup_secs": config.warmup.as_secs_f64(),
        "threads": config.effective_threads(),
        "pipeline": config.pipeline,
        "rate": config.rate,
        "churn": config.churn,
        "lines": config.lines,
        "connect_timeout_secs": config.connect_timeout.as_secs_f64(),
        "timeout_secs": config.stall_timeout.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_add_up_and_print_by_kind() {
        let mut a = ErrorCounts::default();
        assert_eq!(a.to_string(), "none");
        a.count(ErrorKind::Reset);
        a.count(ErrorKind::Mismatch);
        let mut b = ErrorCounts::default();
        b.count(ErrorKind::Reset);
        a.add(&b);
        assert_eq!(a.total(), 3);
        assert_eq!(a.reset, 2);
        assert!(a.to_string().contains("reset 2"));
    }
}
