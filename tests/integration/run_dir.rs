//! The run directory: its lock, the refusal to overwrite a run, checkpoint integrity, resume
//! checks against the data, and the messages of issue 15.

use burn::tensor::Device;
use noisescale::checkpoint;
use noisescale::config::RunConfig;
use noisescale::optim::OptimizerRecord;
use noisescale::params::named_tensors;
use noisescale::run_dir::{self, CHECKPOINT_FILE, LOCK_FILE, METRICS_FILE};
use noisescale::state::TrainState;
use noisescale::units::Samples;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    BIN, kill, resume_cmd, spawn, succeed, timing_free, train_cmd, wait_for_epochs, write,
};

fn config(epochs: u32, batch: usize, train: usize) -> String {
    format!(
        r#"
seed = 2
[data]
dataset = "synthetic"
workers = 0
synthetic = {{ train = {train}, test = 200, classes = 10, shape = [3, 8, 8] }}
[model]
kind = "mlp"
widths = [32]
[schedule]
kind = "decay-lr"
epochs = {epochs}
lr = 0.05
batch_size = {batch}
momentum = 0.9
"#
    )
}

fn noisescale(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Like [`noisescale`], but a command still running after 60 s is killed (and fails).
fn noisescale_within_a_minute(args: &[&std::ffi::OsStr]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

macro_rules! args {
    ($($a:expr),*) => { &[$(std::ffi::OsStr::new($a)),*] };
}

#[test]
fn a_second_train_on_a_live_directory_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    // Long enough to be alive while the second commands run (it is killed).
    let cfg = write(tmp.path(), "slow.toml", &config(20_000, 64, 512));
    let out = tmp.path().join("run");
    let mut first = Command::new(BIN)
        .args(["train", cfg.to_str().unwrap(), "-q", "--out"])
        .arg(&out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while run_dir::recorded_holder(&out).is_none() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = first.id();
    let host = run_dir::hostname();
    for second in [
        noisescale_within_a_minute(args![
            "train",
            cfg.as_os_str(),
            "-q",
            "--out",
            out.as_os_str()
        ]),
        noisescale_within_a_minute(args!["train", "-q", "--resume", out.as_os_str()]),
        noisescale_within_a_minute(args![
            "train",
            cfg.as_os_str(),
            "-q",
            "--overwrite",
            "--out",
            out.as_os_str()
        ]),
    ] {
        let err = stderr(&second);
        assert!(!second.status.success());
        assert!(
            err.contains("is in use by another noisescale process")
                && err.contains(&format!("pid {pid} on host {host}")),
            "{err}"
        );
    }
    // Under the library too (same process: a second lock is refused as well).
    assert!(run_dir::RunLock::acquire(&out).is_err());
    first.kill().unwrap();
    first.wait().unwrap();
    // SIGKILL leaves the holder's details but not the lock: the next writer takes it over.
    assert_eq!(run_dir::recorded_holder(&out).map(|h| h.pid), Some(pid));
    let lock = run_dir::RunLock::acquire(&out).unwrap();
    let notes = lock.notes.join("\n");
    assert!(
        notes.contains("stale lock") && notes.contains(&format!("pid {pid}")),
        "{notes}"
    );
}

#[test]
fn a_started_or_finished_run_is_not_overwritten_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "run.toml", &config(1, 64, 256));
    let out = tmp.path().join("run");
    let o = noisescale(args![
        "train",
        cfg.as_os_str(),
        "-q",
        "--out",
        out.as_os_str()
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = std::fs::read(out.join(METRICS_FILE)).unwrap();
    let o = noisescale(args![
        "train",
        cfg.as_os_str(),
        "-q",
        "--out",
        out.as_os_str()
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("already holds a run")
            && err.contains("metrics.jsonl")
            && err.contains("--overwrite")
            && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join(METRICS_FILE)).unwrap(), metrics);
    // The library refuses as well (reproduce and tests call it directly).
    let err = format!(
        "{:#}",
        run_dir::open_for_training(&out, false, false, false).unwrap_err()
    );
    assert!(err.contains("already holds a run"), "{err}");
    // --overwrite starts afresh; a different seed gives a different first line.
    let o = noisescale(args![
        "train",
        cfg.as_os_str(),
        "-q",
        "--overwrite",
        "--seed",
        "9",
        "--out",
        out.as_os_str()
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(out.join(METRICS_FILE)).unwrap(), metrics);
    // The lock file stays, empty, after a clean exit.
    assert_eq!(std::fs::read(out.join(LOCK_FILE)).unwrap(), b"");
}

#[test]
fn reproduce_refuses_to_replace_a_run_of_another_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rep");
    let first = out.join("runs").join("decay-lr-seed0");
    std::fs::create_dir_all(&first).unwrap();
    let cfg = write(tmp.path(), "other.toml", &config(1, 64, 256));
    let o = noisescale(args![
        "train",
        cfg.as_os_str(),
        "-q",
        "--overwrite",
        "--out",
        first.as_os_str()
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = noisescale(args![
        "reproduce",
        "--preset",
        "synthetic",
        "-q",
        "--out",
        out.as_os_str()
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("decay-lr-seed0") && err.contains("already holds a run"),
        "{err}"
    );
}

fn mlp_checkpoint(dir: &Path) -> (RunConfig, PathBuf) {
    let cfg = RunConfig::from_toml(&config(2, 64, 256), "test").unwrap();
    let resolved = cfg.resolve(Samples(256), 1).unwrap();
    let device = Device::flex();
    let model = cfg.model.init([3, 8, 8], 10, &device);
    let mut record = OptimizerRecord {
        step: 3,
        last_lr: Some(0.05),
        ..Default::default()
    };
    for t in named_tensors(&model) {
        let n = t.shape.iter().product();
        record
            .buffers
            .insert(format!("{}#v", t.name), vec![0.25; n]);
    }
    let mut state = TrainState::start();
    state.position.epoch = 1;
    state.epoch.loss_sum = 92.750_000_000_000_01;
    let path = dir.join(CHECKPOINT_FILE);
    checkpoint::save(&path, &model, &record, &state, &resolved).unwrap();
    (cfg, path)
}

fn load_err(cfg: &RunConfig, path: &Path) -> String {
    let device = Device::flex();
    match checkpoint::load(path, cfg.model.init([3, 8, 8], 10, &device), &device) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn every_checkpoint_corruption_is_an_error_naming_the_file_and_what_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, path) = mlp_checkpoint(tmp.path());
    let device = Device::flex();
    let (_, loaded) =
        checkpoint::load(&path, cfg.model.init([3, 8, 8], 10, &device), &device).unwrap();
    assert_eq!(loaded.state.epoch.loss_sum, 92.750_000_000_000_01);
    assert_eq!(loaded.state.position.epoch, 1);
    let good = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let bad = tmp.path().join("bad.safetensors");

    // A flipped exponent bit in the last tensor's data.
    let mut b = good.clone();
    let at = b.len() - 2;
    b[at] ^= 0x40;
    std::fs::write(&bad, &b).unwrap();
    let err = load_err(&cfg, &bad);
    assert!(
        err.contains("bad.safetensors")
            && err.contains("tensor optim/")
            && err.contains("fails its integrity check"),
        "{err}"
    );
    // The epoch digit of the training state flipped 1 → 2 (valid JSON, same length).
    let header = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
    let at = header.find(r#"\"epoch\":1"#).expect("the state's epoch") + r#"\"epoch\":"#.len();
    let mut b = good.clone();
    b[8 + at] = b'2';
    std::fs::write(&bad, &b).unwrap();
    let err = load_err(&cfg, &bad);
    assert!(
        err.contains("bad.safetensors")
            && err.contains("training state (metadata) fails its integrity check"),
        "{err}"
    );
    // The recorded hash removed.
    let mut b = good.clone();
    let at = header.find(checkpoint::META_SHA256_KEY).unwrap();
    b[8 + at] = b'X';
    std::fs::write(&bad, &b).unwrap();
    let err = load_err(&cfg, &bad);
    assert!(err.contains("no integrity hash"), "{err}");
    // Truncated.
    std::fs::write(&bad, &good[..good.len() - 100]).unwrap();
    assert!(load_err(&cfg, &bad).contains("corrupt or truncated"));
}

#[test]
fn optimiser_buffers_are_checked_against_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RunConfig::from_toml(&config(2, 64, 256), "test").unwrap();
    let resolved = cfg.resolve(Samples(256), 1).unwrap();
    let device = Device::flex();
    let model = cfg.model.init([3, 8, 8], 10, &device);
    let first = named_tensors(&model).remove(0);
    let n: usize = first.shape.iter().product();
    let short = format!("has {} values, parameter {} has {n}", n - 1, first.name);
    let cases: [(&str, String, usize, &str); 4] = [
        (
            "unknown",
            "nope.weight#v".into(),
            n,
            "not a parameter of the model",
        ),
        ("short", format!("{}#v", first.name), n - 1, &short),
        ("kind", format!("{}#m1", first.name), n, "keeps buffers"),
        (
            "unnamed",
            first.name.clone(),
            n,
            "not named PARAMETER#BUFFER",
        ),
    ];
    for (label, key, len, expect) in cases {
        let mut record = OptimizerRecord::default();
        record.buffers.insert(key, vec![0.0; len]);
        let path = tmp.path().join(format!("{label}.safetensors"));
        checkpoint::save(&path, &model, &record, &TrainState::start(), &resolved).unwrap();
        let err = load_err(&cfg, &path);
        assert!(
            err.contains(&format!("{label}.safetensors")) && err.contains(expect),
            "{label}: {err}"
        );
    }
}

/// Writes a tiny MNIST-format data set of `train` training images of 6×6 into `dir`.
fn tiny_mnist(dir: &Path, train: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let images = |count: u32| {
        let mut b = Vec::new();
        for v in [0x803u32, count, 6, 6] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend((0..count * 36).map(|i| (i * 7 % 251) as u8));
        b
    };
    let labels = |count: u32| {
        let mut b = Vec::new();
        for v in [0x801u32, count] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend((0..count).map(|i| (i % 10) as u8));
        b
    };
    std::fs::write(dir.join("train-images-idx3-ubyte"), images(train)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels(train)).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), images(50)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), labels(50)).unwrap();
}

#[test]
fn resuming_on_data_of_another_size_names_both_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tiny_mnist(&a, 200);
    tiny_mnist(&b, 230);
    let cfg = write(
        tmp.path(),
        "m.toml",
        "[data]\ndataset = \"mnist\"\nworkers = 0\n[model]\nkind = \"mlp\"\nwidths = [8]\n\
         [schedule]\nepochs = 3\nlr = 0.05\nbatch_size = 50\nmomentum = 0.9\n",
    );
    let out = tmp.path().join("run");
    // Stop after the first epoch's checkpoint with a crash in the second checkpoint write.
    let o = Command::new(BIN)
        .args(["train", cfg.to_str().unwrap(), "-q", "--data"])
        .arg(&a)
        .arg("--out")
        .arg(&out)
        .env(checkpoint::CRASH_IN_WRITE_ENV, "checkpoint.safetensors:2")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = noisescale(args![
        "train",
        "-q",
        "--resume",
        out.as_os_str(),
        "--data",
        b.as_os_str()
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("N = 200")
            && err.contains("N = 230")
            && err.contains("checkpoint.safetensors"),
        "{err}"
    );
    // The data moved (same N): resuming is fine.
    let moved = tmp.path().join("moved");
    tiny_mnist(&moved, 200);
    let o = noisescale(args![
        "train",
        "-q",
        "--resume",
        out.as_os_str(),
        "--data",
        moved.as_os_str()
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn the_schedule_is_checked_against_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, path) = mlp_checkpoint(tmp.path());
    let device = Device::flex();
    let (_, loaded) =
        checkpoint::load(&path, cfg.model.init([3, 8, 8], 10, &device), &device).unwrap();
    let same = cfg.resolve(Samples(256), 1).unwrap();
    loaded.check_resume(&path, &same).unwrap();
    let mut other = cfg.resolve(Samples(1000), 1).unwrap();
    other.dataset_size = Samples(256);
    let err = format!("{:#}", loaded.check_resume(&path, &other).unwrap_err());
    assert!(
        err.contains("schedule") && err.contains("checkpoint.safetensors"),
        "{err}"
    );
}

// ---- messages -------------------------------------------------------------------------------

#[test]
fn resume_without_the_checkpoint_after_logged_epochs_says_it_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "run.toml", &config(2, 64, 256));
    let out = tmp.path().join("run");
    assert!(
        noisescale(args![
            "train",
            cfg.as_os_str(),
            "-q",
            "--out",
            out.as_os_str()
        ])
        .status
        .success()
    );
    std::fs::remove_file(out.join(CHECKPOINT_FILE)).unwrap();
    let o = noisescale(args!["train", "--resume", out.as_os_str()]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains(
            "checkpoint.safetensors is missing although metrics.jsonl logs 2 finished epoch(s)"
        ) && !err.contains("had not finished an epoch"),
        "{err}"
    );
}

#[test]
fn a_directory_where_a_data_file_should_be_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("mnist");
    tiny_mnist(&m, 20);
    std::fs::remove_file(m.join("t10k-images-idx3-ubyte")).unwrap();
    std::fs::create_dir(m.join("t10k-images-idx3-ubyte")).unwrap();
    let e = noisescale::data::load(noisescale::data::DatasetKind::Mnist, &m).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("t10k-images-idx3-ubyte is a directory, not a file")
            && !text.contains("missing"),
        "{text}"
    );

    // CIFAR-10: a directory as data_batch_1.bin, through the command line ({:#} chain).
    let c = tmp.path().join("cifar");
    std::fs::create_dir_all(c.join("data_batch_1.bin")).unwrap();
    std::fs::write(c.join("test_batch.bin"), vec![0u8; 3073]).unwrap();
    let cfg = write(
        tmp.path(),
        "c.toml",
        "[data]\ndataset = \"cifar10\"\n[schedule]\nepochs = 1\nlr = 0.1\nbatch_size = 8\n",
    );
    let out = tmp.path().join("out");
    let o = noisescale(args![
        "train",
        cfg.as_os_str(),
        "--data",
        c.as_os_str(),
        "--out",
        out.as_os_str()
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("data_batch_1.bin is a directory, not a file"),
        "{err}"
    );
    assert!(
        err.matches("s a directory").count() == 1 && !err.contains("os error"),
        "{err}"
    );
}

#[test]
fn eval_of_a_missing_path_names_it() {
    let o = noisescale(args!["eval", "/nonexistent"]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("/nonexistent does not exist") && !err.contains("/config.toml"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let o = noisescale(args!["eval", tmp.path().as_os_str()]);
    let err = stderr(&o);
    assert!(
        err.contains("no checkpoint.safetensors in this directory"),
        "{err}"
    );
}

/// An MLP of `widths` on `n` synthetic 3×`side`×`side` images at B = n: one update an epoch.
fn full_batch_mlp(n: usize, side: usize, widths: &str, epochs: u32) -> String {
    format!(
        r#"
[data]
dataset = "synthetic"
workers = 0
synthetic = {{ train = {n}, test = 64, classes = 10, shape = [3, {side}, {side}] }}
[model]
kind = "mlp"
widths = [{widths}]
[schedule]
epochs = {epochs}
lr = 0.01
batch_size = {n}
momentum = 0.9
"#
    )
}

#[test]
fn a_second_ctrl_c_says_what_it_does() {
    let tmp = tempfile::tempdir().unwrap();
    // Large slow updates (B = 4096 through a wide MLP) so both signals land within one.
    let text = full_batch_mlp(4096, 32, "2048, 2048", 50);
    let cfg = write(tmp.path(), "slow.toml", &text);
    let out = tmp.path().join("run");
    let mut child = spawn(train_cmd(&cfg, &out, &[]));
    let start = Instant::now();
    while run_dir::recorded_holder(&out).is_none() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id();
    // The second signal goes once the first is acknowledged: two sent back to back can both be
    // pending at once, and the kernel then delivers them as one. An update takes a second or
    // more, so the second still finds the first waiting for its checkpoint.
    kill("-INT", pid);
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut err = String::new();
    while !err.contains("Ctrl-C again") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut lines, &mut line).unwrap() == 0 {
            break;
        }
        err.push_str(&line);
    }
    kill("-INT", pid);
    std::io::Read::read_to_string(&mut lines, &mut err).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("second Ctrl-C, stopping now without a checkpoint"),
        "{err}"
    );
}

/// Where every epoch is one update (B = N), Ctrl-C always lands in an epoch's last update: the
/// run still stops at once, after recording that epoch and checkpointing its end, and resumes
/// from there to the full run.
#[test]
fn ctrl_c_in_the_last_update_of_an_epoch_stops_at_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let text = full_batch_mlp(2048, 16, "256", 150);
    let cfg = write(tmp.path(), "one_update.toml", &text);
    let out = tmp.path().join("run");
    let child = spawn(train_cmd(&cfg, &out, &[]));
    wait_for_epochs(&out, 3);
    kill("-INT", child.id());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("checkpoint written"), "{err}");
    let done = timing_free(&out).len();
    assert!((3..150).contains(&done), "{done} epochs recorded");
    let device = Device::flex();
    let model = RunConfig::from_toml(&text, "test")
        .unwrap()
        .model
        .init([3, 16, 16], 10, &device);
    let (_, loaded) = checkpoint::load(&out.join(CHECKPOINT_FILE), model, &device).unwrap();
    assert_eq!(loaded.state.position.epoch as usize, done, "{err}");
    assert_eq!(loaded.state.position.offset, 0);
    succeed(resume_cmd(&out));
    let epochs: Vec<u32> = timing_free(&out).iter().map(|m| m.epoch.0).collect();
    assert_eq!(epochs, (1..=150).collect::<Vec<u32>>());
}
