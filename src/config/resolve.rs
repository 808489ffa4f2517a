//! Resolution: the settings a [`RunConfig`] fixes once the training-set size and the number of
//! workers are known ([`Resolved`]).

use super::{AUTO_MICRO_BATCH, RunConfig};
use crate::schedule::adaptive::Controller;
use crate::schedule::{Schedule, ScheduleKind};
use crate::units::{Epoch, Samples};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

impl RunConfig {
    /// Fixes the settings that depend on the training-set size `n` and the number of workers.
    pub fn resolve(&self, n: Samples, world_size: usize) -> Result<Resolved> {
        let schedule = self
            .schedule
            .resolve(n)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let micro = match self.train.max_micro_batch {
            0 => AUTO_MICRO_BATCH,
            m => m,
        };
        let trace = &self.train.trace_updates;
        if trace.contains(&0) {
            bail!("train.trace_updates = {trace:?}: updates count from 1");
        }
        if !trace.is_empty() && world_size > 1 {
            bail!(
                "train.trace_updates traces one process's step ({world_size} ranks here): run it without MPI"
            );
        }
        let ghost = self.model.ghost_batch_size();
        if ghost > 0 && micro % ghost != 0 {
            bail!(
                "train.max_micro_batch = {micro} must be a multiple of model.ghost_batch_size = {ghost}, so that ghost batches never straddle two micro-batches"
            );
        }
        if ghost > 0
            && let Some(p) = schedule.phases().iter().find(|p| p.batch_size < ghost)
        {
            // A ghost batch is a part of a batch: one larger than B would silently become
            // ordinary batch norm over the whole batch.
            bail!(
                "model.ghost_batch_size = {ghost} is larger than the batch size B = {} (from epoch {}): ghost batches split a batch into parts; set model.ghost_batch_size <= {} (or 0 for ordinary batch norm) or a larger schedule.batch_size",
                p.batch_size,
                p.start.0 + 1,
                p.batch_size
            );
        }
        if ghost > 0 && world_size > 1 {
            // Ranks take whole ghost chunks (`data::shard`), so the statistics do not depend on
            // the number of ranks; a batch that is not a whole number of chunks per rank would
            // leave ranks with less work than others, or none.
            for p in schedule.phases() {
                if !p.batch_size.is_multiple_of(ghost * world_size) {
                    bail!(
                        "the batch size B = {} (from epoch {}) is not a multiple of model.ghost_batch_size × ranks = {ghost} × {world_size}: each rank normalises whole ghost batches; set schedule.batch_multiple = {} (or batch_size), a smaller model.ghost_batch_size, or run on fewer ranks",
                        p.batch_size,
                        p.start.0 + 1,
                        ghost * world_size
                    );
                }
            }
        }
        if self.schedule.kind == ScheduleKind::Adaptive {
            self.check_measurable(schedule.batch_size(Epoch(0)), micro, world_size)?;
        }
        let normalization_batch = if !self.model.has_batch_norm() {
            Vec::new()
        } else {
            schedule
                .phases()
                .iter()
                .map(|p| match ghost {
                    0 => micro.min(p.batch_size.div_ceil(world_size)),
                    g => g.min(p.batch_size),
                })
                .collect()
        };
        Ok(Resolved {
            config: self.clone(),
            dataset_size: n,
            schedule,
            max_micro_batch: micro,
            world_size,
            normalization_batch,
        })
    }
}

impl RunConfig {
    /// The adaptive schedule acts on the measured noise scale: it needs the measurement on, and
    /// a first batch the estimator can cut into two pieces (see [`crate::gns`]).
    fn check_measurable(&self, b0: usize, micro: usize, world_size: usize) -> Result<()> {
        if !self.train.noise_scale {
            bail!(
                "schedule.kind = \"adaptive\" follows the measured gradient noise scale: set train.noise_scale = true"
            );
        }
        let ghost = self.model.ghost_batch_size();
        if world_size > 1 {
            return Ok(());
        }
        if ghost == 0 && self.model.has_batch_norm() && b0 <= micro {
            bail!(
                "schedule.kind = \"adaptive\" cannot measure the noise scale at B0 = {b0} with ordinary batch norm: a batch that fits one micro-batch (train.max_micro_batch = {micro}) is not cut into pieces, which would change its statistics; set model.ghost_batch_size (e.g. {})",
                (b0 / 2).max(1)
            );
        }
        if b0 < 2 * ghost.max(1) {
            bail!(
                "schedule.kind = \"adaptive\" cannot measure the noise scale at B0 = {b0}: the estimator compares two pieces of whole ghost batches (model.ghost_batch_size = {ghost}); set schedule.batch_size >= {} or a smaller model.ghost_batch_size",
                2 * ghost.max(1)
            );
        }
        Ok(())
    }
}

/// Settings fixed for a run: the config plus what follows from the data and the workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    /// The config as given (after command-line overrides).
    pub config: RunConfig,
    /// Training-set size N the schedule was planned from; a resumed run must train on the same.
    pub dataset_size: Samples,
    /// The schedule over the epochs.
    pub schedule: Schedule,
    /// Largest micro-batch per worker.
    pub max_micro_batch: usize,
    /// Data-parallel ranks (the communicator's world size; 1 in a single process).
    pub world_size: usize,
    /// Per schedule phase, the samples each batch-norm statistic is computed over: the ghost
    /// batch size, or with ordinary batch norm what one forward pass holds (the micro-batch or
    /// the rank's shard), which is less than B once B outgrows them. Empty without batch norm.
    #[serde(default)]
    pub normalization_batch: Vec<usize>,
}

impl Resolved {
    /// Over how many samples batch norm computes its statistics, for `run.json` and reports:
    /// `ghost batches of 32`, `the whole batch`, or `parts of 512 (B = 64 → 2560)` (empty
    /// without batch norm).
    pub fn describe_normalization(&self) -> String {
        let nb = &self.normalization_batch;
        if nb.is_empty() {
            return String::new();
        }
        let ghost = self.config.model.ghost_batch_size();
        let phases = self.schedule.phases();
        let whole = phases.iter().zip(nb).all(|(p, n)| *n >= p.batch_size);
        if whole {
            "the whole batch".into()
        } else if ghost > 0 {
            format!("ghost batches of {ghost}")
        } else {
            let sizes: Vec<String> = nb.iter().map(|n| n.to_string()).collect();
            let batches: Vec<String> = phases.iter().map(|p| p.batch_size.to_string()).collect();
            format!(
                "parts of {} samples (B = {}): ordinary batch norm split by micro-batches/ranks",
                sizes.join(" → "),
                batches.join(" → ")
            )
        }
    }

    /// A warning when ordinary batch norm (`model.ghost_batch_size = 0`) normalises over fewer
    /// samples than the batch in some phase: micro-batches and ranks each normalise their own
    /// part, which makes it ghost batch norm of that size and changes the model as B grows.
    pub fn normalization_warning(&self) -> Option<String> {
        if self.config.model.ghost_batch_size() > 0 {
            return None;
        }
        let split: Vec<String> = self
            .schedule
            .phases()
            .iter()
            .zip(&self.normalization_batch)
            .filter(|(p, nb)| **nb < p.batch_size)
            .map(|(p, nb)| format!("B = {} normalised in parts of {nb}", p.batch_size))
            .collect();
        (!split.is_empty()).then(|| {
            format!(
                "ordinary batch norm (model.ghost_batch_size = 0) sees one micro-batch (train.max_micro_batch = {}) on one of {} rank(s) at a time: {}; that is ghost batch norm of those sizes. Set model.ghost_batch_size to fix the normalisation batch for the whole run",
                self.max_micro_batch,
                self.world_size,
                split.join(", ")
            )
        })
    }

    /// Batch sizes the adaptive controller sets are whole multiples of this: of
    /// `schedule.batch_multiple`, and of whole ghost batches on every rank.
    pub fn batch_quantum(&self) -> usize {
        let a = self.config.schedule.batch_multiple.max(1);
        let b = self.config.model.ghost_batch_size().max(1) * self.world_size;
        a / gcd(a, b) * b
    }

    /// The adaptive schedule's controller for this run (`None` for the fixed kinds), starting
    /// from the schedule's B0 and ε0.
    pub fn controller(&self) -> Option<Controller> {
        let s = &self.config.schedule;
        (s.kind == ScheduleKind::Adaptive).then(|| {
            let first = &self.schedule.phases()[0];
            Controller::new(
                &s.adaptive_config(),
                first.batch_size,
                s.cap(self.dataset_size),
                self.batch_quantum(),
                first.lr,
            )
        })
    }

    /// What the schedule plans: its update count, or for `adaptive` that B will follow the
    /// measured noise scale.
    pub fn describe_plan(&self) -> String {
        match self.config.schedule.kind {
            ScheduleKind::Adaptive => format!(
                "B from {} follows the measured noise scale (adaptive)",
                self.schedule.batch_size(Epoch(0))
            ),
            _ => format!("{} updates planned", self.schedule.total_updates()),
        }
    }

    /// One line describing the effective batch: micro-batch × accumulation × workers.
    pub fn describe_batching(&self, batch_size: usize) -> String {
        let per_rank = batch_size.div_ceil(self.world_size);
        let accum = per_rank.div_ceil(self.max_micro_batch).max(1);
        format!(
            "B = {batch_size} = {} worker(s) × {accum} micro-batch(es) of ≤ {}",
            self.world_size,
            self.max_micro_batch.min(per_rank)
        )
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
