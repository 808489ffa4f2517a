//! The checks of the `[schedule]` table: every key against its range and the training-set
//! size, each clock's keys, and the errors that name them.

use std::fmt;

use super::ScheduleKind;
use super::config::{LrSchedule, MAX_EPOCHS, ScheduleConfig, ScheduleError};
use crate::units::Samples;

impl ScheduleConfig {
    pub(super) fn validate(&self, n: Samples) -> Result<(), ScheduleError> {
        let nn = usize::try_from(n.0).unwrap_or(usize::MAX);
        if n.0 == 0 {
            return Err(ScheduleError::EmptyDataset);
        }
        self.validate_clock(n)?;
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
        self.validate_rampup()?;
        let takes_lr_schedule = matches!(
            self.kind,
            ScheduleKind::Converted | ScheduleKind::DecayLr | ScheduleKind::Rampup
        );
        match (&self.lr_schedule, self.kind) {
            (None, ScheduleKind::Converted) => Err(ScheduleError::MissingLrSchedule),
            (Some(_), kind) if !takes_lr_schedule => Err(ScheduleError::UnusedLrSchedule { kind }),
            // `converted` ignores milestones (it converts the lr_schedule alone).
            (Some(_), ScheduleKind::DecayLr | ScheduleKind::Rampup)
                if !(self.milestones.is_empty() && self.milestone_samples.is_empty()) =>
            {
                Err(out_of_range(
                    "milestones",
                    format!("{:?}", self.milestones),
                    "must be empty with an lr_schedule, which says when ε changes",
                ))
            }
            (Some(s), _) => self.validate_lr_schedule(s),
            (None, _) => Ok(()),
        }
    }

    /// The training length: `epochs` (the epoch clock, with `milestones` and `warmup_epochs`) or
    /// `samples` (the sample clock, with `milestone_samples`, `warmup_samples` and `rampup`),
    /// not both.
    fn validate_clock(&self, n: Samples) -> Result<(), ScheduleError> {
        let Some(total) = self.samples else {
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
            for (key, given) in [
                ("milestone_samples", !self.milestone_samples.is_empty()),
                ("warmup_samples", self.warmup_samples != 0),
                (
                    "rampup",
                    self.rampup.is_some() && self.kind == ScheduleKind::Rampup,
                ),
            ] {
                if given {
                    return Err(ScheduleError::SampleClockOnly { key });
                }
            }
            return check_milestones("milestones", &self.milestones, self.epochs);
        };
        if self.epochs != 0 {
            return Err(out_of_range(
                "epochs",
                self.epochs,
                "must be absent when schedule.samples gives the length (the sample clock)",
            ));
        }
        let epochs = total.div_ceil(n.0);
        if total == 0 || epochs > u64::from(MAX_EPOCHS) {
            return Err(out_of_range(
                "samples",
                total,
                format!(
                    "must be in 1..={} (at most {MAX_EPOCHS} epochs of N = {n})",
                    n.0.saturating_mul(u64::from(MAX_EPOCHS))
                ),
            ));
        }
        for (key, given) in [
            ("milestones", !self.milestones.is_empty()),
            ("warmup_epochs", self.warmup_epochs != 0.0),
        ] {
            if given {
                return Err(ScheduleError::EpochClockOnly { key });
            }
        }
        let ms = &self.milestone_samples;
        if ms.windows(2).any(|w| w[0] >= w[1]) || ms.iter().any(|&m| m == 0 || m >= total) {
            return Err(out_of_range(
                "milestone_samples",
                format!("{ms:?}"),
                format!("must be strictly increasing, each in 1..samples (1..{total})"),
            ));
        }
        if self.warmup_samples > total {
            return Err(out_of_range(
                "warmup_samples",
                self.warmup_samples,
                format!("must be in 0..=samples ({total})"),
            ));
        }
        if self.lr_segments == 0 || self.lr_segments > MAX_EPOCHS {
            return Err(out_of_range(
                "lr_segments",
                self.lr_segments,
                format!("must be in 1..={MAX_EPOCHS}"),
            ));
        }
        Ok(())
    }

    /// `rampup` is required by `kind = "rampup"` and checked whenever given (other kinds ignore
    /// it, so that a preset can carry it for `--schedule rampup`).
    fn validate_rampup(&self) -> Result<(), ScheduleError> {
        let Some(r) = &self.rampup else {
            return match self.kind {
                ScheduleKind::Rampup => Err(ScheduleError::MissingRampup),
                _ => Ok(()),
            };
        };
        if self.samples.is_none() && self.kind != ScheduleKind::Rampup {
            return Ok(());
        }
        let b0 = self.batch_size;
        if r.start == 0 || r.start >= b0 {
            return Err(out_of_range(
                "rampup.start",
                r.start,
                format!("must be in 1..batch_size (1..{b0})"),
            ));
        }
        if r.increment == 0 || !(b0 - r.start).is_multiple_of(r.increment) {
            return Err(out_of_range(
                "rampup.increment",
                r.increment,
                format!(
                    "must be at least 1 and divide batch_size − rampup.start ({})",
                    b0 - r.start
                ),
            ));
        }
        let total = self.samples.unwrap_or(0);
        if r.samples == 0 || r.samples > total {
            return Err(out_of_range(
                "rampup.samples",
                r.samples,
                format!("must be in 1..=samples ({total})"),
            ));
        }
        Ok(())
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
                check_milestones("lr_schedule.milestones", milestones, self.lr_steps())?;
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
                if lrs.len() != self.lr_steps() as usize {
                    return Err(out_of_range(
                        "lr_schedule.lrs",
                        format!("[{} values]", lrs.len()),
                        format!(
                            "must have one value per epoch, or per lr_segment on the sample clock ({})",
                            self.lr_steps()
                        ),
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
