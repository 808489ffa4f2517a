//! The LeNet-style CNN of the PyTorch MNIST example: two 5×5 convolutions with max-pooling, then
//! two fully connected layers.

use crate::kernels::conv::conv2d;
use crate::kernels::pool::max_pool2d;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// conv c→32 5×5 (pad 2) → ReLU → pool 2 → conv 32→64 5×5 (pad 2) → ReLU → pool 2 → fc → ReLU → fc.
/// On 1×28×28 inputs: 1,663,370 parameters, as PyTorch counts them.
#[derive(Module, Debug)]
pub struct Cnn {
    /// 5×5 convolution, input channels to 32, padding 2.
    pub conv1: Conv2d,
    /// 5×5 convolution, 32 to 64 channels, padding 2.
    pub conv2: Conv2d,
    /// Max-pooling 2×2, stride 2.
    pub pool: MaxPool2d,
    /// Hidden fully connected layer.
    pub fc1: Linear,
    /// Output layer: `hidden` units to class logits.
    pub fc2: Linear,
}

impl Cnn {
    /// A CNN for `[channels, height, width]` inputs with a hidden layer of `hidden` units.
    pub fn new(input: [usize; 3], hidden: usize, classes: usize, device: &Device) -> Self {
        let [c, h, w] = input;
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [5, 5])
                .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                .init(device)
        };
        let flat = 64 * (h / 4) * (w / 4);
        Self {
            conv1: conv(c, 32),
            conv2: conv(32, 64),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(flat, hidden).init(device),
            fc2: LinearConfig::new(hidden, classes).init(device),
        }
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        // Pooling before ReLU: max and ReLU commute exactly (ReLU is monotone), outputs and
        // gradients included, and ReLU then runs on a quarter of the elements.
        let x = relu(max_pool2d(&self.pool, conv2d(&self.conv1, x)));
        let x = relu(max_pool2d(&self.pool, conv2d(&self.conv2, x)));
        let x: Tensor<2> = x.flatten(1, 3);
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}
