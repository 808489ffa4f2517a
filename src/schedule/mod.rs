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

use crate::noise;
use crate::units::{Epoch, Epochs, Samples, Updates, updates_per_epoch};

pub mod adaptive;
mod build;
mod config;
mod table;
#[cfg(test)]
mod tests;
mod validate;

pub use adaptive::AdaptiveConfig;
pub use config::{LrSchedule, MAX_EPOCHS, Rampup, ScheduleConfig, ScheduleError};
pub use table::{PhaseRow, PhaseTable};

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
    /// Seesaw (Meterez et al. 2025), the conversion proposed for Adam: at each milestone ε is
    /// divided by √factor and B multiplied by factor, where `decay-lr` divides ε by factor.
    Seesaw,
    /// Megatron-LM's batch-size ramp-up ([`Rampup`]) in front of the `decay-lr` recipe.
    Rampup,
}

impl ScheduleKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [ScheduleKind; 7] = [
        ScheduleKind::DecayLr,
        ScheduleKind::Hybrid,
        ScheduleKind::IncreaseBatch,
        ScheduleKind::Seesaw,
        ScheduleKind::Rampup,
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
            ScheduleKind::Seesaw => "seesaw",
            ScheduleKind::Rampup => "rampup",
        })
    }
}

/// The hyper-parameters in force at one point of training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// Learning rate ε (warm-up included).
    pub lr: f64,
    /// Global batch size B.
    pub batch_size: usize,
    /// Momentum coefficient m (Adam's β1 under the Adam kinds).
    pub momentum: f64,
}

/// A run of training with one learning rate, batch size and momentum (before warm-up): whole
/// epochs `start..end` on the epoch clock, global samples `samples` on the sample clock.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// First epoch of the phase (on the sample clock: the epoch of its first sample).
    pub start: Epoch,
    /// Epochs done when the phase ends: the index of the first epoch after it (on the sample
    /// clock: the epochs its last sample reaches into).
    pub end: Epochs,
    /// On the sample clock, the global samples `[from, until)` of the phase (counted from the
    /// start of training; a batch never straddles `until`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<SampleRange>,
    /// Learning rate ε.
    pub lr: f64,
    /// Global batch size B.
    pub batch_size: usize,
    /// Momentum coefficient m (Adam's β1 under the Adam kinds).
    pub momentum: f64,
}

/// Global samples `[from, until)`, counted from the start of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRange {
    /// The first sample.
    pub from: Samples,
    /// The sample after the last.
    pub until: Samples,
}

impl Phase {
    /// The global samples of the phase for a training set of `n`.
    pub fn sample_range(&self, n: Samples) -> SampleRange {
        self.samples.unwrap_or(SampleRange {
            from: Samples(u64::from(self.start.0) * n.0),
            until: Samples(u64::from(self.end.0) * n.0),
        })
    }
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
    /// The sample clock's training length (`None`: the epoch clock, `epochs · N` samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sample_clock: Option<Samples>,
    /// The sample clock's warm-up length in samples (0: none, or `warmup_epochs`).
    #[serde(default, skip_serializing_if = "is_zero")]
    warmup_samples: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Schedule {
    /// Samples the schedule trains on: `epochs · N`, or the sample clock's length.
    pub fn samples(&self) -> Samples {
        self.sample_clock
            .unwrap_or(Samples(u64::from(self.epochs.0) * self.dataset_size.0))
    }

    /// Whether phases are counted in samples rather than epochs.
    pub fn is_sample_clock(&self) -> bool {
        self.sample_clock.is_some()
    }

    /// The phase in force at global sample `s` (the last phase beyond the end).
    pub fn phase_at(&self, s: Samples) -> &Phase {
        let n = self.dataset_size;
        let i = self
            .phases
            .partition_point(|p| p.sample_range(n).until.0 <= s.0);
        &self.phases[i.min(self.phases.len() - 1)]
    }

    /// Where the pass that trains from global sample `s` on must stop: the start of the next
    /// phase or the end of training, so that no batch straddles a change of B.
    pub fn pass_end(&self, s: Samples) -> Samples {
        let until = self.phase_at(s).sample_range(self.dataset_size).until;
        until.min(self.samples())
    }

    /// Hyper-parameters for the batch starting `offset` samples into `epoch`: the phase in
    /// force at that sample and the warm-up's ε there (per sample on the sample clock, else as
    /// [`Schedule::hyper`]).
    pub fn hyper_at(&self, epoch: Epoch, offset: u64) -> Hyper {
        let n = self.dataset_size.0;
        if !self.is_sample_clock() {
            return self.hyper(epoch, offset as f64 / n as f64);
        }
        let s = u64::from(epoch.0) * n + offset;
        self.warmed(
            self.phase_at(Samples(s)),
            s as f64,
            self.warmup_samples as f64,
        )
    }

    /// Phase `p`'s hyper-parameters at progress `t` of a linear warm-up `length` long (in
    /// epochs or samples): ε times `warmup_from + (1 − warmup_from) · t / length` while
    /// `t < length` (Goyal et al. 2017).
    fn warmed(&self, p: &Phase, t: f64, length: f64) -> Hyper {
        let lr = if t < length {
            p.lr * (self.warmup_from + (1.0 - self.warmup_from) * t / length)
        } else {
            p.lr
        };
        Hyper {
            lr,
            batch_size: p.batch_size,
            momentum: p.momentum,
        }
    }

    /// The phase containing `epoch` (on the sample clock: its first sample).
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn phase(&self, epoch: Epoch) -> &Phase {
        assert!(
            epoch.0 < self.epochs.0,
            "epoch {epoch} is beyond the schedule ({} epochs)",
            self.epochs
        );
        if self.is_sample_clock() {
            return self.phase_at(Samples(u64::from(epoch.0) * self.dataset_size.0));
        }
        let i = self.phases.partition_point(|p| p.end.0 <= epoch.0);
        &self.phases[i]
    }

    /// Hyper-parameters at `fraction` ∈ [0, 1) of the way through `epoch` (0-based). The
    /// fraction (clamped to [0, 1]) only matters during warm-up, where ε is the phase's ε
    /// times `warmup_from + (1 − warmup_from) · t / warmup_epochs` at progress
    /// t = epoch + fraction (Goyal et al. 2017, linear warm-up).
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn hyper(&self, epoch: Epoch, fraction: f64) -> Hyper {
        let t = f64::from(epoch.0) + fraction.clamp(0.0, 1.0);
        self.warmed(self.phase(epoch), t, self.warmup_epochs)
    }

    /// Global batch size during `epoch`.
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn batch_size(&self, epoch: Epoch) -> usize {
        self.phase(epoch).batch_size
    }

    /// The phases, in order, covering epochs `0..epochs` without gaps.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// Training length: the phases cover epochs `0..epochs()`.
    pub fn epochs(&self) -> Epochs {
        self.epochs
    }

    /// Training-set size N it was resolved for: N/B sets the updates per epoch.
    pub fn dataset_size(&self) -> Samples {
        self.dataset_size
    }

    /// Warm-up length in epochs (0: none; on the sample clock, `warmup_samples / N`).
    pub fn warmup_epochs(&self) -> f64 {
        if self.warmup_samples > 0 {
            return self.warmup_samples as f64 / self.dataset_size.0 as f64;
        }
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
    pub fn updates_in_epoch(&self, epoch: Epoch) -> Updates {
        updates_per_epoch(self.dataset_size, self.batch_size(epoch))
    }

    /// Updates over the whole schedule.
    pub fn total_updates(&self) -> Updates {
        self.phases
            .iter()
            .map(|p| self.phase_updates(p))
            .fold(Updates(0), |a, b| a + b)
    }

    /// Updates of phase `p`: `⌈len / B⌉` for each epoch's part of it (the last partial batch of
    /// an epoch and of the phase kept).
    fn phase_updates(&self, p: &Phase) -> Updates {
        let n = self.dataset_size.0;
        let Some(range) = p.samples else {
            let per = updates_per_epoch(self.dataset_size, p.batch_size);
            return Updates(per.0 * u64::from(p.end.0 - p.start.0));
        };
        let (from, until) = (range.from.0, range.until.0.min(self.samples().0));
        let mut updates = 0;
        let mut s = from;
        while s < until {
            let epoch_end = (s / n + 1) * n;
            let end = until.min(epoch_end);
            updates += (end - s).div_ceil(p.batch_size as u64);
            s = end;
        }
        Updates(updates)
    }

    /// Exact and approximate noise scale during `epoch` (warm-up ignored).
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn noise_scale(&self, epoch: Epoch) -> NoiseScale {
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
    pub fn target_noise_scale(&self, epoch: Epoch) -> f64 {
        assert!(
            epoch.0 < self.epochs.0,
            "epoch {epoch} is beyond the schedule"
        );
        self.target_noise[epoch.0 as usize]
    }

    /// Relative error of the achieved approximate noise scale during `epoch` against the
    /// ideal target, caused by rounding B to a whole multiple of `batch_multiple`:
    /// `|B_ideal − B| / B` (0 when nothing was rounded, or where a cap fixed B and ε was
    /// recomputed to hit the target exactly).
    ///
    /// # Panics
    /// If `epoch` is not below [`Schedule::epochs`].
    pub fn g_rounding_error(&self, epoch: Epoch) -> f64 {
        assert!(
            epoch.0 < self.epochs.0,
            "epoch {epoch} is beyond the schedule"
        );
        self.rounding_error[epoch.0 as usize]
    }
}
