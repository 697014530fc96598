//! The lecture's two C bugs that Rust refuses to compile: passing `&i` to a spawned thread
//! (race.c) and sharing a plain counter between threads (badcnt.c). The expected compiler
//! messages are in tests/ui/*.stderr (regenerate with `TRYBUILD=overwrite`).

// Not under loom: the cases would be rebuilt with `--cfg loom` for nothing.
#[cfg(not(loom))]
#[test]
fn the_lectures_thread_bugs_do_not_compile() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/pass_loop_index_ref.rs");
    cases.compile_fail("tests/ui/shared_plain_counter.rs");
}
