//! Optimisers that take ε, m and weight decay from the schedule at every step and keep their
//! state across every change of ε, B or m.
//!
//! burn's own optimisers fix momentum at construction and default to a dampening of 0.1, while
//! our references are PyTorch's (`torch.optim.SGD`, `Adam`, `AdamW`, dampening 0). The update
//! rules here are PyTorch's, written on burn tensors, with state keyed by parameter path
//! ([`crate::params`]) so that it checkpoints by name and restores exactly. On the CPU, each
//! update runs as one pass over the parameter instead ([`crate::kernels::update`]), with the
//! same bits, once its state exists (from the first step for plain SGD, which has none).
//!
//! # Momentum and the paper's accumulation variable
//! The paper (Smith et al. 2018, §3) writes momentum as `ΔA = −(1−m)A + dĈ/dw`, `Δw = −εA`, that
//! is `A ← m·A + g`, `w ← w − ε·A`: exactly PyTorch's heavy-ball form `v ← m·v + d`,
//! `w ← w − ε·v` (`d = g + wd·w`), so `v` *is* the paper's `A`. Its noise scale is
//! `g = ε/(1−m)·(N/B − 1)`. In this form a change of ε acts at once on the whole velocity, which is
//! what Goyal et al. (2017, §2.1) obtain with "momentum correction" in the other common form
//! `u ← m·u + ε·d`, `w ← w − u`. [`OptimizerConfig::velocity_rescale`] (off by default, as
//! PyTorch) gives the uncorrected behaviour of that form instead: when ε changes from ε₀ to ε₁ the
//! velocity is multiplied by ε₀/ε₁, so that the step already in flight, ε·v, is kept.
//!
//! Nesterov (PyTorch form): `v ← m·v + d`, `w ← w − ε·(d + m·v)`. Adam (Kingma & Ba, PyTorch
//! form, bias-corrected with the β1 in force at each step): `m1 ← β1·m1 + (1−β1)·d`,
//! `m2 ← β2·m2 + (1−β2)·d²`, `w ← w − ε/(1−β1ᵗ) · m1 / (√m2/√(1−β2ᵗ) + eps)`. AdamW decays
//! the weights directly, `w ← w·(1 − ε·wd)`, before the Adam step (Loshchilov & Hutter).

use crate::kernels::update;
use crate::params::Grads;
use crate::schedule::Hyper;
use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The update rule, `optimizer.kind` in the TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// Plain SGD: `w ← w − ε·d` (the schedule's momentum must be 0).
    Sgd,
    /// Heavy-ball momentum, PyTorch form.
    #[default]
    Momentum,
    /// Nesterov momentum, PyTorch form.
    Nesterov,
    /// Adam with L2 weight decay added to the gradient; the schedule's momentum is β1.
    Adam,
    /// AdamW (decoupled weight decay); the schedule's momentum is β1.
    Adamw,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Momentum => "momentum",
            OptimizerKind::Nesterov => "nesterov",
            OptimizerKind::Adam => "adam",
            OptimizerKind::Adamw => "adamw",
        })
    }
}

/// The `[optimizer]` table: the update rule and the settings the schedule does not drive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Update rule (default: heavy-ball momentum).
    #[serde(default)]
    pub kind: OptimizerKind,
    /// L2 weight decay (decoupled for AdamW).
    #[serde(default)]
    pub weight_decay: f64,
    /// Adam's β2.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Adam's ε (added to the denominator).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Rescale the velocity by ε_old/ε_new when ε changes (see the module docs); off = PyTorch.
    #[serde(default)]
    pub velocity_rescale: bool,
    /// Which parameters weight decay applies to (default all).
    #[serde(default, skip_serializing_if = "DecayOn::is_all")]
    pub decay_on: DecayOn,
    /// Clip the gradient's global L2 norm to this (`torch.nn.utils.clip_grad_norm_`), after the
    /// all-reduce and after the noise scale is read; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
}

/// Which parameters weight decay applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecayOn {
    /// Every parameter (PyTorch's default for one parameter group).
    #[default]
    All,
    /// Weight matrices and convolution kernels only: not biases (or any 1-d parameter), norm
    /// layers' scales and shifts, nor embeddings (the language-model convention of nanoGPT and
    /// Megatron-LM).
    Matrices,
}

impl DecayOn {
    fn is_all(&self) -> bool {
        *self == DecayOn::All
    }

    /// Whether a parameter of rank `rank` inside modules of the types `containers` (burn's
    /// `Struct:<name>` container types, outermost first) is decayed.
    pub fn decays(self, rank: usize, containers: &[String]) -> bool {
        match self {
            DecayOn::All => true,
            DecayOn::Matrices => {
                let exempt = |c: &String| {
                    let name = c.strip_prefix("Struct:").unwrap_or(c);
                    name == "Embedding" || name.ends_with("Norm")
                };
                rank >= 2 && !containers.iter().any(exempt)
            }
        }
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does (coefficient `max_norm / (norm + 1e-6)`, only where
/// below 1). Returns the norm before clipping, from [`Grads::sq_norm`] (the noise-scale
/// estimator's: squares summed per tensor on the device, one transfer).
pub fn clip_grad_norm(grads: &mut Grads, max_norm: f64) -> f64 {
    let norm = grads.sq_norm().sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (_, g) in &mut grads.tensors {
            *g = g.clone().mul_scalar(coef as f32);
        }
    }
    norm
}

fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Momentum,
            weight_decay: 0.0,
            beta2: default_beta2(),
            eps: default_eps(),
            velocity_rescale: false,
            decay_on: DecayOn::All,
            clip_grad_norm: None,
        }
    }
}

impl OptimizerConfig {
    /// Checks the settings, naming the key and the allowed range.
    pub fn validate(&self) -> Result<()> {
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            bail!(
                "optimizer.weight_decay = {} is out of range: must be a finite number >= 0",
                self.weight_decay
            );
        }
        if !(0.0..1.0).contains(&self.beta2) {
            bail!(
                "optimizer.beta2 = {} is out of range: must be in [0, 1)",
                self.beta2
            );
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            bail!(
                "optimizer.eps = {} is out of range: must be a finite number > 0",
                self.eps
            );
        }
        if let Some(c) = self.clip_grad_norm
            && !(c > 0.0 && c.is_finite())
        {
            bail!("optimizer.clip_grad_norm = {c} is out of range: must be a finite number > 0");
        }
        Ok(())
    }

    /// A fresh optimiser with empty state.
    pub fn init(&self) -> Optimizer {
        Optimizer {
            config: self.clone(),
            state: OptimizerState::default(),
        }
    }
}

/// Everything an optimiser remembers between steps.
#[derive(Debug, Clone, Default)]
pub struct OptimizerState {
    /// Steps taken: Adam's t in its bias corrections 1 − βᵗ.
    pub step: u64,
    /// ε of the last step (for the optional velocity rescale).
    pub last_lr: Option<f64>,
    /// Per-parameter buffers: velocity (`v`), or Adam's first and second moments (`m1`, `m2`),
    /// keyed by `"{param path}#{buffer}"`, flattened.
    pub buffers: HashMap<String, Tensor<1>>,
}

/// A host copy of [`OptimizerState`] for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct OptimizerRecord {
    /// [`OptimizerState::step`], restored on resume so Adam's bias correction continues.
    pub step: u64,
    /// ε of the last step.
    pub last_lr: Option<f64>,
    /// Buffers in a stable order.
    pub buffers: BTreeMap<String, Vec<f32>>,
}

/// An optimiser: its settings and its state.
#[derive(Debug, Clone)]
pub struct Optimizer {
    /// The `[optimizer]` table it was built from.
    pub config: OptimizerConfig,
    /// Step count, last ε and per-parameter buffers, checkpointed with the model.
    pub state: OptimizerState,
}

struct StepMapper<'a> {
    path: Vec<String>,
    /// The container types of `path` (burn's `Struct:<name>`), for [`DecayOn`].
    containers: Vec<String>,
    grads: HashMap<String, Tensor<1>>,
    opt: &'a mut Optimizer,
    hyper: Hyper,
    rescale: Option<f64>,
}

impl ModuleMapper for StepMapper<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let decay = self.opt.config.decay_on.decays(D, &self.containers);
        let Some(grad) = self.grads.remove(&name) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let w: Tensor<1> = tensor.inner().reshape([n]);
        let device = w.device();
        let w = self.opt.update(
            &name,
            w,
            grad.to_device(&device),
            self.hyper,
            self.rescale,
            decay,
        );
        let mut value: Tensor<D> = Tensor::from_inner(w.reshape(shape));
        if require_grad {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Whether [`Optimizer::update`] takes the one-pass kernel ([`update`]) for these tensors.
fn fusable(tensors: &[&Tensor<1>]) -> bool {
    #[cfg(test)]
    if tests::TENSOR_OPS_ONLY.with(|only| only.get()) {
        return false;
    }
    let fused = update::supports(tensors);
    #[cfg(test)]
    tests::FUSED_CALLS.with(|calls| calls.set(calls.get() + usize::from(fused)));
    fused
}

impl Optimizer {
    /// Applies one update to every parameter of `module` that has a gradient in `grads`, with
    /// the schedule's ε and m in force (`hyper.batch_size` is the data's business, not the
    /// optimiser's). On the CPU it runs on a thread of rayon's pool, as
    /// `train::forward_backward` does.
    pub fn step<M: Module>(&mut self, module: M, grads: Grads, hyper: Hyper) -> M {
        // The module's device decides, since that is where the updated parameters live; a
        // module spread over several devices stays on the calling thread.
        match module.devices().as_slice() {
            [device] => {
                crate::device::on_compute_thread(device, || self.step_here(module, grads, hyper))
            }
            _ => self.step_here(module, grads, hyper),
        }
    }

    /// [`Optimizer::step`] on the calling thread.
    fn step_here<M: Module>(&mut self, module: M, grads: Grads, hyper: Hyper) -> M {
        let rescale = self.begin_step(hyper.lr);
        let mut mapper = StepMapper {
            path: Vec::new(),
            containers: Vec::new(),
            grads: grads.tensors.into_iter().collect(),
            opt: self,
            hyper,
            rescale,
        };
        module.map(&mut mapper)
    }

    /// Counts a step at ε = `lr` and returns the velocity's rescaling factor ε_old/ε_new, when
    /// [`OptimizerConfig::velocity_rescale`] is on and ε changed (see the module docs).
    fn begin_step(&mut self, lr: f64) -> Option<f64> {
        self.state.step += 1;
        let rescale = match self.state.last_lr {
            Some(old) if self.config.velocity_rescale && old != lr => Some(old / lr),
            _ => None,
        };
        self.state.last_lr = Some(lr);
        rescale
    }

    /// The update of one flattened parameter `w` with gradient `g` (weight decay applied where
    /// `decay`), on the calling thread;
    /// [`Optimizer::step`] calls it on a compute thread, whose denormal mode the one-pass
    /// kernel's other threads share.
    pub fn update(
        &mut self,
        name: &str,
        w: Tensor<1>,
        g: Tensor<1>,
        hyper: Hyper,
        rescale: Option<f64>,
        decay: bool,
    ) -> Tensor<1> {
        let wd = if decay { self.config.weight_decay } else { 0.0 };
        let (lr, m) = (hyper.lr, hyper.momentum);
        // Compute in the parameter's precision whatever the gradient's.
        let g = if g.dtype() != w.dtype() {
            g.cast(w.dtype())
        } else {
            g
        };
        let buffers = &mut self.state.buffers;
        match self.config.kind {
            OptimizerKind::Sgd | OptimizerKind::Momentum | OptimizerKind::Nesterov => {
                let plain = self.config.kind == OptimizerKind::Sgd && m == 0.0;
                let key = format!("{name}#v");
                let v = if plain { None } else { buffers.remove(&key) };
                let sgd = update::Sgd {
                    lr: lr as f32,
                    weight_decay: (wd != 0.0).then_some(wd as f32),
                };
                // One pass on the CPU (`kernels::update`), for momentum once the velocity
                // exists; the operations below otherwise, which give the same bits.
                match v {
                    None if plain && fusable(&[&w, &g]) => {
                        return update::sgd(w, g, sgd);
                    }
                    Some(v) if fusable(&[&w, &g, &v]) => {
                        let rule = update::Momentum {
                            sgd,
                            momentum: m as f32,
                            rescale: rescale.map(|r| r as f32),
                            nesterov: self.config.kind == OptimizerKind::Nesterov,
                        };
                        let (w, v) = update::momentum(w, g, v, rule);
                        buffers.insert(key, v);
                        return w;
                    }
                    _ => {}
                }
                let d = if wd != 0.0 {
                    g + w.clone().mul_scalar(wd)
                } else {
                    g
                };
                if plain {
                    return w - d.mul_scalar(lr);
                }
                // PyTorch initialises the buffer with the first d (no dampening).
                let v = match v {
                    Some(v) => {
                        let v = match rescale {
                            Some(r) => v.mul_scalar(r),
                            None => v,
                        };
                        v.mul_scalar(m) + d.clone()
                    }
                    None => d.clone(),
                };
                buffers.insert(key, v.clone());
                let step = if self.config.kind == OptimizerKind::Nesterov {
                    d + v.mul_scalar(m)
                } else {
                    v
                };
                w - step.mul_scalar(lr)
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let t = self.state.step as i32;
                let (b1, b2, eps) = (m, self.config.beta2, self.config.eps);
                let adamw = self.config.kind == OptimizerKind::Adamw;
                let bc1 = 1.0 - b1.powi(t);
                let bc2 = 1.0 - b2.powi(t);
                let k1 = format!("{name}#m1");
                let k2 = format!("{name}#m2");
                let (m1, m2) = match (buffers.remove(&k1), buffers.remove(&k2)) {
                    (Some(m1), Some(m2)) if fusable(&[&w, &g, &m1, &m2]) => {
                        let rule = update::Adam {
                            weight_decay: (!adamw && wd != 0.0).then_some(wd as f32),
                            decay: adamw.then_some((1.0 - lr * wd) as f32),
                            beta1: (b1 as f32, (1.0 - b1) as f32),
                            beta2: (b2 as f32, (1.0 - b2) as f32),
                            sqrt_bc2: bc2.sqrt() as f32,
                            eps: eps as f32,
                            step: (lr / bc1) as f32,
                        };
                        let (w, m1, m2) = update::adam(w, g, m1, m2, rule);
                        buffers.insert(k1, m1);
                        buffers.insert(k2, m2);
                        return w;
                    }
                    moments => moments,
                };
                let (w, d) = if adamw {
                    (w.mul_scalar(1.0 - lr * wd), g)
                } else if wd != 0.0 {
                    let d = g + w.clone().mul_scalar(wd);
                    (w, d)
                } else {
                    (w, g)
                };
                let m1 = match m1 {
                    Some(m1) => m1.mul_scalar(b1) + d.clone().mul_scalar(1.0 - b1),
                    None => d.clone().mul_scalar(1.0 - b1),
                };
                let d2 = d.clone() * d;
                let m2 = match m2 {
                    Some(m2) => m2.mul_scalar(b2) + d2.mul_scalar(1.0 - b2),
                    None => d2.mul_scalar(1.0 - b2),
                };
                buffers.insert(k1, m1.clone());
                buffers.insert(k2, m2.clone());
                let denom = m2.sqrt().div_scalar(bc2.sqrt()).add_scalar(eps);
                w - (m1 / denom).mul_scalar(lr / bc1)
            }
        }
    }

    /// A host copy of the state, for a checkpoint.
    pub fn to_record(&self) -> OptimizerRecord {
        OptimizerRecord {
            step: self.state.step,
            last_lr: self.state.last_lr,
            buffers: self
                .state
                .buffers
                .iter()
                .map(|(k, v)| (k.clone(), v.to_data().iter::<f32>().collect()))
                .collect(),
        }
    }

    /// Restores the state from a record (on `device`).
    pub fn load_record(&mut self, record: &OptimizerRecord, device: &Device) {
        self.state = OptimizerState {
            step: record.step,
            last_lr: record.last_lr,
            buffers: record
                .buffers
                .iter()
                .map(|(k, v)| {
                    let data = TensorData::new(v.clone(), [v.len()]);
                    (k.clone(), Tensor::from_data(data, device))
                })
                .collect(),
        };
    }
}

#[cfg(test)]
mod tests;
