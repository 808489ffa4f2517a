//! The `noisescale` command line: argument parsing and the subcommands' glue. The work itself
//! lives in the library modules.

mod data;
use crate::config::RunConfig;
use crate::data::{Augment, ImageSet};
use crate::model::ModelConfig;
use crate::params::trainable_params;
use crate::run_dir;
use crate::schedule::ScheduleKind;
use crate::train::{self, TrainOptions};
use crate::units::Samples;
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
pub use data::DataCommand;
use std::path::{Path, PathBuf};

/// Don't decay the learning rate, increase the batch size: noise-scale schedules and training.
#[derive(Parser, Debug)]
#[command(name = "noisescale", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand; `--help` lists them.
    #[command(subcommand)]
    pub command: Command,
}

/// `noisescale`'s subcommands, dispatched by [`run`].
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train one run from a TOML config (or resume one).
    Train(TrainArgs),
    /// Evaluate a checkpoint on its run's test split.
    Eval(EvalArgs),
    /// Print a schedule's phase table: ε, B, m, noise scale and parameter updates.
    Schedule(ScheduleArgs),
    /// Run the paper's comparison of schedules on real data and write a report.
    Reproduce(crate::reproduce::ReproduceArgs),
    /// Redraw the report from existing runs.
    Report(ReportArgs),
    /// Continue a prompt with a trained byte-level language model.
    Sample(crate::sample::SampleArgs),
    /// Data set tools: inspect a data directory.
    #[command(subcommand)]
    Data(DataCommand),
    /// List the models with their input shape and parameter count.
    Models,
    /// List the shipped presets.
    Presets,
    /// Measure training-step and data-loading throughput (optionally against PyTorch).
    Bench(crate::bench::BenchArgs),
    /// Measure the gradient noise scale B_simple of a checkpoint on its training data.
    Noise(NoiseArgs),
}

/// `noisescale noise`.
#[derive(Args, Debug)]
pub struct NoiseArgs {
    /// A checkpoint file, or a run directory holding `checkpoint.safetensors`.
    checkpoint: PathBuf,
    /// Batches to average over (each drawn without replacement).
    #[arg(long, default_value_t = 100)]
    batches: usize,
    /// Samples per batch: the estimator's large batch size.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Equal pieces each batch is computed in (the small batch size is batch-size/pieces).
    #[arg(long, default_value_t = 8)]
    pieces: usize,
    /// Seed of the batches drawn.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    placement: Placement,
}

pub use crate::config::{ConfigSource, Overrides, Placement, load_preset};

/// `noisescale train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    source: ConfigSource,
    #[command(flatten)]
    overrides: Overrides,
    /// Run directory for metrics, checkpoints and the summary.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Resume the run in this directory from its checkpoint (the config is read from it
    /// unless one is given, which must then be the same).
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Replace the run already in `--out` (its metrics, checkpoint and summary), which is
    /// otherwise an error.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Train under this schedule kind instead of the config's (milestones are dropped for
    /// `adaptive`, which takes none).
    #[arg(long, value_enum, conflicts_with = "resume")]
    schedule: Option<ScheduleKind>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

/// `noisescale eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint file, or a run directory holding `checkpoint.safetensors`.
    checkpoint: PathBuf,
    #[command(flatten)]
    placement: Placement,
}

/// `noisescale schedule`.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// Replace the config's schedule kind.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Print the phases a run realised (from its metrics), e.g. an adaptive run's, instead of
    /// a config's plan.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "preset", "schedule", "milestones", "max_batch_size", "dataset_size"])]
    run: Option<PathBuf>,
    /// Training-set size N (default: counted in the config's data, or the data set's published
    /// size where there is none).
    #[arg(long)]
    dataset_size: Option<u64>,
    /// Replace the milestones (comma-separated epochs).
    #[arg(long, value_delimiter = ',')]
    milestones: Option<Vec<u32>>,
    /// Replace the hybrid cap.
    #[arg(long)]
    max_batch_size: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    overrides: Overrides,
}

/// `noisescale report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directories, or directories holding them.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where to write the report (default: the first directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Title heading the report's markdown and HTML pages.
    #[arg(long, default_value = "noisescale report")]
    title: String,
}

/// Runs the command line; the binary's `main` maps the error to an exit code.
pub fn run(cli: Cli) -> Result<()> {
    // A misspelt kernel choice is an error here, not silently the default deep in a layer.
    crate::kernels::direct_conv::check_env()?;
    match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Noise(a) => cmd_noise(a),
        Command::Schedule(a) => cmd_schedule(a),
        Command::Reproduce(a) => crate::reproduce::run(a),
        Command::Report(a) => cmd_report(a),
        Command::Sample(a) => crate::sample::run(a),
        Command::Bench(a) => crate::bench::run(a),
        Command::Data(c) => data::run(c),
        Command::Models => {
            let device = burn::tensor::Device::flex();
            println!(
                "{:<12} {:<12} {:>12}  notes",
                "model", "input", "parameters"
            );
            for (cfg, shape) in ModelConfig::catalogue() {
                let m = cfg.init(shape, 10, &device);
                let notes = match cfg.ghost_batch_size() {
                    0 if cfg.has_batch_norm() => "batch norm".to_string(),
                    0 => String::new(),
                    g => format!("ghost batch norm, chunks of {g}"),
                };
                println!(
                    "{:<12} {:<12} {:>12}  {notes}",
                    cfg.name(),
                    format!("{}×{}×{}", shape[0], shape[1], shape[2]),
                    trainable_params(&m)
                );
            }
            Ok(())
        }
        Command::Presets => {
            for (name, text) in crate::presets::PRESETS {
                let first = text
                    .lines()
                    .find(|l| l.starts_with('#'))
                    .unwrap_or("")
                    .trim_start_matches('#')
                    .trim();
                println!("{name:<16} {first}");
            }
            Ok(())
        }
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let (mut cfg, out, resume) = match &a.resume {
        Some(dir) => {
            let saved = RunConfig::load(&dir.join(run_dir::CONFIG_FILE))
                .with_context(|| format!("{} does not hold a run to resume", dir.display()))?;
            if let Some(given) = a.source.load()? {
                let mut given = given;
                a.overrides.apply(&mut given)?;
                if !given.same_run(&saved) {
                    bail!(
                        "the config given differs from the one the run in {} was started with; resume without a config to use the saved one",
                        dir.display()
                    );
                }
            }
            (saved, dir.clone(), true)
        }
        None => {
            let mut cfg = a
                .source
                .load()?
                .context("name a config file or --preset (see `noisescale train --help`)")?;
            if let Some(k) = a.schedule {
                cfg.schedule = cfg.schedule.with_kind(k);
            }
            (cfg, a.out.clone(), false)
        }
    };
    // On resume, --data and --device may point elsewhere (another machine); a different
    // --seed is another run and is refused when the checkpoint is read.
    a.overrides.apply(&mut cfg)?;
    cfg.model.check_builtin()?;
    let comm = crate::dist::from_env()?;
    if comm.rank() == 0 {
        // Fail before loading the data; train() checks again under the lock.
        run_dir::check_unlocked(&out)?;
        run_dir::check_fresh_start(&out, resume, a.overwrite)?;
    }
    if resume && let Some(summary) = train::finished_run(&out, &cfg) {
        if !a.quiet && comm.rank() == 0 {
            let acc = 100.0 * summary.final_test_accuracy;
            println!(
                "{}: finished already ({acc:.2}%): nothing rewritten",
                out.display()
            );
        }
        return Ok(());
    }
    if resume && !train::checkpoint_path(&out).exists() {
        let logged = crate::metrics::read_metrics(&out.join(run_dir::METRICS_FILE))
            .map(|m| m.len())
            .unwrap_or(0);
        // An epoch's metrics line is appended just before its checkpoint is written, so a run
        // killed in between (or one checkpointing rarely) logs epochs without a checkpoint. Only
        // past the first epoch that must have left one was a checkpoint deleted or moved.
        let every = cfg.train.checkpoint_every as usize;
        if every > 0 && logged > every {
            bail!(
                "{}: no checkpoint to resume from: {} is missing although {} logs {logged} finished epoch(s), so it was deleted or moved; put it back to resume, or start the run again with --out {} --overwrite",
                out.display(),
                run_dir::CHECKPOINT_FILE,
                run_dir::METRICS_FILE,
                out.display()
            );
        }
        // Stopped before its first checkpoint: nothing was kept, so nothing is lost by
        // starting over (the same seed gives the same run).
        if comm.rank() == 0 {
            eprintln!(
                "note: {} has no checkpoint yet (the run was stopped before writing its first one): starting it over from the beginning",
                out.display()
            );
        }
    }
    let quiet = a.quiet || comm.rank() != 0;
    let data = train::load_data(&cfg)?;
    let resolved = cfg.resolve(data.train_size(), comm.world_size())?;
    if !quiet {
        eprintln!(
            "{}",
            resolved.describe_batching(resolved.schedule.batch_size(crate::units::Epoch(0)))
        );
    }
    let summary = train::train_loaded(
        &resolved,
        &data,
        &TrainOptions {
            out: out.clone(),
            resume,
            overwrite: a.overwrite,
            group: None,
            verbose: !quiet,
        },
        comm.as_ref(),
    )?;
    if !quiet {
        let best = if summary.best_test_accuracy.is_nan() {
            String::new()
        } else {
            format!(" (best {:.2}%)", 100.0 * summary.best_test_accuracy)
        };
        println!(
            "{}: final {}{best} after {} epochs and {} updates in {:.1}s; metrics in {}",
            summary.name,
            crate::reproduce::describe_result(&summary),
            summary.epochs,
            summary.updates,
            summary.wall_seconds,
            out.join(run_dir::METRICS_FILE).display()
        );
    }
    Ok(())
}

/// A saved run loaded for inspection: its config (with overrides), data, device, model and
/// checkpoint state; `checkpoint` is the file or its run directory.
struct SavedRun {
    path: PathBuf,
    cfg: RunConfig,
    prepared: train::Prepared,
    device: burn::tensor::Device,
    model: crate::model::Model,
    loaded: crate::checkpoint::Loaded,
}

fn load_saved_run(checkpoint: &Path, placement: &Placement) -> Result<SavedRun> {
    let path = if checkpoint.is_dir() {
        checkpoint.join(run_dir::CHECKPOINT_FILE)
    } else {
        checkpoint.to_path_buf()
    };
    if !checkpoint.exists() {
        bail!(
            "{} does not exist: name a run directory or its {}",
            checkpoint.display(),
            run_dir::CHECKPOINT_FILE
        );
    }
    if !path.is_file() {
        bail!(
            "{}: no {} in this directory (the run has not written a checkpoint yet, or it was moved)",
            checkpoint.display(),
            run_dir::CHECKPOINT_FILE
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut cfg = RunConfig::load(&dir.join(run_dir::CONFIG_FILE)).with_context(|| {
        format!(
            "{}: the run's config.toml is needed beside the checkpoint",
            path.display()
        )
    })?;
    placement.apply(&mut cfg)?;
    cfg.model.check_image_model()?;
    let prepared = train::prepare_data(&cfg)?;
    let device = crate::device::device(crate::device::parse(&cfg.device)?)?;
    let model = cfg.model.init(
        prepared.train.image_shape(),
        prepared.train.num_classes,
        &device,
    );
    let (model, loaded) = crate::checkpoint::load(&path, model, &device)?;
    Ok(SavedRun {
        path,
        cfg,
        prepared,
        device,
        model,
        loaded,
    })
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let SavedRun {
        path,
        cfg,
        prepared,
        device,
        model,
        loaded,
    } = load_saved_run(&a.checkpoint, &a.placement)?;
    let test = ImageSet::new(prepared.test, prepared.normalizer, Augment::None);
    let e = train::evaluate(&model, &test, cfg.train.eval_batch_size, &device);
    let (loss, acc) = (e.loss, e.accuracy.unwrap_or(f64::NAN));
    println!(
        "{}: epoch {} (+{} samples), {} updates: test loss {:.4}, test accuracy {:.2}% on {} images",
        path.display(),
        loaded.state.position.epoch,
        loaded.state.position.offset,
        loaded.state.updates,
        loss,
        100.0 * acc,
        e.samples
    );
    Ok(())
}

fn cmd_schedule(a: ScheduleArgs) -> Result<()> {
    if let Some(dir) = &a.run {
        return print_realised_schedule(dir, a.json);
    }
    let mut cfg = match a.source.load()? {
        Some(c) => c,
        None => load_preset("mnist")?,
    };
    a.overrides.apply(&mut cfg)?;
    if let Some(k) = a.schedule {
        cfg.schedule = cfg.schedule.with_kind(k);
    }
    if let Some(m) = a.milestones {
        cfg.schedule.milestones = m;
    }
    if let Some(c) = a.max_batch_size {
        cfg.schedule.max_batch_size = Some(c);
    }
    let (n, note) = match a.dataset_size {
        Some(n) => (Samples(n), None),
        None => train::planned_train_size(&cfg)?,
    };
    let schedule = cfg
        .schedule
        .resolve(n)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let table = schedule.table();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&table)?);
    } else {
        let note = note.map_or(String::new(), |s| format!(" ({s})"));
        println!(
            "{} schedule, N = {n}{note}, {} epochs",
            cfg.schedule.kind,
            schedule.epochs()
        );
        println!("{table}");
    }
    Ok(())
}

/// `noisescale schedule --run DIR`: the phases the run in `DIR` realised so far, and for an
/// adaptive run the decisions that made them.
fn print_realised_schedule(dir: &Path, json: bool) -> Result<()> {
    let resolved: crate::config::Resolved = {
        let path = dir.join(run_dir::RESOLVED_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} does not hold a run (no {})",
                dir.display(),
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?
    };
    let records = crate::metrics::read_metrics(&dir.join(run_dir::METRICS_FILE))?;
    let table = crate::metrics::realised_table(&records, resolved.dataset_size);
    if json {
        println!("{}", serde_json::to_string_pretty(&table)?);
        return Ok(());
    }
    let cfg = &resolved.config;
    println!(
        "{}: {} schedule as realised, N = {}, {} of {} epochs",
        dir.display(),
        cfg.schedule.kind,
        resolved.dataset_size,
        records.len(),
        cfg.schedule.epochs
    );
    println!("{table}");
    let decisions = dir.join(run_dir::DECISIONS_FILE);
    if let Ok(text) = std::fs::read_to_string(&decisions) {
        println!("decisions ({}):", decisions.display());
        for line in text.lines() {
            let d: crate::schedule::adaptive::Decision = serde_json::from_str(line)
                .with_context(|| format!("reading {}", decisions.display()))?;
            println!("  {}", train::describe_decision(&d));
        }
    }
    Ok(())
}

fn cmd_report(a: ReportArgs) -> Result<()> {
    let mut runs = crate::report::load_runs(&a.dirs)?;
    let order: Vec<String> = ScheduleKind::ALL.iter().map(|k| k.to_string()).collect();
    let order: Vec<&str> = order.iter().map(String::as_str).collect();
    crate::report::order_groups(&mut runs, &order);
    let out = a.out.clone().unwrap_or_else(|| a.dirs[0].clone());
    std::fs::create_dir_all(&out)?;
    let files = crate::report::write_report(
        &runs,
        &out,
        &a.title,
        &crate::reproduce::environment_notes(),
    )?;
    print!(
        "{}",
        crate::report::markdown_table(&crate::report::summarize(&runs))
    );
    println!("report: {}", files.html.display());
    Ok(())
}

fn cmd_noise(a: NoiseArgs) -> Result<()> {
    let SavedRun {
        path,
        prepared,
        device,
        model,
        loaded,
        ..
    } = load_saved_run(&a.checkpoint, &a.placement)?;
    // Without augmentation: the noise scale of the training set as it is.
    let train_set = ImageSet::new(prepared.train, prepared.normalizer, Augment::None);
    let r = train::measure_noise_scale(
        &model,
        &train_set,
        a.batches,
        a.batch_size,
        a.pieces,
        a.seed,
        &device,
    )?;
    println!(
        "{}: epoch {} (+{} samples), {} updates\nB_simple = tr(Σ)/|G|² ≈ {:.1} ± {:.1} (tr(Σ) ≈ {:.4e}, |G|² ≈ {:.4e}) from {} batches of {} in {} pieces",
        path.display(),
        loaded.state.position.epoch,
        loaded.state.position.offset,
        loaded.state.updates,
        r.b_simple,
        r.b_simple_stderr,
        r.trace,
        r.grad_sq,
        a.batches,
        a.batch_size,
        a.pieces
    );
    let resolved = r.grad_sq > 0.0
        && r.b_simple_stderr.is_finite()
        && r.b_simple_stderr < 0.5 * r.b_simple.abs();
    if !resolved {
        println!(
            "|G|² is not resolved from the gradient noise here (B_simple is very large or undefined, typical near convergence): use more --batches or a larger --batch-size for a reading."
        );
    } else {
        println!(
            "Batches well below B_simple cut the updates needed almost in proportion; well above it they mostly spend more samples (McCandlish et al. 2018)."
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
