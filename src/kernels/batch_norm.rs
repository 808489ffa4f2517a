//! Training-mode (ghost) batch normalisation for the `flex` CPU backend as one fused operation.
//!
//! burn 0.22's default `batch_norm_train` and its backward are built from ~25 tensor operations,
//! four of which transpose the whole activation (`swap_dims(0, 1)` + reshape: a copy each), and
//! ghost batches add a `split` and a `cat`. Here each (ghost chunk, channel) pair is one rayon task
//! that reads its planes three times forward (mean, variance, output) and twice backward (both
//! sums in one pass, then the input gradient), the formulas of Ioffe & Szegedy (2015, §3) as
//! PyTorch's CPU kernel (`aten/src/ATen/native/Normalization.cpp`) computes them:
//!
//! * `x̂ = (x − μ_g) / √(σ²_g + ε)`, `y = γ x̂ + β`, with the biased chunk variance `σ²_g`;
//! * `dβ = Σ dy`, `dγ = Σ dy·x̂`, `dx = γ/√(σ²_g + ε) · (dy − mean_g(dy) − x̂ · mean_g(dy·x̂))`.
//!
//! The chunk statistics come back as `[G, C]` tensors for the running averages.

use super::flex::{contiguous_f32, f32_slice, from_f32, is_flex_f32};
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use multiversion::multiversion;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Fused ghost batch normalisation as a burn backend extension (`Flex`, `Autodiff<Flex>`).
#[backend_extension(Flex, Autodiff)]
pub trait FusedBatchNorm: Backend {
    /// Normalises `x [N, C, ...]` per chunk of `ghost` samples (the last may be shorter) and
    /// channel with the chunk's own statistics; returns `(y, mean [G, C], biased var [G, C])`.
    fn ghost_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        ghost: usize,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether [`ghost_batch_norm_train`] runs on `x` (flex backend, f32).
pub fn supports<const D: usize>(x: &Tensor<D>) -> bool {
    is_flex_f32(x) && D >= 2
}

/// `(y, mean [G, C], biased variance [G, C])` of training-mode ghost batch norm with chunks of
/// `ghost` samples (0: the whole batch), fused; see [`supports`].
pub fn ghost_batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    ghost: usize,
    epsilon: f64,
) -> (Tensor<D>, Tensor<2>, Tensor<2>) {
    let (y, mean, var) = <Dispatch as FusedBatchNorm>::ghost_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        ghost,
        epsilon,
    );
    (
        Tensor::from_dispatch(y),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(var),
    )
}

/// `[N, C, S]` view of an activation, and the chunking.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    s: usize,
    ghost: usize,
}

impl Geometry {
    fn new(shape: &[usize], ghost: usize) -> Self {
        assert!(
            shape.len() >= 2,
            "batch norm needs [N, C, ...], got {shape:?}"
        );
        let (n, c) = (shape[0], shape[1]);
        assert!(n > 0, "batch norm of an empty batch");
        let ghost = if ghost == 0 { n } else { ghost.min(n) };
        Self {
            n,
            c,
            s: shape[2..].iter().product(),
            ghost,
        }
    }

    fn chunks(&self) -> usize {
        self.n.div_ceil(self.ghost)
    }

    /// Samples in chunk `g`.
    fn rows(&self, g: usize) -> std::ops::Range<usize> {
        g * self.ghost..((g + 1) * self.ghost).min(self.n)
    }

    /// The `S`-element planes of channel `c` in chunk `g`, as offsets into `[N, C, S]`.
    fn planes(&self, g: usize, c: usize) -> impl Iterator<Item = usize> + '_ {
        self.rows(g).map(move |n| (n * self.c + c) * self.s)
    }

    fn count(&self, g: usize) -> f64 {
        (self.rows(g).len() * self.s) as f64
    }
}

/// An output buffer of `len` floats that rayon tasks fill in disjoint planes without zeroing it
/// first: every element is written exactly once before [`Output::finish`] hands the vector out.
struct Output {
    data: Vec<f32>,
    ptr: SharedPtr,
}

/// The buffer's start, shareable between tasks that write disjoint ranges.
#[derive(Clone, Copy)]
struct SharedPtr(*mut MaybeUninit<f32>);
// SAFETY: tasks write only the planes of their own (chunk, channel) pair, which are disjoint.
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl Output {
    fn new(len: usize) -> Self {
        let mut data = Vec::with_capacity(len);
        let ptr = SharedPtr(data.spare_capacity_mut().as_mut_ptr());
        Self { data, ptr }
    }

    /// The uninitialised plane `[offset, offset + len)`.
    ///
    /// # Safety
    /// `offset + len` must be within the buffer and no other live reference may overlap it.
    unsafe fn plane<'a>(ptr: SharedPtr, offset: usize, len: usize) -> &'a mut [MaybeUninit<f32>] {
        unsafe { std::slice::from_raw_parts_mut(ptr.0.add(offset), len) }
    }

    /// Marks the first `len` elements initialised and returns the buffer.
    ///
    /// # Safety
    /// Every one of the `len` elements must have been written.
    unsafe fn finish(mut self, len: usize) -> Vec<f32> {
        unsafe { self.data.set_len(len) };
        self.data
    }
}

/// Forward: `(y, mean, var)`; statistics accumulate in f64.
fn forward(
    g: &Geometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let y = Output::new(x.len());
    let out = y.ptr;
    let stats: Vec<(f32, f32)> = (0..g.chunks() * g.c)
        .into_par_iter()
        .map(|task| forward_task(g, x, gamma, beta, eps, out, task))
        .collect();
    let (mean, var) = stats.into_iter().unzip();
    // SAFETY: the (chunk, channel) tasks together wrote every plane of every sample once.
    (unsafe { y.finish(x.len()) }, mean, var)
}

/// One (ghost chunk, channel) task of [`forward`]: writes its planes of `y` and returns the
/// chunk's `(mean, var)`. Compiled for several instruction sets (AVX2, AVX-512, …) and picked at
/// run time, since the crate itself is built for baseline x86-64 (SSE2).
#[multiversion(targets = "simd")]
fn forward_task(
    g: &Geometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    out: SharedPtr,
    task: usize,
) -> (f32, f32) {
    let (chunk, c) = (task / g.c, task % g.c);
    let count = g.count(chunk);
    let sum: f64 = g.planes(chunk, c).map(|o| sum_f64(&x[o..o + g.s])).sum();
    let mean = sum / count;
    let sq: f64 = g
        .planes(chunk, c)
        .map(|o| sum_sq_dev_f64(&x[o..o + g.s], mean))
        .sum();
    let var = sq / count;
    let scale = gamma[c] as f64 / (var + eps).sqrt();
    let (scale, shift) = (scale as f32, (beta[c] as f64 - mean * scale) as f32);
    for o in g.planes(chunk, c) {
        // SAFETY: plane `o` belongs to this task's (chunk, channel) only.
        let dst = unsafe { Output::plane(out, o, g.s) };
        for (d, &v) in dst.iter_mut().zip(&x[o..o + g.s]) {
            d.write(v * scale + shift);
        }
    }
    (mean as f32, var as f32)
}

/// Independent f64 accumulators of the plane sums below. A sequential float sum is one chain of
/// dependent additions (about 4 cycles each) that the compiler may not reorder; sixteen lanes,
/// added together at the end, compile to two AVX-512 (four AVX2) vector chains. The fixed order
/// keeps the sums the same at every thread count and on every instruction set the tasks are
/// compiled for.
const LANES: usize = 16;

/// Terms computed per block before they are added into the lanes: the two loops (a map, then
/// vector additions) are shapes the compiler vectorises. Computing and adding each term in one
/// loop compiled to 2-lane vectors; with blocks (and the backward's two sums in one pass) the
/// backward went from 13.1% to 8.2% of ResNet-8's step at B = 128 (`perf`, AMD EPYC Zen 5).
const BLOCK: usize = 4 * LANES;

/// `[Σ f(a_i, b_i)[k] for k < K]` over two equally long planes, each sum in [`LANES`] f64 lanes:
/// lane `l` takes the elements `i ≡ l mod LANES` up to the last whole group of `LANES`, then the
/// lanes are added in order and the remaining `len mod LANES` elements one by one. Several sums
/// of one pass share its loads.
#[inline(always)]
fn lane_sums<const K: usize>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f64; K]) -> [f64; K] {
    assert_eq!(a.len(), b.len());
    let mut acc = [[0.0f64; LANES]; K];
    let whole = a.len() / BLOCK * BLOCK;
    for (u, v) in a[..whole]
        .chunks_exact(BLOCK)
        .zip(b[..whole].chunks_exact(BLOCK))
    {
        add_terms::<K, BLOCK>(&mut acc, u, v, &f);
    }
    // What is left of whole lane groups (up to three) goes into the same lanes.
    let groups = a.len() / LANES * LANES;
    for (u, v) in a[whole..groups]
        .chunks_exact(LANES)
        .zip(b[whole..groups].chunks_exact(LANES))
    {
        add_terms::<K, LANES>(&mut acc, u, v, &f);
    }
    let mut tail = [0.0f64; K];
    for (&u, &v) in a[groups..].iter().zip(&b[groups..]) {
        for (s, t) in tail.iter_mut().zip(f(u, v)) {
            *s += t;
        }
    }
    std::array::from_fn(|k| acc[k].iter().sum::<f64>() + tail[k])
}

/// Adds the terms of `N` elements (a multiple of [`LANES`]) into the lanes: first computed into a
/// block, then added lane group by lane group.
#[inline(always)]
fn add_terms<const K: usize, const N: usize>(
    acc: &mut [[f64; LANES]; K],
    u: &[f32],
    v: &[f32],
    f: &impl Fn(f32, f32) -> [f64; K],
) {
    let (u, v): (&[f32; N], &[f32; N]) = (u.try_into().unwrap(), v.try_into().unwrap());
    let mut terms = [[0.0f64; N]; K];
    for j in 0..N {
        let t = f(u[j], v[j]);
        for k in 0..K {
            terms[k][j] = t[k];
        }
    }
    for k in 0..K {
        for c in terms[k].chunks_exact(LANES) {
            for l in 0..LANES {
                acc[k][l] += c[l];
            }
        }
    }
}

/// `Σ v`.
#[inline(always)]
fn sum_f64(v: &[f32]) -> f64 {
    let [s] = lane_sums(v, v, |u, _| [u as f64]);
    s
}

/// `Σ (v − mean)²`.
#[inline(always)]
fn sum_sq_dev_f64(v: &[f32], mean: f64) -> f64 {
    let [s] = lane_sums(v, v, |u, _| {
        let d = u as f64 - mean;
        [d * d]
    });
    s
}

/// `(Σ dy, Σ (x − mu)·dy)` in one pass.
#[inline(always)]
fn sum_and_centered_dot_f64(x: &[f32], dy: &[f32], mu: f32) -> (f64, f64) {
    let [s, d] = lane_sums(x, dy, |v, g| [g as f64, ((v - mu) * g) as f64]);
    (s, d)
}

/// What the backward step reads: the forward pass's input, γ, chunk statistics `[G, C]` and ε,
/// and the output gradient.
struct BackwardInputs<'a> {
    g: &'a Geometry,
    x: &'a [f32],
    gamma: &'a [f32],
    mean: &'a [f32],
    var: &'a [f32],
    eps: f64,
    dy: &'a [f32],
}

/// One (ghost chunk, channel) task of [`backward`]: writes its planes of `dx` and returns its
/// `(Σ dy, Σ dy·x̂)`. Multiversioned like [`forward_task`].
#[multiversion(targets = "simd")]
fn backward_task(inputs: &BackwardInputs, out: SharedPtr, task: usize) -> (f64, f64) {
    let BackwardInputs {
        g,
        x,
        gamma,
        mean,
        var,
        eps,
        dy,
    } = *inputs;
    let (chunk, c) = (task / g.c, task % g.c);
    let count = g.count(chunk);
    let mu = mean[task];
    let inv_std = (1.0 / (var[task] as f64 + eps).sqrt()) as f32;
    let (mut sum_dy, mut sum_dy_xhat) = (0.0f64, 0.0f64);
    for o in g.planes(chunk, c) {
        let (xs, dys) = (&x[o..o + g.s], &dy[o..o + g.s]);
        let (s, dot) = sum_and_centered_dot_f64(xs, dys, mu);
        sum_dy += s;
        sum_dy_xhat += dot * inv_std as f64;
    }
    let k = gamma[c] * inv_std;
    let mean_dy = (sum_dy / count) as f32;
    let mean_dy_xhat = (sum_dy_xhat / count) as f32;
    for o in g.planes(chunk, c) {
        // SAFETY: plane `o` belongs to this task's (chunk, channel) only.
        let dst = unsafe { Output::plane(out, o, g.s) };
        for ((d, &v), &gy) in dst.iter_mut().zip(&x[o..o + g.s]).zip(&dy[o..o + g.s]) {
            let xhat = (v - mu) * inv_std;
            d.write(k * (gy - mean_dy - xhat * mean_dy_xhat));
        }
    }
    (sum_dy, sum_dy_xhat)
}

/// Backward: `(dx, dgamma, dbeta)`.
fn backward(inputs: &BackwardInputs) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (g, x) = (inputs.g, inputs.x);
    let dx = Output::new(x.len());
    let out = dx.ptr;
    let sums: Vec<(f64, f64)> = (0..g.chunks() * g.c)
        .into_par_iter()
        .map(|task| backward_task(inputs, out, task))
        .collect();
    let mut dgamma = vec![0.0f64; g.c];
    let mut dbeta = vec![0.0f64; g.c];
    for (task, (s_dy, s_dyx)) in sums.into_iter().enumerate() {
        dbeta[task % g.c] += s_dy;
        dgamma[task % g.c] += s_dyx;
    }
    let f32s = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    // SAFETY: the (chunk, channel) tasks together wrote every plane of every sample once.
    (unsafe { dx.finish(x.len()) }, f32s(dgamma), f32s(dbeta))
}

fn contiguous(t: &FlexTensor) -> FlexTensor {
    contiguous_f32(t, "fused batch norm")
}

fn flex_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    ghost: usize,
    eps: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let shape = x.layout().shape().to_vec();
    let g = Geometry::new(&shape, ghost);
    let (y, mean, var) = forward(&g, f32_slice(&x), f32_slice(&gamma), f32_slice(&beta), eps);
    let stats = vec![g.chunks(), g.c];
    (
        from_f32(y, shape),
        from_f32(mean, stats.clone()),
        from_f32(var, stats),
    )
}

impl FusedBatchNorm for Flex {
    fn ghost_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        ghost: usize,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        flex_forward(&x, &gamma, &beta, ghost, epsilon)
    }
}

/// The backward step recorded on the autodiff graph.
#[derive(Debug)]
struct FusedBatchNormBackward;

impl Backward<Flex, 3> for FusedBatchNormBackward {
    /// Checkpointed input and γ, the chunk statistics, ghost size, ε.
    type State = (NodeId, NodeId, FlexTensor, FlexTensor, usize, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x_state, gamma_state, mean, var, ghost, eps) = ops.state;
        let x = contiguous(&checkpointer.retrieve_node_output::<FlexTensor>(x_state));
        let gamma = contiguous(&checkpointer.retrieve_node_output::<FlexTensor>(gamma_state));
        let shape = x.layout().shape().to_vec();
        let g = Geometry::new(&shape, ghost);
        let (mean, var) = (contiguous(&mean), contiguous(&var));
        let (dx, dgamma, dbeta) = backward(&BackwardInputs {
            g: &g,
            x: f32_slice(&x),
            gamma: f32_slice(&gamma),
            mean: f32_slice(&mean),
            var: f32_slice(&var),
            eps,
            dy: f32_slice(&dy),
        });
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, from_f32(dx, shape));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, from_f32(dgamma, vec![g.c]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, from_f32(dbeta, vec![g.c]));
        }
    }
}

impl<C: CheckpointStrategy> FusedBatchNorm for Autodiff<Flex, C> {
    fn ghost_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        ghost: usize,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (y, mean, var) = flex_forward(
            x.primitive(),
            gamma.primitive(),
            beta.primitive(),
            ghost,
            epsilon,
        );
        let y = match FusedBatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma_state = prep.checkpoint(&gamma);
                prep.finish(
                    (
                        x_state,
                        gamma_state,
                        mean.clone(),
                        var.clone(),
                        ghost,
                        epsilon,
                    ),
                    y,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (
            y,
            FloatTensor::<Self>::new(mean),
            FloatTensor::<Self>::new(var),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic test planes of `n` values: inputs in [−5, 5.3) and gradients in [−0.5, 0.5),
    /// shared with `model::norm`'s tests.
    pub(crate) fn sample_inputs(n: usize) -> (Vec<f32>, Vec<f32>) {
        let x = (0..n)
            .map(|i| ((i * 7919) % 997) as f32 / 97.0 - 5.0)
            .collect();
        let dy = (0..n)
            .map(|i| ((i * 104729) % 991) as f32 / 991.0 - 0.5)
            .collect();
        (x, dy)
    }

    /// The lane sums against sequential f64 sums of the same terms, for plane lengths that are
    /// all tail, whole lane groups, whole blocks, and blocks plus groups plus a tail (7×7, 14×14
    /// and 28×28 planes among them).
    #[test]
    fn lane_sums_match_sequential_sums() {
        for len in [
            0, 1, 7, 16, 17, 20, 49, 64, 65, 80, 112, 127, 196, 200, 784, 1023,
        ] {
            let (x, dy) = sample_inputs(len);
            let (mean, mu) = (0.3f64, -0.7f32);
            let close = |what: &str, ours: f64, reference: f64| {
                assert!(
                    (ours - reference).abs() <= 1e-12 * (1.0 + reference.abs()),
                    "{what}, length {len}: {ours} vs {reference}"
                );
            };
            close("sum", sum_f64(&x), x.iter().map(|&v| v as f64).sum());
            close(
                "squared deviations",
                sum_sq_dev_f64(&x, mean),
                x.iter().map(|&v| (v as f64 - mean).powi(2)).sum(),
            );
            let (sum_dy, dot) = sum_and_centered_dot_f64(&x, &dy, mu);
            close("gradient sum", sum_dy, dy.iter().map(|&d| d as f64).sum());
            close(
                "centred dot",
                dot,
                x.iter()
                    .zip(&dy)
                    .map(|(&v, &d)| ((v - mu) * d) as f64)
                    .sum(),
            );
        }
    }
}
