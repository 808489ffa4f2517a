//! What a verbose run prints: the progress bar, one line per epoch, the adaptive schedule's
//! decisions.

use crate::metrics::EpochMetrics;
use crate::schedule::adaptive::Decision;

/// One line for a finished epoch of `epochs`.
pub(super) fn describe_epoch(r: &EpochMetrics, epochs: u32) -> String {
    // A regression has no accuracy: its test loss is the mean squared error, shown with its root.
    let (train, test) = if r.test_accuracy.is_nan() {
        (
            String::new(),
            format!(" rmse {:.4}", r.test_loss.max(0.0).sqrt()),
        )
    } else {
        (
            format!(" acc {:.2}%", 100.0 * r.train_accuracy),
            format!(" acc {:.2}%", 100.0 * r.test_accuracy),
        )
    };
    format!(
        "epoch {:>3}/{epochs}  updates {:>6}  B {:>5}  ε {:.4}  m {:.3}  g {:>9.2}  train loss {:.4}{train}  test loss {:.4}{test}  {:.1}s  {:.0} samples/s",
        r.epoch.0,
        r.updates,
        r.batch_size,
        r.lr,
        r.momentum,
        r.noise_scale,
        r.train_loss,
        r.test_loss,
        r.epoch_seconds,
        r.samples_per_second,
    )
}

/// One line for a decision of the adaptive schedule.
pub fn describe_decision(d: &Decision) -> String {
    let estimate = match (d.b_simple, d.b_simple_stderr) {
        (Some(b), Some(se)) => format!("{b:.0} ± {se:.0}"),
        (Some(b), None) => format!("{b:.0}"),
        _ => "unresolved".into(),
    };
    format!(
        "adaptive: after {} epoch(s) + {} samples, update {}: B_simple ≈ {estimate} (bound {:.0}, {} measurements) → B {} → {}, ε {:.4} → {:.4}",
        d.epoch,
        d.offset,
        d.update,
        d.b_simple_bound,
        d.measurements,
        d.old_batch_size,
        d.new_batch_size,
        d.old_lr,
        d.new_lr
    )
}

pub(super) fn progress_bar(
    visible: bool,
    len: u64,
    epoch: u32,
    epochs: u32,
) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} batches  {msg}  ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{epochs}", epoch + 1));
    bar
}
