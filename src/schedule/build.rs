//! From a validated [`ScheduleConfig`] to the per-epoch (ε, B) of every kind.

use super::config::{phase_index, pow};
use super::{Phase, Schedule, ScheduleConfig, ScheduleKind};
use crate::noise;
use crate::units::{Epoch, Epochs, Samples};

impl ScheduleConfig {
    /// Builds the schedule of a validated configuration.
    pub(super) fn build(&self, n: Samples) -> Schedule {
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
                    start: Epoch(e),
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
