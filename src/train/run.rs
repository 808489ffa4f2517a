//! One training run in progress: what it trains with (device, optimiser, loader), where it stands
//! ([`TrainState`]), and the update that moves it on. [`train`](super::train) drives it; the end of
//! an epoch is in `epoch.rs`.

use super::files::write_run_files;
use super::{Interrupted, TrainOptions};
use crate::checkpoint::{self, CHECKPOINT_FILE};
use crate::config::Resolved;
use crate::data::{self, EpochIter, EvalSet, Loader, Shard, Share, TrainSet};
use crate::dist::Communicator;
use crate::learner::{BatchCoupling, TrainStep, Trainable};
use crate::metrics::{self, EpochMetrics, RunSummary};
use crate::optim::Optimizer;
use crate::run_dir::{self, RunLock};
use crate::schedule::Hyper;
use crate::schedule::adaptive::{Controller, Observation};
use crate::state::TrainState;
use crate::units::{Epoch, Epochs, Samples};
use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use std::path::PathBuf;
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
    /// The evaluation set of the evaluations within epochs (`train.eval_every`).
    pub(super) probe: &'a E,
    pub(super) opts: &'a TrainOptions,
    pub(super) comm: &'a dyn Communicator,
    pub(super) device: Device,
    pub(super) optim: Optimizer,
    pub(super) state: TrainState,
    /// The metrics of the epochs done, resumed ones included.
    pub(super) records: Vec<EpochMetrics>,
    pub(super) controller: Option<Controller>,
    pub(super) loader: Loader<T>,
    /// How the model's samples meet in batch statistics (its ghost batch size, or none).
    pub(super) coupling: BatchCoupling,
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
    pub(super) measure_pieces: usize,
    pub(super) split_every: u64,
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

        let model = crate::model::init_seeded(cfg.seed, &device, task.init);
        let coupling = model.batch_coupling();
        let mut optim: Optimizer = cfg.optimizer.init();
        let (model, mut state, records) =
            restore(resolved, opts, leader, model, &mut optim, &device)?;

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
        let measure_pieces =
            if cfg.train.noise_scale && world == 1 && coupling != BatchCoupling::Whole {
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
            probe: task.probe.unwrap_or(task.eval),
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
        let h = self.resolved.schedule.hyper_at(e, offset);
        self.state.adaptive.as_ref().map_or(h, |a| a.apply(h))
    }

    /// How the run's loss reads: per token for a token stream; else a classifier's, or a
    /// regression's where there is no accuracy.
    pub(super) fn loss_kind(&self) -> super::progress::LossKind {
        use super::progress::LossKind;
        if self.resolved.config.data.dataset == crate::data::DatasetKind::Tokens {
            LossKind::Tokens
        } else {
            LossKind::Classification
        }
    }

    /// The global sample the run stands at (counted from the start of training).
    pub(super) fn global_position(&self) -> u64 {
        let p = self.state.position;
        u64::from(p.epoch) * self.resolved.dataset_size.0 + p.offset
    }

    /// The batches of a pass over the rest of `epoch`, or up to the schedule's next change of
    /// B within it, at the batch size in force (this rank's share of each).
    pub(super) fn batches(&self, epoch: &mut CurrentEpoch) -> EpochIter<T> {
        let offset = self.state.position.offset;
        epoch.batch_size = self.hyper_at(epoch.index, offset).batch_size;
        let schedule = &self.resolved.schedule;
        let epoch_start = u64::from(epoch.index.0) * self.resolved.dataset_size.0;
        let end = schedule.pass_end(Samples(self.global_position())).0 - epoch_start;
        let batches =
            self.loader
                .epoch_until(epoch.index.0, epoch.batch_size, offset..end, self.shard);
        epoch.bar.inc_length(batches.len() as u64);
        batches
    }

    /// The error of a run stopped by Ctrl-C, once its checkpoint is written.
    pub(super) fn interrupted(&self) -> Interrupted {
        Interrupted {
            epoch: self.state.position.epoch,
            updates: self.state.updates.0,
            out: self.opts.out.display().to_string(),
        }
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

/// Where a run starts: on resume, the model, optimiser and state from its checkpoint and the
/// metrics up to it; otherwise (rank 0) a fresh start that removes an earlier run's files.
fn restore<M: Module>(
    resolved: &Resolved,
    opts: &TrainOptions,
    leader: bool,
    model: M,
    optim: &mut Optimizer,
    device: &Device,
) -> Result<(M, TrainState, Vec<EpochMetrics>)> {
    let out = &opts.out;
    let (ckpt_path, metrics_path) = (out.join(CHECKPOINT_FILE), out.join(run_dir::METRICS_FILE));
    if opts.resume && ckpt_path.exists() {
        let (model, loaded) = checkpoint::load(&ckpt_path, model, device)?;
        loaded.check_resume(&ckpt_path, resolved)?;
        optim.load_record(&loaded.optimizer, device);
        let mut state = loaded.state;
        if !leader {
            // The checkpoint holds the partial-epoch sums of all ranks: rank 0 carries them.
            state.epoch.loss_sum = 0.0;
            state.epoch.correct = 0;
            state.epoch.count = 0;
        }
        // Lines up to the checkpoint are kept byte for byte; later ones are trained again.
        let records = metrics::resume_metrics(&metrics_path, Epochs(state.position.epoch), leader)?;
        return Ok((model, state, records));
    }
    if leader {
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
    Ok((model, TrainState::start(), Vec::new()))
}

/// Where the run stands, for the adaptive controller's log.
pub(super) fn observation(position: &data::Position, update: u64) -> Observation {
    Observation {
        epoch: position.epoch,
        offset: position.offset,
        update,
    }
}
