//! Our CPU kernels for burn's `flex` backend, as burn backend extensions (with their own backward
//! steps where they are differentiated): im2col + GEMM convolution ([`conv`]; a direct kernel,
//! [`direct_conv`], for the forward and input gradient of stride-1 layers with 16-pixel rows, the
//! weight gradient of those with 32), fused ghost batch normalisation ([`batch_norm`]), max
//! pooling ([`pool`]) and the optimiser's update in one pass ([`update`]). Each checks whether a
//! tensor runs on it (flex, f32) and otherwise falls back to burn's operations, which is what
//! every other backend (wgpu, cuda) runs.

pub mod batch_norm;
pub mod conv;
pub mod direct_conv;
pub(crate) mod flex;
mod im2col;
pub mod pool;
pub mod update;
