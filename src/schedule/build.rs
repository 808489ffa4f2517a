//! From a validated [`ScheduleConfig`] to the per-epoch (ε, B) of every kind.

use super::config::{phase_index, pow};
use super::{Phase, SampleRange, Schedule, ScheduleConfig, ScheduleKind};
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

        let segments = self.segments(n);
        let steps = self.lr_steps();
        let mut per_segment = Vec::with_capacity(segments.len());
        for seg in &segments {
            let p = seg.milestones_passed;
            let d = self.factor.powi(pow(p));
            let (mut target_mult, lr_ideal, mut b_ideal) = match self.kind {
                // The starting point; the controller moves B and ε during training.
                ScheduleKind::Adaptive => (1.0, lr0, b0),
                ScheduleKind::DecayLr | ScheduleKind::Rampup => match &self.lr_schedule {
                    Some(s) => {
                        let k = s.multiplier(seg.lr_step, self.lr, steps);
                        (k, lr0 * k, b0)
                    }
                    None => (1.0 / d, lr0 / d, b0),
                },
                ScheduleKind::IncreaseBatch => (1.0 / d, lr0, b0 * d),
                ScheduleKind::Seesaw => (1.0 / d, lr0 / d.sqrt(), b0 * d),
                ScheduleKind::Hybrid => {
                    // Grow B for the first q milestones while the rounded size fits the cap.
                    let mut q = 0;
                    while q < p
                        && noise::round_to_multiple(b0 * self.factor.powi(pow(q + 1)), multiple)
                            <= hard_cap
                    {
                        q += 1;
                    }
                    (
                        1.0 / d,
                        lr0 / self.factor.powi(pow(p - q)),
                        b0 * self.factor.powi(pow(q)),
                    )
                }
                ScheduleKind::Converted => {
                    let s = self.lr_schedule.as_ref().expect("validated");
                    let k = s.multiplier(seg.lr_step, self.lr, steps);
                    (k, lr0, b0 / k)
                }
            };
            if let Some(r) = self
                .rampup
                .as_ref()
                .filter(|_| self.kind == ScheduleKind::Rampup)
            {
                // The ramp's B is part of the recipe: its g is the target there.
                let ramp = r.batch_at(seg.from, self.batch_size) as f64;
                if ramp < b_ideal {
                    target_mult *= b_ideal / ramp;
                    b_ideal = ramp;
                }
            }
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
            per_segment.push((lr, b, target, err));
        }

        let sample_clock = self.samples.map(Samples);
        let mut phases: Vec<Phase> = Vec::new();
        for (seg, &(lr, b, _, _)) in segments.iter().zip(&per_segment) {
            let range = SampleRange {
                from: Samples(seg.from),
                until: Samples(seg.until),
            };
            match phases.last_mut() {
                Some(last) if last.lr == lr && last.batch_size == b => {
                    last.end = Epochs(seg.until.div_ceil(n.0) as u32);
                    if let Some(r) = &mut last.samples {
                        r.until = range.until;
                    }
                }
                _ => phases.push(Phase {
                    start: Epoch((seg.from / n.0) as u32),
                    end: Epochs(seg.until.div_ceil(n.0) as u32),
                    samples: sample_clock.map(|_| range),
                    lr,
                    batch_size: b,
                    momentum: m,
                }),
            }
        }
        // Per epoch: the target where it starts, the largest rounding error within it.
        let epochs = match sample_clock {
            Some(s) => s.0.div_ceil(n.0) as u32,
            None => self.epochs,
        };
        let (mut targets, mut errors) = (Vec::new(), Vec::new());
        for e in 0..u64::from(epochs) {
            let (lo, hi) = (e * n.0, (e + 1) * n.0);
            let within = segments
                .iter()
                .zip(&per_segment)
                .filter(|(seg, _)| seg.from < hi && seg.until > lo);
            let mut first = None;
            let mut err = 0.0f64;
            for (_, &(_, _, target, e)) in within {
                first.get_or_insert(target);
                err = err.max(e);
            }
            targets.push(first.unwrap_or(f64::NAN));
            errors.push(err);
        }
        Schedule {
            dataset_size: n,
            epochs: Epochs(epochs),
            phases,
            target_noise: targets,
            rounding_error: errors,
            warmup_epochs: self.warmup_epochs,
            warmup_from: self.warmup_from,
            sample_clock,
            warmup_samples: self.warmup_samples,
        }
    }

    /// The stretches of training within which no rule changes (ε, B): each epoch on the epoch
    /// clock; on the sample clock, the pieces between milestones, the `lr_schedule`'s segments
    /// and the ramp-up's steps.
    fn segments(&self, n: Samples) -> Vec<Segment> {
        let Some(total) = self.samples else {
            return (0..self.epochs)
                .map(|e| Segment {
                    from: u64::from(e) * n.0,
                    until: u64::from(e + 1) * n.0,
                    milestones_passed: phase_index(&self.milestones, e),
                    lr_step: e,
                })
                .collect();
        };
        let mut cuts: Vec<u64> = vec![0, total];
        cuts.extend(&self.milestone_samples);
        if self.lr_schedule.is_some() {
            let parts = u64::from(self.lr_segments);
            cuts.extend((1..parts).map(|k| part_start(k, total, parts)));
        }
        if let Some(r) = self
            .rampup
            .as_ref()
            .filter(|_| self.kind == ScheduleKind::Rampup)
        {
            let steps = r.steps(self.batch_size);
            cuts.extend((1..=steps).map(|k| r.step_start(k, self.batch_size)));
        }
        cuts.retain(|&c| c <= total);
        cuts.sort_unstable();
        cuts.dedup();
        let parts = u64::from(self.lr_segments);
        cuts.windows(2)
            .map(|w| Segment {
                from: w[0],
                until: w[1],
                milestones_passed: self
                    .milestone_samples
                    .iter()
                    .filter(|&&m| m <= w[0])
                    .count() as u32,
                // The lr_schedule's segment k covers [part_start(k), part_start(k + 1)).
                lr_step: (0..parts)
                    .take_while(|&k| part_start(k, total, parts) <= w[0])
                    .count()
                    .saturating_sub(1) as u32,
            })
            .collect()
    }
}

/// The first sample of part `k` of `total` samples cut in `parts` equal parts.
fn part_start(k: u64, total: u64, parts: u64) -> u64 {
    (u128::from(k) * u128::from(total) / u128::from(parts)) as u64
}

/// A stretch of training `[from, until)` (global samples) under one rule.
struct Segment {
    from: u64,
    until: u64,
    /// Milestones at or before `from`.
    milestones_passed: u32,
    /// The `lr_schedule` step ("epoch") in force.
    lr_step: u32,
}
