//! The memory allocator's settings. The `noisescale` binary allocates with mimalloc (its global
//! allocator, `main.rs`) and tells it to keep the memory it frees, for reuse, instead of
//! returning it to the kernel after a delay.
//!
//! A training step frees and reallocates the same large buffers every time (activations,
//! gradients; 8 MiB each for ResNet-8's first stage at B = 128). mimalloc returns freed memory to
//! the kernel once it has sat unused for its purge delay (1 s by default), and the kernel zeroes
//! each page again when it is next touched. Keeping it cut the page faults of a 3–5 s bench run
//! 9- to 35-fold on the AMD EPYC (ResNet-8 at B = 128: 9,460–12,942 to 365–373; at B = 1,024:
//! 18,654–21,394 to 653–660; the CNN at B = 128 7,495–10,845 to 308–320; the MLP at B = 1,024
//! 2,224–2,486 to 252–253) and the kernel's CPU time with them
//! (ResNet-8 at B = 1,024: 0.50–1.45 s to 0.16–0.20 s); `bench/RESULTS.md`. The process's
//! resident memory then stays at its peak, which a training run reaches in its first step at
//! each batch size anyway.
//!
//! `MIMALLOC_PURGE_DELAY=<milliseconds>` in the environment still wins (mimalloc's own
//! variable; `1000` is its default).

use libmimalloc_sys::{mi_option_get, mi_option_set_default, mi_option_t};

/// mimalloc's own environment variable for the purge delay, in milliseconds (`-1`: never).
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` enum (`include/mimalloc.h` of v2 and v3;
/// libmimalloc-sys leaves such options without a constant and says to pass their number). The
/// integration test `bench_reports_the_direct_convolution_and_refuses_unknown_batch_sizes` pins
/// it: the delay set through [`PURGE_DELAY_ENV`] must be the one read back here.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the kernel, unless [`PURGE_DELAY_ENV`] says
/// otherwise. Call it before any other thread starts (mimalloc's options are not thread-safe).
pub fn keep_freed_memory() {
    // SAFETY: a plain FFI call on a valid option number; the binary calls it first thing in
    // `main`, before it starts any thread.
    unsafe { mi_option_set_default(MI_OPTION_PURGE_DELAY, -1) }
}

/// mimalloc's purge delay in milliseconds, `None` for never (after [`keep_freed_memory`]
/// without [`PURGE_DELAY_ENV`]).
pub fn purge_delay_ms() -> Option<i64> {
    // SAFETY: a plain FFI call on a valid option number; reading an option is thread-safe once
    // it is initialised, which this call does.
    let ms = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
    (ms >= 0).then_some(ms as i64)
}
