//! The adaptive schedule: the batch size follows the measured gradient noise scale.
//!
//! Smith et al. (2018) grow B where a learning-rate schedule would decay ε, at milestones fixed
//! by hand. McCandlish et al. (2018) say how large a batch is useful at any moment: about the
//! simple noise scale `B_simple = tr(Σ)/|G|²`, which grows as the loss falls ([`crate::gns`]
//! measures it during training). `kind = "adaptive"` closes the loop without milestones: at
//! each decision point the *noise-equivalent batch* `B_v` (the batch that, at the configured
//! ε0, gives the SGD noise scale `g = εN/(B(1 − m))` in force) becomes `α · B_simple` when that
//! differs from the current `B_v` by at least `min_change` (hysteresis), never below
//! `min_batch_size`.
//!
//! **Which B_simple.** While B ≪ B_simple each update's estimate of |G|² is mostly noise (its
//! signal-to-noise ratio is about B/B_simple), so a point estimate, smoothed or not, swings
//! between huge and negative values for epochs. The controller therefore acts on a confidence
//! bound from the measurements since the last decision point (`n` per-update pairs
//! `(𝒮_i, |𝒢|²_i)` of [`crate::gns`]): it grows B to `α · B_low` with
//! `B_low = mean(𝒮)/(mean(|𝒢|²) + z·se(|𝒢|²))`, `z = confidence`. B_low is close to B_simple
//! once |G|² is resolved, and otherwise still a sound lower bound that rises as measurements
//! accumulate, so B grows as far as the evidence allows and no further. Shrinking (opt-in) uses
//! the upper bound `mean(𝒮)/(mean(|𝒢|²) − z·se)` likewise. The batch size is `B_v` rounded to a whole multiple of what the run
//! needs (ghost batch × ranks × `batch_multiple`) while it fits `max_batch_size` (default N/10);
//! beyond, B stays at the cap and ε is divided by `B_v / B` instead, exactly as the `hybrid`
//! schedule trades B for ε once the batch is capped (paper section 5.2). The noise scale then
//! follows `g = ε0·N/(B_v(1 − m))` all the way.
//!
//! Decisions depend only on the estimator, whose inputs every rank shares through the gradient
//! all-reduce, so all ranks decide alike; the controller's state lives in the checkpoint, so a
//! resumed run decides as an uninterrupted one.

use serde::{Deserialize, Serialize};

use super::Hyper;
use crate::gns::StepNorms;
use crate::noise;

fn default_alpha() -> f64 {
    AdaptiveConfig::DEFAULT_ALPHA
}
fn default_min_change() -> f64 {
    AdaptiveConfig::DEFAULT_MIN_CHANGE
}
fn default_confidence() -> f64 {
    AdaptiveConfig::DEFAULT_CONFIDENCE
}

/// The `[schedule.adaptive]` table: how the measured noise scale turns into a batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct AdaptiveConfig {
    /// The noise-equivalent batch follows `alpha · B_simple` (> 0).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// A decision changes B only when `alpha · B_simple` differs from the current
    /// noise-equivalent batch by at least this factor (≥ 1; hysteresis against thrashing).
    #[serde(default = "default_min_change")]
    pub min_change: f64,
    /// Also decide after every this-many updates within epochs (0, the default: at epoch ends
    /// only). A change mid-epoch takes effect from the next batch; it lets a run that starts
    /// far too small grow within its first epoch.
    #[serde(default)]
    pub every_updates: u64,
    /// Smallest batch size the controller sets (default: the schedule's B0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_batch_size: Option<usize>,
    /// Let B shrink as well when `alpha · B_simple` falls below the current batch by
    /// `min_change` (default false: grow only, as the paper's schedules do).
    #[serde(default)]
    pub shrink: bool,
    /// Standard errors `z` in the confidence bounds on B_simple the decisions use (≥ 0; 0: the
    /// point estimate).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
}

impl AdaptiveConfig {
    /// Default α, chosen by the sweep in README ("The adaptive schedule"): larger values grow the
    /// batch earlier and cut updates further at a cost in accuracy.
    pub const DEFAULT_ALPHA: f64 = 0.1;
    /// Default hysteresis factor: a change of less than 2× is not worth a new phase.
    pub const DEFAULT_MIN_CHANGE: f64 = 2.0;
    /// Default `z` of the confidence bounds: one standard error.
    pub const DEFAULT_CONFIDENCE: f64 = 1.0;
    /// Measurements a decision needs (else the window carries on to the next decision point):
    /// the standard error of fewer is itself unreliable.
    pub const MIN_MEASUREMENTS: u64 = 8;
}

impl AdaptiveConfig {
    /// The same settings with B aimed at `alpha` × B_simple.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            alpha: Self::DEFAULT_ALPHA,
            min_change: Self::DEFAULT_MIN_CHANGE,
            every_updates: 0,
            min_batch_size: None,
            shrink: false,
            confidence: Self::DEFAULT_CONFIDENCE,
        }
    }
}

/// The controller's state: what it has set so far. Part of the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveState {
    /// The noise-equivalent batch `B_v`: the batch size that at ε0 gives the noise scale in
    /// force (`B_v = B · ε0/ε`).
    pub noise_batch: f64,
    /// The batch size in force.
    pub batch_size: usize,
    /// ε in force over the schedule's ε (1 until B reaches the cap).
    pub lr_factor: f64,
    /// The measurements since the last decision point.
    pub window: Window,
    /// Every change made, in order.
    pub decisions: Vec<Decision>,
}

impl AdaptiveState {
    /// The schedule's hyper-parameters `h` (warm-up included) as the controller has set them:
    /// its batch size, and ε times its factor.
    pub fn apply(&self, h: Hyper) -> Hyper {
        Hyper {
            lr: h.lr * self.lr_factor,
            batch_size: self.batch_size,
            momentum: h.momentum,
        }
    }
}

/// Sums over per-update noise-scale measurements `(𝒮_i, |𝒢|²_i)`: enough for their means, the
/// standard error of the |𝒢|² mean, and the delta-method error of the ratio of means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Measurements n; a decision needs at least [`AdaptiveConfig::MIN_MEASUREMENTS`].
    pub n: u64,
    /// Σ𝒮_i.
    pub trace: f64,
    /// Σ|𝒢|²_i.
    pub grad_sq: f64,
    /// Σ𝒮_i².
    pub trace_sq: f64,
    /// Σ𝒮_i·|𝒢|²_i.
    pub cross: f64,
    /// Σ(|𝒢|²_i)².
    pub grad_sq_sq: f64,
}

/// What a [`Window`] says of B_simple.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// `mean(𝒮)/mean(|𝒢|²)` (NaN or negative when |G|² is not resolved).
    pub b_simple: f64,
    /// Its delta-method standard error.
    pub stderr: f64,
    /// `mean(𝒮)/(mean(|𝒢|²) + z·se)`: B_simple is probably at least this.
    pub low: f64,
    /// `mean(𝒮)/(mean(|𝒢|²) − z·se)`, or infinity when that denominator is ≤ 0.
    pub high: f64,
}

impl Window {
    /// Adds one update's measurement (ignored with fewer than two pieces).
    pub fn add(&mut self, norms: StepNorms) {
        if let Some((t, g)) = norms.estimates() {
            self.n += 1;
            self.trace += t;
            self.grad_sq += g;
            self.trace_sq += t * t;
            self.cross += t * g;
            self.grad_sq_sq += g * g;
        }
    }

    /// The estimate and its bounds at `z` standard errors; `None` with fewer than two
    /// measurements or a non-positive trace estimate.
    pub fn bounds(&self, z: f64) -> Option<Bounds> {
        let n = self.n as f64;
        if self.n < 2 || self.trace <= 0.0 {
            return None;
        }
        let (t, g) = (self.trace / n, self.grad_sq / n);
        let var_g = ((self.grad_sq_sq - n * g * g) / (n - 1.0)).max(0.0);
        let se_g = (var_g / n).sqrt();
        let r = t / g;
        // Σ(𝒮_i − R|𝒢|²_i)², expanded.
        let residual = (self.trace_sq - 2.0 * r * self.cross + r * r * self.grad_sq_sq).max(0.0);
        let stderr = (residual / (n * (n - 1.0))).sqrt() / g.abs();
        let low_den = g + z * se_g;
        let high_den = g - z * se_g;
        Some(Bounds {
            b_simple: r,
            stderr,
            low: if low_den > 0.0 { t / low_den } else { f64::NAN },
            high: if high_den > 0.0 {
                t / high_den
            } else {
                f64::INFINITY
            },
        })
    }
}

/// One change of the adaptive schedule (a line of `decisions.jsonl`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Epochs completed when the decision was taken (0-based epoch of the next batch, when it is
    /// taken at an epoch's end).
    pub epoch: u32,
    /// Samples into that epoch (0 at an epoch boundary).
    pub offset: u64,
    /// Parameter updates before the new setting applies.
    pub update: u64,
    /// `B_simple` over the measurements since the last decision point (absent when |G|² was
    /// not resolved: a non-positive estimate).
    pub b_simple: Option<f64>,
    /// Its standard error (absent when not resolved).
    pub b_simple_stderr: Option<f64>,
    /// The confidence bound the decision followed: the lower one when growing, the upper one
    /// when shrinking.
    pub b_simple_bound: f64,
    /// Measurements n in the window behind `b_simple`.
    pub measurements: u64,
    /// Batch size in force up to `update`.
    pub old_batch_size: usize,
    /// Batch size from now on.
    pub new_batch_size: usize,
    /// ε (before warm-up) before.
    pub old_lr: f64,
    /// ε (before warm-up) from now on.
    pub new_lr: f64,
    /// The new noise-equivalent batch `B_v`.
    pub noise_batch: f64,
}

/// Where a decision point is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Epochs completed, i.e. the 0-based epoch in progress.
    pub epoch: u32,
    /// Samples into the epoch in progress.
    pub offset: u64,
    /// Updates so far; a decision is due at every multiple of `every_updates`.
    pub update: u64,
}

/// The adaptive schedule's decision rule for one run (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Controller {
    config: AdaptiveConfig,
    /// Batch sizes are whole multiples of this.
    quantum: usize,
    /// Smallest batch size: `min_batch_size` (or B0) rounded to `quantum`, at most `top`.
    min: usize,
    /// Largest batch size: the largest multiple of `quantum` ≤ `max_batch_size`.
    top: usize,
    /// The schedule's ε (before warm-up), for the log.
    lr: f64,
}

impl Controller {
    /// A controller with batch sizes in multiples of `quantum`, between `min_batch_size` (or
    /// `b0`) and `cap`, for a schedule whose ε is `lr`.
    pub fn new(config: &AdaptiveConfig, b0: usize, cap: usize, quantum: usize, lr: f64) -> Self {
        let quantum = quantum.max(1);
        let top = (cap / quantum).max(1) * quantum;
        let min =
            noise::round_to_multiple(config.min_batch_size.unwrap_or(b0) as f64, quantum).min(top);
        Self {
            config: config.clone(),
            quantum,
            min,
            top,
            lr,
        }
    }

    /// The settings this controller follows.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }

    /// The state at the start of a run whose first batch size is `b0`.
    pub fn start(&self, b0: usize) -> AdaptiveState {
        AdaptiveState {
            noise_batch: b0 as f64,
            batch_size: b0,
            lr_factor: 1.0,
            window: Window::default(),
            decisions: Vec::new(),
        }
    }

    /// Whether a decision is due after `update` updates (`epoch_end`: the epoch just ended):
    /// at every epoch's end, and every `every_updates` updates.
    pub fn due(&self, update: u64, epoch_end: bool) -> bool {
        let k = self.config.every_updates;
        epoch_end || (k > 0 && update.is_multiple_of(k))
    }

    /// Batch size and ε factor for a noise-equivalent batch `b_v`: B = `b_v` rounded while it
    /// fits the cap; past it, the cap and ε divided by `b_v / cap`.
    fn setting(&self, b_v: f64) -> (usize, f64) {
        let b = noise::round_to_multiple(b_v, self.quantum);
        if b > self.top {
            (self.top, self.top as f64 / b_v)
        } else {
            (b.max(self.min), 1.0)
        }
    }

    /// Applies the rule at `obs` to the measurements in `state.window`: updates `state` and
    /// returns the decision when B or ε changes; `None` with too few measurements (the window
    /// then carries on) or within the hysteresis band (the window starts afresh).
    pub fn decide(&self, state: &mut AdaptiveState, obs: Observation) -> Option<Decision> {
        let w = state.window;
        if w.n < AdaptiveConfig::MIN_MEASUREMENTS {
            return None;
        }
        state.window = Window::default();
        let b = w.bounds(self.config.confidence)?;
        let current = state.noise_batch;
        let min_change = self.config.min_change;
        let grow = self.config.alpha * b.low >= current * min_change;
        let shrink = self.config.shrink && self.config.alpha * b.high * min_change <= current;
        let bound = match (grow, shrink) {
            (true, _) => b.low,
            (false, true) => b.high,
            (false, false) => return None,
        };
        let target = (self.config.alpha * bound).max(self.min as f64);
        let (batch_size, lr_factor) = self.setting(target);
        if batch_size == state.batch_size && lr_factor == state.lr_factor {
            // Only rounding moved: keep the old noise-equivalent batch so that the band is
            // measured from what is in force.
            return None;
        }
        let resolved = b.b_simple.is_finite() && b.b_simple > 0.0;
        let decision = Decision {
            epoch: obs.epoch,
            offset: obs.offset,
            update: obs.update,
            b_simple: resolved.then_some(b.b_simple),
            b_simple_stderr: (resolved && b.stderr.is_finite()).then_some(b.stderr),
            b_simple_bound: bound,
            measurements: w.n,
            old_batch_size: state.batch_size,
            new_batch_size: batch_size,
            old_lr: self.lr * state.lr_factor,
            new_lr: self.lr * lr_factor,
            noise_batch: target,
        };
        state.noise_batch = target;
        state.batch_size = batch_size;
        state.lr_factor = lr_factor;
        state.decisions.push(decision);
        Some(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(update: u64) -> Observation {
        Observation {
            epoch: update as u32,
            offset: 0,
            update,
        }
    }

    /// Pairs `(𝒮, |𝒢|²)` as one update's norms (k = 2 pieces of B = 2 → 𝒮 = 2(small − big),
    /// |𝒢|² = 2 big − small).
    fn norms(trace: f64, grad_sq: f64) -> StepNorms {
        let big = grad_sq + trace / 2.0;
        StepNorms {
            small: 2.0 * big - grad_sq,
            pieces: 2.0,
            big,
            batch: 2.0,
        }
    }

    /// A window of ten noiseless measurements: every bound equals `b_simple`.
    fn exact(b_simple: f64) -> Window {
        let mut w = Window::default();
        for _ in 0..10 {
            w.add(norms(b_simple, 1.0));
        }
        w
    }

    /// Means, standard error and both bounds from the window's sums; an unresolved |G|² still
    /// gives a positive lower bound.
    #[test]
    fn window_bounds_follow_the_standard_error() {
        let mut w = Window::default();
        for i in 0..10 {
            w.add(norms(100.0, if i % 2 == 0 { 2.5 } else { -0.5 }));
        }
        // mean |𝒢|² = 1, sample variance 10/9 · 1.5² → se = 1.5/3 = 0.5.
        let b = w.bounds(1.0).unwrap();
        assert!((b.b_simple - 100.0).abs() < 1e-9, "{b:?}");
        assert!((b.low - 100.0 / 1.5).abs() < 1e-9, "{b:?}");
        assert!((b.high - 200.0).abs() < 1e-9, "{b:?}");
        // Delta method: Σ(𝒮 − 100|𝒢|²)² = 10 · 150², /(n(n − 1)) → 150/3 = 50.
        assert!((b.stderr - 50.0).abs() < 1e-9, "{b:?}");
        assert_eq!(w.bounds(0.0).unwrap().low, 100.0);
        // |G|² lost in the noise: no point estimate, but B_simple ≥ 100/(0 + 0.5).
        let mut lost = Window::default();
        for i in 0..10 {
            lost.add(norms(100.0, if i % 2 == 0 { 1.5 } else { -1.5 }));
        }
        let b = lost.bounds(1.0).unwrap();
        assert!(
            (b.low - 200.0).abs() < 1e-9 && b.high.is_infinite(),
            "{b:?}"
        );
        assert_eq!(Window::default().bounds(1.0), None);
    }

    /// A scripted B_simple sequence: growth with rounding to the quantum, the hysteresis band,
    /// the cap with ε divided instead, grow-only by default, too few measurements.
    #[test]
    fn follows_a_scripted_noise_scale() {
        let cfg = AdaptiveConfig {
            alpha: 0.5,
            min_change: 2.0,
            ..AdaptiveConfig::default()
        };
        // B0 = 64, quantum 48 (ghost 16 × 3 ranks), cap 1000 → top 960.
        let c = Controller::new(&cfg, 64, 1000, 48, 0.1);
        let mut s = c.start(64);
        let step = |s: &mut AdaptiveState, update: u64, b: f64| {
            s.window = exact(b);
            c.decide(s, at(update))
        };
        // Too few measurements: no decision, and the window carries on.
        let mut few = Window::default();
        for _ in 0..AdaptiveConfig::MIN_MEASUREMENTS - 1 {
            few.add(norms(10_000.0, 1.0));
        }
        s.window = few;
        assert_eq!(c.decide(&mut s, at(1)), None);
        assert_eq!(s.window.n, AdaptiveConfig::MIN_MEASUREMENTS - 1);
        // α·B_simple = 100 < 2 × 64: inside the band; the window starts afresh.
        assert_eq!(step(&mut s, 2, 200.0), None);
        assert_eq!((s.batch_size, s.window.n), (64, 0));
        // α·B_simple = 150 ≥ 128: grow to 150 rounded to a multiple of 48 = 144.
        let d = step(&mut s, 3, 300.0).unwrap();
        assert_eq!((d.old_batch_size, d.new_batch_size), (64, 144));
        assert_eq!((d.old_lr, d.new_lr), (0.1, 0.1));
        assert_eq!((d.noise_batch, d.b_simple_bound), (150.0, 300.0));
        assert_eq!((d.b_simple, d.measurements), (Some(300.0), 10));
        // 250 < 2 × 150: held; a drop is ignored (grow only).
        assert_eq!(step(&mut s, 4, 500.0), None);
        assert_eq!(step(&mut s, 5, 20.0), None);
        // 700 → 720 (15 × 48, the nearest multiple).
        let d = step(&mut s, 6, 1400.0).unwrap();
        assert_eq!((d.old_batch_size, d.new_batch_size), (144, 720));
        // 3000 is past the cap: B = 960 and ε × 960/3000.
        let d = step(&mut s, 7, 6000.0).unwrap();
        assert_eq!(d.new_batch_size, 960);
        assert!(
            (d.new_lr - 0.1 * 960.0 / 3000.0).abs() < 1e-15,
            "{}",
            d.new_lr
        );
        assert_eq!(d.old_lr, 0.1);
        // And further: ε keeps falling, B stays.
        let d = step(&mut s, 8, 12_000.0).unwrap();
        assert_eq!(d.new_batch_size, 960);
        assert!((d.new_lr - 0.1 * 960.0 / 6000.0).abs() < 1e-15);
        assert_eq!(s.decisions.len(), 4);
        assert_eq!(s.batch_size, 960);
    }

    /// Growth follows the lower bound: a noisy window grows B less than its point estimate.
    #[test]
    fn noisy_measurements_grow_the_batch_to_the_lower_bound() {
        let cfg = AdaptiveConfig {
            alpha: 1.0,
            ..AdaptiveConfig::default()
        };
        let c = Controller::new(&cfg, 32, 6000, 1, 0.1);
        let mut s = c.start(32);
        for i in 0..10 {
            s.window
                .add(norms(100.0, if i % 2 == 0 { 2.5 } else { -0.5 }));
        }
        let d = c.decide(&mut s, at(1)).unwrap();
        assert_eq!(d.new_batch_size, 67);
        assert_eq!(d.b_simple, Some(100.0));
    }

    /// With `shrink`, a start far too large comes down to α·B_simple, not below the minimum.
    #[test]
    fn shrinks_only_when_asked() {
        let cfg = AdaptiveConfig {
            alpha: 1.0,
            shrink: true,
            min_batch_size: Some(32),
            ..AdaptiveConfig::default()
        };
        let c = Controller::new(&cfg, 2048, 6000, 32, 0.1);
        let mut s = c.start(2048);
        s.window = exact(300.0);
        let d = c.decide(&mut s, at(1)).unwrap();
        assert_eq!((d.old_batch_size, d.new_batch_size), (2048, 288));
        s.window = exact(5.0);
        let d = c.decide(&mut s, at(2)).unwrap();
        assert_eq!(d.new_batch_size, 32);
        let grow_only = Controller::new(&AdaptiveConfig::default(), 2048, 6000, 32, 0.1);
        let mut s = grow_only.start(2048);
        s.window = exact(300.0);
        assert_eq!(grow_only.decide(&mut s, at(1)), None);
    }

    /// Decision points: every epoch end, and every K updates if asked.
    #[test]
    fn decides_at_epoch_ends_or_every_k_updates() {
        let c = Controller::new(&AdaptiveConfig::default(), 64, 6000, 1, 0.1);
        assert!(c.due(7, true) && !c.due(8, false));
        let k = AdaptiveConfig {
            every_updates: 4,
            ..AdaptiveConfig::default()
        };
        let c = Controller::new(&k, 64, 6000, 1, 0.1);
        assert!(c.due(8, false) && c.due(7, true) && !c.due(7, false));
    }
}
