//! Run configuration: the TOML a user writes (raw settings) and the resolved settings the
//! components are built from.
//!
//! The raw layer ([`RunConfig`]) only parses and validates: unknown keys are rejected with their
//! name, out-of-range values with the key and the allowed range. [`RunConfig::resolve`] then
//! fixes everything that depends on the data (N, the schedule's batch sizes, the micro-batch),
//! once, into a [`Resolved`] that the trainer consumes and the checkpoint stores.

use crate::data::folder::Resize;
use crate::data::{Augment, DatasetKind};
use crate::model::ModelConfig;
use crate::optim::{OptimizerConfig, OptimizerKind};
use crate::schedule::{ScheduleConfig, ScheduleKind};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod resolve;
mod source;

pub use resolve::Resolved;
pub use source::{ConfigSource, Overrides, Placement, load_preset};

/// The default data directory, relative to the working directory (the project root).
pub const DEFAULT_DATA_DIR: &str = "../shared/data";

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Which data set, or format: `mnist`, `cifar10`, `synthetic`, `npy`, `image-folder`,
    /// `tokens` (required; `format` is the same key).
    #[serde(alias = "format")]
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
    /// `image-folder`: `[height, width]` every image is brought to (unset: all must have one
    /// size already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[usize; 2]>,
    /// `image-folder`: how an image of another size is brought to `image_size`.
    #[serde(default)]
    pub resize: Resize,
    /// `image-folder` without a `test/` folder: the fraction of `train/` held out for
    /// evaluation, chosen by the run's seed (0: there must be a `test/` folder).
    #[serde(default)]
    pub validation_fraction: f64,
    /// `tokens`: how the stream is stored and cut (required with `dataset = "tokens"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<crate::data::tokens::TokenConfig>,
}

/// Size and shape of the generated data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Training samples to generate (≥ 1; default 2048).
    pub train: usize,
    /// Test samples to generate (≥ 1; default 512).
    pub test: usize,
    /// Number of classes, 2..=256 (labels are `u8`; default 10).
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
    /// Also write a checkpoint every this-many updates, mid-epoch (0: off). A run resumed
    /// from it continues exactly, as from an epoch-end checkpoint.
    #[serde(default)]
    pub checkpoint_every_updates: u64,
    /// Also write a checkpoint when this many minutes have passed since the last one (0: off),
    /// for epochs that take hours.
    #[serde(default)]
    pub checkpoint_every_minutes: f64,
    /// Measure the gradient noise scale B_simple while training ([`crate::gns`]): the squared
    /// gradient norm of every micro-batch, and, where one micro-batch would hold the whole
    /// batch, two pieces instead (not with ordinary batch norm, whose statistics would change).
    #[serde(default = "default_true")]
    pub noise_scale: bool,
    /// Where a batch fits one micro-batch, cut it in two for the measurement on every
    /// this-many updates (≥ 1; default [`crate::gns::SPLIT_EVERY`], or 1 under the adaptive
    /// schedule, whose decisions need many measurements; see README for the cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_scale_split_every: Option<u64>,
    /// Fault injection for testing the divergence guard: make the loss NaN at this update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_nan_at_update: Option<u64>,
    /// Updates (1-based) whose inputs and outputs are written to `trace/` in the run directory:
    /// the state before, the batch as fed, the gradient and the state after, for an outside
    /// replay of the step (`bench/parity.py` replays them in PyTorch). One process only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace_updates: Vec<u64>,
    /// Also evaluate every this-many training samples, within epochs (0: only at epoch ends),
    /// and once at the end: a line of `evals.jsonl` each, for learning curves against samples
    /// and updates (a language model may train on less than one epoch).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub eval_every: u64,
    /// Evaluations within epochs use this many samples of the evaluation set, spread evenly
    /// over it (0: all); epoch ends evaluate all of it.
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub eval_subset: usize,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

fn default_eval_batch() -> usize {
    1000
}
fn default_one() -> u32 {
    1
}
fn default_true() -> bool {
    true
}

impl TrainConfig {
    /// Every how many updates a batch that fits one micro-batch is cut in two to be measured.
    pub fn split_every(&self, kind: ScheduleKind) -> u64 {
        self.noise_scale_split_every
            .unwrap_or(if kind == ScheduleKind::Adaptive {
                1
            } else {
                crate::gns::SPLIT_EVERY
            })
            .max(1)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            max_micro_batch: 0,
            eval_batch_size: default_eval_batch(),
            checkpoint_every: 1,
            checkpoint_every_updates: 0,
            checkpoint_every_minutes: 0.0,
            noise_scale: true,
            noise_scale_split_every: None,
            inject_nan_at_update: None,
            trace_updates: Vec::new(),
            eval_every: 0,
            eval_subset: 0,
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
    /// Compute device: `flex` (CPU, default), `wgpu[:…]` or `cuda[:N]` (with their cargo
    /// features); see [`crate::device::parse`].
    #[serde(default = "default_device")]
    pub device: String,
    /// The `[data]` table (required): which data set, where it lives and how it is fed.
    pub data: DataConfig,
    /// The `[model]` table (default: an MLP with one hidden layer of 256).
    #[serde(default)]
    pub model: ModelConfig,
    /// The `[optimizer]` table (default: heavy-ball momentum, no weight decay).
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// ε, B and m over the epochs.
    pub schedule: ScheduleConfig,
    /// The `[train]` table: micro-batching, evaluation, checkpoints, noise-scale measurement.
    #[serde(default)]
    pub train: TrainConfig,
    /// What `noisescale reproduce` compares (ignored by `train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproduce: Option<ReproduceConfig>,
}

fn default_device() -> String {
    "flex".into()
}

/// Micro-batch size used when `max_micro_batch = 0`: on this class of CPU, per-sample
/// throughput stops improving well below this (see `bench/RESULTS.md`), while memory grows
/// linearly with it.
pub const AUTO_MICRO_BATCH: usize = 512;

impl RunConfig {
    /// A config for a model and data given in code to [`crate::Trainer`]: `schedule`, with the
    /// defaults of every other table (momentum, no weight decay; seed 0; the CPU). The trainer
    /// fills in what the `[model]` table records of the model.
    pub fn custom(name: &str, schedule: ScheduleConfig) -> RunConfig {
        RunConfig {
            name: Some(name.to_string()),
            seed: 0,
            device: default_device(),
            data: DataConfig {
                dataset: DatasetKind::Custom,
                dir: default_data_dir(),
                augment: Augment::None,
                train_subset: 0,
                test_subset: 0,
                workers: default_workers(),
                synthetic: SyntheticConfig::default(),
                image_size: None,
                resize: Resize::default(),
                validation_fraction: 0.0,
                tokens: None,
            },
            // Named after the model's type by the trainer.
            model: ModelConfig::Custom {
                name: String::new(),
                ghost_batch_size: 0,
                batch_norm: false,
            },
            optimizer: OptimizerConfig::default(),
            schedule,
            train: TrainConfig::default(),
            reproduce: None,
        }
    }

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
        let tokens = self.data.dataset == crate::data::DatasetKind::Tokens;
        let gpt = matches!(self.model, crate::model::ModelConfig::Gpt(_));
        if tokens != gpt && self.data.dataset != crate::data::DatasetKind::Custom {
            bail!(
                "model.kind = \"{}\" and data.dataset = \"{}\" do not go together: the language model (model.kind = \"gpt\") trains on a token stream (data.dataset = \"tokens\") and the image models on images",
                self.model.name(),
                self.data.dataset
            );
        }
        if self.optimizer.kind == OptimizerKind::Sgd && self.schedule.momentum != 0.0 {
            bail!(
                "optimizer.kind = \"sgd\" takes no momentum but schedule.momentum = {}: set it to 0 or use kind = \"momentum\"",
                self.schedule.momentum
            );
        }
        if self.optimizer.kind == OptimizerKind::Sgd
            && let Some(m) = self.schedule.momentum_scaled
        {
            bail!(
                "optimizer.kind = \"sgd\" takes no momentum but schedule.momentum_scaled = {m}: remove schedule.momentum_scaled or use kind = \"momentum\""
            );
        }
        let minutes = self.train.checkpoint_every_minutes;
        if !(minutes.is_finite() && minutes >= 0.0) {
            bail!(
                "train.checkpoint_every_minutes = {minutes} is out of range: must be a finite number >= 0 (0: off)"
            );
        }
        if self.train.noise_scale_split_every == Some(0) {
            bail!("train.noise_scale_split_every = 0 is out of range: must be at least 1");
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
        let f = self.data.validation_fraction;
        if !(0.0..1.0).contains(&f) {
            bail!("data.validation_fraction = {f} is out of range: must be in [0, 1)");
        }
        if let Some(size) = self.data.image_size {
            let max = crate::data::folder::MAX_SIDE as usize;
            if size.iter().any(|&d| d == 0 || d > max) {
                bail!("data.image_size = {size:?} is out of range: each side in 1..={max}");
            }
        }
        crate::device::parse(&self.device)?;
        Ok(())
    }

    /// How `data.dataset = "image-folder"` reads its images.
    pub fn folder_options(&self) -> crate::data::folder::FolderOptions {
        crate::data::folder::FolderOptions {
            image_size: self.data.image_size,
            resize: self.data.resize,
            validation_fraction: self.data.validation_fraction,
            seed: self.seed,
        }
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
}

/// The schedule kinds `reproduce` compares by default.
pub fn default_schedules() -> Vec<ScheduleKind> {
    vec![
        ScheduleKind::DecayLr,
        ScheduleKind::Hybrid,
        ScheduleKind::IncreaseBatch,
        ScheduleKind::Adaptive,
    ]
}

/// The `[reproduce]` table of a preset: what to compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReproduceConfig {
    /// Seeds per schedule (default 1; `--seeds` overrides).
    #[serde(default)]
    pub seeds: Option<u32>,
    /// Learning rate of the Adam variants (default 1e-3).
    #[serde(default)]
    pub adam_lr: Option<f64>,
    /// The schedule kinds to compare, in report order (default [`default_schedules`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Vec<ScheduleKind>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Samples;

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

    #[test]
    fn sgd_refuses_a_scaled_momentum() {
        let text = "[data]\ndataset = \"synthetic\"\n[optimizer]\nkind = \"sgd\"\n[schedule]\nepochs = 2\nlr = 0.1\nbatch_size = 8\nmomentum = 0.0\nmomentum_scaled = 0.9\n";
        let err = format!("{:#}", RunConfig::from_toml(text, "t").unwrap_err());
        assert!(
            err.contains("optimizer.kind = \"sgd\"") && err.contains("schedule.momentum_scaled"),
            "{err}"
        );
    }

    fn resnet(ghost: usize, batch: usize, micro: usize) -> RunConfig {
        let mut c = synthetic();
        c.model = ModelConfig::Resnet {
            depth: 8,
            width: 4,
            ghost_batch_size: ghost,
        };
        c.schedule.batch_size = batch;
        c.schedule.kind = ScheduleKind::IncreaseBatch;
        c.schedule.milestones = vec![1];
        c.schedule.factor = 4.0;
        c.train.max_micro_batch = micro;
        c
    }

    #[test]
    fn ghost_chunks_must_divide_evenly_over_ranks() {
        // B = 64 then 256; ghost 32 over 2 ranks: 64 chunks of 32, fine; over 4 ranks: 64 is
        // not a multiple of 32 × 4.
        let c = resnet(32, 64, 64);
        assert!(c.resolve(Samples(2048), 2).is_ok());
        let err = c.resolve(Samples(2048), 4).unwrap_err().to_string();
        assert!(
            err.contains("B = 64 (from epoch 1)")
                && err.contains("model.ghost_batch_size × ranks = 32 × 4"),
            "{err}"
        );
        // One process takes any B.
        assert!(resnet(32, 48, 64).resolve(Samples(2048), 1).is_ok());
    }

    #[test]
    fn a_ghost_batch_larger_than_the_batch_is_an_error() {
        // It used to become ordinary batch norm over the whole batch, silently.
        let err = resnet(64, 32, 128)
            .resolve(Samples(2048), 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "model.ghost_batch_size = 64 is larger than the batch size B = 32 (from epoch 1)"
            ) && err.contains("<= 32"),
            "{err}"
        );
        // Equal is a ghost batch of the whole batch; a later, larger B is fine.
        assert!(resnet(32, 32, 128).resolve(Samples(2048), 1).is_ok());
    }

    #[test]
    fn traced_updates_count_from_one_and_need_one_process() {
        let mut c = synthetic();
        c.train.trace_updates = vec![0, 3];
        let err = c.resolve(Samples(2048), 1).unwrap_err().to_string();
        assert!(
            err.contains("train.trace_updates = [0, 3]") && err.contains("from 1"),
            "{err}"
        );
        c.train.trace_updates = vec![3];
        assert!(c.resolve(Samples(2048), 1).is_ok());
        let err = c.resolve(Samples(2048), 2).unwrap_err().to_string();
        assert!(
            err.contains("2 ranks") && err.contains("without MPI"),
            "{err}"
        );
    }

    #[test]
    fn plain_batch_norm_split_by_micro_batches_is_reported() {
        // B = 64 then 256 with micro-batches of 128: the second phase normalises over 128.
        let r = resnet(0, 64, 128).resolve(Samples(2048), 1).unwrap();
        assert_eq!(r.normalization_batch, vec![64, 128]);
        let w = r.normalization_warning().expect("a warning");
        assert!(w.contains("B = 256 normalised in parts of 128"), "{w}");
        assert!(r.describe_normalization().contains("128"));
        // On 2 ranks each rank normalises its half even when it fits one micro-batch.
        let r = resnet(0, 64, 512).resolve(Samples(2048), 2).unwrap();
        assert_eq!(r.normalization_batch, vec![32, 128]);
        assert!(r.normalization_warning().is_some());
        // Ghost batch norm fixes the normalisation batch: no warning.
        let r = resnet(32, 64, 128).resolve(Samples(2048), 1).unwrap();
        assert_eq!(r.normalization_batch, vec![32, 32]);
        assert!(r.normalization_warning().is_none());
        assert_eq!(r.describe_normalization(), "ghost batches of 32");
        // One process, B within the micro-batch: the whole batch, no warning.
        let r = resnet(0, 64, 512).resolve(Samples(2048), 1).unwrap();
        assert!(r.normalization_warning().is_none());
        assert_eq!(r.describe_normalization(), "the whole batch");
        // No batch norm, nothing to say.
        assert!(
            synthetic()
                .resolve(Samples(2048), 4)
                .unwrap()
                .normalization_batch
                .is_empty()
        );
    }
}
