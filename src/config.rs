//! Run configuration: the TOML a user writes (raw settings) and the resolved settings the
//! components are built from.
//!
//! The raw layer ([`RunConfig`]) only parses and validates: unknown keys are rejected with their
//! name, out-of-range values with the key and the allowed range. [`RunConfig::resolve`] then
//! fixes everything that depends on the data (N, the schedule's batch sizes, the micro-batch),
//! once, into a [`Resolved`] that the trainer consumes and the checkpoint stores.

use crate::data::{Augment, DatasetKind};
use crate::model::ModelConfig;
use crate::optim::{OptimizerConfig, OptimizerKind};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};
use crate::units::Samples;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The default data directory, relative to the working directory (the project root).
pub const DEFAULT_DATA_DIR: &str = "../shared/data";

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Which data set.
    pub dataset: DatasetKind,
    /// Where it lives (a data root or the data set's own folder); `--data` overrides it.
    #[serde(default = "default_data_dir")]
    pub dir: PathBuf,
    /// Training augmentation (`"none"` or `{ crop-flip = { pad = 4 } }`).
    #[serde(default)]
    pub augment: Augment,
    /// Use only the first this-many training samples (0: all).
    #[serde(default)]
    pub train_subset: usize,
    /// Use only the first this-many test samples (0: all).
    #[serde(default)]
    pub test_subset: usize,
    /// Background threads assembling batches (0: on the training thread).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Synthetic data set size and shape (only for `dataset = "synthetic"`).
    #[serde(default)]
    pub synthetic: SyntheticConfig,
}

/// Size and shape of the generated data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Training samples.
    pub train: usize,
    /// Test samples.
    pub test: usize,
    /// Classes.
    pub classes: usize,
    /// Image shape `[channels, height, width]`.
    pub shape: [usize; 3],
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            train: 2048,
            test: 512,
            classes: 10,
            shape: [1, 8, 8],
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}
fn default_workers() -> usize {
    2
}

/// The `[train]` table: how the trainer executes the schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Largest batch pushed through the model at once; bigger batches are split into
    /// micro-batches whose gradients are averaged (0: choose automatically).
    #[serde(default)]
    pub max_micro_batch: usize,
    /// Batch size for evaluation on the test split.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Write a checkpoint every this-many epochs (0: only at the end and on Ctrl-C).
    #[serde(default = "default_one")]
    pub checkpoint_every: u32,
    /// Fault injection for testing the divergence guard: make the loss NaN at this update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_nan_at_update: Option<u64>,
}

fn default_eval_batch() -> usize {
    1000
}
fn default_one() -> u32 {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            max_micro_batch: 0,
            eval_batch_size: default_eval_batch(),
            checkpoint_every: 1,
            inject_nan_at_update: None,
        }
    }
}

/// A training run: what `noisescale train CONFIG.toml` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// A label for the run (reports, summary).
    #[serde(default)]
    pub name: Option<String>,
    /// Seed of everything random: initial weights, sample order, augmentation.
    #[serde(default)]
    pub seed: u64,
    /// Compute device: `flex` (CPU, default) or `cuda[:N]` (with the `cuda` feature).
    #[serde(default = "default_device")]
    pub device: String,
    /// Data set.
    pub data: DataConfig,
    /// Model.
    #[serde(default)]
    pub model: ModelConfig,
    /// Optimiser.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// ε, B and m over the epochs.
    pub schedule: ScheduleConfig,
    /// Execution settings.
    #[serde(default)]
    pub train: TrainConfig,
    /// What `noisescale reproduce` compares (ignored by `train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproduce: Option<crate::reproduce::ReproduceConfig>,
}

fn default_device() -> String {
    "flex".into()
}

/// Micro-batch size used when `max_micro_batch = 0`: on this class of CPU, per-sample
/// throughput stops improving well below this (see `bench/RESULTS.md`), while memory grows
/// linearly with it.
pub const AUTO_MICRO_BATCH: usize = 512;

impl RunConfig {
    /// Parses a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let cfg: RunConfig = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim()))?;
        cfg.validate()
            .with_context(|| format!("{origin}: invalid setting"))?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The document as TOML (the resolved config saved beside a run).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunConfig always serialises")
    }

    /// Checks what can be checked without the data.
    pub fn validate(&self) -> Result<()> {
        self.model.validate().map_err(anyhow::Error::msg)?;
        self.optimizer.validate()?;
        if self.optimizer.kind == OptimizerKind::Sgd && self.schedule.momentum != 0.0 {
            bail!(
                "optimizer.kind = \"sgd\" takes no momentum but schedule.momentum = {}: set it to 0 or use kind = \"momentum\"",
                self.schedule.momentum
            );
        }
        if self.train.eval_batch_size == 0 {
            bail!("train.eval_batch_size = 0 is out of range: must be at least 1");
        }
        let s = &self.data.synthetic;
        if self.data.dataset == DatasetKind::Synthetic
            && (s.train == 0
                || s.test == 0
                || !(2..=256).contains(&s.classes)
                || s.shape.contains(&0))
        {
            bail!(
                "data.synthetic = {s:?} is out of range: train and test >= 1, classes in 2..=256, every shape entry >= 1"
            );
        }
        crate::device::parse(&self.device)?;
        Ok(())
    }

    /// Whether `other` describes the same run: equal but for where the data lives and which
    /// device computes (a run may be resumed on another machine).
    pub fn same_run(&self, other: &RunConfig) -> bool {
        let mut a = self.clone();
        a.data.dir = other.data.dir.clone();
        a.device = other.device.clone();
        &a == other
    }

    /// A label for the run: `name`, or `{dataset}-{schedule kind}`.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.data.dataset, self.schedule.kind))
    }

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
        let ghost = self.model.ghost_batch_size();
        if ghost > 0 && micro % ghost != 0 {
            bail!(
                "train.max_micro_batch = {micro} must be a multiple of model.ghost_batch_size = {ghost}, so that ghost batches never straddle two micro-batches"
            );
        }
        Ok(Resolved {
            config: self.clone(),
            dataset_size: n,
            schedule,
            max_micro_batch: micro,
            world_size,
        })
    }
}

/// Settings fixed for a run: the config plus what follows from the data and the workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    /// The config as given (after command-line overrides).
    pub config: RunConfig,
    /// Training-set size N.
    pub dataset_size: Samples,
    /// The schedule over the epochs.
    pub schedule: Schedule,
    /// Largest micro-batch per worker.
    pub max_micro_batch: usize,
    /// Data-parallel workers.
    pub world_size: usize,
}

impl Resolved {
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

/// The schedule kinds `reproduce` compares by default.
pub fn default_schedules() -> Vec<ScheduleKind> {
    vec![
        ScheduleKind::DecayLr,
        ScheduleKind::Hybrid,
        ScheduleKind::IncreaseBatch,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic() -> RunConfig {
        RunConfig::from_toml(
            "[data]\ndataset = \"synthetic\"\n[schedule]\nepochs = 2\nlr = 0.1\nbatch_size = 8\n",
            "test",
        )
        .unwrap()
    }

    #[test]
    fn a_run_may_move_its_data_and_device_but_not_its_seed() {
        let a = synthetic();
        let mut b = a.clone();
        b.data.dir = PathBuf::from("/elsewhere");
        b.device = "cuda:1".into();
        assert!(a.same_run(&b));
        b.seed = 1;
        assert!(!a.same_run(&b));
    }

    #[test]
    fn toml_round_trips_and_resolution_checks_ghost_chunks() {
        let a = synthetic();
        assert_eq!(RunConfig::from_toml(&a.to_toml(), "round trip").unwrap(), a);
        let mut g = a.clone();
        g.model = ModelConfig::Resnet {
            depth: 8,
            width: 4,
            ghost_batch_size: 48,
        };
        g.train.max_micro_batch = 64;
        let err = g.resolve(Samples(2048), 1).unwrap_err().to_string();
        assert!(
            err.contains("train.max_micro_batch = 64") && err.contains("48"),
            "{err}"
        );
        let r = a.resolve(Samples(2048), 2).unwrap();
        assert_eq!(r.max_micro_batch, AUTO_MICRO_BATCH);
        assert_eq!(
            r.describe_batching(1024),
            "B = 1024 = 2 worker(s) × 1 micro-batch(es) of ≤ 512"
        );
    }
}
