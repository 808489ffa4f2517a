//! One update's forward and backward passes: the seam the trainer, `bench` and the noise-scale
//! estimator share.

use crate::data::Share;
use crate::learner::{StepItem, TrainOutput, TrainStep, Trainable};
use crate::params::Grads;
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
    /// Pieces of at most `max_micro_batch` samples whose boundaries respect `quantum` (the ghost
    /// batch size; 0 or 1: any), nothing cut further or measured, seed 0, update 0: what the
    /// trainer, `bench` and `noise` start from.
    pub fn new(max_micro_batch: usize, quantum: usize) -> StepPlan {
        StepPlan {
            max_micro_batch,
            min_pieces: 1,
            quantum: quantum.max(1),
            measure: false,
            seed: 0,
            update: 0,
            inject_nan: false,
        }
    }

    /// Each batch in one piece, nothing measured: the plain step.
    pub fn whole_batch() -> StepPlan {
        StepPlan::new(usize::MAX, 1)
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
    /// Correct predictions (training mode); `None` where the model's output has no accuracy.
    pub correct: Option<u64>,
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

/// One update's forward and backward passes on this rank's share of a global batch of
/// `global_len` samples: the share is cut into pieces ([`StepPlan::piece_len`]), the model's
/// [`TrainStep`] runs once per piece and each piece's gradient is weighted by `len/global_len`,
/// which sums (over pieces and ranks) to the gradient of the mean loss over the whole batch. The
/// trainer and `bench` both run this. It takes the share: a share of images goes to the device
/// once, uncopied on the CPU, and its pieces are views of it. On the CPU it runs on a thread of
/// rayon's pool ([`crate::device::on_compute_thread`]), so a caller outside the pool hands the
/// step over once instead of once per parallel operation.
pub fn forward_backward<M, S>(
    model: &M,
    share: S,
    global_len: usize,
    plan: &StepPlan,
    device: &Device,
) -> Result<StepOutput, StepError>
where
    M: Trainable,
    S: Share<Input = <M as TrainStep>::Input>,
{
    crate::device::on_compute_thread(device, || {
        forward_backward_here(model, share, global_len, plan, device)
    })
}

/// [`forward_backward`] on the calling thread.
fn forward_backward_here<M, S>(
    model: &M,
    share: S,
    global_len: usize,
    plan: &StepPlan,
    device: &Device,
) -> Result<StepOutput, StepError>
where
    M: Trainable,
    S: Share<Input = <M as TrainStep>::Input>,
{
    let local = share.len();
    let piece = plan.piece_len(local);
    let mut out = StepOutput {
        grads: Grads::default(),
        loss_sum: 0.0,
        correct: None,
        pieces: Vec::new(),
    };
    if local == 0 {
        // This rank's share of a last batch smaller than the ranks is empty: it adds nothing,
        // but joins the all-reduce with a buffer of the right size.
        out.grads = Grads::zeros_like(model);
        return Ok(out);
    }
    // What the host needs (losses, correct counts, the pieces' squared norms) stays on the
    // device until one read after the last piece: a GPU backend waits for its queue at every
    // read.
    let mut stats: Vec<Tensor<1>> = Vec::new();
    let mut lens = Vec::new();
    let mut norm_parts = 0;
    let mut counts = false;
    let mut remaining = local;
    for input in share.into_pieces(piece, device) {
        let len = piece.min(remaining);
        remaining -= len;
        let piece_seed = mix(plan.seed, mix(plan.update, lens.len() as u64));
        crate::device::seeded(device, piece_seed, || ());
        let TrainOutput { grads, item } = TrainStep::step(model, input);
        let mut piece_stats = vec![item.loss().detach().inner().reshape([1])];
        if let Some(c) = item.correct() {
            counts = true;
            piece_stats.push(c.reshape([1]));
        }
        let g = Grads::from_params(model, &grads);
        if plan.measure
            && let Some(parts) = g.sq_norm_parts()
        {
            norm_parts = parts.dims()[0];
            piece_stats.push(parts);
        }
        stats.push(Tensor::cat(piece_stats, 0));
        out.grads = std::mem::take(&mut out.grads)
            .accumulate(g.scale(len as f64 / global_len as f64))
            .map_err(|e| StepError::Other(e.context(format!("micro-batch {}", lens.len()))))?;
        lens.push(len);
    }
    let values = Tensor::cat(stats, 0)
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| StepError::Other(anyhow::anyhow!("reading the step's losses: {e:?}")))?;
    let per_piece = 1 + usize::from(counts) + if plan.measure { norm_parts } else { 0 };
    read_pieces(&mut out, &values, per_piece, &lens, counts, plan)?;
    Ok(out)
}

/// Fills `out` from the values read back after the last piece: per piece its loss, its correct
/// count (where `counts`) and its squared gradient norm parts (where measured); a NaN or
/// infinite loss is [`StepError::NonFinite`].
fn read_pieces(
    out: &mut StepOutput,
    values: &[f32],
    per_piece: usize,
    lens: &[usize],
    counts: bool,
    plan: &StepPlan,
) -> Result<(), StepError> {
    let mut correct = 0u64;
    for (i, &len) in lens.iter().enumerate() {
        let v = &values[i * per_piece..(i + 1) * per_piece];
        let loss = if plan.inject_nan {
            f64::NAN
        } else {
            v[0] as f64
        };
        if !loss.is_finite() {
            return Err(StepError::NonFinite { loss });
        }
        out.loss_sum += loss * len as f64;
        if counts {
            correct += v[1] as u64;
        }
        // Per-tensor f32 sums added in f64, as `Grads::sq_norm` does.
        let norm = if plan.measure {
            v[1 + usize::from(counts)..]
                .iter()
                .map(|&x| f64::from(x))
                .sum()
        } else {
            f64::NAN
        };
        out.pieces.push((len, norm));
    }
    out.correct = counts.then_some(correct);
    Ok(())
}
