//! What keeps data-parallel ranks in step besides the gradient all-reduce.

use crate::dist::Communicator;
use crate::params::{Grads, named_tensors, replace_tensors};
use crate::state::EpochAccumulator;
use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use std::time::Instant;

/// A 64-bit FNV-1a checksum of every tensor of the model (weights and running statistics), to
/// check that ranks agree.
pub fn weights_checksum<M: Module>(model: &M) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for t in named_tensors(model) {
        for x in t.value.into_data().iter::<f32>() {
            for b in x.to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
        }
    }
    h
}

/// Replaces every rank's batch-norm running statistics by their mean over the ranks.
///
/// Each rank updates its running statistics from its own shards only; averaging them (in f64)
/// before every evaluation and checkpoint makes all ranks hold the same model, which the
/// checkpoint stores and the weight checksum then covers.
pub(super) fn average_running_stats<M: Module>(model: M, comm: &dyn Communicator) -> Result<M> {
    let world = comm.world_size();
    let buffers: Vec<_> = named_tensors(&model)
        .into_iter()
        .filter(|t| !t.trainable)
        .collect();
    if world == 1 || buffers.is_empty() {
        return Ok(model);
    }
    let mut flat: Vec<f64> = Vec::new();
    for t in &buffers {
        flat.extend(t.value.to_data().iter::<f32>().map(f64::from));
    }
    comm.all_reduce_sum_f64(&mut flat)?;
    let mut offset = 0;
    let mut values = std::collections::HashMap::new();
    for t in buffers {
        let len = t.value.shape().num_elements();
        let mean: Vec<f32> = flat[offset..offset + len]
            .iter()
            .map(|&v| (v / world as f64) as f32)
            .collect();
        offset += len;
        let device = t.value.device();
        values.insert(
            t.name,
            Tensor::<1>::from_data(TensorData::new(mean, [len]), &device),
        );
    }
    // `replace_tensors` names every tensor it left alone (the trainable ones); what matters is
    // that every running statistic found its place.
    let (model, _) = replace_tensors(model, &mut values);
    if !values.is_empty() {
        let names: Vec<_> = values.keys().collect();
        bail!("running statistics not found when averaging them over ranks: {names:?}");
    }
    Ok(model)
}

/// The partial-epoch sums of all ranks, summed: what a checkpoint stores, so that a resumed run
/// (on any number of ranks) counts each sample once.
pub(super) fn global_epoch_sums(
    acc: &EpochAccumulator,
    comm: &dyn Communicator,
) -> Result<EpochAccumulator> {
    let mut sums = [acc.loss_sum, acc.correct as f64, acc.count as f64];
    comm.all_reduce_sum_f64(&mut sums)?;
    Ok(EpochAccumulator {
        loss_sum: sums[0],
        correct: sums[1] as u64,
        count: sums[2] as u64,
        ..acc.clone()
    })
}

/// What the ranks agree on after each update besides the gradient: whether to stop (any rank
/// signalled), whether a mid-epoch checkpoint is due (any rank's clock says so), and the
/// noise-scale sums Σ (b_i/B)|g_i|² and the number of pieces.
#[derive(Debug, Clone, Copy)]
pub(super) struct Agreed {
    pub(super) stop: bool,
    pub(super) due: bool,
    pub(super) small: f64,
    pub(super) pieces: f64,
}

/// Sums the ranks' gradients, and this rank's [`Agreed`] with them, in one all-reduce of one
/// host buffer; counts the calls, bytes and seconds in `acc`.
pub(super) fn all_reduce_update(
    grads: Grads,
    local: Agreed,
    comm: &dyn Communicator,
    acc: &mut EpochAccumulator,
) -> Result<(Grads, Agreed)> {
    let t = Instant::now();
    let mut flat = grads.to_flat();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let extra = [
        flag(local.stop),
        local.small as f32,
        local.pieces as f32,
        flag(local.due),
    ];
    flat.extend(extra);
    comm.all_reduce_sum(&mut flat)?;
    let tail = flat.split_off(flat.len() - extra.len());
    let grads = grads.from_flat(&flat);
    let elems = flat.len() + extra.len();
    acc.allreduce_calls += elems.div_ceil(crate::dist::BUCKET_ELEMS) as u64;
    acc.allreduce_bytes += (elems * 4) as u64;
    acc.comm_seconds += t.elapsed().as_secs_f64();
    let agreed = Agreed {
        stop: tail[0] > 0.0,
        due: tail[3] > 0.0,
        small: tail[1] as f64,
        pieces: tail[2] as f64,
    };
    Ok((grads, agreed))
}
