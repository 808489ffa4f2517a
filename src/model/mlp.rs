//! A multi-layer perceptron over flattened images.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// Fully connected layers with ReLU between them; the input image is flattened.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden layers, in order.
    pub hidden: Vec<Linear>,
    /// Output layer: last hidden width (or the flattened input) to class logits, no ReLU.
    pub output: Linear,
}

impl Mlp {
    /// An MLP from `inputs` features through `widths` hidden units to `classes` logits.
    pub fn new(inputs: usize, widths: &[usize], classes: usize, device: &Device) -> Self {
        let mut hidden = Vec::with_capacity(widths.len());
        let mut last = inputs;
        for &w in widths {
            hidden.push(LinearConfig::new(last, w).init(device));
            last = w;
        }
        Self {
            hidden,
            output: LinearConfig::new(last, classes).init(device),
        }
    }

    /// Logits `[batch, classes]` for images `[batch, c, h, w]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x: Tensor<2> = images.flatten(1, 3);
        for layer in &self.hidden {
            x = relu(layer.forward(x));
        }
        self.output.forward(x)
    }
}
