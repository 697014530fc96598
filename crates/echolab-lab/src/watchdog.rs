//! Runs an experiment body in a child process under a deadline, and turns a hang into data.
//!
//! The child is a re-execution of the current binary (`lab --child NAME`), in its own
//! process group, so that it starts single-threaded (free to fork) and so that one
//! `killpg` ends it and every process it forked. The lab marks itself a child subreaper:
//! the grandchildren orphaned by that kill are re-parented to us, and [`WatchedChild`]
//! reaps them, so no experiment leaves a zombie behind. Its `Drop` kills and reaps too:
//! no child outlives its experiment, whatever path the experiment takes out.
//!
//! A lab stopped by SIGINT or SIGTERM (Ctrl-C) runs no `Drop`: [`stop_on_signal`] kills
//! every live child's group first, so that none (a server, a child deadlocked on purpose)
//! outlives the lab.
//!
//! Before killing a hung child the watchdog reads what Linux shows of it, the lecture's
//! `gdb bt` in /proc form: each thread's state, its wait channel (`futex_wait...` for a
//! lock) and, where readable, its kernel stack.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::experiment::Deadline;

/// The process groups of the children alive now (each child leads its own), for
/// [`stop_on_signal`]. Held while a child starts, so that none starts unseen.
static LIVE_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

fn live_groups() -> std::sync::MutexGuard<'static, Vec<i32>> {
    LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes SIGINT and SIGTERM kill every watched child's group, then end the lab with exit
/// status 130 (interrupted). A handler (signal-hook's) wakes a thread of its own: no
/// signal is blocked, so children inherit no mask (a blocked SIGTERM would reach an
/// exec'd `serve` still blocked).
pub fn stop_on_signal() -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("lab-signals".to_string())
        .spawn(move || {
            let Some(signal) = signals.forever().next() else {
                return;
            };
            // Held to the exit: no child starts after the kill.
            let groups = live_groups();
            for &pgid in groups.iter() {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            echolab_cli::say!(
                "echolab lab: interrupted ({name}): stopped {}",
                echolab_cli::counted(groups.len(), "child process group")
            );
            std::process::exit(130);
        })?;
    Ok(())
}

/// A line the child printed, and when it arrived.
#[derive(Debug, Clone)]
pub struct Line {
    pub text: String,
    pub at: Instant,
}

/// How a watched child ended.
#[derive(Debug, Clone)]
pub enum End {
    /// It exited by itself (with this status).
    Exited(ExitStatus),
    /// It was still running at the deadline, or printed nothing for the stall interval;
    /// the watchdog read its state and killed it.
    Hung {
        /// How long it had run when the watchdog fired.
        after: Duration,
        /// True when it was a stall (no output for a while), false for the deadline.
        stalled: bool,
        state: ProcState,
    },
}

impl End {
    pub fn is_hang(&self) -> bool {
        matches!(self, End::Hung { .. })
    }
}

/// What /proc showed of a process and its threads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProcState {
    pub pid: i32,
    /// One entry per thread: `tid state wchan`, then its kernel stack if readable.
    pub threads: Vec<ThreadState>,
    /// Its child processes still in the process table (exited but not reaped: zombies,
    /// state `Z`), as (pid, state letter).
    pub children: Vec<(i32, String)>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ThreadState {
    pub tid: i32,
    /// The state letter of /proc/PID/task/TID/stat: R running, S sleeping, Z zombie...
    pub state: String,
    /// The kernel function the thread sleeps in, `0` when running.
    pub wchan: String,
    /// /proc/PID/task/TID/stack, first frames (empty when the kernel hides it).
    pub stack: Vec<String>,
}

impl ProcState {
    /// Reads /proc for `pid`; missing pieces stay empty.
    pub fn read(pid: i32) -> ProcState {
        let mut threads = Vec::new();
        let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|dir| {
                dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        tids.sort_unstable();
        for tid in tids.into_iter().take(16) {
            let base = format!("/proc/{pid}/task/{tid}");
            let stat = std::fs::read_to_string(format!("{base}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|idx| stat[idx + 1..].split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            let wchan = std::fs::read_to_string(format!("{base}/wchan")).unwrap_or_default();
            let stack = std::fs::read_to_string(format!("{base}/stack"))
                .unwrap_or_default()
                .lines()
                .take(8)
                .map(|line| line.split_whitespace().last().unwrap_or("").to_string())
                .collect();
            threads.push(ThreadState {
                tid,
                state,
                wchan: wchan.trim().to_string(),
                stack,
            });
        }
        ProcState {
            pid,
            threads,
            children: children_of(pid),
        }
    }

    /// Children in state `Z`: exited, not yet reaped by this process.
    pub fn zombie_children(&self) -> usize {
        self.children
            .iter()
            .filter(|(_, state)| state == "Z")
            .count()
    }

    /// One line: `tid 123 S futex_wait_queue [futex_wait_queue <- ...]` per thread.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .threads
            .iter()
            .map(|thread| {
                let mut part = format!(
                    "thread {} state {} wchan {}",
                    thread.tid, thread.state, thread.wchan
                );
                if !thread.stack.is_empty() {
                    part.push_str(&format!(" stack [{}]", thread.stack.join(" <- ")));
                }
                part
            })
            .collect();
        if parts.is_empty() {
            format!("pid {} (gone before it could be read)", self.pid)
        } else {
            parts.join("; ")
        }
    }
}

/// The processes whose parent is `pid`, with their state letter, from /proc/*/stat.
pub fn children_of(pid: i32) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // After the command name in parentheses: state, then the parent's pid.
        let Some(rest) = stat.rfind(')').map(|idx| &stat[idx + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if ppid.parse() == Ok(pid) {
            children.push((child, state.to_string()));
        }
    }
    children.sort_unstable();
    children
}

/// A child process in its own process group, whose stdout arrives line by line.
#[derive(Debug)]
pub struct WatchedChild {
    child: Child,
    started: Instant,
    lines: Receiver<Line>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
    /// True once the child and its group are dead and reaped.
    finished: bool,
}

impl WatchedChild {
    /// Starts `exe args...` with stdin closed, stdout and stderr captured; stdout arrives
    /// line by line.
    pub fn spawn(exe: &Path, args: &[String]) -> io::Result<WatchedChild> {
        WatchedChild::spawn_reading(exe, args, false, &[])
    }

    /// Like [`WatchedChild::spawn`], with extra environment variables for the child.
    pub fn spawn_with_env(
        exe: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> io::Result<WatchedChild> {
        WatchedChild::spawn_reading(exe, args, false, env)
    }

    /// Like [`WatchedChild::spawn`], but with `lines_from_stderr` the lines come from
    /// stderr (a server announces its address there) and stdout is collected instead; `env`
    /// adds environment variables.
    pub fn spawn_reading(
        exe: &Path,
        args: &[String],
        lines_from_stderr: bool,
        env: &[(&str, &str)],
    ) -> io::Result<WatchedChild> {
        // Orphaned grandchildren come to us, so that we can reap them (see the module doc).
        // Failing to become a subreaper only means the init process reaps them instead.
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let mut live = live_groups();
        let mut child = Command::new(exe)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|err| {
                io::Error::new(err.kind(), format!("cannot start {}: {err}", exe.display()))
            })?;
        live.push(child.id() as i32);
        drop(live);
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (stdout, mut stderr): (Box<dyn Read + Send>, Box<dyn Read + Send>) =
            if lines_from_stderr {
                (Box::new(stderr), Box::new(stdout))
            } else {
                (Box::new(stdout), Box::new(stderr))
            };
        let (sender, lines) = mpsc::channel();
        let stdout_reader = std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines() {
                let Ok(text) = text else { break };
                if sender
                    .send(Line {
                        text,
                        at: Instant::now(),
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(WatchedChild {
            child,
            started: Instant::now(),
            lines,
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
            finished: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line of stdout, waiting at most until `deadline`; `None` at the deadline
    /// or at end of output.
    pub fn next_line(&mut self, deadline: Deadline) -> Option<Line> {
        self.lines.recv_timeout(deadline.remaining()).ok()
    }

    /// Collects every line until the child exits, the deadline passes, or (with `stall`)
    /// no line arrives for that long. Kills and reaps the group in every case.
    pub fn wait(mut self, deadline: Deadline, stall: Option<Duration>) -> io::Result<Finished> {
        let mut lines = Vec::new();
        let mut last_output = Instant::now();
        let end = loop {
            if let Some(status) = self.child.try_wait()? {
                break End::Exited(status);
            }
            let stalled = stall.is_some_and(|stall| last_output.elapsed() >= stall);
            if deadline.passed() || stalled {
                let state = ProcState::read(self.pid());
                // It may have exited between the two looks; then it did not hang.
                if let Some(status) = self.child.try_wait()? {
                    break End::Exited(status);
                }
                break End::Hung {
                    after: self.started.elapsed(),
                    stalled,
                    state,
                };
            }
            let poll = Duration::from_millis(5).min(deadline.remaining());
            match self.lines.recv_timeout(poll) {
                Ok(line) => {
                    last_output = line.at;
                    lines.push(line);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    if let Some(status) = self.child.try_wait()? {
                        break End::Exited(status);
                    }
                    if self.lines_disconnected() {
                        // Output closed but still running: wait without spinning hot.
                        std::thread::sleep(poll);
                    }
                }
            }
        };
        let stderr = self.kill_and_reap();
        lines.extend(self.lines.try_iter());
        Ok(Finished { end, lines, stderr })
    }

    fn lines_disconnected(&self) -> bool {
        self.stdout_reader
            .as_ref()
            .is_none_or(|reader| reader.is_finished())
    }

    /// Kills the whole process group, reaps the child and every orphan of the group, joins
    /// the readers, and returns what the child wrote on stderr.
    pub fn kill_and_reap(&mut self) -> String {
        if self.finished {
            return String::new();
        }
        self.finished = true;
        let pgid = Pid::from_raw(self.pid());
        // ESRCH (the group is already gone) is fine.
        let _ = killpg(pgid, Signal::SIGKILL);
        // Out of the list before the group is reaped: once it is, its id may be reused,
        // and `stop_on_signal` must never kill a stranger's group.
        live_groups().retain(|&group| group != pgid.as_raw());
        let _ = self.child.wait();
        reap_group(pgid);
        if let Some(reader) = self.stdout_reader.take() {
            let _ = reader.join();
        }
        self.stderr_reader
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for WatchedChild {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Reaps every process of group `pgid` that is (or becomes, by re-parenting) our child.
fn reap_group(pgid: Pid) {
    let group = Pid::from_raw(-pgid.as_raw());
    let give_up = Instant::now() + Duration::from_secs(5);
    // Blocking waits: every member was sent SIGKILL, so each wait returns soon; ECHILD
    // means none is left. The bound guards against a process stuck in the kernel.
    while Instant::now() < give_up {
        match waitpid(group, None) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

/// What a watched child left: how it ended, its stdout lines, its stderr.
#[derive(Debug)]
pub struct Finished {
    pub end: End,
    pub lines: Vec<Line>,
    pub stderr: String,
}

impl Finished {
    /// The JSON object of the `RESULT {...}` line the child printed, if any.
    pub fn result(&self) -> Option<serde_json::Value> {
        self.lines
            .iter()
            .rev()
            .find_map(|line| line.text.strip_prefix(crate::child::RESULT_PREFIX))
            .and_then(|text| serde_json::from_str(text).ok())
    }

    /// The result, or an error saying how the child ended instead.
    pub fn expect_result(&self, what: &str) -> io::Result<serde_json::Value> {
        if let Some(result) = self.result() {
            return Ok(result);
        }
        let how = match &self.end {
            End::Exited(status) => format!("exited with {status}"),
            End::Hung { after, .. } => format!("hung after {:.1} s", after.as_secs_f64()),
        };
        Err(io::Error::other(format!(
            "{what}: the child {how} without a result; its stderr: {}",
            self.stderr.trim()
        )))
    }
}

/// The arguments that make this binary run experiment body `name` with `config`.
pub fn child_args(name: &str, config: &serde_json::Value) -> Vec<String> {
    vec![
        "lab".to_string(),
        "--child".to_string(),
        name.to_string(),
        "--child-config".to_string(),
        config.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machinery, on a process that blocks for sure: the watchdog fires at the
    /// deadline, reports a hang with the process's state, and leaves no process behind.
    #[test]
    fn watchdog_fires_on_a_blocked_child() {
        let child = WatchedChild::spawn(Path::new("sleep"), &["600".to_string()]).unwrap();
        let pid = child.pid();
        let finished = child
            .wait(Deadline::after(Duration::from_millis(300)), None)
            .unwrap();
        match &finished.end {
            End::Hung { stalled, state, .. } => {
                assert!(!stalled);
                assert_eq!(state.pid, pid);
                assert_eq!(state.threads.len(), 1, "sleep has one thread: {state:?}");
                assert_eq!(state.threads[0].state, "S");
                assert!(state.children.is_empty(), "{state:?}");
            }
            other => panic!("expected a hang, got {other:?}"),
        }
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the child was reaped"
        );
    }

    /// A child that has exited and is not yet reaped is listed as a zombie of its parent
    /// (this process): `waitid(WNOWAIT)` waits for the exit without reaping, so the state
    /// is certain, not timing.
    #[test]
    fn children_of_finds_a_zombie() {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        waitid(
            Id::Pid(Pid::from_raw(pid)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        )
        .unwrap();
        let children = children_of(std::process::id() as i32);
        assert!(children.contains(&(pid, "Z".to_string())), "{children:?}");
        let state = ProcState {
            pid: 1,
            threads: Vec::new(),
            children: vec![
                (2, "Z".to_string()),
                (3, "S".to_string()),
                (4, "Z".to_string()),
            ],
        };
        assert_eq!(state.zombie_children(), 2);
        child.wait().unwrap();
        assert!(!children_of(std::process::id() as i32).contains(&(pid, "Z".to_string())));
    }

    #[test]
    fn stall_detection_fires_when_output_stops() {
        let script = "echo one; echo two; exec sleep 600".to_string();
        let child = WatchedChild::spawn(Path::new("sh"), &["-c".to_string(), script]).unwrap();
        let finished = child
            .wait(
                Deadline::after(Duration::from_secs(20)),
                Some(Duration::from_millis(200)),
            )
            .unwrap();
        assert!(
            matches!(finished.end, End::Hung { stalled: true, .. }),
            "{:?}",
            finished.end
        );
        let texts: Vec<_> = finished
            .lines
            .iter()
            .map(|line| line.text.as_str())
            .collect();
        assert_eq!(texts, ["one", "two"]);
    }

    #[test]
    fn a_child_that_exits_is_not_a_hang() {
        let child = WatchedChild::spawn(
            Path::new("sh"),
            &["-c".to_string(), "echo 'RESULT {\"x\":1}'".to_string()],
        )
        .unwrap();
        let finished = child
            .wait(Deadline::after(Duration::from_secs(20)), None)
            .unwrap();
        assert!(matches!(finished.end, End::Exited(status) if status.success()));
        assert_eq!(finished.result().unwrap()["x"], 1);
    }
}
