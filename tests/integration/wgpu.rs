//! The wgpu backend against flex (`--features wgpu-base` or `wgpu`; CI runs it on Mesa's lavapipe, a software
//! Vulkan driver): the same seed gives the same initial weights on both; every model kind's
//! forward and backward passes (ghost batch norm, unequal micro-batches), every optimiser's
//! steps, a short training run, evaluation, and checkpoints that cross devices in both
//! directions agree with flex within stated tolerances.
//!
//! Tolerances: one step's losses and gradients within 2e-5 relative (f32 sums in another
//! order); two epochs of training within 2e-3 relative on losses and 1 point on accuracy, the
//! rounding differences having been amplified by ~60 updates.

use crate::common;
use crate::common::{BIN, succeed, timing_free, wait_for_epochs};
use burn::tensor::{Device, Tensor};
use noisescale::data::Images;
use noisescale::model::{Model, ModelConfig};
use noisescale::optim::{OptimizerConfig, OptimizerKind};
use noisescale::params::{Grads, named_tensors};
use noisescale::schedule::Hyper;
use noisescale::train::{StepPlan, forward_backward};
use std::path::Path;
use std::process::Command;

fn flex() -> Device {
    noisescale::device::device(noisescale::device::parse("flex").unwrap()).unwrap()
}

fn wgpu() -> Device {
    let device = noisescale::device::device(noisescale::device::parse("wgpu").unwrap()).unwrap();
    assert!(!noisescale::device::is_flex(&device));
    device
}

fn values(t: &Tensor<1>) -> Vec<f32> {
    t.to_data().try_into_vec::<f32>().unwrap()
}

/// Asserts `|a − b| ≤ rtol · max(1, max |b|)` element-wise, naming `what` and the index.
fn assert_close(what: &str, a: &[f32], b: &[f32], rtol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= rtol * scale,
            "{what}[{i}]: wgpu {x} vs flex {y} (tolerance {})",
            rtol * scale
        );
    }
}

fn assert_same_weights(what: &str, a: &Model, b: &Model, rtol: f32) {
    let (a, b) = (named_tensors(a), named_tensors(b));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.name, y.name);
        assert_close(
            &format!("{what}: {}", x.name),
            &values(&x.value),
            &values(&y.value),
            rtol,
        );
    }
}

/// Every model kind, small, with ghost batch norm where it has batch norm.
fn models() -> Vec<ModelConfig> {
    vec![
        ModelConfig::Mlp { widths: vec![24] },
        ModelConfig::Cnn { hidden: 16 },
        ModelConfig::Resnet {
            depth: 8,
            width: 4,
            ghost_batch_size: 6,
        },
        ModelConfig::Wrn {
            depth: 10,
            widen: 1,
            dropout: 0.0,
            ghost_batch_size: 6,
        },
    ]
}

fn random_batch(n: usize, shape: [usize; 3], seed: u64) -> Images {
    let [c, h, w] = shape;
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    Images {
        images: (0..n * c * h * w).map(|_| next() * 2.0 - 1.0).collect(),
        labels: (0..n).map(|_| (next() * 10.0) as u8 % 10).collect(),
        shape: [n, c, h, w],
    }
}

#[test]
fn every_model_starts_equal_and_computes_flex_gradients_on_wgpu() {
    let shape = [3, 12, 12];
    // 18 samples in micro-batches of at most 12, whole ghost batches of 6: pieces of 12 and 6.
    // Seed 2: a batch whose pre-activations lie farther from ReLU's kink than f32 rounding.
    // Seed 1's did not: once batch norm summed in another order, ResNet-8's batch-norm gradients
    // in the piece of 6 moved by up to 10% of their largest element (a ReLU flipped, by all
    // signs: the last block's β gradients moved by 2.4% ≈ one of the 54 positions per channel)
    // while its loss, its classifier's gradients and the other models agreed to 1e-6.
    let batch = random_batch(18, shape, 2);
    let plan = StepPlan {
        max_micro_batch: 12,
        min_pieces: 1,
        quantum: 6,
        measure: true,
        seed: 5,
        update: 1,
        inject_nan: false,
    };
    for cfg in models() {
        let name = cfg.name();
        let on_flex = cfg.init_seeded(shape, 10, 11, &flex());
        let on_wgpu = cfg.init_seeded(shape, 10, 11, &wgpu());
        // Drawn on the CPU and copied: bit for bit the same weights.
        assert_same_weights(&format!("{name} init"), &on_wgpu, &on_flex, 0.0);
        let a = forward_backward(&on_flex, batch.clone(), 18, &plan, &flex()).unwrap();
        let b = forward_backward(&on_wgpu, batch.clone(), 18, &plan, &wgpu()).unwrap();
        assert_eq!(a.pieces.len(), 2, "{name}: the step was not cut in two");
        assert_close(
            &format!("{name} loss"),
            &[b.loss_sum as f32],
            &[a.loss_sum as f32],
            2e-5,
        );
        assert_eq!(a.correct, b.correct, "{name}: correct predictions");
        for ((la, na), (lb, nb)) in a.pieces.iter().zip(&b.pieces) {
            assert_eq!(la, lb);
            assert_close(
                &format!("{name} piece |g|²"),
                &[*nb as f32],
                &[*na as f32],
                2e-4,
            );
        }
        assert_eq!(a.grads.tensors.len(), b.grads.tensors.len());
        for ((n, ga), (_, gb)) in a.grads.tensors.iter().zip(&b.grads.tensors) {
            assert_close(
                &format!("{name} gradient {n}"),
                &values(gb),
                &values(ga),
                2e-5,
            );
        }
    }
}

#[test]
fn every_optimiser_steps_as_on_flex() {
    let shape = [1, 6, 6];
    let cfg = ModelConfig::Mlp { widths: vec![8] };
    for kind in [
        OptimizerKind::Sgd,
        OptimizerKind::Momentum,
        OptimizerKind::Nesterov,
        OptimizerKind::Adam,
        OptimizerKind::Adamw,
    ] {
        let config = OptimizerConfig {
            kind,
            weight_decay: 1e-2,
            ..OptimizerConfig::default()
        };
        let (mut a, mut b) = (config.init(), config.init());
        let mut on_flex = cfg.init_seeded(shape, 10, 2, &flex());
        let mut on_wgpu = cfg.init_seeded(shape, 10, 2, &wgpu());
        let momentum = if kind == OptimizerKind::Sgd { 0.0 } else { 0.9 };
        // Three steps, ε changing at the third (velocity rescaling where configured).
        for (i, lr) in [0.1, 0.1, 0.02].into_iter().enumerate() {
            let hyper = Hyper {
                lr,
                batch_size: 8,
                momentum,
            };
            let grads = Grads::from_backward(&on_flex, &{
                let batch = random_batch(8, shape, 10 + i as u64);
                let x = Tensor::<4>::from_data(
                    burn::tensor::TensorData::new(batch.images, batch.shape),
                    &flex(),
                );
                on_flex.forward(x).powf_scalar(2.0).mean().backward()
            });
            let moved = Grads {
                tensors: grads
                    .tensors
                    .iter()
                    .map(|(n, t)| (n.clone(), t.clone().to_device(&wgpu())))
                    .collect(),
            };
            on_flex = a.step(on_flex, grads, hyper);
            on_wgpu = b.step(on_wgpu, moved, hyper);
        }
        assert_same_weights(&format!("{kind:?}"), &on_wgpu, &on_flex, 1e-5);
    }
}

const RUN: &str = r#"
seed = 4
[data]
dataset = "synthetic"
workers = 1
synthetic = { train = 960, test = 240, classes = 10, shape = [3, 12, 12] }
[model]
kind = "resnet"
depth = 8
width = 4
ghost_batch_size = 8
[optimizer]
kind = "momentum"
weight_decay = 5e-4
[schedule]
kind = "increase-batch"
epochs = 3
lr = 0.05
batch_size = 32
momentum = 0.9
factor = 2.0
milestones = [2]
[train]
max_micro_batch = 24
"#;

/// `noisescale train CONFIG -q --device DEVICE --out OUT`.
fn train_cmd(config: &Path, out: &Path, device: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "train",
        config.to_str().unwrap(),
        "-q",
        "--device",
        device,
        "--out",
    ])
    .arg(out);
    c
}

/// Per-epoch losses and accuracies within the training tolerance; everything that counts
/// (updates, samples, B, ε) equal.
fn assert_same_training(what: &str, a: &Path, b: &Path) {
    let (a, b) = (timing_free(a), timing_free(b));
    assert_eq!(a.len(), b.len(), "{what}: epochs");
    for (x, y) in a.iter().zip(&b) {
        let e = x.epoch.0;
        assert_eq!(
            (x.updates, x.samples, x.batch_size, x.lr),
            (y.updates, y.samples, y.batch_size, y.lr),
            "{what}: epoch {e}"
        );
        for (name, u, v) in [
            ("train loss", x.train_loss, y.train_loss),
            ("test loss", x.test_loss, y.test_loss),
        ] {
            assert!(
                (u - v).abs() <= 2e-3 * v.abs(),
                "{what}: epoch {e} {name} {u} vs {v}"
            );
        }
        for (name, u, v) in [
            ("train accuracy", x.train_accuracy, y.train_accuracy),
            ("test accuracy", x.test_accuracy, y.test_accuracy),
        ] {
            assert!((u - v).abs() <= 0.01, "{what}: epoch {e} {name} {u} vs {v}");
        }
    }
}

#[test]
fn training_evaluation_and_checkpoints_cross_between_wgpu_and_flex() {
    let tmp = tempfile::tempdir().unwrap();
    let config = common::write(tmp.path(), "run.toml", RUN);
    let on_flex = tmp.path().join("flex");
    let on_wgpu = tmp.path().join("wgpu");
    succeed(train_cmd(&config, &on_flex, "flex"));
    succeed(train_cmd(&config, &on_wgpu, "wgpu"));
    assert_same_training("wgpu against flex", &on_wgpu, &on_flex);

    // Evaluation of the flex run's checkpoint on wgpu gives its logged test figures.
    let mut eval = Command::new(BIN);
    eval.args(["eval", "--device", "wgpu"]).arg(&on_flex);
    let o = succeed(eval);
    let text = String::from_utf8_lossy(&o.stdout);
    let last = timing_free(&on_flex).pop().unwrap();
    assert!(
        text.contains(&format!("test accuracy {:.2}%", 100.0 * last.test_accuracy)),
        "eval on wgpu printed {text}, flex logged test accuracy {}",
        last.test_accuracy
    );

    // Interrupted on one device after its first epoch, resumed on the other: the run ends as
    // the flex run does.
    for (first, then) in [("wgpu", "flex"), ("flex", "wgpu")] {
        let out = tmp.path().join(format!("{first}-then-{then}"));
        let child = common::spawn(train_cmd(&config, &out, first));
        wait_for_epochs(&out, 1);
        common::kill("-INT", child.id());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(130), "{err}");
        let mut resume = common::resume_cmd(&out);
        resume.args(["--device", then]);
        succeed(resume);
        assert_same_training(&format!("{first} then {then}"), &out, &on_flex);
    }
}
