//! Where a run stands between two updates, besides its tensors: the sampler's position, the
//! counters, the sums over the unfinished epoch, the noise-scale estimator and the adaptive
//! schedule's state. A checkpoint stores it; the trainer moves it on.

use crate::data::Position;
use crate::units::{Samples, Updates};
use serde::{Deserialize, Serialize};

/// Sums over the part of an epoch already trained, so a run resumed mid-epoch reports the
/// same epoch metrics as an uninterrupted one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochAccumulator {
    /// Σ loss × samples.
    pub loss_sum: f64,
    /// Correct predictions on the training batches so far (training mode).
    pub correct: u64,
    /// Samples seen by this rank's accumulator (global count after reduction).
    pub count: u64,
    /// Seconds of training so far in the epoch.
    pub train_seconds: f64,
    /// All-reduce calls so far in the epoch.
    pub allreduce_calls: u64,
    /// Bytes all-reduced so far in the epoch.
    pub allreduce_bytes: u64,
    /// Seconds in communication so far in the epoch.
    pub comm_seconds: f64,
}

/// The training state besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Where the sampler stands: epoch and samples into it.
    pub position: Position,
    /// Parameter updates so far.
    pub updates: Updates,
    /// Training samples so far.
    pub samples: Samples,
    /// Wall seconds of the run so far (all sessions).
    pub wall_seconds: f64,
    /// Sums over the unfinished epoch.
    pub epoch: EpochAccumulator,
    /// The gradient-noise-scale estimator (its averages and the epoch's measurements).
    #[serde(default)]
    pub gns: crate::gns::Estimator,
    /// The adaptive schedule's controller state (`None` for the fixed kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<crate::schedule::adaptive::AdaptiveState>,
    /// The evaluations within training so far (`train.eval_every`), rewritten into
    /// `evals.jsonl` on resume so that the file matches an uninterrupted run's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evals: Vec<crate::metrics::EvalMetrics>,
}

impl TrainState {
    /// The state of a run that has not started.
    pub fn start() -> Self {
        Self {
            position: Position::start_of(0),
            updates: Updates(0),
            samples: Samples(0),
            wall_seconds: 0.0,
            epoch: EpochAccumulator::default(),
            gns: crate::gns::Estimator::default(),
            adaptive: None,
            evals: Vec::new(),
        }
    }
}
