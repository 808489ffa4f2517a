//! The gradient noise scale, measured while training.
//!
//! McCandlish, Kaplan, Amodei et al. (*An Empirical Model of Large-Batch Training*, 2018) define
//! the simple noise scale `B_simple = tr(Σ)/|G|²` (Σ the per-example gradient covariance, G the
//! true gradient): about the critical batch size, below which a larger batch saves updates
//! almost one for one and above which it mostly wastes samples. It grows as the loss falls,
//! which is why increasing the batch size during training works.
//!
//! **Estimator** (their appendix A, generalised to unequal pieces). An update's batch of B
//! samples is computed in k ≥ 2 pieces (micro-batches, over all ranks) of sizes `b_i`, with mean
//! loss gradients `g_i` and the batch gradient `G_B = Σ (b_i/B) g_i`. Drawing the batch without
//! replacement from N samples, `E|g_i|² = |G|² − tr(Σ)/N + tr(Σ)/b_i` (the README of
//! `../shared/testdata`), so with `small = Σ (b_i/B)|g_i|²`:
//!
//! ```text
//! E[small]  = G'² + k·tr(Σ)/B,    E|G_B|² = G'² + tr(Σ)/B,    G'² = |G|² − tr(Σ)/N
//! 𝒮     = (small − |G_B|²) · B/(k − 1)         unbiased for tr(Σ)
//! |𝒢|²  = (k·|G_B|² − small)/(k − 1)           unbiased for |G|² − tr(Σ)/N
//! ```
//!
//! With k equal pieces of b = B/k these are the two-batch formulas of McCandlish et al. with
//! `b_small = B/k` and `b_big = B`. Each update gives one noisy (𝒮, |𝒢|²) pair; the estimate is
//! `B_simple = EMA(𝒮)/EMA(|𝒢|²)`, the ratio of bias-corrected exponential moving averages
//! (as EleutherAI's gpt-neox and AdaptDL do), never the average of per-update ratios, whose
//! denominators are often near zero or negative. Per epoch it also reports the ratio of the
//! epoch's sums and its standard error (the ratio estimator's delta-method error).
//!
//! What is measured is the gradient of the mean training loss itself, before weight decay,
//! momentum or any optimiser transformation; under augmentation and dropout it includes their
//! noise, as the training gradient does.

use serde::{Deserialize, Serialize};

/// One update's measurement: the pieces' gradient norms and the batch gradient's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepNorms {
    /// `Σ (b_i/B)|g_i|²` over the update's pieces (all ranks).
    pub small: f64,
    /// Number of pieces k.
    pub pieces: f64,
    /// `|G_B|²` of the whole batch's mean gradient.
    pub big: f64,
    /// Samples B in the batch.
    pub batch: f64,
}

impl StepNorms {
    /// The unbiased pair `(𝒮, |𝒢|²)` of this update (module docs), or `None` with fewer than
    /// two pieces (no second batch size to compare with).
    pub fn estimates(&self) -> Option<(f64, f64)> {
        if self.pieces < 2.0 || self.batch <= 0.0 {
            return None;
        }
        let k1 = self.pieces - 1.0;
        let trace = (self.small - self.big) * self.batch / k1;
        let grad_sq = (self.pieces * self.big - self.small) / k1;
        Some((trace, grad_sq))
    }
}

/// When a batch fits one micro-batch and is cut in two only to be measured, this is done on
/// every this-many updates (the others are computed whole and not measured): cutting costs up
/// to +70% of a step for a small MLP at B = 64 (`noisescale bench`), so measuring 1 update in
/// 32 keeps the cost near 2%. Batches already in pieces are measured on every update.
pub const SPLIT_EVERY: u64 = 32;

/// Smoothing of the moving averages: weight of the past per update (gpt-neox uses 0.99).
pub const DEFAULT_BETA: f64 = 0.99;

/// The running estimator: bias-corrected EMAs over all updates so far, and the sums of the
/// epoch in progress. Stored in checkpoints, so a resumed run continues it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimator {
    /// Weight of the past in each EMA.
    pub beta: f64,
    /// EMA of 𝒮 (not bias-corrected).
    pub ema_trace: f64,
    /// EMA of |𝒢|² (not bias-corrected).
    pub ema_grad_sq: f64,
    /// `beta^t` after t measured updates, for the bias correction.
    pub beta_power: f64,
    /// Measured updates of the epoch in progress: `(𝒮, |𝒢|²)` per update.
    pub epoch: Vec<(f64, f64)>,
}

impl Default for Estimator {
    fn default() -> Self {
        Self::new(DEFAULT_BETA)
    }
}

/// What the estimator says at the end of an epoch (`gns_*` in `metrics.jsonl`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// `B_simple = EMA(𝒮)/EMA(|𝒢|²)`, bias-corrected EMAs over the run so far.
    pub b_simple: f64,
    /// Bias-corrected EMA of 𝒮, the estimate of tr(Σ).
    pub trace: f64,
    /// Bias-corrected EMA of |𝒢|², the estimate of |G|².
    pub grad_sq: f64,
    /// `Σ𝒮/Σ|𝒢|²` over this epoch's updates alone.
    pub epoch_b_simple: f64,
    /// Standard error of `epoch_b_simple`, the ratio estimator's linearised (delta-method)
    /// error from the per-update pairs: `√(Σ(𝒮_i − R·|𝒢|²_i)²/(n(n−1))) / mean(|𝒢|²_i)` with
    /// `R = epoch_b_simple`. Large when |G|² is small against its noise, as it should be. NaN
    /// with fewer than 2 measured updates.
    pub b_simple_stderr: f64,
    /// Updates measured this epoch.
    pub updates: u64,
}

impl Estimator {
    /// A fresh estimator with EMA weight `beta` in `[0, 1)`.
    pub fn new(beta: f64) -> Self {
        Self {
            beta,
            ema_trace: 0.0,
            ema_grad_sq: 0.0,
            beta_power: 1.0,
            epoch: Vec::new(),
        }
    }

    /// Adds one update's measurement (ignored with fewer than two pieces).
    pub fn add(&mut self, norms: StepNorms) {
        let Some((trace, grad_sq)) = norms.estimates() else {
            return;
        };
        self.ema_trace = self.beta * self.ema_trace + (1.0 - self.beta) * trace;
        self.ema_grad_sq = self.beta * self.ema_grad_sq + (1.0 - self.beta) * grad_sq;
        self.beta_power *= self.beta;
        self.epoch.push((trace, grad_sq));
    }

    /// The bias-corrected `(tr(Σ), |G|²)` estimates, or `None` before any measurement.
    pub fn smoothed(&self) -> Option<(f64, f64)> {
        let weight = 1.0 - self.beta_power;
        (weight > 0.0).then(|| (self.ema_trace / weight, self.ema_grad_sq / weight))
    }

    /// The current `B_simple`, or `None` before any measurement.
    pub fn b_simple(&self) -> Option<f64> {
        self.smoothed().map(|(t, g)| t / g)
    }

    /// The reading at the end of an epoch, and a fresh start for the next epoch's sums; `None`
    /// before the first measurement. An epoch without a measurement of its own (a few updates,
    /// one measured in 32) still reports the smoothed value; its epoch fields are NaN.
    pub fn finish_epoch(&mut self) -> Option<Reading> {
        let reading = self.reading();
        self.epoch.clear();
        reading
    }

    /// The reading now, the epoch's fields over its measurements so far; `None` before the
    /// first measurement.
    pub fn reading(&self) -> Option<Reading> {
        let epoch = &self.epoch;
        let (trace, grad_sq) = self.smoothed()?;
        let n = epoch.len() as f64;
        let (sum_t, sum_g) = epoch
            .iter()
            .fold((0.0, 0.0), |(a, b), (t, g)| (a + t, b + g));
        let ratio = sum_t / sum_g;
        let b_simple_stderr = if epoch.len() >= 2 {
            let residual: f64 = epoch.iter().map(|(t, g)| (t - ratio * g).powi(2)).sum();
            (residual / (n * (n - 1.0))).sqrt() / (sum_g / n).abs()
        } else {
            f64::NAN
        };
        Some(Reading {
            b_simple: trace / grad_sq,
            trace,
            grad_sq,
            epoch_b_simple: ratio,
            b_simple_stderr,
            updates: epoch.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Norms whose expectations are exactly those of the model: E|g_i|² = G'² + tr/b_i.
    fn expected(trace: f64, grad_sq: f64, sizes: &[f64]) -> StepNorms {
        let batch: f64 = sizes.iter().sum();
        let small = sizes
            .iter()
            .map(|b| b / batch * (grad_sq + trace / b))
            .sum();
        StepNorms {
            small,
            pieces: sizes.len() as f64,
            big: grad_sq + trace / batch,
            batch,
        }
    }

    /// At the expectations the estimators return tr(Σ) and |G|² exactly, with equal and with
    /// unequal pieces (weights b_i/B; 1/k weights would miss with unequal pieces).
    #[test]
    fn estimators_are_unbiased_for_equal_and_unequal_pieces() {
        for sizes in [vec![32.0; 8], vec![32.0, 32.0, 32.0, 4.0], vec![100.0, 7.0]] {
            let (t, g) = expected(300.0, 2.0, &sizes).estimates().unwrap();
            assert!(
                (t - 300.0).abs() < 1e-9 && (g - 2.0).abs() < 1e-12,
                "{sizes:?}: {t} {g}"
            );
        }
        let one = expected(300.0, 2.0, &[64.0]);
        assert_eq!(one.estimates(), None);
    }

    /// B_simple is the ratio of the smoothed sums, not the mean of per-update ratios, and the
    /// EMAs are bias-corrected (the first reading is the first measurement itself).
    #[test]
    fn b_simple_is_the_ratio_of_bias_corrected_averages() {
        let mut e = Estimator::new(0.9);
        e.add(expected(100.0, 1.0, &[16.0, 16.0]));
        assert!((e.b_simple().unwrap() - 100.0).abs() < 1e-9);
        e.add(expected(300.0, 3.0, &[16.0, 16.0]));
        e.add(expected(10.0, 0.01, &[16.0, 16.0]));
        // Every update's ratio is 100, so their mean is 100 (wrong); the ratio of the weighted
        // sums is not.
        let (t, g) = e.smoothed().unwrap();
        let norm = 1.0 - 0.9f64.powi(3);
        let t_want = (0.1 * 0.81 * 100.0 + 0.1 * 0.9 * 300.0 + 0.1 * 10.0) / norm;
        let g_want = (0.1 * 0.81 * 1.0 + 0.1 * 0.9 * 3.0 + 0.1 * 0.01) / norm;
        assert!((t - t_want).abs() < 1e-9 && (g - g_want).abs() < 1e-12);
        assert!((e.b_simple().unwrap() - t_want / g_want).abs() < 1e-9);
        assert!((e.b_simple().unwrap() - 100.0).abs() > 1.0);
        let r = e.finish_epoch().unwrap();
        assert_eq!(r.updates, 3);
        assert!((r.epoch_b_simple - 410.0 / 4.01).abs() < 1e-9);
        assert!(r.b_simple_stderr.is_finite());
        assert!(e.epoch.is_empty());
        // An epoch with no measurement keeps the smoothed value, without an epoch estimate.
        let quiet = e.finish_epoch().unwrap();
        assert_eq!((quiet.updates, quiet.b_simple), (0, r.b_simple));
        assert!(quiet.epoch_b_simple.is_nan() && quiet.b_simple_stderr.is_nan());
        assert_eq!(Estimator::new(0.9).finish_epoch(), None);
    }
}
