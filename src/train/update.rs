//! One parameter update of a run, in its parts: how the batch is cut ([`StepPlan`]), the step
//! (a NaN loss becomes [`Diverged`]), what the ranks agree on besides the gradient, the
//! noise-scale reading, the optimiser step and the counters, then the adaptive schedule's
//! decision and a checkpoint when one is due; the last two are shared with the epoch's end.

use super::files::write_decisions;
use super::progress::describe_decision;
use super::ranks::{Agreed, all_reduce_update, average_running_stats, global_epoch_sums};
use super::run::{CurrentEpoch, Flow, Run, observation};
use super::step::{StepError, StepOutput, StepPlan, forward_backward};
use super::trace::Before;
use super::{Diverged, INTERRUPTED};
use crate::checkpoint;
use crate::data::{Batch, EvalSet, Position, Share, TrainSet};
use crate::gns::StepNorms;
use crate::learner::{TrainStep, Trainable};
use crate::params::Grads;
use crate::schedule::Hyper;
use crate::schedule::adaptive::Decision;
use crate::state::TrainState;
use crate::units::{Samples, Updates};
use anyhow::{Context, Result, bail};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl<M, T, E> Run<'_, M, T, E>
where
    M: Trainable,
    T: TrainSet<Share: Share<Input = <M as TrainStep>::Input>>,
    E: EvalSet<Input = <M as TrainStep>::Input>,
{
    /// One parameter update from one global batch (this rank's share `batch`): the weighted,
    /// all-reduced gradient, the noise-scale reading, the optimiser step, the adaptive schedule's
    /// decision and a mid-epoch checkpoint when one is due or Ctrl-C asked for it.
    pub(super) fn update(
        &mut self,
        model: M,
        batch: Batch<T::Share>,
        epoch: &mut CurrentEpoch,
    ) -> Result<(M, Flow)> {
        let global_len = (batch.end - batch.start) as usize;
        let hyper = self.hyper_at(epoch.index, batch.start);
        epoch.hyper = hyper;
        let update = self.state.updates.0 + 1;
        let plan = self.plan(update, batch.len(), global_len);
        let (local_len, position) = (
            batch.len(),
            batch.position_after(self.resolved.dataset_size.0),
        );
        let sampler = self.loader.sampler();
        let cfg = &self.resolved.config;
        let traced = Before::capture_if(cfg, update, &model, &self.optim, &batch, sampler);
        let mut step = self.step(&model, batch.share, global_len, &plan, hyper, epoch)?;
        let local = self.agreed_locally(update, &step, global_len);
        // Moved out, not cloned: the optimiser updates buffers it holds the only handle to in
        // place.
        let grads = std::mem::take(&mut step.grads);
        let (grads, agreed) = if self.comm.world_size() > 1 {
            all_reduce_update(grads, local, self.comm, &mut self.state.epoch)?
        } else {
            (grads, local)
        };
        self.read_noise_scale(&plan, &agreed, &grads, global_len);
        // Clipped after the all-reduce (every rank clips the same sum) and after the noise scale
        // read the gradient as the data gave it.
        let mut grads = grads;
        if let Some(max) = self.resolved.config.optimizer.clip_grad_norm {
            crate::optim::clip_grad_norm(&mut grads, max);
        }
        let traced = traced.map(|t| t.with_grads(&grads));
        let model = self.optim.step(model, grads, hyper);
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
        let before = self.global_position();
        self.count(update, global_len, local_len, &step, position, epoch);
        self.evaluate_within(&model, before, epoch)?;
        // Every K updates, the adaptive schedule may change B from the next batch on (at the
        // epoch's last update, the epoch-end decision does it).
        let mut flow = Flow::Continue;
        if self.state.position.epoch == epoch.index.0
            && let Some(d) = self.decide(update, false)?
        {
            flow = Flow::NewBatchSize;
            if self.leader() && self.opts.verbose {
                epoch.bar.suspend(|| eprintln!("{}", describe_decision(&d)));
            }
        }
        let model = self.stop_or_checkpoint(model, agreed, epoch)?;
        if flow == Flow::NewBatchSize {
            epoch.batch_size = self
                .hyper_at(epoch.index, self.state.position.offset)
                .batch_size;
        }
        Ok((model, flow))
    }

    /// The evaluation due after an update that moved the run from global sample `before` on:
    /// one each time a multiple of `train.eval_every` samples is passed, and at the end of
    /// training. Rank 0 evaluates `train.eval_subset` samples; every rank records the result.
    fn evaluate_within(&mut self, model: &M, before: u64, epoch: &CurrentEpoch) -> Result<()> {
        let every = self.resolved.config.train.eval_every;
        let after = self.global_position();
        let end = self.resolved.schedule.samples().0;
        if every == 0 || !(before / every < after / every || after >= end) {
            return Ok(());
        }
        let batch = self.resolved.config.train.eval_batch_size;
        let mut read = if self.leader() {
            let e = super::eval::evaluate(model, self.probe, batch, &self.device);
            [e.loss, e.accuracy.unwrap_or(f64::NAN), e.samples as f64]
        } else {
            [0.0; 3]
        };
        if self.comm.world_size() > 1 {
            self.comm.all_reduce_sum_f64(&mut read)?;
        }
        let record = crate::metrics::EvalMetrics {
            samples: self.state.samples,
            updates: self.state.updates,
            epochs: after as f64 / self.resolved.dataset_size.0 as f64,
            lr: epoch.hyper.lr,
            batch_size: epoch.hyper.batch_size,
            test_loss: read[0],
            test_accuracy: read[1],
            test_samples: read[2] as u64,
            wall_seconds: self.wall_seconds(),
            gns: crate::metrics::GnsMetrics::from_reading(self.state.gns.reading()),
        };
        if self.leader() && self.opts.verbose {
            let line = super::progress::describe_eval(&record, self.loss_kind());
            epoch.bar.suspend(|| eprintln!("{line}"));
        }
        self.state.evals.push(record);
        if self.leader() {
            super::files::write_evals(&self.opts.out, &self.state.evals)?;
        }
        Ok(())
    }

    /// How update `update` cuts this rank's `local` samples of a global batch of `global_len`.
    fn plan(&self, update: u64, local: usize, global_len: usize) -> StepPlan {
        let cfg = &self.resolved.config;
        let micro_max = self.resolved.max_micro_batch;
        let split_update = update.is_multiple_of(self.split_every);
        let mut plan = StepPlan {
            min_pieces: if split_update { self.measure_pieces } else { 1 },
            measure: cfg.train.noise_scale,
            seed: cfg.seed,
            update,
            inject_nan: cfg.train.inject_nan_at_update == Some(update),
            ..StepPlan::new(micro_max, self.coupling.quantum())
        };
        // Norms only where they give an estimate, and on the updates one process would measure
        // (split or in micro-batches anyway), so that the reading, and the adaptive schedule's
        // decisions, do not depend on the number of ranks.
        let local_pieces = local.div_ceil(plan.piece_len(local));
        plan.measure = plan.measure
            && if self.comm.world_size() > 1 {
                split_update || global_len > micro_max
            } else {
                local_pieces >= 2
            };
        plan
    }

    /// The forward and backward passes; a NaN or infinite loss is [`Diverged`], with where the
    /// last good checkpoint is.
    fn step(
        &self,
        model: &M,
        share: T::Share,
        global_len: usize,
        plan: &StepPlan,
        hyper: Hyper,
        epoch: &CurrentEpoch,
    ) -> Result<StepOutput> {
        match forward_backward(model, share, global_len, plan, &self.device) {
            Ok(s) => Ok(s),
            Err(StepError::NonFinite { loss }) => bail!(Diverged {
                loss,
                epoch: epoch.index.0,
                update: plan.update,
                lr: hyper.lr,
                batch_size: epoch.batch_size,
                momentum: hyper.momentum,
                checkpoint: if self.ckpt_path.exists() {
                    format!("the last good checkpoint is {}", self.ckpt_path.display())
                } else {
                    "no checkpoint was written before it".into()
                },
            }),
            Err(StepError::Other(e)) => Err(e.context(format!("update {}", plan.update))),
        }
    }

    /// What this rank brings to the all-reduce besides its gradient: a stop request, a wish to
    /// checkpoint, and its noise-scale inputs Σ (b_i/B)|g_i|² and its number of pieces. They ride
    /// along with the gradients, so all ranks stop after the same update when any of them was
    /// signalled, and all see the same measurement.
    fn agreed_locally(&self, update: u64, step: &StepOutput, global_len: usize) -> Agreed {
        let (small, pieces) = step
            .pieces
            .iter()
            .filter(|(len, norm)| *len > 0 && norm.is_finite())
            .fold((0.0f64, 0.0f64), |(s, k), (len, norm)| {
                (s + *len as f64 / global_len as f64 * norm, k + 1.0)
            });
        // A mid-epoch checkpoint every K updates or T minutes; under MPI the time-based wish of
        // any rank counts.
        let train = &self.resolved.config.train;
        let every_seconds = train.checkpoint_every_minutes * 60.0;
        let due = (train.checkpoint_every_updates > 0
            && update.is_multiple_of(train.checkpoint_every_updates))
            || (every_seconds > 0.0
                && self.last_checkpoint.elapsed().as_secs_f64() >= every_seconds);
        Agreed {
            stop: INTERRUPTED.load(Ordering::SeqCst),
            due,
            small,
            pieces,
        }
    }

    /// Adds the update's noise-scale measurement (where it has two batch sizes to compare) to
    /// the run's estimator and the adaptive schedule's window.
    fn read_noise_scale(&mut self, plan: &StepPlan, agreed: &Agreed, grads: &Grads, len: usize) {
        if plan.measure && agreed.pieces >= 2.0 {
            let norms = StepNorms {
                small: agreed.small,
                pieces: agreed.pieces,
                big: grads.sq_norm(),
                batch: len as f64,
            };
            self.state.gns.add(norms);
            if let Some(a) = self.state.adaptive.as_mut() {
                a.window.add(norms);
            }
        }
    }

    /// Counts the update: updates, samples, the epoch's sums, the position, the progress bar.
    fn count(
        &mut self,
        update: u64,
        global_len: usize,
        local_len: usize,
        step: &StepOutput,
        position: Position,
        epoch: &CurrentEpoch,
    ) {
        let state = &mut self.state;
        state.updates = Updates(update);
        state.samples += Samples(global_len as u64);
        state.epoch.loss_sum += step.loss_sum;
        state.epoch.correct += step.correct.unwrap_or(0);
        state.epoch.count += local_len as u64;
        state.position = position;
        // Every session steps before its first epoch end (a checkpoint is never taken at an
        // epoch's last update but after it), so this is known where the record needs it.
        self.classifies |= step.correct.is_some();
        epoch.bar.inc(1);
        epoch.bar.set_message(format!(
            "loss {:.4}",
            step.loss_sum / local_len.max(1) as f64
        ));
    }

    /// After an update: at the epoch's last one, a stop waits for the epoch's end, which
    /// checkpoints (checked before the next update instead, a stop would never come where every
    /// epoch is one update, B = N); within the epoch, a checkpoint when one is due or asked for,
    /// and a stop after it.
    fn stop_or_checkpoint(
        &mut self,
        model: M,
        agreed: Agreed,
        epoch: &mut CurrentEpoch,
    ) -> Result<M> {
        if self.state.position.epoch != epoch.index.0 {
            epoch.stop |= agreed.stop;
            return Ok(model);
        }
        if !(agreed.stop || agreed.due) {
            return Ok(model);
        }
        let mut saved = self.state.clone();
        saved.epoch = global_epoch_sums(&self.state.epoch, self.comm)?;
        saved.epoch.train_seconds = epoch.train_seconds();
        saved.wall_seconds = self.wall_seconds();
        let model = average_running_stats(model, self.comm)?;
        self.save_checkpoint(&model, &saved)?;
        if agreed.stop {
            epoch.bar.finish_and_clear();
            bail!(self.interrupted());
        }
        Ok(model)
    }

    /// Writes the checkpoint of `model` at `state` (rank 0): within an epoch, the sampler
    /// position, the partial-epoch sums of all ranks and the estimator make it a complete
    /// description of the run.
    pub(super) fn save_checkpoint(&mut self, model: &M, state: &TrainState) -> Result<()> {
        if self.leader() {
            let optim = self.optim.to_record();
            checkpoint::save(&self.ckpt_path, model, &optim, state, self.resolved)?;
        }
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// The adaptive schedule's decision after update `update` (within an epoch, or at its end),
    /// written to the decision log by rank 0; `None` where the run has no adaptive schedule,
    /// none is due or it keeps B.
    pub(super) fn decide(&mut self, update: u64, at_epoch_end: bool) -> Result<Option<Decision>> {
        let (Some(c), Some(a)) = (&self.controller, self.state.adaptive.as_mut()) else {
            return Ok(None);
        };
        if !c.due(update, at_epoch_end) {
            return Ok(None);
        }
        let Some(d) = c.decide(a, observation(&self.state.position, update)) else {
            return Ok(None);
        };
        if self.comm.rank() == 0 {
            write_decisions(&self.opts.out, a)?;
        }
        Ok(Some(d))
    }
}
