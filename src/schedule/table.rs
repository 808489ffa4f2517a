//! The per-phase summary of a schedule: what `noisescale schedule` prints.

use std::fmt;

use serde::Serialize;

use super::Schedule;
use crate::units::{Epoch, Epochs, Samples, Updates};

impl Schedule {
    /// A per-phase summary with noise scales and update counts.
    pub fn table(&self) -> PhaseTable {
        let mut cumulative = Updates(0);
        let phases = self
            .phases
            .iter()
            .map(|p| {
                let updates = self.phase_updates(p);
                cumulative += updates;
                // The phase's own ε and B (on the sample clock an epoch holds several phases).
                let n = self.dataset_size;
                let g = super::NoiseScale {
                    exact: crate::noise::noise_scale(p.lr, n, p.batch_size, p.momentum),
                    approx: crate::noise::noise_scale_approx(p.lr, n, p.batch_size, p.momentum),
                };
                let err = (p.start.0..p.end.0)
                    .map(|e| self.g_rounding_error(Epoch(e)))
                    .fold(0.0, f64::max);
                PhaseRow {
                    start: p.start,
                    end: p.end,
                    samples: p.samples,
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
            samples: self.samples(),
            phases,
        }
    }
}

/// One phase of a [`PhaseTable`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PhaseRow {
    /// First epoch of the phase.
    pub start: Epoch,
    /// Epochs done when the phase ends: the index of the first epoch after it.
    pub end: Epochs,
    /// On the sample clock, the phase's global samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<super::SampleRange>,
    /// Learning rate ε.
    pub lr: f64,
    /// Global batch size B.
    pub batch_size: usize,
    /// Momentum coefficient m (Adam's β1 under the Adam kinds).
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
    /// Training length (the last row's `end`).
    pub epochs: Epochs,
    /// Training-set size N in `g_exact` and `g_approx`.
    pub dataset_size: Samples,
    /// Samples processed over the whole schedule (N × epochs, or the sample clock's length).
    pub samples: Samples,
    /// One row per phase.
    pub phases: Vec<PhaseRow>,
}

impl fmt::Display for PhaseTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The sample clock's phases start and end at samples, the epoch clock's at epochs.
        let by_samples = self.phases.iter().any(|r| r.samples.is_some());
        let (start, end) = if by_samples {
            ("from", "until")
        } else {
            ("start", "end")
        };
        let bounds = |r: &PhaseRow| match r.samples {
            Some(s) => (s.from.0, s.until.0),
            None => (u64::from(r.start.0), u64::from(r.end.0)),
        };
        writeln!(
            f,
            "{:>7} {:>7} {:>10} {:>8} {:>6} {:>12} {:>12} {:>9} {:>10} {:>9}",
            start, end, "lr", "batch", "mom", "g_exact", "g_approx", "updates", "cumul.", "g_err"
        )?;
        for r in &self.phases {
            let (a, b) = bounds(r);
            writeln!(
                f,
                "{:>7} {:>7} {:>10.4e} {:>8} {:>6.3} {:>12.4} {:>12.4} {:>9} {:>10} {:>9.2e}",
                a,
                b,
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
