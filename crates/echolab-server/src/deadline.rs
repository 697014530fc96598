//! The idle timeout of an event loop's connections, as deadline buckets (a hashed timer
//! wheel): activity on a connection costs O(1), and the loop learns which connections
//! went silent without looking at the ones that did not.
//!
//! Time since the wheel's creation is cut into ticks of `granularity` (the timeout / 60,
//! at least 1 ms). A connection is filed in the bucket of the first tick boundary at or
//! after its deadline; there are [`BUCKETS`] buckets and every filed tick lies within one
//! turn of the wheel ahead of the last tick processed, so a bucket never holds two turns
//! at once. `touch` only records the activity (lazy re-arming): when the bucket of the old
//! deadline comes due, a connection whose deadline moved is filed again further on. So a
//! busy connection is re-filed about once per timeout, not once per byte.
//!
//! Costs: `touch`, `remove`: O(1). `expire`: O(fired + re-filed + buckets passed, at most
//! [`BUCKETS`]). `next_wake`: O([`BUCKETS`]). Memory: 16 bytes per token up to the largest
//! token (tokens are a loop's slab indices), plus 8 bytes per filed token.

use std::time::{Duration, Instant};

/// The buckets of one turn of the wheel.
pub const BUCKETS: usize = 64;

/// A timeout this long or longer is never reached: the flag's ceiling, ten years
/// ([`crate::cli::MAX_IDLE_TIMEOUT_SECS`]); no server runs that long.
const NEVER_FROM: Duration = Duration::from_secs(crate::cli::MAX_IDLE_TIMEOUT_SECS);

/// The finest granularity: poll(2) and epoll sleep in milliseconds.
const MIN_GRANULARITY: Duration = Duration::from_millis(1);

/// `Slot::bucket` of a token that is not filed.
const UNFILED: u32 = u32::MAX;

/// Idle deadlines of one event loop's connections, in buckets of `granularity`
/// (a hashed timer wheel): `touch` and `remove` are O(1); `expire` costs
/// O(expired + buckets passed), never a sweep over every connection.
#[derive(Debug)]
pub struct Deadlines {
    /// The armed state; `None`: the timeout is never reached, every call is a no-op.
    wheel: Option<Wheel>,
}

#[derive(Debug)]
struct Wheel {
    /// Every time is kept as nanoseconds since this instant (saturating: an instant
    /// before it counts as 0), so no `Instant` arithmetic can overflow.
    origin: Instant,
    timeout_ns: u64,
    granularity_ns: u64,
    /// The next tick not yet processed: every filed token's tick is in
    /// `cursor..cursor + BUCKETS`, in bucket `tick % BUCKETS`.
    cursor: u64,
    /// Indexed by token.
    slots: Vec<Slot>,
    buckets: Vec<Vec<usize>>,
    /// Tokens filed.
    n_filed: usize,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The last activity, in nanoseconds since `origin`.
    active_ns: u64,
    /// The bucket this token is filed in, or [`UNFILED`].
    bucket: u32,
    /// Its index inside that bucket (for an O(1) `swap_remove`).
    pos: u32,
}

const EMPTY_SLOT: Slot = Slot {
    active_ns: 0,
    bucket: UNFILED,
    pos: 0,
};

impl Deadlines {
    /// `timeout == None` (the flag's 0) or ten years or more means never: every
    /// call is then a cheap no-op and `next_wake` is None.
    pub fn new(timeout: Option<Duration>, now: Instant) -> Deadlines {
        let wheel = timeout.filter(|t| *t < NEVER_FROM).map(|timeout| {
            let timeout_ns = nanos(timeout);
            let granularity_ns = (timeout_ns / (BUCKETS as u64 - 4)).max(nanos(MIN_GRANULARITY));
            Wheel {
                origin: now,
                timeout_ns,
                granularity_ns,
                cursor: 0,
                slots: Vec::new(),
                buckets: vec![Vec::new(); BUCKETS],
                n_filed: 0,
            }
        });
        Deadlines { wheel }
    }

    /// (Re)arm `token`'s deadline to `now + timeout` (activity seen on it).
    pub fn touch(&mut self, token: usize, now: Instant) {
        let Some(wheel) = &mut self.wheel else {
            return;
        };
        let now_ns = wheel.since_origin(now);
        if token >= wheel.slots.len() {
            wheel.slots.resize(token + 1, EMPTY_SLOT);
        }
        if wheel.n_filed == 0 {
            // Nothing to process up to now: the turn may start here, so that a first
            // connection after a quiet spell is filed at its own deadline.
            wheel.cursor = wheel.cursor.max(wheel.tick_at(now_ns));
        }
        let slot = &mut wheel.slots[token];
        if slot.bucket == UNFILED {
            slot.active_ns = now_ns;
            let tick = wheel.due_tick(now_ns);
            wheel.file(token, tick);
        } else {
            // Lazy re-arming: the token stays in the bucket of its old deadline, which
            // files it again when it comes due. A `now` older than the recorded activity
            // (callers' clocks read at different moments) never shortens the deadline.
            slot.active_ns = slot.active_ns.max(now_ns);
        }
    }

    /// Forget `token` (its connection closed). Unknown tokens are ignored.
    pub fn remove(&mut self, token: usize) {
        if let Some(wheel) = &mut self.wheel {
            wheel.unfile(token);
        }
    }

    /// How long the loop may sleep before the earliest deadline is due (None: no deadline).
    /// It may be sooner than a deadline (a bucket holding only re-armed tokens), never
    /// later than one; a caller sleeping in milliseconds rounds up.
    pub fn next_wake(&self, now: Instant) -> Option<Duration> {
        let wheel = self.wheel.as_ref()?;
        if wheel.n_filed == 0 {
            return None;
        }
        let tick = (wheel.cursor..wheel.cursor + BUCKETS as u64)
            .find(|tick| !wheel.buckets[bucket_of(*tick)].is_empty())?;
        let due_ns = u128::from(tick) * u128::from(wheel.granularity_ns);
        let wait_ns = due_ns.saturating_sub(u128::from(wheel.since_origin(now)));
        Some(Duration::from_nanos(
            u64::try_from(wait_ns).unwrap_or(u64::MAX),
        ))
    }

    /// Push onto `out` every token whose deadline is <= now, each exactly once, and forget
    /// them. Never fires early; fires at most `granularity` late.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<usize>) {
        if let Some(wheel) = &mut self.wheel {
            wheel.expire(now, out);
        }
    }
}

impl Wheel {
    fn since_origin(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.origin))
    }

    /// The first tick boundary at or after the deadline of activity at `active_ns`.
    fn due_tick(&self, active_ns: u64) -> u64 {
        let deadline_ns = u128::from(active_ns) + u128::from(self.timeout_ns);
        let tick = deadline_ns.div_ceil(u128::from(self.granularity_ns));
        u64::try_from(tick).unwrap_or(u64::MAX)
    }

    /// The last tick whose boundary is at or before `now_ns`.
    fn tick_at(&self, now_ns: u64) -> u64 {
        now_ns / self.granularity_ns
    }

    /// Files `token` (not filed) at `tick`, kept inside the wheel's turn: a tick already
    /// passed is processed next (so late, never early); one beyond the turn is filed at
    /// the turn's end and filed again from there when that comes due.
    fn file(&mut self, token: usize, tick: u64) {
        let tick = tick.clamp(self.cursor, self.cursor + BUCKETS as u64 - 1);
        let bucket_idx = bucket_of(tick);
        let bucket = &mut self.buckets[bucket_idx];
        let slot = &mut self.slots[token];
        slot.bucket = bucket_idx as u32;
        slot.pos = u32::try_from(bucket.len()).expect("fewer than 2^32 tokens per bucket");
        bucket.push(token);
        self.n_filed += 1;
    }

    fn unfile(&mut self, token: usize) {
        let Some(slot) = self.slots.get_mut(token) else {
            return;
        };
        if slot.bucket == UNFILED {
            return;
        }
        let (bucket_idx, pos) = (slot.bucket as usize, slot.pos as usize);
        slot.bucket = UNFILED;
        let bucket = &mut self.buckets[bucket_idx];
        bucket.swap_remove(pos);
        if let Some(&moved) = bucket.get(pos) {
            self.slots[moved].pos = pos as u32;
        }
        self.n_filed -= 1;
    }

    fn expire(&mut self, now: Instant, out: &mut Vec<usize>) {
        let now_tick = self.tick_at(self.since_origin(now));
        let mut tick = self.cursor;
        while tick <= now_tick && self.n_filed > 0 {
            // Skip the empty buckets; some bucket of the turn is filed, since n_filed > 0.
            let Some(filed) = (tick..tick + BUCKETS as u64)
                .find(|tick| !self.buckets[bucket_of(*tick)].is_empty())
            else {
                break;
            };
            if filed > now_tick {
                break;
            }
            tick = filed;
            self.cursor = tick;
            let mut bucket = std::mem::take(&mut self.buckets[bucket_of(tick)]);
            self.n_filed -= bucket.len();
            for &token in &bucket {
                self.slots[token].bucket = UNFILED;
                let due = self.due_tick(self.slots[token].active_ns);
                if due <= tick {
                    out.push(token);
                } else {
                    // Re-armed since it was filed: file it at its new deadline (a later
                    // bucket, perhaps one this same call reaches), so tokens still fire
                    // in deadline order.
                    self.file(token, due);
                }
            }
            // Keep the bucket's allocation for its next turn.
            // Nothing was filed back into it (every re-filed token went to a later tick),
            // so the next search moves past it.
            bucket.clear();
            debug_assert!(self.buckets[bucket_of(tick)].is_empty());
            self.buckets[bucket_of(tick)] = bucket;
        }
        self.cursor = self.cursor.max(now_tick + 1);
    }
}

fn bucket_of(tick: u64) -> usize {
    (tick % BUCKETS as u64) as usize
}

/// `duration` in nanoseconds, saturating at about 584 years.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn granularity(deadlines: &Deadlines) -> Duration {
        Duration::from_nanos(deadlines.wheel.as_ref().unwrap().granularity_ns)
    }

    fn expired(deadlines: &mut Deadlines, now: Instant) -> Vec<usize> {
        let mut out = Vec::new();
        deadlines.expire(now, &mut out);
        out
    }

    #[test]
    fn fires_once_not_before_its_deadline_and_within_one_granularity() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(6);
        let mut deadlines = Deadlines::new(Some(timeout), t0);
        let g = granularity(&deadlines);
        assert_eq!(g, Duration::from_millis(100));
        deadlines.touch(7, t0);
        assert!(expired(&mut deadlines, t0 + timeout - Duration::from_nanos(1)).is_empty());
        let wake = deadlines.next_wake(t0).unwrap();
        assert!(wake >= timeout && wake <= timeout + g, "{wake:?}");
        assert_eq!(expired(&mut deadlines, t0 + timeout + g), vec![7]);
        assert!(expired(&mut deadlines, t0 + timeout * 3).is_empty());
        assert_eq!(deadlines.next_wake(t0 + timeout * 3), None);
    }

    #[test]
    fn fires_at_a_deadline_on_a_tick_boundary() {
        let t0 = Instant::now();
        let mut deadlines = Deadlines::new(Some(Duration::from_secs(6)), t0);
        deadlines.touch(1, t0 + Duration::from_millis(200));
        assert!(expired(&mut deadlines, t0 + Duration::from_millis(6199)).is_empty());
        assert_eq!(
            expired(&mut deadlines, t0 + Duration::from_millis(6200)),
            vec![1]
        );
    }

    #[test]
    fn remove_prevents_firing_and_unknown_tokens_are_ignored() {
        let t0 = Instant::now();
        let mut deadlines = Deadlines::new(Some(Duration::from_secs(1)), t0);
        deadlines.remove(3);
        deadlines.touch(3, t0);
        deadlines.touch(4, t0);
        deadlines.touch(5, t0);
        deadlines.remove(3);
        deadlines.remove(3);
        deadlines.remove(1_000);
        let mut fired = expired(&mut deadlines, t0 + Duration::from_secs(2));
        fired.sort_unstable();
        assert_eq!(fired, vec![4, 5]);
        assert_eq!(deadlines.next_wake(t0), None);
    }

    #[test]
    fn touch_postpones() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(6);
        let mut deadlines = Deadlines::new(Some(timeout), t0);
        deadlines.touch(0, t0);
        deadlines.touch(0, t0 + Duration::from_secs(5));
        assert!(expired(&mut deadlines, t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(
            expired(&mut deadlines, t0 + Duration::from_secs(11)),
            vec![0]
        );
    }

    #[test]
    fn huge_timeouts_mean_never_without_overflow() {
        let t0 = Instant::now();
        for timeout in [
            Duration::from_secs(u64::MAX),
            Duration::MAX,
            Duration::from_secs(10 * 365 * 86_400),
            Duration::from_secs(10 * 366 * 86_400),
        ] {
            let mut deadlines = Deadlines::new(Some(timeout), t0);
            assert!(deadlines.wheel.is_none(), "{timeout:?}");
            deadlines.touch(usize::MAX, t0);
            deadlines.touch(1, t0);
            assert_eq!(deadlines.next_wake(t0), None);
            assert!(expired(&mut deadlines, t0 + Duration::from_secs(1 << 40)).is_empty());
            deadlines.remove(1);
        }
        let mut never = Deadlines::new(None, t0);
        never.touch(1, t0);
        assert_eq!(never.next_wake(t0), None);
        assert!(expired(&mut never, t0 + Duration::from_secs(1 << 40)).is_empty());
    }

    #[test]
    fn just_under_ten_years_is_armed_and_does_not_overflow() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10 * 365 * 86_400 - 1);
        let mut deadlines = Deadlines::new(Some(timeout), t0);
        deadlines.touch(2, t0);
        let wake = deadlines.next_wake(t0).unwrap();
        assert!(wake >= timeout, "{wake:?}");
        assert!(expired(&mut deadlines, t0 + Duration::from_secs(86_400 * 365)).is_empty());
        let g = granularity(&deadlines);
        let fired = expired(&mut deadlines, t0 + timeout + g);
        assert_eq!(fired, vec![2]);
    }

    #[test]
    fn a_long_sleep_fires_everything_due_in_deadline_order() {
        let t0 = Instant::now();
        let mut deadlines = Deadlines::new(Some(Duration::from_millis(60)), t0);
        assert_eq!(granularity(&deadlines), MS);
        // Filed across more than one turn of the wheel, and token 0 re-armed past them all.
        for token in 0..100 {
            deadlines.touch(token, t0 + MS * token as u32);
        }
        deadlines.touch(0, t0 + Duration::from_millis(150));
        let fired = expired(&mut deadlines, t0 + Duration::from_secs(3600));
        let mut order: Vec<usize> = (1..100).collect();
        order.push(0);
        assert_eq!(fired, order);
        // After the jump, a new deadline is still timed from its own touch.
        let later = t0 + Duration::from_secs(3600);
        deadlines.touch(5, later);
        assert!(expired(&mut deadlines, later + Duration::from_millis(59)).is_empty());
        assert_eq!(
            expired(&mut deadlines, later + Duration::from_millis(61)),
            vec![5]
        );
    }

    #[test]
    fn a_deadline_beyond_the_turn_is_filed_at_its_end_not_wrapped_around() {
        let t0 = Instant::now();
        let mut deadlines = Deadlines::new(Some(Duration::from_millis(60)), t0);
        deadlines.touch(1, t0);
        // Due at tick 70, past the turn that starts at tick 0 (expire was not called).
        deadlines.touch(2, t0 + Duration::from_millis(10));
        let now = t0 + Duration::from_millis(10);
        assert_eq!(deadlines.next_wake(now), Some(Duration::from_millis(50)));
        assert_eq!(
            expired(&mut deadlines, t0 + Duration::from_millis(60)),
            vec![1]
        );
        assert_eq!(deadlines.next_wake(now), Some(Duration::from_millis(53)));
        assert!(expired(&mut deadlines, t0 + Duration::from_millis(69)).is_empty());
        assert_eq!(deadlines.next_wake(now), Some(Duration::from_millis(60)));
        assert_eq!(
            expired(&mut deadlines, t0 + Duration::from_millis(70)),
            vec![2]
        );
    }

    #[test]
    fn a_first_touch_after_a_quiet_spell_starts_the_turn_there() {
        let t0 = Instant::now();
        let mut deadlines = Deadlines::new(Some(Duration::from_millis(60)), t0);
        deadlines.touch(1, t0);
        deadlines.remove(1);
        let later = t0 + Duration::from_secs(100);
        deadlines.touch(3, later);
        assert_eq!(deadlines.next_wake(later), Some(Duration::from_millis(60)));
        // Likewise after the last deadline fired.
        assert_eq!(
            expired(&mut deadlines, later + Duration::from_secs(1)),
            vec![3]
        );
        let later = later + Duration::from_secs(100);
        deadlines.touch(4, later);
        assert_eq!(deadlines.next_wake(later), Some(Duration::from_millis(60)));
    }

    #[test]
    fn a_token_touched_with_an_old_clock_is_fired_on_the_next_turn() {
        let t0 = Instant::now();
        let mut deadlines = Deadlines::new(Some(Duration::from_millis(60)), t0);
        let _ = expired(&mut deadlines, t0 + Duration::from_secs(10));
        deadlines.touch(9, t0);
        assert_eq!(
            expired(&mut deadlines, t0 + Duration::from_secs(11)),
            vec![9]
        );
    }

    /// A model of the contract: at each step the wheel fires exactly the tokens a naive
    /// map of deadlines says are due, give or take one granularity, never early.
    #[derive(Debug, Clone)]
    enum Op {
        Touch(usize),
        Remove(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..40).prop_map(Op::Touch),
            1 => (0usize..40).prop_map(Op::Remove),
            4 => (0u64..400).prop_map(Op::Advance),
            1 => (0u64..20_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_naive_map_of_deadlines(
            timeout_ms in 1u64..2_000,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let t0 = Instant::now();
            let timeout = Duration::from_millis(timeout_ms);
            let mut deadlines = Deadlines::new(Some(timeout), t0);
            let g = granularity(&deadlines);
            let mut model: std::collections::HashMap<usize, Instant> = Default::default();
            let mut now = t0;
            let mut last_fired_deadline = t0;
            for op in ops {
                match op {
                    Op::Touch(token) => {
                        deadlines.touch(token, now);
                        model.insert(token, now + timeout);
                    }
                    Op::Remove(token) => {
                        deadlines.remove(token);
                        model.remove(&token);
                    }
                    Op::Advance(ms) => {
                        // Sleep as the loop would: never past the next wake.
                        let step = Duration::from_millis(ms);
                        let step = deadlines.next_wake(now).map_or(step, |w| step.min(w));
                        now += step;
                        let mut fired = expired(&mut deadlines, now);
                        let due_late: Vec<usize> = model
                            .iter()
                            .filter(|(_, deadline)| now >= **deadline + g)
                            .map(|(token, _)| *token)
                            .collect();
                        // Each at most once, none early, none more than g late.
                        let mut by_deadline = Vec::new();
                        for token in &fired {
                            let deadline = model.remove(token);
                            prop_assert!(deadline.is_some(), "fired {token} twice or unarmed");
                            let deadline = deadline.unwrap();
                            prop_assert!(deadline <= now, "fired {token} early");
                            by_deadline.push(deadline);
                        }
                        for token in due_late {
                            prop_assert!(fired.contains(&token), "{token} more than g late");
                        }
                        // Deadline order inside one call, bar one granularity.
                        for pair in by_deadline.windows(2) {
                            prop_assert!(pair[0] < pair[1] + g, "fired out of deadline order");
                        }
                        // Deadline order across calls: nothing fired now was due before
                        // something fired in an earlier call, bar one granularity.
                        for deadline in &by_deadline {
                            prop_assert!(*deadline + g > last_fired_deadline);
                        }
                        if let Some(max) = by_deadline.iter().max() {
                            last_fired_deadline = last_fired_deadline.max(*max);
                        }
                        fired.clear();
                    }
                }
            }
            // Whatever is left fires, once, within one turn plus a granularity.
            let end = now + timeout + g;
            let mut fired = expired(&mut deadlines, end);
            fired.sort_unstable();
            let mut left: Vec<usize> = model.into_keys().collect();
            left.sort_unstable();
            prop_assert_eq!(fired, left);
            prop_assert_eq!(deadlines.next_wake(end), None);
        }
    }
}
