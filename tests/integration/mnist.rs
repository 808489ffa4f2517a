//! One epoch of the MLP on the real MNIST reaches over 90% test accuracy.

use noisescale::config::RunConfig;
use noisescale::dist::Local;
use noisescale::train::{self, TrainOptions};

#[test]
fn one_epoch_of_mlp_on_mnist_exceeds_90_percent() {
    let text = format!(
        r#"
[data]
dataset = "mnist"
dir = "{}/../shared/data"
[model]
kind = "mlp"
widths = [256]
[schedule]
epochs = 1
lr = 0.05
batch_size = 64
momentum = 0.9
"#,
        env!("CARGO_MANIFEST_DIR")
    );
    let cfg = RunConfig::from_toml(&text, "mnist test").unwrap();
    let prepared = train::prepare_data(&cfg).unwrap();
    assert_eq!(prepared.train.len(), 60_000);
    let resolved = cfg.resolve(prepared.train.samples(), 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = train::train(
        &resolved,
        &prepared,
        &TrainOptions {
            out: tmp.path().to_path_buf(),
            resume: false,
            overwrite: false,
            group: None,
            verbose: false,
        },
        &Local,
    )
    .unwrap();
    assert_eq!(s.updates.0, 938);
    assert!(s.final_test_accuracy > 0.90, "{}", s.final_test_accuracy);
}
