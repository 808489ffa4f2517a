//! Optimisers against PyTorch trajectories (`../shared/testdata/optimizers.json`): the same
//! gradients, the same hyper-parameter changes mid-run, every step compared.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{DType, Device, Tensor, TensorData};
use noisescale::optim::{OptimizerConfig, OptimizerKind};
use noisescale::params::{Grads, named_tensors};
use noisescale::schedule::Hyper;
use serde_json::Value;

#[derive(Module, Debug)]
struct Weights {
    w: Param<Tensor<1>>,
}

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/optimizers.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("optimizers.json")).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn weights(values: &[f64], device: &Device) -> Weights {
    let t = Tensor::<1>::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        (device, DType::F64),
    );
    Weights {
        w: Param::initialized(ParamId::new(), t.require_grad()),
    }
}

fn values(m: &Weights) -> Vec<f64> {
    m.w.val().into_data().iter::<f64>().collect()
}

fn kind_of(name: &str) -> OptimizerKind {
    match name {
        "sgd" => OptimizerKind::Sgd,
        "momentum" => OptimizerKind::Momentum,
        "nesterov" => OptimizerKind::Nesterov,
        "adam" => OptimizerKind::Adam,
        "adamw" => OptimizerKind::Adamw,
        other => panic!("unknown case {other}"),
    }
}

/// Runs one case with f32 (or f64) tensors; returns the largest relative error over all steps.
fn run_case(case: &Value, data: &Value, dtype_f64: bool) -> f64 {
    let device = Device::flex().autodiff();
    let init = floats(&data["initial_params"]);
    let grads: Vec<Vec<f64>> = data["grads"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let name = case["name"].as_str().unwrap();
    let hypers = case["hyper_before_step"].as_array().unwrap();
    let expected: Vec<Vec<f64>> = case["params_after_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let h0 = &hypers[0];
    let config = OptimizerConfig {
        kind: kind_of(name),
        weight_decay: h0["weight_decay"].as_f64().unwrap(),
        beta2: h0
            .get("betas")
            .map(|b| b[1].as_f64().unwrap())
            .unwrap_or(0.999),
        eps: h0.get("eps").and_then(Value::as_f64).unwrap_or(1e-8),
        velocity_rescale: false,
        ..OptimizerConfig::default()
    };
    let mut opt = config.init();
    let to_tensor = |v: &[f64]| {
        if dtype_f64 {
            Tensor::<1>::from_data(
                TensorData::new(v.to_vec(), [v.len()]),
                (&device.clone().without_autodiff(), DType::F64),
            )
        } else {
            let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::<1>::from_data(
                TensorData::new(f, [v.len()]),
                &device.clone().without_autodiff(),
            )
        }
    };
    let mut model = if dtype_f64 {
        weights(&init, &device)
    } else {
        let f: Vec<f32> = init.iter().map(|&x| x as f32).collect();
        let t = Tensor::<1>::from_data(TensorData::new(f, [init.len()]), &device);
        Weights {
            w: Param::initialized(ParamId::new(), t.require_grad()),
        }
    };
    let pname = named_tensors(&model)[0].name.clone();
    let mut worst = 0.0f64;
    for (step, g) in grads.iter().enumerate() {
        let h = &hypers[step];
        let momentum = h
            .get("betas")
            .map(|b| b[0].as_f64().unwrap())
            .unwrap_or_else(|| h["momentum"].as_f64().unwrap());
        // Weight decay is constant in the reference cases.
        assert_eq!(h["weight_decay"].as_f64().unwrap(), config.weight_decay);
        let hyper = Hyper {
            batch_size: 0,
            lr: h["lr"].as_f64().unwrap(),
            momentum,
        };
        let grads = Grads {
            tensors: vec![(pname.clone(), to_tensor(g))],
        };
        model = opt.step(model, grads, hyper);
        let got = values(&model);
        for (a, b) in got.iter().zip(&expected[step]) {
            let rel = (a - b).abs() / b.abs().max(1e-3);
            worst = worst.max(rel);
        }
    }
    worst
}

#[test]
fn every_optimizer_matches_pytorch_step_by_step_in_f32() {
    let data = reference();
    for case in data["cases"].as_array().unwrap() {
        let worst = run_case(case, &data, false);
        assert!(
            worst < 2e-5,
            "{}: relative error {worst:e} exceeds 2e-5",
            case["name"]
        );
    }
}

#[test]
fn every_optimizer_matches_pytorch_step_by_step_in_f64() {
    let data = reference();
    for case in data["cases"].as_array().unwrap() {
        let worst = run_case(case, &data, true);
        assert!(
            worst < 1e-11,
            "{}: relative error {worst:e} exceeds 1e-11",
            case["name"]
        );
    }
}

#[test]
fn a_wrong_rule_is_caught() {
    // Guard against a test that cannot fail: heavy-ball with dampening 0.1 (burn's default)
    // must miss the PyTorch trajectory.
    let data = reference();
    let case = data["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "nesterov")
        .unwrap()
        .clone();
    let mut wrong = case.clone();
    wrong["name"] = "momentum".into();
    assert!(run_case(&wrong, &data, true) > 1e-3);
}

fn train_steps(
    opt: &mut noisescale::optim::Optimizer,
    mut m: Weights,
    from: usize,
    to: usize,
) -> Weights {
    let data = reference();
    let grads: Vec<Vec<f64>> = data["grads"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let device = Device::flex();
    let pname = named_tensors(&m)[0].name.clone();
    for (i, g) in grads.iter().enumerate().take(to).skip(from) {
        let gt = Tensor::<1>::from_data(
            TensorData::new(g.iter().map(|&x| x as f32).collect::<Vec<_>>(), [g.len()]),
            &device,
        );
        let hyper = Hyper {
            batch_size: 0,
            lr: if i < 5 { 0.1 } else { 0.02 },
            momentum: if i < 8 { 0.9 } else { 0.98 },
        };
        m = opt.step(
            m,
            Grads {
                tensors: vec![(pname.clone(), gt)],
            },
            hyper,
        );
    }
    m
}

fn f32_weights(device: &Device) -> Weights {
    let init = floats(&reference()["initial_params"]);
    let f: Vec<f32> = init.iter().map(|&x| x as f32).collect();
    let t = Tensor::<1>::from_data(TensorData::new(f, [init.len()]), device);
    Weights {
        w: Param::initialized(ParamId::new(), t.require_grad()),
    }
}

#[test]
fn state_round_trips_mid_run_bit_identically() {
    let device = Device::flex().autodiff();
    for kind in [
        OptimizerKind::Momentum,
        OptimizerKind::Nesterov,
        OptimizerKind::Adam,
    ] {
        let config = OptimizerConfig {
            kind,
            weight_decay: 5e-4,
            ..OptimizerConfig::default()
        };
        let mut straight = config.init();
        let a = train_steps(&mut straight, f32_weights(&device), 0, 12);

        let mut first = config.init();
        let half = train_steps(&mut first, f32_weights(&device), 0, 6);
        let record = first.to_record();
        let json = serde_json::to_string(&record).unwrap();
        let mut second = config.init();
        second.load_record(&serde_json::from_str(&json).unwrap(), &device);
        let b = train_steps(&mut second, half, 6, 12);
        let (va, vb): (Vec<f32>, Vec<f32>) = (
            a.w.val().into_data().iter::<f32>().collect(),
            b.w.val().into_data().iter::<f32>().collect(),
        );
        assert_eq!(va, vb, "{kind}: resumed run differs");
    }
}

#[test]
fn state_is_independent_of_batch_size_and_velocity_rescale_keeps_the_step() {
    // The optimiser never sees B: a batch-size change between steps only changes the gradient
    // it is given, so its state after a step is a function of (state, gradient, ε, m) alone,
    // and a state carried over a phase change (here through its record, as at a checkpoint
    // between phases) continues exactly as the uninterrupted optimiser across the ε change at
    // step 5 and the m change at step 8.
    let device = Device::flex().autodiff();
    let config = OptimizerConfig::default();
    let mut straight = config.init();
    let m1 = train_steps(&mut straight, f32_weights(&device), 0, 10);
    let mut first = config.init();
    let half = train_steps(&mut first, f32_weights(&device), 0, 4);
    let mut second = config.init();
    second.load_record(&first.to_record(), &Device::flex());
    let m2 = train_steps(&mut second, half, 4, 10);
    assert_eq!(straight.to_record(), second.to_record());
    let values = |w: &Weights| -> Vec<f32> { w.w.val().into_data().iter::<f32>().collect() };
    assert_eq!(values(&m1), values(&m2));
    // Without the carried state (a fresh optimiser at step 4) the weights differ: the state
    // matters, so the equality above is not vacuous.
    let mut fresh = config.init();
    let half = train_steps(&mut config.init(), f32_weights(&device), 0, 4);
    let m3 = train_steps(&mut fresh, half, 4, 10);
    assert_ne!(values(&m1), values(&m3));

    // Velocity rescale: with a zero gradient, the step after an ε change equals the step
    // before it (ε·v kept), whereas PyTorch's rule scales it by ε_new/ε_old·m.
    let zero = Tensor::<1>::zeros([8], &Device::flex());
    let step_with = |rescale: bool| {
        let mut opt = OptimizerConfig {
            velocity_rescale: rescale,
            ..OptimizerConfig::default()
        }
        .init();
        let w = f32_weights(&device);
        let name = named_tensors(&w)[0].name.clone();
        let g = Tensor::<1>::ones([8], &Device::flex());
        let w = opt.step(
            w,
            Grads {
                tensors: vec![(name.clone(), g)],
            },
            Hyper {
                batch_size: 0,
                lr: 0.1,
                momentum: 0.9,
            },
        );
        let before: Vec<f32> = w.w.val().into_data().iter::<f32>().collect();
        let w = opt.step(
            w,
            Grads {
                tensors: vec![(name, zero.clone())],
            },
            Hyper {
                batch_size: 0,
                lr: 0.02,
                momentum: 0.9,
            },
        );
        let after: Vec<f32> = w.w.val().into_data().iter::<f32>().collect();
        before[0] - after[0]
    };
    // First step moved by 0.1·1; second: PyTorch 0.02·0.9·1, rescaled 0.02·0.9·(0.1/0.02)·1.
    assert!((step_with(false) - 0.018).abs() < 1e-6);
    assert!((step_with(true) - 0.09).abs() < 1e-6);
}
