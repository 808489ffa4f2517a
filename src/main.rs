use clap::Parser;
use noisescale::cli::{Cli, run};
use noisescale::train::{INTERRUPTED, Interrupted};
use std::sync::atomic::Ordering;

/// mimalloc instead of glibc malloc: training allocates and frees large activation and gradient
/// buffers every step; glibc returns them to the kernel and page-faults them back in (a quarter
/// of the step time was system time in `bench/RESULTS.md`), mimalloc keeps them (told to, in
/// `noisescale::allocator`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Before any thread starts: mimalloc's options are not thread-safe.
    noisescale::allocator::keep_freed_memory();
    let cli = Cli::parse();
    // Denormals flushed on this thread and every compute thread (see `cpu`).
    noisescale::cpu::setup();
    // First Ctrl-C: checkpoint after the current update and stop; second: stop at once.
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!(
                "\ninterrupt: second Ctrl-C, stopping now without a checkpoint; the last checkpoint written is kept (resume from it with --resume)"
            );
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: writing a checkpoint after the current update (Ctrl-C again to abort)"
        );
    });
    // On a compute thread, so that parallel work is joined, not injected (`cpu::on_compute_thread`).
    if let Err(e) = noisescale::cpu::on_compute_thread(|| run(cli)) {
        eprintln!("error: {e:#}");
        let code = if e.downcast_ref::<Interrupted>().is_some() {
            130
        } else {
            1
        };
        std::process::exit(code);
    }
}
