//! Checkpoints: one safetensors file holding the model's tensors, the optimiser's buffers and,
//! in its metadata, the training state as JSON (schedule position, sampler position, counters,
//! partial-epoch accumulators, the resolved config). Everything else a resumed run needs is a
//! pure function of these: the sample order of `(seed, epoch)`, the augmentation of
//! `(seed, epoch, index)`, the dropout stream of `(seed, update, micro-batch)`.
//!
//! Files are written atomically (temporary file in the same directory, `fsync`, `rename`), so a
//! run killed at any moment leaves either the previous checkpoint or the new one, never a torn
//! file.
//!
//! **Integrity.** The metadata holds the SHA-256 of every tensor (name, dtype, shape and bytes)
//! inside the training-state JSON, and the SHA-256 of that JSON under a second key. [`load`]
//! checks both before using anything, so a flipped bit anywhere is an error that names the
//! file and what failed (the training state, or which tensor) instead of a silently different
//! run. It then checks the tensors and the optimiser's buffers (names, shapes) against the model.

use crate::config::Resolved;
use crate::optim::OptimizerRecord;
use crate::params::{Named, named_tensors, replace_tensors};
use crate::state::TrainState;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use crate::run_dir::{CHECKPOINT_FILE, CRASH_IN_WRITE_ENV, write_atomic};

#[derive(Serialize, Deserialize)]
struct Meta {
    format: u32,
    state: TrainState,
    optimizer_step: u64,
    optimizer_last_lr: Option<f64>,
    resolved: Resolved,
    /// SHA-256 (hex) of every tensor: name, dtype, shape and bytes ([`tensor_sha256`]).
    #[serde(default)]
    tensors: BTreeMap<String, String>,
}

/// Format 2: integrity hashes. Format 1 (no hashes) is still read, unverified.
const FORMAT: u32 = 2;
/// Metadata key of the training state (JSON).
pub const META_KEY: &str = "noisescale";
/// Metadata key of the training state's SHA-256 (hex).
pub const META_SHA256_KEY: &str = "noisescale_sha256";

/// Everything restored from a checkpoint, besides the model.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Where training stands: position, counters, estimator and adaptive state.
    pub state: TrainState,
    /// Step count, last ε and buffers, so that the optimiser continues exactly.
    pub optimizer: OptimizerRecord,
    /// The settings of the run that wrote it.
    pub resolved: Resolved,
}

impl Loaded {
    /// Checks that the run described by `resolved` may continue from this checkpoint (read from
    /// `path`): the same config (data directory and device aside), the same training-set size
    /// N and the same resolved schedule.
    pub fn check_resume(&self, path: &Path, resolved: &Resolved) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        if !self.resolved.config.same_run(&resolved.config) {
            bail!(
                "{}: the checkpoint was written with another configuration; compare {} with the config given",
                path.display(),
                dir.join(crate::run_dir::CONFIG_FILE).display()
            );
        }
        let (was, now) = (self.resolved.dataset_size, resolved.dataset_size);
        if was != now {
            bail!(
                "{}: the checkpoint was written for a training set of N = {was} samples, but the data now given ({}) holds N = {now}: resuming would follow another schedule; point --data at the data set the run started with",
                path.display(),
                resolved.config.data.dir.display()
            );
        }
        if self.resolved.schedule != resolved.schedule {
            bail!(
                "{}: the schedule resolved now differs from the one the checkpoint was written under (N = {now} both times); compare {} with `noisescale schedule` for this config",
                path.display(),
                dir.join(crate::run_dir::SCHEDULE_FILE).display()
            );
        }
        Ok(())
    }
}

/// `v` as little-endian bytes, as safetensors stores f32.
pub(crate) fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) of one tensor: its name, dtype, shape and little-endian bytes, so that a
/// tensor renamed, reshaped or with any bit changed no longer matches.
pub fn tensor_sha256(name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(format!("{dtype:?}").as_bytes());
    h.update((shape.len() as u64).to_le_bytes());
    for d in shape {
        h.update((*d as u64).to_le_bytes());
    }
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
    hex(&h.finalize())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The checkpoint file's bytes for `model`, the optimiser record and the state.
pub fn to_bytes<M: Module>(
    model: &M,
    optimizer: &OptimizerRecord,
    state: &TrainState,
    resolved: &Resolved,
) -> Result<Vec<u8>> {
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
        tensors: tensors
            .iter()
            .map(|(k, (shape, bytes))| (k.clone(), tensor_sha256(k, Dtype::F32, shape, bytes)))
            .collect(),
    };
    let meta_json = serde_json::to_string(&meta)?;
    let mut info = HashMap::new();
    info.insert(
        META_SHA256_KEY.to_string(),
        sha256_hex(meta_json.as_bytes()),
    );
    info.insert(META_KEY.to_string(), meta_json);
    safetensors::serialize(views, Some(info))
        .map_err(|e| anyhow::anyhow!("serialising checkpoint: {e:?}"))
}

/// Saves `model`, the optimiser record and the state to `path` atomically.
pub fn save<M: Module>(
    path: &Path,
    model: &M,
    optimizer: &OptimizerRecord,
    state: &TrainState,
    resolved: &Resolved,
) -> Result<()> {
    write_atomic(path, &to_bytes(model, optimizer, state, resolved)?)
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
    load_bytes(path, &bytes, model, device)
}

/// Like [`load`], from the file's bytes (`path` names it in errors). Checks, in order: the
/// safetensors structure, the training state's SHA-256, its format, every tensor's SHA-256,
/// the tensors' names, dtypes and shapes against the model, the optimiser's buffers against
/// the model and the optimiser kind, and the position against the schedule.
pub fn load_bytes<M: Module>(
    path: &Path,
    bytes: &[u8],
    model: M,
    device: &Device,
) -> Result<(M, Loaded)> {
    let file = path.display();
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        anyhow::anyhow!("{file}: not a valid checkpoint (corrupt or truncated safetensors: {e:?})")
    })?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("{file}: {e:?}"))?;
    let metadata = header.metadata().as_ref();
    let meta_json = metadata
        .and_then(|m| m.get(META_KEY))
        .with_context(|| format!("{file}: no noisescale training state in its metadata"))?;
    match metadata.and_then(|m| m.get(META_SHA256_KEY)) {
        Some(recorded) => {
            let actual = sha256_hex(meta_json.as_bytes());
            if &actual != recorded {
                bail!(
                    "{file}: the training state (metadata) fails its integrity check: SHA-256 {actual}, recorded {recorded}; the file is corrupt"
                );
            }
        }
        None => {
            // Only format 1 predates the hashes.
            let format = serde_json::from_str::<serde_json::Value>(meta_json)
                .ok()
                .and_then(|v| v.get("format").and_then(|f| f.as_u64()));
            if format != Some(1) {
                bail!(
                    "{file}: the training state (metadata) has no integrity hash ({META_SHA256_KEY}); the file is corrupt"
                );
            }
        }
    }
    let meta: Meta = serde_json::from_str(meta_json)
        .with_context(|| format!("{file}: unreadable training state"))?;
    if meta.format != FORMAT && meta.format != 1 {
        bail!(
            "{file}: checkpoint format {} is not supported (expected {FORMAT})",
            meta.format
        );
    }
    if meta.format >= 2 {
        for name in st.names() {
            let view = st
                .tensor(name)
                .map_err(|e| anyhow::anyhow!("{file}: tensor {name}: {e:?}"))?;
            let Some(recorded) = meta.tensors.get(name) else {
                bail!(
                    "{file}: tensor {name} is not listed in the training state; the file is corrupt"
                );
            };
            if &tensor_sha256(name, view.dtype(), view.shape(), view.data()) != recorded {
                bail!(
                    "{file}: tensor {name} fails its integrity check (SHA-256 mismatch); the file is corrupt"
                );
            }
        }
        if let Some(name) = meta
            .tensors
            .keys()
            .find(|k| !st.names().iter().any(|n| n == k))
        {
            bail!(
                "{file}: tensor {name}, listed in the training state, is missing; the file is corrupt"
            );
        }
    }
    let expected: BTreeMap<String, (Vec<usize>, bool)> = named_tensors(&model)
        .into_iter()
        .map(|n| (n.name, (n.shape, n.trainable)))
        .collect();
    let mut values: HashMap<String, Tensor<1>> = HashMap::new();
    let mut buffers = BTreeMap::new();
    let mut names = st.names();
    names.sort();
    for name in names {
        let view = st
            .tensor(name)
            .map_err(|e| anyhow::anyhow!("{file}: tensor {name}: {e:?}"))?;
        let data = f32s(path, name, &view)?;
        if let Some(p) = name.strip_prefix("model/") {
            match expected.get(p) {
                None => bail!(
                    "{file}: tensor {name} is not part of the model: the checkpoint is of another model"
                ),
                Some((shape, _)) if shape.as_slice() != view.shape() => bail!(
                    "{file}: tensor {name} has shape {:?}, the model needs {shape:?}: the checkpoint is of another model",
                    view.shape()
                ),
                _ => {}
            }
            let len = data.len();
            values.insert(
                p.to_string(),
                Tensor::from_data(TensorData::new(data, [len]), device),
            );
        } else if let Some(k) = name.strip_prefix("optim/") {
            buffers.insert(k.to_string(), data);
        } else {
            bail!(
                "{file}: tensor {name} is neither model/ nor optim/: not a noisescale checkpoint"
            );
        }
    }
    for name in expected.keys() {
        if !values.contains_key(name) {
            bail!(
                "{file}: tensor {name} of the model is missing: the checkpoint is of another model"
            );
        }
    }
    check_buffers(path, &meta.resolved, &buffers, &expected)?;
    check_state(path, &meta.state, &meta.resolved)?;
    let (model, missing) = replace_tensors(model, &mut values);
    if !missing.is_empty() {
        bail!("{file}: tensors missing: {missing:?}");
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

/// The optimiser's buffers must be `PARAM#KIND` for trainable parameters of the model, of the
/// kinds the optimiser keeps (`v`; Adam's `m1` and `m2`, both), with the parameter's length.
fn check_buffers(
    path: &Path,
    resolved: &Resolved,
    buffers: &BTreeMap<String, Vec<f32>>,
    model: &BTreeMap<String, (Vec<usize>, bool)>,
) -> Result<()> {
    use crate::optim::OptimizerKind;
    let file = path.display();
    let kind = resolved.config.optimizer.kind;
    let kinds: &[&str] = match kind {
        OptimizerKind::Sgd | OptimizerKind::Momentum | OptimizerKind::Nesterov => &["v"],
        OptimizerKind::Adam | OptimizerKind::Adamw => &["m1", "m2"],
    };
    for (key, values) in buffers {
        let Some((param, buf)) = key.rsplit_once('#') else {
            bail!("{file}: optimiser buffer {key} is not named PARAMETER#BUFFER");
        };
        let Some((shape, trainable)) = model.get(param) else {
            bail!(
                "{file}: optimiser buffer {key} is for {param}, which is not a parameter of the model"
            );
        };
        if !trainable {
            bail!("{file}: optimiser buffer {key} is for {param}, which is not trained");
        }
        if !kinds.contains(&buf) {
            bail!(
                "{file}: optimiser buffer {key}: a {kind} optimiser keeps buffers {kinds:?}, not {buf:?}"
            );
        }
        let n: usize = shape.iter().product();
        if values.len() != n {
            bail!(
                "{file}: optimiser buffer {key} has {} values, parameter {param} has {n}",
                values.len()
            );
        }
        for other in kinds {
            let k = format!("{param}#{other}");
            if !buffers.contains_key(&k) {
                bail!("{file}: optimiser buffer {k} is missing (the file has {key})");
            }
        }
    }
    Ok(())
}

/// The position must lie within the schedule and the data.
fn check_state(path: &Path, state: &TrainState, resolved: &Resolved) -> Result<()> {
    let epochs = resolved.schedule.epochs().0;
    let n = resolved.dataset_size.0;
    let p = state.position;
    if p.epoch > epochs || p.offset > n || (p.epoch == epochs && p.offset > 0) {
        bail!(
            "{}: the training state's position (epoch {}, +{} samples) lies outside the run ({epochs} epochs of N = {n})",
            path.display(),
            p.epoch,
            p.offset
        );
    }
    if state.epoch.count > n {
        bail!(
            "{}: the training state counts {} samples in the unfinished epoch, more than N = {n}",
            path.display(),
            state.epoch.count
        );
    }
    Ok(())
}
