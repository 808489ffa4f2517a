//! `noisescale bench`: training-step and data-loading throughput on the current device, and
//! optionally the same training steps in PyTorch eager (`bench/pytorch_ref.py`) for a ratio.
//!
//! A training step is the trainer's own [`crate::train::forward_backward`] (host batch →
//! tensors, forward, cross-entropy, `loss.into_scalar()`, backward, gradients gathered, in
//! micro-batches of [`crate::config::AUTO_MICRO_BATCH`]) plus one SGD-momentum step
//! (`weight_decay` 5e-4, ε 0.1, m 0.9), on
//! random inputs of the model's input shape. Data loading is [`assemble`] (one thread, the CPU cost
//! of a batch) and the background [`Loader`] (its worker threads, consumed without training).
//!
//! Threads: burn-flex and our kernels parallelise over the current rayon pool; `--threads` runs
//! the whole benchmark in a pool of that many threads (flushing denormals, as training does) and
//! is passed to PyTorch as `torch.set_num_threads`. The table names the CPU, whether it has
//! AVX-512 and whether denormals are flushed.

use crate::data::{self, Augment, Dataset, DatasetKind, Loader, Normalizer, Sampler, assemble};
use crate::model::ModelConfig;
use crate::optim::{OptimizerConfig, OptimizerKind, StepHyper};
use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Which measurements to run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// Training steps only.
    TrainStep,
    /// Data loading only (plus the ResNet-8 steps it is compared with).
    Data,
    /// Everything.
    All,
}

/// `noisescale bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Compute threads: the rayon pool for burn-flex, `torch.set_num_threads` for PyTorch.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed steps per training row (WRN-16-4 takes a quarter of them, at least 3).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed warm-up steps per training row.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Stop timing a training row after this many seconds (once 3 steps are timed).
    #[arg(long, default_value_t = 30.0)]
    pub max_seconds: f64,
    /// Keep timing a training row past `--steps` until this many seconds are timed, so that
    /// millisecond steps are not measured from a handful of samples.
    #[arg(long, default_value_t = 2.0)]
    pub min_seconds: f64,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Only::All)]
    pub only: Only,
    /// Also write the results as JSON to this file (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Data directory (holds `cifar10-subset`).
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// Run the PyTorch reference (`bench/pytorch_ref.py`) with the same settings and compare.
    #[arg(long)]
    pub pytorch: bool,
    /// Python interpreter for `--pytorch` (e.g. `bench/.venv/bin/python`).
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// The PyTorch reference script.
    #[arg(long, default_value = "bench/pytorch_ref.py")]
    pub pytorch_script: PathBuf,
}

/// One training-step row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainRow {
    /// Model name as `noisescale models` prints it (`mlp-256`, `cnn`, `resnet-8`, `wrn-16-4`).
    pub model: String,
    /// Input shape C×H×W.
    pub input: [usize; 3],
    /// Batch size.
    pub batch: usize,
    /// Whether the step measured the gradient noise scale (`train.noise_scale`).
    #[serde(default)]
    pub noise_scale: bool,
    /// Timed steps.
    pub steps: usize,
    /// Mean seconds per step.
    pub seconds_per_step: f64,
    /// Images per second.
    pub images_per_second: f64,
}

/// The training step without and with the noise-scale measurement, interleaved over
/// [`GNS_ROUNDS`] rounds; each figure is the median of its rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GnsCostRow {
    /// Model name.
    pub model: String,
    /// Batch size.
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

/// One data-loading row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataRow {
    /// Where the images come from.
    pub source: String,
    /// Images in the training set.
    pub dataset_size: usize,
    /// Batch size.
    pub batch: usize,
    /// Images per second of `assemble` on this thread (crop + flip + normalise).
    pub assemble_images_per_second: f64,
    /// Images per second delivered by the background `Loader`, consumed without training.
    pub loader_images_per_second: f64,
    /// Loader worker threads.
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
    /// Its rows.
    pub rows: Vec<TorchRow>,
}

/// One PyTorch row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TorchRow {
    /// Model name (same names as [`TrainRow::model`]).
    pub model: String,
    /// Batch size.
    pub batch: usize,
    /// Images per second.
    pub images_per_second: f64,
}

/// Everything `bench` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// Crate version.
    pub noisescale_version: String,
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
    /// Training rows.
    pub train: Vec<TrainRow>,
    /// The cost of measuring the gradient noise scale.
    #[serde(default)]
    pub gns: Vec<GnsCostRow>,
    /// Data rows.
    pub data: Vec<DataRow>,
    /// The PyTorch reference, when run.
    pub pytorch: Option<TorchReport>,
}

/// The training rows: model, input shape, batch sizes, and whether it is a slow row (fewer
/// steps).
fn train_rows() -> Vec<(ModelConfig, [usize; 3], Vec<usize>, bool)> {
    vec![
        (
            ModelConfig::Mlp { widths: vec![256] },
            [1, 28, 28],
            vec![64, 1024],
            false,
        ),
        (
            ModelConfig::Cnn { hidden: 512 },
            [1, 28, 28],
            vec![128, 1024],
            false,
        ),
        (resnet8(), [3, 32, 32], vec![128, 1024], false),
        (
            ModelConfig::Wrn {
                depth: 16,
                widen: 4,
                dropout: 0.0,
                ghost_batch_size: 128,
            },
            [3, 32, 32],
            vec![128],
            true,
        ),
    ]
}

fn resnet8() -> ModelConfig {
    ModelConfig::Resnet {
        depth: 8,
        width: 16,
        ghost_batch_size: 0,
    }
}

/// Runs `noisescale bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.threads == 0 {
        bail!("--threads = 0 is out of range: must be at least 1");
    }
    if args.steps == 0 {
        bail!("--steps = 0 is out of range: must be at least 1");
    }
    // burn-flex and our kernels parallelise over the current rayon pool: this one, whose
    // workers flush denormals like the global pool's.
    crate::cpu::pool(args.threads)?.install(|| run_in_pool(args))
}

fn run_in_pool(args: BenchArgs) -> Result<()> {
    let device = crate::device::device(crate::device::DeviceSpec::Flex)?;
    let mut train = Vec::new();
    let mut gns = Vec::new();
    let mut data_rows = Vec::new();

    if args.only != Only::Data {
        for (cfg, input, batches, slow) in train_rows() {
            for b in batches {
                train.push(bench_train(&args, &cfg, input, b, slow, None, &device)?);
            }
        }
        // The cost of measuring the gradient noise scale (on by default in training): the same
        // steps with the per-micro-batch norms, at a batch that fits one micro-batch (split in
        // two on 1 update in 32, or on every update as under the adaptive schedule) and at one
        // that is already split; the variants interleaved, a quarter of the steps each round.
        let quick = BenchArgs {
            steps: (args.steps / 4).max(5),
            min_seconds: args.min_seconds / 2.0,
            ..args.clone()
        };
        for (cfg, input, batches, _) in train_rows().into_iter().take(3) {
            for b in batches {
                let mut rounds: [Vec<f64>; 3] = Default::default();
                for _ in 0..GNS_ROUNDS {
                    for (v, every) in [None, Some(crate::gns::SPLIT_EVERY), Some(1)]
                        .into_iter()
                        .enumerate()
                    {
                        let row = bench_train(&quick, &cfg, input, b, false, every, &device)?;
                        rounds[v].push(row.images_per_second);
                    }
                }
                let [without, with_default, with_every_update] = rounds.map(|mut r| {
                    r.sort_by(f64::total_cmp);
                    r[r.len() / 2]
                });
                gns.push(GnsCostRow {
                    model: cfg.name(),
                    batch: b,
                    without,
                    with_default,
                    with_every_update,
                });
            }
        }
    } else {
        for b in [128, 1024] {
            train.push(bench_train(
                &args,
                &resnet8(),
                [3, 32, 32],
                b,
                false,
                None,
                &device,
            )?);
        }
    }

    if args.only != Only::TrainStep {
        let resnet = |b: usize| {
            // The nearest measured ResNet-8 row at or below b (8,192 uses the 1,024 row:
            // throughput per image is flat at large batches on the CPU).
            train
                .iter()
                .filter(|r| r.model == "resnet-8" && r.batch <= b)
                .max_by_key(|r| r.batch)
                .map(|r| (r.batch, r.images_per_second))
        };
        let split = data::load(DatasetKind::Cifar10, &args.data)
            .with_context(|| format!("loading cifar10 from {}", args.data.display()))?;
        let cifar = Arc::new(split.train);
        let n = cifar.len();
        data_rows.push(bench_data(
            "cifar10-subset",
            cifar,
            128,
            data_epochs(n, 128),
            resnet(128),
        ));
        let synth = Arc::new(data::synthetic(16_384, 1, 10, 3, 32, 32, 0).train);
        data_rows.push(bench_data(
            "synthetic 3x32x32",
            synth,
            8192,
            4,
            resnet(8192),
        ));
    }

    let pytorch = if args.pytorch && args.only != Only::Data {
        Some(run_pytorch(&args)?)
    } else {
        None
    };

    let report = BenchReport {
        noisescale_version: env!("CARGO_PKG_VERSION").to_string(),
        threads: args.threads,
        rayon_num_threads: std::env::var("RAYON_NUM_THREADS").ok(),
        cpu: crate::cpu::model_name(),
        avx512: crate::cpu::has_avx512(),
        denormals_flushed: rayon::broadcast(|_| crate::cpu::denormals_flushed())
            .into_iter()
            .all(|f| f),
        train,
        gns,
        data: data_rows,
        pytorch,
    };
    print!("{}", format_report(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

fn data_epochs(n: usize, batch: usize) -> u32 {
    // About 12,000 images, at least 2 epochs.
    (12_000 / n.max(batch)).max(2) as u32
}

/// Times training steps of one model at one batch size.
fn bench_train(
    args: &BenchArgs,
    cfg: &ModelConfig,
    input: [usize; 3],
    batch: usize,
    slow: bool,
    split_every: Option<u64>,
    device: &Device,
) -> Result<TrainRow> {
    let measure = split_every.is_some();
    let (steps, warmup) = if slow {
        ((args.steps / 4).max(3), args.warmup.min(1))
    } else {
        (args.steps, args.warmup)
    };
    let classes = 10;
    let mut model = cfg.init(input, classes, device);
    let mut optim = OptimizerConfig {
        kind: OptimizerKind::Momentum,
        weight_decay: 5e-4,
        ..OptimizerConfig::default()
    }
    .init();
    let hyper = StepHyper {
        lr: 0.1,
        momentum: 0.9,
    };
    let [c, h, w] = input;
    let mut rng = data::derive_rng(0, 0, 99, batch as u64);
    let batch_data = data::Batch {
        images: (0..batch * c * h * w)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect(),
        labels: (0..batch)
            .map(|_| rng.random_range(0..classes as u8))
            .collect(),
        shape: [batch, c, h, w],
        epoch: 0,
        start: 0,
        end: batch as u64,
    };
    // The trainer's step on one process: micro-batches of `AUTO_MICRO_BATCH`, and with the
    // noise scale measured, a batch that fits one micro-batch in two pieces.
    let split = measure && !(cfg.ghost_batch_size() == 0 && cfg.has_batch_norm());
    let plan = crate::train::StepPlan {
        max_micro_batch: crate::config::AUTO_MICRO_BATCH,
        min_pieces: 1,
        quantum: cfg.ghost_batch_size().max(1),
        measure,
        seed: 0,
        update: 0,
        inject_nan: false,
    };
    let label = format!(
        "{} B={batch}{}",
        cfg.name(),
        if measure { " +gns" } else { "" }
    );
    eprint!("bench {label}: ");
    let mut timed = 0;
    let mut elapsed = 0.0;
    for i in 0.. {
        if i >= warmup && timed >= steps && elapsed >= args.min_seconds {
            break;
        }
        let t = Instant::now();
        // As the trainer: a batch that fits one micro-batch is cut in two on every
        // `split_every`-th update only.
        let mut plan = crate::train::StepPlan {
            min_pieces: if split && (i as u64).is_multiple_of(split_every.unwrap_or(1)) {
                2
            } else {
                1
            },
            ..plan
        };
        plan.measure = measure && batch.div_ceil(plan.piece_len(batch)) >= 2;
        let step = crate::train::forward_backward(&model, &batch_data, batch, &plan, device)
            .map_err(|e| match e {
                crate::train::StepError::NonFinite { loss } => {
                    anyhow::anyhow!("bench {label}: the loss is {loss}")
                }
                crate::train::StepError::Other(e) => e,
            })?;
        if plan.measure {
            // What the trainer adds per measured update: the batch gradient's squared norm.
            std::hint::black_box(step.grads.sq_norm());
        }
        model = optim.step(model, step.grads, hyper);
        let _ = device.sync();
        let dt = t.elapsed().as_secs_f64();
        if i >= warmup {
            timed += 1;
            elapsed += dt;
            if timed >= 3 && elapsed > args.max_seconds {
                break;
            }
        }
        if i < warmup + steps {
            eprint!(".");
        }
    }
    let sps = elapsed / timed as f64;
    eprintln!(" {:.1} images/s", batch as f64 / sps);
    Ok(TrainRow {
        model: cfg.name(),
        input,
        batch,
        noise_scale: measure,
        steps: timed,
        seconds_per_step: sps,
        images_per_second: batch as f64 / sps,
    })
}

/// Times batch assembly (this thread) and the background loader on `ds` with crop + flip.
fn bench_data(
    source: &str,
    ds: Arc<Dataset>,
    batch: usize,
    epochs: u32,
    train: Option<(usize, f64)>,
) -> DataRow {
    eprint!("bench data {source} B={batch}: ");
    let augment = Augment::CropFlip { pad: 4 };
    let normalizer = Normalizer::from_dataset(&ds);
    let sampler = Sampler::new(ds.len(), 0);
    // assemble: one warm-up epoch, then `epochs` timed.
    let mut images = 0usize;
    let mut elapsed = 0.0;
    for epoch in 0..=epochs {
        let perm = sampler.permutation(epoch);
        for idx in perm.chunks(batch) {
            let t = Instant::now();
            let b = assemble(&ds, idx, &normalizer, augment, 0, epoch);
            let dt = t.elapsed().as_secs_f64();
            std::hint::black_box(&b);
            if epoch > 0 {
                images += b.len();
                elapsed += dt;
            }
        }
    }
    let assemble_ips = images as f64 / elapsed;
    eprint!("assemble {assemble_ips:.0} images/s, ");
    // Loader: its default worker count, whole epochs.
    let workers = Loader::DEFAULT_WORKERS;
    let loader = Loader::new(
        ds.clone(),
        normalizer,
        augment,
        0,
        workers,
        Loader::DEFAULT_PREFETCH,
    );
    let mut images = 0usize;
    let mut t = Instant::now();
    for epoch in 0..=epochs {
        if epoch == 1 {
            images = 0;
            t = Instant::now();
        }
        for b in loader.epoch(epoch, batch, 0, None) {
            images += std::hint::black_box(b).len();
        }
    }
    let loader_ips = images as f64 / t.elapsed().as_secs_f64();
    eprintln!("loader {loader_ips:.0} images/s");
    DataRow {
        source: source.to_string(),
        dataset_size: ds.len(),
        batch,
        assemble_images_per_second: assemble_ips,
        loader_images_per_second: loader_ips,
        loader_workers: workers,
        train_images_per_second: train.map(|t| t.1),
        train_batch: train.map(|t| t.0),
        loading_cost_percent: train.map(|(_, tips)| 100.0 * tips / assemble_ips),
    }
}

/// Runs the PyTorch reference as a child process and parses its JSON.
fn run_pytorch(args: &BenchArgs) -> Result<TorchReport> {
    eprintln!(
        "running {} {} (PyTorch reference)",
        args.python.display(),
        args.pytorch_script.display()
    );
    let out = std::process::Command::new(&args.python)
        .arg(&args.pytorch_script)
        .args(["--json", "-"])
        .args(["--threads", &args.threads.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--max-seconds", &args.max_seconds.to_string()])
        .args(["--min-seconds", &args.min_seconds.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", args.python.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed with {}",
            args.python.display(),
            args.pytorch_script.display(),
            out.status
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "parsing the JSON of {}: {text}",
            args.pytorch_script.display()
        )
    })
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
        "\nCPU: {} · AVX-512: {} · denormals flushed to zero: {}",
        if r.cpu.is_empty() { "unknown" } else { &r.cpu },
        if r.avx512 {
            "yes (gemm's AVX-512 kernels)"
        } else {
            "no (gemm's AVX2/FMA kernels)"
        },
        if r.denormals_flushed { "yes" } else { "no" },
    );
    let _ = writeln!(
        s,
        "\nTraining step (forward, cross-entropy, backward, SGD momentum step), threads = {}{}",
        r.threads,
        match &r.pytorch {
            Some(t) => format!(", PyTorch {}", t.torch_version),
            None => String::new(),
        }
    );
    let _ = write!(
        s,
        "| model | input | B | steps | s/step | noisescale img/s |"
    );
    if r.pytorch.is_some() {
        let _ = write!(s, " PyTorch img/s | noisescale/PyTorch |");
    }
    let _ = writeln!(s);
    let _ = write!(s, "|---|---|--:|--:|--:|--:|");
    if r.pytorch.is_some() {
        let _ = write!(s, "--:|--:|");
    }
    let _ = writeln!(s);
    for row in r.train.iter().filter(|row| !row.noise_scale) {
        let [c, h, w] = row.input;
        let _ = write!(
            s,
            "| {} | {c}×{h}×{w} | {} | {} | {:.3} | {:.0} |",
            row.model, row.batch, row.steps, row.seconds_per_step, row.images_per_second
        );
        if r.pytorch.is_some() {
            match torch.get(&(row.model.clone(), row.batch)) {
                Some(t) => {
                    let _ = write!(s, " {t:.0} | {:.2} |", row.images_per_second / t);
                }
                None => {
                    let _ = write!(s, " – | – |");
                }
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
