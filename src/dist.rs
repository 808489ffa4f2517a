//! Data parallelism: the communication a trainer needs, behind one trait.
//!
//! Every rank walks the same global batches and takes its shard of each
//! ([`crate::data::shard`]); after the backward passes, one all-reduce over all gradients
//! (flattened into one buffer) sums them, and every rank applies the identical optimiser step.
//! [`Local`] is the single-process case; the `mpi` feature adds an MPI communicator.

use anyhow::Result;

/// What data-parallel training needs from the transport.
pub trait Communicator {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of processes (ranks) taking part; 1 for [`Local`].
    fn world_size(&self) -> usize;
    /// Sums `buf` element-wise over all ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Sums `buf` element-wise over all ranks, in place, in f64 (epoch totals, statistics
    /// whose sums must not lose digits to f32).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Gathers one `u64` from every rank (for weight checksums).
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>>;
    /// Waits for every rank.
    fn barrier(&self) -> Result<()>;
}

/// The single-process communicator: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Communicator for Local {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        Ok(vec![value])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Elements per all-reduce call: gradients are flattened into one buffer and reduced in buckets
/// of at most this many `f32`s (32 MiB), so a model of any size costs a few large calls per
/// update instead of one call per tensor.
pub const BUCKET_ELEMS: usize = 8 << 20;

/// Seconds a collective may wait for the other ranks before this rank gives up
/// (`NOISESCALE_COMM_TIMEOUT`, default 600).
pub fn comm_timeout() -> std::time::Duration {
    let secs = std::env::var("NOISESCALE_COMM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(600);
    std::time::Duration::from_secs(secs)
}

/// Whether this process was started by an MPI launcher (`mpirun`, `srun`), judged from the
/// environment variables the launchers set.
pub fn launched_by_mpi() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// The communicator for this process: MPI when launched by `mpirun` (and built with the `mpi`
/// feature), [`Local`] otherwise.
pub fn from_env() -> Result<Box<dyn Communicator>> {
    if launched_by_mpi() {
        #[cfg(feature = "mpi")]
        {
            return Ok(Box::new(mpi_comm::Mpi::init()?));
        }
        #[cfg(not(feature = "mpi"))]
        {
            let size = std::env::var("OMPI_COMM_WORLD_SIZE")
                .or_else(|_| std::env::var("PMI_SIZE"))
                .unwrap_or_default();
            if size != "1" {
                anyhow::bail!(
                    "started by mpirun with {size} ranks, but this build has no MPI support: rebuild with `cargo build --release --features mpi`"
                );
            }
        }
    }
    Ok(Box::new(Local))
}

#[cfg(feature = "mpi")]
mod mpi_comm {
    use super::{BUCKET_ELEMS, Communicator, comm_timeout};
    use anyhow::{Result, bail};
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::{Communicator as _, CommunicatorCollectives as _};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// MPI over `MPI_COMM_WORLD`, with a watchdog: a collective that waits longer than
    /// [`comm_timeout`] (a rank died or hangs) ends this process with a clear error instead of
    /// hanging forever.
    pub struct Mpi {
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
        /// Milliseconds since `epoch` at which the current collective started; 0 when idle.
        busy_since: Arc<AtomicU64>,
        epoch: Instant,
    }

    impl Mpi {
        pub fn init() -> Result<Self> {
            let Some(universe) = mpi::initialize() else {
                bail!("MPI could not be initialised (was it initialised twice?)");
            };
            let world = universe.world();
            let busy_since = Arc::new(AtomicU64::new(0));
            let epoch = Instant::now();
            let timeout = comm_timeout();
            let rank = world.rank();
            let watch = busy_since.clone();
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    let since = watch.load(Ordering::SeqCst);
                    if since == 0 {
                        continue;
                    }
                    let waited = epoch.elapsed().as_millis() as u64 - since;
                    if waited > timeout.as_millis() as u64 {
                        eprintln!(
                            "error: rank {rank}: a collective has waited {:.0}s for the other ranks (timeout {}s, NOISESCALE_COMM_TIMEOUT): a rank has died or hangs; giving up",
                            waited as f64 / 1000.0,
                            timeout.as_secs()
                        );
                        std::process::exit(3);
                    }
                }
            });
            Ok(Self {
                _universe: universe,
                world,
                busy_since,
                epoch,
            })
        }

        fn guarded<T>(&self, f: impl FnOnce() -> T) -> T {
            let now = (self.epoch.elapsed().as_millis() as u64).max(1);
            self.busy_since.store(now, Ordering::SeqCst);
            let out = f();
            self.busy_since.store(0, Ordering::SeqCst);
            out
        }
    }

    impl Communicator for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn world_size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            self.guarded(|| {
                for chunk in buf.chunks_mut(BUCKET_ELEMS) {
                    let send = chunk.to_vec();
                    self.world
                        .all_reduce_into(&send[..], chunk, SystemOperation::sum());
                }
            });
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            self.guarded(|| {
                let send = buf.to_vec();
                self.world
                    .all_reduce_into(&send[..], buf, SystemOperation::sum());
            });
            Ok(())
        }
        fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
            let mut out = vec![0u64; self.world_size()];
            self.guarded(|| self.world.all_gather_into(&value, &mut out[..]));
            Ok(out)
        }
        fn barrier(&self) -> Result<()> {
            self.guarded(|| self.world.barrier());
            Ok(())
        }
    }
}
