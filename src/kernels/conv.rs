//! 2-D convolution for the `flex` CPU backend as im2col + GEMM, forward and backward.
//!
//! burn-flex 0.22 computes a convolution's forward pass with small per-tile GEMMs after an NHWC
//! copy, its input gradient with a direct (non-GEMM) transposed-convolution loop, and its weight
//! gradient as a convolution whose "kernel" is the whole output gradient; together with
//! zero-filled scratch buffers this made conv nets run at 0.3–0.5× PyTorch (`bench/RESULTS.md`).
//! Here all three are the textbook GEMM formulation PyTorch's CPU path uses (Chellapilla et al.
//! 2006; `aten/src/ATen/native/ConvolutionMM2d.cpp`), one image at a time, images spread over the
//! rayon pool:
//!
//! * forward: `Y_b[O, P] = W[O, K] · col(X_b)[K, P]`
//! * input gradient: `dX_b = col2im(Wᵀ[K, O] · dY_b[O, P])`
//! * weight gradient: `dW[O, K] = Σ_b dY_b[O, P] · col(X_b)ᵀ[P, K]`, summed as its transpose
//!   `col(X_b) · dY_bᵀ` so that gemm packs the small `dY_b` block rather than `col`
//!
//! with `K = C·kh·kw` (the weight's own row-major order) and `P = Ho·Wo`. A 1×1, stride-1,
//! unpadded convolution uses the input itself as `col`. The operation is a burn backend
//! extension with its own backward step on `Autodiff<Flex>`; [`conv2d`] falls back to burn's
//! `Conv2d::forward` on other backends, dtypes, groups or dilations.

use super::flex::{contiguous_f32, f32_slice, from_f32, is_flex_f32};
use super::im2col::{Geometry, backward, forward};
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

/// The convolution as a burn backend extension: implemented for `Flex` and `Autodiff<Flex>`.
#[backend_extension(Flex, Autodiff)]
pub trait Im2colConv: Backend {
    /// Bias-free 2-D convolution of `x [N, C, H, W]` with `weight [O, C, kh, kw]`, groups 1,
    /// dilation 1, zero padding `(pad_h, pad_w)` on both sides; f32 only.
    fn im2col_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self>;
}

/// Applies `conv` to `x`: through [`Im2colConv`] on the flex backend (f32, groups 1, dilation 1,
/// symmetric padding), through `Conv2d::forward` otherwise. Same parameters, same result.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let Some((pad_h, pad_w)) = fast_path(conv, &x) else {
        return conv.forward(x);
    };
    let [stride_h, stride_w] = conv.stride;
    let y = <Dispatch as Im2colConv>::im2col_conv2d(
        x.into_dispatch(),
        conv.weight.val().into_dispatch(),
        stride_h,
        stride_w,
        pad_h,
        pad_w,
    );
    let y = Tensor::<4>::from_dispatch(y);
    match &conv.bias {
        Some(bias) => {
            let o = bias.dims()[0];
            y + bias.val().reshape([1, o, 1, 1])
        }
        None => y,
    }
}

/// Whether [`conv2d`] runs `conv` on `x` through our kernel (rather than burn's convolution):
/// lets tests show that they exercise the kernel.
pub fn uses_kernel(conv: &Conv2d, x: &Tensor<4>) -> bool {
    fast_path(conv, x).is_some()
}

/// The padding of a convolution [`Im2colConv`] can run, or `None` to use burn's own.
fn fast_path(conv: &Conv2d, x: &Tensor<4>) -> Option<(usize, usize)> {
    if !is_flex_f32(x) || conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    match &conv.padding {
        PaddingConfig2d::Valid => Some((0, 0)),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some((*top, *left))
        }
        _ => None,
    }
}

/// `t` as a contiguous f32 tensor, and its shape.
fn f32_contents(t: &FlexTensor) -> (FlexTensor, Vec<usize>) {
    let t = contiguous_f32(t, "im2col_conv2d");
    let shape = t.layout().shape().to_vec();
    (t, shape)
}

fn flex_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: [usize; 2],
    pad: [usize; 2],
) -> FlexTensor {
    let (x, xs) = f32_contents(x);
    let (w, ws) = f32_contents(weight);
    let g = Geometry::new(&xs, &ws, stride, pad);
    from_f32(
        forward(&g, f32_slice(&x), f32_slice(&w)),
        [g.n, g.o, g.oh, g.ow],
    )
}

impl Im2colConv for Flex {
    fn im2col_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self> {
        flex_forward(&x, &weight, [stride_h, stride_w], [pad_h, pad_w])
    }
}

/// The backward step recorded on the autodiff graph.
#[derive(Debug)]
struct Im2colConvBackward;

impl Backward<Flex, 2> for Im2colConvBackward {
    /// Checkpointed input and weight, stride, padding.
    type State = (NodeId, NodeId, [usize; 2], [usize; 2]);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, w_state, stride, pad) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
        let w = checkpointer.retrieve_node_output::<FlexTensor>(w_state);
        let (x, xs) = f32_contents(&x);
        let (w, ws) = f32_contents(&w);
        let (dy, _) = f32_contents(&dy);
        let g = Geometry::new(&xs, &ws, stride, pad);
        let (dx, dw) = backward(
            &g,
            f32_slice(&x),
            f32_slice(&w),
            f32_slice(&dy),
            node_x.is_some(),
            node_w.is_some(),
        );
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, from_f32(dx, [g.n, g.c, g.h, g.w]));
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, from_f32(dw, [g.o, g.c, g.kh, g.kw]));
        }
    }
}

impl<C: CheckpointStrategy> Im2colConv for Autodiff<Flex, C> {
    fn im2col_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self> {
        let (stride, pad) = ([stride_h, stride_w], [pad_h, pad_w]);
        match Im2colConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let w_state = prep.checkpoint(&weight);
                let y = flex_forward(x.primitive(), weight.primitive(), stride, pad);
                prep.finish((x_state, w_state, stride, pad), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(flex_forward(x.primitive(), weight.primitive(), stride, pad))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::assert_close;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution, Int};

    /// Forward output and the gradients of a weighted sum of it with respect to input, weight
    /// and bias, through `f`.
    fn run(
        conv: &Conv2d,
        x: &Tensor<4>,
        f: impl Fn(&Conv2d, Tensor<4>) -> Tensor<4>,
    ) -> [Vec<f32>; 4] {
        let x = x.clone().require_grad();
        let y = f(conv, x.clone());
        // A fixed, position-dependent weighting, the same for both implementations.
        let numel = y.shape().num_elements() as i64;
        let mix = Tensor::<1, Int>::arange(0..numel, &y.device())
            .float()
            .sin()
            .reshape(y.shape());
        let grads = (y.clone() * mix).sum().backward();
        let vec = |t: Option<Tensor<4>>| {
            t.map(|t| t.into_data().try_into_vec::<f32>().unwrap())
                .unwrap_or_default()
        };
        [
            y.into_data().try_into_vec::<f32>().unwrap(),
            vec(x.grad(&grads)),
            vec(conv.weight.grad(&grads)),
            conv.bias
                .as_ref()
                .and_then(|b| b.grad(&grads))
                .map(|t| t.into_data().try_into_vec::<f32>().unwrap())
                .unwrap_or_default(),
        ]
    }

    #[test]
    fn matches_burn_conv2d_forward_and_gradients() {
        let device = Device::flex().autodiff();
        // (N, C, H, W, O, kernel, stride, padding, bias)
        let cases = [
            (3, 3, 9, 8, 4, [3, 3], [1, 1], (1, 1), false),
            (2, 4, 8, 8, 6, [3, 3], [2, 2], (1, 1), true),
            (5, 2, 7, 7, 3, [1, 1], [1, 1], (0, 0), false),
            (2, 6, 8, 9, 5, [1, 1], [2, 2], (0, 0), true),
            (1, 2, 11, 10, 4, [5, 5], [1, 1], (2, 2), true),
            (4, 3, 6, 7, 2, [3, 2], [2, 1], (0, 1), false),
            (2, 1, 5, 5, 2, [5, 5], [1, 1], (0, 0), true),
            // More images than tasks: each task accumulates several images' weight gradients.
            (19, 3, 6, 6, 4, [3, 3], [1, 1], (1, 1), true),
            (17, 4, 5, 5, 3, [1, 1], [1, 1], (0, 0), false),
            // Stride 1 with 16-pixel output rows: the direct kernel for every pass (on AVX2 +
            // FMA), 13 channels in blocks of 6, 6 and 1 (4, 4, 4 and 1 for dW; on AVX-512 8 and
            // 5, dW through im2col).
            (2, 3, 16, 16, 13, [3, 3], [1, 1], (1, 1), true),
            // 32-pixel rows: every pass direct too.
            (2, 16, 32, 32, 8, [3, 3], [1, 1], (1, 1), true),
            // Images whose `col` is cut into row chunks, stride 1 (36-pixel rows: no direct
            // kernel, neither whole vectors nor a tail AVX-512 masks) and 2.
            (2, 16, 36, 36, 8, [3, 3], [1, 1], (1, 1), true),
            (3, 32, 40, 40, 4, [3, 3], [2, 2], (1, 1), false),
        ];
        for (n, c, h, w, o, kernel, stride, (ph, pw), bias) in cases {
            let conv = Conv2dConfig::new([c, o], kernel)
                .with_stride(stride)
                .with_padding(PaddingConfig2d::Explicit(ph, pw, ph, pw))
                .with_bias(bias)
                .init(&device);
            assert!(fast_path(&conv, &Tensor::zeros([1, c, h, w], &device)).is_some());
            let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            if c >= 16 {
                let g = Geometry::new(
                    &[n, c, h, w],
                    &[o, c, kernel[0], kernel[1]],
                    stride,
                    [ph, pw],
                );
                assert!(
                    super::super::im2col::row_chunks(&g).count() > 1,
                    "{c}×{h}×{w}"
                );
            }
            let ours = run(&conv, &x, conv2d);
            let burns = run(&conv, &x, |m, x| m.forward(x));
            for (what, (a, b)) in ["output", "input grad", "weight grad", "bias grad"]
                .iter()
                .zip(ours.iter().zip(&burns))
            {
                let case = format!("case {n}×{c}×{h}×{w} k{kernel:?} s{stride:?} p({ph},{pw})");
                assert_close(&format!("{what}, {case}"), a, b, 1e-4);
            }
        }
    }
}
