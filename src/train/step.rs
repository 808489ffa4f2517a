//! One update's forward and backward passes: the seam the trainer, `bench` and the noise-scale
//! estimator share.

use super::eval::{accuracy_count, to_tensors};
use crate::data;
use crate::model::Model;
use crate::params::Grads;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::Device;

pub(super) fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 of a combination: distinct (seed, update, micro) give unrelated seeds.
    let mut z = a ^ b.wrapping_mul(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

/// How one update's batch is pushed through the model on this rank.
#[derive(Debug, Clone, Copy)]
pub struct StepPlan {
    /// Largest piece pushed through the model at once (`train.max_micro_batch`).
    pub max_micro_batch: usize,
    /// Cut a share that fits one micro-batch into this many pieces anyway (1: never), so that
    /// the noise-scale estimator has two batch sizes to compare; pieces stay whole multiples
    /// of `quantum`.
    pub min_pieces: usize,
    /// Samples a piece boundary must respect (the ghost batch size; 1: any).
    pub quantum: usize,
    /// Measure each piece's squared gradient norm (for [`crate::gns`]).
    pub measure: bool,
    /// The run's seed: piece `i` of update `u` reseeds the backend's random stream (dropout)
    /// with `mix(seed, mix(u, i))`, so a resumed run draws the same dropout masks.
    pub seed: u64,
    /// The update being computed (1-based).
    pub update: u64,
    /// Fault injection: report a NaN loss (tests of the divergence guard).
    pub inject_nan: bool,
}

impl StepPlan {
    /// The size of every piece but the last, for a share of `local` samples.
    pub fn piece_len(&self, local: usize) -> usize {
        let q = self.quantum.max(1);
        if local <= self.max_micro_batch && self.min_pieces > 1 {
            let chunks = local.div_ceil(q);
            if chunks >= self.min_pieces {
                return chunks.div_ceil(self.min_pieces) * q;
            }
        }
        self.max_micro_batch.max(1)
    }
}

/// What one update's forward and backward passes produced on this rank.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// `Σ (b_i/B) g_i` over this rank's pieces: its part of the gradient of the batch's mean
    /// loss (the all-reduce sums the parts).
    pub grads: Grads,
    /// `Σ loss × samples` over this rank's pieces.
    pub loss_sum: f64,
    /// Correct predictions (training mode).
    pub correct: u64,
    /// Per piece: its samples `b_i` and, when measured, `|g_i|²` of its mean loss gradient.
    pub pieces: Vec<(usize, f64)>,
}

/// Why a step failed.
#[derive(Debug)]
pub enum StepError {
    /// The loss was NaN or infinite.
    NonFinite {
        /// The loss.
        loss: f64,
    },
    /// Anything else.
    Other(anyhow::Error),
}

/// One update's forward and backward passes on this rank's share `batch` of a global batch of
/// `global_len` samples: the share is cut into pieces ([`StepPlan::piece_len`]), each piece's
/// gradient weighted by `len/global_len`, which sums (over pieces and ranks) to the gradient of
/// the mean loss over the whole batch. The trainer and `bench` both run this.
pub fn forward_backward(
    model: &Model,
    batch: &data::Batch,
    global_len: usize,
    plan: &StepPlan,
    device: &Device,
) -> Result<StepOutput, StepError> {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let [_, c, h, w] = batch.shape;
    let img = c * h * w;
    let local = batch.len();
    let piece = plan.piece_len(local);
    let mut out = StepOutput {
        grads: Grads::default(),
        loss_sum: 0.0,
        correct: 0,
        pieces: Vec::new(),
    };
    let mut start = 0;
    while start < local {
        let len = piece.min(local - start);
        device.seed(mix(plan.seed, mix(plan.update, out.pieces.len() as u64)));
        let (x, y) = to_tensors(
            &batch.images[start * img..(start + len) * img],
            &batch.labels[start..start + len],
            [len, c, h, w],
            device,
        );
        let logits = model.forward(x);
        let loss = loss_fn.forward(logits.clone(), y.clone());
        let mut loss_value = loss.clone().into_scalar::<f32>() as f64;
        if plan.inject_nan {
            loss_value = f64::NAN;
        }
        if !loss_value.is_finite() {
            return Err(StepError::NonFinite { loss: loss_value });
        }
        out.loss_sum += loss_value * len as f64;
        out.correct += accuracy_count(logits.detach().inner(), y.inner());
        let g = Grads::from_backward(model, &loss.backward());
        let norm = if plan.measure { g.sq_norm() } else { f64::NAN };
        out.grads = std::mem::take(&mut out.grads)
            .accumulate(g.scale(len as f64 / global_len as f64))
            .map_err(|e| {
                StepError::Other(e.context(format!("micro-batch {}", out.pieces.len())))
            })?;
        out.pieces.push((len, norm));
        start += len;
    }
    if local == 0 {
        // This rank's share of a last batch smaller than the ranks is empty: it adds nothing,
        // but joins the all-reduce with a buffer of the right size.
        out.grads = Grads::zeros_like(model);
    }
    Ok(out)
}
