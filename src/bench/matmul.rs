//! Timing an MLP's matrix products alone, so that its training-step ratio against PyTorch can
//! be split into the GEMM's part (gemm against MKL or OpenBLAS) and the rest of the step.
//!
//! The products are those of a step of a fully connected network with burn's `Linear` layers
//! (`burn-backend` `ops/modules/linear.rs`, 0.22): per layer of weight `W` (`d_in×d_out`), the
//! forward `x·W`, the weight gradient `xᵀ·dY` and, where the layer's input is not the image, the
//! input gradient `dY·Wᵀ`. The transposes are views of row-major tensors, as burn's backward
//! pass hands them to the backend, and PyTorch's side times the same layouts.

use anyhow::Result;
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The bench's training row whose step's products are timed (its name in `--models`).
pub(super) const MODEL: &str = "mlp-256";

/// One matrix product `lhs[m×k] · rhs[k×n]` of an MLP's step at a batch size.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MatmulSpec {
    /// What it computes, e.g. `x·W1` (layers counted from 1, `dY1` the gradient at layer 1's
    /// output).
    pub product: String,
    /// The step's batch size B.
    pub batch: usize,
    /// The micro-batch piece's length: the product's `m` (forward, input gradients) or `k`
    /// (weight gradients); B where the step runs the batch whole.
    pub piece: usize,
    /// How many times the step runs this product: once per piece of that length.
    pub pieces: usize,
    /// Rows of the result.
    pub m: usize,
    /// The summed dimension.
    pub k: usize,
    /// Columns of the result.
    pub n: usize,
    /// Whether `lhs` is the transposed view of a row-major `k×m` tensor.
    pub lhs_transposed: bool,
    /// Whether `rhs` is the transposed view of a row-major `n×k` tensor.
    pub rhs_transposed: bool,
}

impl MatmulSpec {
    /// Floating-point operations of the product: `2·m·k·n` (a multiply and an add per term).
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.k * self.n) as f64
    }
}

/// A product's timing, on our side or PyTorch's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatmulRow {
    /// The product timed.
    #[serde(flatten)]
    pub spec: MatmulSpec,
    /// Products timed after warm-up.
    pub calls: usize,
    /// Mean seconds per product.
    pub seconds_per_call: f64,
}

impl MatmulRow {
    /// Throughput in GFLOP/s ([`MatmulSpec::flops`] per call).
    pub fn gflops(&self) -> f64 {
        self.spec.flops() / self.seconds_per_call / 1e9
    }
}

/// The products of one micro-batch piece of `piece` samples, run `pieces` times in a training
/// step of batch size `batch`, of an MLP with `inputs` inputs, hidden `widths` and `classes`
/// outputs: forward products in layer order, then the backward pass's from the last layer
/// down, as autodiff runs them.
pub(super) fn mlp_products(
    inputs: usize,
    widths: &[usize],
    classes: usize,
    batch: usize,
    piece: usize,
    pieces: usize,
) -> Vec<MatmulSpec> {
    let dims: Vec<usize> = std::iter::once(inputs)
        .chain(widths.iter().copied())
        .chain(std::iter::once(classes))
        .collect();
    let layers = dims.len() - 1;
    let spec = |product: String, m, k, n, lhs_transposed, rhs_transposed| MatmulSpec {
        product,
        batch,
        piece,
        pieces,
        m,
        k,
        n,
        lhs_transposed,
        rhs_transposed,
    };
    // Layer l's input: the image, or the previous layer's activations.
    let input = |l: usize| {
        if l == 0 {
            "x".to_string()
        } else {
            format!("h{l}")
        }
    };
    let mut out = Vec::new();
    for l in 0..layers {
        let (d_in, d_out) = (dims[l], dims[l + 1]);
        let name = format!("{}·W{}", input(l), l + 1);
        out.push(spec(name, piece, d_in, d_out, false, false));
    }
    for l in (0..layers).rev() {
        let (d_in, d_out) = (dims[l], dims[l + 1]);
        if l > 0 {
            let name = format!("dY{}·W{}ᵀ", l + 1, l + 1);
            out.push(spec(name, piece, d_out, d_in, false, true));
        }
        let name = format!("{}ᵀ·dY{}", input(l), l + 1);
        out.push(spec(name, d_in, piece, d_out, true, false));
    }
    out
}

/// A row-major `rows×cols` tensor of uniform values in [-1, 1), or the transposed view of a
/// `cols×rows` one.
fn operand(rows: usize, cols: usize, transposed: bool, device: &burn::tensor::Device) -> Tensor<2> {
    let uniform = Distribution::Uniform(-1.0, 1.0);
    if transposed {
        Tensor::<2>::random([cols, rows], uniform, device).transpose()
    } else {
        Tensor::<2>::random([rows, cols], uniform, device)
    }
}

/// The operands of `spec`, in its layout.
fn operands(spec: &MatmulSpec, device: &burn::tensor::Device) -> (Tensor<2>, Tensor<2>) {
    (
        operand(spec.m, spec.k, spec.lhs_transposed, device),
        operand(spec.k, spec.n, spec.rhs_transposed, device),
    )
}

/// Times `spec` on `device` (no autodiff): `warmup` products, then at least `calls` and
/// `min_seconds` of them; each ends with the device's sync, as a training step does.
pub(super) fn bench_product(
    spec: &MatmulSpec,
    device: &burn::tensor::Device,
    warmup: usize,
    calls: usize,
    min_seconds: f64,
) -> Result<MatmulRow> {
    let (lhs, rhs) = operands(spec, device);
    let product = || {
        let out = lhs.clone().matmul(rhs.clone());
        device.sync()?;
        drop(out);
        anyhow::Ok(())
    };
    for _ in 0..warmup {
        product()?;
    }
    let mut timed = 0;
    let start = Instant::now();
    while timed < calls || start.elapsed().as_secs_f64() < min_seconds {
        product()?;
        timed += 1;
    }
    Ok(MatmulRow {
        spec: spec.clone(),
        calls: timed,
        seconds_per_call: start.elapsed().as_secs_f64() / timed as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(specs: &[MatmulSpec]) -> Vec<(&str, usize, usize, usize, bool, bool)> {
        specs
            .iter()
            .map(|s| {
                (
                    s.product.as_str(),
                    s.m,
                    s.k,
                    s.n,
                    s.lhs_transposed,
                    s.rhs_transposed,
                )
            })
            .collect()
    }

    #[test]
    fn the_mlp_step_runs_these_products() {
        // mnist's 784-256-10 at B = 64: two forward products, the output layer's input and
        // weight gradients, the hidden layer's weight gradient (the image needs no gradient).
        let specs = mlp_products(784, &[256], 10, 64, 64, 1);
        assert_eq!(
            shapes(&specs),
            [
                ("x·W1", 64, 784, 256, false, false),
                ("h1·W2", 64, 256, 10, false, false),
                ("dY2·W2ᵀ", 64, 10, 256, false, true),
                ("h1ᵀ·dY2", 256, 64, 10, true, false),
                ("xᵀ·dY1", 784, 64, 256, true, false),
            ]
        );
        assert!(
            specs
                .iter()
                .all(|s| (s.batch, s.piece, s.pieces) == (64, 64, 1))
        );
        // A step's products sum to 2·B·(forward weights) for the forward pass, as much again
        // for the weight gradients, and 2·B·(weights past the first layer) for the input
        // gradients.
        let total: f64 = specs.iter().map(MatmulSpec::flops).sum();
        let (w1, w2) = (784.0 * 256.0, 256.0 * 10.0);
        assert_eq!(total, 2.0 * 64.0 * (2.0 * (w1 + w2) + w2));
        // Two hidden layers: three layers' forward products, two input gradients; a step of
        // B = 15 in three pieces of 5 runs each piece's products.
        let deep = mlp_products(8, &[6, 4], 3, 15, 5, 3);
        assert!(
            deep.iter()
                .all(|s| (s.batch, s.piece, s.pieces) == (15, 5, 3))
        );
        assert_eq!(
            shapes(&deep),
            [
                ("x·W1", 5, 8, 6, false, false),
                ("h1·W2", 5, 6, 4, false, false),
                ("h2·W3", 5, 4, 3, false, false),
                ("dY3·W3ᵀ", 5, 3, 4, false, true),
                ("h2ᵀ·dY3", 4, 5, 3, true, false),
                ("dY2·W2ᵀ", 5, 4, 6, false, true),
                ("h1ᵀ·dY2", 6, 5, 4, true, false),
                ("xᵀ·dY1", 8, 5, 6, true, false),
            ]
        );
    }

    /// Whether a flex tensor's elements lie in row-major order (a transposed view's do not).
    fn row_major(t: &Tensor<2>) -> bool {
        match t.clone().inner().into_dispatch().kind {
            burn::backend::DispatchTensorKind::Flex(t) => t.float().is_contiguous(),
            _ => panic!("not a flex tensor"),
        }
    }

    #[test]
    fn a_timed_product_multiplies_operands_of_its_layout() {
        // Each operand has the spec's logical shape, stored row-major or as the transposed
        // view the spec names, so the product is m×n.
        let device = burn::tensor::Device::flex();
        for spec in mlp_products(7, &[5], 3, 4, 4, 1) {
            let (lhs, rhs) = operands(&spec, &device);
            assert_eq!(lhs.dims(), [spec.m, spec.k], "{}", spec.product);
            assert_eq!(rhs.dims(), [spec.k, spec.n], "{}", spec.product);
            assert_eq!(row_major(&lhs), !spec.lhs_transposed, "{}", spec.product);
            assert_eq!(row_major(&rhs), !spec.rhs_transposed, "{}", spec.product);
            assert_eq!(lhs.matmul(rhs).dims(), [spec.m, spec.n]);
            let row = bench_product(&spec, &device, 1, 3, 0.0).unwrap();
            assert_eq!(row.calls, 3);
            assert!(row.seconds_per_call > 0.0 && row.gflops() > 0.0);
        }
    }
}
