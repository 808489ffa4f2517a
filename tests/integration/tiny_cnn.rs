//! Our layers against PyTorch on `../shared/testdata/tiny_cnn.json`: conv → batch norm (train)
//! → ReLU → max-pool → linear → cross-entropy, with plain and ghost (chunks of 2) batch norm:
//! logits, loss, every gradient, running statistics and eval logits. The convolution goes
//! through the models' own path (`kernels::conv::conv2d`, our im2col kernel on flex), not burn's.

use burn::module::{Module, Param, ParamId};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use noisescale::kernels::conv;
use noisescale::model::GhostBatchNorm;
use serde_json::Value;

#[derive(Module, Debug)]
struct Tiny {
    conv: Conv2d,
    bn: GhostBatchNorm,
    pool: MaxPool2d,
    fc: Linear,
}

impl Tiny {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self
            .pool
            .forward(relu(self.bn.forward(conv::conv2d(&self.conv, x))));
        self.fc.forward(x.flatten(1, 3))
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tensor<const D: usize>(v: &Value, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(floats(v), shape), device)
}

fn param<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::initialized(ParamId::new(), t.require_grad())
}

fn assert_close(name: &str, got: Vec<f32>, want: Vec<f32>) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
            "{name}[{i}]: got {a}, PyTorch {b}"
        );
    }
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn check(case: &str, ghost: usize) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/tiny_cnn.json"
    );
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let device = Device::flex().autodiff();
    let s = &data["initial_state"];
    let mut conv = Conv2dConfig::new([1, 2], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    conv.weight = param(tensor(&s["conv.weight"]["values"], [2, 1, 3, 3], &device));
    conv.bias = Some(param(tensor(&s["conv.bias"]["values"], [2], &device)));
    let mut bn = GhostBatchNorm::new(2, ghost, &device);
    bn.gamma = param(tensor(&s["bn.weight"]["values"], [2], &device));
    bn.beta = param(tensor(&s["bn.bias"]["values"], [2], &device));
    let mut fc = LinearConfig::new(8, 3).init(&device);
    // PyTorch stores linear weights [out, in]; burn [in, out].
    let w: Tensor<2> = tensor(&s["fc.weight"]["values"], [3, 8], &device);
    fc.weight = param(w.transpose());
    fc.bias = Some(param(tensor(&s["fc.bias"]["values"], [3], &device)));
    let model = Tiny {
        conv,
        bn,
        pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        fc,
    };

    let x: Tensor<4> = tensor(&data["input"], [4, 1, 4, 4], &device);
    assert!(
        conv::uses_kernel(&model.conv, &x),
        "the test must exercise our conv kernel"
    );
    let labels: Vec<i64> = data["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [4]), &device);
    let logits = model.forward(x.clone());
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.clone(), y);
    let r = &data[case];
    assert_close("logits", vals(logits.clone()), floats(&r["logits"]));
    assert_close(
        "loss",
        vals(loss.clone()),
        vec![r["loss"].as_f64().unwrap() as f32],
    );

    let grads = loss.backward();
    let g = &r["grads"];
    assert_close(
        "conv.weight",
        vals(model.conv.weight.grad(&grads).unwrap()),
        floats(&g["conv.weight"]),
    );
    let conv_bias_grad = vals(model.conv.bias.as_ref().unwrap().grad(&grads).unwrap());
    // The conv bias gradient is zero up to rounding (batch norm removes the mean).
    for v in &conv_bias_grad {
        assert!(v.abs() < 1e-5, "conv.bias grad {v}");
    }
    assert_close(
        "bn.weight",
        vals(model.bn.gamma.grad(&grads).unwrap()),
        floats(&g["bn.weight"]),
    );
    assert_close(
        "bn.bias",
        vals(model.bn.beta.grad(&grads).unwrap()),
        floats(&g["bn.bias"]),
    );
    assert_close(
        "fc.weight",
        vals(model.fc.weight.grad(&grads).unwrap().transpose()),
        floats(&g["fc.weight"]),
    );
    assert_close(
        "fc.bias",
        vals(model.fc.bias.as_ref().unwrap().grad(&grads).unwrap()),
        floats(&g["fc.bias"]),
    );
    assert_close(
        "running_mean",
        vals(model.bn.running_mean.value()),
        floats(&r["bn_running_mean_after"]),
    );
    assert_close(
        "running_var",
        vals(model.bn.running_var.value()),
        floats(&r["bn_running_var_after"]),
    );

    let eval = model.valid();
    let x = x.inner();
    assert_close(
        "eval logits",
        vals(eval.forward(x)),
        floats(&r["eval_logits_after"]),
    );
}

#[test]
fn plain_batch_norm_matches_pytorch() {
    check("plain", 0);
}

#[test]
fn ghost_batch_norm_over_chunks_of_two_matches_pytorch() {
    check("ghost_2", 2);
}

#[test]
fn ghost_batch_norm_differs_from_plain() {
    // Guard: the two references differ, so a layer ignoring the ghost size fails one of them.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/tiny_cnn.json"
    );
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let a = floats(&data["plain"]["logits"]);
    let b = floats(&data["ghost_2"]["logits"]);
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
}
