//! Schedules of every kind against the paper's numbers and invariants (proptest).
//!
//! By topic: [`clock`] (the sample clock: phases at sample counts, seesaw, ramp-up), [`kinds`] (the paper's numbers, converted LR schedules, warm-up), [`validation`]
//! (error messages, adaptive settings), [`reports`] (TOML and phase tables), [`props`] (the
//! noise scale shared by every kind, proptest). Shared helpers live here.

use super::*;

mod clock;
mod kinds;
mod props;
mod reports;
mod validation;

const N: Samples = crate::data::cifar::TRAIN_SAMPLES;

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
