//! The host allocator's settings for the `pipeline` process (glibc only).
//!
//! A CPU training step allocates and frees hundreds of tensors of tens to hundreds of MB
//! (at the 7B widths one ViT MLP activation of 5120 patches is 70 MB). glibc serves every
//! block above its mmap threshold (at most 32 MiB) with a fresh `mmap`, so each one is
//! page-faulted in and zeroed by the kernel and unmapped again when freed: at the 7B widths
//! cut to 2 layers + 4 ViT blocks that was ~18 s of system time in a 50 s step and 16% of
//! all samples in the kernel's page clearing. Serving them from the heap, and keeping freed
//! heap memory instead of trimming it back, lets the next step reuse the same pages:
//! measured 50.3 → 43.9 s per train step (peak RSS 6.04 → 6.23 GB; docs/MEMORY.md).
//! The peak stays what the step needs; the process just does not hand it back between
//! steps.

/// Apply the settings; call once at the start of `main`, before any thread allocates.
pub fn keep_large_blocks_on_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // exist. A rejected value (return 0) leaves glibc's defaults, which are also correct.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
