//! `train.trace_updates`: chosen updates written out whole, so that another engine can replay
//! them and say where the two part.
//!
//! For each traced update `u` the run directory gets `trace/update-{u:06}.safetensors` holding
//! everything the step reads and everything it writes, in f32 unless said:
//! - `before/model/{path}`: every tensor of the model before the update (weights and running
//!   statistics), `before/optim/{key}`: the optimiser's buffers (`{path}#v`, `#m1`, `#m2`);
//! - `x` (`[B, C, H, W]`, augmented and normalised as fed), `y` and `index` (i64: the labels and
//!   each sample's index in the training set, for checking the sampler and augmentation);
//! - `grad/{path}`: the gradient of the batch's mean loss the optimiser receives (all
//!   micro-batches summed with their weights, before weight decay), flattened, as are the
//!   optimiser's buffers; model tensors keep their shapes;
//! - `after/model/{path}`, `after/optim/{key}`: the state after the update;
//! - the metadata key `trace`: a JSON [`TraceMeta`] (ε, B, m, the optimiser's settings, the
//!   micro-batch pieces, the loss).
//!
//! Each file is self-contained: a replay loads the state before, runs one step on `x` and `y`
//! and compares, so float rounding does not accumulate over updates and any one phase can be
//! checked on its own. `bench/parity.py` is that replay in PyTorch.

use crate::checkpoint::{le_bytes, write_atomic};
use crate::config::RunConfig;
use crate::data::{Batch, Sampler, Share};
use crate::optim::Optimizer;
use crate::params::{Grads, named_tensors};
use crate::schedule::Hyper;
use anyhow::{Context, Result};
use burn::module::Module;
use safetensors::{Dtype, tensor::TensorView};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The folder of the traces in a run directory.
pub const TRACE_DIR: &str = "trace";

/// The scalar facts of one traced update, stored as JSON in the file's metadata.
#[derive(Debug, Clone, Serialize)]
struct TraceMeta {
    /// The update (1-based).
    pub update: u64,
    /// The epoch (0-based) and the batch's place in it, `start..end` in the epoch's order.
    pub epoch: u32,
    pub start: u64,
    pub end: u64,
    /// ε, B and m in force.
    pub lr: f64,
    pub batch_size: usize,
    pub momentum: f64,
    /// `optimizer.kind` and its settings.
    pub optimizer: String,
    pub weight_decay: f64,
    pub beta2: f64,
    pub eps: f64,
    pub velocity_rescale: bool,
    /// Adam's step count t after this update.
    pub optimizer_step: u64,
    /// The model's ghost batch size (0: whole micro-batch).
    pub ghost_batch_size: usize,
    /// The samples of each micro-batch piece, in order.
    pub pieces: Vec<usize>,
    /// The batch's mean training loss.
    pub loss: f64,
    /// The run's seed.
    pub seed: u64,
}

/// Host copies of what the update is about to read: taken before the step, which consumes the
/// batch and moves the running statistics.
pub(super) struct Before {
    tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    /// The batch's epoch and place in it.
    epoch: u32,
    start: u64,
    end: u64,
}

fn i64_bytes(v: impl IntoIterator<Item = i64>) -> Vec<u8> {
    v.into_iter().flat_map(i64::to_le_bytes).collect()
}

/// Adds the model's tensors and the optimiser's buffers under `prefix`.
fn add_state(
    out: &mut BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    prefix: &str,
    model: &impl Module,
    optim: &Optimizer,
) {
    for t in named_tensors(model) {
        let bytes = le_bytes(&t.value.into_data().iter::<f32>().collect::<Vec<f32>>());
        out.insert(format!("{prefix}/model/{}", t.name), (t.shape, bytes));
    }
    for (k, v) in optim.to_record().buffers {
        out.insert(format!("{prefix}/optim/{k}"), (vec![v.len()], le_bytes(&v)));
    }
}

impl Before {
    /// The state before update `update` and its batch, if `train.trace_updates` lists it;
    /// the batch's samples are `start..end` of the epoch's order under `sampler`.
    pub(super) fn capture_if(
        cfg: &RunConfig,
        update: u64,
        model: &impl Module,
        optim: &Optimizer,
        batch: &Batch<impl Share>,
        sampler: &Sampler,
    ) -> Option<Self> {
        cfg.train.trace_updates.contains(&update).then(|| {
            let perm = sampler.permutation(batch.epoch);
            Self::capture(model, optim, batch, &perm)
        })
    }

    fn capture(
        model: &impl Module,
        optim: &Optimizer,
        batch: &Batch<impl Share>,
        perm: &[u32],
    ) -> Self {
        let mut tensors = BTreeMap::new();
        add_state(&mut tensors, "before", model, optim);
        let n = batch.len();
        // The batch as fed, where it is images (other data: the state and gradients only).
        if let Some(images) = batch.share.as_images() {
            tensors.insert(
                "x".into(),
                (images.shape.to_vec(), le_bytes(&images.images)),
            );
            tensors.insert(
                "y".into(),
                (
                    vec![n],
                    i64_bytes(images.labels.iter().map(|&l| i64::from(l))),
                ),
            );
        }
        let index = &perm[batch.start as usize..batch.end as usize];
        tensors.insert(
            "index".into(),
            (vec![n], i64_bytes(index.iter().map(|&i| i64::from(i)))),
        );
        Before {
            tensors,
            epoch: batch.epoch,
            start: batch.start,
            end: batch.end,
        }
    }

    /// Adds the gradient the optimiser is about to receive.
    pub(super) fn with_grads(mut self, grads: &Grads) -> Self {
        for (name, g) in &grads.tensors {
            let bytes = le_bytes(&g.to_data().iter::<f32>().collect::<Vec<f32>>());
            self.tensors
                .insert(format!("grad/{name}"), (vec![bytes.len() / 4], bytes));
        }
        self
    }

    /// Writes the trace of update `update` into `dir/trace/`, with the step's micro-batch pieces
    /// (`StepOutput::pieces`), its summed loss and the state after the update.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write(
        self,
        dir: &Path,
        cfg: &RunConfig,
        update: u64,
        hyper: Hyper,
        (pieces, loss_sum): (&[(usize, f64)], f64),
        model: &impl Module,
        optim: &Optimizer,
    ) -> Result<()> {
        let pieces = pieces.iter().map(|(len, _)| *len).collect();
        let loss = loss_sum / (self.end - self.start).max(1) as f64;
        let meta = self.meta(cfg, update, hyper, optim, pieces, loss);
        let mut tensors = self.tensors;
        add_state(&mut tensors, "after", model, optim);
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(k, (shape, bytes))| {
                let dtype = if matches!(k.as_str(), "y" | "index") {
                    Dtype::I64
                } else {
                    Dtype::F32
                };
                TensorView::new(dtype, shape.clone(), bytes)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| anyhow::anyhow!("trace tensor {k}: {e:?}"))
            })
            .collect::<Result<_>>()?;
        let info = HashMap::from([("trace".to_string(), serde_json::to_string(&meta)?)]);
        let bytes = safetensors::serialize(views, Some(info)).map_err(|e| {
            anyhow::anyhow!("serialising the trace of update {}: {e:?}", meta.update)
        })?;
        let folder = dir.join(TRACE_DIR);
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        write_atomic(
            &folder.join(format!("update-{update:06}.safetensors")),
            &bytes,
        )
    }

    /// The metadata of the traced step, once it is done.
    fn meta(
        &self,
        cfg: &RunConfig,
        update: u64,
        hyper: Hyper,
        optim: &Optimizer,
        pieces: Vec<usize>,
        loss: f64,
    ) -> TraceMeta {
        TraceMeta {
            update,
            epoch: self.epoch,
            start: self.start,
            end: self.end,
            lr: hyper.lr,
            batch_size: hyper.batch_size,
            momentum: hyper.momentum,
            optimizer: optim.config.kind.to_string(),
            weight_decay: optim.config.weight_decay,
            beta2: optim.config.beta2,
            eps: optim.config.eps,
            velocity_rescale: optim.config.velocity_rescale,
            optimizer_step: optim.state.step,
            ghost_batch_size: cfg.model.ghost_batch_size(),
            pieces,
            loss,
            seed: cfg.seed,
        }
    }
}
