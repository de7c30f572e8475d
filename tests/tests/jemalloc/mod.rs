//! jemalloc as the test binary's allocator, and its count of the live heap
//! (`stats.allocated`: exact, where RSS is inflated by glibc's arenas).
//! For the binaries that measure their own heap (`soak`, `churn`), each
//! alone in its binary so the process-wide count sees no other test.

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Live heap bytes, as jemalloc counts them, in KiB.
pub(crate) fn heap_kib() -> u64 {
    tikv_jemalloc_ctl::epoch::advance().unwrap();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap() as u64 / 1024
}
