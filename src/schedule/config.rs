//! The `[schedule]` table: its keys and their defaults (`validate.rs` checks them).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{AdaptiveConfig, Schedule, ScheduleKind};
use crate::noise;
use crate::units::Samples;

/// A per-epoch learning-rate schedule in PyTorch's terms, the input of `kind = "converted"`.
///
/// Its values are learning rates for the configured `lr` (ε0) before `lr_scale`; epoch `e`
/// (0-based) uses the value PyTorch's scheduler would give after `e` calls to `step()`.
/// In TOML: `lr_schedule = { type = "multistep", milestones = [60, 120], gamma = 0.2 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// `StepLR`: ε_e = ε0 · gamma^⌊e / step_size⌋.
    Step {
        /// Epochs between decays (≥ 1).
        step_size: u32,
        /// Multiplier per step (> 0).
        gamma: f64,
    },
    /// `MultiStepLR`: ε_e = ε0 · gamma^(number of milestones ≤ e).
    Multistep {
        /// Epochs at which ε is multiplied by `gamma`, strictly increasing in 1..epochs.
        milestones: Vec<u32>,
        /// Multiplier per milestone (> 0).
        gamma: f64,
    },
    /// `ExponentialLR`: ε_e = ε0 · gamma^e.
    Exponential {
        /// Multiplier per epoch (> 0).
        gamma: f64,
    },
    /// `CosineAnnealingLR` with T_max = epochs:
    /// ε_e = min_lr + (ε0 − min_lr)(1 + cos(π e / T_max)) / 2.
    Cosine {
        /// The floor ε approaches at the end of training, in [0, ε0].
        #[serde(default)]
        min_lr: f64,
    },
    /// Explicit learning rates, one per epoch.
    Table {
        /// ε for epochs 0, 1, …, epochs − 1 (each > 0).
        lrs: Vec<f64>,
    },
}

impl LrSchedule {
    /// ε_e / ε0 for epoch `e`, where `lr0` is the configured ε0 and `epochs` T_max.
    pub(super) fn multiplier(&self, e: u32, lr0: f64, epochs: u32) -> f64 {
        match self {
            LrSchedule::Step { step_size, gamma } => gamma.powi(pow(e / step_size)),
            LrSchedule::Multistep { milestones, gamma } => {
                gamma.powi(pow(phase_index(milestones, e)))
            }
            LrSchedule::Exponential { gamma } => gamma.powi(pow(e)),
            LrSchedule::Cosine { min_lr } => {
                let cos = (std::f64::consts::PI * f64::from(e) / f64::from(epochs)).cos();
                (min_lr + (lr0 - min_lr) * (1.0 + cos) / 2.0) / lr0
            }
            LrSchedule::Table { lrs } => lrs[e as usize] / lr0,
        }
    }
}

pub(super) fn pow(p: u32) -> i32 {
    i32::try_from(p).unwrap_or(i32::MAX)
}

/// Number of milestones ≤ `epoch`: the phase index (milestones are sorted).
pub(super) fn phase_index(milestones: &[u32], epoch: u32) -> u32 {
    milestones.iter().take_while(|&&m| m <= epoch).count() as u32
}

fn default_lr_segments() -> u32 {
    20
}
fn is_default_lr_segments(n: &u32) -> bool {
    *n == default_lr_segments()
}
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Megatron-LM's batch-size ramp-up (`--rampup-batch-size start increment samples`): B starts
/// at `start` and grows by `increment` in equal steps over the first `samples` samples until
/// it reaches the schedule's B0; ε is the recipe's throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rampup {
    /// Batch size at the start (≥ 1, < B0).
    pub start: usize,
    /// Growth per step (≥ 1; B0 − start must be a multiple).
    pub increment: usize,
    /// Samples over which B reaches B0 (≥ 1, at most the training length).
    pub samples: u64,
}

impl Rampup {
    /// Steps from `start` to `b0`.
    pub(super) fn steps(&self, b0: usize) -> u64 {
        ((b0 - self.start) / self.increment) as u64
    }

    /// The global sample at which step `k` (1..=steps) begins: `⌊k · samples / steps⌋`.
    pub(super) fn step_start(&self, k: u64, b0: usize) -> u64 {
        (u128::from(k) * u128::from(self.samples) / u128::from(self.steps(b0))) as u64
    }

    /// B at global sample `s`: `start + increment · (steps begun by s)`, B0 from `samples` on.
    pub(super) fn batch_at(&self, s: u64, b0: usize) -> usize {
        if s >= self.samples {
            return b0;
        }
        let steps = self.steps(b0);
        let begun = (1..=steps)
            .take_while(|&k| self.step_start(k, b0) <= s)
            .count();
        self.start + self.increment * begun
    }
}

fn default_factor() -> f64 {
    5.0
}
fn default_one_usize() -> usize {
    1
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_warmup_from() -> f64 {
    0.1
}

/// The `[schedule]` table of a run configuration: what [`ScheduleConfig::resolve`] turns
/// into a [`Schedule`] once the training-set size is known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ScheduleConfig {
    /// The schedule rule (default `decay-lr`).
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Training length in epochs (≥ 1); absent (0) on the sample clock, where `samples` gives it.
    #[serde(default)]
    pub epochs: u32,
    /// Training length in samples: the sample clock, on which phases, warm-up and ramp-up
    /// change at any sample count (`milestone_samples`, `warmup_samples`, `rampup`), as
    /// language-model training counts tokens. An epoch stays a pass over the N samples, so
    /// the run ends within one when `samples` is not a multiple of N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// On the sample clock: the samples at which a new phase starts, strictly increasing in
    /// 1..samples (the sample clock's `milestones`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub milestone_samples: Vec<u64>,
    /// On the sample clock: length of the linear warm-up in samples (default 0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_samples: u64,
    /// On the sample clock: the equal parts of `samples` an `lr_schedule` steps through, its
    /// "epochs" (default 20).
    #[serde(
        default = "default_lr_segments",
        skip_serializing_if = "is_default_lr_segments"
    )]
    pub lr_segments: u32,
    /// The batch-size ramp-up of `kind = "rampup"` (Megatron-LM's `--rampup-batch-size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rampup: Option<Rampup>,
    /// Initial learning rate ε0 (> 0).
    pub lr: f64,
    /// Initial batch size B0, in 1..=N.
    pub batch_size: usize,
    /// Momentum coefficient m in [0, 1) (default 0).
    #[serde(default)]
    pub momentum: f64,
    /// Noise-scale reduction per milestone (> 1, default 5 as in the paper).
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// Epochs at which a new phase starts, strictly increasing in 1..epochs.
    #[serde(default)]
    pub milestones: Vec<u32>,
    /// Largest batch size for `hybrid`, `converted` and `adaptive` (default N/10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<usize>,
    /// Every batch size is rounded to a multiple of this (micro-batch × workers; default 1).
    #[serde(default = "default_one_usize")]
    pub batch_multiple: usize,
    /// Length of the linear learning-rate warm-up in (fractional) epochs (default 0: none).
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Warm-up starts at this fraction of the scheduled ε, in [0, 1] (default 0.1).
    #[serde(default = "default_warmup_from")]
    pub warmup_from: f64,
    /// Multiply ε0 and B0 by this (> 0, default 1): same noise scale, fewer updates
    /// (paper section 5.1).
    #[serde(default = "default_one_f64")]
    pub lr_scale: f64,
    /// Raise the momentum to this m' and multiply B0 by (1 − m)/(1 − m') (paper section 5.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum_scaled: Option<f64>,
    /// The learning-rate schedule to convert; required by, and only allowed with,
    /// `kind = "converted"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_schedule: Option<LrSchedule>,
    /// The adaptive controller's settings; only allowed with `kind = "adaptive"` (default:
    /// [`AdaptiveConfig::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveConfig>,
}

impl ScheduleConfig {
    /// A configuration of kind `kind` with the given length, ε0 and B0 and every other key
    /// at its default.
    pub fn new(kind: ScheduleKind, epochs: u32, lr: f64, batch_size: usize) -> Self {
        ScheduleConfig {
            kind,
            epochs,
            samples: None,
            milestone_samples: Vec::new(),
            warmup_samples: 0,
            lr_segments: default_lr_segments(),
            rampup: None,
            lr,
            batch_size,
            momentum: 0.0,
            factor: default_factor(),
            milestones: Vec::new(),
            max_batch_size: None,
            batch_multiple: 1,
            warmup_epochs: 0.0,
            warmup_from: default_warmup_from(),
            lr_scale: 1.0,
            momentum_scaled: None,
            lr_schedule: None,
            adaptive: None,
        }
    }

    /// This configuration under another kind: milestones are dropped for `adaptive` (it takes
    /// none) and the adaptive settings for every other kind, so that any preset runs under any
    /// kind (`train --schedule`, `reproduce`). `converted` keeps its `lr_schedule`.
    pub fn with_kind(&self, kind: ScheduleKind) -> Self {
        let mut c = self.clone();
        c.kind = kind;
        if kind == ScheduleKind::Adaptive {
            c.milestones.clear();
            c.milestone_samples.clear();
        } else {
            c.adaptive = None;
        }
        if !matches!(
            kind,
            ScheduleKind::Converted | ScheduleKind::DecayLr | ScheduleKind::Rampup
        ) {
            c.lr_schedule = None;
        }
        c
    }

    /// The steps an `lr_schedule` goes through: epochs, or `lr_segments` on the sample clock.
    pub(super) fn lr_steps(&self) -> u32 {
        if self.samples.is_some() {
            self.lr_segments
        } else {
            self.epochs
        }
    }

    /// The adaptive controller's settings (the defaults where the table is absent).
    pub fn adaptive_config(&self) -> AdaptiveConfig {
        self.adaptive.clone().unwrap_or_default()
    }

    /// The paper's CIFAR-10 setting (Smith et al. 2018, section 5.1, wide ResNet): 200 epochs,
    /// B0 = 128, ε0 = 0.1, m = 0.9, factor 5 at epochs 60, 120 and 160; use with
    /// N = 50,000 ([`crate::data::cifar::TRAIN_SAMPLES`]).
    pub fn paper_cifar10(kind: ScheduleKind) -> Self {
        ScheduleConfig {
            momentum: 0.9,
            milestones: vec![60, 120, 160],
            ..ScheduleConfig::new(kind, 200, 0.1, 128)
        }
    }

    /// The batch-size cap used by `hybrid`, `converted` and `adaptive`: `max_batch_size`, or N/10.
    pub fn cap(&self, n: Samples) -> usize {
        self.max_batch_size
            .unwrap_or_else(|| noise::max_batch_size(n))
    }

    /// Checks every key against `n` and builds the per-phase schedule.
    ///
    /// # Errors
    /// [`ScheduleError`] naming the first key out of range and the range allowed.
    pub fn resolve(&self, n: Samples) -> Result<Schedule, ScheduleError> {
        self.validate(n)?;
        Ok(self.build(n))
    }
}

/// Most epochs a schedule may have (the paper's runs have 200).
pub const MAX_EPOCHS: u32 = 100_000;

/// Why a [`ScheduleConfig`] cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    /// A key's value is outside its allowed range.
    #[error("schedule.{key} = {value} is out of range: {allowed}")]
    OutOfRange {
        /// The key, relative to the `[schedule]` table (e.g. `batch_size`).
        key: &'static str,
        /// The offending value as written.
        value: String,
        /// The allowed range, in words.
        allowed: String,
    },
    /// `kind = "converted"` without an `lr_schedule`.
    #[error("schedule.lr_schedule is required when schedule.kind = \"converted\"")]
    MissingLrSchedule,
    /// An `lr_schedule` given for a kind that does not use it (`converted` converts it,
    /// `decay-lr` and `rampup` follow it).
    #[error(
        "schedule.lr_schedule is only used with schedule.kind = \"converted\", \"decay-lr\" or \"rampup\", not \"{kind}\""
    )]
    UnusedLrSchedule {
        /// The `schedule.kind` given (only `converted` takes an `lr_schedule`).
        kind: ScheduleKind,
    },
    /// An `[schedule.adaptive]` table given for another kind.
    #[error("schedule.adaptive is only used with schedule.kind = \"adaptive\", not \"{kind}\"")]
    UnusedAdaptive {
        /// The `schedule.kind` given (not `adaptive`).
        kind: ScheduleKind,
    },
    /// `kind = "rampup"` without a `rampup` table.
    #[error(
        "schedule.rampup = {{ start, increment, samples }} is required when schedule.kind = \"rampup\""
    )]
    MissingRampup,
    /// A key of the sample clock given with `epochs`.
    #[error(
        "schedule.{key} counts samples: give the length as schedule.samples (the sample clock), not schedule.epochs"
    )]
    SampleClockOnly {
        /// The key.
        key: &'static str,
    },
    /// A key of the epoch clock given with `samples`.
    #[error(
        "schedule.{key} counts epochs: on the sample clock (schedule.samples) use its sample-count form (milestone_samples, warmup_samples)"
    )]
    EpochClockOnly {
        /// The key.
        key: &'static str,
    },
    /// The training set is empty (N = 0).
    #[error("the training set is empty (N = 0); a schedule needs N ≥ 1")]
    EmptyDataset,
}
