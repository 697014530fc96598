//! The lecture's race.c: `Pthread_create(&tid, NULL, thread, &i)` hands every thread the
//! address of the loop index. Rust rejects it: the thread may outlive `i`, and the loop
//! goes on changing `i` while a thread may be reading it.

fn main() {
    let mut handles = Vec::new();
    let mut i = 0;
    while i < 100 {
        handles.push(std::thread::spawn(|| {
            let seen: &i32 = &i;
            *seen
        }));
        i += 1;
    }
    for handle in handles {
        let _ = handle.join();
    }
}
