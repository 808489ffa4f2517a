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

mod epoch;
mod eval;
mod files;
mod measure;
mod prepare;
mod progress;
mod ranks;
mod run;
mod step;
mod trace;
mod update;

pub use eval::{Evaluation, evaluate};
pub use files::finished_run;
pub use measure::measure_noise_scale;
pub use prepare::{Loaded, Prepared, TokenData, load_data, planned_train_size, prepare_data};
pub use progress::describe_decision;
pub use ranks::weights_checksum;
pub use step::{StepError, StepOutput, StepPlan, forward_backward};
pub use trace::TRACE_DIR;

use run::{Flow, Run};

use crate::checkpoint::CHECKPOINT_FILE;
use crate::config::Resolved;
use crate::data::{EvalSet, ImageSet, Share, TrainSet};
use crate::dist::Communicator;
use crate::learner::{TrainStep, Trainable};
use crate::metrics::RunSummary;
use crate::model::ModelConfig;
use anyhow::{Result, bail};
use burn::tensor::Device;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Set by the Ctrl-C handler; the trainer checkpoints and stops after the current update.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The error of a run stopped by Ctrl-C after checkpointing (exit code 130).
#[derive(Debug, thiserror::Error)]
#[error(
    "interrupted at epoch {epoch}, update {updates}: checkpoint written; resume with `noisescale train --resume {out}`"
)]
pub struct Interrupted {
    /// Index (0-based) of the epoch the run resumes in.
    pub epoch: u32,
    /// Updates completed, all of them in the checkpoint just written.
    pub updates: u64,
    /// Run directory holding that checkpoint: the argument to `--resume`.
    pub out: String,
}

/// The error of a diverged run (NaN or infinite loss).
#[derive(Debug, thiserror::Error)]
#[error(
    "training diverged: the loss is {loss} at epoch {epoch}, update {update} (ε = {lr}, B = {batch_size}, m = {momentum}); {checkpoint}"
)]
pub struct Diverged {
    /// The mean loss of the first micro-batch piece on this rank that was NaN or infinite.
    pub loss: f64,
    /// Index (0-based) of the epoch in which it happened.
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

/// What a run trains: the model (built by `init` on a device; its initial parameters are drawn
/// from the run's seed), the training set and the evaluation set.
pub struct Task<'a, M, T, E> {
    /// Builds the model on a device.
    pub init: &'a dyn Fn(&Device) -> M,
    /// The training set.
    pub train: T,
    /// The evaluation set, evaluated at the end of every epoch.
    pub eval: &'a E,
    /// The evaluations within epochs (`train.eval_every`) take this set instead, when given
    /// (a part of `eval`, for speed).
    pub probe: Option<&'a E>,
}

/// A finished run: its summary and its trained model.
pub struct Trained<M> {
    /// What the run's metrics add up to (also in `summary.json`).
    pub summary: RunSummary,
    /// The model after the last update.
    pub model: M,
}

/// Runs (or resumes) training of the built-in model on the built-in data as `resolved` says,
/// writing into `opts.out`.
pub fn train(
    resolved: &Resolved,
    prepared: &Prepared,
    opts: &TrainOptions,
    comm: &dyn Communicator,
) -> Result<RunSummary> {
    let cfg = &resolved.config;
    let (shape, classes) = (prepared.train.image_shape(), prepared.train.num_classes);
    let init = |d: &Device| cfg.model.init(shape, classes, d);
    let train = ImageSet::new(
        prepared.train.clone(),
        prepared.normalizer.clone(),
        cfg.data.augment,
    );
    let eval = ImageSet::new(
        prepared.test.clone(),
        prepared.normalizer.clone(),
        crate::data::Augment::None,
    );
    let task = Task {
        init: &init,
        train,
        eval: &eval,
        probe: None,
    };
    Ok(train_task(resolved, task, opts, comm)?.summary)
}

/// Runs (or resumes) a run of a built-in model on data [`load_data`] loaded: an image
/// classifier ([`train`]) or the language model on a token stream.
pub fn train_loaded(
    resolved: &Resolved,
    data: &Loaded,
    opts: &TrainOptions,
    comm: &dyn Communicator,
) -> Result<RunSummary> {
    match data {
        Loaded::Images(prepared) => train(resolved, prepared, opts, comm),
        Loaded::Tokens(tokens) => train_language_model(resolved, tokens, opts, comm),
    }
}

/// Runs (or resumes) the language model ([`crate::model::gpt`]) on a token stream's windows.
fn train_language_model(
    resolved: &Resolved,
    data: &TokenData,
    opts: &TrainOptions,
    comm: &dyn Communicator,
) -> Result<RunSummary> {
    let cfg = &resolved.config;
    let ModelConfig::Gpt(gpt) = &cfg.model else {
        bail!(
            "data.dataset = \"tokens\" trains the language model (model.kind = \"gpt\"), not {}",
            cfg.model.name()
        );
    };
    let context = data.train.context();
    if gpt.context < context {
        bail!(
            "model.context = {} is shorter than the windows' data.tokens.context = {context}: the position embedding must cover every position",
            gpt.context
        );
    }
    let top = data.train.max_id().max(data.eval.max_id());
    if top as usize >= gpt.vocab {
        bail!(
            "the token stream {} holds id {top}, beyond model.vocab = {}",
            cfg.data.dir.display(),
            gpt.vocab
        );
    }
    let init = |d: &Device| gpt.init(d);
    let task = Task {
        init: &init,
        train: data.train.clone(),
        eval: &data.eval,
        probe: Some(&data.probe),
    };
    Ok(train_task(resolved, task, opts, comm)?.summary)
}

/// Runs (or resumes) training of any [`Trainable`] model on any data as `resolved` says, writing
/// into `opts.out`: the one loop behind the CLI and the library's [`crate::Trainer`].
pub fn train_task<M, T, E>(
    resolved: &Resolved,
    task: Task<'_, M, T, E>,
    opts: &TrainOptions,
    comm: &dyn Communicator,
) -> Result<Trained<M>>
where
    M: Trainable,
    T: TrainSet<Share: Share<Input = <M as TrainStep>::Input>>,
    E: EvalSet<Input = <M as TrainStep>::Input>,
{
    crate::cpu::setup();
    let (mut run, mut model) = Run::start(resolved, task, opts, comm)?;
    while let Some(mut epoch) = run.next_epoch() {
        // One pass per batch size: a decision of the adaptive schedule or a phase of the sample
        // clock within the epoch ends the pass, and the next one continues from the same sample
        // with the new B.
        'pass: while run.in_epoch(&epoch) {
            for batch in run.batches(&mut epoch) {
                let (m, flow) = run.update(model, batch, &mut epoch)?;
                model = m;
                if flow == Flow::NewBatchSize {
                    continue 'pass;
                }
            }
        }
        model = run.end_epoch(model, epoch)?;
    }
    Ok(Trained {
        summary: run.finish()?,
        model,
    })
}

/// Path of the checkpoint in a run directory.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join(CHECKPOINT_FILE)
}
