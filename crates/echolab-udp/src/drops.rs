//! The bench's own receive-queue drops: datagrams the kernel threw away because one of
//! the bench's sockets had no room for them (its `SO_RCVBUF` full), read from the `drops`
//! column Linux keeps per socket in `/proc/net/udp` and `/proc/net/udp6`, found by the
//! socket's inode. An echo dropped there was sent by the server and counts as lost, but
//! the loss is the bench's, and the report says so.

use std::collections::HashSet;
use std::os::fd::AsRawFd;

/// The inode of the socket `fd` (what `/proc/net/udp` lists), or `None` if it cannot be
/// read (no `/proc`).
pub fn socket_inode(fd: &impl AsRawFd) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The drops of the sockets with these inodes, summed over `/proc/net/udp` and
/// `/proc/net/udp6`; `None` when neither can be read.
pub fn drops(inodes: &[u64]) -> Option<u64> {
    let wanted: HashSet<u64> = inodes.iter().copied().collect();
    let mut total = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            *total.get_or_insert(0) += parse(&text, &wanted);
        }
    }
    total
}

/// Sums the `drops` column (the 13th) of the rows of a `/proc/net/udp` table whose
/// `inode` (the 10th) is in `wanted`. The header row and malformed rows count nothing.
fn parse(table: &str, wanted: &HashSet<u64>) -> u64 {
    table
        .lines()
        .filter_map(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let drops: u64 = fields.get(12)?.parse().ok()?;
            wanted.contains(&inode).then_some(drops)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drops_of_the_sockets_asked_for_are_summed() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  \
             276: 0100007F:DB18 0100007F:B240 01 00000000:00000000 00:00000000 00000000     0        0 97574516 2 000000005fb5340c 7\n  \
             802: 0100007F:9D26 0100007F:B240 01 00000000:00000340 00:00000000 00000000     0        0 97574517 2 0000000077120cfb 5\n  \
             803: 0100007F:9D27 0100007F:B240 01 00000000:00000340 00:00000000 00000000     0        0 11 2 0000000077120cfb 100\n  \
             garbage\n";
        let wanted: HashSet<u64> = [97_574_516, 97_574_517, 42].into_iter().collect();
        assert_eq!(parse(table, &wanted), 12);
        assert_eq!(parse(table, &HashSet::new()), 0);
    }

    #[test]
    fn a_full_receive_queue_shows_in_its_sockets_drops() {
        // A socket with the smallest receive queue, sent 20 datagrams of 1000 bytes that
        // nobody reads: the kernel keeps two or three and drops the rest.
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&receiver)
            .set_recv_buffer_size(1)
            .unwrap();
        let Some(inode) = socket_inode(&receiver) else {
            eprintln!("SKIPPED: no /proc/self/fd here");
            return;
        };
        let before = drops(&[inode]);
        let Some(before) = before else {
            eprintln!("SKIPPED: no /proc/net/udp here");
            return;
        };
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..20 {
            sender
                .send_to(&[7u8; 1000], receiver.local_addr().unwrap())
                .unwrap();
        }
        let after = drops(&[inode]).unwrap();
        assert!(after - before >= 10, "{before} -> {after}");
        // Another socket's drops are not these.
        let other = socket_inode(&sender).unwrap();
        assert_eq!(drops(&[other]), Some(0));
    }
}
