//! Training schedules: from training progress to learning rate, batch size and momentum.
//!
//! Smith, Kindermans, Ying & Le ("Don't Decay the Learning Rate, Increase the Batch Size",
//! ICLR 2018) show that what a learning-rate schedule really schedules is the SGD noise
//! scale `g ≈ εN/(B(1 − m))` (see [`crate::noise`]). Dividing ε by a factor at a milestone
//! and multiplying B by the same factor lower g alike, and give the same test accuracy
//! after the same number of epochs, but the growing batch needs far fewer parameter updates
//! (29,000 instead of 78,200 for their CIFAR-10 run).
//!
//! A [`ScheduleConfig`] (the `[schedule]` table of a run's TOML) names one of four kinds:
//!
//! * `decay-lr`: the baseline. B = B0 and ε = ε0 / factor^p, where p is the number of
//!   milestones ≤ the epoch (PyTorch `MultiStepLR` semantics).
//! * `increase-batch`: ε = ε0 and B = B0 · factor^p. B may not exceed N; where it would,
//!   B = N (rounded down to `batch_multiple`) and ε is lowered instead so that the
//!   approximate g is still that of `decay-lr`.
//! * `hybrid`: the batch grows as in `increase-batch` while it stays ≤ `max_batch_size`
//!   (default N/10, where the paper's B ≪ N approximation ends); later milestones keep the
//!   last batch size ≤ the cap and divide ε by the remaining factor (paper section 5.2).
//! * `converted`: any learning-rate schedule ([`LrSchedule`]: step, multi-step,
//!   exponential, cosine, table) turned into a batch-size schedule with constant ε:
//!   B_e = B0 · ε0 / ε_e, capped as in `hybrid`, lowering ε only where the cap binds.
//! * `adaptive`: no milestones; B follows the measured gradient noise scale during training,
//!   capped as in `hybrid` ([`adaptive`]). Its resolved [`Schedule`] is the starting point
//!   (ε0, B0, m); the trainer's [`adaptive::Controller`] changes B and ε from there.
//!
//! Two starting-point transformations from the paper's section 5.1 ("effective learning
//! rate") compose with every kind: `lr_scale = k` multiplies ε0 and B0 by k (same g, k
//! times fewer updates), and `momentum_scaled = m'` raises the momentum to m' and multiplies
//! B0 by (1 − m)/(1 − m') (B ∝ 1/(1 − m)). So does a linear learning-rate warm-up (Goyal et
//! al. 2017, "Accurate, Large Minibatch SGD") over the first `warmup_epochs` epochs, from
//! `warmup_from` × the scheduled ε to the full ε, evaluated per update at fractional epochs.
//!
//! Every schedule aims at the same ideal noise scale per epoch (that of `decay-lr`, or of
//! the converted LR schedule); batch sizes are whole numbers and multiples of
//! `batch_multiple`, so the achieved g can differ from that target. [`PhaseTable`] reports
//! the relative difference as `g_rounding_error` next to the update counts.
//!
//! [`ScheduleConfig::resolve`] validates the configuration against the training-set size and
//! produces a [`Schedule`]: a list of [`Phase`]s, each a run of epochs with one (ε, B, m).
//! The batch size changes only at epoch boundaries; within an epoch only warm-up moves ε.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::noise;
use crate::units::{Epochs, Samples, Updates, updates_per_epoch};

pub mod adaptive;

pub use adaptive::AdaptiveConfig;

/// Which rule turns the milestones (or an LR schedule, or the measured noise scale) into
/// per-epoch hyper-parameters.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Constant batch size, ε divided by `factor` at each milestone (the paper's baseline).
    #[default]
    DecayLr,
    /// Constant ε, batch size multiplied by `factor` at each milestone (the paper's proposal).
    IncreaseBatch,
    /// Batch size grows up to `max_batch_size`, then ε decays (paper section 5.2).
    Hybrid,
    /// An arbitrary [`LrSchedule`] converted to an equal-noise batch-size schedule.
    Converted,
    /// B follows the measured gradient noise scale, no milestones ([`adaptive`]).
    Adaptive,
}

impl ScheduleKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [ScheduleKind; 5] = [
        ScheduleKind::DecayLr,
        ScheduleKind::Hybrid,
        ScheduleKind::IncreaseBatch,
        ScheduleKind::Adaptive,
        ScheduleKind::Converted,
    ];

    /// Whether B is capped at `max_batch_size` (default N/10) with ε decayed beyond.
    pub fn is_capped(self) -> bool {
        matches!(
            self,
            ScheduleKind::Hybrid | ScheduleKind::Converted | ScheduleKind::Adaptive
        )
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScheduleKind::DecayLr => "decay-lr",
            ScheduleKind::IncreaseBatch => "increase-batch",
            ScheduleKind::Hybrid => "hybrid",
            ScheduleKind::Converted => "converted",
            ScheduleKind::Adaptive => "adaptive",
        })
    }
}

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
    fn multiplier(&self, e: u32, lr0: f64, epochs: u32) -> f64 {
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

fn pow(p: u32) -> i32 {
    i32::try_from(p).unwrap_or(i32::MAX)
}

/// Number of milestones ≤ `epoch`: the phase index (milestones are sorted).
fn phase_index(milestones: &[u32], epoch: u32) -> u32 {
    milestones.iter().take_while(|&&m| m <= epoch).count() as u32
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
    /// Training length in epochs (≥ 1).
    pub epochs: u32,
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

/// Training-set size of CIFAR-10, the paper's main benchmark (Smith et al. 2018, section 5).
pub const CIFAR10_SAMPLES: Samples = Samples(50_000);

impl ScheduleConfig {
    /// A configuration of kind `kind` with the given length, ε0 and B0 and every other key
    /// at its default.
    pub fn new(kind: ScheduleKind, epochs: u32, lr: f64, batch_size: usize) -> Self {
        ScheduleConfig {
            kind,
            epochs,
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
        } else {
            c.adaptive = None;
        }
        if kind != ScheduleKind::Converted {
            c.lr_schedule = None;
        }
        c
    }

    /// The adaptive controller's settings (the defaults where the table is absent).
    pub fn adaptive_config(&self) -> AdaptiveConfig {
        self.adaptive.clone().unwrap_or_default()
    }

    /// The paper's CIFAR-10 setting (Smith et al. 2018, section 5.1, wide ResNet): 200 epochs,
    /// B0 = 128, ε0 = 0.1, m = 0.9, factor 5 at epochs 60, 120 and 160; use with
    /// [`CIFAR10_SAMPLES`].
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

    fn validate(&self, n: Samples) -> Result<(), ScheduleError> {
        let nn = usize::try_from(n.0).unwrap_or(usize::MAX);
        if n.0 == 0 {
            return Err(ScheduleError::EmptyDataset);
        }
        if self.epochs == 0 {
            return Err(out_of_range("epochs", 0, "must be at least 1"));
        }
        if self.epochs > MAX_EPOCHS {
            // The schedule keeps per-epoch tables: bound them (found by tests/fuzz.rs).
            return Err(out_of_range(
                "epochs",
                self.epochs,
                format!("must be at most {MAX_EPOCHS}"),
            ));
        }
        if self.batch_size == 0 || self.batch_size > nn {
            return Err(out_of_range(
                "batch_size",
                self.batch_size,
                format!("must be in 1..=N ({nn})"),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(out_of_range("lr", self.lr, "must be finite and > 0"));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(out_of_range("momentum", self.momentum, "must be in [0, 1)"));
        }
        if !(self.factor.is_finite() && self.factor > 1.0) {
            return Err(out_of_range(
                "factor",
                self.factor,
                "must be finite and > 1",
            ));
        }
        check_milestones("milestones", &self.milestones, self.epochs)?;
        if self.batch_multiple == 0 || self.batch_multiple > nn {
            return Err(out_of_range(
                "batch_multiple",
                self.batch_multiple,
                format!("must be in 1..=N ({nn})"),
            ));
        }
        if self.kind.is_capped() {
            let cap = self.cap(n);
            let low = self.batch_size.max(self.batch_multiple);
            if cap < low || cap > nn {
                let value = match self.max_batch_size {
                    Some(c) => c.to_string(),
                    None => format!("{cap} (default N/10)"),
                };
                return Err(out_of_range(
                    "max_batch_size",
                    value,
                    format!("must be in {low}..=N ({nn}) (at least batch_size and batch_multiple)"),
                ));
            }
        }
        if !(self.warmup_epochs.is_finite()
            && (0.0..=f64::from(self.epochs)).contains(&self.warmup_epochs))
        {
            return Err(out_of_range(
                "warmup_epochs",
                self.warmup_epochs,
                format!("must be in [0, epochs ({})]", self.epochs),
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_from) {
            return Err(out_of_range(
                "warmup_from",
                self.warmup_from,
                "must be in [0, 1]",
            ));
        }
        if !(self.lr_scale.is_finite() && self.lr_scale > 0.0) {
            return Err(out_of_range(
                "lr_scale",
                self.lr_scale,
                "must be finite and > 0",
            ));
        }
        if let Some(m2) = self.momentum_scaled
            && !(m2 >= self.momentum && m2 < 1.0)
        {
            return Err(out_of_range(
                "momentum_scaled",
                m2,
                format!("must be in [momentum ({}), 1)", self.momentum),
            ));
        }
        self.validate_adaptive(n)?;
        match (&self.lr_schedule, self.kind) {
            (None, ScheduleKind::Converted) => Err(ScheduleError::MissingLrSchedule),
            (Some(_), kind) if kind != ScheduleKind::Converted => {
                Err(ScheduleError::UnusedLrSchedule { kind })
            }
            (Some(s), _) => self.validate_lr_schedule(s),
            (None, _) => Ok(()),
        }
    }

    fn validate_adaptive(&self, n: Samples) -> Result<(), ScheduleError> {
        if self.kind != ScheduleKind::Adaptive {
            return match self.adaptive {
                Some(_) => Err(ScheduleError::UnusedAdaptive { kind: self.kind }),
                None => Ok(()),
            };
        }
        if !self.milestones.is_empty() {
            return Err(out_of_range(
                "milestones",
                format!("{:?}", self.milestones),
                "must be empty with kind = \"adaptive\": the measured noise scale decides when B grows",
            ));
        }
        let a = self.adaptive_config();
        if !(a.alpha.is_finite() && a.alpha > 0.0) {
            return Err(out_of_range(
                "adaptive.alpha",
                a.alpha,
                "must be finite and > 0",
            ));
        }
        if !(a.min_change.is_finite() && a.min_change >= 1.0) {
            return Err(out_of_range(
                "adaptive.min_change",
                a.min_change,
                "must be finite and >= 1",
            ));
        }
        let cap = self.cap(n);
        if let Some(b) = a.min_batch_size
            && (b == 0 || b > cap)
        {
            return Err(out_of_range(
                "adaptive.min_batch_size",
                b,
                format!("must be in 1..=max_batch_size ({cap})"),
            ));
        }
        Ok(())
    }

    fn validate_lr_schedule(&self, s: &LrSchedule) -> Result<(), ScheduleError> {
        let check_gamma = |gamma: f64| {
            if gamma.is_finite() && gamma > 0.0 {
                Ok(())
            } else {
                Err(out_of_range(
                    "lr_schedule.gamma",
                    gamma,
                    "must be finite and > 0",
                ))
            }
        };
        match s {
            LrSchedule::Step { step_size, gamma } => {
                if *step_size == 0 {
                    return Err(out_of_range(
                        "lr_schedule.step_size",
                        0,
                        "must be at least 1",
                    ));
                }
                check_gamma(*gamma)
            }
            LrSchedule::Multistep { milestones, gamma } => {
                check_milestones("lr_schedule.milestones", milestones, self.epochs)?;
                check_gamma(*gamma)
            }
            LrSchedule::Exponential { gamma } => check_gamma(*gamma),
            LrSchedule::Cosine { min_lr } => {
                if (0.0..=self.lr).contains(min_lr) {
                    Ok(())
                } else {
                    Err(out_of_range(
                        "lr_schedule.min_lr",
                        min_lr,
                        format!("must be in [0, lr ({})]", self.lr),
                    ))
                }
            }
            LrSchedule::Table { lrs } => {
                if lrs.len() != self.epochs as usize {
                    return Err(out_of_range(
                        "lr_schedule.lrs",
                        format!("[{} values]", lrs.len()),
                        format!("must have one value per epoch ({})", self.epochs),
                    ));
                }
                match lrs.iter().find(|lr| !(lr.is_finite() && **lr > 0.0)) {
                    Some(bad) => Err(out_of_range(
                        "lr_schedule.lrs",
                        format!("[.., {bad}, ..]"),
                        "every value must be finite and > 0",
                    )),
                    None => Ok(()),
                }
            }
        }
    }

    /// Builds the schedule of a validated configuration.
    fn build(&self, n: Samples) -> Schedule {
        let nf = n.0 as f64;
        let nn = usize::try_from(n.0).unwrap_or(usize::MAX);
        let multiple = self.batch_multiple;
        // Starting point after the section-5.1 transformations (ideal, un-rounded B0).
        let m = self.momentum_scaled.unwrap_or(self.momentum);
        let lr0 = self.lr * self.lr_scale;
        let b0 =
            noise::batch_for_same_noise(self.batch_size as f64, self.lr_scale, self.momentum, m);
        // The ideal approximate noise scale at the start, from the configuration as written.
        let g0 = noise::noise_scale_approx(self.lr, n, self.batch_size, self.momentum);
        let hard_cap = if self.kind.is_capped() {
            self.cap(n)
        } else {
            nn
        };
        // Largest multiple of `multiple` ≤ hard_cap (validation keeps it ≥ multiple).
        let top = (hard_cap / multiple).max(1) * multiple;

        let mut per_epoch = Vec::with_capacity(self.epochs as usize);
        let mut targets = Vec::with_capacity(self.epochs as usize);
        let mut errors = Vec::with_capacity(self.epochs as usize);
        for e in 0..self.epochs {
            let p = phase_index(&self.milestones, e);
            let (target_mult, lr_ideal, b_ideal) = match self.kind {
                // The starting point; the controller moves B and ε during training.
                ScheduleKind::Adaptive => (1.0, lr0, b0),
                ScheduleKind::DecayLr => {
                    let d = self.factor.powi(pow(p));
                    (1.0 / d, lr0 / d, b0)
                }
                ScheduleKind::IncreaseBatch => {
                    let d = self.factor.powi(pow(p));
                    (1.0 / d, lr0, b0 * d)
                }
                ScheduleKind::Hybrid => {
                    // Grow B for the first q milestones while the rounded size fits the cap.
                    let mut q = 0;
                    while q < p
                        && noise::round_to_multiple(b0 * self.factor.powi(pow(q + 1)), multiple)
                            <= hard_cap
                    {
                        q += 1;
                    }
                    let d = self.factor.powi(pow(p));
                    (
                        1.0 / d,
                        lr0 / self.factor.powi(pow(p - q)),
                        b0 * self.factor.powi(pow(q)),
                    )
                }
                ScheduleKind::Converted => {
                    let s = self.lr_schedule.as_ref().expect("validated");
                    let k = s.multiplier(e, self.lr, self.epochs);
                    (k, lr0, b0 / k)
                }
            };
            let target = g0 * target_mult;
            let mut b = noise::round_to_multiple(b_ideal, multiple);
            let mut lr = lr_ideal;
            // g ∝ ε/B and ε was chosen for B = b_ideal, so rounding B alone moves g by
            // |b_ideal − b| / b relative to the target.
            let mut err = (b_ideal - b as f64).abs() / b as f64;
            if b > hard_cap {
                // Cap binds: largest allowed B, and ε lowered so that g hits the target.
                b = top;
                lr = target * (1.0 - m) * b as f64 / nf;
                err = 0.0;
            }
            per_epoch.push((lr, b));
            targets.push(target);
            errors.push(err);
        }

        let mut phases: Vec<Phase> = Vec::new();
        for (e, &(lr, b)) in per_epoch.iter().enumerate() {
            let e = e as u32;
            match phases.last_mut() {
                Some(last) if last.lr == lr && last.batch_size == b => last.end = Epochs(e + 1),
                _ => phases.push(Phase {
                    start: Epochs(e),
                    end: Epochs(e + 1),
                    lr,
                    batch_size: b,
                    momentum: m,
                }),
            }
        }
        Schedule {
            dataset_size: n,
            epochs: Epochs(self.epochs),
            phases,
            target_noise: targets,
            rounding_error: errors,
            warmup_epochs: self.warmup_epochs,
            warmup_from: self.warmup_from,
        }
    }
}

fn check_milestones(key: &'static str, ms: &[u32], epochs: u32) -> Result<(), ScheduleError> {
    let show = || format!("{ms:?}");
    if ms.windows(2).any(|w| w[0] >= w[1]) {
        return Err(out_of_range(key, show(), "must be strictly increasing"));
    }
    if ms.iter().any(|&m| m == 0 || m >= epochs) {
        return Err(out_of_range(
            key,
            show(),
            format!("each must be in 1..epochs (1..{epochs})"),
        ));
    }
    Ok(())
}

/// Most epochs a schedule may have (the paper's runs have 200).
pub const MAX_EPOCHS: u32 = 100_000;

fn out_of_range(
    key: &'static str,
    value: impl fmt::Display,
    allowed: impl Into<String>,
) -> ScheduleError {
    ScheduleError::OutOfRange {
        key,
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

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
    /// An `lr_schedule` given for a kind that does not use it.
    #[error("schedule.lr_schedule is only used with schedule.kind = \"converted\", not \"{kind}\"")]
    UnusedLrSchedule {
        /// The configured kind.
        kind: ScheduleKind,
    },
    /// An `[schedule.adaptive]` table given for another kind.
    #[error("schedule.adaptive is only used with schedule.kind = \"adaptive\", not \"{kind}\"")]
    UnusedAdaptive {
        /// The configured kind.
        kind: ScheduleKind,
    },
    /// The training set is empty (N = 0).
    #[error("the training set is empty (N = 0); a schedule needs N ≥ 1")]
    EmptyDataset,
}

/// The hyper-parameters in force at one point of training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// Learning rate ε (warm-up included).
    pub lr: f64,
    /// Global batch size B.
    pub batch_size: usize,
    /// Momentum coefficient m.
    pub momentum: f64,
}

/// A run of whole epochs `start..end` with one learning rate, batch size and momentum
/// (before warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// First epoch of the phase (0-based).
    pub start: Epochs,
    /// First epoch after the phase (exclusive).
    pub end: Epochs,
    /// Learning rate ε.
    pub lr: f64,
    /// Global batch size B.
    pub batch_size: usize,
    /// Momentum coefficient m.
    pub momentum: f64,
}

/// The exact and approximate SGD noise scale of one epoch (see [`crate::noise`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NoiseScale {
    /// `ε/(1 − m) · (N/B − 1)`.
    pub exact: f64,
    /// `ε/(1 − m) · N/B`.
    pub approx: f64,
}

/// A resolved schedule: per-phase hyper-parameters for a training set of known size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    dataset_size: Samples,
    epochs: Epochs,
    phases: Vec<Phase>,
    /// The ideal (un-rounded) approximate noise scale each epoch aims at.
    target_noise: Vec<f64>,
    /// Per epoch, the relative error of the achieved approximate g against the target.
    rounding_error: Vec<f64>,
    warmup_epochs: f64,
    warmup_from: f64,
}

impl Schedule {
    /// The phase containing `epoch`.
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn phase(&self, epoch: Epochs) -> &Phase {
        assert!(
            epoch < self.epochs,
            "epoch {epoch} is beyond the schedule ({} epochs)",
            self.epochs
        );
        let i = self.phases.partition_point(|p| p.end <= epoch);
        &self.phases[i]
    }

    /// Hyper-parameters at `fraction` ∈ [0, 1) of the way through `epoch` (0-based). The
    /// fraction (clamped to [0, 1]) only matters during warm-up, where ε is the phase's ε
    /// times `warmup_from + (1 − warmup_from) · t / warmup_epochs` at progress
    /// t = epoch + fraction (Goyal et al. 2017, linear warm-up).
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn hyper(&self, epoch: Epochs, fraction: f64) -> Hyper {
        let p = self.phase(epoch);
        let t = f64::from(epoch.0) + fraction.clamp(0.0, 1.0);
        let lr = if t < self.warmup_epochs {
            p.lr * (self.warmup_from + (1.0 - self.warmup_from) * t / self.warmup_epochs)
        } else {
            p.lr
        };
        Hyper {
            lr,
            batch_size: p.batch_size,
            momentum: p.momentum,
        }
    }

    /// Global batch size during `epoch`.
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn batch_size(&self, epoch: Epochs) -> usize {
        self.phase(epoch).batch_size
    }

    /// The phases, in order, covering epochs `0..epochs` without gaps.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// Training length.
    pub fn epochs(&self) -> Epochs {
        self.epochs
    }

    /// Training-set size N.
    pub fn dataset_size(&self) -> Samples {
        self.dataset_size
    }

    /// Warm-up length in epochs (0: none).
    pub fn warmup_epochs(&self) -> f64 {
        self.warmup_epochs
    }

    /// Fraction of ε at which warm-up starts.
    pub fn warmup_from(&self) -> f64 {
        self.warmup_from
    }

    /// Updates in `epoch`: `ceil(N / B)`, the last partial batch included.
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn updates_in_epoch(&self, epoch: Epochs) -> Updates {
        updates_per_epoch(self.dataset_size, self.batch_size(epoch))
    }

    /// Updates over the whole schedule.
    pub fn total_updates(&self) -> Updates {
        self.phases
            .iter()
            .map(|p| self.phase_updates(p))
            .fold(Updates(0), |a, b| a + b)
    }

    fn phase_updates(&self, p: &Phase) -> Updates {
        let per = updates_per_epoch(self.dataset_size, p.batch_size);
        Updates(per.0 * u64::from(p.end.0 - p.start.0))
    }

    /// Exact and approximate noise scale during `epoch` (warm-up ignored).
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn noise_scale(&self, epoch: Epochs) -> NoiseScale {
        let p = self.phase(epoch);
        NoiseScale {
            exact: noise::noise_scale(p.lr, self.dataset_size, p.batch_size, p.momentum),
            approx: noise::noise_scale_approx(p.lr, self.dataset_size, p.batch_size, p.momentum),
        }
    }

    /// The ideal approximate noise scale `epoch` aims at: that of `decay-lr` (or of the
    /// converted LR schedule) computed without rounding.
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn target_noise_scale(&self, epoch: Epochs) -> f64 {
        assert!(epoch < self.epochs, "epoch {epoch} is beyond the schedule");
        self.target_noise[epoch.0 as usize]
    }

    /// Relative error of the achieved approximate noise scale during `epoch` against the
    /// ideal target, caused by rounding B to a whole multiple of `batch_multiple`:
    /// `|B_ideal − B| / B` (0 when nothing was rounded, or where a cap fixed B and ε was
    /// recomputed to hit the target exactly).
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn g_rounding_error(&self, epoch: Epochs) -> f64 {
        assert!(epoch < self.epochs, "epoch {epoch} is beyond the schedule");
        self.rounding_error[epoch.0 as usize]
    }

    /// A per-phase summary with noise scales and update counts.
    pub fn table(&self) -> PhaseTable {
        let mut cumulative = Updates(0);
        let phases = self
            .phases
            .iter()
            .map(|p| {
                let updates = self.phase_updates(p);
                cumulative += updates;
                let g = self.noise_scale(p.start);
                let err = (p.start.0..p.end.0)
                    .map(|e| self.g_rounding_error(Epochs(e)))
                    .fold(0.0, f64::max);
                PhaseRow {
                    start: p.start,
                    end: p.end,
                    lr: p.lr,
                    batch_size: p.batch_size,
                    momentum: p.momentum,
                    g_exact: g.exact,
                    g_approx: g.approx,
                    updates,
                    cumulative_updates: cumulative,
                    g_rounding_error: err,
                }
            })
            .collect();
        PhaseTable {
            total_updates: cumulative,
            epochs: self.epochs,
            dataset_size: self.dataset_size,
            samples: Samples(self.dataset_size.0 * u64::from(self.epochs.0)),
            phases,
        }
    }
}

/// One phase of a [`PhaseTable`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PhaseRow {
    /// First epoch of the phase.
    pub start: Epochs,
    /// First epoch after the phase (exclusive).
    pub end: Epochs,
    /// Learning rate ε.
    pub lr: f64,
    /// Global batch size B.
    pub batch_size: usize,
    /// Momentum coefficient m.
    pub momentum: f64,
    /// Exact noise scale `ε/(1 − m) · (N/B − 1)`.
    pub g_exact: f64,
    /// Approximate noise scale `ε/(1 − m) · N/B`.
    pub g_approx: f64,
    /// Updates in this phase.
    pub updates: Updates,
    /// Updates from the start of training to the end of this phase.
    pub cumulative_updates: Updates,
    /// Largest relative error, over the phase's epochs, of `g_approx` against the ideal
    /// un-rounded target noise scale (0 when nothing was rounded).
    pub g_rounding_error: f64,
}

/// A per-phase summary of a [`Schedule`]: printable as an aligned text table
/// (`Display`) or as one JSON object (`Serialize`) with `total_updates` at top level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseTable {
    /// Updates over the whole schedule.
    pub total_updates: Updates,
    /// Training length.
    pub epochs: Epochs,
    /// Training-set size N.
    pub dataset_size: Samples,
    /// Samples processed over the whole schedule (N × epochs).
    pub samples: Samples,
    /// One row per phase.
    pub phases: Vec<PhaseRow>,
}

impl fmt::Display for PhaseTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>7} {:>7} {:>10} {:>8} {:>6} {:>12} {:>12} {:>9} {:>10} {:>9}",
            "start",
            "end",
            "lr",
            "batch",
            "mom",
            "g_exact",
            "g_approx",
            "updates",
            "cumul.",
            "g_err"
        )?;
        for r in &self.phases {
            writeln!(
                f,
                "{:>7} {:>7} {:>10.4e} {:>8} {:>6.3} {:>12.4} {:>12.4} {:>9} {:>10} {:>9.2e}",
                r.start,
                r.end,
                r.lr,
                r.batch_size,
                r.momentum,
                r.g_exact,
                r.g_approx,
                r.updates,
                r.cumulative_updates,
                r.g_rounding_error
            )?;
        }
        write!(
            f,
            "total: {} updates, {} epochs, {} samples (N = {})",
            self.total_updates, self.epochs, self.samples, self.dataset_size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const N: Samples = CIFAR10_SAMPLES;

    fn paper(kind: ScheduleKind) -> ScheduleConfig {
        ScheduleConfig::paper_cifar10(kind)
    }

    fn batches(s: &Schedule) -> Vec<(u32, u32, usize)> {
        s.phases()
            .iter()
            .map(|p| (p.start.0, p.end.0, p.batch_size))
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
    }

    #[test]
    fn paper_decay_lr() {
        // 200 epochs × ceil(50000/128) = 200 × 391 = 78,200 updates.
        let s = paper(ScheduleKind::DecayLr).resolve(N).unwrap();
        assert_eq!(s.total_updates(), Updates(78_200));
        assert_eq!(s.phases().len(), 4);
        assert!(s.phases().iter().all(|p| p.batch_size == 128));
        let lrs: Vec<f64> = s.phases().iter().map(|p| p.lr).collect();
        for (got, want) in lrs.iter().zip([0.1, 0.02, 0.004, 0.0008]) {
            assert!(close(*got, want), "{got} vs {want}");
        }
        // MultiStepLR semantics: epoch 59 still at ε0, epoch 60 already decayed.
        assert!(close(s.hyper(Epochs(59), 0.9).lr, 0.1));
        assert!(close(s.hyper(Epochs(60), 0.0).lr, 0.02));
        assert_eq!(s.hyper(Epochs(60), 0.0).momentum, 0.9);
    }

    #[test]
    fn paper_increase_batch() {
        // 60·391 + 60·79 + 40·16 + 40·4 = 23460 + 4740 + 640 + 160 = 29,000
        // (B = 128, 640, 3200, 16000).
        let s = paper(ScheduleKind::IncreaseBatch).resolve(N).unwrap();
        assert_eq!(s.total_updates(), Updates(29_000));
        assert_eq!(
            batches(&s),
            [
                (0, 60, 128),
                (60, 120, 640),
                (120, 160, 3200),
                (160, 200, 16_000)
            ]
        );
        assert!(s.phases().iter().all(|p| p.lr == 0.1));
        assert_eq!(s.batch_size(Epochs(159)), 3200);
        assert_eq!(s.batch_size(Epochs(160)), 16_000);
        assert_eq!(s.updates_in_epoch(Epochs(0)), Updates(391));
        assert_eq!(s.updates_in_epoch(Epochs(199)), Updates(4));

        // Milestones 60/120/180: 23460 + 4740 + 60·16 + 20·4 = 23460+4740+960+80 = 29,240.
        let cfg = ScheduleConfig {
            milestones: vec![60, 120, 180],
            ..paper(ScheduleKind::IncreaseBatch)
        };
        assert_eq!(cfg.resolve(N).unwrap().total_updates(), Updates(29_240));
    }

    #[test]
    fn paper_hybrid() {
        // Cap 5120: B 128 → 640 → 3200; 16000 > 5120, so B stays 3200 and ε ÷ 5 at 160.
        // 60·391 + 60·79 + 40·16 + 40·16 = 23460 + 4740 + 640 + 640 = 29,480.
        let cfg = ScheduleConfig {
            max_batch_size: Some(5120),
            ..paper(ScheduleKind::Hybrid)
        };
        let s = cfg.resolve(N).unwrap();
        assert_eq!(s.total_updates(), Updates(29_480));
        assert_eq!(
            batches(&s),
            [
                (0, 60, 128),
                (60, 120, 640),
                (120, 160, 3200),
                (160, 200, 3200)
            ]
        );
        assert!(close(s.phases()[2].lr, 0.1));
        assert!(close(s.phases()[3].lr, 0.02));
        // Same approximate g as decay-lr in the last phase: 0.02/0.1 · 50000/3200 = 3.125.
        let d = paper(ScheduleKind::DecayLr).resolve(N).unwrap();
        assert!(close(
            s.noise_scale(Epochs(199)).approx,
            d.noise_scale(Epochs(199)).approx
        ));
        assert!(close(s.noise_scale(Epochs(199)).approx, 3.125));
        // Default cap N/10 = 5000 gives the same here.
        let s2 = paper(ScheduleKind::Hybrid).resolve(N).unwrap();
        assert_eq!(s2.total_updates(), Updates(29_480));
    }

    #[test]
    fn paper_effective_lr_variants() {
        // lr_scale 5: ε0 = 0.5, B0 = 640; B 640 → 3200 → 16000 → 80000 > N, so the last
        // phase runs at B = N = 50000 with ε = 0.5 · 50000/80000 = 0.3125.
        // 60·79 + 60·16 + 40·4 + 40·1 = 4740 + 960 + 160 + 40 = 5,900.
        let cfg = ScheduleConfig {
            lr_scale: 5.0,
            ..paper(ScheduleKind::IncreaseBatch)
        };
        let s = cfg.resolve(N).unwrap();
        assert_eq!(s.total_updates(), Updates(5_900));
        assert_eq!(
            batches(&s),
            [
                (0, 60, 640),
                (60, 120, 3200),
                (120, 160, 16_000),
                (160, 200, 50_000)
            ]
        );
        assert!(close(s.phases()[0].lr, 0.5));
        assert!(close(s.phases()[3].lr, 0.3125));
        assert_eq!(s.g_rounding_error(Epochs(199)), 0.0);

        // momentum_scaled 0.98: B0 = 128 · 0.1/0.02 = 640, ε0 = 0.1, m = 0.98: same 5,900.
        let cfg = ScheduleConfig {
            momentum_scaled: Some(0.98),
            ..paper(ScheduleKind::IncreaseBatch)
        };
        let s = cfg.resolve(N).unwrap();
        assert_eq!(s.total_updates(), Updates(5_900));
        assert_eq!(batches(&s)[0], (0, 60, 640));
        assert!(s.phases().iter().all(|p| p.momentum == 0.98));
        assert!(close(s.phases()[0].lr, 0.1));
        // g ≈ 0.1/0.02 · 50000/640 = 390.625, as for the baseline.
        assert!((s.noise_scale(Epochs(0)).approx - 390.625).abs() < 1e-9);
    }

    #[test]
    fn converted_multistep_is_increase_batch() {
        let cfg = ScheduleConfig {
            kind: ScheduleKind::Converted,
            lr_schedule: Some(LrSchedule::Multistep {
                milestones: vec![60, 120, 160],
                gamma: 0.2,
            }),
            max_batch_size: Some(50_000),
            ..paper(ScheduleKind::Converted)
        };
        let s = cfg.resolve(N).unwrap();
        let ib = paper(ScheduleKind::IncreaseBatch).resolve(N).unwrap();
        assert_eq!(s.phases(), ib.phases());
        assert_eq!(s.total_updates(), Updates(29_000));

        // With the default cap N/10 = 5000 the last phase is B = 5000 and ε lowered to
        // 3.125 · (1 − 0.9) · 5000 / 50000 = 0.03125, keeping g = 3.125 exactly.
        let cfg = ScheduleConfig {
            max_batch_size: None,
            ..cfg
        };
        let s = cfg.resolve(N).unwrap();
        let last = s.phases()[3];
        assert_eq!(last.batch_size, 5000);
        assert!(close(last.lr, 0.03125));
        assert!(close(s.noise_scale(Epochs(199)).approx, 3.125));
        // 23460 + 4740 + 640 + 40·10 = 29,240.
        assert_eq!(s.total_updates(), Updates(29_240));
    }

    #[test]
    fn converted_cosine_is_monotone_and_reports_rounding() {
        let cfg = ScheduleConfig {
            lr_schedule: Some(LrSchedule::Cosine { min_lr: 0.0 }),
            ..paper(ScheduleKind::Converted)
        };
        let s = cfg.resolve(N).unwrap();
        let bs: Vec<usize> = (0..200).map(|e| s.batch_size(Epochs(e))).collect();
        assert!(bs.windows(2).all(|w| w[0] <= w[1]), "{bs:?}");
        assert_eq!(bs[0], 128);
        assert_eq!(*bs.last().unwrap(), 5000, "the cap binds at the end");
        // Epoch 1: ε_1/ε0 = (1 + cos(π/200))/2, B = 128 / that ≈ 128.0079 → 128.
        let ideal = 128.0 / ((1.0 + (std::f64::consts::PI / 200.0).cos()) / 2.0);
        let err = (ideal - 128.0) / 128.0;
        assert!(err > 0.0);
        assert!(close(s.g_rounding_error(Epochs(1)), err));
        let table = s.table();
        assert!(table.phases.iter().any(|r| r.g_rounding_error > 0.0));
        for r in &table.phases {
            assert!(r.g_rounding_error <= 0.5 / r.batch_size as f64 + 1e-12);
        }
        // Phases merge epochs with identical (ε, B, m).
        assert!(table.phases.len() < 200);
        assert!(table.phases[0].end > Epochs(1)); // epochs 0 and 1 both at B = 128
        // The row reports the worst epoch: the last one, where the ideal B is furthest from 128.
        let last = Epochs(table.phases[0].end.0 - 1);
        assert_eq!(table.phases[0].g_rounding_error, s.g_rounding_error(last));
        assert_eq!(s.g_rounding_error(Epochs(0)), 0.0);
    }

    #[test]
    fn converted_other_lr_schedules() {
        let conv = |lr_schedule| ScheduleConfig {
            lr_schedule: Some(lr_schedule),
            max_batch_size: Some(50_000),
            ..paper(ScheduleKind::Converted)
        };
        // StepLR(step 60, γ 0.2): B = 128, 640, 3200, 16000 at 0, 60, 120, 180.
        let s = conv(LrSchedule::Step {
            step_size: 60,
            gamma: 0.2,
        })
        .resolve(N)
        .unwrap();
        assert_eq!(s.total_updates(), Updates(29_240));
        // ExponentialLR(γ 0.5): B doubles every epoch until N.
        let s = conv(LrSchedule::Exponential { gamma: 0.5 })
            .resolve(N)
            .unwrap();
        assert_eq!(s.batch_size(Epochs(3)), 1024);
        assert_eq!(s.batch_size(Epochs(199)), 50_000);
        // A table equal to ε0 everywhere except a halving at the end.
        let mut lrs = vec![0.1; 200];
        lrs[199] = 0.05;
        let s = conv(LrSchedule::Table { lrs }).resolve(N).unwrap();
        assert_eq!(batches(&s), [(0, 199, 128), (199, 200, 256)]);
    }

    #[test]
    fn warmup_is_linear() {
        let cfg = ScheduleConfig {
            warmup_epochs: 5.0,
            warmup_from: 0.1,
            ..paper(ScheduleKind::IncreaseBatch)
        };
        let s = cfg.resolve(N).unwrap();
        // Start: 0.1 · ε0 = 0.01.
        assert!(close(s.hyper(Epochs(0), 0.0).lr, 0.01));
        // At t = warmup_epochs: ε0.
        assert!(close(s.hyper(Epochs(5), 0.0).lr, 0.1));
        assert!(close(s.hyper(Epochs(4), 1.0).lr, 0.1));
        // Halfway (t = 2.5): 0.1 · (0.1 + 0.9 · 0.5) = 0.055.
        assert!(close(s.hyper(Epochs(2), 0.5).lr, 0.055));
        // Linear: equal steps in t give equal steps in ε.
        let at = |t: f64| s.hyper(Epochs(t.floor() as u32), t.fract()).lr;
        let step = at(0.5) - at(0.0);
        for k in 1..10 {
            let t = 0.5 * f64::from(k);
            assert!((at(t + 0.5) - at(t) - step).abs() < 1e-12);
        }
        // Batch size is untouched by warm-up.
        assert_eq!(s.hyper(Epochs(0), 0.3).batch_size, 128);

        // Fractional warm-up, composed with lr_scale: full ε0 = 0.5 from t = 2.5 on.
        let cfg = ScheduleConfig {
            warmup_epochs: 2.5,
            warmup_from: 0.0,
            lr_scale: 5.0,
            ..paper(ScheduleKind::DecayLr)
        };
        let s = cfg.resolve(N).unwrap();
        assert_eq!(s.hyper(Epochs(0), 0.0).lr, 0.0);
        assert!(close(s.hyper(Epochs(1), 0.25).lr, 0.25));
        assert!(close(s.hyper(Epochs(2), 0.5).lr, 0.5));
        assert!(close(s.hyper(Epochs(3), 0.0).lr, 0.5));
    }

    fn err(cfg: ScheduleConfig, n: u64) -> String {
        cfg.resolve(Samples(n)).unwrap_err().to_string()
    }

    #[test]
    fn validation_messages() {
        let base = || ScheduleConfig {
            milestones: vec![60, 120, 160],
            ..ScheduleConfig::new(ScheduleKind::DecayLr, 200, 0.1, 128)
        };
        let cases: Vec<(ScheduleConfig, &str)> = vec![
            (
                ScheduleConfig {
                    batch_size: 0,
                    ..base()
                },
                "schedule.batch_size = 0 is out of range: must be in 1..=N (60000)",
            ),
            (
                ScheduleConfig {
                    batch_size: 60_001,
                    ..base()
                },
                "schedule.batch_size = 60001 is out of range: must be in 1..=N (60000)",
            ),
            (
                ScheduleConfig { lr: 0.0, ..base() },
                "schedule.lr = 0 is out of range: must be finite and > 0",
            ),
            (
                ScheduleConfig {
                    lr: f64::NAN,
                    ..base()
                },
                "schedule.lr = NaN is out of range: must be finite and > 0",
            ),
            (
                ScheduleConfig {
                    momentum: 1.0,
                    ..base()
                },
                "schedule.momentum = 1 is out of range: must be in [0, 1)",
            ),
            (
                ScheduleConfig {
                    momentum: -0.1,
                    ..base()
                },
                "schedule.momentum = -0.1 is out of range: must be in [0, 1)",
            ),
            (
                ScheduleConfig {
                    milestones: vec![60, 60],
                    ..base()
                },
                "schedule.milestones = [60, 60] is out of range: must be strictly increasing",
            ),
            (
                ScheduleConfig {
                    milestones: vec![0, 60],
                    ..base()
                },
                "schedule.milestones = [0, 60] is out of range: each must be in 1..epochs (1..200)",
            ),
            (
                ScheduleConfig {
                    milestones: vec![60, 200],
                    ..base()
                },
                "schedule.milestones = [60, 200] is out of range: each must be in 1..epochs (1..200)",
            ),
            (
                ScheduleConfig {
                    factor: 1.0,
                    ..base()
                },
                "schedule.factor = 1 is out of range: must be finite and > 1",
            ),
            (
                ScheduleConfig {
                    epochs: 0,
                    milestones: vec![],
                    ..base()
                },
                "schedule.epochs = 0 is out of range: must be at least 1",
            ),
            (
                ScheduleConfig {
                    kind: ScheduleKind::Hybrid,
                    max_batch_size: Some(100),
                    ..base()
                },
                "schedule.max_batch_size = 100 is out of range: must be in 128..=N (60000) \
                 (at least batch_size and batch_multiple)",
            ),
            (
                ScheduleConfig {
                    kind: ScheduleKind::Hybrid,
                    batch_size: 10_000,
                    ..base()
                },
                "schedule.max_batch_size = 6000 (default N/10) is out of range: must be in \
                 10000..=N (60000) (at least batch_size and batch_multiple)",
            ),
            (
                ScheduleConfig {
                    batch_multiple: 0,
                    ..base()
                },
                "schedule.batch_multiple = 0 is out of range: must be in 1..=N (60000)",
            ),
            (
                ScheduleConfig {
                    warmup_epochs: -1.0,
                    ..base()
                },
                "schedule.warmup_epochs = -1 is out of range: must be in [0, epochs (200)]",
            ),
            (
                ScheduleConfig {
                    warmup_epochs: 201.0,
                    ..base()
                },
                "schedule.warmup_epochs = 201 is out of range: must be in [0, epochs (200)]",
            ),
            (
                ScheduleConfig {
                    warmup_from: 1.5,
                    ..base()
                },
                "schedule.warmup_from = 1.5 is out of range: must be in [0, 1]",
            ),
            (
                ScheduleConfig {
                    lr_scale: 0.0,
                    ..base()
                },
                "schedule.lr_scale = 0 is out of range: must be finite and > 0",
            ),
            (
                ScheduleConfig {
                    momentum: 0.9,
                    momentum_scaled: Some(0.5),
                    ..base()
                },
                "schedule.momentum_scaled = 0.5 is out of range: must be in [momentum (0.9), 1)",
            ),
            (
                ScheduleConfig {
                    momentum_scaled: Some(1.0),
                    ..base()
                },
                "schedule.momentum_scaled = 1 is out of range: must be in [momentum (0), 1)",
            ),
            (
                ScheduleConfig {
                    kind: ScheduleKind::Converted,
                    ..base()
                },
                "schedule.lr_schedule is required when schedule.kind = \"converted\"",
            ),
            (
                ScheduleConfig {
                    lr_schedule: Some(LrSchedule::Exponential { gamma: 0.9 }),
                    ..base()
                },
                "schedule.lr_schedule is only used with schedule.kind = \"converted\", \
                 not \"decay-lr\"",
            ),
            (
                ScheduleConfig {
                    kind: ScheduleKind::Converted,
                    lr_schedule: Some(LrSchedule::Exponential { gamma: 0.0 }),
                    ..base()
                },
                "schedule.lr_schedule.gamma = 0 is out of range: must be finite and > 0",
            ),
            (
                ScheduleConfig {
                    kind: ScheduleKind::Converted,
                    lr_schedule: Some(LrSchedule::Step {
                        step_size: 0,
                        gamma: 0.5,
                    }),
                    ..base()
                },
                "schedule.lr_schedule.step_size = 0 is out of range: must be at least 1",
            ),
            (
                ScheduleConfig {
                    kind: ScheduleKind::Converted,
                    lr_schedule: Some(LrSchedule::Cosine { min_lr: 0.2 }),
                    ..base()
                },
                "schedule.lr_schedule.min_lr = 0.2 is out of range: must be in [0, lr (0.1)]",
            ),
            (
                ScheduleConfig {
                    kind: ScheduleKind::Converted,
                    lr_schedule: Some(LrSchedule::Table { lrs: vec![0.1; 3] }),
                    ..base()
                },
                "schedule.lr_schedule.lrs = [3 values] is out of range: must have one value \
                 per epoch (200)",
            ),
            (
                ScheduleConfig {
                    kind: ScheduleKind::Converted,
                    lr_schedule: Some(LrSchedule::Multistep {
                        milestones: vec![50, 40],
                        gamma: 0.1,
                    }),
                    ..base()
                },
                "schedule.lr_schedule.milestones = [50, 40] is out of range: must be strictly \
                 increasing",
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(err(cfg, 60_000), want);
        }
        assert_eq!(
            err(base(), 0),
            "the training set is empty (N = 0); a schedule needs N ≥ 1"
        );
        assert!(base().resolve(Samples(60_000)).is_ok());
    }

    #[test]
    fn toml_config_and_reports() {
        #[derive(Deserialize)]
        struct Run {
            schedule: ScheduleConfig,
        }
        let text = r#"
            [schedule]
            kind = "hybrid"
            epochs = 200
            lr = 0.1
            batch_size = 128
            momentum = 0.9
            milestones = [60, 120, 160]
            max_batch_size = 5120
        "#;
        let cfg = toml::from_str::<Run>(text).unwrap().schedule;
        assert_eq!(
            cfg,
            ScheduleConfig {
                max_batch_size: Some(5120),
                ..paper(ScheduleKind::Hybrid)
            }
        );
        // Round trip through TOML.
        let back: ScheduleConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        // Unknown keys are refused.
        let bad = text.replace("momentum = 0.9", "momentum = 0.9\nmomentun = 0.9");
        assert!(toml::from_str::<Run>(&bad).is_err());
        // Tagged LR schedule.
        let conv = r#"
            kind = "converted"
            epochs = 10
            lr = 0.1
            batch_size = 32
            lr_schedule = { type = "multistep", milestones = [5], gamma = 0.5 }
        "#;
        let cfg: ScheduleConfig = toml::from_str(conv).unwrap();
        let s = cfg.resolve(Samples(1000)).unwrap();
        assert_eq!(batches(&s), [(0, 5, 32), (5, 10, 64)]);

        // Reports.
        let s = paper(ScheduleKind::Hybrid).resolve(N).unwrap();
        let table = s.table();
        assert_eq!(table.total_updates, Updates(29_480));
        assert_eq!(table.samples, Samples(10_000_000));
        assert_eq!(
            table
                .phases
                .iter()
                .map(|r| r.cumulative_updates.0)
                .collect::<Vec<_>>(),
            [23_460, 28_200, 28_840, 29_480]
        );
        let json: serde_json::Value = serde_json::to_value(&table).unwrap();
        assert_eq!(json["total_updates"], 29_480);
        assert_eq!(json["phases"].as_array().unwrap().len(), 4);
        assert_eq!(json["phases"][3]["batch_size"], 3200);
        let text = table.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(lines[0].contains("batch") && lines[0].contains("g_approx"));
        assert!(lines[5].starts_with("total: 29480 updates, 200 epochs"));
        // Aligned: every phase line has the header's width.
        assert!(lines[1..5].iter().all(|l| l.len() == lines[0].len()));
        // The schedule itself round-trips through TOML (serde_json without its
        // `float_roundtrip` feature may change the last bit of an f64).
        let back: Schedule = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn batch_multiple_rounds_and_reports() {
        // B0 = 100 with multiple 32 → 96; g is off by |100 − 96| / 96.
        let cfg = ScheduleConfig {
            batch_multiple: 32,
            milestones: vec![5],
            ..ScheduleConfig::new(ScheduleKind::IncreaseBatch, 10, 0.1, 100)
        };
        let s = cfg.resolve(Samples(10_000)).unwrap();
        assert_eq!(batches(&s), [(0, 5, 96), (5, 10, 512)]); // 500 → 16 × 32
        assert!(close(s.g_rounding_error(Epochs(0)), 4.0 / 96.0));
        assert!(close(s.g_rounding_error(Epochs(5)), 12.0 / 512.0));
        assert!(s.phases().iter().all(|p| p.batch_size % 32 == 0));
    }

    fn setting() -> impl Strategy<Value = (ScheduleConfig, u64)> {
        (2u32..300, 1_000u64..2_000_000).prop_flat_map(|(epochs, n)| {
            (
                proptest::collection::btree_set(1..epochs, 0..5),
                1.5f64..10.0,
                1e-4f64..10.0,
                1..=(n as usize / 10),
                0.0f64..0.99,
            )
                .prop_map(move |(ms, factor, lr, b0, m)| {
                    let cfg = ScheduleConfig {
                        momentum: m,
                        factor,
                        milestones: ms.into_iter().collect(),
                        ..ScheduleConfig::new(ScheduleKind::DecayLr, epochs, lr, b0)
                    };
                    (cfg, n)
                })
        })
    }

    proptest! {
        #[test]
        fn kinds_share_the_noise_scale((cfg, n) in setting()) {
            let n = Samples(n);
            for kind in [ScheduleKind::DecayLr, ScheduleKind::IncreaseBatch, ScheduleKind::Hybrid] {
                let s = ScheduleConfig { kind, ..cfg.clone() }.resolve(n).unwrap();
                let table = s.table();
                prop_assert_eq!(table.phases.last().unwrap().end, Epochs(cfg.epochs));
                for row in &table.phases {
                    prop_assert!(row.g_rounding_error <= 0.5 / row.batch_size as f64 + 1e-12);
                    prop_assert!(row.batch_size as u64 <= n.0);
                    for e in row.start.0..row.end.0 {
                        let p = phase_index(&cfg.milestones, e);
                        // decay-lr's ideal approximate g.
                        let ideal = cfg.lr / cfg.factor.powi(p as i32) * n.0 as f64
                            / ((1.0 - cfg.momentum) * cfg.batch_size as f64);
                        let g = s.noise_scale(Epochs(e)).approx;
                        let rel = (g - ideal).abs() / ideal;
                        let reported = s.g_rounding_error(Epochs(e));
                        prop_assert!(rel <= reported + 1e-9, "{kind} e={e}: {rel} > {reported}");
                        prop_assert!(reported <= row.g_rounding_error);
                        prop_assert!((s.target_noise_scale(Epochs(e)) - ideal).abs() <= 1e-9 * ideal);
                    }
                }
                if kind == ScheduleKind::Hybrid {
                    let cap = cfg.cap(n);
                    prop_assert!(s.phases().iter().all(|p| p.batch_size <= cap));
                }
            }
        }
    }
}
