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
