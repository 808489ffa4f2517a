//! Test-set evaluation, and the tensors of a batch.

use crate::data::{self, Dataset, Normalizer};
use crate::model::Model;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Loss and accuracy of `model` on `data` (no gradients, running statistics for batch norm).
pub fn evaluate(
    model: &Model,
    data: &Dataset,
    normalizer: &Normalizer,
    batch_size: usize,
    device: &Device,
) -> (f64, f64) {
    let model = burn::module::Module::valid(model);
    let device = device.clone().without_autodiff();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (mut loss_sum, mut correct, mut count) = (0.0f64, 0u64, 0u64);
    for batch in data::eval_batches(data, normalizer, batch_size) {
        let (x, y) = to_tensors(&batch.images, &batch.labels, batch.shape, &device);
        let logits = model.forward(x);
        let n = batch.len();
        loss_sum += loss_fn
            .forward(logits.clone(), y.clone())
            .into_scalar::<f32>() as f64
            * n as f64;
        correct += accuracy_count(logits, y);
        count += n as u64;
    }
    (loss_sum / count as f64, correct as f64 / count as f64)
}

pub(super) fn to_tensors(
    images: &[f32],
    labels: &[u8],
    shape: [usize; 4],
    device: &Device,
) -> (Tensor<4>, Tensor<1, Int>) {
    let x = Tensor::<4>::from_data(TensorData::new(images.to_vec(), shape), device);
    let y: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(y, [labels.len()]), device);
    (x, y)
}

pub(super) fn accuracy_count(logits: Tensor<2>, y: Tensor<1, Int>) -> u64 {
    let pred = logits.argmax(1).flatten::<1>(0, 1);
    pred.equal(y).int().sum().into_scalar::<i64>() as u64
}
