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
        let mean = result.mean.detach().inner();
        // PyTorch folds the unbiased variance into the running estimate.
        let bessel = if count > 1 {
            count as f64 / (count as f64 - 1.0)
        } else {
            1.0
        };
        let var = result.variance.detach().inner().mul_scalar(bessel);
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
        result.output
    }
}
