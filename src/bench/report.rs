//! What `bench` measured, and its text tables.

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
    /// `--rounds`: each training figure is the median of this many interleaved measurements.
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
    /// Data-loading rows (empty with `--only train-step`).
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
    let _ = writeln!(
        s,
        "\nTraining step (forward, cross-entropy, backward, SGD momentum step), threads = {}{}{}",
        r.threads,
        match &r.pytorch {
            Some(t) => format!(", PyTorch {}", t.torch_version),
            None => String::new(),
        },
        if r.rounds > 1 {
            format!(", median of {} interleaved rounds", r.rounds)
        } else {
            String::new()
        }
    );
    // One line per (model, batch): the first device's row, then the others' beside it.
    let first = r.devices.first().map_or("flex", String::as_str);
    let others = &r.devices[r.devices.len().min(1)..];
    let ips = |device: &str, model: &str, batch: usize| {
        r.train
            .iter()
            .find(|t| !t.noise_scale && t.device == device && t.model == model && t.batch == batch)
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
    if r.pytorch.is_some() {
        let _ = write!(s, " PyTorch img/s | noisescale/PyTorch |");
    }
    let _ = writeln!(s);
    let _ = write!(s, "|---|---|--:|--:|--:|--:|");
    for _ in others {
        let _ = write!(s, "--:|--:|");
    }
    if r.pytorch.is_some() {
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
        if r.pytorch.is_some() {
            match torch.get(&(row.model.clone(), row.batch)) {
                Some(t) => {
                    let _ = write!(s, " {t:.0} | {:.2} |", row.images_per_second / t);
                }
                None => s.push_str(na),
            }
        }
        let _ = writeln!(s);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(device: &str, model: &str, batch: usize, ips: f64) -> TrainRow {
        TrainRow {
            device: device.into(),
            model: model.into(),
            input: [3, 32, 32],
            batch,
            noise_scale: false,
            steps: 10,
            seconds_per_step: batch as f64 / ips,
            images_per_second: ips,
        }
    }

    #[test]
    fn a_second_device_sits_beside_the_first_with_its_ratio() {
        let report = BenchReport {
            noisescale_version: "0".into(),
            rounds: 1,
            devices: vec!["flex".into(), "wgpu".into()],
            threads: 2,
            rayon_num_threads: None,
            cpu: "test CPU".into(),
            avx512: false,
            denormals_flushed: true,
            direct_conv: None,
            purge_delay_ms: Some(250),
            train: vec![
                row("flex", "cnn", 128, 1000.0),
                row("flex", "resnet-8", 128, 500.0),
                row("wgpu", "cnn", 128, 4000.0),
            ],
            gns: Vec::new(),
            data: Vec::new(),
            pytorch: None,
        };
        let text = format_report(&report);
        assert!(
            text.contains("flushed to zero: yes · direct convolution: no (im2col + GEMM)"),
            "{text}"
        );
        assert!(
            text.contains("Freed memory: returned to the kernel after 250 ms unused"),
            "{text}"
        );
        assert!(
            text.contains("| noisescale img/s (flex) | img/s (wgpu) | wgpu/flex |"),
            "{text}"
        );
        assert!(text.contains("| 1000 | 4000 | 4.00 |"), "{text}");
        // A row the second device lacks is marked, not dropped.
        assert!(text.contains("| 500 | – | – |"), "{text}");
        assert_eq!(text.matches("\n| cnn |").count(), 1, "{text}");
    }
}
