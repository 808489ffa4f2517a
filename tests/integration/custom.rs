//! Models and data of your own through the whole trainer ([`noisescale::Trainer`]): an MLP and a
//! ResNet with ghost batch norm defined here, identical to the built-in ones, log byte for byte
//! what the built-in models log (timing aside) under every schedule kind, micro-batched as
//! whole; the example's model (burn data through a `Batcher`) survives kill -9 and resumes to
//! the uninterrupted run's metrics, and trains on 2 MPI ranks as on one process.

use crate::common::{kill, spawn, timing_free, wait_for_epochs};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use noisescale::config::RunConfig;
use noisescale::data::{Augment, ImageSet, synthetic};
use noisescale::dist::Local;
use noisescale::kernels::conv::conv2d;
use noisescale::model::GhostBatchNorm;
use noisescale::prelude::*;
use noisescale::train::{self, TrainOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Cross-entropy over logits, as every classifier here computes it.
fn classify(output: Tensor<2>, batch: ImageBatch) -> ClassificationOutput {
    let loss = CrossEntropyLossConfig::new()
        .init(&output.device())
        .forward(output.clone(), batch.targets.clone());
    ClassificationOutput {
        loss,
        output,
        targets: batch.targets,
    }
}

/// Implements burn-train's steps for a model with `fn logits(&self, Tensor<4>) -> Tensor<2>`.
macro_rules! steps {
    ($t:ty) => {
        impl TrainStep for $t {
            type Input = ImageBatch;
            type Output = ClassificationOutput;
            fn step(&self, b: ImageBatch) -> TrainOutput<ClassificationOutput> {
                let item = classify(self.logits(b.images.clone()), b);
                TrainOutput::new(self, item.loss.backward(), item)
            }
        }
        impl InferenceStep for $t {
            type Input = ImageBatch;
            type Output = ClassificationOutput;
            fn step(&self, b: ImageBatch) -> ClassificationOutput {
                classify(self.logits(b.images.clone()), b)
            }
        }
    };
}

/// An MLP written as a user would: flatten, linear layers with ReLU between.
#[derive(Module, Debug)]
struct UserMlp {
    layers: Vec<Linear>,
    head: Linear,
}

impl UserMlp {
    fn new(inputs: usize, width: usize, classes: usize, device: &Device) -> Self {
        UserMlp {
            layers: vec![LinearConfig::new(inputs, width).init(device)],
            head: LinearConfig::new(width, classes).init(device),
        }
    }
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x: Tensor<2> = x.flatten(1, 3);
        for l in &self.layers {
            x = relu(l.forward(x));
        }
        self.head.forward(x)
    }
}
steps!(UserMlp);
impl Trainable for UserMlp {}

fn conv(i: usize, o: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        })
        .init(device)
}

/// A basic block with a projection shortcut where the shape changes.
#[derive(Module, Debug)]
struct Block {
    conv1: Conv2d,
    bn1: GhostBatchNorm,
    conv2: Conv2d,
    bn2: GhostBatchNorm,
    skip: Option<(Conv2d, GhostBatchNorm)>,
}

/// A ResNet-8 with ghost batch norm written as a user would, from burn's layers and
/// noisescale's `GhostBatchNorm` and convolution kernel.
#[derive(Module, Debug)]
struct UserResNet {
    stem: Conv2d,
    stem_bn: GhostBatchNorm,
    blocks: Vec<Block>,
    fc: Linear,
    ghost: usize,
}

impl UserResNet {
    fn new(channels: usize, width: usize, classes: usize, ghost: usize, d: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut w = width;
        for stage in 0..3 {
            let (o, s) = (width << stage, if stage > 0 { 2 } else { 1 });
            let skip =
                (s != 1 || w != o).then(|| (conv(w, o, 1, s, d), GhostBatchNorm::new(o, ghost, d)));
            blocks.push(Block {
                conv1: conv(w, o, 3, s, d),
                bn1: GhostBatchNorm::new(o, ghost, d),
                conv2: conv(o, o, 3, 1, d),
                bn2: GhostBatchNorm::new(o, ghost, d),
                skip,
            });
            w = o;
        }
        UserResNet {
            stem: conv(channels, width, 3, 1, d),
            stem_bn: GhostBatchNorm::new(width, ghost, d),
            blocks,
            fc: LinearConfig::new(w, classes).init(d),
            ghost,
        }
    }
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.stem_bn.forward(conv2d(&self.stem, x)));
        for b in &self.blocks {
            let skip = match &b.skip {
                Some((c, bn)) => bn.forward(conv2d(c, x.clone())),
                None => x.clone(),
            };
            let y = relu(b.bn1.forward(conv2d(&b.conv1, x)));
            x = relu(b.bn2.forward(conv2d(&b.conv2, y)) + skip);
        }
        let [n, c, h, w] = x.dims();
        self.fc
            .forward(x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]))
    }
}
steps!(UserResNet);
impl Trainable for UserResNet {
    fn batch_coupling(&self) -> BatchCoupling {
        BatchCoupling::Ghost(self.ghost)
    }
}

fn config(model: &str, kind: &str, extra: &str) -> RunConfig {
    let text = format!(
        r#"
seed = 3
[data]
dataset = "synthetic"
workers = 1
synthetic = {{ train = 768, test = 256, classes = 10, shape = [3, 8, 8] }}
augment = {{ crop-flip = {{ pad = 2 }} }}
[model]
{model}
[optimizer]
kind = "momentum"
weight_decay = 5e-4
[schedule]
kind = "{kind}"
epochs = 3
lr = 0.05
batch_size = 32
momentum = 0.9
factor = 4.0
max_batch_size = 256
{extra}
[train]
max_micro_batch = 64
"#
    );
    RunConfig::from_toml(&text, "test config").unwrap()
}

/// Trains `cfg` with the built-in model into `dir/builtin`, and with `init`'s model through
/// the library's `Trainer` into `dir/user`; returns both directories.
fn both<M: Trainable + Send + TrainStep<Input = ImageBatch>>(
    cfg: &RunConfig,
    init: impl Fn(&Device) -> M + Sync,
    dir: &Path,
) -> (PathBuf, PathBuf) {
    let prepared = train::prepare_data(cfg).unwrap();
    let resolved = cfg.resolve(prepared.train.samples(), 1).unwrap();
    let (a, b) = (dir.join("builtin"), dir.join("user"));
    let opts = TrainOptions {
        out: a.clone(),
        resume: false,
        overwrite: false,
        group: None,
        verbose: false,
    };
    noisescale::cpu::on_compute_thread(|| train::train(&resolved, &prepared, &opts, &Local))
        .unwrap();
    let data = synthetic(768, 256, 10, 3, 8, 8, cfg.seed);
    let train_set = ImageSet::new(
        Arc::new(data.train),
        prepared.normalizer.clone(),
        cfg.data.augment,
    );
    let test_set = ImageSet::new(
        Arc::new(data.test),
        prepared.normalizer.clone(),
        Augment::None,
    );
    Trainer::new(cfg.clone())
        .out(&b)
        .verbose(false)
        .fit(init, train_set, test_set)
        .unwrap();
    (a, b)
}

fn assert_same_logs(a: &Path, b: &Path, what: &str) {
    let (ma, mb) = (timing_free(a), timing_free(b));
    assert_eq!(ma.len(), 3, "{what}: epochs logged");
    assert_eq!(ma, mb, "{what}: metrics differ");
    let decisions = |d: &Path| std::fs::read_to_string(d.join("decisions.jsonl")).ok();
    assert_eq!(decisions(a), decisions(b), "{what}: decisions differ");
}

#[test]
fn a_user_mlp_logs_what_the_builtin_mlp_logs_under_every_schedule_kind() {
    for (kind, extra) in [
        ("decay-lr", "milestones = [1, 2]\nwarmup_epochs = 0.5"),
        ("increase-batch", "milestones = [1, 2]"),
        ("hybrid", "milestones = [1, 2]"),
        ("converted", "lr_schedule = { type = \"cosine\" }"),
        (
            "adaptive",
            "adaptive = { alpha = 0.5, min_change = 1.5, every_updates = 8 }",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config("kind = \"mlp\"\nwidths = [32]", kind, extra);
        let (a, b) = both(&cfg, |d| UserMlp::new(192, 32, 10, d), tmp.path());
        assert_same_logs(&a, &b, kind);
        if kind == "adaptive" {
            let log = std::fs::read_to_string(a.join("decisions.jsonl")).unwrap();
            assert!(!log.is_empty(), "the adaptive run made no decision");
        }
    }
}

#[test]
fn a_user_resnet_with_ghost_batch_norm_logs_what_the_builtin_one_logs() {
    let model = "kind = \"resnet\"\ndepth = 8\nwidth = 4\nghost_batch_size = 8";
    for (kind, extra) in [
        ("increase-batch", "milestones = [1, 2]"),
        ("adaptive", "adaptive = { alpha = 1.0, min_change = 1.5 }"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(model, kind, extra);
        let (a, b) = both(&cfg, |d| UserResNet::new(3, 4, 10, 8, d), tmp.path());
        assert_same_logs(&a, &b, kind);
        let run = std::fs::read_to_string(b.join("config.toml")).unwrap();
        assert!(run.contains("kind = \"custom\""), "{run}");
        assert!(run.contains("ghost_batch_size = 8"), "{run}");
    }
}

#[test]
fn a_user_model_micro_batched_trains_as_whole_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for micro in [8usize, 512] {
        let mut cfg = config(
            "kind = \"mlp\"\nwidths = [32]",
            "increase-batch",
            "milestones = [1, 2]",
        );
        cfg.train.max_micro_batch = micro;
        cfg.train.noise_scale = false;
        let (_, b) = both(
            &cfg,
            |d| UserMlp::new(192, 32, 10, d),
            &tmp.path().join(micro.to_string()),
        );
        runs.push(timing_free(&b));
    }
    for (x, y) in runs[0].iter().zip(&runs[1]) {
        assert_eq!(x.updates, y.updates);
        assert!(
            (x.train_loss - y.train_loss).abs() < 1e-4,
            "{} vs {}",
            x.train_loss,
            y.train_loss
        );
        assert!(
            (x.test_loss - y.test_loss).abs() < 1e-4,
            "{} vs {}",
            x.test_loss,
            y.test_loss
        );
    }
}

#[test]
fn a_model_that_does_not_fit_the_data_is_named_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        "kind = \"mlp\"\nwidths = [32]",
        "decay-lr",
        "milestones = [1, 2]",
    );
    let data = synthetic(64, 16, 10, 3, 8, 8, 0);
    let norm = noisescale::data::Normalizer::from_dataset(&data.train);
    let err = Trainer::new(cfg)
        .out(tmp.path().join("run"))
        .verbose(false)
        // 100 inputs where the images have 192 values.
        .fit(
            |d| UserMlp::new(100, 8, 10, d),
            ImageSet::new(Arc::new(data.train), norm.clone(), Augment::None),
            ImageSet::new(Arc::new(data.test), norm, Augment::None),
        )
        .err()
        .expect("a model of the wrong input size must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("the model does not fit the data"), "{msg}");
    assert!(!tmp.path().join("run").join("metrics.jsonl").exists());
}

/// The example's binary (built beside the CLI's by `cargo test`).
fn example() -> PathBuf {
    let bin = Path::new(crate::common::BIN);
    bin.parent().unwrap().join("examples").join("custom_model")
}

/// The example run in `dir` (created), where it writes `runs/rings`.
fn run_example(dir: &Path) -> std::process::Command {
    std::fs::create_dir_all(dir).unwrap();
    let mut c = std::process::Command::new(example());
    c.current_dir(dir);
    c
}

#[test]
fn the_example_model_resumes_after_kill_9_to_the_uninterrupted_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
    crate::common::succeed(run_example(&whole));
    let mut child = spawn({
        let mut c = run_example(&cut);
        c.env("RAYON_NUM_THREADS", "1");
        c
    });
    let cut = cut.join("runs/rings");
    wait_for_epochs(&cut, 2);
    kill("-KILL", child.id());
    let _ = child.wait();
    let logged = timing_free(&cut).len();
    assert!(logged < 8, "the run finished before it was killed");
    crate::common::succeed(run_example(cut.parent().unwrap().parent().unwrap()));
    let whole = whole.join("runs/rings");
    assert_eq!(timing_free(&cut), timing_free(&whole));
    let decisions = |d: &Path| std::fs::read_to_string(d.join("decisions.jsonl")).unwrap();
    assert_eq!(decisions(&cut), decisions(&whole));
}

#[cfg(feature = "mpi")]
#[test]
fn the_example_model_trains_on_2_mpi_ranks_as_on_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    crate::common::succeed(run_example(&one));
    std::fs::create_dir_all(&two).unwrap();
    crate::common::succeed({
        let mut c = std::process::Command::new("mpirun");
        c.args(["-np", "2", "--oversubscribe"])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("NOISESCALE_COMM_TIMEOUT", "60")
            .env("RAYON_NUM_THREADS", "1")
            .current_dir(&two)
            .arg(example());
        c
    });
    let (one, two) = (one.join("runs/rings"), two.join("runs/rings"));
    let (a, b) = (timing_free(&one), timing_free(&two));
    assert_eq!(a.len(), b.len());
    // The same run up to f32 rounding (the gradient is summed in another order), except that
    // the adaptive schedule rounds B to whole samples: a rounding-level change of B_simple can
    // move a decision's B by one sample, and the runs part from there on.
    let same = a
        .iter()
        .zip(&b)
        .take_while(|(x, y)| (x.updates, x.batch_size) == (y.updates, y.batch_size))
        .count();
    // At least up to the first decision (end of epoch 3), whose B_simple is checked below.
    assert!(same >= 3, "only {same} epochs alike");
    for (x, y) in a.iter().zip(&b).take(same) {
        assert_eq!(y.world_size, 2);
        assert!(
            (x.train_loss - y.train_loss).abs() < 1e-4,
            "{} vs {}",
            x.train_loss,
            y.train_loss
        );
        assert!(
            (x.test_loss - y.test_loss).abs() < 1e-4,
            "{} vs {}",
            x.test_loss,
            y.test_loss
        );
    }
    let decisions = |d: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join("decisions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (da, db) = (decisions(&one), decisions(&two));
    assert!(da.len() >= 2 && db.len() >= 2, "{da:?} {db:?}");
    for (x, y) in da
        .iter()
        .zip(&db)
        .take_while(|(x, y)| x["update"] == y["update"])
    {
        let (p, q) = (
            x["b_simple"].as_f64().unwrap(),
            y["b_simple"].as_f64().unwrap(),
        );
        assert!((p - q).abs() < 1e-4 * p, "B_simple {p} vs {q}");
        let (p, q) = (
            x["new_batch_size"].as_i64().unwrap(),
            y["new_batch_size"].as_i64().unwrap(),
        );
        assert!((p - q).abs() <= 1, "B {p} vs {q}");
    }
}

/// A byte-level bigram model: an embedding of each byte read as the logits of the next.
#[derive(Module, Debug)]
struct Bigram {
    next: burn::nn::Embedding,
}

impl Bigram {
    fn forward(&self, b: noisescale::data::tokens::TokenBatch) -> ClassificationOutput {
        let [n, t] = b.tokens.dims();
        let logits = self.next.forward(b.tokens).reshape([n * t, 256]);
        noisescale::learner::classification(logits, b.targets.reshape([n * t]))
    }
}
noisescale::train_steps!(Bigram, noisescale::data::tokens::TokenBatch => ClassificationOutput, forward);
impl Trainable for Bigram {}

#[test]
fn a_language_model_trains_on_token_windows_of_a_text() {
    use noisescale::data::tokens::{TokenFile, TokenFormat, Windows};
    let kjv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/text/kjv.txt");
    let file = Arc::new(TokenFile::open(&kjv, TokenFormat::Bytes).unwrap());
    // 64 KiB of training text and 16 KiB of the validation tail (from byte 3,868,416).
    let train = Windows::new(file.clone(), 0..65_536, 32).unwrap();
    let valid = Windows::new(file, 3_868_416..3_868_416 + 16_384, 32).unwrap();
    let mut schedule = ScheduleConfig::new(ScheduleKind::IncreaseBatch, 3, 0.5, 16);
    (schedule.momentum, schedule.milestones) = (0.9, vec![2]);
    let tmp = tempfile::tempdir().unwrap();
    let trained = Trainer::new(RunConfig::custom("bigram", schedule))
        .out(tmp.path().join("run"))
        .verbose(false)
        .fit(
            |d| Bigram {
                next: burn::nn::EmbeddingConfig::new(256, 256).init(d),
            },
            train,
            valid,
        )
        .unwrap();
    let m = timing_free(&tmp.path().join("run"));
    // 2,047 windows: 128 updates of B = 16 in each of 2 epochs, then 26 of B = 80.
    assert_eq!(m.last().unwrap().updates.0, 2 * 128 + 26);
    let losses: Vec<f64> = m.iter().map(|r| r.test_loss).collect();
    eprintln!("bigram on KJV windows: validation loss per epoch {losses:.3?} nats");
    // From ln 256 = 5.55 nats (uniform) towards a bigram's.
    assert!(
        m[0].test_loss < 4.0 && m[2].test_loss < m[0].test_loss,
        "{m:?}"
    );
    assert_eq!(trained.summary.epochs.0, 3);
}
