//! The figures of the epoch records (`metrics.jsonl`): test accuracy against epochs and
//! updates, training loss, the schedule's ε, B and g, the measured noise scale beside B, and
//! the all-reduce calls.

use super::plot::{Figure, group_series, mean_by_key};
use super::{GroupSummary, Run};
use crate::metrics::EpochMetrics;

/// File stems of the plots, in the order they appear in the report.
pub const PLOT_NAMES: [&str; 8] = [
    "test_accuracy_vs_epoch",
    "test_accuracy_vs_updates",
    "train_loss_vs_epoch",
    "schedule_lr",
    "schedule_batch_size",
    "schedule_noise_scale",
    "gradient_noise_scale",
    "allreduce_calls",
];

/// Extracts one point of a curve from an epoch record and the cumulative all-reduce calls.
type Extract = fn(&EpochMetrics, f64) -> (f64, f64);

/// What each figure plots.
struct Spec {
    name: &'static str,
    title: &'static str,
    x_label: &'static str,
    y_label: &'static str,
    x_log: bool,
    y_log: bool,
    per_seed: bool,
    /// Whether each point holds over the epoch that ends at it (drawn as a step).
    steps: bool,
    extract: Extract,
    /// A second quantity drawn dashed in the same colour, as a step per epoch.
    reference: Option<Extract>,
}

const SPECS: [Spec; 8] = [
    Spec {
        name: "test_accuracy_vs_epoch",
        title: "Test accuracy vs epoch",
        x_label: "epoch",
        y_label: "test accuracy (%)",
        x_log: false,
        y_log: false,
        per_seed: true,
        steps: false,
        extract: |m, _| (m.epoch.0 as f64, 100.0 * m.test_accuracy),
        reference: None,
    },
    Spec {
        name: "test_accuracy_vs_updates",
        title: "Test accuracy vs parameter updates (log x axis)",
        x_label: "parameter updates (log scale)",
        y_label: "test accuracy (%)",
        x_log: true,
        y_log: false,
        per_seed: true,
        steps: false,
        extract: |m, _| (m.updates.0 as f64, 100.0 * m.test_accuracy),
        reference: None,
    },
    Spec {
        name: "train_loss_vs_epoch",
        title: "Training loss vs epoch (log y axis)",
        x_label: "epoch",
        y_label: "training loss (log scale)",
        x_log: false,
        y_log: true,
        per_seed: true,
        steps: false,
        extract: |m, _| (m.epoch.0 as f64, m.train_loss),
        reference: None,
    },
    Spec {
        name: "schedule_lr",
        title: "Learning rate schedule (linear axes)",
        x_label: "epoch",
        y_label: "learning rate ε",
        x_log: false,
        y_log: false,
        per_seed: false,
        steps: true,
        extract: |m, _| (m.epoch.0 as f64, m.lr),
        reference: None,
    },
    Spec {
        name: "schedule_batch_size",
        title: "Batch size schedule (log y axis)",
        x_label: "epoch",
        y_label: "batch size B (samples, log scale)",
        x_log: false,
        y_log: true,
        per_seed: false,
        steps: true,
        extract: |m, _| (m.epoch.0 as f64, m.batch_size as f64),
        reference: None,
    },
    Spec {
        name: "schedule_noise_scale",
        title: "Noise scale g = ε/(1−m)·(N/B−1) per epoch (log y axis)",
        x_label: "epoch",
        y_label: "noise scale g (log scale)",
        x_log: false,
        y_log: true,
        per_seed: false,
        steps: true,
        extract: |m, _| (m.epoch.0 as f64, m.noise_scale),
        reference: None,
    },
    Spec {
        name: "gradient_noise_scale",
        title: "Measured gradient noise scale B_simple (solid) and the schedule's B (dashed), log y",
        x_label: "epoch",
        y_label: "samples (log scale)",
        x_log: false,
        y_log: true,
        per_seed: true,
        steps: false,
        extract: |m, _| (m.epoch.0 as f64, m.gns.gns_b_simple.unwrap_or(f64::NAN)),
        reference: Some(|m, _| (m.epoch.0 as f64, m.batch_size as f64)),
    },
    Spec {
        name: "allreduce_calls",
        title: "Cumulative gradient all-reduce calls (linear axes)",
        x_label: "epoch",
        y_label: "all-reduce calls (cumulative)",
        x_log: false,
        y_log: false,
        per_seed: false,
        steps: false,
        extract: |m, cum| (m.epoch.0 as f64, cum),
        reference: None,
    },
];

/// A run's curve under `extract`, dropping points a log axis cannot show.
fn curve(run: &Run, spec: &Spec, extract: Extract) -> Vec<(u32, f64, f64)> {
    let mut cum = 0.0;
    run.metrics
        .iter()
        .map(|m| {
            cum += m.allreduce_calls as f64;
            let (x, y) = extract(m, cum);
            (m.epoch.0, x, y)
        })
        .filter(|&(_, x, y)| {
            x.is_finite() && y.is_finite() && (!spec.x_log || x > 0.0) && (!spec.y_log || y > 0.0)
        })
        .collect()
}

/// The mean over seeds of a group's curves, per epoch; as steps (constant over each epoch)
/// when `steps`.
fn mean_over_seeds(curves: &[Vec<(u32, f64, f64)>], steps: bool) -> Vec<(f64, f64)> {
    let mean = mean_by_key(curves).into_iter();
    if steps {
        mean.flat_map(|(x, y)| [(x - 1.0, y), (x, y)]).collect()
    } else {
        mean.collect()
    }
}

/// Every figure of the report, groups in the order of `groups`.
pub(super) fn figures(runs: &[Run], groups: &[GroupSummary]) -> Vec<Figure> {
    SPECS
        .iter()
        .map(|spec| {
            let series = groups
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let of_group = |extract: Extract| -> Vec<Vec<(u32, f64, f64)>> {
                        runs.iter()
                            .filter(|r| r.info.group == g.group)
                            .map(|r| curve(r, spec, extract))
                            .collect()
                    };
                    let curves = of_group(spec.extract);
                    let mean = mean_over_seeds(&curves, spec.steps);
                    let reference = spec
                        .reference
                        .map(|r| mean_over_seeds(&of_group(r), true))
                        .unwrap_or_default();
                    group_series(g, i, &curves, mean, reference, spec.per_seed)
                })
                .collect();
            let mut title = spec.title.to_string();
            if spec.name == "allreduce_calls" {
                let world = runs
                    .iter()
                    .filter_map(|r| r.metrics.last())
                    .map(|m| m.world_size)
                    .max()
                    .unwrap_or(1);
                title.push_str(&format!(", world size {world}"));
            }
            Figure {
                name: spec.name,
                title,
                x_label: spec.x_label,
                y_label: spec.y_label,
                x_log: spec.x_log,
                y_log: spec.y_log,
                per_seed: spec.per_seed,
                x_epoch: spec.x_label == "epoch",
                series,
            }
        })
        .collect()
}
