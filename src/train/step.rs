//! One update's forward and backward passes: the seam the trainer, `bench` and the noise-scale
//! estimator share.

use super::eval::{correct_count, to_tensors};
use crate::data;
use crate::model::Classifier;
use crate::params::Grads;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Tensor};

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
    /// Each batch in one piece, nothing measured: the plain step for a model of your own
    /// (`examples/custom_model.rs`).
    pub fn whole_batch() -> StepPlan {
        StepPlan {
            max_micro_batch: usize::MAX,
            min_pieces: 1,
            quantum: 1,
            measure: false,
            seed: 0,
            update: 0,
            inject_nan: false,
        }
    }

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
        /// The mean loss of the first piece that was not finite (NaN or ±∞).
        loss: f64,
    },
    /// Any other failure: accumulating the gradients or reading the losses back.
    Other(anyhow::Error),
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::NonFinite { loss } => write!(f, "the loss is {loss}"),
            StepError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for StepError {}

/// One update's forward and backward passes on this rank's share `batch` of a global batch of
/// `global_len` samples: the share is cut into pieces ([`StepPlan::piece_len`]), each piece's
/// gradient weighted by `len/global_len`, which sums (over pieces and ranks) to the gradient of
/// the mean loss over the whole batch. The trainer and `bench` both run this. It takes the batch:
/// its images become the input tensor, uncopied on the CPU. On the CPU it runs on a thread of
/// rayon's pool ([`crate::device::on_compute_thread`]), so a caller outside the pool hands the
/// step over once instead of once per parallel operation.
pub fn forward_backward<M: Classifier>(
    model: &M,
    batch: data::Batch,
    global_len: usize,
    plan: &StepPlan,
    device: &Device,
) -> Result<StepOutput, StepError> {
    crate::device::on_compute_thread(device, || {
        forward_backward_here(model, batch, global_len, plan, device)
    })
}

/// [`forward_backward`] on the calling thread.
fn forward_backward_here<M: Classifier>(
    model: &M,
    batch: data::Batch,
    global_len: usize,
    plan: &StepPlan,
    device: &Device,
) -> Result<StepOutput, StepError> {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let [_, c, h, w] = batch.shape;
    let local = batch.len();
    let piece = plan.piece_len(local);
    let mut out = StepOutput {
        grads: Grads::default(),
        loss_sum: 0.0,
        correct: 0,
        pieces: Vec::new(),
    };
    if local == 0 {
        // This rank's share of a last batch smaller than the ranks is empty: it adds nothing,
        // but joins the all-reduce with a buffer of the right size.
        out.grads = Grads::zeros_like(model);
        return Ok(out);
    }
    // The share goes to the device once; pieces are slices of it there. What the host needs
    // (losses, correct counts, the pieces' squared norms) stays on the device until one read
    // after the last piece: a GPU backend waits for its queue at every read.
    let (all_x, all_y) = to_tensors(batch.images, &batch.labels, [local, c, h, w], device);
    let mut stats: Vec<Tensor<1>> = Vec::new();
    let mut norm_parts = 0;
    let mut start = 0;
    while start < local {
        let len = piece.min(local - start);
        let piece_seed = mix(plan.seed, mix(plan.update, out.pieces.len() as u64));
        crate::device::seeded(device, piece_seed, || ());
        let (x, y) = if len == local {
            (all_x.clone(), all_y.clone())
        } else {
            (
                all_x.clone().narrow(0, start, len),
                all_y.clone().narrow(0, start, len),
            )
        };
        let logits = model.logits(x);
        let loss = loss_fn.forward(logits.clone(), y.clone());
        let mut piece_stats = vec![loss.clone().detach().inner(), correct_count(logits, y)];
        let g = Grads::from_backward(model, &loss.backward());
        if plan.measure
            && let Some(parts) = g.sq_norm_parts()
        {
            norm_parts = parts.dims()[0];
            piece_stats.push(parts);
        }
        stats.push(Tensor::cat(piece_stats, 0));
        out.grads = std::mem::take(&mut out.grads)
            .accumulate(g.scale(len as f64 / global_len as f64))
            .map_err(|e| {
                StepError::Other(e.context(format!("micro-batch {}", out.pieces.len())))
            })?;
        out.pieces.push((len, f64::NAN));
        start += len;
    }
    let values = Tensor::cat(stats, 0)
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| StepError::Other(anyhow::anyhow!("reading the step's losses: {e:?}")))?;
    let per_piece = 2 + if plan.measure { norm_parts } else { 0 };
    for (i, (len, norm)) in out.pieces.iter_mut().enumerate() {
        let v = &values[i * per_piece..(i + 1) * per_piece];
        let loss = if plan.inject_nan {
            f64::NAN
        } else {
            v[0] as f64
        };
        if !loss.is_finite() {
            return Err(StepError::NonFinite { loss });
        }
        out.loss_sum += loss * *len as f64;
        out.correct += v[1] as u64;
        if plan.measure {
            // Per-tensor f32 sums added in f64, as `Grads::sq_norm` does.
            *norm = v[2..].iter().map(|&x| f64::from(x)).sum();
        }
    }
    Ok(out)
}
