//! Wide residual networks (Zagoruyko & Komodakis 2016), the paper's CIFAR-10 model "16-4":
//! depth 16 (two pre-activation basic blocks per stage), widen factor 4, so widths 64/128/256
//! after a 16-channel stem; 1×1 convolution shortcuts where the width changes; optional dropout
//! between the two convolutions of a block. 2,748,890 parameters on CIFAR-10, as PyTorch counts.

use super::norm::GhostBatchNorm;
use super::resnet::{conv, global_avg_pool};
use crate::kernels::conv::conv2d;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// BN → ReLU → conv3×3 → BN → ReLU → (dropout) → conv3×3, plus the shortcut.
#[derive(Module, Debug)]
pub struct WideBlock {
    /// Pre-activation batch norm.
    pub bn1: GhostBatchNorm,
    /// First convolution (carries the stride).
    pub conv1: Conv2d,
    /// Batch norm after `conv1`, followed by ReLU and dropout.
    pub bn2: GhostBatchNorm,
    /// Dropout between the convolutions.
    pub dropout: Dropout,
    /// Second 3×3 convolution (stride 1), summed with the shortcut without a norm.
    pub conv2: Conv2d,
    /// 1×1 convolution when the shape changes.
    pub shortcut: Option<Conv2d>,
}

impl WideBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let o = relu(self.bn1.forward(x.clone()));
        // As the reference code: when the width changes, the shortcut reads the activated input.
        let skip = match &self.shortcut {
            Some(c) => conv2d(c, o.clone()),
            None => x,
        };
        let y = conv2d(&self.conv1, o);
        let y = self.dropout.forward(relu(self.bn2.forward(y)));
        conv2d(&self.conv2, y) + skip
    }
}

/// WRN-d-k for CIFAR.
#[derive(Module, Debug)]
pub struct WideResNet {
    /// 16-channel 3×3 stem.
    pub stem: Conv2d,
    /// All blocks, stage after stage.
    pub blocks: Vec<WideBlock>,
    /// Batch norm (then ReLU) after the last block, whose pre-activation output is unnormalised.
    pub bn: GhostBatchNorm,
    /// Linear classifier on the globally average-pooled `64·k` features.
    pub fc: Linear,
}

impl WideResNet {
    /// WRN of `depth` (6n + 4) and widen factor `widen`.
    pub fn new(
        channels: usize,
        depth: usize,
        widen: usize,
        dropout: f64,
        classes: usize,
        ghost: usize,
        device: &Device,
    ) -> Self {
        let n = (depth - 4) / 6;
        let mut width = 16;
        let mut blocks = Vec::new();
        for stage in 0..3 {
            let out = (16 << stage) * widen;
            for b in 0..n {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                blocks.push(WideBlock {
                    bn1: GhostBatchNorm::new(width, ghost, device),
                    conv1: conv(width, out, 3, stride, device),
                    bn2: GhostBatchNorm::new(out, ghost, device),
                    dropout: DropoutConfig::new(dropout).init(),
                    conv2: conv(out, out, 3, 1, device),
                    shortcut: (width != out || stride != 1)
                        .then(|| conv(width, out, 1, stride, device)),
                });
                width = out;
            }
        }
        Self {
            stem: conv(channels, 16, 3, 1, device),
            blocks,
            bn: GhostBatchNorm::new(width, ghost, device),
            fc: LinearConfig::new(width, classes).init(device),
        }
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = conv2d(&self.stem, x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.fc.forward(global_avg_pool(relu(self.bn.forward(x))))
    }
}
