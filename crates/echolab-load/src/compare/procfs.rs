//! What a server costs, read from /proc: CPU time, memory, threads and processes, summed
//! over the server and its child processes (the `process` model's connections).
//!
//! CPU is `utime + stime` of every process, plus `cutime + cstime` of the server (the
//! children it has already reaped), so a delta over a run counts children that were born
//! and died within it. Memory is PSS (proportional set size, `/proc/PID/smaps_rollup`):
//! pages shared between a forked parent and its children are split between them instead of
//! counted once per process, as RSS would.

use std::collections::HashSet;
use std::fs;
use std::io;

/// One reading of a server's costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProcStats {
    /// CPU seconds used so far by the server, its live children and its reaped children.
    pub cpu_secs: f64,
    /// Resident memory, summed over the processes, in KiB.
    pub rss_kib: u64,
    /// Proportional memory, summed over the processes, in KiB.
    pub pss_kib: u64,
    /// Threads, summed over the processes.
    pub threads: u64,
    /// The server and its live children.
    pub processes: u64,
}

/// Reads the costs of process `pid` and its children.
pub fn read(pid: u32) -> io::Result<ProcStats> {
    let ticks = clock_ticks();
    let main = read_stat(pid)?;
    let mut stats = ProcStats {
        cpu_secs: (main.utime + main.stime + main.cutime + main.cstime) as f64 / ticks,
        rss_kib: status_kib(pid, "VmRSS:").unwrap_or(0),
        pss_kib: pss_kib(pid).unwrap_or(0),
        threads: main.threads,
        processes: 1,
    };
    for child in children(pid) {
        // A child may exit between the listing and the read: skip it.
        let Ok(stat) = read_stat(child) else { continue };
        stats.cpu_secs += (stat.utime + stat.stime) as f64 / ticks;
        stats.rss_kib += status_kib(child, "VmRSS:").unwrap_or(0);
        stats.pss_kib += pss_kib(child).unwrap_or(0);
        stats.threads += stat.threads;
        stats.processes += 1;
    }
    Ok(stats)
}

/// The inodes of the sockets process `pid` has open (its descriptors that link to
/// `socket:[N]`): cheap, a readlink per descriptor.
pub fn socket_inodes(pid: u32) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor may close between the listing and the readlink: skip it.
        let Ok(target) = fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = socket_inode(&target.to_string_lossy()) {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// How many of `sockets` (inodes from [`socket_inodes`]) are TCP connections: in any
/// state but LISTEN (established, or closed by the peer and not yet by the process).
/// Listeners, pipes, epoll and io_uring descriptors are not counted, so the answer for a
/// server at rest is 0 whatever it opened at start-up. Costly when the machine holds many
/// sockets (the whole namespace's /proc/net/tcp is read, TIME_WAIT entries included).
pub fn tcp_conns_among(pid: u32, sockets: &HashSet<u64>) -> u64 {
    if sockets.is_empty() {
        return 0;
    }
    let mut conns = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        conns += text
            .lines()
            .skip(1)
            .filter_map(tcp_entry)
            .filter(|(state, inode)| *state != TCP_LISTEN && sockets.contains(inode))
            .count() as u64;
    }
    conns
}

/// The state code /proc/net/tcp gives a listening socket.
const TCP_LISTEN: u8 = 0x0A;

/// The inode in a descriptor link `socket:[12345]`.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The state and inode of one line of /proc/net/tcp:
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`.
fn tcp_entry(line: &str) -> Option<(u8, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some((state, inode))
}

/// The server's live children (the `process` model's connections).
pub fn child_count(pid: u32) -> u64 {
    children(pid).len() as u64
}

/// The fields of /proc/PID/stat this module uses.
#[derive(Debug, Clone, Copy)]
struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
    threads: u64,
}

fn read_stat(pid: u32) -> io::Result<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat"))?).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })
}

/// Parses a /proc/PID/stat line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: field(4)? as u32,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
        threads: field(20)?,
    })
}

/// The live children of `pid`, found by scanning /proc for processes whose parent it is
/// (works whatever the kernel's CONFIG_PROC_CHILDREN).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| candidate != pid && read_stat(candidate).is_ok_and(|s| s.ppid == pid))
        .collect()
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, key)
}

fn pss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&text, "Pss:")
}

/// The number on the line starting with `key` in a "Key:   1234 kB" listing.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Clock ticks per second, the unit of /proc's CPU times.
fn clock_ticks() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_a_strange_name_parses() {
        let line = "1234 (a (b) c) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 3 4 20 0 9 0 \
                    5000 1000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.ppid, 77);
        assert_eq!(
            (stat.utime, stat.stime, stat.cutime, stat.cstime),
            (250, 50, 3, 4)
        );
        assert_eq!(stat.threads, 9);
    }

    #[test]
    fn connections_are_told_from_listeners() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pid = std::process::id();
        // Other tests of this binary may hold connections meanwhile: count relative to
        // what this one adds, and only in the direction that is certain.
        let conn = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let sockets = socket_inodes(pid).unwrap();
        assert!(sockets.len() >= 3, "the listener and both ends");
        assert!(tcp_conns_among(pid, &sockets) >= 2);
        assert_eq!(tcp_conns_among(pid, &HashSet::new()), 0);
        assert!(socket_inodes(u32::MAX).is_err());
        drop((conn, accepted));
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("anon_inode:[io_uring]"), None);
        let line = "   0: 0100007F:1B5F 00000000:0000 0A 00000000:00000000 00:00000000 \
                    00000000     0        0 98765 1 0000000000000000 100 0 0 10 0";
        assert_eq!(tcp_entry(line), Some((TCP_LISTEN, 98765)));
    }

    #[test]
    fn this_process_can_be_read() {
        let stats = read(std::process::id()).unwrap();
        assert!(stats.rss_kib > 0);
        assert!(stats.threads >= 1);
        assert_eq!(
            kib_field("Name: x\nVmRSS:\t  1234 kB\n", "VmRSS:"),
            Some(1234)
        );
    }
}
