//! Named access to a module's tensors, in burn's visiting order.
//!
//! Optimiser state, gradient accumulation, checkpoints and the cross-rank checksum all key a
//! parameter by its dotted path in the module tree (`ResNet.blocks.0.conv1.weight`), which is
//! stable across processes and runs, unlike burn's random `ParamId`s. Tensors are handled
//! flattened (`Tensor<1>`) so that state of any rank fits one container and the gradients of a
//! whole model can be concatenated into one buffer for an all-reduce.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Tensor};
use std::collections::HashMap;

/// One named tensor, flattened, with its original shape.
#[derive(Debug, Clone)]
pub struct Named {
    /// Dotted path in the module tree.
    pub name: String,
    /// Shape before flattening, as checkpoints store and check it.
    pub shape: Vec<usize>,
    /// Whether the optimiser trains it (false for running statistics).
    pub trainable: bool,
    /// The values, flattened, without autodiff.
    pub value: Tensor<1>,
}

fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

struct Path(Vec<String>);
impl Path {
    fn name(&self) -> String {
        self.0.join(".")
    }
}

struct Collect {
    path: Path,
    out: Vec<Named>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.0.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().inner();
        let shape = value.dims().to_vec();
        let n = shape.iter().product::<usize>();
        let name = self.path.name();
        self.out.push(Named {
            trainable: !is_buffer(&name),
            name,
            shape,
            value: value.reshape([n]),
        });
    }
}

/// Every float tensor of `module` (parameters and running statistics), in visiting order.
pub fn named_tensors<M: Module>(module: &M) -> Vec<Named> {
    let mut v = Collect {
        path: Path(Vec::new()),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Initialises every lazily initialised parameter of `module` now, in visiting order.
///
/// burn draws a parameter's initial values on first access. Without this, a parameter first
/// touched by the forward pass would draw them after the trainer has reseeded the backend for
/// that pass, so the initial weights would depend on whether anything (a progress line counting
/// parameters, say) looked at the model before training.
pub fn materialize<M: Module>(module: &M) {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// Number of trainable parameters (running statistics excluded), as PyTorch's
/// `sum(p.numel() for p in model.parameters())` counts them.
pub fn trainable_params<M: Module>(module: &M) -> usize {
    named_tensors(module)
        .iter()
        .filter(|t| t.trainable)
        .map(|t| t.shape.iter().product::<usize>())
        .sum()
}

/// Gradients of the trainable parameters, flattened, in visiting order.
#[derive(Debug, Clone, Default)]
pub struct Grads {
    /// `(name, gradient)` pairs.
    pub tensors: Vec<(String, Tensor<1>)>,
}

struct GradCollect<'a> {
    grads: &'a Gradients,
    path: Path,
    out: Vec<(String, Tensor<1>)>,
}

impl ModuleVisitor for GradCollect<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.0.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.grad(self.grads) {
            let n = g.shape().num_elements();
            self.out.push((self.path.name(), g.reshape([n])));
        }
    }
}

impl Grads {
    /// Gathers the gradients of `module`'s parameters from burn's per-parameter gradients (what
    /// a `TrainStep` returns), in the module's order.
    pub fn from_params<M: Module>(module: &M, grads: &GradientsParams) -> Self {
        struct Collect<'a> {
            grads: &'a GradientsParams,
            path: Path,
            out: Vec<(String, Tensor<1>)>,
        }
        impl ModuleVisitor for Collect<'_> {
            fn enter_module(&mut self, name: &str, _container_type: &str) {
                self.path.0.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container_type: &str) {
                self.path.0.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(g) = self.grads.get::<D>(param.id) {
                    let n = g.shape().num_elements();
                    self.out.push((self.path.name(), g.reshape([n])));
                }
            }
        }
        let mut v = Collect {
            grads,
            path: Path(Vec::new()),
            out: Vec::new(),
        };
        module.visit(&mut v);
        Grads { tensors: v.out }
    }

    /// Gathers the gradients of `module`'s parameters from a backward pass.
    pub fn from_backward<M: Module>(module: &M, grads: &Gradients) -> Self {
        let mut v = GradCollect {
            grads,
            path: Path(Vec::new()),
            out: Vec::new(),
        };
        module.visit(&mut v);
        Grads { tensors: v.out }
    }

    /// Element-wise sum with another set of gradients of the same model (accumulation).
    /// Gradients that do not pair up name for name and shape for shape are an error, in release
    /// builds too: summing misaligned buffers would train silently wrong.
    pub fn accumulate(self, other: Grads) -> anyhow::Result<Self> {
        if self.tensors.is_empty() {
            return Ok(other);
        }
        if self.tensors.len() != other.tensors.len() {
            anyhow::bail!(
                "cannot accumulate gradients of {} tensors with gradients of {}",
                self.tensors.len(),
                other.tensors.len()
            );
        }
        let tensors = self
            .tensors
            .into_iter()
            .zip(other.tensors)
            .map(|((n, a), (m, b))| {
                if n != m || a.dims() != b.dims() {
                    anyhow::bail!(
                        "cannot accumulate gradients: {n} {:?} is paired with {m} {:?}",
                        a.dims(),
                        b.dims()
                    );
                }
                Ok((n, a + b))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Grads { tensors })
    }

    /// Zero gradients for every trainable parameter of `module`: what a rank with no samples in
    /// a batch contributes, so that it still joins the all-reduce with a buffer of the right size.
    pub fn zeros_like<M: Module>(module: &M) -> Self {
        let tensors = named_tensors(module)
            .into_iter()
            .filter(|t| t.trainable)
            .map(|t| (t.name, t.value.zeros_like()))
            .collect();
        Grads { tensors }
    }

    /// Multiplies every gradient by `factor`. A factor of 1 (a step's only micro-batch) leaves
    /// them as they are without a pass over them: `x·1 = x`, except that with denormals flushed
    /// (`cpu`) a denormal times 1 is 0, and every later operation reads a denormal as 0 there.
    pub fn scale(self, factor: f64) -> Self {
        if factor == 1.0 {
            return self;
        }
        Grads {
            tensors: self
                .tensors
                .into_iter()
                .map(|(n, g)| (n, g.mul_scalar(factor)))
                .collect(),
        }
    }

    /// `Σ g²` over every element: squares summed per tensor on the device (f32, one pass),
    /// the per-tensor sums added in f64 after one transfer.
    pub fn sq_norm(&self) -> f64 {
        self.sq_norm_parts().map_or(0.0, |parts| {
            parts.into_data().iter::<f32>().map(f64::from).sum()
        })
    }

    /// Each gradient's squared norm (f32, one element per tensor), left on the device so that
    /// a step can read it with everything else at once; `None` without gradients.
    pub fn sq_norm_parts(&self) -> Option<Tensor<1>> {
        let sums: Vec<Tensor<1>> = self
            .tensors
            .iter()
            .map(|(_, t)| (t.clone() * t.clone()).sum())
            .collect();
        (!sums.is_empty()).then(|| Tensor::cat(sums, 0))
    }

    /// Total number of gradient elements.
    pub fn numel(&self) -> usize {
        self.tensors
            .iter()
            .map(|(_, t)| t.shape().num_elements())
            .sum()
    }

    /// Whether every gradient element is finite.
    pub fn all_finite(&self) -> bool {
        self.tensors.iter().all(|(_, t)| {
            t.clone()
                .into_data()
                .iter::<f32>()
                .all(|x: f32| x.is_finite())
        })
    }

    /// All gradients concatenated into one host buffer (for an all-reduce): concatenated on
    /// the device, then read in one transfer.
    pub fn to_flat(&self) -> Vec<f32> {
        if self.tensors.is_empty() {
            return Vec::new();
        }
        let all: Vec<Tensor<1>> = self.tensors.iter().map(|(_, t)| t.clone()).collect();
        Tensor::cat(all, 0)
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 gradients")
    }

    /// The inverse of [`Grads::to_flat`]: replaces every gradient by its slice of `flat`,
    /// uploaded in one transfer and cut on the device.
    pub fn from_flat(&self, flat: &[f32]) -> Self {
        let Some((_, first)) = self.tensors.first() else {
            return Grads::default();
        };
        let data = burn::tensor::TensorData::new(flat[..self.numel()].to_vec(), [self.numel()]);
        let all = Tensor::<1>::from_data(data, &first.device());
        let mut offset = 0;
        let tensors = self
            .tensors
            .iter()
            .map(|(n, t)| {
                let len = t.shape().num_elements();
                let piece = all.clone().narrow(0, offset, len);
                offset += len;
                (n.clone(), piece)
            })
            .collect();
        Grads { tensors }
    }
}

struct Replace<'a> {
    path: Path,
    values: &'a mut HashMap<String, Tensor<1>>,
    missing: Vec<String>,
}

impl ModuleMapper for Replace<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.0.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.name();
        let Some(flat) = self.values.remove(&name) else {
            self.missing.push(name);
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.shape();
        let device = tensor.device();
        let mut value: Tensor<D> = flat.to_device(&device).reshape(shape);
        if require_grad {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Replaces `module`'s tensors by `values` (flattened, keyed by path). Returns the module and
/// the names that `values` did not cover; entries of `values` that were used are removed from it.
pub fn replace_tensors<M: Module>(
    module: M,
    values: &mut HashMap<String, Tensor<1>>,
) -> (M, Vec<String>) {
    let mut m = Replace {
        path: Path(Vec::new()),
        values,
        missing: Vec::new(),
    };
    let module = module.map(&mut m);
    (module, m.missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn grads(spec: &[(&str, usize)]) -> Grads {
        let device = Device::flex();
        Grads {
            tensors: spec
                .iter()
                .map(|(n, len)| (n.to_string(), Tensor::<1>::ones([*len], &device)))
                .collect(),
        }
    }

    /// Misaligned gradients are an error in release builds too, naming the tensors.
    #[test]
    fn accumulating_misaligned_gradients_is_an_error() {
        let a = || grads(&[("w", 3), ("b", 2)]);
        let sum = a().accumulate(a()).unwrap();
        assert_eq!(sum.to_flat(), vec![2.0; 5]);
        let err = a().accumulate(grads(&[("w", 3)])).unwrap_err().to_string();
        assert!(err.contains("2 tensors") && err.contains("1"), "{err}");
        let err = a()
            .accumulate(grads(&[("w", 3), ("c", 2)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("b [2] is paired with c [2]"), "{err}");
        let err = a()
            .accumulate(grads(&[("w", 4), ("b", 2)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("w [3] is paired with w [4]"), "{err}");
    }
}
