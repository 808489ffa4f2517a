//! The schedule-driven trainer.
//!
//! Each epoch reads its batch size from the schedule and each update its ε and m (ε may move
//! within an epoch only during warm-up). A global batch of B samples is split over the workers
//! (B/W each) and, on each worker, into micro-batches of at most `max_micro_batch`; their
//! gradients are summed with weights `len/B`, which is the gradient of the mean loss over the
//! whole batch, so B = 16,000 trains in the memory of the micro-batch. One optimiser step per
//! global batch: the update count is exact and equals the schedule's.
//!
//! Determinism: weights are initialised from the seed; sample order from `(seed, epoch)`;
//! augmentation from `(seed, epoch, index)`; the backend's random stream (dropout) is reseeded
//! from `(seed, update, micro-batch)` before every forward pass. A checkpoint therefore
//! determines the rest of the run, and a resumed run writes the same metrics, bit for bit on
//! CPU, as one never interrupted.

use crate::checkpoint::{self, CHECKPOINT_FILE, EpochAccumulator, TrainState};
use crate::config::{Resolved, RunConfig};
use crate::data::{self, Dataset, DatasetKind, Loader, Normalizer, Split};
use crate::dist::Communicator;
use crate::metrics::{self, EpochMetrics, RunSummary};
use crate::model::Model;
use crate::optim::{Optimizer, StepHyper};
use crate::params::{Grads, named_tensors, trainable_params};
use crate::report::RunInfo;
use crate::units::{Epochs, Samples, Updates};
use anyhow::{Context, Result, bail};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Set by the Ctrl-C handler; the trainer checkpoints and stops after the current update.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The error of a run stopped by Ctrl-C after checkpointing (exit code 130).
#[derive(Debug, thiserror::Error)]
#[error(
    "interrupted at epoch {epoch}, update {updates}: checkpoint written; resume with `noisescale train --resume {out}`"
)]
pub struct Interrupted {
    /// Epoch index in progress.
    pub epoch: u32,
    /// Updates done.
    pub updates: u64,
    /// Run directory.
    pub out: String,
}

/// The error of a diverged run (NaN or infinite loss).
#[derive(Debug, thiserror::Error)]
#[error(
    "training diverged: the loss is {loss} at epoch {epoch}, update {update} (ε = {lr}, B = {batch_size}, m = {momentum}); {checkpoint}"
)]
pub struct Diverged {
    /// The non-finite loss.
    pub loss: f64,
    /// Epoch index.
    pub epoch: u32,
    /// Update being computed (1-based).
    pub update: u64,
    /// Learning rate in force.
    pub lr: f64,
    /// Batch size in force.
    pub batch_size: usize,
    /// Momentum in force.
    pub momentum: f64,
    /// Where the last good checkpoint is.
    pub checkpoint: String,
}

/// How to run: where to write, whether to resume, how to talk.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Run directory (metrics, checkpoint, config, summary).
    pub out: PathBuf,
    /// Continue from `out/checkpoint.safetensors` if present.
    pub resume: bool,
    /// Start afresh even if `out` holds a started or finished run (else that is an error).
    pub overwrite: bool,
    /// Group label for reports (default: the run's label).
    pub group: Option<String>,
    /// Print per-epoch lines and the progress bar.
    pub verbose: bool,
}

/// Training and test data prepared for a run.
pub struct Prepared {
    /// Training set.
    pub train: Arc<Dataset>,
    /// Test set.
    pub test: Dataset,
    /// Per-channel normalisation from the training set.
    pub normalizer: Normalizer,
}

fn take_first(ds: &mut Dataset, n: usize) {
    if n > 0 && n < ds.len() {
        let img = ds.image_len();
        ds.images.truncate(n * img);
        ds.labels.truncate(n);
    }
}

/// Loads the data set a config names (`data_dir` overrides `data.dir`), applying the subsets.
pub fn prepare_data(config: &RunConfig) -> Result<Prepared> {
    let d = &config.data;
    let Split {
        mut train,
        mut test,
    } = match d.dataset {
        DatasetKind::Synthetic => {
            let s = &d.synthetic;
            let [c, h, w] = s.shape;
            data::synthetic(s.train, s.test, s.classes, c, h, w, config.seed)
        }
        kind => data::load(kind, &d.dir)
            .with_context(|| format!("loading {kind} from {}", d.dir.display()))?,
    };
    take_first(&mut train, d.train_subset);
    take_first(&mut test, d.test_subset);
    let normalizer = Normalizer::from_dataset(&train);
    Ok(Prepared {
        train: Arc::new(train),
        test,
        normalizer,
    })
}

/// Loss and accuracy of `model` on `data` (no gradients, running statistics for batch norm).
pub fn evaluate(
    model: &Model,
    data: &Dataset,
    normalizer: &Normalizer,
    batch_size: usize,
    device: &Device,
) -> (f64, f64) {
    let model = burn::module::Module::valid(model);
    let device = device.clone().without_autodiff();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (mut loss_sum, mut correct, mut count) = (0.0f64, 0u64, 0u64);
    for batch in data::eval_batches(data, normalizer, batch_size) {
        let (x, y) = to_tensors(&batch.images, &batch.labels, batch.shape, &device);
        let logits = model.forward(x);
        let n = batch.len();
        loss_sum += loss_fn
            .forward(logits.clone(), y.clone())
            .into_scalar::<f32>() as f64
            * n as f64;
        correct += accuracy_count(logits, y);
        count += n as u64;
    }
    (loss_sum / count as f64, correct as f64 / count as f64)
}

fn to_tensors(
    images: &[f32],
    labels: &[u8],
    shape: [usize; 4],
    device: &Device,
) -> (Tensor<4>, Tensor<1, Int>) {
    let x = Tensor::<4>::from_data(TensorData::new(images.to_vec(), shape), device);
    let y: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(y, [labels.len()]), device);
    (x, y)
}

fn accuracy_count(logits: Tensor<2>, y: Tensor<1, Int>) -> u64 {
    let pred = logits.argmax(1).flatten::<1>(0, 1);
    pred.equal(y).int().sum().into_scalar::<i64>() as u64
}

/// A 64-bit FNV-1a checksum of the trainable weights, to check ranks agree.
pub fn weights_checksum(model: &Model) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for t in named_tensors(model).into_iter().filter(|t| t.trainable) {
        for x in t.value.into_data().iter::<f32>() {
            for b in x.to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
        }
    }
    h
}

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 of a combination: distinct (seed, update, micro) give unrelated seeds.
    let mut z = a ^ b.wrapping_mul(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

/// Runs (or resumes) training as `resolved` says, writing into `opts.out`.
pub fn train(
    resolved: &Resolved,
    prepared: &Prepared,
    opts: &TrainOptions,
    comm: &dyn Communicator,
) -> Result<RunSummary> {
    let cfg = &resolved.config;
    let rank = comm.rank();
    let world = comm.world_size();
    let leader = rank == 0;
    let device = crate::device::device(crate::device::parse(&cfg.device)?)?;
    let out = &opts.out;
    // Rank 0 writes the run directory, under its exclusive lock (held until the run returns).
    let _lock = if leader {
        Some(crate::run_dir::open_for_training(
            out,
            opts.resume,
            opts.overwrite,
            opts.verbose,
        )?)
    } else {
        None
    };
    comm.barrier()?;
    let ckpt_path = out.join(CHECKPOINT_FILE);
    let metrics_path = out.join("metrics.jsonl");
    let n = resolved.dataset_size;
    let schedule = &resolved.schedule;
    let epochs = schedule.epochs().0;

    device.seed(cfg.seed);
    let train_set = &prepared.train;
    let mut model = cfg
        .model
        .init(train_set.image_shape(), train_set.num_classes, &device);
    let mut optim: Optimizer = cfg.optimizer.init();
    let mut state = TrainState::start();
    let mut records: Vec<EpochMetrics> = Vec::new();

    if opts.resume && ckpt_path.exists() {
        let (m, loaded) = checkpoint::load(&ckpt_path, model, &device)?;
        loaded.check_resume(&ckpt_path, resolved)?;
        model = m;
        optim.load_record(&loaded.optimizer, &device);
        state = loaded.state;
        // Lines up to the checkpoint are kept byte for byte; later ones are trained again.
        records = metrics::resume_metrics(&metrics_path, Epochs(state.position.epoch), leader)?;
    } else if leader {
        // A fresh run: stale metrics of an earlier run in the same directory would mislead.
        if metrics_path.exists() {
            std::fs::remove_file(&metrics_path)?;
        }
        std::fs::remove_file(out.join("summary.json")).ok();
        // Nor may an old checkpoint be resumed under the new run's config (`--overwrite`).
        std::fs::remove_file(&ckpt_path).ok();
    }

    if leader {
        checkpoint::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
        // What the config resolved to on this data and these workers: N, the schedule's
        // phases, the micro-batch and the world size.
        checkpoint::write_atomic(
            &out.join("resolved.json"),
            serde_json::to_string_pretty(resolved)?.as_bytes(),
        )?;
        checkpoint::write_atomic(
            &out.join("schedule.json"),
            serde_json::to_string_pretty(&schedule.table())?.as_bytes(),
        )?;
        let info = RunInfo {
            name: cfg.label(),
            group: opts.group.clone().unwrap_or_else(|| cfg.label()),
            seed: cfg.seed,
            schedule: cfg.schedule.kind.to_string(),
            optimizer: cfg.optimizer.kind.to_string(),
            model: cfg.model.name(),
            dataset: cfg.data.dataset.to_string(),
        };
        checkpoint::write_atomic(
            &out.join("run.json"),
            serde_json::to_string_pretty(&info)?.as_bytes(),
        )?;
        if opts.verbose {
            eprintln!(
                "{}: {} ({} parameters) on {} · N = {} · {} epochs · {} updates planned{}",
                cfg.label(),
                cfg.model.name(),
                trainable_params(&model),
                cfg.device,
                n,
                epochs,
                schedule.total_updates(),
                if state.position != data::Position::start_of(0) {
                    format!(
                        " · resuming at epoch {} (+{} samples), update {}",
                        state.position.epoch, state.position.offset, state.updates
                    )
                } else {
                    String::new()
                }
            );
        }
    }

    let loader = Loader::new(
        train_set.clone(),
        prepared.normalizer.clone(),
        cfg.data.augment,
        cfg.seed,
        cfg.data.workers,
        Loader::DEFAULT_PREFETCH,
    );
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let session_start = Instant::now();
    let wall_base = state.wall_seconds;
    let micro_max = resolved.max_micro_batch;

    while state.position.epoch < epochs {
        let epoch = state.position.epoch;
        let e = Epochs(epoch);
        let batch_size = schedule.batch_size(e);
        let epoch_start = Instant::now();
        let acc_before = state.epoch.clone();
        let shard = (world > 1).then_some((rank, world));
        let batches = loader.epoch(epoch, batch_size, state.position.offset, shard);
        let bar = progress_bar(opts.verbose && leader, batches.len() as u64, epoch, epochs);
        let mut hyper = schedule.hyper(e, state.position.offset as f64 / n.0 as f64);
        let train_start = Instant::now();
        for batch in batches {
            let global_len = (batch.end - batch.start) as usize;
            hyper = schedule.hyper(e, batch.start as f64 / n.0 as f64);
            let update = state.updates.0 + 1;
            let mut grads = Grads::default();
            let mut batch_loss = 0.0f64;
            let mut batch_correct = 0u64;
            let img = batch.shape[1] * batch.shape[2] * batch.shape[3];
            let local = batch.len();
            let mut start = 0;
            let mut micro = 0u64;
            while start < local {
                let len = micro_max.min(local - start);
                device.seed(mix(cfg.seed, mix(update, micro)));
                let (x, y) = to_tensors(
                    &batch.images[start * img..(start + len) * img],
                    &batch.labels[start..start + len],
                    [len, batch.shape[1], batch.shape[2], batch.shape[3]],
                    &device,
                );
                let logits = model.forward(x);
                let loss = loss_fn.forward(logits.clone(), y.clone());
                let mut loss_value = loss.clone().into_scalar::<f32>() as f64;
                if cfg.train.inject_nan_at_update == Some(update) {
                    loss_value = f64::NAN;
                }
                if !loss_value.is_finite() {
                    bail!(Diverged {
                        loss: loss_value,
                        epoch,
                        update,
                        lr: hyper.lr,
                        batch_size,
                        momentum: hyper.momentum,
                        checkpoint: if ckpt_path.exists() {
                            format!("the last good checkpoint is {}", ckpt_path.display())
                        } else {
                            "no checkpoint was written before it".into()
                        },
                    });
                }
                batch_loss += loss_value * len as f64;
                batch_correct += accuracy_count(logits.detach().inner(), y.inner());
                let g = Grads::from_backward(&model, &loss.backward());
                grads = grads.accumulate(g.scale(len as f64 / global_len as f64));
                start += len;
                micro += 1;
            }
            if world > 1 {
                let t = Instant::now();
                let mut flat = grads.to_flat();
                comm.all_reduce_sum(&mut flat)?;
                grads = grads.from_flat(&flat);
                state.epoch.allreduce_calls +=
                    flat.len().div_ceil(crate::dist::BUCKET_ELEMS) as u64;
                state.epoch.allreduce_bytes += (flat.len() * 4) as u64;
                state.epoch.comm_seconds += t.elapsed().as_secs_f64();
            }
            model = optim.step(
                model,
                grads,
                StepHyper {
                    lr: hyper.lr,
                    momentum: hyper.momentum,
                },
            );
            state.updates = Updates(update);
            state.samples += Samples(global_len as u64);
            state.epoch.loss_sum += batch_loss;
            state.epoch.correct += batch_correct;
            state.epoch.count += local as u64;
            state.position = batch.position_after(n.0);
            bar.inc(1);
            bar.set_message(format!("loss {:.4}", batch_loss / local.max(1) as f64));
            if INTERRUPTED.load(Ordering::SeqCst) && state.position.epoch == epoch {
                state.epoch.train_seconds =
                    acc_before.train_seconds + train_start.elapsed().as_secs_f64();
                state.wall_seconds = wall_base + session_start.elapsed().as_secs_f64();
                if leader {
                    checkpoint::save(&ckpt_path, &model, &optim.to_record(), &state, resolved)?;
                }
                bar.finish_and_clear();
                bail!(Interrupted {
                    epoch,
                    updates: state.updates.0,
                    out: out.display().to_string(),
                });
            }
        }
        bar.finish_and_clear();
        let train_seconds = acc_before.train_seconds + train_start.elapsed().as_secs_f64();

        // Epoch totals over all ranks.
        let mut sums = [
            state.epoch.loss_sum as f32,
            state.epoch.correct as f32,
            state.epoch.count as f32,
        ];
        let (loss_sum, correct, count) = if world > 1 {
            comm.all_reduce_sum(&mut sums)?;
            (sums[0] as f64, sums[1] as f64, sums[2] as f64)
        } else {
            (
                state.epoch.loss_sum,
                state.epoch.correct as f64,
                state.epoch.count as f64,
            )
        };
        if world > 1 {
            let sums = comm.all_gather_u64(weights_checksum(&model))?;
            if sums.iter().any(|&s| s != sums[0]) {
                bail!(
                    "weights differ between ranks after epoch {} (checksums {sums:x?}): the ranks have diverged",
                    epoch + 1
                );
            }
        }
        let (test_loss, test_accuracy) = if leader {
            evaluate(
                &model,
                &prepared.test,
                &prepared.normalizer,
                cfg.train.eval_batch_size,
                &device,
            )
        } else {
            (0.0, 0.0)
        };
        let g = schedule.noise_scale(e);
        let epoch_samples = n.0 as f64;
        let record = EpochMetrics {
            epoch: Epochs(epoch + 1),
            updates: state.updates,
            samples: state.samples,
            lr: hyper.lr,
            batch_size,
            momentum: hyper.momentum,
            noise_scale: g.exact,
            train_loss: loss_sum / count,
            train_accuracy: correct / count,
            test_loss,
            test_accuracy,
            world_size: world,
            allreduce_calls: state.epoch.allreduce_calls,
            allreduce_bytes: state.epoch.allreduce_bytes,
            wall_seconds: wall_base + session_start.elapsed().as_secs_f64(),
            epoch_seconds: epoch_start.elapsed().as_secs_f64() + (acc_before.train_seconds),
            samples_per_second: epoch_samples / train_seconds.max(1e-9),
            comm_seconds: state.epoch.comm_seconds,
            peak_memory_bytes: metrics::peak_memory_bytes(),
        };
        state.epoch = EpochAccumulator::default();
        state.wall_seconds = record.wall_seconds;
        if leader {
            metrics::append_metrics(&metrics_path, &record)?;
            let every = cfg.train.checkpoint_every;
            if (every > 0 && (epoch + 1).is_multiple_of(every)) || epoch + 1 == epochs {
                checkpoint::save(&ckpt_path, &model, &optim.to_record(), &state, resolved)?;
            }
            if opts.verbose {
                eprintln!(
                    "epoch {:>3}/{epochs}  updates {:>6}  B {:>5}  ε {:.4}  m {:.3}  g {:>9.2}  train loss {:.4} acc {:.2}%  test loss {:.4} acc {:.2}%  {:.1}s  {:.0} samples/s",
                    epoch + 1,
                    record.updates,
                    batch_size,
                    record.lr,
                    record.momentum,
                    record.noise_scale,
                    record.train_loss,
                    100.0 * record.train_accuracy,
                    record.test_loss,
                    100.0 * record.test_accuracy,
                    record.epoch_seconds,
                    record.samples_per_second,
                );
            }
        }
        records.push(record);
    }

    let summary = RunSummary::from_metrics(
        &cfg.label(),
        &cfg.schedule.kind.to_string(),
        &cfg.optimizer.kind.to_string(),
        &cfg.model.name(),
        cfg.seed,
        &records,
    )
    .context("the run has no epochs")?;
    if leader {
        checkpoint::write_atomic(
            &out.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
    }
    Ok(summary)
}

fn progress_bar(visible: bool, len: u64, epoch: u32, epochs: u32) -> indicatif::ProgressBar {
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

/// Path of the checkpoint in a run directory.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join(CHECKPOINT_FILE)
}
