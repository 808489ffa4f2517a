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

mod eval;
mod measure;
mod prepare;
mod progress;
mod ranks;
mod step;

pub use eval::evaluate;
pub use measure::measure_noise_scale;
pub use prepare::{Prepared, prepare_data};
pub use progress::describe_decision;
pub use ranks::weights_checksum;
pub use step::{StepError, StepOutput, StepPlan, forward_backward};

use progress::{describe_epoch, progress_bar};
use ranks::{Agreed, all_reduce_update, average_running_stats, global_epoch_sums};

use crate::checkpoint::{self, CHECKPOINT_FILE, EpochAccumulator, TrainState};
use crate::config::Resolved;
use crate::data::{self, Loader, Shard};
use crate::dist::Communicator;
use crate::gns::StepNorms;
use crate::metrics::{self, EpochMetrics, RunSummary};
use crate::model::Model;
use crate::optim::Optimizer;
use crate::params::trainable_params;
use crate::run_dir::{self, RunInfo};
use crate::schedule::adaptive::{AdaptiveState, Observation};
use crate::units::{Epochs, Samples, Updates};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
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

/// Runs (or resumes) training as `resolved` says, writing into `opts.out`.
pub fn train(
    resolved: &Resolved,
    prepared: &Prepared,
    opts: &TrainOptions,
    comm: &dyn Communicator,
) -> Result<RunSummary> {
    crate::cpu::setup();
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
    let metrics_path = out.join(run_dir::METRICS_FILE);
    let n = resolved.dataset_size;
    let schedule = &resolved.schedule;
    let epochs = schedule.epochs().0;

    let train_set = &prepared.train;
    let mut model = cfg.model.init_seeded(
        train_set.image_shape(),
        train_set.num_classes,
        cfg.seed,
        &device,
    );
    let mut optim: Optimizer = cfg.optimizer.init();
    let mut state = TrainState::start();
    let mut records: Vec<EpochMetrics> = Vec::new();

    if opts.resume && ckpt_path.exists() {
        let (m, loaded) = checkpoint::load(&ckpt_path, model, &device)?;
        loaded.check_resume(&ckpt_path, resolved)?;
        model = m;
        optim.load_record(&loaded.optimizer, &device);
        state = loaded.state;
        if rank != 0 {
            // The checkpoint holds the partial-epoch sums of all ranks: rank 0 carries them.
            state.epoch.loss_sum = 0.0;
            state.epoch.correct = 0;
            state.epoch.count = 0;
        }
        // Lines up to the checkpoint are kept byte for byte; later ones are trained again.
        records = metrics::resume_metrics(&metrics_path, Epochs(state.position.epoch), leader)?;
    } else if leader {
        // A fresh run: stale metrics of an earlier run in the same directory would mislead.
        if metrics_path.exists() {
            std::fs::remove_file(&metrics_path)?;
        }
        std::fs::remove_file(out.join(run_dir::SUMMARY_FILE)).ok();
        // Nor may an old checkpoint be resumed under the new run's config (`--overwrite`).
        std::fs::remove_file(&ckpt_path).ok();
    }

    let controller = resolved.controller();
    if let Some(c) = &controller
        && state.adaptive.is_none()
    {
        state.adaptive = Some(c.start(schedule.batch_size(Epochs(0))));
    }
    if leader {
        write_run_files(resolved, opts, &model, &state)?;
    }

    let loader = Loader::new(
        train_set.clone(),
        prepared.normalizer.clone(),
        cfg.data.augment,
        cfg.seed,
        cfg.data.workers,
        Loader::DEFAULT_PREFETCH,
    );
    let session_start = Instant::now();
    let wall_base = state.wall_seconds;
    let micro_max = resolved.max_micro_batch;
    let every_updates = cfg.train.checkpoint_every_updates;
    let every_seconds = cfg.train.checkpoint_every_minutes * 60.0;
    let mut last_checkpoint = Instant::now();
    let measure = cfg.train.noise_scale;
    // Forcing two pieces when a share fits one micro-batch gives the estimator its second batch
    // size (on every `train.noise_scale_split_every`-th update); not with ordinary batch norm, whose
    // statistics would then change, and not over several ranks, which are pieces already.
    let plain_bn = cfg.model.has_batch_norm() && cfg.model.ghost_batch_size() == 0;
    let split_every = cfg.train.split_every(cfg.schedule.kind);
    let measure_pieces = if measure && world == 1 && !plain_bn {
        2
    } else {
        1
    };

    // ε, B and m at a point of the epoch: the schedule's, as the adaptive controller has set.
    let hyper_at = |e: Epochs, offset: u64, adaptive: &Option<AdaptiveState>| {
        let h = schedule.hyper(e, offset as f64 / n.0 as f64);
        adaptive.as_ref().map_or(h, |a| a.apply(h))
    };
    let shard = (world > 1).then_some(Shard {
        rank,
        world,
        quantum: cfg.model.ghost_batch_size().max(1),
    });

    while state.position.epoch < epochs {
        let epoch = state.position.epoch;
        let e = Epochs(epoch);
        let epoch_start = Instant::now();
        let acc_before = state.epoch.clone();
        let mut hyper = hyper_at(e, state.position.offset, &state.adaptive);
        let mut batch_size = hyper.batch_size;
        let bar = progress_bar(opts.verbose && leader, 0, epoch, epochs);
        let train_start = Instant::now();
        // One pass per batch size: a decision of the adaptive schedule within the epoch ends the
        // pass, and the next one continues from the same sample with the new B.
        'pass: while state.position.epoch == epoch {
            let batches = loader.epoch(epoch, batch_size, state.position.offset, shard);
            bar.inc_length(batches.len() as u64);
            for batch in batches {
                let global_len = (batch.end - batch.start) as usize;
                hyper = hyper_at(e, batch.start, &state.adaptive);
                let update = state.updates.0 + 1;
                let local = batch.len();
                let split_update = update.is_multiple_of(split_every);
                let mut plan = StepPlan {
                    max_micro_batch: micro_max,
                    min_pieces: if split_update { measure_pieces } else { 1 },
                    quantum: cfg.model.ghost_batch_size().max(1),
                    measure,
                    seed: cfg.seed,
                    update,
                    inject_nan: cfg.train.inject_nan_at_update == Some(update),
                };
                // Norms only where they give an estimate, and on the updates one process would
                // measure (split or in micro-batches anyway), so that the reading, and the adaptive
                // schedule's decisions, do not depend on the number of ranks.
                let local_pieces = batch.len().div_ceil(plan.piece_len(batch.len()));
                plan.measure = measure
                    && if world > 1 {
                        split_update || global_len > micro_max
                    } else {
                        local_pieces >= 2
                    };
                let step = forward_backward(&model, &batch, global_len, &plan, &device);
                let step = match step {
                    Ok(s) => s,
                    Err(StepError::NonFinite { loss }) => bail!(Diverged {
                        loss,
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
                    }),
                    Err(StepError::Other(e)) => {
                        return Err(e.context(format!("update {update}")));
                    }
                };
                let (batch_loss, batch_correct) = (step.loss_sum, step.correct);
                // This rank's noise-scale inputs: Σ (b_i/B)|g_i|² and the number of pieces.
                let (small, pieces) = step
                    .pieces
                    .iter()
                    .filter(|(len, norm)| *len > 0 && norm.is_finite())
                    .fold((0.0f64, 0.0f64), |(s, k), (len, norm)| {
                        (s + *len as f64 / global_len as f64 * norm, k + 1.0)
                    });
                // A mid-epoch checkpoint every K updates or T minutes; under MPI the time-based
                // wish of any rank counts (it rides in the all-reduce), so all ranks agree.
                let due_local = (every_updates > 0 && update.is_multiple_of(every_updates))
                    || (every_seconds > 0.0
                        && last_checkpoint.elapsed().as_secs_f64() >= every_seconds);
                // The stop request and the noise-scale sums ride along with the gradients: all
                // ranks stop after the same update when any of them was signalled, and all see
                // the same noise-scale measurement.
                let local_agreed = Agreed {
                    stop: INTERRUPTED.load(Ordering::SeqCst),
                    due: due_local,
                    small,
                    pieces,
                };
                let (
                    grads,
                    Agreed {
                        stop,
                        due,
                        small,
                        pieces,
                    },
                ) = if world > 1 {
                    all_reduce_update(step.grads, local_agreed, comm, &mut state.epoch)?
                } else {
                    (step.grads, local_agreed)
                };
                if plan.measure && pieces >= 2.0 {
                    let norms = StepNorms {
                        small,
                        pieces,
                        big: grads.sq_norm(),
                        batch: global_len as f64,
                    };
                    state.gns.add(norms);
                    if let Some(a) = state.adaptive.as_mut() {
                        a.window.add(norms);
                    }
                }
                model = optim.step(model, grads, hyper);
                state.updates = Updates(update);
                state.samples += Samples(global_len as u64);
                state.epoch.loss_sum += batch_loss;
                state.epoch.correct += batch_correct;
                state.epoch.count += local as u64;
                state.position = batch.position_after(n.0);
                bar.inc(1);
                bar.set_message(format!("loss {:.4}", batch_loss / local.max(1) as f64));
                // Every K updates, the adaptive schedule may change B from the next batch on (at the
                // epoch's last update, the epoch-end decision below does it).
                let mut changed = false;
                if let (Some(c), Some(a)) = (&controller, state.adaptive.as_mut())
                    && state.position.epoch == epoch
                    && c.due(update, false)
                    && let Some(d) = c.decide(a, observation(&state.position, update))
                {
                    changed = true;
                    if leader {
                        write_decisions(out, a)?;
                        if opts.verbose {
                            bar.suspend(|| eprintln!("{}", describe_decision(&d)));
                        }
                    }
                }
                if (stop || due) && state.position.epoch == epoch {
                    // Mid-epoch: the sampler position, the partial-epoch sums of all ranks and the
                    // estimator make the checkpoint a complete description of the run.
                    let mut saved = state.clone();
                    saved.epoch = global_epoch_sums(&state.epoch, comm)?;
                    saved.epoch.train_seconds =
                        acc_before.train_seconds + train_start.elapsed().as_secs_f64();
                    saved.wall_seconds = wall_base + session_start.elapsed().as_secs_f64();
                    model = average_running_stats(model, comm)?;
                    if leader {
                        checkpoint::save(&ckpt_path, &model, &optim.to_record(), &saved, resolved)?;
                    }
                    last_checkpoint = Instant::now();
                    if stop {
                        bar.finish_and_clear();
                        bail!(Interrupted {
                            epoch,
                            updates: state.updates.0,
                            out: out.display().to_string(),
                        });
                    }
                }
                if changed {
                    batch_size = hyper_at(e, state.position.offset, &state.adaptive).batch_size;
                    continue 'pass;
                }
            }
        }
        bar.finish_and_clear();
        let train_seconds = acc_before.train_seconds + train_start.elapsed().as_secs_f64();

        // Epoch totals over all ranks.
        let totals = global_epoch_sums(&state.epoch, comm)?;
        let (loss_sum, correct, count) =
            (totals.loss_sum, totals.correct as f64, totals.count as f64);
        model = average_running_stats(model, comm)?;
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
        // The noise scale of the epoch's last batch (warm-up aside).
        let lr_factor = state.adaptive.as_ref().map_or(1.0, |a| a.lr_factor);
        let g = crate::noise::noise_scale(
            schedule.phase(e).lr * lr_factor,
            n,
            batch_size,
            hyper.momentum,
        );
        let epoch_samples = n.0 as f64;
        let gns_reading = state.gns.finish_epoch();
        let record = EpochMetrics {
            epoch: Epochs(epoch + 1),
            updates: state.updates,
            samples: state.samples,
            lr: hyper.lr,
            batch_size,
            momentum: hyper.momentum,
            noise_scale: g,
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
            gns: metrics::GnsMetrics::from_reading(gns_reading),
        };
        state.epoch = EpochAccumulator::default();
        state.wall_seconds = record.wall_seconds;
        // At the end of the epoch (the default), the adaptive schedule sets the next epoch's B.
        let mut decision = None;
        if let (Some(c), Some(a)) = (&controller, state.adaptive.as_mut())
            && c.due(state.updates.0, true)
            && epoch + 1 < epochs
        {
            decision = c.decide(a, observation(&state.position, state.updates.0));
        }
        if leader {
            if let (Some(_), Some(a)) = (decision, &state.adaptive) {
                write_decisions(out, a)?;
            }
            metrics::append_metrics(&metrics_path, &record)?;
            let every = cfg.train.checkpoint_every;
            if (every > 0 && (epoch + 1).is_multiple_of(every)) || epoch + 1 == epochs {
                checkpoint::save(&ckpt_path, &model, &optim.to_record(), &state, resolved)?;
                last_checkpoint = Instant::now();
            }
            if opts.verbose {
                eprintln!("{}", describe_epoch(&record, epochs));
                if let Some(d) = &decision {
                    eprintln!("{}", describe_decision(d));
                }
            }
        }
        records.push(record);
    }
    if leader && controller.is_some() {
        // The phases the adaptive schedule realised, in the format of the planned tables.
        checkpoint::write_atomic(
            &out.join(run_dir::SCHEDULE_FILE),
            serde_json::to_string_pretty(&metrics::realised_table(&records, n))?.as_bytes(),
        )?;
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
            &out.join(run_dir::SUMMARY_FILE),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
    }
    Ok(summary)
}

/// The run directory's description of the run, written by the leader before the first update
/// (and again on resume): `config.toml`, `resolved.json`, the planned `schedule.json`,
/// `run.json`, the adaptive schedule's decisions so far; and, in a verbose run, one line saying
/// what runs where.
fn write_run_files(
    resolved: &Resolved,
    opts: &TrainOptions,
    model: &Model,
    state: &TrainState,
) -> Result<()> {
    let (cfg, out, schedule) = (&resolved.config, &opts.out, &resolved.schedule);
    let (n, epochs) = (resolved.dataset_size, schedule.epochs().0);
    if let Some(a) = &state.adaptive {
        // Decisions after the checkpoint are made again, identically.
        write_decisions(out, a)?;
    }
    checkpoint::write_atomic(&out.join(run_dir::CONFIG_FILE), cfg.to_toml().as_bytes())?;
    // What the config resolved to on this data and these workers: N, the schedule's
    // phases, the micro-batch and the world size.
    checkpoint::write_atomic(
        &out.join(run_dir::RESOLVED_FILE),
        serde_json::to_string_pretty(resolved)?.as_bytes(),
    )?;
    checkpoint::write_atomic(
        &out.join(run_dir::SCHEDULE_FILE),
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
        normalization: resolved.describe_normalization(),
    };
    if let Some(w) = resolved.normalization_warning() {
        eprintln!("warning: {w}");
    }
    checkpoint::write_atomic(
        &out.join(run_dir::RUN_INFO_FILE),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    if opts.verbose {
        eprintln!(
            "{}: {} ({} parameters) on {} · N = {} · {} epochs · {}{}",
            cfg.label(),
            cfg.model.name(),
            trainable_params(model),
            cfg.device,
            n,
            epochs,
            resolved.describe_plan(),
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
    Ok(())
}

/// Where the run stands, for the adaptive controller's log.
fn observation(position: &data::Position, update: u64) -> Observation {
    Observation {
        epoch: position.epoch,
        offset: position.offset,
        update,
    }
}

/// Rewrites the adaptive schedule's decision log (small: one line per change).
fn write_decisions(out: &Path, state: &AdaptiveState) -> Result<()> {
    let mut text = String::new();
    for d in &state.decisions {
        text.push_str(&serde_json::to_string(d)?);
        text.push('\n');
    }
    checkpoint::write_atomic(&out.join(run_dir::DECISIONS_FILE), text.as_bytes())
}

/// Path of the checkpoint in a run directory.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join(CHECKPOINT_FILE)
}
