//! `noisescale bench`: training-step and data-loading throughput on the current device, and
//! optionally the same training steps in PyTorch eager (`bench/pytorch_ref.py`) for a ratio.
//!
//! A training step is the trainer's own [`crate::train::forward_backward`] (host batch →
//! tensors, forward, cross-entropy, `loss.into_scalar()`, backward, gradients gathered, in
//! micro-batches of [`crate::config::AUTO_MICRO_BATCH`]) plus one SGD-momentum step
//! (`weight_decay` 5e-4, ε 0.1, m 0.9), on
//! random inputs of the model's input shape. Data loading is [`crate::data::assemble`] (one thread, the CPU cost
//! of a batch) and the background [`crate::data::Loader`] (its worker threads, consumed without training).
//!
//! Threads: burn-flex and our kernels parallelise over the current rayon pool; `--threads` runs
//! the whole benchmark in a pool of that many threads (flushing denormals, as training does) and
//! is passed to PyTorch as `torch.set_num_threads`. The table names the CPU, whether it has
//! AVX-512 and whether denormals are flushed.

mod lm;
mod loading;
mod matmul;
mod report;
mod step;

#[cfg(test)]
use step::{TrainRowSpec, train_rows};
use step::{resnet8, selected_rows};

pub use lm::{LM_SHAPES, LmRow};
pub use matmul::{MatmulRow, MatmulSpec};
pub use report::{
    BenchReport, DataRow, GNS_ROUNDS, GnsCostRow, TorchReport, TorchRow, TrainRow, format_report,
};

use crate::data::{self, DatasetKind};
use crate::model::ModelConfig;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;

/// Which measurements to run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// Training steps and the noise-scale cost rows; no data loading.
    TrainStep,
    /// Data loading only (plus the ResNet-8 steps it is compared with).
    Data,
    /// The MLP's matrix products alone (GFLOP/s; with `--pytorch`, `torch.matmul` on the same
    /// shapes and layouts): how much of the MLP's step, and of its gap to PyTorch, is GEMM.
    Matmul,
    /// The language model's training step (`lm` preset's shape and nanoGPT's character
    /// model), with `--pytorch` beside `bench/gpt_torch.py step`; not part of `all`.
    LmStep,
    /// Training steps, noise-scale cost, matrix products and data loading.
    All,
}

/// `noisescale bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Compute threads: the rayon pool for burn-flex, `torch.set_num_threads` for PyTorch.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed steps per training row (WRN-16-4 takes a quarter of them, at least 3), and the
    /// fewest timed calls of each matrix product.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed warm-up steps per training row (calls per matrix product).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Stop timing a training row after this many seconds (once 3 steps are timed).
    #[arg(long, default_value_t = 30.0)]
    pub max_seconds: f64,
    /// Keep timing a training row past `--steps` until this many seconds are timed, so that
    /// millisecond steps are not measured from a handful of samples (a matrix product, a
    /// quarter of this).
    #[arg(long, default_value_t = 2.0)]
    pub min_seconds: f64,
    /// Which rows to measure, comma-separated (e.g. `train-step,matmul`; data rows need
    /// CIFAR-10 under `--data`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub only: Vec<Only>,
    /// Devices to time the training steps on, comma-separated (`flex`, `wgpu`, `wgpu:0`, …);
    /// the table puts each beside the first. The noise-scale cost, the matrix products and the
    /// data rows use the first.
    #[arg(long = "device", value_delimiter = ',', default_value = "flex")]
    pub devices: Vec<String>,
    /// Leave out the noise-scale cost rows (three interleaved rounds of three variants).
    #[arg(long)]
    pub no_gns_cost: bool,
    /// Only these models' rows, comma-separated (`mlp-256`, `cnn`, `resnet-8`, `wrn-16-4`);
    /// all of them when absent. Passed on to the PyTorch reference.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Measure the training rows and the matrix products (and PyTorch's) this many times,
    /// interleaved (our rows, then PyTorch's, then ours again, …), and report each row's
    /// median: on a machine whose speed drifts, one pass of each side after the other can
    /// favour either.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Only the training rows at these batch sizes, comma-separated (e.g. `128`); every row's
    /// own batch sizes when absent. The PyTorch reference runs the same ones.
    #[arg(long, value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
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

/// Classes of every bench row's random labels (and its models' outputs).
const CLASSES: usize = 10;

impl BenchArgs {
    /// Whether `--only` asks for `what` (or for everything).
    fn runs(&self, what: Only) -> bool {
        self.only.contains(&what) || self.only.contains(&Only::All)
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
    if args.rounds == 0 {
        bail!("--rounds = 0 is out of range: must be at least 1");
    }
    // burn-flex and our kernels parallelise over the current rayon pool: the one the CLI runs
    // in (`cpu::on_compute_thread`) when it has `--threads` threads, as training steps run,
    // else one of that size, whose workers flush denormals like the global pool's.
    if rayon::current_thread_index().is_some() && rayon::current_num_threads() == args.threads {
        return run_in_pool(args);
    }
    crate::cpu::pool(args.threads)?.install(|| run_in_pool(args))
}

fn run_in_pool(args: BenchArgs) -> Result<()> {
    let specs = args
        .devices
        .iter()
        .map(|d| crate::device::parse(d))
        .collect::<Result<Vec<_>>>()?;
    let Some(&first) = specs.first() else {
        bail!("--device names no device");
    };
    let mut train = Vec::new();
    let mut gns = Vec::new();
    let mut data_rows = Vec::new();
    let train_steps = args.runs(Only::TrainStep);
    let products = if args.runs(Only::Matmul) {
        matmul_products(&args)?
    } else {
        Vec::new()
    };

    // The training rows and the products, ours and PyTorch's, `--rounds` times in turn, then
    // each row's median.
    let mut torch_rounds = Vec::new();
    let mut matmul_rounds = Vec::new();
    let mut torch_matmul_rounds = Vec::new();
    // The products run on the first device without autodiff.
    let product_device = if products.is_empty() {
        None
    } else {
        Some(crate::device::plain(first)?)
    };
    if train_steps || product_device.is_some() {
        let mut rounds = Vec::new();
        for round in 0..args.rounds {
            if args.rounds > 1 {
                eprintln!("round {} of {}", round + 1, args.rounds);
            }
            if train_steps {
                let mut rows = Vec::new();
                for &spec in &specs {
                    for (cfg, input, batches, slow) in
                        selected_rows(&args.models, &args.batch_sizes)?
                    {
                        for b in batches {
                            rows.push(step::bench_train(&args, &cfg, input, b, slow, None, spec)?);
                        }
                    }
                }
                rounds.push(rows);
                if args.pytorch {
                    torch_rounds.push(run_pytorch(&args, None)?);
                }
            }
            if let Some(device) = &product_device {
                let rows = products
                    .iter()
                    .map(|p| {
                        let row = matmul::bench_product(
                            p,
                            device,
                            args.warmup,
                            args.steps,
                            args.min_seconds / MATMUL_SECONDS_DIVISOR,
                        )?;
                        eprintln!(
                            "bench {} B={}: {:.1} GFLOP/s",
                            p.product,
                            p.batch,
                            row.gflops()
                        );
                        Ok(row)
                    })
                    .collect::<Result<Vec<_>>>()?;
                matmul_rounds.push(rows);
                if args.pytorch {
                    torch_matmul_rounds.push(run_pytorch(&args, Some(&products))?);
                }
            }
        }
        train = median_rows(rounds);
    }
    if train_steps && !args.no_gns_cost {
        // The cost of measuring the gradient noise scale (on by default in training): the same
        // steps with the per-micro-batch norms, at a batch that fits one micro-batch (split in
        // two on 1 update in 32, or on every update as under the adaptive schedule) and at one
        // that is already split; the variants interleaved, a quarter of the steps each round.
        let quick = BenchArgs {
            steps: (args.steps / 4).max(5),
            min_seconds: args.min_seconds / 2.0,
            ..args.clone()
        };
        // The models whose rows fit a quick repeat (not WRN-16-4).
        let quick_rows = selected_rows(&args.models, &args.batch_sizes)?
            .into_iter()
            .filter(|r| !r.3);
        for (cfg, input, batches, _) in quick_rows {
            for b in batches {
                let mut rounds: [Vec<f64>; 3] = Default::default();
                for _ in 0..GNS_ROUNDS {
                    for (v, every) in [None, Some(crate::gns::SPLIT_EVERY), Some(1)]
                        .into_iter()
                        .enumerate()
                    {
                        let row = step::bench_train(&quick, &cfg, input, b, false, every, first)?;
                        rounds[v].push(row.images_per_second);
                    }
                }
                let [without, with_default, with_every_update] = rounds.map(median);
                gns.push(GnsCostRow {
                    model: cfg.name(),
                    batch: b,
                    without,
                    with_default,
                    with_every_update,
                });
            }
        }
    }
    if args.runs(Only::Data) && !train_steps {
        for b in [128, 1024] {
            train.push(step::bench_train(
                &args,
                &resnet8(),
                [3, 32, 32],
                b,
                false,
                None,
                first,
            )?);
        }
    }

    if args.runs(Only::Data) {
        let resnet = |b: usize| {
            // The nearest measured ResNet-8 row at or below b (8,192 uses the 1,024 row:
            // throughput per image is flat at large batches on the CPU).
            train
                .iter()
                .filter(|r| r.device == first.to_string())
                .filter(|r| r.model == "resnet-8" && r.batch <= b)
                .max_by_key(|r| r.batch)
                .map(|r| (r.batch, r.images_per_second))
        };
        let split = data::load(DatasetKind::Cifar10, &args.data)
            .with_context(|| format!("loading cifar10 from {}", args.data.display()))?;
        let cifar = Arc::new(split.train);
        let n = cifar.len();
        data_rows.push(loading::bench_data(
            "cifar10-subset",
            cifar,
            128,
            data_epochs(n, 128),
            resnet(128),
        ));
        let synth = Arc::new(data::synthetic(16_384, 1, 10, 3, 32, 32, 0).train);
        data_rows.push(loading::bench_data(
            "synthetic 3x32x32",
            synth,
            8192,
            4,
            resnet(8192),
        ));
    }

    let mut pytorch = median_torch(torch_rounds);
    if let Some(first_round) = torch_matmul_rounds.first() {
        // Where only the products ran, the report is their run's (version, threads).
        let report = pytorch.get_or_insert_with(|| first_round.clone());
        report.matmul = median_matmul(torch_matmul_rounds.into_iter().map(|r| r.matmul).collect());
    }

    let report = BenchReport {
        noisescale_version: env!("CARGO_PKG_VERSION").to_string(),
        rounds: args.rounds,
        devices: specs.iter().map(ToString::to_string).collect(),
        threads: args.threads,
        rayon_num_threads: std::env::var("RAYON_NUM_THREADS").ok(),
        cpu: crate::cpu::model_name(),
        avx512: crate::cpu::has_avx512(),
        denormals_flushed: rayon::broadcast(|_| crate::cpu::denormals_flushed())
            .into_iter()
            .all(|f| f),
        direct_conv: crate::kernels::direct_conv::kernels().map(|isa| isa.name().to_string()),
        purge_delay_ms: crate::allocator::purge_delay_ms(),
        train,
        gns,
        matmul: median_matmul(matmul_rounds),
        data: data_rows,
        pytorch,
    };
    print!("{}", format_report(&report));
    if args.only.contains(&Only::LmStep) {
        print!("{}", lm::format_lm(&lm::bench_lm(&args)?, args.threads));
    }
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

/// The median of `v` (the upper one of an even count); `v` is not empty.
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One row per training row of the first round, at the median images/s over the rounds (which
/// ran the same rows in the same order); steps are summed over the rounds.
fn median_rows(rounds: Vec<Vec<TrainRow>>) -> Vec<TrainRow> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let row = &first[i];
            let ips = median(rounds.iter().map(|r| r[i].images_per_second).collect());
            TrainRow {
                steps: rounds.iter().map(|r| r[i].steps).sum(),
                seconds_per_step: row.batch as f64 / ips,
                images_per_second: ips,
                ..row.clone()
            }
        })
        .collect()
}

/// PyTorch's rows at their median images/s over the rounds, or `None` when it did not run.
fn median_torch(rounds: Vec<TorchReport>) -> Option<TorchReport> {
    let first = rounds.first()?.clone();
    let rows = first
        .rows
        .iter()
        .map(|row| {
            let all = rounds
                .iter()
                .flat_map(|r| &r.rows)
                .filter(|r| r.model == row.model && r.batch == row.batch)
                .map(|r| r.images_per_second)
                .collect();
            TorchRow {
                images_per_second: median(all),
                ..row.clone()
            }
        })
        .collect();
    Some(TorchReport { rows, ..first })
}

/// Each product is timed for `--min-seconds` divided by this: a step's products are a few per
/// row, each much shorter than a step.
const MATMUL_SECONDS_DIVISOR: f64 = 4.0;

/// The products of the selected MLP rows' steps (`--models`, `--batch-sizes`), per micro-batch
/// piece of the step's plan (a last, shorter piece has its own products); with `--only
/// matmul`, an error where they select none.
fn matmul_products(args: &BenchArgs) -> Result<Vec<MatmulSpec>> {
    // Unknown model names are an error here as for the step rows.
    selected_rows(&args.models, &[])?;
    let mlp_selected = args.models.is_empty() || args.models.iter().any(|m| m == matmul::MODEL);
    let rows = if mlp_selected {
        selected_rows(&[matmul::MODEL.to_string()], &args.batch_sizes).unwrap_or_default()
    } else {
        Vec::new()
    };
    let products: Vec<MatmulSpec> = rows
        .iter()
        .flat_map(|(cfg, input, batches, _)| {
            batches
                .iter()
                .flat_map(|&b| step_products(cfg, *input, b))
                .collect::<Vec<_>>()
        })
        .collect();
    if products.is_empty() && args.only.contains(&Only::Matmul) {
        bail!(
            "--only matmul times the {} row's products; --models {:?} and --batch-sizes {:?} select none of its batch sizes",
            matmul::MODEL,
            args.models,
            args.batch_sizes
        );
    }
    Ok(products)
}

/// The products of the bench's step of the MLP `cfg` at batch size `b`: those of each full
/// micro-batch piece, then those of a shorter last piece.
fn step_products(cfg: &ModelConfig, [c, h, w]: [usize; 3], b: usize) -> Vec<MatmulSpec> {
    let ModelConfig::Mlp { widths } = cfg else {
        unreachable!("the {} row is an MLP", matmul::MODEL)
    };
    let inputs = c * h * w;
    let piece = step::step_plan(cfg, false).piece_len(b).min(b);
    let (full, rest) = (b / piece, b % piece);
    let mut products = matmul::mlp_products(inputs, widths, CLASSES, b, piece, full);
    if rest > 0 {
        products.extend(matmul::mlp_products(inputs, widths, CLASSES, b, rest, 1));
    }
    products
}

/// One row per product of the first round, at the median seconds per call over the rounds
/// (which timed the same products in the same order); calls are summed over the rounds.
fn median_matmul(rounds: Vec<Vec<MatmulRow>>) -> Vec<MatmulRow> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| MatmulRow {
            calls: rounds.iter().map(|r| r[i].calls).sum(),
            seconds_per_call: median(rounds.iter().map(|r| r[i].seconds_per_call).collect()),
            ..first[i].clone()
        })
        .collect()
}

fn data_epochs(n: usize, batch: usize) -> u32 {
    // About 12,000 images, at least 2 epochs.
    (12_000 / n.max(batch)).max(2) as u32
}

/// Runs the PyTorch reference as a child process and parses its JSON: its training-step rows,
/// or with `products`, `torch.matmul` on those.
fn run_pytorch(args: &BenchArgs, products: Option<&[MatmulSpec]>) -> Result<TorchReport> {
    eprintln!(
        "running {} {} (PyTorch reference)",
        args.python.display(),
        args.pytorch_script.display()
    );
    let mut command = std::process::Command::new(&args.python);
    command
        .arg(&args.pytorch_script)
        .args(["--json", "-"])
        .args(["--threads", &args.threads.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--max-seconds", &args.max_seconds.to_string()]);
    if let Some(products) = products {
        command
            .args(["--matmul", &serde_json::to_string(products)?])
            .args([
                "--min-seconds",
                &(args.min_seconds / MATMUL_SECONDS_DIVISOR).to_string(),
            ]);
    } else {
        command.args(["--min-seconds", &args.min_seconds.to_string()]);
    }
    let out = command
        .args(if args.models.is_empty() {
            Vec::new()
        } else {
            vec!["--models".to_string(), args.models.join(",")]
        })
        .args(if args.batch_sizes.is_empty() {
            Vec::new()
        } else {
            let sizes: Vec<String> = args.batch_sizes.iter().map(|b| b.to_string()).collect();
            vec!["--batch-sizes".to_string(), sizes.join(",")]
        })
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

#[cfg(test)]
mod tests;
