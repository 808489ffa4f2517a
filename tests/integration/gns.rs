//! The online gradient-noise-scale estimator against the exact B_simple of a 784-64-10 MLP on
//! 10,000 MNIST images (`../shared/testdata/gns_mlp.json`, per-example gradients in PyTorch):
//! 74.9 at initialisation, 301.5 after one epoch.

use burn::tensor::{Device, Tensor, TensorData};
use noisescale::config::RunConfig;
use noisescale::data::Normalizer;
use noisescale::model::Model;
use noisescale::params::{named_tensors, replace_tensors};
use noisescale::train::{self, Prepared};
use serde_json::Value;
use std::collections::HashMap;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/gns_mlp.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The first 10,000 MNIST training images, normalised as in the reference.
fn mnist(n: usize) -> (RunConfig, Prepared) {
    let cfg = RunConfig::from_toml(
        &format!(
            "[data]\ndataset = \"mnist\"\ndir = \"{}/../shared/data\"\ntrain_subset = {n}\ntest_subset = 10\n[model]\nkind = \"mlp\"\nwidths = [64]\n[schedule]\nepochs = 1\nlr = 0.1\nbatch_size = 256\n",
            env!("CARGO_MANIFEST_DIR")
        ),
        "gns test",
    )
    .unwrap();
    let mut prepared = train::prepare_data(&cfg).unwrap();
    prepared.normalizer = Normalizer {
        mean: vec![0.1307],
        std: vec![0.3081],
    };
    (cfg, prepared)
}

/// The MLP with the reference weights of `point` (PyTorch's [out, in] transposed to burn's).
fn model_at(cfg: &RunConfig, point: &Value, device: &Device) -> Model {
    let model = cfg.model.init([1, 28, 28], 10, device);
    let w = &point["weights"];
    let layout = [
        ("0.weight", true),
        ("0.bias", false),
        ("2.weight", true),
        ("2.bias", false),
    ];
    let mut values = HashMap::new();
    for (t, (key, transpose)) in named_tensors(&model).iter().zip(layout) {
        let data = floats(&w[key]);
        let flat = if transpose {
            let [rows, cols] = [t.shape[1], t.shape[0]]; // PyTorch [out, in]
            let m = Tensor::<2>::from_data(TensorData::new(data, [rows, cols]), device);
            m.transpose().reshape([rows * cols])
        } else {
            Tensor::<1>::from_data(TensorData::new(data, [t.shape[0]]), device)
        };
        assert_eq!(flat.dims()[0], t.shape.iter().product::<usize>(), "{key}");
        values.insert(t.name.clone(), flat);
    }
    let (model, missing) = replace_tensors(model, &mut values);
    assert!(missing.is_empty() && values.is_empty());
    model
}

/// 300 batches of 256 in 8 micro-batches of 32 at both points: B_simple within 10% of the exact
/// value, and the numerator and denominator near their expectations (tr(Σ) and |G|² − tr(Σ)/N).
#[test]
fn online_estimate_matches_the_exact_noise_scale() {
    let data = reference();
    let n = data["n"].as_u64().unwrap() as usize;
    let (cfg, prepared) = mnist(n);
    let device = Device::flex().autodiff();
    for (name, exact) in [("init", 74.9), ("after_one_epoch", 301.5)] {
        let point = &data["points"][name];
        let b_simple = point["b_simple"].as_f64().unwrap();
        assert!((b_simple - exact).abs() < 0.1);
        let trace = point["trace_cov"].as_f64().unwrap();
        let grad_sq = point["grad_sq_norm"].as_f64().unwrap();
        let model = model_at(&cfg, point, &device);
        // The loss at these weights is the reference's: the weights are loaded right.
        let batch = noisescale::data::assemble(
            &prepared.train,
            &(0..n as u32).collect::<Vec<_>>(),
            &prepared.normalizer,
            noisescale::data::Augment::None,
            0,
            0,
        );
        let step = train::forward_backward(
            &model,
            batch.share,
            n,
            &train::StepPlan {
                max_micro_batch: n,
                min_pieces: 1,
                quantum: 1,
                measure: true,
                seed: 0,
                update: 0,
                inject_nan: false,
            },
            &device,
        )
        .unwrap();
        let loss = step.loss_sum / n as f64;
        let want = point["mean_loss"].as_f64().unwrap();
        assert!((loss - want).abs() < 1e-4, "{name}: loss {loss} vs {want}");
        assert!(
            (step.pieces[0].1 - grad_sq).abs() < 1e-3 * grad_sq,
            "{name}: |G|²"
        );

        let set = noisescale::data::ImageSet::new(
            prepared.train.clone(),
            prepared.normalizer.clone(),
            noisescale::data::Augment::None,
        );
        let r = train::measure_noise_scale(&model, &set, 300, 256, 8, 11, &device).unwrap();
        let err = (r.b_simple - b_simple).abs() / b_simple;
        eprintln!(
            "{name}: B_simple {:.1} ± {:.1} (exact {b_simple:.1}, {:.1}% off); tr {:.2} (exact {trace:.2}); |G|² {:.4} (expected {:.4})",
            r.b_simple,
            r.b_simple_stderr,
            100.0 * err,
            r.trace,
            r.grad_sq,
            grad_sq - trace / n as f64
        );
        assert!(
            err < 0.10,
            "{name}: B_simple {} vs exact {b_simple}",
            r.b_simple
        );
        assert!(
            (r.trace - trace).abs() < 0.10 * trace,
            "{name}: tr(Σ) {}",
            r.trace
        );
        let g_want = grad_sq - trace / n as f64;
        assert!(
            (r.grad_sq - g_want).abs() < 0.10 * g_want,
            "{name}: |G|² {}",
            r.grad_sq
        );
        // The uncertainty is a real spread: positive, and the truth within 4 of them.
        assert!(r.b_simple_stderr > 0.0 && r.b_simple_stderr < 0.2 * b_simple);
        assert!((r.b_simple - b_simple).abs() < 4.0 * r.b_simple_stderr + 0.02 * b_simple);
    }
}
