//! Pinning for the one-connection lesson: the client's threads and every thread of the
//! server (and of its children) on chosen CPUs, by sched_setaffinity, and back.
//!
//! The client is pinned by pinning the thread that starts the bench: the engine's threads
//! inherit its mask. The server is pinned thread by thread (`/proc/PID/task/*`, children
//! included); threads and children it creates later inherit the mask of their creator.

use std::fs;
use std::io;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use super::Placement;

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..CpuSet::count())
        .filter(|cpu| set.is_set(*cpu).unwrap_or(false))
        .collect()
}

/// The client's CPU and the server's for `placement`, from the allowed CPUs; `None` when
/// there are not enough of them (different CPUs needs two).
pub fn cpus_for(placement: Placement, allowed: &[usize]) -> Option<(usize, usize)> {
    match placement {
        Placement::SameCpu => allowed.first().map(|c| (*c, *c)),
        Placement::DifferentCpus => match allowed {
            [a, b, ..] => Some((*a, *b)),
            _ => None,
        },
    }
}

fn set_of(cpus: &[usize]) -> io::Result<CpuSet> {
    let mut set = CpuSet::new();
    for cpu in cpus {
        set.set(*cpu).map_err(io::Error::from)?;
    }
    Ok(set)
}

/// Pins the calling thread to `cpus`.
pub fn pin_this_thread(cpus: &[usize]) -> io::Result<()> {
    sched_setaffinity(Pid::from_raw(0), &set_of(cpus)?).map_err(io::Error::from)
}

/// Pins every thread of process `pid` and of its children to `cpus`. A thread that ends
/// between the listing and the call is skipped.
pub fn pin_process(pid: u32, cpus: &[usize]) -> io::Result<()> {
    let set = set_of(cpus)?;
    let mut pids = vec![pid];
    pids.extend(super::procfs::children(pid));
    for p in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            else {
                continue;
            };
            match sched_setaffinity(Pid::from_raw(tid), &set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_take_one_cpu_or_two_distinct_ones() {
        assert_eq!(cpus_for(Placement::SameCpu, &[3, 5]), Some((3, 3)));
        assert_eq!(cpus_for(Placement::DifferentCpus, &[3, 5]), Some((3, 5)));
        assert_eq!(cpus_for(Placement::DifferentCpus, &[3]), None);
        assert_eq!(cpus_for(Placement::SameCpu, &[]), None);
    }

    /// The CPUs the kernel lets task `tid` of `pid` run on, from /proc.
    fn cpus_allowed(pid: u32, tid: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn a_pinned_process_has_every_thread_on_the_cpu_and_is_restored() {
        // A child with several threads (this test binary's own harness is not touched):
        // `sh -c 'sleep 30 & sleep 30 & wait'` has children, whose tasks are pinned too.
        let allowed = allowed_cpus();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id();
        // Wait (bounded) until both sleeps are the shell's children.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while super::super::procfs::children(pid).len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the shell did not fork"
            );
            std::thread::yield_now();
        }
        let last = *allowed.last().unwrap();
        pin_process(pid, &[last]).unwrap();
        let mut seen = 0;
        for p in std::iter::once(pid).chain(super::super::procfs::children(pid)) {
            for task in std::fs::read_dir(format!("/proc/{p}/task")).unwrap() {
                let tid = task.unwrap().file_name().into_string().unwrap();
                assert_eq!(cpus_allowed(p, &tid), last.to_string(), "task {tid} of {p}");
                seen += 1;
            }
        }
        assert!(seen >= 3, "{seen} tasks");
        pin_process(pid, &allowed).unwrap();
        let everything = cpus_allowed(pid, &pid.to_string());
        // The sleeps first (by their ids), then the shell: nothing outlives the test.
        for sleeper in super::super::procfs::children(pid) {
            let _ = nix::sys::signal::kill(
                Pid::from_raw(sleeper as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        if allowed.len() > 1 {
            assert_ne!(everything, last.to_string());
        }
    }

    /// "0-1,3" as [0, 1, 3].
    fn cpu_list(text: &str) -> Vec<usize> {
        let mut cpus = Vec::new();
        for part in text.split(',') {
            match part.split_once('-') {
                Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
                None => cpus.push(part.parse().unwrap()),
            }
        }
        cpus
    }

    #[test]
    fn allowed_cpus_are_the_kernels_list() {
        let handle = std::thread::spawn(|| {
            let tid = nix::unistd::gettid().as_raw().to_string();
            let pid = std::process::id();
            let before = (allowed_cpus(), cpu_list(&cpus_allowed(pid, &tid)));
            // Pinned to its last CPU, the thread reads that CPU alone, as the kernel says.
            let last = *before.1.last().unwrap();
            pin_this_thread(&[last]).unwrap();
            let after = (allowed_cpus(), cpu_list(&cpus_allowed(pid, &tid)));
            (before, after, last)
        });
        let ((ours, kernels), (pinned, kernel_pinned), last) = handle.join().unwrap();
        assert_eq!(ours, kernels);
        assert_eq!(pinned, [last]);
        assert_eq!(kernel_pinned, [last]);
    }

    #[test]
    fn a_pinned_thread_reads_back_its_mask() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        let handle = std::thread::spawn(move || {
            pin_this_thread(&allowed[..1]).unwrap();
            let now = allowed_cpus();
            pin_this_thread(&allowed).unwrap();
            (now, allowed_cpus(), allowed)
        });
        let (pinned, restored, allowed) = handle.join().unwrap();
        assert_eq!(pinned, allowed[..1].to_vec());
        assert_eq!(restored, allowed);
    }
}
