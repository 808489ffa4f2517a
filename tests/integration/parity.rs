//! The large-batch path against PyTorch, update by update: `tests/fixtures/resnet_parity.safetensors`
//! (made by `tests/fixtures/make_resnet_parity.py` with `bench/cifar_torch.py`'s independent
//! re-implementation) holds PyTorch's initial weights and running statistics of a small ResNet-8
//! with ghost batch norm 16, five batches, and after each update its loss, every gradient, every
//! weight, running statistic and momentum buffer. Here the same updates go through the trainer's
//! step ([`forward_backward`], pieces chosen by [`StepPlan`] as the trainer chooses them) and
//! optimiser: at B = 32 split in two for the noise scale, at B = 32 whole, at B = 40 (ghost chunks
//! 16 + 16 + 8), at B = 100 in micro-batches of 48 + 48 + 4, and again after ε and m change.
//!
//! The tolerance (relative to each tensor's largest value) is 10⁻⁴; float32 rounding of the same
//! arithmetic stays below 3·10⁻⁶ here (AMD EPYC Zen 4, PyTorch 2.15). Faults it catches, each
//! tried by editing the code: running variance folded in biased (2.7·10⁻³ at update 1), running
//! statistics updated once per micro-batch instead of per ghost chunk (0.26 at update 2),
//! micro-batches weighted 1/pieces instead of len/B (5.4 at update 4), the velocity rescaled
//! when ε changes (2.2·10⁻² at update 5): 27× to 54,000× the tolerance. The second test injects
//! two of them from outside.

use burn::tensor::{Device, Tensor, TensorData};
use noisescale::data::Images;
use noisescale::model::{Model, ModelConfig};
use noisescale::optim::{OptimizerConfig, OptimizerKind};
use noisescale::params::{named_tensors, replace_tensors};
use noisescale::schedule::Hyper;
use noisescale::train::{StepPlan, forward_backward};
use safetensors::SafeTensors;
use serde::Deserialize;
use std::collections::HashMap;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/resnet_parity.safetensors"
);
const TOLERANCE: f64 = 1e-4;

#[derive(Deserialize)]
struct StepSpec {
    batch: usize,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    pieces: Vec<usize>,
    loss: f64,
}

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load() -> Self {
        Fixture {
            bytes: std::fs::read(FIXTURE).unwrap(),
        }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }

    fn steps(&self) -> Vec<StepSpec> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        let text = &meta.metadata().as_ref().unwrap()["steps"];
        serde_json::from_str(text).unwrap()
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        let st = self.tensors();
        let v = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        v.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn i64s(&self, name: &str) -> Vec<i64> {
        let st = self.tensors();
        let v = st.tensor(name).unwrap();
        v.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// Every tensor under `prefix/`, keyed by the rest of its name.
    fn group(&self, prefix: &str) -> HashMap<String, Vec<f32>> {
        let st = self.tensors();
        st.names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(&format!("{prefix}/")).map(str::to_string))
            .map(|rest| {
                let v = self.f32s(&format!("{prefix}/{rest}"));
                (rest, v)
            })
            .collect()
    }
}

/// `max |a − b| / max |b|`.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, &x| m.max(f64::from(x.abs())));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max(f64::from((x - y).abs())));
    diff / scale.max(1e-30)
}

/// How the run under test departs from the trainer (to show the comparison catches it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// Each micro-batch's gradient weighted 1/pieces instead of len/B.
    EqualPieceWeights,
    /// One batch-norm chunk per micro-batch (ghost batch norm off).
    NoGhost,
}

/// Runs the fixture's updates through the trainer's step and optimiser and returns, per update,
/// the worst relative errors of (loss, gradients, weights and running statistics, velocities),
/// each with the tensor it was worst on.
fn run(fault: Fault) -> Vec<[(f64, String); 4]> {
    let fx = Fixture::load();
    let device = Device::flex().autodiff();
    let ghost = if fault == Fault::NoGhost { 0 } else { 16 };
    let config = ModelConfig::Resnet {
        depth: 8,
        width: 4,
        ghost_batch_size: ghost,
    };
    let model = config.init([3, 8, 8], 10, &device);
    let mut init: HashMap<String, Tensor<1>> = fx
        .group("init")
        .into_iter()
        .map(|(k, v)| {
            let n = v.len();
            (k, Tensor::from_data(TensorData::new(v, [n]), &device))
        })
        .collect();
    let (mut model, missing): (Model, _) = replace_tensors(model, &mut init);
    assert!(missing.is_empty(), "the fixture lacks {missing:?}");
    assert!(init.is_empty(), "unused fixture tensors {:?}", init.keys());
    let mut optim = OptimizerConfig {
        kind: OptimizerKind::Momentum,
        weight_decay: 5e-4,
        ..OptimizerConfig::default()
    }
    .init();
    let mut out = Vec::new();
    for (i, spec) in fx.steps().iter().enumerate() {
        let k = i + 1;
        assert_eq!(spec.weight_decay, 5e-4);
        let x = fx.f32s(&format!("{k}/x"));
        let y: Vec<u8> = fx
            .i64s(&format!("{k}/y"))
            .iter()
            .map(|&l| l as u8)
            .collect();
        let batch = Images {
            images: x,
            labels: y,
            shape: [spec.batch, 3, 8, 8],
        };
        // As the trainer plans an update (`Run::update`): micro-batches of at most 48 whole
        // ghost chunks, and the first update cut in two for the noise-scale measurement.
        let plan = StepPlan {
            max_micro_batch: 48,
            min_pieces: if k == 1 { 2 } else { 1 },
            quantum: 16,
            measure: true,
            seed: 0,
            update: k as u64,
            inject_nan: false,
        };
        let mut step = forward_backward(&model, batch, spec.batch, &plan, &device).unwrap();
        let pieces: Vec<usize> = step.pieces.iter().map(|p| p.0).collect();
        assert_eq!(pieces, spec.pieces, "update {k}: micro-batch pieces");
        if fault == Fault::EqualPieceWeights {
            // Recompute with every piece weighted equally: what a mean over micro-batches gives.
            let n = pieces.len() as f64;
            step.grads = noisescale::params::Grads::default();
            let mut start = 0;
            for len in &pieces {
                let part = Images {
                    images: fx.f32s(&format!("{k}/x"))[start * 192..(start + len) * 192].to_vec(),
                    labels: fx.i64s(&format!("{k}/y"))[start..start + len]
                        .iter()
                        .map(|&l| l as u8)
                        .collect(),
                    shape: [*len, 3, 8, 8],
                };
                let whole = StepPlan {
                    measure: false,
                    ..StepPlan::whole_batch()
                };
                let g = forward_backward(&model, part, *len, &whole, &device).unwrap();
                step.grads = step.grads.accumulate(g.grads.scale(1.0 / n)).unwrap();
                start += len;
            }
        }
        let loss = (step.loss_sum / spec.batch as f64 - spec.loss).abs() / spec.loss;
        let worst = |errs: Vec<(f64, String)>| {
            errs.into_iter()
                .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a })
        };
        let grads = worst(
            step.grads
                .tensors
                .iter()
                .map(|(name, g)| {
                    let ours: Vec<f32> = g.to_data().iter::<f32>().collect();
                    (
                        rel(&ours, &fx.f32s(&format!("{k}/grad/{name}"))),
                        name.clone(),
                    )
                })
                .collect(),
        );
        let hyper = Hyper {
            lr: spec.lr,
            batch_size: spec.batch,
            momentum: spec.momentum,
        };
        model = optim.step(model, step.grads, hyper);
        let state = worst(
            named_tensors(&model)
                .into_iter()
                .map(|t| {
                    let ours: Vec<f32> = t.value.into_data().iter::<f32>().collect();
                    (
                        rel(&ours, &fx.f32s(&format!("{k}/after/{}", t.name))),
                        t.name,
                    )
                })
                .collect(),
        );
        let velocity = worst(
            fx.group(&format!("{k}/velocity"))
                .into_iter()
                .map(|(name, want)| {
                    let v = &optim.state.buffers[&format!("{name}#v")];
                    let ours: Vec<f32> = v.to_data().iter::<f32>().collect();
                    (rel(&ours, &want), name)
                })
                .collect(),
        );
        out.push([(loss, "loss".to_string()), grads, state, velocity]);
    }
    out
}

#[test]
fn large_batch_updates_match_pytorch() {
    let errors = run(Fault::None);
    assert_eq!(errors.len(), 5);
    for (k, errs) in errors.iter().enumerate() {
        eprintln!("update {}: {errs:?}", k + 1);
        for (what, (err, name)) in ["loss", "gradient", "state", "velocity"].iter().zip(errs) {
            assert!(
                *err < TOLERANCE,
                "update {}: {what} {name} differs from PyTorch by {err:.2e} (relative)",
                k + 1
            );
        }
    }
}

/// The comparison has teeth: each fault the trainer could have breaks the tolerance where it
/// acts, and not before.
#[test]
fn parity_catches_wrong_weighting_and_ghost_statistics() {
    // Equal weights differ from len/B only where the pieces are unequal (updates 4 and 5); at
    // update 1 (16 + 16) they are the same weights.
    let errors = run(Fault::EqualPieceWeights);
    assert!(errors[0][1].0 < TOLERANCE, "{:?}", errors[0]);
    assert!(
        errors[3][1].0 > 100.0 * TOLERANCE,
        "unequal pieces weighted equally went unnoticed: {:?}",
        errors[3]
    );
    // Without ghost chunks the statistics differ from the second update on (the first, B = 32
    // in two pieces of 16, normalises the same chunks either way), and the loss with it.
    let errors = run(Fault::NoGhost);
    assert!(
        errors[1][0].0 > TOLERANCE && errors[1][2].0 > 100.0 * TOLERANCE,
        "batch norm over whole micro-batches went unnoticed: {:?}",
        errors[1]
    );
}

/// `train.trace_updates` writes what an outside replay needs (`bench/parity.py`), consistently:
/// the state after update u is the state before u + 1 bit for bit; the batch is the epoch's
/// samples in the sampler's order; B, ε and the micro-batch pieces are the schedule's.
#[test]
fn traced_updates_are_complete_and_consistent() {
    use crate::common::{succeed, timing_free, train_cmd, write};
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "trace.toml",
        r#"
seed = 3
[data]
dataset = "synthetic"
synthetic = { train = 96, test = 32, classes = 10, shape = [3, 8, 8] }
[model]
kind = "resnet"
depth = 8
width = 4
ghost_batch_size = 16
[optimizer]
kind = "momentum"
weight_decay = 5e-4
[schedule]
kind = "increase-batch"
epochs = 2
lr = 0.05
batch_size = 32
momentum = 0.9
factor = 3.0
milestones = [1]
[train]
max_micro_batch = 48
trace_updates = [2, 3, 4]
"#,
    );
    let out = dir.path().join("run");
    succeed(train_cmd(&config, &out, &[]));
    let read =
        |u: u64| std::fs::read(out.join(format!("trace/update-{u:06}.safetensors"))).unwrap();
    let files: Vec<Vec<u8>> = (2..=4).map(read).collect();
    let sts: Vec<SafeTensors> = files
        .iter()
        .map(|b| SafeTensors::deserialize(b).unwrap())
        .collect();
    let meta = |b: &[u8]| -> serde_json::Value {
        let (_, m) = SafeTensors::read_metadata(b).unwrap();
        serde_json::from_str(&m.metadata().as_ref().unwrap()["trace"]).unwrap()
    };
    // Update 3 ends epoch 0 (B = 32); update 4 is epoch 1's whole batch, B = 96 in 48 + 48.
    let (m3, m4) = (meta(&files[1]), meta(&files[2]));
    assert_eq!(
        (m3["epoch"].as_u64(), m3["batch_size"].as_u64()),
        (Some(0), Some(32))
    );
    assert_eq!(
        (m3["start"].as_u64(), m3["end"].as_u64()),
        (Some(64), Some(96))
    );
    assert_eq!(
        (m4["epoch"].as_u64(), m4["batch_size"].as_u64()),
        (Some(1), Some(96))
    );
    assert_eq!(m4["pieces"], serde_json::json!([48, 48]));
    assert_eq!(m4["lr"].as_f64(), Some(0.05));
    let names = |st: &SafeTensors, prefix: &str| {
        let mut v: Vec<String> = st
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(prefix).map(str::to_string))
            .collect();
        v.sort();
        v
    };
    for (i, u) in (2..4).enumerate() {
        let (now, next) = (&sts[i], &sts[i + 1]);
        let after = names(now, "after/");
        assert_eq!(after, names(next, "before/"), "update {u}");
        assert!(after.iter().any(|n| n.ends_with("running_var")));
        assert!(after.iter().any(|n| n.ends_with("#v")));
        for n in &after {
            assert_eq!(
                now.tensor(&format!("after/{n}")).unwrap().data(),
                next.tensor(&format!("before/{n}")).unwrap().data(),
                "{n}: after update {u} is not before update {}",
                u + 1
            );
        }
        // A gradient for every trainable tensor.
        let grads = names(now, "grad/");
        assert_eq!(
            grads.len(),
            after.iter().filter(|n| n.starts_with("optim/")).count()
        );
    }
    // The batch is the samples the index names: all 96 once over epoch 1's single batch.
    let index = sts[2].tensor("index").unwrap();
    let mut seen: Vec<i64> = index
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(seen, (0..96).collect::<Vec<i64>>());
    assert_eq!(sts[2].tensor("x").unwrap().shape(), [96, 3, 8, 8]);
    assert!(!out.join("trace/update-000001.safetensors").exists());
    // Tracing only reads: the same run untraced logs the same epochs.
    let plain = write(
        dir.path(),
        "plain.toml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace("trace_updates = [2, 3, 4]\n", ""),
    );
    let untraced = dir.path().join("untraced");
    succeed(train_cmd(&plain, &untraced, &[]));
    assert!(!untraced.join("trace").exists());
    assert_eq!(timing_free(&out), timing_free(&untraced));
}
