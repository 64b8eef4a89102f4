//! The C allocator's settings for a process that allocates and frees tensors of megabytes
//! in a loop.
//!
//! glibc's malloc serves a block above its mmap threshold (dynamic, up to 32 MiB) with a
//! fresh mapping and unmaps it on free, and it returns the top of the heap to the system
//! once more than the trim threshold is free there. Every tensor of a training step, a
//! probe or a Gram tile pair is such a block, so each one was faulted in page by page again
//! (`perf` showed page faults and memset in every hot loop). Here no block is mapped on its own
//! (`M_MMAP_MAX` = 0, which makes the threshold moot: it cannot go above 32 MiB, and the
//! CNN's activations over c copies of a chunk are larger), and freed heap memory is kept for
//! reuse (`M_TRIM_THRESHOLD` at its maximum). The price is
//! resident memory that stays at the process's high-water mark plus fragmentation; the
//! benchmark reports peaks.

/// Applies the settings; a no-op where the C library is not glibc.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread is
    // started, and a rejected value leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
