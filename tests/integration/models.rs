//! Model shapes, parameter counts against PyTorch, and a forward/backward pass of each model.

use burn::tensor::{Device, Distribution, Tensor};
use noisescale::model::ModelConfig;
use noisescale::params::{Grads, named_tensors, trainable_params};

fn device() -> Device {
    Device::flex().autodiff()
}

#[test]
fn parameter_counts_match_pytorch() {
    let d = device();
    let cnn = ModelConfig::Cnn { hidden: 512 }.init([1, 28, 28], 10, &d);
    assert_eq!(trainable_params(&cnn), 1_663_370);
    let r8 = ModelConfig::Resnet {
        depth: 8,
        width: 16,
        ghost_batch_size: 0,
    }
    .init([3, 32, 32], 10, &d);
    assert_eq!(trainable_params(&r8), 78_042);
    let wrn = ModelConfig::Wrn {
        depth: 16,
        widen: 4,
        dropout: 0.0,
        ghost_batch_size: 128,
    }
    .init([3, 32, 32], 10, &d);
    assert_eq!(trainable_params(&wrn), 2_748_890);
    let mlp = ModelConfig::Mlp { widths: vec![100] }.init([1, 28, 28], 10, &d);
    assert_eq!(trainable_params(&mlp), 784 * 100 + 100 + 100 * 10 + 10);
}

#[test]
fn names_are_dotted_paths_and_buffers_are_not_trainable() {
    let d = device();
    let r8 = ModelConfig::Resnet {
        depth: 8,
        width: 16,
        ghost_batch_size: 0,
    }
    .init([3, 32, 32], 10, &d);
    let named = named_tensors(&r8);
    let names: Vec<_> = named.iter().map(|n| n.name.as_str()).collect();
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("blocks.1.shortcut.conv.weight")),
        "{names:?}"
    );
    let buffers: Vec<_> = named.iter().filter(|n| !n.trainable).collect();
    // Stem + 2 per block + 2 projections = 1 + 6 + 2 = 9 batch norms, two buffers each.
    assert_eq!(buffers.len(), 18);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "names must be unique");
}

#[test]
fn every_model_runs_forward_and_backward() {
    let d = device();
    for (cfg, shape) in ModelConfig::catalogue() {
        let cfg = match cfg {
            ModelConfig::Wrn { depth, .. } => ModelConfig::Wrn {
                depth,
                widen: 1,
                dropout: 0.1,
                ghost_batch_size: 2,
            },
            c => c,
        };
        let model = cfg.init(shape, 10, &d);
        let [c, h, w] = shape;
        let x = Tensor::<4>::random([4, c, h, w], Distribution::Normal(0.0, 1.0), &d);
        let logits = model.forward(x);
        assert_eq!(logits.dims(), [4, 10], "{}", cfg.name());
        let loss = logits.powi_scalar(2).mean();
        let grads = loss.backward();
        let g = Grads::from_backward(&model, &grads);
        let trainable = named_tensors(&model).iter().filter(|n| n.trainable).count();
        assert_eq!(
            g.tensors.len(),
            trainable,
            "{}: one gradient per parameter",
            cfg.name()
        );
        assert!(g.all_finite());
        assert_eq!(g.numel(), trainable_params(&model));
    }
}
