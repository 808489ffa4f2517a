//! One training run in progress: what it trains with (device, optimiser, loader), where it stands
//! ([`TrainState`]), and the update that moves it on. [`train`](super::train) drives it; the end of
//! an epoch is in `epoch.rs`.

use super::files::{write_decisions, write_run_files};
use super::progress::describe_decision;
use super::ranks::{Agreed, all_reduce_update, average_running_stats, global_epoch_sums};
use super::step::{StepError, StepPlan, forward_backward};
use super::trace::Before;
use super::{Diverged, INTERRUPTED, Interrupted, TrainOptions};
use crate::checkpoint::{self, CHECKPOINT_FILE, TrainState};
use crate::config::Resolved;
use crate::data::{self, Batch, EpochIter, EvalSet, Loader, Shard, Share, TrainSet};
use crate::dist::Communicator;
use crate::gns::StepNorms;
use crate::learner::{BatchCoupling, TrainStep, Trainable};
use crate::metrics::{self, EpochMetrics, RunSummary};
use crate::optim::Optimizer;
use crate::run_dir::{self, RunLock};
use crate::schedule::Hyper;
use crate::schedule::adaptive::{Controller, Observation};
use crate::units::{Epoch, Epochs, Samples, Updates};
use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What the loop does after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// Go on with the next batch of the pass.
    Continue,
    /// The adaptive schedule changed B: start a new pass of the epoch from the current sample.
    NewBatchSize,
}

/// The epoch being trained.
pub(super) struct CurrentEpoch {
    pub(super) index: Epoch,
    /// ε, B and m of the last update (the record's).
    pub(super) hyper: Hyper,
    /// The batch size of the current pass (the adaptive schedule may change it mid-epoch).
    pub(super) batch_size: usize,
    pub(super) bar: indicatif::ProgressBar,
    /// Ctrl-C arrived during the epoch's last update: stop once the epoch is recorded.
    pub(super) stop: bool,
    pub(super) started: Instant,
    pub(super) train_started: Instant,
    /// Training seconds of this epoch before a resume.
    pub(super) resumed_train_seconds: f64,
}

impl CurrentEpoch {
    /// Seconds of training in this epoch so far, before a resume included.
    pub(super) fn train_seconds(&self) -> f64 {
        self.resumed_train_seconds + self.train_started.elapsed().as_secs_f64()
    }
}

/// A run between its updates.
pub(super) struct Run<'a, M, T: TrainSet, E> {
    pub(super) resolved: &'a Resolved,
    /// The evaluation set.
    pub(super) eval: &'a E,
    pub(super) opts: &'a TrainOptions,
    pub(super) comm: &'a dyn Communicator,
    pub(super) device: Device,
    pub(super) optim: Optimizer,
    pub(super) state: TrainState,
    /// The metrics of the epochs done, resumed ones included.
    pub(super) records: Vec<EpochMetrics>,
    pub(super) controller: Option<Controller>,
    loader: Loader<T>,
    /// How the model's samples meet in batch statistics (its ghost batch size, or none).
    coupling: BatchCoupling,
    /// Whether the model's steps count correct predictions (a classifier): seen on this
    /// session's steps.
    pub(super) classifies: bool,
    pub(super) ckpt_path: PathBuf,
    pub(super) metrics_path: PathBuf,
    session_start: Instant,
    /// Wall seconds of earlier sessions of this run.
    wall_base: f64,
    pub(super) last_checkpoint: Instant,
    /// Pieces a share is split into on the updates that measure the noise scale (see `start`).
    measure_pieces: usize,
    split_every: u64,
    shard: Option<Shard>,
    /// Rank 0's exclusive hold on the run directory, released when the run is dropped.
    _lock: Option<RunLock>,
    _model: std::marker::PhantomData<fn() -> M>,
}

impl<'a, M, T, E> Run<'a, M, T, E>
where
    M: Trainable,
    T: TrainSet<Share: Share<Input = <M as TrainStep>::Input>>,
    E: EvalSet<Input = <M as TrainStep>::Input>,
{
    /// Sets a run up, or resumes it from its checkpoint, and writes its run files (rank 0).
    /// `init` builds the model on a device (its initial parameters are drawn from the run's
    /// seed). Returns the run and its model.
    pub(super) fn start(
        resolved: &'a Resolved,
        task: super::Task<'a, M, T, E>,
        opts: &'a TrainOptions,
        comm: &'a dyn Communicator,
    ) -> Result<(Self, M)> {
        let cfg = &resolved.config;
        let (rank, world) = (comm.rank(), comm.world_size());
        let leader = rank == 0;
        let device = crate::device::device(crate::device::parse(&cfg.device)?)?;
        let out = &opts.out;
        let lock = if leader {
            Some(run_dir::open_for_training(
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

        let mut model = crate::model::init_seeded(cfg.seed, &device, task.init);
        let coupling = model.batch_coupling();
        let mut optim: Optimizer = cfg.optimizer.init();
        let mut state = TrainState::start();
        let mut records = Vec::new();
        if opts.resume && ckpt_path.exists() {
            let (m, loaded) = checkpoint::load(&ckpt_path, model, &device)?;
            loaded.check_resume(&ckpt_path, resolved)?;
            model = m;
            optim.load_record(&loaded.optimizer, &device);
            state = loaded.state;
            if !leader {
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
            // Nor may an old checkpoint be resumed under the new run's config (`--overwrite`),
            // nor an old run's traces be replayed as this one's.
            std::fs::remove_file(&ckpt_path).ok();
            std::fs::remove_dir_all(out.join(super::TRACE_DIR)).ok();
        }

        let controller = resolved.controller();
        if let Some(c) = &controller
            && state.adaptive.is_none()
        {
            state.adaptive = Some(c.start(resolved.schedule.batch_size(Epoch(0))));
        }
        if leader {
            write_run_files(resolved, opts, &model, &state)?;
        }

        let loader = Loader::over(
            task.train,
            cfg.seed,
            cfg.data.workers,
            Loader::DEFAULT_PREFETCH,
        );
        // Forcing two pieces when a share fits one micro-batch gives the estimator its second
        // batch size (on every `train.noise_scale_split_every`-th update); not with ordinary batch
        // norm, whose statistics would then change, and not over several ranks, which are pieces
        // already.
        let plain_bn = coupling == BatchCoupling::Whole;
        let measure_pieces = if cfg.train.noise_scale && world == 1 && !plain_bn {
            2
        } else {
            1
        };
        let shard = (world > 1).then_some(Shard {
            rank,
            world,
            quantum: coupling.quantum(),
        });
        let run = Run {
            resolved,
            eval: task.eval,
            coupling,
            classifies: false,
            opts,
            comm,
            device,
            optim,
            wall_base: state.wall_seconds,
            state,
            records,
            controller,
            loader,
            ckpt_path,
            metrics_path,
            session_start: Instant::now(),
            last_checkpoint: Instant::now(),
            measure_pieces,
            split_every: cfg.train.split_every(cfg.schedule.kind),
            shard,
            _lock: lock,
            _model: std::marker::PhantomData,
        };
        Ok((run, model))
    }

    pub(super) fn leader(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Epochs the schedule runs.
    pub(super) fn epochs(&self) -> u32 {
        self.resolved.schedule.epochs().0
    }

    /// Wall seconds of the run so far, earlier sessions included.
    pub(super) fn wall_seconds(&self) -> f64 {
        self.wall_base + self.session_start.elapsed().as_secs_f64()
    }

    /// ε, B and m at `offset` samples into epoch `e`: the schedule's, as the adaptive controller
    /// has set them.
    pub(super) fn hyper_at(&self, e: Epoch, offset: u64) -> Hyper {
        let n = self.resolved.dataset_size;
        let h = self.resolved.schedule.hyper(e, offset as f64 / n.0 as f64);
        self.state.adaptive.as_ref().map_or(h, |a| a.apply(h))
    }

    /// The batches of a pass over the rest of `epoch` at its current batch size (this rank's
    /// share of each).
    pub(super) fn batches(&self, epoch: &CurrentEpoch) -> EpochIter<T> {
        let batches = self.loader.epoch(
            epoch.index.0,
            epoch.batch_size,
            self.state.position.offset,
            self.shard,
        );
        epoch.bar.inc_length(batches.len() as u64);
        batches
    }

    /// One parameter update from one global batch (this rank's share `batch`): the weighted,
    /// all-reduced gradient, the noise-scale reading, the optimiser step, the adaptive schedule's
    /// decision and a mid-epoch checkpoint when one is due or Ctrl-C asked for it.
    pub(super) fn update(
        &mut self,
        model: M,
        batch: Batch<T::Share>,
        epoch: &mut CurrentEpoch,
    ) -> Result<(M, Flow)> {
        let cfg = &self.resolved.config;
        let micro_max = self.resolved.max_micro_batch;
        let measure = cfg.train.noise_scale;
        let world = self.comm.world_size();
        let global_len = (batch.end - batch.start) as usize;
        let hyper = self.hyper_at(epoch.index, batch.start);
        epoch.hyper = hyper;
        let update = self.state.updates.0 + 1;
        let split_update = update.is_multiple_of(self.split_every);
        let mut plan = StepPlan {
            max_micro_batch: micro_max,
            min_pieces: if split_update { self.measure_pieces } else { 1 },
            quantum: self.coupling.quantum(),
            measure,
            seed: cfg.seed,
            update,
            inject_nan: cfg.train.inject_nan_at_update == Some(update),
        };
        // Norms only where they give an estimate, and on the updates one process would measure
        // (split or in micro-batches anyway), so that the reading, and the adaptive schedule's
        // decisions, do not depend on the number of ranks.
        let local_pieces = batch.len().div_ceil(plan.piece_len(batch.len()));
        plan.measure = measure
            && if world > 1 {
                split_update || global_len > micro_max
            } else {
                local_pieces >= 2
            };
        let (local_len, position) = (
            batch.len(),
            batch.position_after(self.resolved.dataset_size.0),
        );
        let sampler = self.loader.sampler();
        let traced = Before::capture_if(cfg, update, &model, &self.optim, &batch, sampler);
        let step = match forward_backward(&model, batch.share, global_len, &plan, &self.device) {
            Ok(s) => s,
            Err(StepError::NonFinite { loss }) => bail!(Diverged {
                loss,
                epoch: epoch.index.0,
                update,
                lr: hyper.lr,
                batch_size: epoch.batch_size,
                momentum: hyper.momentum,
                checkpoint: if self.ckpt_path.exists() {
                    format!("the last good checkpoint is {}", self.ckpt_path.display())
                } else {
                    "no checkpoint was written before it".into()
                },
            }),
            Err(StepError::Other(e)) => return Err(e.context(format!("update {update}"))),
        };
        // This rank's noise-scale inputs: Σ (b_i/B)|g_i|² and the number of pieces.
        let (small, pieces) = step
            .pieces
            .iter()
            .filter(|(len, norm)| *len > 0 && norm.is_finite())
            .fold((0.0f64, 0.0f64), |(s, k), (len, norm)| {
                (s + *len as f64 / global_len as f64 * norm, k + 1.0)
            });
        // A mid-epoch checkpoint every K updates or T minutes; under MPI the time-based wish of
        // any rank counts (it rides in the all-reduce), so all ranks agree.
        let every_updates = cfg.train.checkpoint_every_updates;
        let every_seconds = cfg.train.checkpoint_every_minutes * 60.0;
        let due_local = (every_updates > 0 && update.is_multiple_of(every_updates))
            || (every_seconds > 0.0
                && self.last_checkpoint.elapsed().as_secs_f64() >= every_seconds);
        // The stop request and the noise-scale sums ride along with the gradients: all ranks stop
        // after the same update when any of them was signalled, and all see the same noise-scale
        // measurement.
        let local_agreed = Agreed {
            stop: INTERRUPTED.load(Ordering::SeqCst),
            due: due_local,
            small,
            pieces,
        };
        let (grads, agreed) = if world > 1 {
            all_reduce_update(step.grads, local_agreed, self.comm, &mut self.state.epoch)?
        } else {
            (step.grads, local_agreed)
        };
        if plan.measure && agreed.pieces >= 2.0 {
            let norms = StepNorms {
                small: agreed.small,
                pieces: agreed.pieces,
                big: grads.sq_norm(),
                batch: global_len as f64,
            };
            self.state.gns.add(norms);
            if let Some(a) = self.state.adaptive.as_mut() {
                a.window.add(norms);
            }
        }
        let traced = traced.map(|t| t.with_grads(&grads));
        let mut model = self.optim.step(model, grads, hyper);
        if let Some(t) = traced {
            let done = (step.pieces.as_slice(), step.loss_sum);
            t.write(
                &self.opts.out,
                cfg,
                update,
                hyper,
                done,
                &model,
                &self.optim,
            )
            .with_context(|| format!("tracing update {update}"))?;
        }
        let state = &mut self.state;
        state.updates = Updates(update);
        state.samples += Samples(global_len as u64);
        state.epoch.loss_sum += step.loss_sum;
        state.epoch.correct += step.correct.unwrap_or(0);
        // Every session steps before its first epoch end (a checkpoint is never taken at an
        // epoch's last update but after it), so this is known where the record needs it.
        self.classifies |= step.correct.is_some();
        state.epoch.count += local_len as u64;
        state.position = position;
        epoch.bar.inc(1);
        epoch.bar.set_message(format!(
            "loss {:.4}",
            step.loss_sum / local_len.max(1) as f64
        ));
        // Every K updates, the adaptive schedule may change B from the next batch on (at the
        // epoch's last update, the epoch-end decision does it).
        let mut flow = Flow::Continue;
        if let (Some(c), Some(a)) = (&self.controller, state.adaptive.as_mut())
            && state.position.epoch == epoch.index.0
            && c.due(update, false)
            && let Some(d) = c.decide(a, observation(&state.position, update))
        {
            flow = Flow::NewBatchSize;
            if self.comm.rank() == 0 {
                write_decisions(&self.opts.out, a)?;
                if self.opts.verbose {
                    epoch.bar.suspend(|| eprintln!("{}", describe_decision(&d)));
                }
            }
        }
        if self.state.position.epoch != epoch.index.0 {
            // The epoch's last update: its end checkpoints, and stops if asked to. (Checked
            // before the next update instead, a stop would never come where every epoch is one
            // update, B = N.)
            epoch.stop |= agreed.stop;
        } else if agreed.stop || agreed.due {
            model = self.checkpoint_mid_epoch(model, epoch)?;
            if agreed.stop {
                epoch.bar.finish_and_clear();
                bail!(self.interrupted());
            }
        }
        if flow == Flow::NewBatchSize {
            epoch.batch_size = self
                .hyper_at(epoch.index, self.state.position.offset)
                .batch_size;
        }
        Ok((model, flow))
    }

    /// The error of a run stopped by Ctrl-C, once its checkpoint is written.
    pub(super) fn interrupted(&self) -> Interrupted {
        Interrupted {
            epoch: self.state.position.epoch,
            updates: self.state.updates.0,
            out: self.opts.out.display().to_string(),
        }
    }

    /// A checkpoint within an epoch: the sampler position, the partial-epoch sums of all ranks
    /// and the estimator make it a complete description of the run.
    fn checkpoint_mid_epoch(&mut self, model: M, epoch: &CurrentEpoch) -> Result<M> {
        let mut saved = self.state.clone();
        saved.epoch = global_epoch_sums(&self.state.epoch, self.comm)?;
        saved.epoch.train_seconds = epoch.train_seconds();
        saved.wall_seconds = self.wall_seconds();
        let model = average_running_stats(model, self.comm)?;
        if self.leader() {
            checkpoint::save(
                &self.ckpt_path,
                &model,
                &self.optim.to_record(),
                &saved,
                self.resolved,
            )?;
        }
        self.last_checkpoint = Instant::now();
        Ok(model)
    }

    /// The end of the run: the schedule an adaptive run realised and the summary (rank 0).
    pub(super) fn finish(self) -> Result<RunSummary> {
        let (cfg, out) = (&self.resolved.config, &self.opts.out);
        if self.leader() && self.controller.is_some() {
            // The phases the adaptive schedule realised, in the format of the planned tables.
            let table = metrics::realised_table(&self.records, self.resolved.dataset_size);
            checkpoint::write_atomic(
                &out.join(run_dir::SCHEDULE_FILE),
                serde_json::to_string_pretty(&table)?.as_bytes(),
            )?;
        }
        let summary = RunSummary::from_metrics(
            &cfg.label(),
            &cfg.schedule.kind.to_string(),
            &cfg.optimizer.kind.to_string(),
            &cfg.model.name(),
            cfg.seed,
            &self.records,
        )
        .context("the run has no epochs")?;
        if self.leader() {
            checkpoint::write_atomic(
                &out.join(run_dir::SUMMARY_FILE),
                serde_json::to_string_pretty(&summary)?.as_bytes(),
            )?;
        }
        Ok(summary)
    }
}

/// Where the run stands, for the adaptive controller's log.
pub(super) fn observation(position: &data::Position, update: u64) -> Observation {
    Observation {
        epoch: position.epoch,
        offset: position.offset,
        update,
    }
}
