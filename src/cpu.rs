//! The CPU's floating-point mode and the compute threads.
//!
//! **Denormals.** Weights, gradients and momentum buffers that decay towards zero (a small ε late
//! in a decay-lr run, weight decay on dead units) pass through denormal floats (|x| < 1.2e-38).
//! Intel cores take a microcode assist of ~100 cycles on each denormal operand or result; AMD
//! cores a small penalty. On an Intel Xeon this made the MNIST decay-lr run's epochs grow from
//! 1.27 s to 2.8 s at a constant batch size (issue 19). noisescale therefore computes with
//! denormals flushed to zero (x86: MXCSR flush-to-zero and denormals-are-zero, bits 0x8040;
//! aarch64: FPCR.FZ), as oneDNN and cuDNN do by default and PyTorch does after
//! `torch.set_flush_denormal(True)`. The mode is per thread, so it is set in every thread that
//! computes: the calling thread, every rayon worker (the pool's start handler, or a broadcast to
//! a pool that already exists) and every data-loader worker. It is deterministic: the same seed
//! gives the same numbers at any thread count. `NOISESCALE_DENORMALS=keep` turns it off (IEEE
//! gradual underflow, e.g. to compare bit for bit with a PyTorch run that keeps denormals).

use std::sync::Once;

/// The environment variable that keeps denormals (`keep`) instead of flushing them.
pub const DENORMALS_ENV: &str = "NOISESCALE_DENORMALS";

/// Whether this process flushes denormals (everything but `NOISESCALE_DENORMALS=keep`).
pub fn flush_wanted() -> bool {
    std::env::var(DENORMALS_ENV).map_or(true, |v| v != "keep")
}

/// Sets flush-to-zero and denormals-are-zero on the calling thread, where the platform has
/// them and [`flush_wanted`]; a no-op elsewhere.
pub fn flush_denormals_on_this_thread() {
    if flush_wanted() {
        arch::set_flush(true);
    }
}

/// Whether the calling thread flushes denormals to zero.
pub fn denormals_flushed() -> bool {
    arch::flushing()
}

/// Prepares the process for computing: denormals flushed on this thread and on every thread
/// of rayon's global pool (built here with a start handler and `STACK_BYTES` stacks when
/// nothing has built it yet).
/// Idempotent; the CLI calls it first thing, and the trainer calls it again for library
/// users.
pub fn setup() {
    flush_denormals_on_this_thread();
    setup_pool();
}

/// The global-pool half of [`setup`], which leaves the calling thread's mode alone.
fn setup_pool() {
    static POOL: Once = Once::new();
    let mut built_elsewhere = false;
    POOL.call_once(|| {
        built_elsewhere = rayon::ThreadPoolBuilder::new()
            .start_handler(|_| flush_denormals_on_this_thread())
            .stack_size(STACK_BYTES)
            .build_global()
            .is_err();
    });
    if built_elsewhere {
        // A library user or a test used rayon first. Broadcast outside the `Once`: the
        // broadcast waits for every worker, and one blocked in `call_once` would never run its
        // share.
        rayon::broadcast(|_| flush_denormals_on_this_thread());
    }
}

/// Stack of each thread of rayon's global pool: 8 MiB, the main thread's usual size, since the
/// CLI's command runs on one of them ([`on_compute_thread`]).
const STACK_BYTES: usize = 8 << 20;

/// Runs `f` on a thread of rayon's global pool and returns what it returns; on the calling
/// thread when that is a pool thread already (of any pool), without touching the pool's setup.
///
/// Each parallel operation (a GEMM, a kernel's tasks, burn-flex's element-wise work) started
/// from a thread outside the pool is injected into it while the caller sleeps on a lock until
/// it is done; started from a pool thread it is a `join`, which the caller works on too. At
/// small batches those wake-ups are a large share of a step: the `mnist` preset's
/// increase-batch run (AMD EPYC Zen 5, 2 threads) took 10.2–10.4 s with every operation handed
/// over and 8.0–8.5 s inside, with the same numbers. The CLI runs every command through it, and
/// `train::forward_backward`, `Optimizer::step` and `train::evaluate` run through it on the CPU,
/// so a library user's loop outside the pool hands work over twice an update rather than for
/// every operation: 9.1–9.5 s.
pub fn on_compute_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    setup_pool();
    rayon::scope(|_| f())
}

/// A rayon pool of `threads` workers that flush denormals, for work that wants its own thread
/// count (`noisescale bench --threads`).
pub fn pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(|_| flush_denormals_on_this_thread())
        .build()?)
}

/// The processor's model name (`/proc/cpuinfo` on Linux), for benchmark tables.
pub fn model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Whether the processor has AVX-512F, which gemm's `x86-v4` kernels (enabled in this build)
/// use for every f32 matrix product.
pub fn has_avx512() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod arch {
    /// MXCSR flush-to-zero (bit 15) and denormals-are-zero (bit 6).
    const FTZ_DAZ: u32 = 0x8040;

    fn mxcsr() -> u32 {
        let mut value: u32 = 0;
        // SAFETY: `stmxcsr` stores the 32-bit MXCSR register to the given address, which points
        // at a live, aligned local.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut value, options(nostack, preserves_flags));
        }
        value
    }

    pub fn set_flush(on: bool) {
        let old = mxcsr();
        let new = if on { old | FTZ_DAZ } else { old & !FTZ_DAZ };
        // SAFETY: `ldmxcsr` loads MXCSR from a live local; only the FTZ and DAZ bits change, so
        // exception masks and rounding mode stay as they were.
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &new, options(nostack, readonly, preserves_flags));
        }
    }

    pub fn flushing() -> bool {
        mxcsr() & FTZ_DAZ == FTZ_DAZ
    }
}

#[cfg(target_arch = "aarch64")]
mod arch {
    /// FPCR.FZ: flush denormal inputs and outputs of single and double precision to zero.
    const FZ: u64 = 1 << 24;

    fn fpcr() -> u64 {
        let value: u64;
        // SAFETY: reading FPCR has no side effects.
        unsafe { std::arch::asm!("mrs {}, fpcr", out(reg) value, options(nomem, nostack)) };
        value
    }

    pub fn set_flush(on: bool) {
        let new = if on { fpcr() | FZ } else { fpcr() & !FZ };
        // SAFETY: only the FZ bit changes; rounding mode and traps stay as they were.
        unsafe { std::arch::asm!("msr fpcr, {}", in(reg) new, options(nomem, nostack)) };
    }

    pub fn flushing() -> bool {
        fpcr() & FZ != 0
    }
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
mod arch {
    pub fn set_flush(_on: bool) {}
    pub fn flushing() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `on_compute_thread` runs its closure on a thread of the global pool (so that the
    /// parallel work it starts is joined there), one that flushes denormals, and hands back
    /// what the closure returns.
    #[test]
    fn on_compute_thread_runs_on_a_thread_of_the_global_pool() {
        assert_eq!(rayon::current_thread_index(), None, "the test's own thread");
        let global = rayon::current_num_threads();
        let (index, threads, flushed, value) = on_compute_thread(|| {
            (
                rayon::current_thread_index(),
                rayon::current_num_threads(),
                denormals_flushed(),
                6 * 7,
            )
        });
        assert!(
            index.is_some_and(|i| i < global),
            "not a pool thread: {index:?}"
        );
        assert_eq!(threads, global);
        assert_eq!(flushed, flush_wanted());
        assert_eq!(value, 42);
    }

    /// A denormal product becomes zero with the mode on and stays denormal with it off, and
    /// the pool's workers get the mode.
    #[test]
    fn flushing_turns_denormals_into_zero_on_every_thread() {
        let tiny = std::hint::black_box(1e-30f32);
        let scale = std::hint::black_box(1e-10f32);
        let on_thread = |flush: bool| {
            std::thread::spawn(move || {
                arch::set_flush(flush);
                let product = std::hint::black_box(tiny) * std::hint::black_box(scale);
                (product, denormals_flushed())
            })
            .join()
            .unwrap()
        };
        #[cfg(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64"))]
        {
            let (kept, flag_off) = on_thread(false);
            assert!(kept != 0.0 && kept.is_subnormal() && !flag_off);
            let (flushed, flag_on) = on_thread(true);
            assert!(flushed == 0.0 && flag_on);
            if flush_wanted() {
                let pool = pool(3).unwrap();
                let flags = pool.broadcast(|_| denormals_flushed());
                assert_eq!(flags, vec![true; 3]);
            }
        }
        let _ = on_thread;
    }
}
