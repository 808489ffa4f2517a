//! Per-epoch training metrics (`metrics.jsonl`) and the run summary (`summary.json`).
//!
//! One JSON object per line, one line per finished epoch, appended and flushed as the epoch ends,
//! so a report can be drawn from a run that is still going or was killed. Every field that a
//! deterministic CPU run reproduces bit for bit is separate from the timing fields
//! ([`EpochMetrics::without_timing`]), which the resume tests compare.

use crate::noise;
use crate::schedule::{PhaseRow, PhaseTable};
use crate::units::{Epoch, Epochs, Samples, Updates};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Reads a number written by serde_json, where NaN is written as `null`, back: `null` is NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nan() -> f64 {
    f64::NAN
}

/// What one epoch of training did and reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epochs completed (1 after the first epoch).
    pub epoch: Epochs,
    /// Parameter updates so far, over the whole run.
    pub updates: Updates,
    /// Training samples consumed so far.
    pub samples: Samples,
    /// Learning rate ε in force at the end of the epoch.
    pub lr: f64,
    /// Global batch size B of the epoch.
    pub batch_size: usize,
    /// Momentum m (β1 for Adam) of the epoch.
    pub momentum: f64,
    /// Noise scale g = ε/(1−m)·(N/B − 1) of the epoch.
    pub noise_scale: f64,
    /// Mean training loss over the epoch's samples.
    pub train_loss: f64,
    /// Training accuracy over the epoch's samples (in training mode, augmented); NaN (`null`)
    /// for a model without accuracy (regression).
    #[serde(deserialize_with = "null_as_nan")]
    pub train_accuracy: f64,
    /// Mean loss over the test set after the epoch, in evaluation mode (cross-entropy for the
    /// built-in classifiers; the mean squared error for a regression).
    pub test_loss: f64,
    /// Test accuracy in [0, 1]; NaN (`null`) for a model without accuracy (regression).
    #[serde(deserialize_with = "null_as_nan")]
    pub test_accuracy: f64,
    /// Data-parallel processes (ranks) that trained the epoch.
    pub world_size: usize,
    /// Gradient all-reduce calls in this epoch.
    pub allreduce_calls: u64,
    /// Bytes all-reduced in this epoch (per rank).
    pub allreduce_bytes: u64,
    /// Wall seconds since the start of the run (resumed runs continue the count).
    pub wall_seconds: f64,
    /// Wall seconds of this epoch, evaluation included.
    pub epoch_seconds: f64,
    /// Training samples per second in this epoch (evaluation excluded).
    pub samples_per_second: f64,
    /// Seconds spent in gradient communication this epoch.
    pub comm_seconds: f64,
    /// Peak resident memory of the process so far, bytes (0 where unknown).
    pub peak_memory_bytes: u64,
    /// The measured gradient noise scale (`gns_*` fields; absent when not measured).
    #[serde(flatten)]
    pub gns: GnsMetrics,
}

/// One evaluation within training (`train.eval_every`): a line of `evals.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Training samples consumed so far (tokens: times the context length).
    pub samples: Samples,
    /// Parameter updates so far.
    pub updates: Updates,
    /// Epochs so far, fractional (`samples / N`).
    pub epochs: f64,
    /// Learning rate ε of the last update.
    pub lr: f64,
    /// Global batch size B of the last update.
    pub batch_size: usize,
    /// Mean loss over the evaluation samples (nats per token for a language model).
    pub test_loss: f64,
    /// Accuracy over them; NaN (`null`) for a model without accuracy.
    #[serde(deserialize_with = "null_as_nan")]
    pub test_accuracy: f64,
    /// Samples evaluated (`train.eval_subset`, or the whole evaluation set).
    pub test_samples: u64,
    /// Wall seconds since the start of the run.
    pub wall_seconds: f64,
    /// The measured gradient noise scale at this point (absent when not measured).
    #[serde(flatten)]
    pub gns: GnsMetrics,
}

/// The gradient-noise-scale fields of an epoch record ([`crate::gns`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GnsMetrics {
    /// B_simple = tr(Σ)/|G|² at the end of the epoch, smoothed over updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gns_b_simple: Option<f64>,
    /// Standard error of this epoch's estimate (`gns::Reading::b_simple_stderr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gns_b_simple_stderr: Option<f64>,
    /// B_simple from this epoch's updates alone (ratio of the epoch's sums).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gns_epoch_b_simple: Option<f64>,
    /// Smoothed estimate of tr(Σ), the numerator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gns_trace: Option<f64>,
    /// Smoothed estimate of |G|², the denominator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gns_grad_sq: Option<f64>,
}

impl GnsMetrics {
    /// The fields of a reading (non-finite values become absent: JSON has no NaN).
    pub fn from_reading(r: Option<crate::gns::Reading>) -> Self {
        let finite = |v: f64| v.is_finite().then_some(v);
        Self {
            gns_b_simple: r.and_then(|r| finite(r.b_simple)),
            gns_b_simple_stderr: r.and_then(|r| finite(r.b_simple_stderr)),
            gns_epoch_b_simple: r.and_then(|r| finite(r.epoch_b_simple)),
            gns_trace: r.and_then(|r| finite(r.trace)),
            gns_grad_sq: r.and_then(|r| finite(r.grad_sq)),
        }
    }
}

impl EpochMetrics {
    /// A copy with every timing-dependent field zeroed, for comparing runs.
    pub fn without_timing(&self) -> Self {
        Self {
            wall_seconds: 0.0,
            epoch_seconds: 0.0,
            samples_per_second: 0.0,
            comm_seconds: 0.0,
            peak_memory_bytes: 0,
            ..self.clone()
        }
    }
}

/// The phases a run realised, from its epoch records: consecutive epochs with the same ε
/// (at the epoch's end), B and m form one phase. For `adaptive`, the schedule the controller
/// chose; for the fixed kinds, the planned table (but for warm-up, whose epochs differ in ε).
pub fn realised_table(records: &[EpochMetrics], n: Samples) -> PhaseTable {
    let mut phases: Vec<PhaseRow> = Vec::new();
    let mut before = Updates(0);
    for r in records {
        let updates = Updates(r.updates.0.saturating_sub(before.0));
        before = r.updates;
        match phases.last_mut() {
            Some(p) if p.lr == r.lr && p.batch_size == r.batch_size && p.momentum == r.momentum => {
                p.end = r.epoch;
                p.updates += updates;
                p.cumulative_updates = r.updates;
            }
            _ => phases.push(PhaseRow {
                start: Epoch(r.epoch.0.saturating_sub(1)),
                end: r.epoch,
                samples: None,
                lr: r.lr,
                batch_size: r.batch_size,
                momentum: r.momentum,
                g_exact: noise::noise_scale(r.lr, n, r.batch_size, r.momentum),
                g_approx: noise::noise_scale_approx(r.lr, n, r.batch_size, r.momentum),
                updates,
                cumulative_updates: r.updates,
                g_rounding_error: 0.0,
            }),
        }
    }
    PhaseTable {
        total_updates: before,
        epochs: Epochs(records.len() as u32),
        dataset_size: n,
        samples: records.last().map_or(Samples(0), |r| r.samples),
        phases,
    }
}

/// Reads a `metrics.jsonl`; a missing file is an empty run. A malformed line is an error naming
/// the file and line.
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!("{}: line {} is not an epoch record", path.display(), i + 1)
            })
        })
        .collect()
}

/// Reads an `evals.jsonl`; a missing file is a run without evaluations within epochs. A
/// malformed line is an error naming the file and line.
pub fn read_evals(path: &Path) -> Result<Vec<EvalMetrics>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{} line {}: not an evaluation record",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// Appends one record to `metrics.jsonl` and flushes it to disk.
pub fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // One write of the whole line, newline included.
    let line = serde_json::to_string(m)? + "\n";
    f.write_all(line.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_data().ok();
    Ok(())
}

/// Rewrites `metrics.jsonl` with exactly `records` (atomically).
pub fn write_metrics(path: &Path, records: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in records {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    crate::run_dir::write_atomic(path, text.as_bytes())
}

/// The epochs a resumed run keeps: the records of `metrics.jsonl` up to epoch `done` (the
/// checkpoint's), and, when `truncate`, the file cut back to exactly those lines. The lines
/// kept are kept byte for byte (never parsed and re-serialised), so a resumed run's file equals
/// an uninterrupted run's; records after `done` (logged after the checkpoint, to be trained
/// again) and a last line torn by a kill during its append are dropped. A malformed line
/// elsewhere is an error naming the file and line.
pub fn resume_metrics(path: &Path, done: Epochs, truncate: bool) -> Result<Vec<EpochMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut records = Vec::new();
    let mut keep = 0;
    let mut at = 0;
    let mut lines = text.split_inclusive('\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let start = at;
        at += line.len();
        if line.trim().is_empty() {
            continue;
        }
        let last = lines.peek().is_none();
        let m: EpochMetrics = match serde_json::from_str(line) {
            Ok(m) => m,
            Err(_) if last && !line.ends_with('\n') => {
                keep = start;
                break;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("{}: line {} is not an epoch record", path.display(), i + 1)
                });
            }
        };
        if m.epoch > done {
            break;
        }
        records.push(m);
        keep = at;
    }
    let mut kept = text[..keep].to_string();
    if !kept.is_empty() && !kept.ends_with('\n') {
        // The last append was killed between the record and its newline.
        kept.push('\n');
    }
    if truncate && kept != text {
        crate::run_dir::write_atomic(path, kept.as_bytes())?;
    }
    Ok(records)
}

/// The outcome of a finished run (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run label, e.g. `increase-batch` or `decay-lr-seed1`.
    pub name: String,
    /// Schedule kind, e.g. `decay-lr`.
    pub schedule: String,
    /// Optimiser kind, e.g. `momentum`.
    pub optimizer: String,
    /// Model name, e.g. `mlp-256`.
    pub model: String,
    /// The config's `seed`.
    pub seed: u64,
    /// Epochs run (the last record's `epoch`).
    pub epochs: Epochs,
    /// Parameter updates in total.
    pub updates: Updates,
    /// Samples consumed in total.
    pub samples: Samples,
    /// Test accuracy after the last epoch (NaN, `null`, for a regression).
    #[serde(deserialize_with = "null_as_nan")]
    pub final_test_accuracy: f64,
    /// Best test accuracy over all epochs (NaN, `null`, for a regression).
    #[serde(deserialize_with = "null_as_nan")]
    pub best_test_accuracy: f64,
    /// Mean training loss of the last epoch.
    pub final_train_loss: f64,
    /// Test loss after the last epoch (NaN, `null`, in summaries written before it was kept).
    #[serde(default = "nan", deserialize_with = "null_as_nan")]
    pub final_test_loss: f64,
    /// Wall seconds of the whole run.
    pub wall_seconds: f64,
    /// Training samples per second over the run.
    pub samples_per_second: f64,
    /// Data-parallel processes (ranks), as of the last epoch.
    pub world_size: usize,
    /// All-reduce calls over the run.
    pub allreduce_calls: u64,
    /// Seconds in gradient communication over the run.
    pub comm_seconds: f64,
}

impl std::fmt::Display for RunSummary {
    /// One line: `rings (adaptive, seed 0): 8 epochs, 8,483 updates, final test accuracy 67.25%`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, seed {}): {} epochs, {} updates, ",
            self.name, self.schedule, self.seed, self.epochs.0, self.updates.0,
        )?;
        if self.final_test_accuracy.is_nan() {
            write!(
                f,
                "final test loss {:.4} (train {:.4})",
                self.final_test_loss, self.final_train_loss
            )
        } else {
            write!(
                f,
                "final test accuracy {:.2}% (best {:.2}%)",
                100.0 * self.final_test_accuracy,
                100.0 * self.best_test_accuracy
            )
        }
    }
}

impl RunSummary {
    /// Summarises a run's epoch records.
    pub fn from_metrics(
        name: &str,
        schedule: &str,
        optimizer: &str,
        model: &str,
        seed: u64,
        records: &[EpochMetrics],
    ) -> Option<Self> {
        let last = records.last()?;
        // Training time alone (evaluation excluded): each epoch's samples over its rate.
        let mut before = Samples(0);
        let mut train_seconds = 0.0;
        for m in records {
            if m.samples_per_second > 0.0 {
                train_seconds += (m.samples.0 - before.0) as f64 / m.samples_per_second;
            }
            before = m.samples;
        }
        Some(Self {
            name: name.into(),
            schedule: schedule.into(),
            optimizer: optimizer.into(),
            model: model.into(),
            seed,
            epochs: last.epoch,
            updates: last.updates,
            samples: last.samples,
            final_test_accuracy: last.test_accuracy,
            // NaN where no epoch has an accuracy (a regression): `max` skips NaN.
            best_test_accuracy: records
                .iter()
                .map(|m| m.test_accuracy)
                .fold(f64::NAN, f64::max),
            final_train_loss: last.train_loss,
            final_test_loss: last.test_loss,
            wall_seconds: last.wall_seconds,
            samples_per_second: if train_seconds > 0.0 {
                last.samples.0 as f64 / train_seconds
            } else {
                0.0
            },
            world_size: last.world_size,
            allreduce_calls: records.iter().map(|m| m.allreduce_calls).sum(),
            comm_seconds: records.iter().map(|m| m.comm_seconds).sum(),
        })
    }
}

/// Peak resident set size of this process in bytes (`VmHWM`), 0 where unknown.
pub fn peak_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: u32, samples: u64, sps: f64, acc: f64) -> EpochMetrics {
        EpochMetrics {
            epoch: Epochs(epoch),
            updates: Updates(epoch as u64 * 10),
            samples: Samples(samples),
            lr: 0.1,
            batch_size: 100,
            momentum: 0.9,
            noise_scale: 1.0,
            train_loss: 1.0 / epoch as f64,
            train_accuracy: acc,
            test_loss: 0.5,
            test_accuracy: acc,
            world_size: 1,
            allreduce_calls: 0,
            allreduce_bytes: 0,
            wall_seconds: epoch as f64 * 12.0,
            epoch_seconds: 12.0,
            samples_per_second: sps,
            comm_seconds: 0.0,
            peak_memory_bytes: 1,
            gns: GnsMetrics::default(),
        }
    }

    #[test]
    fn summary_uses_training_time_and_best_epoch() {
        // 1,000 samples at 100/s (10 s) then 1,000 at 250/s (4 s): 2,000 / 14 s.
        let r = [record(1, 1000, 100.0, 0.9), record(2, 2000, 250.0, 0.8)];
        let s = RunSummary::from_metrics("a", "decay-lr", "momentum", "mlp", 0, &r).unwrap();
        assert!((s.samples_per_second - 2000.0 / 14.0).abs() < 1e-9);
        assert_eq!(s.best_test_accuracy, 0.9);
        assert_eq!(s.final_test_accuracy, 0.8);
        assert_eq!(s.updates, Updates(20));
        assert!(RunSummary::from_metrics("a", "", "", "", 0, &[]).is_none());
    }

    #[test]
    fn every_f64_reads_back_exactly() {
        // Without serde_json's `float_roundtrip`, some of these (17 significant digits) read
        // back one ulp off, which changed resumed metrics and summaries.
        let mut state = 0x1234_5678_9abc_def0_u64;
        let mut off = 0;
        for i in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = if i % 2 == 0 {
                f64::from_bits(state)
            } else {
                (state >> 11) as f64 / (1u64 << 53) as f64 * 100.0
            };
            if !x.is_finite() {
                continue;
            }
            let y: f64 = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
            off += (x.to_bits() != y.to_bits()) as u32;
        }
        assert_eq!(off, 0, "{off} values did not survive JSON");
        let x = 92.750_000_000_000_01_f64;
        assert_eq!(
            serde_json::from_str::<f64>(&serde_json::to_string(&x).unwrap()).unwrap(),
            x
        );
    }

    #[test]
    fn resume_keeps_earlier_lines_byte_for_byte_and_drops_later_or_torn_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let line = |e: u32| {
            // Written as another serialiser might (spaces, exponents): kept as it is.
            serde_json::to_string(&record(e, e as u64 * 1000, 100.0, 0.5))
                .unwrap()
                .replace("\"lr\":0.1", "\"lr\": 1.0e-1")
        };
        let text = format!("{}\n{}\n{}\n{{\"epoch\":4,\"upd", line(1), line(2), line(3));
        std::fs::write(&p, &text).unwrap();
        // Epoch 3 was logged after the checkpoint (epoch 2); the last line is torn.
        let kept = resume_metrics(&p, Epochs(2), false).unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "read only");
        let kept = resume_metrics(&p, Epochs(2), true).unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n{}\n", line(1), line(2))
        );
        // A torn line alone at the end, after the checkpoint's epoch: dropped too.
        std::fs::write(&p, format!("{}\n{}\n{{\"ep", line(1), line(2))).unwrap();
        assert_eq!(resume_metrics(&p, Epochs(5), true).unwrap().len(), 2);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n{}\n", line(1), line(2))
        );
        // A record whose newline was not written gets it back.
        std::fs::write(&p, format!("{}\n{}", line(1), line(2))).unwrap();
        assert_eq!(resume_metrics(&p, Epochs(5), true).unwrap().len(), 2);
        assert!(std::fs::read_to_string(&p).unwrap().ends_with("}\n"));
        // A bad line before the end is an error naming it.
        std::fs::write(&p, format!("{}\nnot json\n{}\n", line(1), line(2))).unwrap();
        let err = format!("{:#}", resume_metrics(&p, Epochs(5), true).unwrap_err());
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn metrics_round_trip_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let r = [record(1, 1000, 100.0, 0.9), record(2, 2000, 250.0, 0.8)];
        for m in &r {
            append_metrics(&p, m).unwrap();
        }
        assert_eq!(read_metrics(&p).unwrap(), r);
        write_metrics(&p, &r[..1]).unwrap();
        assert_eq!(read_metrics(&p).unwrap(), r[..1]);
        std::fs::write(&p, "{\"epoch\": 1}\n").unwrap();
        let err = format!("{:#}", read_metrics(&p).unwrap_err());
        assert!(
            err.contains("line 1") && err.contains("metrics.jsonl"),
            "{err}"
        );
    }
}
