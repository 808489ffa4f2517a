//! Batch normalisation with PyTorch's running statistics, and ghost batch normalisation.
//!
//! burn's own `BatchNorm` folds the *biased* batch variance into `running_var`; PyTorch (our
//! reference) folds the unbiased one (`var · n/(n−1)`). This layer follows PyTorch, so that eval
//! logits match `../shared/testdata/tiny_cnn.json`.
//!
//! Ghost batch normalisation (Hoffer, Hubara & Soudry 2017, used by Smith et al. 2018 §5) splits a
//! training batch into chunks of `ghost_batch_size` samples and normalises each chunk with its own
//! statistics, so that the normalisation noise does not shrink as the batch size grows. Running
//! statistics are updated once per chunk, in order — exactly what PyTorch does when the module is
//! called once per chunk. Evaluation uses the running statistics. With `ghost_batch_size = 0` (or a
//! chunk at least as large as the batch) the layer is ordinary batch normalisation.

use crate::kernels::batch_norm;
use burn::module::{Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

/// A batch-norm layer over dimension 1 (channels), optionally with ghost batches.
#[derive(Module, Debug)]
pub struct GhostBatchNorm {
    /// Scale γ, one per channel.
    pub gamma: Param<Tensor<1>>,
    /// Shift β, one per channel.
    pub beta: Param<Tensor<1>>,
    /// Running mean used in evaluation.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running (unbiased) variance used in evaluation.
    pub running_var: RunningState<Tensor<1>>,
    /// Weight of the newest batch in the running averages (PyTorch `momentum`, default 0.1).
    pub momentum: f64,
    /// Added to the variance before the square root.
    pub epsilon: f64,
    /// Samples per ghost batch; 0 means the whole batch.
    pub ghost_batch_size: usize,
}

impl GhostBatchNorm {
    /// A layer over `channels` channels with γ = 1, β = 0, running mean 0 and variance 1.
    pub fn new(channels: usize, ghost_batch_size: usize, device: &Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([channels], device),
            beta: Initializer::Zeros.init([channels], device),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum: 0.1,
            epsilon: 1e-5,
            ghost_batch_size,
        }
    }

    /// Normalises `input` (`[batch, channels, ...]`): with batch statistics (per ghost chunk)
    /// when gradients are tracked, with running statistics otherwise.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        if !input.device().is_autodiff() {
            let device = input.device();
            return burn::tensor::module::batch_norm(
                input,
                self.gamma.val(),
                self.beta.val(),
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
                self.epsilon,
            );
        }
        let batch = input.dims()[0];
        let chunk = match self.ghost_batch_size {
            0 => batch,
            g => g.min(batch),
        };
        if batch_norm::supports(&input) {
            let per_sample: usize = input.dims()[2..].iter().product();
            let (output, mean, var) = batch_norm::ghost_batch_norm_train(
                input,
                self.gamma.val(),
                self.beta.val(),
                chunk,
                self.epsilon,
            );
            let (mean, var) = (mean.detach().inner(), var.detach().inner());
            for (g, start) in (0..batch).step_by(chunk).enumerate() {
                let count = chunk.min(batch - start) * per_sample;
                let row = |t: &Tensor<2>| t.clone().narrow(0, g, 1).flatten::<1>(0, 1);
                self.update_running(row(&mean), row(&var), count);
            }
            return output;
        }
        self.forward_composed(input, chunk)
    }

    /// Training-mode forward from burn's tensor operations (`batch_norm_train` per chunk): the
    /// path for backends without [`batch_norm`], and its reference in tests.
    fn forward_composed<const D: usize>(&self, input: Tensor<D>, chunk: usize) -> Tensor<D> {
        let batch = input.dims()[0];
        if chunk >= batch {
            return self.forward_chunk(input);
        }
        let parts: Vec<_> = input
            .split(chunk, 0)
            .into_iter()
            .map(|part| self.forward_chunk(part))
            .collect();
        Tensor::cat(parts, 0)
    }

    fn forward_chunk<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let dims = input.dims();
        let count: usize = dims[0] * dims[2..].iter().product::<usize>();
        let result = burn::tensor::module::batch_norm_train(
            input,
            self.gamma.val(),
            self.beta.val(),
            self.epsilon,
        );
        self.update_running(
            result.mean.detach().inner(),
            result.variance.detach().inner(),
            count,
        );
        result.output
    }

    /// Folds one chunk's mean and biased variance (over `count` values) into the running
    /// statistics as PyTorch does: `r ← (1 − m)·r + m·stat`, with the unbiased variance.
    fn update_running(&self, mean: Tensor<1>, var: Tensor<1>, count: usize) {
        // PyTorch folds the unbiased variance into the running estimate.
        let bessel = if count > 1 {
            count as f64 / (count as f64 - 1.0)
        } else {
            1.0
        };
        let var = var.mul_scalar(bessel);
        let m = self.momentum;
        let running_mean = self.running_mean.value_sync().inner();
        let running_var = self.running_var.value_sync().inner();
        let device = running_mean.device();
        self.running_mean.update(
            running_mean
                .mul_scalar(1.0 - m)
                .add(mean.to_device(&device).mul_scalar(m)),
        );
        self.running_var.update(
            running_var
                .mul_scalar(1.0 - m)
                .add(var.to_device(&device).mul_scalar(m)),
        );
        // Commit at once: burn's `RunningState` otherwise keeps the update thread-local until
        // the next read, and visitors (checkpoints, checksums) would see the previous value.
        self.running_mean.value_sync();
        self.running_var.value_sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::assert_close;
    use burn::tensor::Distribution;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().expect("f32")
    }

    /// The fused flex kernel against burn's composed operations: output, the three gradients and
    /// the running statistics, for whole-batch, even and uneven ghost chunks, 4-D and 2-D input.
    #[test]
    fn fused_matches_composed_batch_norm() {
        let device = Device::flex().autodiff();
        for (shape, ghost) in [
            (vec![6, 3, 5, 4], 0),
            (vec![8, 4, 3, 3], 4),
            (vec![7, 2, 4, 5], 3),
            (vec![10, 5], 4),
            // ResNet-8's planes on 12×12 images: 3×3 (all tail) and 12×12 (two blocks and a
            // lane group).
            (vec![6, 16, 3, 3], 0),
            (vec![12, 16, 3, 3], 6),
            (vec![6, 4, 12, 12], 0),
        ] {
            let channels = shape[1];
            let make = || {
                let mut bn = GhostBatchNorm::new(channels, ghost, &device);
                let gamma =
                    Tensor::<1>::random([channels], Distribution::Uniform(0.5, 1.5), &device);
                let beta =
                    Tensor::<1>::random([channels], Distribution::Uniform(-0.5, 0.5), &device);
                bn.gamma = Param::from_tensor(gamma);
                bn.beta = Param::from_tensor(beta);
                bn
            };
            let fused = make();
            let mut composed = make();
            composed.gamma = Param::from_tensor(fused.gamma.val());
            composed.beta = Param::from_tensor(fused.beta.val());
            let n: usize = shape.iter().product();
            let x = Tensor::<1>::random([n], Distribution::Normal(1.0, 2.0), &device);
            let mix = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
            let run = |bn: &GhostBatchNorm, fused_path: bool| {
                let x = x.clone().require_grad();
                let y = if shape.len() == 4 {
                    let s = [shape[0], shape[1], shape[2], shape[3]];
                    let xi = x.clone().reshape(s);
                    let y = if fused_path {
                        bn.forward(xi)
                    } else {
                        let chunk = if ghost == 0 { s[0] } else { ghost };
                        bn.forward_composed(xi, chunk)
                    };
                    y.reshape([n])
                } else {
                    let s = [shape[0], shape[1]];
                    let xi = x.clone().reshape(s);
                    let y = if fused_path {
                        bn.forward(xi)
                    } else {
                        bn.forward_composed(xi, if ghost == 0 { s[0] } else { ghost })
                    };
                    y.reshape([n])
                };
                let grads = (y.clone() * mix.clone()).sum().backward();
                [
                    values(y),
                    values(x.grad(&grads).expect("x grad")),
                    values(bn.gamma.grad(&grads).expect("gamma grad")),
                    values(bn.beta.grad(&grads).expect("beta grad")),
                    values(bn.running_mean.value()),
                    values(bn.running_var.value()),
                ]
            };
            let a = run(&fused, true);
            let b = run(&composed, false);
            for (what, (u, v)) in [
                "output",
                "input grad",
                "gamma grad",
                "beta grad",
                "running mean",
                "running var",
            ]
            .iter()
            .zip(a.iter().zip(&b))
            {
                assert_close(
                    &format!("{what}, shape {shape:?} ghost {ghost}"),
                    u,
                    v,
                    2e-4,
                );
            }
        }
    }

    /// The fused kernel gives bit-identical outputs, gradients and running statistics on pools
    /// of 1, 2, 16 and 32 threads (more threads than (chunk, channel) tasks included).
    #[test]
    fn fused_kernel_does_not_depend_on_the_thread_count() {
        let device = Device::flex().autodiff();
        let (shape, ghost) = ([12, 3, 5, 5], 4);
        let n: usize = shape.iter().product();
        let (x, mix) = crate::kernels::batch_norm::tests::sample_inputs(n);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                let bn = GhostBatchNorm::new(shape[1], ghost, &device);
                let x = Tensor::<1>::from_floats(x.as_slice(), &device).require_grad();
                let m = Tensor::<1>::from_floats(mix.as_slice(), &device);
                let y = bn.forward(x.clone().reshape(shape)).reshape([n]);
                let grads = (y.clone() * m).sum().backward();
                [
                    values(y),
                    values(x.grad(&grads).expect("x grad")),
                    values(bn.gamma.grad(&grads).expect("gamma grad")),
                    values(bn.beta.grad(&grads).expect("beta grad")),
                    values(bn.running_mean.value()),
                    values(bn.running_var.value()),
                ]
            })
        };
        let one = run(1);
        for threads in [2, 16, 32] {
            assert!(one == run(threads), "{threads} threads differ from 1");
        }
    }
}
