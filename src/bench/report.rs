//! What `bench` measured, and its text tables.

use super::matmul::{MODEL, MatmulRow, MatmulSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Throughput of the trainer's step for one model, batch size and device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainRow {
    /// The device, as `--device` spells it.
    #[serde(default = "flex")]
    pub device: String,
    /// Model name as `noisescale models` prints it (`mlp-256`, `cnn`, `resnet-8`, `wrn-16-4`).
    pub model: String,
    /// Input shape C×H×W.
    pub input: [usize; 3],
    /// Batch size B on one process, in micro-batches of [`crate::config::AUTO_MICRO_BATCH`].
    pub batch: usize,
    /// Whether the step measured the gradient noise scale (`train.noise_scale`).
    #[serde(default)]
    pub noise_scale: bool,
    /// Steps timed after warm-up (see `--steps`, `--min-seconds`, `--max-seconds`).
    pub steps: usize,
    /// Mean seconds per step.
    pub seconds_per_step: f64,
    /// Images per second: `batch / seconds_per_step`.
    pub images_per_second: f64,
}

fn flex() -> String {
    "flex".into()
}

/// The training step without and with the noise-scale measurement, interleaved over
/// [`GNS_ROUNDS`] rounds; each figure is the median of its rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GnsCostRow {
    /// Model name, as in [`TrainRow::model`].
    pub model: String,
    /// Batch size B: one that fits a micro-batch is cut in two to be measured.
    pub batch: usize,
    /// Images per second without the measurement.
    pub without: f64,
    /// With it, a batch that fits one micro-batch cut in two on 1 update in
    /// [`crate::gns::SPLIT_EVERY`] (the default).
    pub with_default: f64,
    /// With it on every update (the adaptive schedule).
    pub with_every_update: f64,
}

/// Rounds of the noise-scale cost rows: the three variants alternate, because this kind of
/// machine drifts by more than the few percent to resolve when rows run one after another.
pub const GNS_ROUNDS: usize = 3;

/// Data-loading throughput on one data set at one batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataRow {
    /// Where the images come from.
    pub source: String,
    /// Images in the training set.
    pub dataset_size: usize,
    /// Batch size assembled; the loading cost uses the nearest ResNet-8 row at or below it.
    pub batch: usize,
    /// Images per second of `assemble` on this thread (crop + flip + normalise).
    pub assemble_images_per_second: f64,
    /// Images per second delivered by the background `Loader`, consumed without training.
    pub loader_images_per_second: f64,
    /// Loader worker threads (the loader's default count).
    pub loader_workers: usize,
    /// ResNet-8 training images per second compared against, and the batch it was measured at.
    pub train_images_per_second: Option<f64>,
    /// The batch size of that training row.
    pub train_batch: Option<usize>,
    /// Time to assemble a batch as a percentage of a ResNet-8 training step on it.
    pub loading_cost_percent: Option<f64>,
}

/// The PyTorch reference's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TorchReport {
    /// `torch.__version__`.
    pub torch_version: String,
    /// Threads it ran with.
    pub threads: usize,
    /// Its rows, one per model and batch size it ran.
    pub rows: Vec<TorchRow>,
    /// `torch.matmul` on the products of [`BenchReport::matmul`], in the same layouts.
    #[serde(default)]
    pub matmul: Vec<MatmulRow>,
}

/// One training-step row of the PyTorch eager reference (`bench/pytorch_ref.py`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TorchRow {
    /// Model name (same names as [`TrainRow::model`]).
    pub model: String,
    /// Batch size B, matched with the [`TrainRow`] of the same model for the ratio.
    pub batch: usize,
    /// Images per second of PyTorch's training step.
    pub images_per_second: f64,
}

fn one() -> usize {
    1
}

fn flex_only() -> Vec<String> {
    vec![flex()]
}

/// Everything `bench` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// `noisescale` version that measured (`CARGO_PKG_VERSION`).
    pub noisescale_version: String,
    /// `--device`: the training rows' devices, the first being the one compared against.
    #[serde(default = "flex_only")]
    pub devices: Vec<String>,
    /// `--rounds`: each training and matrix-product figure is the median of this many
    /// interleaved measurements.
    #[serde(default = "one")]
    pub rounds: usize,
    /// `--threads`.
    pub threads: usize,
    /// `RAYON_NUM_THREADS` as seen by the process.
    pub rayon_num_threads: Option<String>,
    /// The processor's model name: a speed figure means nothing without it.
    #[serde(default)]
    pub cpu: String,
    /// Whether the processor has AVX-512F (gemm's AVX-512 kernels run).
    #[serde(default)]
    pub avx512: bool,
    /// Whether the compute threads flush denormals to zero (see [`crate::cpu`]).
    #[serde(default)]
    pub denormals_flushed: bool,
    /// The vector instructions of the direct kernels that the stride-1 convolutions they take
    /// ran on ([`crate::kernels::direct_conv`], `AVX2` or `AVX-512`), `None` where every
    /// convolution ran through im2col + GEMM.
    #[serde(default)]
    pub direct_conv: Option<String>,
    /// mimalloc's purge delay in milliseconds: how long freed memory stays mapped before it is
    /// returned to the kernel; `None` for never ([`crate::allocator`]).
    #[serde(default)]
    pub purge_delay_ms: Option<i64>,
    /// Training rows, per device, model and batch size.
    pub train: Vec<TrainRow>,
    /// The cost of measuring the gradient noise scale.
    #[serde(default)]
    pub gns: Vec<GnsCostRow>,
    /// The matrix products of the MLP's step, timed alone on the first device (`--only
    /// matmul` or `all`).
    #[serde(default)]
    pub matmul: Vec<MatmulRow>,
    /// Data-loading rows (empty unless `--only` names `data` or `all`).
    pub data: Vec<DataRow>,
    /// The PyTorch reference, when run.
    pub pytorch: Option<TorchReport>,
}

/// The report as text tables.
pub fn format_report(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let torch: HashMap<(String, usize), f64> = r
        .pytorch
        .iter()
        .flat_map(|t| &t.rows)
        .map(|row| ((row.model.clone(), row.batch), row.images_per_second))
        .collect();
    let _ = writeln!(
        s,
        "\nCPU: {} · AVX-512: {} · denormals flushed to zero: {} · direct convolution: {}",
        if r.cpu.is_empty() { "unknown" } else { &r.cpu },
        if r.avx512 {
            "yes (gemm's AVX-512 kernels)"
        } else {
            "no (gemm's AVX2/FMA kernels)"
        },
        if r.denormals_flushed { "yes" } else { "no" },
        match &r.direct_conv {
            Some(isa) => format!("yes ({isa})"),
            None => "no (im2col + GEMM)".to_string(),
        },
    );
    let _ = writeln!(
        s,
        "Freed memory: {}",
        match r.purge_delay_ms {
            None => "kept for reuse".to_string(),
            Some(ms) => format!("returned to the kernel after {ms} ms unused"),
        }
    );
    // PyTorch's step rows (absent where it timed only the matrix products).
    let torch_steps = r.pytorch.as_ref().is_some_and(|t| !t.rows.is_empty());
    if !r.train.is_empty() {
        let _ = writeln!(
            s,
            "\nTraining step (forward, cross-entropy, backward, SGD momentum step), {}",
            settings(r, torch_steps)
        );
        // One line per (model, batch): the first device's row, then the others' beside it.
        let first = r.devices.first().map_or("flex", String::as_str);
        let others = &r.devices[r.devices.len().min(1)..];
        let ips = |device: &str, model: &str, batch: usize| {
            r.train
                .iter()
                .find(|t| {
                    !t.noise_scale && t.device == device && t.model == model && t.batch == batch
                })
                .map(|t| t.images_per_second)
        };
        let on_first = if others.is_empty() {
            String::new()
        } else {
            format!(" ({first})")
        };
        let _ = write!(
            s,
            "| model | input | B | steps | s/step | noisescale img/s{on_first} |"
        );
        for d in others {
            let _ = write!(s, " img/s ({d}) | {d}/{first} |");
        }
        if torch_steps {
            let _ = write!(s, " PyTorch img/s | noisescale/PyTorch |");
        }
        let _ = writeln!(s);
        let _ = write!(s, "|---|---|--:|--:|--:|--:|");
        for _ in others {
            let _ = write!(s, "--:|--:|");
        }
        if torch_steps {
            let _ = write!(s, "--:|--:|");
        }
        let _ = writeln!(s);
        let na = " – | – |";
        for row in r
            .train
            .iter()
            .filter(|t| !t.noise_scale && t.device == first)
        {
            let [c, h, w] = row.input;
            let _ = write!(
                s,
                "| {} | {c}×{h}×{w} | {} | {} | {:.3} | {:.0} |",
                row.model, row.batch, row.steps, row.seconds_per_step, row.images_per_second
            );
            for d in others {
                match ips(d, &row.model, row.batch) {
                    Some(v) => {
                        let _ = write!(s, " {v:.0} | {:.2} |", v / row.images_per_second);
                    }
                    None => s.push_str(na),
                }
            }
            if torch_steps {
                match torch.get(&(row.model.clone(), row.batch)) {
                    Some(t) => {
                        let _ = write!(s, " {t:.0} | {:.2} |", row.images_per_second / t);
                    }
                    None => s.push_str(na),
                }
            }
            let _ = writeln!(s);
        }
    }
    if !r.gns.is_empty() {
        let _ = writeln!(
            s,
            "\nMeasuring the gradient noise scale (train.noise_scale, on by default): the same step without and with it, a batch that fits one micro-batch cut in two on 1 update in {} (default) or on every update (adaptive schedule); medians of {GNS_ROUNDS} interleaved rounds",
            crate::gns::SPLIT_EVERY
        );
        let _ = writeln!(
            s,
            "| model | B | img/s without | img/s with | cost | img/s, every update | cost |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|");
        for g in &r.gns {
            let cost = |with: f64| 100.0 * (g.without / with - 1.0);
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.0} | {:+.1}% | {:.0} | {:+.1}% |",
                g.model,
                g.batch,
                g.without,
                g.with_default,
                cost(g.with_default),
                g.with_every_update,
                cost(g.with_every_update)
            );
        }
    }
    if !r.matmul.is_empty() {
        format_matmul(&mut s, r);
    }
    if !r.data.is_empty() {
        let _ = writeln!(
            s,
            "\nData loading (crop 4 + flip + normalise) against a ResNet-8 training step"
        );
        let _ = writeln!(
            s,
            "| source | N | B | assemble img/s (1 thread) | Loader img/s ({} workers) | ResNet-8 train img/s (at B) | loading cost, % of a step |",
            r.data[0].loader_workers
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|");
        for d in &r.data {
            let (train, cost) = match (
                d.train_images_per_second,
                d.train_batch,
                d.loading_cost_percent,
            ) {
                (Some(t), Some(b), Some(c)) => (format!("{t:.0} (B = {b})"), format!("{c:.2}")),
                _ => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.0} | {train} | {cost} |",
                d.source,
                d.dataset_size,
                d.batch,
                d.assemble_images_per_second,
                d.loader_images_per_second
            );
        }
    }
    s
}

/// What a table's figures were measured with: threads, PyTorch's version where `with_torch`,
/// and the rounds each figure is the median of.
fn settings(r: &BenchReport, with_torch: bool) -> String {
    let mut out = format!("threads = {}", r.threads);
    if let Some(t) = r.pytorch.as_ref().filter(|_| with_torch) {
        out += &format!(", PyTorch {}", t.torch_version);
    }
    if r.rounds > 1 {
        out += &format!(", median of {} interleaved rounds", r.rounds);
    }
    out
}

/// The matrix-product table: each product, then each batch size's products together, as
/// many times as the step runs them, and, where that batch size's MLP step was timed too, their
/// share of it.
fn format_matmul(s: &mut String, r: &BenchReport) {
    use std::fmt::Write;
    let torch: HashMap<&MatmulSpec, &MatmulRow> = r
        .pytorch
        .iter()
        .flat_map(|t| &t.matmul)
        .map(|row| (&row.spec, row))
        .collect();
    let with_torch = !torch.is_empty();
    let first = r.devices.first().map_or("flex", String::as_str);
    let _ = writeln!(
        s,
        "\nMatrix products of the {MODEL} step alone (burn's operand layouts, ᵀ a transposed view; per step: once per micro-batch piece), on {first}, {}",
        settings(r, with_torch)
    );
    let _ = write!(s, "| B | product | m×k×n | per step | µs | GFLOP/s |");
    if with_torch {
        let _ = write!(s, " PyTorch µs | PyTorch GFLOP/s | noisescale/PyTorch |");
    }
    let _ = write!(s, "\n|--:|---|---|--:|--:|--:|");
    if with_torch {
        let _ = write!(s, "--:|--:|--:|");
    }
    let _ = writeln!(s);
    let mut batches: Vec<usize> = r.matmul.iter().map(|m| m.spec.batch).collect();
    batches.dedup();
    let mut shares = String::new();
    for b in batches {
        let rows: Vec<&MatmulRow> = r.matmul.iter().filter(|m| m.spec.batch == b).collect();
        for m in &rows {
            let spec = &m.spec;
            let _ = write!(
                s,
                "| {b} | {} | {}×{}×{} | {} | {:.1} | {:.1} |",
                spec.product,
                spec.m,
                spec.k,
                spec.n,
                spec.pieces,
                m.seconds_per_call * 1e6,
                m.gflops()
            );
            if with_torch {
                match torch.get(spec) {
                    Some(t) => {
                        let _ = write!(
                            s,
                            " {:.1} | {:.1} | {:.2} |",
                            t.seconds_per_call * 1e6,
                            t.gflops(),
                            t.seconds_per_call / m.seconds_per_call
                        );
                    }
                    None => s.push_str(" – | – | – |"),
                }
            }
            let _ = writeln!(s);
        }
        // Per step: each product as many times as the step runs it.
        let per_step = |m: &MatmulRow| m.spec.pieces as f64 * m.seconds_per_call;
        let flops: f64 = rows
            .iter()
            .map(|m| m.spec.pieces as f64 * m.spec.flops())
            .sum();
        let ours: f64 = rows.iter().map(|m| per_step(m)).sum();
        let theirs: Option<f64> = rows
            .iter()
            .map(|m| torch.get(&m.spec).map(|t| per_step(t)))
            .sum();
        let _ = write!(
            s,
            "| {b} | all {} | – | – | {:.1} | {:.1} |",
            rows.len(),
            ours * 1e6,
            flops / ours / 1e9
        );
        if with_torch {
            match theirs {
                Some(t) => {
                    let _ = write!(
                        s,
                        " {:.1} | {:.1} | {:.2} |",
                        t * 1e6,
                        flops / t / 1e9,
                        t / ours
                    );
                }
                None => s.push_str(" – | – | – |"),
            }
        }
        let _ = writeln!(s);
        // The share of the step: what the rest of it (elementwise work, reductions, the
        // update, threading) costs beside the GEMM.
        let ours_step = r
            .train
            .iter()
            .find(|t| !t.noise_scale && t.device == first && t.model == MODEL && t.batch == b)
            .map(|t| b as f64 / t.images_per_second);
        let Some(step) = ours_step else {
            continue;
        };
        let _ = write!(
            shares,
            "B = {b}: the products take {:.0}% of noisescale's step ({:.1} of {:.1} µs)",
            100.0 * ours / step,
            ours * 1e6,
            step * 1e6
        );
        let torch_step = r
            .pytorch
            .iter()
            .flat_map(|t| &t.rows)
            .find(|t| t.model == MODEL && t.batch == b)
            .map(|t| b as f64 / t.images_per_second);
        // PyTorch's step runs the whole batch at once: its share is only these products' where
        // ours does too.
        let unsplit = rows.iter().all(|m| m.spec.piece == b);
        match (theirs, torch_step) {
            (Some(t), Some(tstep)) if unsplit => {
                let _ = write!(
                    shares,
                    ", {:.0}% of PyTorch's ({:.1} of {:.1} µs)",
                    100.0 * t / tstep,
                    t * 1e6,
                    tstep * 1e6
                );
            }
            (Some(_), Some(_)) => {
                shares
                    .push_str("; PyTorch's step runs B in one piece, so no share is given for it");
            }
            _ => {}
        }
        shares.push('\n');
    }
    if !shares.is_empty() {
        // A blank line first, so that Markdown does not read them as the table's rows.
        s.push('\n');
        s.push_str(&shares);
    }
}

#[cfg(test)]
pub(crate) mod tests;
