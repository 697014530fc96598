//! `fd-refcount`: after `fork`, parent and child each hold a descriptor for the
//! connection, and the kernel closes the connection only when the last one is closed. A
//! parent that forgets its copy keeps every connection open after the child has
//! finished and exited: the client waits for end-of-file that never comes.
//!
//! Trade-off: none really; closing the parent's copy is one line, and forgetting it costs a
//! descriptor per connection and clients that hang. The experiment measures the hang
//! with a timeout, so it cannot hang itself.

use std::io;
use std::time::Duration;

use serde_json::json;

use crate::experiment::{ms, Deadline, Experiment, Report, Settings};
use crate::experiments::forkserver::{echo_once, ForkServer, ServerFlaws};
use crate::plot::{Bar, Panel, Picture};

pub const EXPERIMENT: Experiment = Experiment {
    name: "fd-refcount",
    summary: "a parent that keeps its copy of connfd: the client never sees EOF after the child exits (--trials: clients)",
    max_trials: 1_000,
    run,
};

/// How long a client waits for end-of-file before calling it "never".
pub const EOF_WAIT: Duration = Duration::from_millis(1_000);

/// What the clients of one server variant saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    /// Per client: time from shutdown(write) to end-of-file, `None` if none within the wait.
    pub eof_after: Vec<Option<Duration>>,
    /// Per client: how long it waited for end-of-file, measured.
    pub waited: Vec<Duration>,
    /// Children the server reaped: proof that the child serving each client had exited.
    pub children_exited: usize,
}

/// Runs `n_clients` clients against a server that does (or does not) close its copy.
pub fn views(
    settings: &Settings,
    close_in_parent: bool,
    n_clients: usize,
    deadline: Deadline,
) -> io::Result<Views> {
    let flaws = ServerFlaws {
        reap: true,
        close_in_parent,
    };
    let mut server = ForkServer::start(
        settings,
        flaws,
        deadline.remaining() + Duration::from_secs(1),
    )?;
    let mut eof_after = Vec::new();
    let mut waited = Vec::new();
    let mut reaped = 0;
    for n_done in 1..=n_clients {
        // At least one client; the rest only while the deadline allows.
        if n_done > 1 && deadline.passed() {
            break;
        }
        let view = echo_once(server.addr, EOF_WAIT.min(deadline.remaining()))?;
        eof_after.push(view.eof_after);
        waited.push(view.waited);
        // Whether or not end-of-file came, the child serving this client has exited:
        // the server reaps it and says so.
        server.wait_reaped(
            n_done,
            &mut reaped,
            deadline.min_after(Duration::from_secs(5)),
        );
    }
    server.process.kill_and_reap();
    Ok(Views {
        eof_after,
        waited,
        children_exited: reaped,
    })
}

/// Each client's outcome, measured: `EOF after 0.12 ms` or `no EOF; gave up after
/// waiting 1000.4 ms`.
pub fn describe(view: &Views) -> String {
    let parts: Vec<String> = view
        .eof_after
        .iter()
        .zip(&view.waited)
        .map(|(eof, waited)| match eof {
            Some(after) => format!("EOF after {:.2} ms", ms(*after)),
            None => format!("no EOF; gave up after waiting {:.1} ms", ms(*waited)),
        })
        .collect();
    parts.join(", ")
}

/// What the two servers' clients mean.
pub fn meaning(buggy: &Views, fixed: &Views) -> String {
    let never = buggy.eof_after.iter().filter(|eof| eof.is_none()).count();
    let n = buggy.eof_after.len();
    let longest = buggy.waited.iter().max().copied().unwrap_or_default();
    let mut text = if never > 0 {
        format!(
            "With the parent's copy open, {never} of {n} client(s) saw no end-of-file in up to {:.0} ms of waiting, although the child serving \
             them had exited ({} reaped by the server): the kernel's count for the connection was still 1. A client that reads until end-of-file \
             hangs, and the server leaks a descriptor per client.",
            ms(longest),
            buggy.children_exited
        )
    } else {
        format!(
            "Every one of the {n} client(s) saw end-of-file even with the parent's copy open, which the reference count says cannot happen: \
             the lab's server is not doing what it claims."
        )
    };
    let fixed_eof = fixed.eof_after.iter().flatten().count();
    if fixed_eof == fixed.eof_after.len() {
        let slowest = fixed
            .eof_after
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or_default();
        text.push_str(&format!(
            " With the parent's copy closed, all {fixed_eof} client(s) saw end-of-file, the slowest after {:.0} µs.",
            slowest.as_secs_f64() * 1e6
        ));
    } else {
        text.push_str(&format!(
            " With the parent's copy closed, only {fixed_eof} of {} client(s) saw end-of-file.",
            fixed.eof_after.len()
        ));
    }
    text
}

fn run(settings: &Settings) -> io::Result<Report> {
    let n_clients = settings.trials_or(2);
    let deadline = settings.deadline();
    let buggy = views(
        settings,
        false,
        n_clients,
        deadline.min_after(settings.timeout / 2),
    )?;
    let fixed = views(settings, true, n_clients, deadline)?;
    let measured = vec![
        format!(
            "parent keeps connfd:  {} (children exited and reaped: {})",
            describe(&buggy),
            buggy.children_exited
        ),
        format!(
            "parent closes connfd: {} (children exited and reaped: {})",
            describe(&fixed),
            fixed.children_exited
        ),
    ];
    let eof_bars = |view: &Views, who: &str| -> Vec<Bar> {
        let saw = view.eof_after.iter().flatten().count();
        vec![
            Bar::new(format!("{who}: EOF"), saw as f64),
            Bar::new(
                format!("{who}: no EOF"),
                (view.eof_after.len() - saw) as f64,
            ),
        ]
    };
    let mut counts = eof_bars(&buggy, "keeps");
    counts.extend(eof_bars(&fixed, "closes"));
    let fixed_ms: Vec<Bar> = fixed
        .eof_after
        .iter()
        .enumerate()
        .filter_map(|(idx, eof)| {
            Some(Bar::new(
                format!("client {}", idx + 1),
                (*eof)?.as_secs_f64() * 1e6,
            ))
        })
        .collect();
    let picture = Picture::new(
        "End-of-file after the child exits",
        "",
        vec![
            Panel::new(
                "clients that saw end-of-file (parent keeps / closes connfd)",
                counts,
            ),
            Panel::new("parent closes connfd: µs until end-of-file", fixed_ms),
        ],
    );
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Descriptor reference counts: the parent must close connfd",
        claim: "After fork, refcnt(connfd) = 2; the connection is not closed until refcnt(connfd) = 0, so the parent must close its copy.",
        did: format!(
            "{n_clients} client(s) each sent a line to a fork-per-connection server, read the echo, shut down writing, and waited up to {} ms for end-of-file; \
             once with a parent that keeps its copy of each connection, once with one that closes it.",
            EOF_WAIT.as_millis()
        ),
        measured,
        meaning: meaning(&buggy, &fixed),
        fix: "Close the parent's copy right after fork (and the child's copy of the listening socket): then the child's close is the last one and the client sees end-of-file at once.".to_string(),
        hangs: Vec::new(),
        figures: json!({
            "eof_wait_ms": EOF_WAIT.as_millis() as u64,
            "parent_keeps": buggy.eof_after.iter().map(|eof| eof.map(ms)).collect::<Vec<_>>(),
            "parent_keeps_waited_ms": buggy.waited.iter().map(|w| ms(*w)).collect::<Vec<_>>(),
            "parent_closes": fixed.eof_after.iter().map(|eof| eof.map(ms)).collect::<Vec<_>>(),
            "children_exited": [buggy.children_exited, fixed.children_exited],
        }),
        svg: Some(picture.svg()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(eofs: &[Option<u64>], waited_ms: u64) -> Views {
        Views {
            eof_after: eofs
                .iter()
                .map(|eof| eof.map(Duration::from_micros))
                .collect(),
            waited: eofs
                .iter()
                .map(|eof| eof.map_or(Duration::from_millis(waited_ms), Duration::from_micros))
                .collect(),
            children_exited: eofs.len(),
        }
    }

    #[test]
    fn the_wait_is_the_measured_one() {
        let buggy = views(&[None, None], 1_003);
        assert_eq!(
            describe(&buggy),
            "no EOF; gave up after waiting 1003.0 ms, no EOF; gave up after waiting 1003.0 ms"
        );
        let fixed = views(&[Some(120), Some(250)], 0);
        assert_eq!(describe(&fixed), "EOF after 0.12 ms, EOF after 0.25 ms");
        let text = meaning(&buggy, &fixed);
        assert!(text.starts_with("With the parent's copy open, 2 of 2 client(s) saw no end-of-file in up to 1003 ms of waiting"), "{text}");
        assert!(
            text.ends_with("all 2 client(s) saw end-of-file, the slowest after 250 µs."),
            "{text}"
        );
    }

    #[test]
    fn unexpected_outcomes_are_said_as_such() {
        let text = meaning(&views(&[Some(100)], 0), &views(&[None, Some(100)], 1_000));
        assert!(
            text.starts_with(
                "Every one of the 1 client(s) saw end-of-file even with the parent's copy open"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("only 1 of 2 client(s) saw end-of-file."),
            "{text}"
        );
    }
}
