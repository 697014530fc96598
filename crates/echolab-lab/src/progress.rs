//! Progress graphs (CS:APP 12.5): every interleaving of two threads' instructions,
//! enumerated, counted and drawn.
//!
//! A state is a point (i, j): thread 1 has executed i of its instructions, thread 2 j of
//! its. A trajectory is a path from (0, 0) to the far corner, one instruction (one step
//! right or up) at a time; an interleaving is one trajectory.
//!
//! - The counter: each thread runs k iterations of the racy increment, load (L), update
//!   (U), store (S), with a private register. With 3k instructions each there are
//!   C(6k, 3k) trajectories; [`counter_outcomes`] follows every one and counts the final
//!   values. The unsafe region is where both threads are between their L and their S.
//! - Deadlock: thread 1 takes a then b, thread 2 b then a (P = lock, V = unlock). States
//!   inside a forbidden region (both holding the same lock) cannot be reached; a state from
//!   which neither thread can move, short of the end, is a deadlock. [`lock_outcomes`]
//!   walks every trajectory that respects the locks; with one global order there is none.
//!
//! [`svg_counter`] and [`svg_locks`] draw the graphs as hand-written SVG, with the axes
//! named by instruction (L1, U1, S1 ... and P(a), P(b) ...).

use std::collections::BTreeMap;

/// C(n, k), exactly (0 when k > n; exact while the running product fits a u128, far
/// beyond any size enumerated here).
pub fn binomial(n: u64, k: u64) -> u128 {
    if k > n {
        return 0;
    }
    // After step idx the product is C(n, idx + 1), a whole number: each division is exact.
    (0..k).fold(1u128, |acc, idx| {
        acc.saturating_mul(u128::from(n - idx)) / u128::from(idx + 1)
    })
}

/// One instruction of the racy increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// register = cnt
    Load,
    /// register += 1
    Update,
    /// cnt = register
    Store,
}

impl Step {
    /// The instruction at position `idx` (0-based) of a thread's sequence.
    pub fn at(idx: usize) -> Step {
        match idx % 3 {
            0 => Step::Load,
            1 => Step::Update,
            _ => Step::Store,
        }
    }

    pub fn letter(self) -> char {
        match self {
            Step::Load => 'L',
            Step::Update => 'U',
            Step::Store => 'S',
        }
    }
}

/// Every interleaving of two threads × `k` increments: how many there are, and how many
/// end with each final value of the counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterOutcomes {
    pub k: usize,
    pub interleavings: u128,
    /// Final value -> number of interleavings that end with it.
    pub finals: BTreeMap<u64, u128>,
}

impl CounterOutcomes {
    /// Interleavings that end with the right count, 2k.
    pub fn correct(&self) -> u128 {
        self.finals.get(&(2 * self.k as u64)).copied().unwrap_or(0)
    }
}

/// The machine state of the counter program: positions, registers, the counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Machine {
    pos: [usize; 2],
    reg: [u64; 2],
    cnt: u64,
}

impl Machine {
    /// Thread `t` executes its next instruction.
    fn step(mut self, t: usize) -> Machine {
        match Step::at(self.pos[t]) {
            Step::Load => self.reg[t] = self.cnt,
            Step::Update => self.reg[t] += 1,
            Step::Store => self.cnt = self.reg[t],
        }
        self.pos[t] += 1;
        self
    }
}

/// Enumerates every interleaving of two threads that each run `k` load/update/store
/// increments (depth-first: each step right is thread 1, up is thread 2). `k` above 4
/// means more than 10^9 paths: callers keep it small.
pub fn counter_outcomes(k: usize) -> CounterOutcomes {
    fn walk(machine: Machine, len: usize, finals: &mut BTreeMap<u64, u128>) {
        let mut moved = false;
        for t in 0..2 {
            if machine.pos[t] < len {
                moved = true;
                walk(machine.step(t), len, finals);
            }
        }
        // Neither thread has an instruction left: one whole interleaving.
        if !moved {
            *finals.entry(machine.cnt).or_default() += 1;
        }
    }
    let mut finals = BTreeMap::new();
    walk(Machine::default(), 3 * k, &mut finals);
    CounterOutcomes {
        k,
        interleavings: finals.values().sum(),
        finals,
    }
}

/// The final counter after the interleaving `order` (each entry the thread, 0 or 1, that
/// runs the next instruction). Panics if `order` runs a thread past its end.
pub fn run_order(order: &[usize]) -> u64 {
    order
        .iter()
        .fold(Machine::default(), |machine, &t| machine.step(t))
        .cnt
}

/// A lock operation: P (take) or V (release) of lock 0 (a) or 1 (b).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOp {
    P(usize),
    V(usize),
}

impl LockOp {
    pub fn label(self) -> String {
        match self {
            LockOp::P(lock) => format!("P({})", lock_name(lock)),
            LockOp::V(lock) => format!("V({})", lock_name(lock)),
        }
    }
}

/// `a`, `b`, `c`... for lock 0, 1, 2...
fn lock_name(lock: usize) -> String {
    u8::try_from(lock)
        .ok()
        .filter(|&lock| lock < 26)
        .map_or_else(
            || format!("l{lock}"),
            |lock| char::from(b'a' + lock).to_string(),
        )
}

/// A two-thread lock program: each thread's operations, in order.
pub type Program<'a> = [&'a [LockOp]; 2];

/// Thread 1 and thread 2 of the lecture's deadlock: a then b, and b then a.
pub const OPPOSITE_ORDERS: Program<'static> = [
    &[LockOp::P(0), LockOp::P(1), LockOp::V(1), LockOp::V(0)],
    &[LockOp::P(1), LockOp::P(0), LockOp::V(0), LockOp::V(1)],
];

/// The fix: both threads take a, then b.
pub const ONE_ORDER: Program<'static> = [
    &[LockOp::P(0), LockOp::P(1), LockOp::V(1), LockOp::V(0)],
    &[LockOp::P(0), LockOp::P(1), LockOp::V(1), LockOp::V(0)],
];

/// True when a thread that has executed `done` of `ops` holds `lock`.
pub fn holds(ops: &[LockOp], done: usize, lock: usize) -> bool {
    let taken = ops[..done]
        .iter()
        .filter(|op| **op == LockOp::P(lock))
        .count();
    let released = ops[..done]
        .iter()
        .filter(|op| **op == LockOp::V(lock))
        .count();
    taken > released
}

/// State (i, j) is forbidden: both threads would hold the same lock.
pub fn forbidden(program: &Program<'_>, i: usize, j: usize) -> bool {
    let locks = program
        .iter()
        .flat_map(|ops| ops.iter())
        .map(|op| match *op {
            LockOp::P(lock) | LockOp::V(lock) => lock + 1,
        })
        .max()
        .unwrap_or(0);
    (0..locks).any(|lock| holds(program[0], i, lock) && holds(program[1], j, lock))
}

/// What every lock-respecting trajectory of a two-thread program comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOutcomes {
    /// Trajectories that reach the end.
    pub completed: u128,
    /// Trajectories that stop in a deadlock state.
    pub deadlocked: u128,
    /// The deadlock states: reachable, not the end, and neither thread can move.
    pub deadlock_states: Vec<(usize, usize)>,
    /// The forbidden states, (i, j).
    pub forbidden: Vec<(usize, usize)>,
}

/// Walks every trajectory of `program` that respects its locks.
pub fn lock_outcomes(program: &Program<'_>) -> LockOutcomes {
    let (n0, n1) = (program[0].len(), program[1].len());
    let moves = |i: usize, j: usize| -> Vec<(usize, usize)> {
        let mut next = Vec::new();
        if i < n0 && !forbidden(program, i + 1, j) {
            next.push((i + 1, j));
        }
        if j < n1 && !forbidden(program, i, j + 1) {
            next.push((i, j + 1));
        }
        next
    };
    // Paths into each state; both predecessors of (i, j) come before it in this order.
    let mut paths = vec![vec![0u128; n1 + 1]; n0 + 1];
    paths[0][0] = 1;
    let (mut completed, mut deadlocked) = (0, 0);
    let mut deadlock_states = Vec::new();
    for i in 0..=n0 {
        for j in 0..=n1 {
            if paths[i][j] == 0 {
                continue;
            }
            let next = moves(i, j);
            if (i, j) == (n0, n1) {
                completed += paths[i][j];
            } else if next.is_empty() {
                deadlocked += paths[i][j];
                deadlock_states.push((i, j));
            }
            for (ni, nj) in next {
                paths[ni][nj] += paths[i][j];
            }
        }
    }
    let forbidden = (0..=n0)
        .flat_map(|i| (0..=n1).map(move |j| (i, j)))
        .filter(|&(i, j)| forbidden(program, i, j))
        .collect();
    LockOutcomes {
        completed,
        deadlocked,
        deadlock_states,
        forbidden,
    }
}

/// The states from which every trajectory ends in a deadlock (the deadlock region).
pub fn deadlock_region(program: &Program<'_>) -> Vec<(usize, usize)> {
    let (n0, n1) = (program[0].len(), program[1].len());
    // doomed[i][j]: not the end, and every move leads to a doomed state (or none exists).
    let mut doomed = vec![vec![false; n1 + 1]; n0 + 1];
    // From the far corner back: both successors of (i, j) are decided before it.
    for i in (0..=n0).rev() {
        for j in (0..=n1).rev() {
            if (i, j) == (n0, n1) || forbidden(program, i, j) {
                continue;
            }
            let mut next = Vec::new();
            if i < n0 && !forbidden(program, i + 1, j) {
                next.push(doomed[i + 1][j]);
            }
            if j < n1 && !forbidden(program, i, j + 1) {
                next.push(doomed[i][j + 1]);
            }
            doomed[i][j] = next.iter().all(|&d| d);
        }
    }
    (0..=n0)
        .flat_map(|i| (0..=n1).map(move |j| (i, j)))
        .filter(|&(i, j)| doomed[i][j])
        .collect()
}

// ---- drawing ----

const CELL: f64 = 56.0;
const MARGIN: f64 = 64.0;

/// One graph: its size and its SVG elements (without the `<svg>` wrapper).
#[derive(Debug, Clone)]
pub struct Drawing {
    pub width: f64,
    pub height: f64,
    pub body: String,
}

/// Drawings side by side in one SVG document.
pub fn compose(drawings: &[Drawing]) -> String {
    let width: f64 = drawings.iter().map(|d| d.width).sum();
    let height = drawings.iter().map(|d| d.height).fold(0.0, f64::max);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let mut x = 0.0;
    for drawing in drawings {
        out.push_str(&format!(
            "<g transform=\"translate({x:.0},0)\">\n{}</g>\n",
            drawing.body
        ));
        x += drawing.width;
    }
    out.push_str("</svg>\n");
    out
}

/// The grid, axes and instruction labels of an `nx` × `ny` progress graph whose origin is
/// at (`x0`, `y0`) in SVG coordinates (y grows downwards, so state j is drawn above).
struct Grid {
    x0: f64,
    y0: f64,
    /// Instructions of thread 1 and of thread 2.
    nx: f64,
    ny: f64,
}

impl Grid {
    fn x(&self, i: f64) -> f64 {
        self.x0 + i * CELL
    }
    fn y(&self, j: f64) -> f64 {
        self.y0 - j * CELL
    }

    fn axes(&self, out: &mut String, x_labels: &[String], y_labels: &[String], title: &str) {
        let (nx, ny) = (x_labels.len() as f64, y_labels.len() as f64);
        for i in 0..=x_labels.len() {
            out.push_str(&format!(
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n",
                self.x(i as f64),
                self.y(0.0),
                self.x(i as f64),
                self.y(ny)
            ));
        }
        for j in 0..=y_labels.len() {
            out.push_str(&format!(
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n",
                self.x(0.0),
                self.y(j as f64),
                self.x(nx),
                self.y(j as f64)
            ));
        }
        out.push_str(&format!(
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n",
            self.x(0.0), self.y(0.0), self.x(nx), self.y(0.0),
            self.x(0.0), self.y(0.0), self.x(0.0), self.y(ny)
        ));
        for (i, label) in x_labels.iter().enumerate() {
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                self.x(i as f64 + 0.5),
                self.y(0.0) + 16.0,
                crate::report::escape(label)
            ));
        }
        for (j, label) in y_labels.iter().enumerate() {
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                self.x(0.0) - 6.0,
                self.y(j as f64 + 0.5) + 4.0,
                crate::report::escape(label)
            ));
        }
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">Thread 1 →</text>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 {:.1} {:.1})\">Thread 2 →</text>\n",
            self.x(nx / 2.0), self.y(0.0) + 34.0,
            self.x(0.0) - 44.0, self.y(ny / 2.0), self.x(0.0) - 44.0, self.y(ny / 2.0)
        ));
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
            self.x(nx / 2.0),
            self.y(ny) - 12.0,
            crate::report::escape(title)
        ));
    }

    /// A path through states, `moves` being 0 (thread 1, right) or 1 (thread 2, up).
    fn trajectory(
        &self,
        out: &mut String,
        moves: &[usize],
        colour: &str,
        label: &str,
        dash: &str,
        row: usize,
    ) {
        let (mut i, mut j) = (0.0, 0.0);
        let mut points = vec![format!("{:.1},{:.1}", self.x(i), self.y(j))];
        for &t in moves {
            if t == 0 {
                i += 1.0;
            } else {
                j += 1.0;
            }
            points.push(format!("{:.1},{:.1}", self.x(i), self.y(j)));
        }
        out.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"3\" stroke-dasharray=\"{dash}\"/>\n",
            points.join(" ")
        ));
        // The legend, beside the graph's top right corner, one row per trajectory.
        let (lx, ly) = (
            self.x(self.nx) + 10.0,
            self.y(self.ny) + 6.0 + 16.0 * row as f64,
        );
        out.push_str(&format!(
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"3\" stroke-dasharray=\"{dash}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\" font-size=\"11\">{}</text>\n",
            lx + 18.0,
            lx + 22.0,
            ly + 4.0,
            crate::report::escape(label)
        ));
    }
}

/// The safe trajectory (thread 1's k increments, then thread 2's) and an unsafe one (the
/// threads alternate, instruction by instruction: L1 L2 U1 U2 S1 S2 ...).
pub fn counter_trajectories(k: usize) -> (Vec<usize>, Vec<usize>) {
    let safe = [vec![0; 3 * k], vec![1; 3 * k]].concat();
    let unsafe_ = (0..3 * k).flat_map(|_| [0, 1]).collect();
    (safe, unsafe_)
}

/// The counter's progress graph for `k` increments per thread: the unsafe regions shaded,
/// one safe and one unsafe trajectory with the final count each leaves.
pub fn svg_counter(k: usize) -> String {
    compose(&[counter_drawing(k)])
}

/// The counter's progress graph, to compose with others (see [`svg_counter`]).
pub fn counter_drawing(k: usize) -> Drawing {
    let n = 3 * k;
    let size = 2.0 * MARGIN + n as f64 * CELL;
    let grid = Grid {
        x0: MARGIN,
        y0: size - MARGIN + 8.0,
        nx: n as f64,
        ny: n as f64,
    };
    let mut out = String::new();
    // Unsafe region of iterations (a, b): thread 1 between its a-th L and S, thread 2
    // between its b-th L and S: the states i in {3a+1, 3a+2}, j in {3b+1, 3b+2}.
    for a in 0..k {
        for b in 0..k {
            let (i0, j0) = ((3 * a + 1) as f64 - 0.5, (3 * b + 1) as f64 - 0.5);
            out.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f4b6ad\" stroke=\"#c0392b\"/>\n",
                grid.x(i0),
                grid.y(j0 + 2.0),
                2.0 * CELL,
                2.0 * CELL
            ));
        }
    }
    let label = |thread: usize| -> Vec<String> {
        (0..n)
            .map(|idx| format!("{}{}", Step::at(idx).letter(), thread))
            .collect()
    };
    grid.axes(
        &mut out,
        &label(1),
        &label(2),
        &format!("counter, k = {k}: unsafe region shaded"),
    );
    let (safe, unsafe_) = counter_trajectories(k);
    grid.trajectory(
        &mut out,
        &safe,
        "#1e7b34",
        &format!("safe: cnt = {}", run_order(&safe)),
        "",
        0,
    );
    grid.trajectory(
        &mut out,
        &unsafe_,
        "#b03a2e",
        &format!("unsafe: cnt = {}", run_order(&unsafe_)),
        "6 3",
        1,
    );
    Drawing {
        width: size + 120.0,
        height: size + 20.0,
        body: out,
    }
}

/// A lock program's progress graph: forbidden regions shaded, the deadlock region (if any)
/// marked, and one trajectory that enters it.
pub fn svg_locks(program: &Program<'_>, title: &str) -> String {
    compose(&[locks_drawing(program, title)])
}

/// A lock program's progress graph, to compose with others (see [`svg_locks`]).
pub fn locks_drawing(program: &Program<'_>, title: &str) -> Drawing {
    let (n0, n1) = (program[0].len(), program[1].len());
    let size = 2.0 * MARGIN + n0.max(n1) as f64 * CELL;
    let grid = Grid {
        x0: MARGIN,
        y0: size - MARGIN + 8.0,
        nx: n0 as f64,
        ny: n1 as f64,
    };
    let mut out = String::new();
    let outcome = lock_outcomes(program);
    for &(i, j) in &outcome.forbidden {
        out.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#bbb\"/>\n",
            grid.x(i as f64 - 0.5),
            grid.y(j as f64 + 0.5),
            CELL,
            CELL
        ));
    }
    for (i, j) in deadlock_region(program) {
        out.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f4b6ad\" stroke=\"#c0392b\"/>\n",
            grid.x(i as f64 - 0.5),
            grid.y(j as f64 + 0.5),
            CELL,
            CELL
        ));
    }
    let labels = |t: usize| -> Vec<String> { program[t].iter().map(|op| op.label()).collect() };
    grid.axes(&mut out, &labels(0), &labels(1), title);
    if let Some(&(i, j)) = outcome.deadlock_states.first() {
        let into: Vec<usize> = [vec![0; i], vec![1; j]].concat();
        grid.trajectory(&mut out, &into, "#b03a2e", "deadlock", "6 3", 1);
    }
    grid.trajectory(
        &mut out,
        &[vec![0; n0], vec![1; n1]].concat(),
        "#1e7b34",
        "completes",
        "",
        0,
    );
    Drawing {
        width: size + 100.0,
        height: size + 20.0,
        body: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomials() {
        assert_eq!(binomial(6, 3), 20);
        assert_eq!(binomial(12, 6), 924);
        assert_eq!(binomial(18, 9), 48_620);
        assert_eq!(binomial(4, 0), 1);
        assert_eq!(binomial(4, 4), 1);
        assert_eq!(binomial(5, 2), 10);
        assert_eq!(binomial(3, 5), 0);
        assert_eq!(binomial(60, 30), 118_264_581_564_861_424);
    }

    #[test]
    fn the_interleaving_count_is_the_closed_form() {
        for k in 1..=3 {
            let outcomes = counter_outcomes(k);
            assert_eq!(
                outcomes.interleavings,
                binomial(6 * k as u64, 3 * k as u64),
                "k = {k}"
            );
        }
    }

    /// k = 1 by hand: only the two trajectories that run one thread's L, U, S entirely
    /// before the other's L count to 2; the other 18 lose an update.
    #[test]
    fn one_increment_each_by_hand() {
        let outcomes = counter_outcomes(1);
        assert_eq!(outcomes.finals, BTreeMap::from([(1, 18), (2, 2)]));
        assert_eq!(outcomes.correct(), 2);
    }

    /// An independent enumeration: every 6k-bit mask with 3k ones is one interleaving
    /// (bit set: thread 2 moves); run each and count.
    #[test]
    fn the_walk_agrees_with_brute_force_over_bitmasks() {
        for k in 1..=2 {
            let len = 6 * k;
            let mut finals: BTreeMap<u64, u128> = BTreeMap::new();
            for mask in 0u32..(1 << len) {
                if mask.count_ones() as usize != 3 * k {
                    continue;
                }
                let order: Vec<usize> = (0..len).map(|bit| ((mask >> bit) & 1) as usize).collect();
                *finals.entry(run_order(&order)).or_default() += 1;
            }
            assert_eq!(counter_outcomes(k).finals, finals, "k = {k}");
        }
    }

    #[test]
    fn the_drawn_trajectories_end_as_labelled() {
        let (safe, unsafe_) = counter_trajectories(2);
        assert_eq!(run_order(&safe), 4);
        assert_eq!(run_order(&unsafe_), 2);
        assert_eq!(safe.len(), 12);
        assert_eq!(unsafe_.iter().filter(|&&t| t == 1).count(), 6);
    }

    #[test]
    fn opposite_orders_have_a_deadlock_and_one_order_has_none() {
        let opposite = lock_outcomes(&OPPOSITE_ORDERS);
        assert_eq!(opposite.deadlock_states, vec![(1, 1)]);
        assert_eq!(deadlock_region(&OPPOSITE_ORDERS), vec![(1, 1)]);
        // Into (1, 1): P(a) then P(b) or the reverse, 2 ways; every other lock-respecting
        // trajectory completes.
        assert_eq!(opposite.deadlocked, 2);
        assert!(opposite.completed > 0);
        // Both hold a: i in 1..=3 with j = 2; both hold b: i = 2 with j in 1..=3.
        assert_eq!(
            opposite.forbidden,
            vec![(1, 2), (2, 1), (2, 2), (2, 3), (3, 2)]
        );
        let ordered = lock_outcomes(&ONE_ORDER);
        assert_eq!(ordered.deadlocked, 0);
        assert!(ordered.deadlock_states.is_empty());
        assert!(deadlock_region(&ONE_ORDER).is_empty());
        // One order: a is held for i, j in 1..=3, so the threads must run one after the
        // other: exactly two trajectories.
        assert_eq!(ordered.completed, 2);
    }

    /// Three locks, a then c then b against b then c then a: from (1, 1) (T1 holds a, T2
    /// holds b) either move leads into a deadlock, (2, 1) or (1, 2); so the deadlock
    /// region is three states, of which two are deadlocks.
    #[test]
    fn a_deadlock_region_larger_than_its_deadlocks() {
        use LockOp::{P, V};
        let program: Program<'_> = [
            &[P(0), P(2), P(1), V(1), V(2), V(0)],
            &[P(1), P(2), P(0), V(0), V(2), V(1)],
        ];
        let outcome = lock_outcomes(&program);
        assert_eq!(outcome.deadlock_states, vec![(1, 2), (2, 1)]);
        assert_eq!(deadlock_region(&program), vec![(1, 1), (1, 2), (2, 1)]);
        // Into (2, 1): from (1, 1), reached two ways, and from (2, 0), reached one way: 3;
        // (1, 2) likewise: 3.
        assert_eq!(outcome.deadlocked, 6);
        let svg = svg_locks(&program, "three locks");
        assert!(svg.contains(">P(c)<"), "{svg}");
        assert_eq!(svg.matches("fill=\"#f4b6ad\"").count(), 3);
    }

    #[test]
    fn lock_names() {
        assert_eq!(lock_name(0), "a");
        assert_eq!(lock_name(25), "z");
        assert_eq!(lock_name(26), "l26");
    }

    #[test]
    fn holding_follows_p_and_v() {
        let ops = &OPPOSITE_ORDERS[0];
        assert!(!holds(ops, 0, 0));
        assert!(holds(ops, 1, 0) && !holds(ops, 1, 1));
        assert!(holds(ops, 2, 0) && holds(ops, 2, 1));
        assert!(holds(ops, 3, 0) && !holds(ops, 3, 1));
        assert!(!holds(ops, 4, 0));
    }

    #[test]
    fn the_pictures_name_their_axes_by_instruction() {
        let svg = svg_counter(1);
        for text in [
            "L1",
            "U1",
            "S1",
            "L2",
            "U2",
            "S2",
            "safe: cnt = 2",
            "unsafe: cnt = 1",
        ] {
            assert!(svg.contains(&format!(">{text}<")), "{text}");
        }
        assert_eq!(svg.matches("fill=\"#f4b6ad\"").count(), 1);
        assert_eq!(svg_counter(2).matches("fill=\"#f4b6ad\"").count(), 4);
        let svg = svg_locks(&OPPOSITE_ORDERS, "t");
        for text in ["P(a)", "P(b)", "V(a)", "V(b)", "deadlock", "completes"] {
            assert!(svg.contains(&format!(">{text}<")), "{text}");
        }
        assert!(!svg_locks(&ONE_ORDER, "t").contains(">deadlock<"));
    }
}

/// loom's model checker on the same tiny program: every execution of two threads that
/// each load, add and store `k` times (SeqCst, so that executions are interleavings) ends
/// with a value the enumeration found, and every value it found is reached.
#[cfg(loom)]
#[cfg(test)]
mod loom_tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn loom_reaches_the_same_final_values() {
        for k in 1..=2u64 {
            let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
            let record = seen.clone();
            loom::model(move || {
                use loom::sync::atomic::{AtomicU64, Ordering::SeqCst};
                let cnt = loom::sync::Arc::new(AtomicU64::new(0));
                let threads: Vec<_> = (0..2)
                    .map(|_| {
                        let cnt = cnt.clone();
                        loom::thread::spawn(move || {
                            for _ in 0..k {
                                let value = cnt.load(SeqCst);
                                cnt.store(value + 1, SeqCst);
                            }
                        })
                    })
                    .collect();
                for thread in threads {
                    thread.join().unwrap();
                }
                record.lock().unwrap().insert(cnt.load(SeqCst));
            });
            let expected: BTreeSet<u64> = counter_outcomes(k as usize).finals.into_keys().collect();
            assert_eq!(*seen.lock().unwrap(), expected, "k = {k}");
        }
    }
}
