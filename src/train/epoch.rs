//! An epoch of a run: what is in force while it trains, and its end (totals over the ranks,
//! evaluation, the [`EpochMetrics`] record, the adaptive schedule's epoch-end decision, the
//! checkpoint).

use super::eval::evaluate;
use super::progress::{describe_decision, describe_epoch, progress_bar};
use super::ranks::{average_running_stats, global_epoch_sums, weights_checksum};
use super::run::{CurrentEpoch, Run};
use crate::data::{EvalSet, Share, TrainSet};
use crate::learner::{TrainStep, Trainable};
use crate::metrics::{self, EpochMetrics};
use crate::state::EpochAccumulator;
use crate::units::Epoch;
use anyhow::{Result, bail};
use std::time::Instant;

impl<M, T, E> Run<'_, M, T, E>
where
    M: Trainable,
    T: TrainSet<Share: Share<Input = <M as TrainStep>::Input>>,
    E: EvalSet<Input = <M as TrainStep>::Input>,
{
    /// The epoch the run stands in, or `None` when the schedule is done.
    pub(super) fn next_epoch(&self) -> Option<CurrentEpoch> {
        let index = Epoch(self.state.position.epoch);
        if index.0 >= self.epochs() || self.global_position() >= self.resolved.schedule.samples().0
        {
            return None;
        }
        let started = Instant::now();
        let hyper = self.hyper_at(index, self.state.position.offset);
        let visible = self.opts.verbose && self.leader();
        Some(CurrentEpoch {
            index,
            hyper,
            batch_size: hyper.batch_size,
            bar: progress_bar(visible, 0, index.0, self.epochs()),
            stop: false,
            started,
            train_started: Instant::now(),
            resumed_train_seconds: self.state.epoch.train_seconds,
        })
    }

    /// Whether the run still stands in `epoch` (a pass that ends early leaves samples of it)
    /// with samples left to train (on the sample clock, training may end within an epoch).
    pub(super) fn in_epoch(&self, epoch: &CurrentEpoch) -> bool {
        self.state.position.epoch == epoch.index.0
            && self.global_position() < self.resolved.schedule.samples().0
    }

    /// Ends `epoch`: totals over the ranks, their agreement on the weights, evaluation (rank 0),
    /// the record, the adaptive schedule's decision for the next epoch, and on rank 0 the metrics
    /// line, the checkpoint when due and the printed line.
    pub(super) fn end_epoch(&mut self, model: M, epoch: CurrentEpoch) -> Result<M> {
        epoch.bar.finish_and_clear();
        let train_seconds = epoch.train_seconds();
        let (cfg, comm, index) = (&self.resolved.config, self.comm, epoch.index);
        let epochs = self.epochs();
        let n = self.resolved.dataset_size;

        let totals = global_epoch_sums(&self.state.epoch, comm)?;
        let (model, [test_loss, test_accuracy]) = self.agree_and_evaluate(model, index)?;
        // The noise scale of the epoch's last batch (warm-up aside).
        let lr_factor = self.state.adaptive.as_ref().map_or(1.0, |a| a.lr_factor);
        // The phase of the epoch's last batch.
        let last = crate::units::Samples(self.global_position().saturating_sub(1));
        let g = crate::noise::noise_scale(
            self.resolved.schedule.phase_at(last).lr * lr_factor,
            n,
            epoch.batch_size,
            epoch.hyper.momentum,
        );
        let (count, acc) = (totals.count as f64, &self.state.epoch);
        let record = EpochMetrics {
            epoch: index.done_after(),
            updates: self.state.updates,
            samples: self.state.samples,
            lr: epoch.hyper.lr,
            batch_size: epoch.batch_size,
            momentum: epoch.hyper.momentum,
            noise_scale: g,
            train_loss: totals.loss_sum / count,
            train_accuracy: if self.classifies {
                totals.correct as f64 / count
            } else {
                f64::NAN
            },
            test_loss,
            test_accuracy,
            world_size: comm.world_size(),
            allreduce_calls: acc.allreduce_calls,
            allreduce_bytes: acc.allreduce_bytes,
            wall_seconds: self.wall_seconds(),
            epoch_seconds: epoch.started.elapsed().as_secs_f64() + epoch.resumed_train_seconds,
            // The epoch's samples: N, or fewer where the sample clock ends training within it.
            samples_per_second: totals.count as f64 / train_seconds.max(1e-9),
            comm_seconds: acc.comm_seconds,
            peak_memory_bytes: metrics::peak_memory_bytes(),
            gns: metrics::GnsMetrics::from_reading(self.state.gns.finish_epoch()),
        };
        self.state.epoch = EpochAccumulator::default();
        self.state.wall_seconds = record.wall_seconds;
        // At the end of the epoch (the default), the adaptive schedule sets the next epoch's B.
        let decision = if index.0 + 1 < epochs {
            self.decide(self.state.updates.0, true)?
        } else {
            None
        };
        if self.leader() {
            metrics::append_metrics(&self.metrics_path, &record)?;
        }
        let every = cfg.train.checkpoint_every;
        let done = index.done_after().0;
        if (every > 0 && done.is_multiple_of(every)) || done == epochs || epoch.stop {
            let state = self.state.clone();
            self.save_checkpoint(&model, &state)?;
        }
        if self.leader() && self.opts.verbose {
            eprintln!("{}", describe_epoch(&record, epochs, self.loss_kind()));
            if let Some(d) = &decision {
                eprintln!("{}", describe_decision(d));
            }
        }
        self.records.push(record);
        if epoch.stop {
            bail!(self.interrupted());
        }
        Ok(model)
    }

    /// The model all ranks agree on after an epoch (running statistics averaged, weights
    /// checked equal) and rank 0's evaluation of it, `[loss, accuracy]` (accuracy NaN for a
    /// model without one), on every rank.
    fn agree_and_evaluate(&self, model: M, index: Epoch) -> Result<(M, [f64; 2])> {
        let comm = self.comm;
        let model = average_running_stats(model, comm)?;
        if comm.world_size() > 1 {
            let sums = comm.all_gather_u64(weights_checksum(&model))?;
            if sums.iter().any(|&s| s != sums[0]) {
                bail!(
                    "weights differ between ranks after epoch {} (checksums {sums:x?}): the ranks have diverged",
                    index.0 + 1
                );
            }
        }
        let batch = self.resolved.config.train.eval_batch_size;
        let mut test = if self.leader() {
            let e = evaluate(&model, self.eval, batch, &self.device);
            [e.loss, e.accuracy.unwrap_or(f64::NAN)]
        } else {
            [0.0, 0.0]
        };
        if comm.world_size() > 1 {
            // Rank 0's evaluation on every rank, so that every rank's records (and the summary
            // a library call returns there) hold it.
            comm.all_reduce_sum_f64(&mut test)?;
        }
        Ok((model, test))
    }
}
