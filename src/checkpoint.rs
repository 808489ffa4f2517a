//! Checkpoints: one safetensors file holding the model's tensors, the optimiser's buffers and,
//! in its metadata, the training state as JSON (schedule position, sampler position, counters,
//! partial-epoch accumulators, the resolved config). Everything else a resumed run needs is a
//! pure function of these: the sample order of `(seed, epoch)`, the augmentation of
//! `(seed, epoch, index)`, the dropout stream of `(seed, update, micro-batch)`.
//!
//! Files are written atomically (temporary file in the same directory, `fsync`, `rename`), so a
//! run killed at any moment leaves either the previous checkpoint or the new one, never a torn
//! file.

use crate::config::Resolved;
use crate::data::Position;
use crate::optim::OptimizerRecord;
use crate::params::{Named, named_tensors, replace_tensors};
use crate::units::{Samples, Updates};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// File name of the checkpoint inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all().ok();
    }
    Ok(())
}

/// Sums over the part of an epoch already trained, so a run resumed mid-epoch reports the
/// same epoch metrics as an uninterrupted one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochAccumulator {
    /// Σ loss × samples.
    pub loss_sum: f64,
    /// Correct predictions.
    pub correct: u64,
    /// Samples seen by this rank's accumulator (global count after reduction).
    pub count: u64,
    /// Seconds of training so far in the epoch.
    pub train_seconds: f64,
    /// All-reduce calls so far in the epoch.
    pub allreduce_calls: u64,
    /// Bytes all-reduced so far in the epoch.
    pub allreduce_bytes: u64,
    /// Seconds in communication so far in the epoch.
    pub comm_seconds: f64,
}

/// The training state besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Where the sampler stands: epoch and samples into it.
    pub position: Position,
    /// Parameter updates so far.
    pub updates: Updates,
    /// Training samples so far.
    pub samples: Samples,
    /// Wall seconds of the run so far (all sessions).
    pub wall_seconds: f64,
    /// Sums over the unfinished epoch.
    pub epoch: EpochAccumulator,
    /// The gradient-noise-scale estimator (its averages and the epoch's measurements).
    #[serde(default)]
    pub gns: crate::gns::Estimator,
}

impl TrainState {
    /// The state of a run that has not started.
    pub fn start() -> Self {
        Self {
            position: Position::start_of(0),
            updates: Updates(0),
            samples: Samples(0),
            wall_seconds: 0.0,
            epoch: EpochAccumulator::default(),
            gns: crate::gns::Estimator::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Meta {
    format: u32,
    state: TrainState,
    optimizer_step: u64,
    optimizer_last_lr: Option<f64>,
    resolved: Resolved,
}

const FORMAT: u32 = 1;

/// Everything restored from a checkpoint, besides the model.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Training state.
    pub state: TrainState,
    /// Optimiser state.
    pub optimizer: OptimizerRecord,
    /// The settings of the run that wrote it.
    pub resolved: Resolved,
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Saves `model`, the optimiser record and the state to `path` atomically.
pub fn save<M: Module>(
    path: &Path,
    model: &M,
    optimizer: &OptimizerRecord,
    state: &TrainState,
    resolved: &Resolved,
) -> Result<()> {
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for Named {
        name, shape, value, ..
    } in named_tensors(model)
    {
        let data: Vec<f32> = value.into_data().iter::<f32>().collect();
        tensors.insert(format!("model/{name}"), (shape, le_bytes(&data)));
    }
    for (k, v) in &optimizer.buffers {
        tensors.insert(format!("optim/{k}"), (vec![v.len()], le_bytes(v)));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (shape, bytes))| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| anyhow::anyhow!("tensor {k}: {e:?}"))
        })
        .collect::<Result<_>>()?;
    let meta = Meta {
        format: FORMAT,
        state: state.clone(),
        optimizer_step: optimizer.step,
        optimizer_last_lr: optimizer.last_lr,
        resolved: resolved.clone(),
    };
    let mut info = HashMap::new();
    info.insert("noisescale".to_string(), serde_json::to_string(&meta)?);
    let bytes = safetensors::serialize(views, Some(info))
        .map_err(|e| anyhow::anyhow!("serialising checkpoint: {e:?}"))?;
    write_atomic(path, &bytes)
}

fn f32s(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    if view.dtype() != Dtype::F32 {
        bail!(
            "{}: tensor {name} has dtype {:?}, expected F32",
            path.display(),
            view.dtype()
        );
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Loads a checkpoint into `model` (which must have the same architecture) on `device`.
pub fn load<M: Module>(path: &Path, model: M, device: &Device) -> Result<(M, Loaded)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a valid checkpoint (corrupt or truncated safetensors: {e:?})",
            path.display()
        )
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("noisescale"))
        .with_context(|| {
            format!(
                "{}: no noisescale training state in its metadata",
                path.display()
            )
        })?;
    let meta: Meta = serde_json::from_str(meta_json)
        .with_context(|| format!("{}: unreadable training state", path.display()))?;
    if meta.format != FORMAT {
        bail!(
            "{}: checkpoint format {} is not supported (expected {FORMAT})",
            path.display(),
            meta.format
        );
    }
    let mut values: HashMap<String, Tensor<1>> = HashMap::new();
    let mut buffers = BTreeMap::new();
    for name in st.names() {
        let view = st.tensor(name).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let data = f32s(path, name, &view)?;
        if let Some(p) = name.strip_prefix("model/") {
            let len = data.len();
            values.insert(
                p.to_string(),
                Tensor::from_data(TensorData::new(data, [len]), device),
            );
        } else if let Some(k) = name.strip_prefix("optim/") {
            buffers.insert(k.to_string(), data);
        }
    }
    let expected: Vec<(String, usize)> = named_tensors(&model)
        .into_iter()
        .map(|n| (n.name, n.shape.iter().product()))
        .collect();
    for (name, len) in &expected {
        match values.get(name) {
            None => bail!(
                "{}: tensor {name} of the model is missing: the checkpoint is of another model",
                path.display()
            ),
            Some(t) if t.dims()[0] != *len => bail!(
                "{}: tensor {name} has {} values, the model needs {len}: the checkpoint is of another model",
                path.display(),
                t.dims()[0]
            ),
            _ => {}
        }
    }
    let (model, missing) = replace_tensors(model, &mut values);
    if !missing.is_empty() {
        bail!("{}: tensors missing: {missing:?}", path.display());
    }
    Ok((
        model,
        Loaded {
            state: meta.state,
            optimizer: OptimizerRecord {
                step: meta.optimizer_step,
                last_lr: meta.optimizer_last_lr,
                buffers,
            },
            resolved: meta.resolved,
        },
    ))
}
