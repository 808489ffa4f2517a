//! The figures of evaluations within training (`evals.jsonl`, `train.eval_every`): a language
//! model's validation loss against samples and against updates, and the measured noise scale
//! as the loss falls. Drawn where any run has evaluations, after the epoch figures.

use super::plot::{Figure, group_series, mean_by_key};
use super::{GroupSummary, Run};
use crate::metrics::EvalMetrics;

/// File stems of these plots, in the order they appear after [`super::PLOT_NAMES`].
pub const EVAL_PLOT_NAMES: [&str; 3] = [
    "validation_vs_samples",
    "validation_vs_updates",
    "gradient_noise_scale_vs_samples",
];

/// One point of a curve from an evaluation record.
type Extract = fn(&EvalMetrics) -> (f64, f64);

/// Bits per token (per byte for a byte-level model) of a loss in nats.
fn bits(nats: f64) -> f64 {
    nats / std::f64::consts::LN_2
}

struct Spec {
    name: &'static str,
    title: &'static str,
    x_label: &'static str,
    y_label: &'static str,
    x_log: bool,
    y_log: bool,
    extract: Extract,
    reference: Option<Extract>,
}

const SPECS: [Spec; 3] = [
    Spec {
        name: "validation_vs_samples",
        title: "Validation loss vs training samples",
        x_label: "training samples",
        y_label: "validation bits per token",
        x_log: false,
        y_log: false,
        extract: |e| (e.samples.0 as f64, bits(e.test_loss)),
        reference: None,
    },
    Spec {
        name: "validation_vs_updates",
        title: "Validation loss vs parameter updates (log x axis)",
        x_label: "parameter updates (log scale)",
        y_label: "validation bits per token",
        x_log: true,
        y_log: false,
        extract: |e| (e.updates.0 as f64, bits(e.test_loss)),
        reference: None,
    },
    Spec {
        name: "gradient_noise_scale_vs_samples",
        title: "Measured B_simple (solid) and the schedule's B (dashed) vs samples, log y",
        x_label: "training samples",
        y_label: "samples (log scale)",
        x_log: false,
        y_log: true,
        extract: |e| (e.samples.0 as f64, e.gns.gns_b_simple.unwrap_or(f64::NAN)),
        reference: Some(|e| (e.samples.0 as f64, e.batch_size as f64)),
    },
];

/// A run's points under `extract`, numbered by evaluation, without those an axis cannot show.
fn curve(run: &Run, spec: &Spec, extract: Extract) -> Vec<(usize, f64, f64)> {
    run.evals
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (x, y) = extract(e);
            (i, x, y)
        })
        .filter(|&(_, x, y)| {
            x.is_finite() && y.is_finite() && (!spec.x_log || x > 0.0) && (!spec.y_log || y > 0.0)
        })
        .collect()
}

/// The figures of the evaluations within training, groups in the order of `groups`; none
/// where no run has any.
pub(super) fn figures(runs: &[Run], groups: &[GroupSummary]) -> Vec<Figure> {
    if runs.iter().all(|r| r.evals.is_empty()) {
        return Vec::new();
    }
    SPECS
        .iter()
        .map(|spec| {
            let series = groups
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let of_group = |extract: Extract| -> Vec<Vec<(usize, f64, f64)>> {
                        runs.iter()
                            .filter(|r| r.info.group == g.group)
                            .map(|r| curve(r, spec, extract))
                            .collect()
                    };
                    let curves = of_group(spec.extract);
                    let reference = spec.reference.map(|r| mean_by_key(&of_group(r)));
                    let mean = mean_by_key(&curves);
                    group_series(g, i, &curves, mean, reference.unwrap_or_default(), true)
                })
                .collect();
            Figure::new(
                spec.name,
                spec.title.to_string(),
                (spec.x_label, spec.y_label),
                (spec.x_log, spec.y_log),
                series,
            )
        })
        .collect()
}
