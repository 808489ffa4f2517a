//! Evaluation: a model's mean loss and accuracy over an evaluation set.

use crate::data::EvalSet;
use crate::learner::{InferenceStep, StepItem, TrainStep, Trainable};
use burn::tensor::{Device, Tensor};

/// What an evaluation measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean loss over the set.
    pub loss: f64,
    /// Fraction of correct predictions; `None` where the model's output has no accuracy.
    pub accuracy: Option<f64>,
    /// Samples evaluated.
    pub samples: u64,
}

/// Mean loss and accuracy of `model` on `data` through its [`InferenceStep`] (no gradients, in
/// evaluation mode: running statistics for batch norm, no dropout), in batches of `batch_size`,
/// on the CPU on a thread of rayon's pool as `forward_backward`.
pub fn evaluate<M, E>(model: &M, data: &E, batch_size: usize, device: &Device) -> Evaluation
where
    M: Trainable,
    E: EvalSet<Input = <M as TrainStep>::Input>,
{
    crate::device::on_compute_thread(device, || evaluate_here(model, data, batch_size, device))
}

/// [`evaluate`] on the calling thread.
fn evaluate_here<M, E>(model: &M, data: &E, batch_size: usize, device: &Device) -> Evaluation
where
    M: Trainable,
    E: EvalSet<Input = <M as TrainStep>::Input>,
{
    let model = burn::module::Module::valid(model);
    let device = device.clone().without_autodiff();
    let (mut loss_sum, mut correct, mut count, mut counts) = (0.0f64, 0u64, 0u64, true);
    data.for_each_batch(batch_size, &device, &mut |input, n| {
        let item = InferenceStep::step(&model, input);
        // The mean loss and the correct count in one read: a GPU backend waits for its queue
        // at every read.
        let mut parts = vec![item.loss().inner().reshape([1])];
        match item.correct() {
            Some(c) => parts.push(c.reshape([1])),
            None => counts = false,
        }
        let read = Tensor::cat(parts, 0).into_data().convert::<f32>();
        let read = read.as_slice::<f32>().expect("f32 data");
        loss_sum += read[0] as f64 * n as f64;
        correct += read.get(1).map_or(0, |&c| c as u64);
        count += n as u64;
    });
    Evaluation {
        loss: loss_sum / count as f64,
        accuracy: counts.then(|| correct as f64 / count as f64),
        samples: count,
    }
}
