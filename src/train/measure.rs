//! `noisescale noise`: the gradient noise scale of a saved model, without training it.

use super::step::{StepError, StepPlan, forward_backward};
use crate::data::{self, Share, TrainSet};
use crate::gns::StepNorms;
use crate::learner::{TrainStep, Trainable};
use anyhow::{Context, Result, bail};
use burn::tensor::Device;

/// Measures the gradient noise scale of `model` as it stands (no update): `batches` batches of
/// `batch_size` training samples (each drawn without replacement, from `seed`; no augmentation),
/// each computed in `pieces` equal pieces exactly as the trainer computes micro-batches (for an
/// image set, give it without augmentation).
/// The result's `epoch_b_simple` is `Σ𝒮/Σ|𝒢|²` over the batches and `b_simple_stderr` its
/// standard error; `trace` and `grad_sq` are the means of 𝒮 and |𝒢|² (see [`crate::gns`]).
pub fn measure_noise_scale<M, T>(
    model: &M,
    data: &T,
    batches: usize,
    batch_size: usize,
    pieces: usize,
    seed: u64,
    device: &Device,
) -> Result<crate::gns::Reading>
where
    M: Trainable,
    T: TrainSet<Share: Share<Input = <M as TrainStep>::Input>>,
{
    use rand::seq::SliceRandom;
    let n = data.len();
    if pieces < 2 || batch_size < pieces || batch_size > n || batches == 0 {
        bail!(
            "measuring the noise scale needs 2 <= pieces <= batch size <= N ({n}) and at least one batch (got {batches} batches of {batch_size} in {pieces} pieces)"
        );
    }
    let plan = StepPlan {
        measure: true,
        seed,
        ..StepPlan::new(batch_size.div_ceil(pieces), 1)
    };
    let mut estimator = crate::gns::Estimator::default();
    let mut all: Vec<u32> = (0..n as u32).collect();
    let (mut trace_sum, mut grad_sum) = (0.0, 0.0);
    for i in 0..batches {
        let mut rng = data::derive_rng(seed, 0, 0x6e6f697365, i as u64);
        let (chosen, _) = all.partial_shuffle(&mut rng, batch_size);
        let share = data.assemble(chosen, seed, 0);
        let step = forward_backward(
            model,
            share,
            batch_size,
            &StepPlan {
                update: i as u64,
                ..plan
            },
            device,
        )
        .map_err(|e| match e {
            StepError::NonFinite { loss } => anyhow::anyhow!("the loss is {loss} on batch {i}"),
            StepError::Other(e) => e,
        })?;
        let small = step
            .pieces
            .iter()
            .map(|(len, norm)| *len as f64 / batch_size as f64 * norm)
            .sum();
        let norms = StepNorms {
            small,
            pieces: step.pieces.len() as f64,
            big: step.grads.sq_norm(),
            batch: batch_size as f64,
        };
        if let Some((t, g)) = norms.estimates() {
            trace_sum += t;
            grad_sum += g;
        }
        estimator.add(norms);
    }
    let mut reading = estimator
        .finish_epoch()
        .context("no batch gave a noise-scale measurement")?;
    reading.trace = trace_sum / batches as f64;
    reading.grad_sq = grad_sum / batches as f64;
    reading.b_simple = reading.epoch_b_simple;
    Ok(reading)
}
