//! What a verbose run prints: the progress bar, one line per epoch, the adaptive schedule's
//! decisions.

use crate::metrics::{EpochMetrics, EvalMetrics};
use crate::schedule::adaptive::Decision;

/// How a run's loss reads besides its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LossKind {
    /// A classifier's cross-entropy, with its accuracy; a regression's mean squared error
    /// (where there is no accuracy), with its root.
    Classification,
    /// A regression's mean squared error, shown with its root.
    Regression,
    /// A language model's nats per token, shown in bits per token (bits per byte on bytes).
    Tokens,
}

/// `loss` in words for `kind`, e.g. ` rmse 0.0360` or ` (2.013 bits/token)`.
fn loss_note(kind: LossKind, loss: f64) -> String {
    match kind {
        LossKind::Regression => format!(" rmse {:.4}", loss.max(0.0).sqrt()),
        LossKind::Tokens => format!(" ({:.3} bits/token)", loss / std::f64::consts::LN_2),
        LossKind::Classification => String::new(),
    }
}

/// One line for an evaluation within training.
pub(super) fn describe_eval(r: &EvalMetrics, kind: LossKind) -> String {
    format!(
        "  eval at {} samples (epoch {:.3}), {} updates  B {}  ε {:.3e}  test loss {:.4}{}",
        r.samples,
        r.epochs,
        r.updates,
        r.batch_size,
        r.lr,
        r.test_loss,
        loss_note(kind, r.test_loss)
    )
}

/// One line for a finished epoch of `epochs`.
pub(super) fn describe_epoch(r: &EpochMetrics, epochs: u32, kind: LossKind) -> String {
    let (train, test) = match kind {
        LossKind::Classification if !r.test_accuracy.is_nan() => (
            format!(" acc {:.2}%", 100.0 * r.train_accuracy),
            format!(" acc {:.2}%", 100.0 * r.test_accuracy),
        ),
        LossKind::Tokens => (loss_note(kind, r.train_loss), loss_note(kind, r.test_loss)),
        // Without accuracy: a regression's mean squared error, shown with its root.
        _ => (String::new(), loss_note(LossKind::Regression, r.test_loss)),
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
