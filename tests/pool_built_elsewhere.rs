//! A process whose rayon global pool a library user built before noisescale's first call, which
//! then comes from several of its threads at once. It needs a process of its own: which pool is
//! global, and whether noisescale has set it up, is decided once per process.

use rayon::prelude::*;
use std::time::Duration;

/// `cpu::setup` from every worker at once must neither deadlock (its broadcast to the workers
/// once waited inside a `Once` that the other workers were blocked on) nor leave a worker
/// unflushed; and the step's functions called from those workers run there, inline.
#[test]
fn first_calls_from_the_threads_of_a_pool_built_elsewhere() {
    rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build_global()
        .expect("the first global pool of this process");
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("cpu::setup from the pool's threads has not returned after 120 s: deadlock");
        std::process::abort();
    });
    let inline: Vec<bool> = (0..64)
        .into_par_iter()
        .map(|_| {
            noisescale::cpu::setup();
            let here = rayon::current_thread_index();
            noisescale::cpu::on_compute_thread(rayon::current_thread_index) == here
        })
        .collect();
    assert!(
        inline.iter().all(|&same| same),
        "on_compute_thread left a pool thread"
    );
    let flushed: Vec<bool> = rayon::broadcast(|_| noisescale::cpu::denormals_flushed());
    assert_eq!(flushed, vec![noisescale::cpu::flush_wanted(); 4]);
}
