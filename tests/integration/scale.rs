//! Where users run it: any thread count, every model kind through interruption and resume, and
//! results that do not depend on verbosity.

use crate::common::*;

/// A ResNet-8 with ghost batch norm and crop-flip augmentation on synthetic 8×8 images.
const RESNET: &str = r#"
seed = 5
[data]
dataset = "synthetic"
workers = 2
augment = { crop-flip = { pad = 2 } }
synthetic = { train = 1024, test = 128, classes = 10, shape = [3, 8, 8] }
[model]
kind = "resnet"
depth = 8
width = 4
ghost_batch_size = 8
[schedule]
kind = "increase-batch"
epochs = 3
lr = 0.05
batch_size = 8
momentum = 0.9
factor = 2.0
milestones = [1, 2]
[train]
max_micro_batch = 64
eval_batch_size = 64
"#;

/// A wide ResNet 10-1 with dropout (the backend's random stream) and ghost batch norm.
const WRN: &str = r#"
seed = 9
[data]
dataset = "synthetic"
workers = 1
synthetic = { train = 1024, test = 128, classes = 10, shape = [3, 8, 8] }
[model]
kind = "wrn"
depth = 10
widen = 1
dropout = 0.3
ghost_batch_size = 8
[schedule]
kind = "decay-lr"
epochs = 3
lr = 0.05
batch_size = 8
momentum = 0.9
milestones = [2]
[train]
max_micro_batch = 32
eval_batch_size = 64
"#;

/// The conv kernels crashed with more than 8 threads (a re-entered thread-local scratch) and
/// must give the same numbers at every thread count: 1, 2, 16 (twice) and 32 threads.
#[test]
fn a_conv_net_gives_identical_metrics_at_1_2_16_and_32_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let two_epochs = RESNET
        .replace("epochs = 3", "epochs = 2")
        .replace("milestones = [1, 2]", "milestones = [1]");
    let cfg = write(tmp.path(), "resnet.toml", &two_epochs);
    let run = |threads: &str, tag: &str| {
        let out = tmp.path().join(format!("t{threads}{tag}"));
        succeed(train_cmd(&cfg, &out, &[("RAYON_NUM_THREADS", threads)]));
        timing_free(&out)
    };
    let one = run("1", "");
    assert_eq!(one.len(), 2);
    for (threads, tag) in [("2", ""), ("16", "a"), ("16", "b"), ("32", "")] {
        assert_eq!(one, run(threads, tag), "{threads} threads differ from 1");
    }
}

/// The same seed gives the same numbers with and without `-q` (the progress bar and the
/// parameter count once touched the lazily initialised weights at another point of the
/// random stream).
#[test]
fn quiet_and_verbose_runs_give_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    for model in [RESNET, WRN] {
        let one_epoch = model
            .replace("epochs = 3", "epochs = 1")
            .replace("milestones = [1, 2]", "milestones = []")
            .replace("milestones = [2]", "milestones = []");
        let cfg = write(tmp.path(), "m.toml", &one_epoch);
        let quiet = tmp.path().join("quiet");
        let verbose = tmp.path().join("verbose");
        std::fs::remove_dir_all(&quiet).ok();
        std::fs::remove_dir_all(&verbose).ok();
        succeed(train_cmd(&cfg, &quiet, &[]));
        let mut v = std::process::Command::new(BIN);
        v.args(["train", cfg.to_str().unwrap(), "--out"])
            .arg(&verbose);
        succeed(v);
        assert_eq!(timing_free(&quiet), timing_free(&verbose));
    }
}

/// Interrupts a run of `model` with `signal` during its second epoch, resumes it, and compares
/// every non-timing field with an uninterrupted run.
fn interrupted_then_resumed_equals_straight(model: &str, signal: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "run.toml", model);
    let straight = tmp.path().join("straight");
    let cut = tmp.path().join("cut");
    succeed(train_cmd(&cfg, &straight, &[]));
    let child = spawn(train_cmd(&cfg, &cut, &[]));
    wait_for_epochs(&cut, 1);
    kill(signal, child.id());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if signal == "-KILL" {
        assert!(!out.status.success());
    } else {
        assert_eq!(out.status.code(), Some(130), "{stderr}");
    }
    assert!(
        timing_free(&cut).len() < 3,
        "the run ended before the signal"
    );
    succeed(resume_cmd(&cut));
    assert_eq!(timing_free(&straight), timing_free(&cut));
}

#[test]
fn resnet_with_ghost_batch_norm_and_crop_flip_resumes_exactly_after_ctrl_c() {
    interrupted_then_resumed_equals_straight(RESNET, "-INT");
}

#[test]
fn resnet_with_ghost_batch_norm_and_crop_flip_resumes_exactly_after_kill_9() {
    interrupted_then_resumed_equals_straight(RESNET, "-KILL");
}

#[test]
fn wide_resnet_with_dropout_resumes_exactly_after_ctrl_c() {
    interrupted_then_resumed_equals_straight(WRN, "-INT");
}

/// Checkpoints every K updates or T minutes land mid-epoch; a run killed (SIGKILL) after one
/// resumes from that point, not from the last epoch end, and ends identical to an uninterrupted
/// run.
fn killed_after_a_mid_epoch_checkpoint_resumes_exactly(every: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
seed = 2
[data]
dataset = "synthetic"
synthetic = {{ train = 16384, test = 256, classes = 10, shape = [1, 8, 8] }}
[model]
kind = "mlp"
widths = [64]
[schedule]
kind = "decay-lr"
epochs = 2
lr = 0.05
batch_size = 4
momentum = 0.9
[train]
checkpoint_every = 0
{every}
"#
    );
    let cfg = write(tmp.path(), "run.toml", &text);
    let straight = tmp.path().join("straight");
    let cut = tmp.path().join("cut");
    succeed(train_cmd(&cfg, &straight, &[]));
    let mut child = spawn(train_cmd(&cfg, &cut, &[]));
    let ckpt = cut.join(noisescale::checkpoint::CHECKPOINT_FILE);
    let start = std::time::Instant::now();
    while !ckpt.exists() {
        assert!(start.elapsed().as_secs() < 120, "no checkpoint written");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        timing_free(&cut).is_empty(),
        "the first epoch ended before the kill"
    );
    let device = burn::tensor::Device::flex().autodiff();
    let model =
        noisescale::model::ModelConfig::Mlp { widths: vec![64] }.init([1, 8, 8], 10, &device);
    let (_, loaded) = noisescale::checkpoint::load(&ckpt, model, &device).unwrap();
    assert_eq!(loaded.state.position.epoch, 0);
    assert!(loaded.state.position.offset > 0 && loaded.state.updates.0 > 0);
    succeed(resume_cmd(&cut));
    assert_eq!(timing_free(&straight), timing_free(&cut));
}

#[test]
fn checkpoints_every_k_updates_resume_exactly() {
    killed_after_a_mid_epoch_checkpoint_resumes_exactly("checkpoint_every_updates = 200");
}

#[test]
fn checkpoints_every_t_minutes_resume_exactly() {
    killed_after_a_mid_epoch_checkpoint_resumes_exactly("checkpoint_every_minutes = 0.001");
}

/// A run killed before it wrote any checkpoint resumes by starting over, saying so, and ends
/// identical to an uninterrupted run (nothing was kept, so nothing is lost).
#[test]
fn a_run_killed_before_its_first_checkpoint_starts_over_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(
        tmp.path(),
        "run.toml",
        &WRN.replace("epochs = 3", "epochs = 1")
            .replace("milestones = [2]", "milestones = []"),
    );
    let straight = tmp.path().join("straight");
    let cut = tmp.path().join("cut");
    succeed(train_cmd(&cfg, &straight, &[]));
    let mut child = spawn(train_cmd(&cfg, &cut, &[]));
    let start = std::time::Instant::now();
    while !cut.join("config.toml").exists() {
        assert!(start.elapsed().as_secs() < 60, "the run never started");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!cut.join(noisescale::checkpoint::CHECKPOINT_FILE).exists());
    let o = succeed(resume_cmd(&cut));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("starting it over from the beginning"), "{err}");
    assert_eq!(timing_free(&straight), timing_free(&cut));
}

/// Killed while writing its first checkpoint, right after the first epoch's metrics line: the
/// resumed run starts over (no checkpoint ever existed) and ends identical to a straight run.
#[test]
fn killed_during_the_first_checkpoint_write_starts_over_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(
        tmp.path(),
        "run.toml",
        &RESNET
            .replace("epochs = 3", "epochs = 2")
            .replace("milestones = [1, 2]", "milestones = [1]"),
    );
    let straight = tmp.path().join("straight");
    let cut = tmp.path().join("cut");
    succeed(train_cmd(&cfg, &straight, &[]));
    let crash = noisescale::checkpoint::CRASH_IN_WRITE_ENV;
    let o = train_cmd(&cfg, &cut, &[(crash, "checkpoint.safetensors:1")])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(
        timing_free(&cut).len(),
        1,
        "the first epoch's line was written"
    );
    assert!(!cut.join(noisescale::checkpoint::CHECKPOINT_FILE).exists());
    let o = succeed(resume_cmd(&cut));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("starting it over from the beginning"), "{err}");
    assert_eq!(timing_free(&straight), timing_free(&cut));
}

/// `noisescale noise` reads a saved run's B_simple with its error, and refuses impossible
/// settings naming them.
#[test]
fn noise_command_measures_a_saved_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(
        tmp.path(),
        "run.toml",
        &WRN.replace("epochs = 3", "epochs = 1")
            .replace("milestones = [2]", "milestones = []")
            .replace("dropout = 0.3", "dropout = 0.0"),
    );
    let out = tmp.path().join("run");
    succeed(train_cmd(&cfg, &out, &[]));
    let mut noise = std::process::Command::new(BIN);
    noise
        .args(["noise", "--batches", "20", "--batch-size", "64"])
        .arg(&out);
    let o = succeed(noise);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("B_simple = tr(Σ)/|G|² ≈")
            && text.contains("from 20 batches of 64 in 8 pieces"),
        "{text}"
    );
    let o = std::process::Command::new(BIN)
        .args(["noise", "--batch-size", "4", "--pieces", "8"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("pieces <= batch size"));
}
