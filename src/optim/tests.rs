use super::*;
use crate::kernels::update::CHUNK;
use burn::tensor::{DType, Distribution};
use std::cell::Cell;

thread_local! {
    /// Makes [`Optimizer::update`] on this thread take burn's tensor operations only. Tests
    /// call `update` directly: `Optimizer::step` moves to a pool thread, which would not
    /// see it.
    pub(super) static TENSOR_OPS_ONLY: Cell<bool> = const { Cell::new(false) };
    /// Updates on this thread that took the one-pass kernel, so that a test can show it
    /// compared the kernel and not the tensor path with itself.
    pub(super) static FUSED_CALLS: Cell<usize> = const { Cell::new(0) };
}

fn fused_calls() -> usize {
    FUSED_CALLS.with(|calls| calls.get())
}

fn random(n: usize, seed: u64, device: &Device) -> Tensor<1> {
    crate::device::seeded(device, seed, || {
        Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), (device, DType::F32))
    })
}

fn bits(t: &Tensor<1>) -> Vec<u32> {
    t.to_data().iter::<f32>().map(f32::to_bits).collect()
}

/// `steps` updates of two parameters (one above [`CHUNK`] and not a multiple of it, one
/// below), with ε and m changing; the weights and every buffer after each, as bits.
fn trajectory(config: &OptimizerConfig, tensor_ops: bool, steps: u64) -> Vec<Vec<u32>> {
    TENSOR_OPS_ONLY.with(|only| only.set(tensor_ops));
    let device = Device::flex();
    let mut opt = config.init();
    let mut ws: Vec<_> = [(2 * CHUNK + 1_001, 1), (37, 2)]
        .into_iter()
        .map(|(n, seed)| random(n, seed, &device))
        .collect();
    let mut out = Vec::new();
    for step in 0..steps {
        let hyper = Hyper {
            lr: [0.1, 0.03, 0.03, 0.7][step as usize % 4],
            batch_size: 64,
            // Schedules move m too; at m = 0 momentum's kernel still runs.
            momentum: match config.kind {
                OptimizerKind::Sgd => 0.0,
                _ => [0.9, 0.5, 0.0, 0.9][step as usize % 4],
            },
        };
        let rescale = opt.begin_step(hyper.lr);
        for (i, w) in ws.iter_mut().enumerate() {
            let n = w.dims()[0];
            let g = random(n, 100 * step + i as u64, &device);
            *w = opt.update(&format!("p{i}"), w.clone(), g, hyper, rescale, true);
            out.push(bits(w));
        }
        let mut keys: Vec<_> = opt.state.buffers.keys().cloned().collect();
        keys.sort();
        out.extend(keys.iter().map(|k| bits(&opt.state.buffers[k])));
    }
    TENSOR_OPS_ONLY.with(|only| only.set(false));
    out
}

#[test]
fn the_one_pass_update_gives_the_tensor_operations_bits() {
    let kinds = [
        OptimizerKind::Sgd,
        OptimizerKind::Momentum,
        OptimizerKind::Nesterov,
        OptimizerKind::Adam,
        OptimizerKind::Adamw,
    ];
    for kind in kinds {
        for weight_decay in [0.0, 5e-4] {
            for velocity_rescale in [false, true] {
                let config = OptimizerConfig {
                    kind,
                    weight_decay,
                    velocity_rescale,
                    ..OptimizerConfig::default()
                };
                let before = fused_calls();
                let fused = trajectory(&config, false, 5);
                // Two parameters a step; momentum and Adam fuse from their second step.
                let first = if kind == OptimizerKind::Sgd { 0 } else { 1 };
                assert_eq!(fused_calls() - before, 2 * (5 - first), "{config:?}");
                let ops = trajectory(&config, true, 5);
                assert_eq!(fused_calls() - before, 2 * (5 - first), "{config:?}");
                assert_eq!(fused.len(), ops.len(), "{config:?}");
                for (i, (a, b)) in fused.iter().zip(&ops).enumerate() {
                    assert!(
                        a == b,
                        "{config:?}: tensor {i} differs from the tensor path"
                    );
                }
            }
        }
    }
}

/// One [`Optimizer::update`] of `w` with gradient `g` from velocity `v` (heavy ball), fused
/// or through tensor operations; the new weights and velocity as bits.
fn momentum_step(w: &Tensor<1>, g: &Tensor<1>, v: &Tensor<1>, tensor_ops: bool) -> Vec<Vec<u32>> {
    let mut opt = OptimizerConfig::default().init();
    opt.state.buffers.insert("p#v".into(), v.clone());
    let hyper = Hyper {
        lr: 0.1,
        batch_size: 64,
        momentum: 0.9,
    };
    TENSOR_OPS_ONLY.with(|only| only.set(tensor_ops));
    let w = opt.update("p", w.clone(), g.clone(), hyper, None, true);
    TENSOR_OPS_ONLY.with(|only| only.set(false));
    vec![bits(&w), bits(&opt.state.buffers["p#v"])]
}

#[test]
fn the_one_pass_update_leaves_shared_and_offset_tensors_alone() {
    let device = Device::flex();
    let n = CHUNK + 3;
    let g = random(n, 1, &device);
    // Views at an offset into larger tensors, which the caller keeps.
    let (w_whole, v_whole) = (random(n + 5, 2, &device), random(n + 9, 3, &device));
    let (w, v) = (
        w_whole.clone().narrow(0, 5, n),
        v_whole.clone().narrow(0, 9, n),
    );
    // Whole tensors the caller keeps a handle on.
    let (w_kept, v_kept) = (random(n, 4, &device), random(n, 5, &device));
    let before = [&w_whole, &v_whole, &w_kept, &v_kept].map(bits);
    for (w, v) in [(&w, &v), (&w_kept, &v_kept)] {
        let before = fused_calls();
        let fused = momentum_step(w, &g, v, false);
        assert_eq!(fused_calls(), before + 1, "the kernel must apply here");
        assert_eq!(fused, momentum_step(w, &g, v, true));
        assert_ne!(fused[0], bits(w), "the update changed nothing");
    }
    assert_eq!([&w_whole, &v_whole, &w_kept, &v_kept].map(bits), before);
}

#[test]
fn clip_grad_norm_scales_to_the_bound_only_above_it() {
    let device = Device::flex();
    let grads = || Grads {
        tensors: vec![
            (
                "a".to_string(),
                Tensor::<1>::from_data(TensorData::new(vec![3.0f32, 4.0], [2]), &device),
            ),
            (
                "b".to_string(),
                Tensor::<1>::from_data(TensorData::new(vec![12.0f32], [1]), &device),
            ),
        ],
    };
    let values = |g: &Grads| -> Vec<f32> {
        g.tensors
            .iter()
            .flat_map(|(_, t)| t.to_data().iter::<f32>().collect::<Vec<_>>())
            .collect()
    };
    // Norm 13: clipped to 6.5, i.e. halved (less PyTorch's 1e-6 guard).
    let mut g = grads();
    assert_eq!(clip_grad_norm(&mut g, 6.5), 13.0);
    let coef = (6.5 / (13.0 + 1e-6)) as f32;
    assert_eq!(values(&g), [3.0 * coef, 4.0 * coef, 12.0 * coef]);
    // Below the bound: untouched.
    let mut g = grads();
    assert_eq!(clip_grad_norm(&mut g, 20.0), 13.0);
    assert_eq!(values(&g), [3.0, 4.0, 12.0]);
}

#[test]
fn decay_on_matrices_spares_biases_norms_and_embeddings() {
    let inside = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let m = DecayOn::Matrices;
    assert!(m.decays(2, &inside(&["Struct:Block", "Struct:Linear"])));
    assert!(m.decays(4, &inside(&["Struct:Conv2d"])));
    assert!(!m.decays(1, &inside(&["Struct:Linear"])));
    assert!(!m.decays(2, &inside(&["Struct:Gpt", "Struct:Embedding"])));
    assert!(!m.decays(1, &inside(&["Struct:Block", "Struct:LayerNorm"])));
    assert!(DecayOn::All.decays(2, &inside(&["Struct:Embedding"])));
    // Through a step: AdamW with zero gradients only decays, so the weight shrinks by
    // 1 − ε·wd and the bias stays.
    let device = Device::flex().autodiff();
    let linear = burn::nn::LinearConfig::new(3, 2).init(&device);
    let (w0, b0) = (linear.weight.val(), linear.bias.as_ref().unwrap().val());
    let mut opt = OptimizerConfig {
        kind: OptimizerKind::Adamw,
        weight_decay: 0.5,
        decay_on: DecayOn::Matrices,
        ..OptimizerConfig::default()
    }
    .init();
    let zeros = |n: usize| Tensor::<1>::zeros([n], &device);
    let grads = Grads {
        tensors: vec![("weight".into(), zeros(6)), ("bias".into(), zeros(2))],
    };
    let hyper = Hyper {
        lr: 0.1,
        batch_size: 1,
        momentum: 0.9,
    };
    let after = opt.step(linear, grads, hyper);
    let host = |t: Tensor<2>| t.to_data().iter::<f32>().collect::<Vec<_>>();
    let want: Vec<f32> = host(w0).iter().map(|w| w * 0.95).collect();
    assert_eq!(host(after.weight.val()), want);
    assert_eq!(
        after
            .bias
            .unwrap()
            .val()
            .to_data()
            .iter::<f32>()
            .collect::<Vec<_>>(),
        b0.to_data().iter::<f32>().collect::<Vec<_>>()
    );
}
