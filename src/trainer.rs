//! The library's front door: the whole trainer for a model and data of your own.
//!
//! [`Trainer::fit`] takes what burn-train's `Learner` takes (a model implementing `TrainStep` and
//! `InferenceStep`, a burn `Dataset` with its `Batcher` for training and one for evaluation) and
//! runs the loop the CLI runs: the schedule (ε per update, warm-up, B per epoch, the adaptive
//! schedule), exact micro-batches, the noise-scale measurement, checkpoints and byte-identical
//! resume, MPI data parallelism when launched under `mpirun`, `metrics.jsonl` and the summary.
//! The built-in models train through the same loop ([`crate::train::train_task`]).

use crate::config::RunConfig;
use crate::data::{DatasetKind, EvalSet, Share, TrainSet};
use crate::learner::{BatchCoupling, InferenceStep, TrainStep, Trainable};
use crate::model::ModelConfig;
use crate::train::{Task, TrainOptions, Trained, train_task};
use crate::units::Samples;
use anyhow::{Result, bail};
use burn::tensor::Device;
use std::path::PathBuf;

/// Trains a model of your own on data of your own under a noisescale schedule.
///
/// ```no_run
/// # use noisescale::prelude::*;
/// # fn run<M: Trainable + Send, T, E>(init: impl Fn(&Device) -> M + Sync, train: T, test: E) -> anyhow::Result<()>
/// # where T: TrainSet<Share: Share<Input = <M as TrainStep>::Input>>, E: EvalSet<Input = <M as TrainStep>::Input> {
/// let schedule = ScheduleConfig::new(ScheduleKind::IncreaseBatch, 30, 0.1, 64);
/// let trained = Trainer::new(RunConfig::custom("mine", schedule))
///     .out("runs/mine")
///     .fit(init, train, test)?;
/// println!("{:.2}%", 100.0 * trained.summary.final_test_accuracy);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Trainer {
    config: RunConfig,
    out: PathBuf,
    resume: bool,
    overwrite: bool,
    verbose: bool,
}

impl Trainer {
    /// A trainer for `config` (from [`RunConfig::custom`] or a TOML file), writing into
    /// `runs/<name>` unless [`Trainer::out`] says otherwise.
    pub fn new(config: RunConfig) -> Trainer {
        Trainer {
            out: PathBuf::from("runs").join(config.label()),
            config,
            resume: false,
            overwrite: false,
            verbose: true,
        }
    }

    /// The run directory (metrics, checkpoints, summary).
    pub fn out(mut self, dir: impl Into<PathBuf>) -> Trainer {
        self.out = dir.into();
        self
    }

    /// Continue the run in the run directory from its checkpoint, if it has one (else start it).
    pub fn resume(mut self, resume: bool) -> Trainer {
        self.resume = resume;
        self
    }

    /// Replace a run already in the run directory (otherwise an error).
    pub fn overwrite(mut self, overwrite: bool) -> Trainer {
        self.overwrite = overwrite;
        self
    }

    /// Print per-epoch lines and a progress bar (default: yes).
    pub fn verbose(mut self, verbose: bool) -> Trainer {
        self.verbose = verbose;
        self
    }

    /// Trains the model `init` builds (its initial parameters drawn from the config's seed) on
    /// `train`, evaluating on `eval` after every epoch, and returns the trained model with the
    /// run's summary. Under `mpirun` (with the `mpi` feature) each rank trains its share of
    /// every batch. A model that cannot take the data's batches is a named error before the
    /// first update.
    pub fn fit<M, T, E>(
        self,
        init: impl Fn(&Device) -> M + Sync,
        train: T,
        eval: E,
    ) -> Result<Trained<M>>
    where
        M: Trainable + Send,
        T: TrainSet<Share: Share<Input = <M as TrainStep>::Input>>,
        E: EvalSet<Input = <M as TrainStep>::Input>,
    {
        // On a thread of rayon's pool, so that parallel work is joined, not handed over.
        crate::cpu::on_compute_thread(|| self.fit_here(&init, train, &eval))
    }

    fn fit_here<M, T, E>(
        self,
        init: &(dyn Fn(&Device) -> M + Sync),
        train: T,
        eval: &E,
    ) -> Result<Trained<M>>
    where
        M: Trainable,
        T: TrainSet<Share: Share<Input = <M as TrainStep>::Input>>,
        E: EvalSet<Input = <M as TrainStep>::Input>,
    {
        if train.is_empty() {
            bail!("the training set holds no samples");
        }
        if eval.is_empty() {
            bail!("the evaluation set holds no samples");
        }
        let mut config = self.config;
        let probe = init(&Device::flex().autodiff());
        config.model = describe(&probe, &config.model);
        config.data.dataset = DatasetKind::Custom;
        config.validate()?;
        check_fits(&probe, &train)?;
        drop(probe);
        let comm = crate::dist::from_env()?;
        let resolved = config.resolve(Samples(train.len() as u64), comm.world_size())?;
        let opts = TrainOptions {
            out: self.out,
            resume: self.resume,
            overwrite: self.overwrite,
            group: None,
            verbose: self.verbose && comm.rank() == 0,
        };
        let task = Task {
            init,
            train,
            eval,
            probe: None,
        };
        train_task(&resolved, task, &opts, comm.as_ref())
    }
}

/// What the config's `[model]` table records of a model given in code: its name (kept if the
/// config names it) and how its samples meet in batch statistics.
fn describe<M: Trainable>(model: &M, given: &ModelConfig) -> ModelConfig {
    let name = match given {
        ModelConfig::Custom { name, .. } if !name.is_empty() => name.clone(),
        _ => {
            let full = std::any::type_name::<M>();
            full.rsplit("::").next().unwrap_or(full).to_string()
        }
    };
    let coupling = model.batch_coupling();
    ModelConfig::Custom {
        name,
        ghost_batch_size: match coupling {
            BatchCoupling::Ghost(g) => g,
            _ => 0,
        },
        batch_norm: coupling != BatchCoupling::None,
    }
}

/// Runs the model's inference step on two training samples, so that a model whose shapes do not
/// fit the data fails here, named, and not with a panic in the middle of a run.
fn check_fits<M, T>(model: &M, train: &T) -> Result<()>
where
    M: Trainable,
    T: TrainSet<Share: Share<Input = <M as TrainStep>::Input>>,
{
    let n = train.len().min(2);
    let idx: Vec<u32> = (0..n as u32).collect();
    let device = Device::flex();
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let valid = model.valid();
        for input in train.assemble(&idx, 0, 0).into_pieces(n, &device) {
            let _ = crate::learner::StepItem::loss(&InferenceStep::step(&valid, input)).into_data();
        }
    }));
    if let Err(payload) = attempt {
        let why = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        bail!(
            "the model does not fit the data: its inference step on the first {n} training samples failed: {why}"
        );
    }
    Ok(())
}
