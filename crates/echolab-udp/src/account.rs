//! The UDP bench's accounting, pure: given when each datagram of one socket was sent and
//! what came back when, it says what was lost, late, duplicated, reordered or corrupt,
//! and the interarrival jitter of RFC 3550 §6.4.1. No sockets and no clock: every time is
//! a [`Duration`] since the run began, passed in, so each rule is tested by hand.
//!
//! The rules, for one socket ([`Flow`]):
//! - An echo is **on time** when it arrives within the timeout of its intended send time;
//!   it is recorded with its latency (from the intended send time: the open loop's
//!   schedule, no coordinated omission).
//! - A datagram without an echo for longer than the timeout is **lost**. An echo for a
//!   lost datagram is **late** (it stays counted as lost: late ⊆ lost).
//! - An intact echo of a datagram already echoed is a **duplicate**.
//! - An on-time echo whose sequence number is below the highest one already echoed is
//!   **reordered**; its distance is the difference (the largest is reported).
//! - An echo whose bytes differ from what was sent is **corrupt**. If it names a datagram
//!   still awaited, that datagram is resolved (not lost): the server answered, wrongly.
//! - **Jitter**: for consecutive on-time echoes i−1, i with transit times T = arrival −
//!   actual send, J += (|T_i − T_{i−1}| − J) / 16.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How many lost sequence numbers a flow remembers, to tell a late echo from a duplicate.
/// Beyond it the oldest is forgotten, and its late echo would count as a duplicate.
pub const LOST_MEMORY: usize = 65_536;

/// The counts of one flow, or of many added together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Datagrams sent.
    pub sent: u64,
    /// On-time, intact echoes.
    pub echoed: u64,
    /// Datagrams with no echo within the timeout (including the late ones).
    pub lost: u64,
    /// Echoes that arrived after their datagram was counted lost.
    pub late: u64,
    /// Intact echoes of a datagram already echoed.
    pub duplicates: u64,
    /// On-time echoes that arrived after a higher sequence number's.
    pub reordered: u64,
    /// The largest reordering distance, in sequence numbers.
    pub max_reorder_distance: u64,
    /// Echoes whose bytes differ from the datagram sent.
    pub corrupt: u64,
    /// Those corrupt echoes that named a datagram still awaited, which they resolve (the
    /// server answered it, wrongly); the others (too short, another socket's id, a
    /// datagram never sent or already resolved) resolve none.
    pub corrupt_answers: u64,
    /// Open loop: datagrams whose intended send time fell in the sending window but that
    /// never left (the window ended first, or the send failed).
    pub unsent: u64,
    /// Of `unsent`, the slots whose send the kernel refused (ECONNREFUSED from an earlier
    /// ICMP error, ENOBUFS, EPERM from a firewall); the others were still due when the
    /// window ended (the generator fell behind).
    pub refused_sends: u64,
    /// Of `lost`, the datagrams still awaited when the run ended before their timeout
    /// (only an interrupted run ends so: it waits a short grace, not the whole timeout).
    pub given_up: u64,
    /// Datagrams the bench's own sockets dropped, their receive queues full (the kernel's
    /// per-socket count): a dropped echo is counted in `lost`, but the server sent it; a
    /// dropped duplicate or late echo is counted here too.
    pub bench_drops: u64,
}

impl Counts {
    /// Adds `other` (the largest distance is the larger of the two).
    pub fn add(&mut self, other: &Counts) {
        self.sent += other.sent;
        self.echoed += other.echoed;
        self.lost += other.lost;
        self.late += other.late;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.max_reorder_distance = self.max_reorder_distance.max(other.max_reorder_distance);
        self.corrupt += other.corrupt;
        self.corrupt_answers += other.corrupt_answers;
        self.unsent += other.unsent;
        self.refused_sends += other.refused_sends;
        self.given_up += other.given_up;
        self.bench_drops += other.bench_drops;
    }

    /// Every datagram meant to be sent: sent plus never sent. At the end of a run (nothing
    /// outstanding) this is `echoed + lost + corrupt_answers + unsent`.
    pub fn intended(&self) -> u64 {
        self.sent + self.unsent
    }

    /// Lost datagrams as a fraction of those resolved (echoed, lost or answered with a
    /// corrupt echo); 0 when nothing was resolved. A corrupt echo that resolved no datagram
    /// is not one of ours answered, so it is not counted here (8 datagrams sent, all lost,
    /// 8 empty replies: 100% loss, not 50%).
    pub fn loss_ratio(&self) -> f64 {
        let resolved = self.echoed + self.lost + self.corrupt_answers;
        if resolved == 0 {
            0.0
        } else {
            self.lost as f64 / resolved as f64
        }
    }
}

/// What one echo was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Echo {
    /// On time; latency from the intended send time.
    OnTime { latency: Duration },
    /// After its datagram was counted lost.
    Late,
    /// A second intact echo of a datagram.
    Duplicate,
    /// Bytes differ, or the sequence number was never sent.
    Corrupt,
}

/// When a datagram was meant to go and when it went.
#[derive(Debug, Clone, Copy)]
struct Sent {
    intended: Duration,
    actual: Duration,
}

/// RFC 3550 §6.4.1 interarrival jitter, in nanoseconds as a float (the RFC keeps it in
/// timestamp units; the 1/16 gain is its).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Jitter {
    /// The last transit time, in nanoseconds (signed: only differences matter).
    last_transit: Option<f64>,
    /// The estimate J, in nanoseconds.
    value: f64,
}

impl Jitter {
    /// Feeds one packet's transit time (arrival − send).
    pub fn record(&mut self, transit: Duration) {
        let transit = transit.as_nanos() as f64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            self.value += (d - self.value) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// The current estimate.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.value.round() as u64)
    }
}

/// The accounting of one socket's datagrams.
#[derive(Debug)]
pub struct Flow {
    timeout: Duration,
    next_seq: u64,
    /// Datagrams awaiting their echo, by sequence number.
    outstanding: BTreeMap<u64, Sent>,
    /// Datagrams counted lost (at most [`LOST_MEMORY`], the newest kept).
    lost: BTreeSet<u64>,
    /// The highest sequence number echoed on time.
    highest: Option<u64>,
    jitter: Jitter,
    counts: Counts,
    /// The last send or on-time echo, from the start of the run.
    last_active: Duration,
}

impl Flow {
    /// A flow whose echoes are lost after `timeout`.
    pub fn new(timeout: Duration) -> Flow {
        Flow {
            timeout,
            next_seq: 0,
            outstanding: BTreeMap::new(),
            lost: BTreeSet::new(),
            highest: None,
            jitter: Jitter::default(),
            counts: Counts::default(),
            last_active: Duration::ZERO,
        }
    }

    /// Records a datagram sent at `actual`, scheduled for `intended`; returns its
    /// sequence number (0, 1, 2, ...).
    pub fn sent(&mut self, intended: Duration, actual: Duration) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outstanding.insert(seq, Sent { intended, actual });
        self.counts.sent += 1;
        self.last_active = self.last_active.max(actual);
        seq
    }

    /// Records an echo of `seq` arriving at `now`; `intact` says whether its bytes were
    /// the ones sent.
    pub fn echo(&mut self, seq: u64, intact: bool, now: Duration) -> Echo {
        if !intact {
            // Answered, wrongly: whatever it names is resolved.
            if self.outstanding.remove(&seq).is_some() {
                self.counts.corrupt_answers += 1;
            }
            self.counts.corrupt += 1;
            return Echo::Corrupt;
        }
        if let Some(sent) = self.outstanding.remove(&seq) {
            let latency = now.saturating_sub(sent.intended);
            if latency > self.timeout {
                // Its deadline passed before anyone looked: lost, and late.
                self.mark_lost(seq);
                self.lost.remove(&seq);
                self.counts.late += 1;
                return Echo::Late;
            }
            if let Some(highest) = self.highest {
                // `<` and `<=` decide alike here: `highest` was echoed, so it is no
                // longer outstanding and cannot equal `seq` (a mutant that survives).
                if seq < highest {
                    self.counts.reordered += 1;
                    self.counts.max_reorder_distance =
                        self.counts.max_reorder_distance.max(highest - seq);
                }
            }
            self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
            self.jitter.record(now.saturating_sub(sent.actual));
            self.counts.echoed += 1;
            self.last_active = self.last_active.max(now);
            return Echo::OnTime { latency };
        }
        if self.lost.remove(&seq) {
            self.counts.late += 1;
            return Echo::Late;
        }
        if seq < self.next_seq {
            self.counts.duplicates += 1;
            Echo::Duplicate
        } else {
            // A sequence number never sent: not an echo of ours.
            self.counts.corrupt += 1;
            Echo::Corrupt
        }
    }

    /// Counts every datagram awaited for longer than the timeout at `now` as lost;
    /// returns how many.
    pub fn expire(&mut self, now: Duration) -> u64 {
        let mut expired = Vec::new();
        for (seq, sent) in &self.outstanding {
            if now.saturating_sub(sent.intended) > self.timeout {
                expired.push(*seq);
            }
        }
        for seq in &expired {
            self.outstanding.remove(seq);
            self.mark_lost(*seq);
        }
        expired.len() as u64
    }

    /// Counts every datagram still awaited as lost (the end of a run), and as given up
    /// before its timeout; returns how many.
    pub fn give_up(&mut self) -> u64 {
        let rest: Vec<u64> = self.outstanding.keys().copied().collect();
        self.outstanding.clear();
        for seq in &rest {
            self.mark_lost(*seq);
        }
        self.counts.given_up += rest.len() as u64;
        rest.len() as u64
    }

    fn mark_lost(&mut self, seq: u64) {
        self.counts.lost += 1;
        self.lost.insert(seq);
        if self.lost.len() > LOST_MEMORY {
            self.lost.pop_first();
        }
    }

    /// Counts `n` datagrams of the schedule that never left (open loop).
    pub fn not_sent(&mut self, n: u64) {
        self.counts.unsent += n;
    }

    /// Counts a slot of the schedule whose send the kernel refused (open loop): unsent,
    /// and why.
    pub fn send_refused(&mut self) {
        self.counts.unsent += 1;
        self.counts.refused_sends += 1;
    }

    /// Counts an echo that cannot be matched to any datagram of this flow (too short for
    /// a header, or another flow's id) as corrupt.
    pub fn unreadable(&mut self) {
        self.counts.corrupt += 1;
    }

    /// Datagrams awaiting an echo.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// When the oldest awaited datagram will be lost, if any is awaited.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.outstanding
            .values()
            .map(|s| s.intended + self.timeout)
            .min()
    }

    /// The next sequence number to be sent.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The counts so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The jitter estimate so far.
    pub fn jitter(&self) -> Duration {
        self.jitter.get()
    }

    /// When this flow last sent a datagram or took an on-time echo (the end of the span
    /// over which its echoes are a rate: waiting out a loss's timeout is not in it).
    pub fn last_active(&self) -> Duration {
        self.last_active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sends `n` datagrams 1 ms apart and returns the flow.
    fn sent_n(n: u64, timeout: Duration) -> Flow {
        let mut flow = Flow::new(timeout);
        for idx in 0..n {
            assert_eq!(flow.sent(ms(idx), ms(idx)), idx);
        }
        flow
    }

    #[test]
    fn slots_never_sent_add_up_and_count_as_intended() {
        let mut flow = sent_n(2, ms(50));
        flow.not_sent(3);
        flow.not_sent(4);
        flow.send_refused();
        assert_eq!(flow.counts().unsent, 8);
        assert_eq!(flow.counts().refused_sends, 1, "only the refused one");
        assert_eq!(flow.counts().intended(), 10);
        assert_eq!(flow.counts().sent, 2);
    }

    #[test]
    fn every_tenth_missing_is_ten_percent_loss() {
        let mut flow = sent_n(100, ms(50));
        for seq in (0..100).filter(|s| s % 10 != 9) {
            assert!(matches!(
                flow.echo(seq, true, ms(seq + 1)),
                Echo::OnTime { .. }
            ));
        }
        // Datagram 99 was sent at 99 ms: lost only after 149 ms.
        assert_eq!(flow.expire(ms(149)), 9);
        assert_eq!(flow.expire(ms(150)), 1);
        let c = flow.counts();
        assert_eq!((c.sent, c.echoed, c.lost, c.late), (100, 90, 10, 0));
        assert_eq!(c.loss_ratio(), 0.1);
        assert_eq!(flow.outstanding(), 0);
    }

    #[test]
    fn a_deadline_is_exclusive_at_exactly_the_timeout() {
        let mut flow = sent_n(1, ms(50));
        assert_eq!(flow.next_deadline(), Some(ms(50)));
        assert_eq!(flow.expire(ms(50)), 0);
        assert!(
            matches!(flow.echo(0, true, ms(50)), Echo::OnTime { latency } if latency == ms(50))
        );
        let mut flow = sent_n(1, ms(50));
        assert_eq!(flow.expire(ms(51)), 1);
        assert_eq!(flow.next_deadline(), None);
    }

    #[test]
    fn an_echo_after_its_loss_is_late_and_stays_lost() {
        let mut flow = sent_n(3, ms(10));
        flow.echo(0, true, ms(1));
        assert_eq!(flow.expire(ms(30)), 2);
        assert_eq!(flow.echo(1, true, ms(40)), Echo::Late);
        // A second copy of the late one is a duplicate, not late again.
        assert_eq!(flow.echo(1, true, ms(41)), Echo::Duplicate);
        let c = flow.counts();
        assert_eq!((c.echoed, c.lost, c.late, c.duplicates), (1, 2, 1, 1));
    }

    #[test]
    fn an_echo_past_its_deadline_before_expiry_ran_is_late_and_lost() {
        let mut flow = sent_n(1, ms(10));
        assert_eq!(flow.echo(0, true, ms(11)), Echo::Late);
        let c = flow.counts();
        assert_eq!((c.echoed, c.lost, c.late), (0, 1, 1));
        assert_eq!(flow.outstanding(), 0);
        // And its second copy is a duplicate.
        assert_eq!(flow.echo(0, true, ms(12)), Echo::Duplicate);
    }

    #[test]
    fn every_fifth_held_back_three_is_reordering_of_distance_three() {
        // The arrival order of a server that holds every 5th datagram until it has echoed
        // the next three: 0 1 2 3 5 6 7 4 8 10 11 12 9 13 ...
        let mut flow = sent_n(98, ms(1000));
        let mut order = Vec::new();
        let mut held = None;
        let mut since = 0;
        for seq in 0..98u64 {
            if seq % 5 == 4 {
                held = Some(seq);
                since = 0;
                continue;
            }
            order.push(seq);
            if let Some(h) = held {
                since += 1;
                if since == 3 {
                    order.push(h);
                    held = None;
                }
            }
        }
        assert_eq!(&order[..9], &[0, 1, 2, 3, 5, 6, 7, 4, 8]);
        for (at, seq) in order.iter().enumerate() {
            flow.echo(*seq, true, ms(100 + at as u64));
        }
        let c = flow.counts();
        assert_eq!(c.reordered, 19);
        assert_eq!(c.max_reorder_distance, 3);
        assert_eq!((c.echoed, c.lost, c.duplicates), (98, 0, 0));
    }

    #[test]
    fn duplicates_and_unknown_sequence_numbers() {
        let mut flow = sent_n(2, ms(100));
        flow.echo(0, true, ms(1));
        assert_eq!(flow.echo(0, true, ms(2)), Echo::Duplicate);
        assert_eq!(flow.echo(7, true, ms(2)), Echo::Corrupt);
        // The first number not yet sent is not ours either (the boundary).
        assert_eq!(flow.echo(2, true, ms(2)), Echo::Corrupt);
        let c = flow.counts();
        assert_eq!((c.duplicates, c.corrupt, c.echoed), (1, 2, 1));
        assert_eq!(flow.outstanding(), 1);
    }

    #[test]
    fn a_corrupt_echo_resolves_its_datagram_instead_of_losing_it() {
        let mut flow = sent_n(2, ms(10));
        assert_eq!(flow.echo(1, false, ms(1)), Echo::Corrupt);
        assert_eq!(flow.outstanding(), 1);
        assert_eq!(flow.expire(ms(100)), 1);
        let c = flow.counts();
        assert_eq!((c.corrupt, c.corrupt_answers, c.lost), (1, 1, 1));
        assert_eq!(c.loss_ratio(), 0.5);
    }

    #[test]
    fn corrupt_echoes_that_answer_nothing_do_not_dilute_the_loss() {
        // A server that answers each of 8 datagrams with an empty datagram (or another
        // socket's echo): all 8 are lost, whatever else came back.
        let mut flow = sent_n(8, ms(10));
        for _ in 0..8 {
            flow.unreadable();
        }
        // A damaged copy of a datagram never sent, and one of a datagram already lost.
        assert_eq!(flow.echo(99, false, ms(1)), Echo::Corrupt);
        assert_eq!(flow.give_up(), 8);
        assert_eq!(flow.echo(3, false, ms(200)), Echo::Corrupt);
        let c = flow.counts();
        assert_eq!(
            (c.sent, c.lost, c.corrupt, c.corrupt_answers),
            (8, 8, 10, 0)
        );
        assert_eq!(c.loss_ratio(), 1.0);
    }

    #[test]
    fn the_active_span_ends_at_the_last_send_or_on_time_echo() {
        let mut flow = Flow::new(ms(100));
        assert_eq!(flow.last_active(), Duration::ZERO);
        let a = flow.sent(ms(0), ms(5));
        assert_eq!(flow.last_active(), ms(5));
        flow.echo(a, true, ms(7));
        assert_eq!(flow.last_active(), ms(7));
        // A datagram never answered: lost at 210 ms, but the span ended at its send.
        flow.sent(ms(100), ms(110));
        assert_eq!(flow.expire(ms(300)), 1);
        assert_eq!(flow.last_active(), ms(110));
        // Late, duplicate and corrupt echoes are not activity of the echo rate.
        flow.echo(1, true, ms(400));
        flow.echo(0, true, ms(401));
        flow.echo(0, false, ms(402));
        assert_eq!(flow.last_active(), ms(110));
    }

    #[test]
    fn latency_is_measured_from_the_intended_send_time() {
        let mut flow = Flow::new(ms(100));
        let seq = flow.sent(ms(10), ms(30));
        assert_eq!(
            flow.echo(seq, true, ms(35)),
            Echo::OnTime { latency: ms(25) }
        );
    }

    #[test]
    fn jitter_of_alternating_transit_times_follows_the_rfc_recurrence() {
        // Transits alternate 1 ms and 2 ms: every |D| is 1 ms, so after n differences
        // J = 1 ms × (1 − (15/16)^n).
        let mut jitter = Jitter::default();
        for idx in 0..33u32 {
            jitter.record(ms(1 + u64::from(idx % 2)));
        }
        let expect = 1e6 * (1.0 - (15.0f64 / 16.0).powi(32));
        assert!(
            (jitter.value - expect).abs() < 1e-6,
            "{} vs {expect}",
            jitter.value
        );
        assert_eq!(jitter.get(), Duration::from_nanos(expect.round() as u64));
    }

    #[test]
    fn constant_transit_has_no_jitter_and_one_step_moves_it_by_a_sixteenth() {
        let mut jitter = Jitter::default();
        for _ in 0..10 {
            jitter.record(ms(5));
        }
        assert_eq!(jitter.get(), Duration::ZERO);
        jitter.record(ms(21));
        assert_eq!(jitter.get(), ms(1));
        // Downward steps count the same as upward ones.
        jitter.record(ms(5));
        assert_eq!(jitter.value, 1e6 + (16e6 - 1e6) / 16.0);
    }

    #[test]
    fn flow_jitter_uses_the_actual_send_time() {
        let mut flow = Flow::new(ms(1000));
        let a = flow.sent(ms(0), ms(0));
        let b = flow.sent(ms(0), ms(10));
        flow.echo(a, true, ms(1)); // transit 1 ms
        flow.echo(b, true, ms(27)); // transit 17 ms: |D| = 16 ms, J = 1 ms
        assert_eq!(flow.jitter(), ms(1));
    }

    #[test]
    fn counts_add_and_keep_the_largest_distance() {
        let mut a = Counts {
            sent: 1,
            echoed: 2,
            lost: 3,
            late: 4,
            duplicates: 5,
            reordered: 6,
            max_reorder_distance: 7,
            corrupt: 8,
            corrupt_answers: 2,
            unsent: 9,
            refused_sends: 1,
            given_up: 2,
            bench_drops: 3,
        };
        // Different values on each side, so that no other operator gives the same sums.
        let b = Counts {
            sent: 10,
            echoed: 20,
            lost: 30,
            late: 40,
            duplicates: 50,
            reordered: 60,
            max_reorder_distance: 3,
            corrupt: 80,
            corrupt_answers: 20,
            unsent: 90,
            refused_sends: 10,
            given_up: 20,
            bench_drops: 30,
        };
        a.add(&b);
        assert_eq!(
            a,
            Counts {
                sent: 11,
                echoed: 22,
                lost: 33,
                late: 44,
                duplicates: 55,
                reordered: 66,
                max_reorder_distance: 7,
                corrupt: 88,
                corrupt_answers: 22,
                unsent: 99,
                refused_sends: 11,
                given_up: 22,
                bench_drops: 33,
            }
        );
        // And the larger distance wins from either side.
        let mut c = Counts::default();
        c.add(&a);
        assert_eq!(c.max_reorder_distance, 7);
        assert_eq!(c.intended(), 11 + 99);
        assert_eq!(Counts::default().loss_ratio(), 0.0);
    }

    #[test]
    fn unreadable_echoes_are_corrupt_and_sequence_numbers_count_up() {
        let mut flow = Flow::new(ms(10));
        assert_eq!(flow.next_seq(), 0);
        flow.unreadable();
        flow.unreadable();
        flow.unreadable();
        assert_eq!(flow.counts().corrupt, 3);
        flow.sent(ms(0), ms(0));
        flow.sent(ms(1), ms(1));
        assert_eq!(flow.next_seq(), 2);
        assert_eq!(flow.counts().sent, 2);
    }

    #[test]
    fn lost_memory_is_bounded() {
        let mut flow = sent_n(LOST_MEMORY as u64 + 5, ms(1));
        flow.give_up();
        assert_eq!(flow.lost.len(), LOST_MEMORY);
        // The oldest were forgotten: their late echo reads as a duplicate.
        assert_eq!(flow.echo(0, true, ms(10)), Echo::Duplicate);
        assert_eq!(flow.echo(LOST_MEMORY as u64 + 4, true, ms(10)), Echo::Late);
    }
}
