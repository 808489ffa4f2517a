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
    /// Number of processes.
    fn world_size(&self) -> usize;
    /// Sums `buf` element-wise over all ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
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
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        Ok(vec![value])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}
