//! The trainer end to end on the synthetic set: resume after SIGKILL, micro-batch parity,
//! the divergence guard, and the CLI around them.

use noisescale::checkpoint;
use noisescale::config::RunConfig;
use noisescale::dist::Local;
use noisescale::metrics::read_metrics;
use noisescale::params::named_tensors;
use noisescale::train::{self, TrainOptions};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::BIN;

fn config(extra: &str) -> RunConfig {
    let base = r#"
seed = 3
[data]
dataset = "synthetic"
workers = 2
synthetic = { train = 4096, test = 512, classes = 10, shape = [3, 16, 16] }
[model]
kind = "mlp"
widths = [128]
[optimizer]
kind = "momentum"
weight_decay = 5e-4
"#;
    RunConfig::from_toml(&format!("{base}\n{extra}"), "test config").unwrap()
}

fn write_config(dir: &Path, cfg: &RunConfig) -> std::path::PathBuf {
    let p = dir.join("run.toml");
    std::fs::write(&p, cfg.to_toml()).unwrap();
    p
}

/// Trains `file` into `out` through the binary, which must succeed.
fn train_cli(file: &Path, out: &Path) {
    let ok = Command::new(BIN)
        .args(["train", file.to_str().unwrap(), "-q", "--out"])
        .arg(out)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn train_lib(cfg: &RunConfig, out: &Path) -> noisescale::metrics::RunSummary {
    let prepared = train::prepare_data(cfg).unwrap();
    let resolved = cfg.resolve(prepared.train.samples(), 1).unwrap();
    train::train(
        &resolved,
        &prepared,
        &TrainOptions {
            out: out.to_path_buf(),
            resume: false,
            overwrite: false,
            group: None,
            verbose: false,
        },
        &Local,
    )
    .unwrap()
}

fn timing_free(dir: &Path) -> Vec<noisescale::metrics::EpochMetrics> {
    read_metrics(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.without_timing())
        .collect()
}

#[test]
fn a_run_killed_mid_epoch_resumes_to_identical_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        r#"
[schedule]
kind = "increase-batch"
epochs = 6
lr = 0.05
batch_size = 8
momentum = 0.9
factor = 2.0
milestones = [2, 4]
[train]
max_micro_batch = 64
"#,
    );
    let file = write_config(tmp.path(), &cfg);
    let straight = tmp.path().join("straight");
    let killed = tmp.path().join("killed");
    train_cli(&file, &straight);

    let mut child = Command::new(BIN)
        .args([
            "train",
            file.to_str().unwrap(),
            "-q",
            "--out",
            killed.to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first epoch's record, then kill during the second epoch.
    let start = Instant::now();
    while read_metrics(&killed.join("metrics.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0)
        < 1
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no epoch finished"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(40));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = read_metrics(&killed.join("metrics.jsonl")).unwrap().len();
    assert!(partial < 6, "the run finished before it was killed");

    let resumed = Command::new(BIN)
        .args(["train", "-q", "--resume", killed.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(resumed.success());
    let a = timing_free(&straight);
    let b = timing_free(&killed);
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "resumed metrics differ from the uninterrupted run's");
}

#[test]
fn sigint_checkpoints_mid_epoch_and_resume_continues_exactly() {
    signal_checkpoints_mid_epoch_and_resume_continues_exactly("-INT");
}

/// SIGTERM is what Slurm and Kubernetes send before killing a preempted job.
#[test]
fn sigterm_checkpoints_like_ctrl_c() {
    signal_checkpoints_mid_epoch_and_resume_continues_exactly("-TERM");
}

fn signal_checkpoints_mid_epoch_and_resume_continues_exactly(signal: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        r#"
[schedule]
kind = "decay-lr"
epochs = 3
lr = 0.05
batch_size = 4
momentum = 0.9
milestones = [2]
"#,
    );
    let file = write_config(tmp.path(), &cfg);
    let straight = tmp.path().join("straight");
    let cut = tmp.path().join("cut");
    train_cli(&file, &straight);
    let child = Command::new(BIN)
        .args([
            "train",
            file.to_str().unwrap(),
            "-q",
            "--out",
            cut.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while read_metrics(&cut.join("metrics.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0)
        < 1
    {
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(30));
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Epochs of 1,024 updates: the signal always arrives with most of the run to go.
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    {
        assert!(stderr.contains("resume with"), "{stderr}");
        let (_, loaded) = checkpoint::load(
            &cut.join(checkpoint::CHECKPOINT_FILE),
            cfg.model
                .init([3, 16, 16], 10, &burn::tensor::Device::flex().autodiff()),
            &burn::tensor::Device::flex().autodiff(),
        )
        .unwrap();
        assert!(loaded.state.position.offset > 0 || loaded.state.position.epoch > 1);
        assert!(
            Command::new(BIN)
                .args(["train", "-q", "--resume", cut.to_str().unwrap()])
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(timing_free(&straight), timing_free(&cut));
    }
}

/// The weights after one update of a batch of `batch` samples (the whole synthetic training
/// set) pushed through in micro-batches of at most `micro`, and the initial weights.
fn one_update_weights(batch: usize, micro: usize, model: &str) -> [Vec<(String, Vec<f32>)>; 2] {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&format!(
        r#"
[schedule]
kind = "decay-lr"
epochs = 1
lr = 0.1
batch_size = {batch}
momentum = 0.9
[train]
max_micro_batch = {micro}
"#
    ));
    cfg.data.synthetic.train = batch;
    if model == "resnet" {
        cfg.model = noisescale::model::ModelConfig::Resnet {
            depth: 8,
            width: 4,
            ghost_batch_size: 32,
        };
        cfg.data.synthetic.shape = [3, 8, 8];
    }
    let out = tmp.path().join("run");
    assert_eq!(train_lib(&cfg, &out).updates.0, 1);
    let device = burn::tensor::Device::flex().autodiff();
    let shape = cfg.data.synthetic.shape;
    let values = |m: &noisescale::model::Model| -> Vec<(String, Vec<f32>)> {
        named_tensors(m)
            .into_iter()
            .map(|t| (t.name, t.value.into_data().iter::<f32>().collect()))
            .collect()
    };
    // The trainer's initial weights: drawn from the run's seed under the lock that keeps other
    // tests' runs, training on other threads, from reseeding in between.
    let initial = cfg.model.init_seeded(shape, 10, cfg.seed, &device);
    let before = values(&initial);
    let (m, _) =
        checkpoint::load(&out.join(checkpoint::CHECKPOINT_FILE), initial, &device).unwrap();
    [values(&m), before]
}

/// Both runs made the same update (to f32 rounding of differently ordered sums), and it moved
/// the weights by far more than that tolerance.
fn assert_same_update(a: &[Vec<(String, Vec<f32>)>; 2], b: &[Vec<(String, Vec<f32>)>; 2]) {
    let ([a, init_a], [b, init_b]) = (a, b);
    assert_eq!(init_a, init_b, "both runs must start from the same weights");
    assert_eq!(a.len(), b.len());
    let mut moved = 0.0f32;
    for (((na, va), (nb, vb)), (_, v0)) in a.iter().zip(b).zip(init_a) {
        assert_eq!(na, nb);
        for ((x, y), w0) in va.iter().zip(vb).zip(v0) {
            assert!((x - y).abs() <= 2e-5 + 1e-4 * y.abs(), "{na}: {x} vs {y}");
            moved = moved.max((y - w0).abs());
        }
    }
    assert!(
        moved > 1e-2,
        "the update moved the weights by at most {moved}"
    );
}

#[test]
fn a_4096_batch_in_micro_batches_of_256_gives_the_same_update() {
    assert_same_update(
        &one_update_weights(4096, 4096, "mlp"),
        &one_update_weights(4096, 256, "mlp"),
    );
}

/// B = 100 in micro-batches of 32, 32, 32 and 4: weighting the pieces by len/B (right) and by
/// 1/k (wrong) give different updates here, unlike with equal pieces.
#[test]
fn unequal_micro_batches_are_weighted_by_their_size() {
    assert_same_update(
        &one_update_weights(100, 100, "mlp"),
        &one_update_weights(100, 32, "mlp"),
    );
}

#[test]
fn micro_batching_with_ghost_batch_norm_gives_the_same_update() {
    assert_same_update(
        &one_update_weights(4096, 4096, "resnet"),
        &one_update_weights(4096, 256, "resnet"),
    );
}

/// Unequal micro-batches with ghost batch norm: B = 200 in micro-batches of 64 (64, 64, 64, 8),
/// ghost chunks of 32 (the last one 8), against one piece (224 ≥ 200, a multiple of 32).
#[test]
fn unequal_micro_batches_with_ghost_batch_norm_give_the_same_update() {
    assert_same_update(
        &one_update_weights(200, 224, "resnet"),
        &one_update_weights(200, 64, "resnet"),
    );
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_a_usable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        r#"
[schedule]
kind = "decay-lr"
epochs = 4
lr = 0.05
batch_size = 256
momentum = 0.9
[train]
inject_nan_at_update = 20
"#,
    );
    let file = write_config(tmp.path(), &cfg);
    let out = tmp.path().join("run");
    let res = Command::new(BIN)
        .args([
            "train",
            file.to_str().unwrap(),
            "-q",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("training diverged: the loss is NaN at epoch 1, update 20"),
        "{stderr}"
    );
    assert!(stderr.contains("last good checkpoint"), "{stderr}");
    // 16 updates per epoch: the checkpoint holds epoch 1.
    assert_eq!(read_metrics(&out.join("metrics.jsonl")).unwrap().len(), 1);
    let eval = Command::new(BIN)
        .args(["eval", out.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&eval.stdout);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    assert!(text.contains("16 updates"), "{text}");
}

#[test]
fn same_seed_same_numbers() {
    let run = |dir: &Path| {
        let cfg = config(
            r#"
[schedule]
kind = "hybrid"
epochs = 3
lr = 0.05
batch_size = 64
momentum = 0.9
milestones = [1, 2]
max_batch_size = 400
"#,
        );
        train_lib(&cfg, dir);
        timing_free(dir)
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = run(&tmp.path().join("a"));
    let b = run(&tmp.path().join("b"));
    assert_eq!(a, b);
    // Hybrid: 64 → 320, then B stays (cap 400) and ε ÷ 5.
    assert_eq!(
        a.iter().map(|m| m.batch_size).collect::<Vec<_>>(),
        vec![64, 320, 320]
    );
    assert!((a[2].lr - 0.01).abs() < 1e-12);
    assert_eq!(a[2].updates.0, 64 + 13 + 13);
    assert!(
        a[2].test_accuracy > 0.9,
        "synthetic data is separable: {}",
        a[2].test_accuracy
    );
}

#[test]
fn checkpoints_round_trip_and_bad_files_are_named() {
    use burn::tensor::Device;
    use noisescale::checkpoint::{load, save};
    use noisescale::model::ModelConfig;
    use noisescale::optim::OptimizerRecord;
    use noisescale::state::TrainState;
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    let cfg = config("[schedule]\nepochs = 1\nlr = 0.1\nbatch_size = 32\n");
    let resolved = cfg.resolve(noisescale::units::Samples(4096), 1).unwrap();
    let model = cfg.model.init([3, 16, 16], 10, &device);
    let mut record = OptimizerRecord {
        step: 7,
        ..Default::default()
    };
    let first = named_tensors(&model).remove(0);
    let n: usize = first.shape.iter().product();
    record
        .buffers
        .insert(format!("{}#v", first.name), vec![0.5; n]);
    let path = tmp.path().join("c.safetensors");
    save(&path, &model, &record, &TrainState::start(), &resolved).unwrap();
    let fresh = cfg.model.init([3, 16, 16], 10, &device);
    let (loaded, meta) = load(&path, fresh, &device).unwrap();
    assert_eq!(meta.optimizer, record);
    assert_eq!(meta.resolved, resolved);
    let a: Vec<Vec<f32>> = named_tensors(&model)
        .into_iter()
        .map(|t| t.value.into_data().iter::<f32>().collect())
        .collect();
    let b: Vec<Vec<f32>> = named_tensors(&loaded)
        .into_iter()
        .map(|t| t.value.into_data().iter::<f32>().collect())
        .collect();
    assert_eq!(a, b);

    // A truncated file and a checkpoint of another model are errors naming the file.
    let bytes = std::fs::read(&path).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = format!(
        "{:#}",
        load(&cut, cfg.model.init([3, 16, 16], 10, &device), &device).unwrap_err()
    );
    assert!(
        err.contains("cut.safetensors") && err.contains("corrupt or truncated"),
        "{err}"
    );
    let other = ModelConfig::Mlp { widths: vec![64] }.init([3, 16, 16], 10, &device);
    let err = format!("{:#}", load(&path, other, &device).unwrap_err());
    assert!(err.contains("another model"), "{err}");
}

#[test]
fn micro_batches_bound_peak_memory() {
    // One update of B = 2,048 through a ResNet-8 (width 8, ghost BN 64): in one piece, or in
    // micro-batches of 128. Each run is its own process, so `peak_memory_bytes` (VmHWM) is its own.
    let tmp = tempfile::tempdir().unwrap();
    let peak = |micro: usize| {
        let text = format!(
            r#"
seed = 1
[data]
dataset = "synthetic"
workers = 0
synthetic = {{ train = 2048, test = 128, classes = 10, shape = [3, 32, 32] }}
[model]
kind = "resnet"
depth = 8
width = 8
ghost_batch_size = 64
[schedule]
epochs = 1
lr = 0.1
batch_size = 2048
momentum = 0.9
[train]
max_micro_batch = {micro}
eval_batch_size = 128
"#
        );
        let file = tmp.path().join(format!("m{micro}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = tmp.path().join(format!("m{micro}"));
        train_cli(&file, &out);
        let m = read_metrics(&out.join("metrics.jsonl")).unwrap();
        (m[0].peak_memory_bytes, m[0].train_loss)
    };
    let (whole, loss_whole) = peak(2048);
    let (micro, loss_micro) = peak(128);
    assert!((loss_whole - loss_micro).abs() < 1e-5 * loss_whole);
    assert!(
        (micro as f64) < 0.5 * whole as f64,
        "peak memory with micro-batches {micro} vs whole batch {whole}"
    );
}

/// A linear classifier that notes which rayon pool thread computed its last logits.
#[derive(burn::module::Module, Debug)]
struct Probe {
    out: burn::nn::Linear,
}

/// The pool thread of [`Probe`]'s last logits plus one; 0 when not on a pool thread.
static PROBE_THREAD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Probe {
    fn classify(
        &self,
        b: noisescale::data::ImageBatch,
    ) -> noisescale::learner::ClassificationOutput {
        let on = rayon::current_thread_index().map_or(0, |i| i + 1);
        PROBE_THREAD.store(on, std::sync::atomic::Ordering::SeqCst);
        let output = self.out.forward(b.images.flatten::<2>(1, 3));
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&output.device())
            .forward(output.clone(), b.targets.clone());
        noisescale::learner::ClassificationOutput {
            loss,
            output,
            targets: b.targets,
        }
    }
}

impl noisescale::learner::TrainStep for Probe {
    type Input = noisescale::data::ImageBatch;
    type Output = noisescale::learner::ClassificationOutput;
    fn step(
        &self,
        b: noisescale::data::ImageBatch,
    ) -> noisescale::learner::TrainOutput<Self::Output> {
        let item = self.classify(b);
        noisescale::learner::TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl noisescale::learner::InferenceStep for Probe {
    type Input = noisescale::data::ImageBatch;
    type Output = noisescale::learner::ClassificationOutput;
    fn step(&self, b: noisescale::data::ImageBatch) -> Self::Output {
        self.classify(b)
    }
}

impl noisescale::learner::Trainable for Probe {}

/// A library user's loop on its own thread: the step and the evaluation still run on a thread
/// of rayon's pool (`cpu::on_compute_thread`), not on the caller's, which would hand every
/// parallel operation over and sleep until it is done.
#[test]
fn the_step_and_evaluation_move_onto_a_pool_thread() {
    use noisescale::data::{Augment, ImageSet, Normalizer, eval_batches, synthetic};
    use noisescale::train::{StepPlan, evaluate, forward_backward};
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(rayon::current_thread_index(), None, "the test's own thread");
    let split = synthetic(64, 32, 10, 1, 8, 8, 0);
    let normalizer = Normalizer::from_dataset(&split.train);
    let device = burn::tensor::Device::flex().autodiff();
    let model = Probe {
        out: burn::nn::LinearConfig::new(64, 10).init(&device),
    };
    let batch = eval_batches(&split.train, &normalizer, 16)
        .next()
        .expect("a batch");
    PROBE_THREAD.store(0, SeqCst);
    let step =
        forward_backward(&model, batch.share, 16, &StepPlan::whole_batch(), &device).unwrap();
    assert!(step.loss_sum.is_finite());
    assert_ne!(
        PROBE_THREAD.load(SeqCst),
        0,
        "forward_backward ran on the caller's thread"
    );
    PROBE_THREAD.store(0, SeqCst);
    let test = ImageSet::new(std::sync::Arc::new(split.test), normalizer, Augment::None);
    let e = evaluate(&model, &test, 16, &device);
    assert!(e.loss.is_finite());
    assert_ne!(
        PROBE_THREAD.load(SeqCst),
        0,
        "evaluate ran on the caller's thread"
    );
}
