//! CIFAR ResNets (He et al. 2016, §4.2): a 3×3 stem, three stages of basic blocks with widths
//! `w, 2w, 4w` (stride 2 between stages), global average pooling and a linear classifier.
//! Shortcuts that change shape are 1×1 projections followed by batch norm ("option B").
//! ResNet-8 has one block per stage (78,042 parameters with widths 16/32/64), ResNet-20 three.

use super::norm::GhostBatchNorm;
use crate::kernels::conv::conv2d;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// He initialisation (fan-out, ReLU gain), as the reference CIFAR ResNet and WRN code use.
pub(crate) fn conv(i: usize, o: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        })
        .init(device)
}

/// A 1×1 projection shortcut with batch norm.
#[derive(Module, Debug)]
pub struct Projection {
    /// 1×1 strided convolution.
    pub conv: Conv2d,
    /// Ghost batch norm on the projection's output, before the residual sum.
    pub bn: GhostBatchNorm,
}

/// conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// First convolution (carries the stride).
    pub conv1: Conv2d,
    /// Batch norm after `conv1`.
    pub bn1: GhostBatchNorm,
    /// Second 3×3 convolution (stride 1, width kept).
    pub conv2: Conv2d,
    /// Batch norm after `conv2`.
    pub bn2: GhostBatchNorm,
    /// Projection when the shape changes; identity otherwise.
    pub shortcut: Option<Projection>,
}

impl BasicBlock {
    fn new(i: usize, o: usize, stride: usize, ghost: usize, device: &Device) -> Self {
        let shortcut = (stride != 1 || i != o).then(|| Projection {
            conv: conv(i, o, 1, stride, device),
            bn: GhostBatchNorm::new(o, ghost, device),
        });
        Self {
            conv1: conv(i, o, 3, stride, device),
            bn1: GhostBatchNorm::new(o, ghost, device),
            conv2: conv(o, o, 3, 1, device),
            bn2: GhostBatchNorm::new(o, ghost, device),
            shortcut,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let skip = match &self.shortcut {
            Some(p) => p.bn.forward(conv2d(&p.conv, x.clone())),
            None => x.clone(),
        };
        let y = relu(self.bn1.forward(conv2d(&self.conv1, x)));
        let y = self.bn2.forward(conv2d(&self.conv2, y));
        relu(y + skip)
    }
}

/// A CIFAR ResNet of basic blocks.
#[derive(Module, Debug)]
pub struct ResNet {
    /// 3×3 stem convolution.
    pub stem: Conv2d,
    /// Ghost batch norm after the stem convolution, followed by ReLU.
    pub stem_bn: GhostBatchNorm,
    /// All blocks, stage after stage.
    pub blocks: Vec<BasicBlock>,
    /// Linear classifier on the globally average-pooled last-stage features (`4·base` wide).
    pub fc: Linear,
}

impl ResNet {
    /// A ResNet with `blocks_per_stage` blocks in each of three stages of widths
    /// `base, 2·base, 4·base`.
    pub fn new(
        channels: usize,
        base: usize,
        blocks_per_stage: usize,
        classes: usize,
        ghost: usize,
        device: &Device,
    ) -> Self {
        let mut blocks = Vec::new();
        let mut width = base;
        for stage in 0..3 {
            let out = base << stage;
            for b in 0..blocks_per_stage {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(width, out, stride, ghost, device));
                width = out;
            }
        }
        Self {
            stem: conv(channels, base, 3, 1, device),
            stem_bn: GhostBatchNorm::new(base, ghost, device),
            blocks,
            fc: LinearConfig::new(width, classes).init(device),
        }
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.stem_bn.forward(conv2d(&self.stem, x)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.fc.forward(global_avg_pool(x))
    }
}

/// Mean over the spatial dimensions: `[b, c, h, w] → [b, c]`.
pub(crate) fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
}
