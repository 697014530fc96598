//! The lecture's badcnt.c: two threads run `cnt++` on one plain counter. Rust rejects it:
//! two threads may not hold `&mut cnt` at once, so the racy load-add-store cannot be
//! written without an atomic or a lock.

fn main() {
    let mut cnt: u64 = 0;
    let niters = 1_000_000;
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..niters {
                    cnt += 1;
                }
            });
        }
    });
    println!("cnt = {cnt}");
}
