//! Data parallelism over MPI: `mpirun -np 2` and `-np 3` give the metrics of a single process
//! with the same global batch (same seed), within f32 tolerance, also when the last batch of an
//! epoch has fewer samples than ranks; batch norm's running statistics agree across ranks; a
//! signal to one rank stops all of them after the same update.

use crate::common;
use crate::common::{BIN, spawn, timing_free, wait_for_epochs};
use noisescale::metrics::{EpochMetrics, read_metrics};
use std::path::Path;
use std::process::Command;

const CONFIG: &str = r#"
seed = 7
[data]
dataset = "synthetic"
workers = 1
synthetic = { train = 1536, test = 256, classes = 10, shape = [1, 8, 8] }
[model]
kind = "mlp"
widths = [32]
[optimizer]
kind = "momentum"
weight_decay = 5e-4
[schedule]
kind = "increase-batch"
epochs = 3
lr = 0.05
batch_size = 32
momentum = 0.9
factor = 4.0
milestones = [1, 2]
[train]
max_micro_batch = 16
"#;

/// `mpirun -np NP --oversubscribe` with the environment the tests need; the caller adds the
/// program and its arguments.
fn mpirun_base(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string(), "--oversubscribe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("NOISESCALE_COMM_TIMEOUT", "60")
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn mpirun(np: usize, args: &[&str]) -> std::process::Output {
    mpirun_base(np)
        .arg(BIN)
        .args(args)
        .output()
        .expect("mpirun (openmpi-bin) must be installed for the mpi feature's tests")
}

/// Trains `config` into `dir/name` on `np` ranks (1: a plain process) and returns its metrics.
fn train_on(np: usize, config: &Path, dir: &Path, name: &str) -> Vec<EpochMetrics> {
    train_with(np, config, dir, name, &[])
}

/// [`train_on`] with more arguments for `train`.
fn train_with(
    np: usize,
    config: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Vec<EpochMetrics> {
    let out = dir.join(name);
    let mut args = vec![
        "train",
        config.to_str().unwrap(),
        "-q",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = if np == 1 {
        Command::new(BIN).args(&args).output().unwrap()
    } else {
        mpirun(np, &args)
    };
    assert!(
        o.status.success(),
        "{np} rank(s): {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    read_metrics(&out.join("metrics.jsonl")).unwrap()
}

fn assert_close(what: &str, x: f64, y: f64, tol: f64) {
    assert!(
        (x - y).abs() <= tol * x.abs().max(1.0),
        "{what}: {x} vs {y}"
    );
}

/// N = 1537 = 48·32 + 1: every epoch's last batch holds one sample, so at 2 and 3 ranks all
/// ranks but one have an empty shard for it (at B = 32, 128 and 512 alike).
#[test]
fn a_last_batch_smaller_than_the_ranks_matches_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, CONFIG.replace("train = 1536", "train = 1537")).unwrap();
    let one = train_on(1, &cfg, tmp.path(), "one");
    assert_eq!(one.len(), 3);
    // 49 + 13 + 4 updates: the one-sample batch is an update of its own.
    assert_eq!(
        one.iter().map(|m| m.updates.0).collect::<Vec<_>>(),
        vec![49, 62, 66]
    );
    for np in [2, 3] {
        let many = train_on(np, &cfg, tmp.path(), &format!("np{np}"));
        assert_eq!(many.len(), 3);
        for (x, y) in one.iter().zip(&many) {
            assert_eq!((x.updates, x.samples), (y.updates, y.samples), "{np} ranks");
            assert_eq!(y.world_size, np);
            assert_close("train loss", x.train_loss, y.train_loss, 1e-4);
            assert_close("test loss", x.test_loss, y.test_loss, 1e-4);
            assert_close("train accuracy", x.train_accuracy, y.train_accuracy, 1e-9);
            // The ranks are the noise-scale estimator's pieces: measured on every update.
            let b = y.gns.gns_b_simple.expect("B_simple measured across ranks");
            assert!(b.is_finite(), "{np} ranks: B_simple {b}");
        }
    }
}

/// A ResNet with ghost batch norm on 2 ranks: ghost chunks never straddle ranks, so training
/// (batch statistics) follows one process; the running statistics are averaged over the ranks
/// before each evaluation and checkpoint, so the ranks hold identical models (the run checks
/// every tensor's checksum across ranks each epoch, and would stop otherwise). N mod B = 8
/// leaves rank 1 without data in each epoch's last batch.
#[test]
fn ghost_batch_norm_on_two_ranks_follows_one_process_and_ranks_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("r.toml");
    std::fs::write(
        &cfg,
        r#"
seed = 4
[data]
dataset = "synthetic"
workers = 1
synthetic = { train = 520, test = 128, classes = 10, shape = [3, 8, 8] }
[model]
kind = "resnet"
depth = 8
width = 4
ghost_batch_size = 8
[schedule]
kind = "increase-batch"
epochs = 2
lr = 0.05
batch_size = 16
momentum = 0.9
factor = 2.0
milestones = [1]
[train]
max_micro_batch = 16
"#,
    )
    .unwrap();
    let one = train_on(1, &cfg, tmp.path(), "one");
    let two = train_on(2, &cfg, tmp.path(), "two");
    for (x, y) in one.iter().zip(&two) {
        assert_eq!(x.updates, y.updates);
        assert_close("train loss", x.train_loss, y.train_loss, 1e-4);
        // Evaluation uses running statistics: averaged over ranks, not one sequence.
        assert_close("test loss", x.test_loss, y.test_loss, 0.05);
    }
    // A batch size that is not a whole number of ghost batches per rank is refused up front.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("batch_size = 16", "batch_size = 24"),
    )
    .unwrap();
    let o = mpirun(
        2,
        &[
            "train",
            bad.to_str().unwrap(),
            "-q",
            "--out",
            tmp.path().join("b").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("model.ghost_batch_size × ranks = 8 × 2") && err.contains("B = 24"),
        "{err}"
    );
}

/// SIGINT to one rank only (mpirun would forward a Ctrl-C to all): the stop request travels
/// with the gradients, every rank stops after the same update, the checkpoint counts each
/// sample once, and resuming on 2 ranks gives the uninterrupted run's metrics.
#[test]
fn a_signal_to_one_rank_stops_all_ranks_after_the_same_update() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    let slow = CONFIG
        .replace("train = 1536", "train = 6000")
        .replace("batch_size = 32", "batch_size = 4")
        .replace("max_micro_batch = 16", "max_micro_batch = 4");
    std::fs::write(&cfg, &slow).unwrap();
    train_on(2, &cfg, tmp.path(), "straight");
    let cut = tmp.path().join("cut");
    // Rank 1 signals itself once the first epoch is logged; rank 0 is never signalled.
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then (while [ ! -s {m} ]; do sleep 0.01; done; kill -INT $$) & fi; exec {BIN} train {c} -q --out {o}",
        m = cut.join("metrics.jsonl").display(),
        c = cfg.display(),
        o = cut.display(),
    );
    let mut cmd = mpirun_base(2);
    cmd.args(["sh", "-c", &script]);
    let child = spawn(cmd);
    wait_for_epochs(&cut, 1);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted at epoch 1"), "{stderr}");
    assert_eq!(timing_free(&cut).len(), 1, "{stderr}");
    let o = mpirun(2, &["train", "-q", "--resume", cut.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let straight = timing_free(&tmp.path().join("straight"));
    let resumed = timing_free(&cut);
    assert_eq!(straight.len(), 3);
    for (x, y) in straight.iter().zip(&resumed) {
        assert_eq!(
            (x.epoch, x.updates, x.samples, x.allreduce_calls),
            (y.epoch, y.updates, y.samples, y.allreduce_calls)
        );
        assert_close("train loss", x.train_loss, y.train_loss, 1e-9);
        assert_close("test loss", x.test_loss, y.test_loss, 1e-9);
        assert_eq!(x.train_accuracy, y.train_accuracy);
    }
}

#[test]
fn two_ranks_match_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let single = tmp.path().join("single");
    let double = tmp.path().join("double");
    let o = Command::new(BIN)
        .args([
            "train",
            cfg.to_str().unwrap(),
            "-q",
            "--out",
            single.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = mpirun(
        2,
        &[
            "train",
            cfg.to_str().unwrap(),
            "-q",
            "--out",
            double.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let a = read_metrics(&single.join("metrics.jsonl")).unwrap();
    let b = read_metrics(&double.join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.updates, y.updates);
        assert_eq!(x.batch_size, y.batch_size);
        assert_eq!(y.world_size, 2);
        // One all-reduce per update (the model fits one bucket).
        let per_epoch = x.updates.0
            - a.iter()
                .take_while(|m| m.epoch < x.epoch)
                .last()
                .map_or(0, |m| m.updates.0);
        assert_eq!(y.allreduce_calls, per_epoch);
        assert_eq!(x.allreduce_calls, 0);
        let close = |p: f64, q: f64| (p - q).abs() <= 1e-4 * p.abs().max(1.0);
        assert!(
            close(x.train_loss, y.train_loss),
            "{} vs {}",
            x.train_loss,
            y.train_loss
        );
        assert!(
            close(x.test_loss, y.test_loss),
            "{} vs {}",
            x.test_loss,
            y.test_loss
        );
        assert!((x.test_accuracy - y.test_accuracy).abs() <= 1.0 / 256.0);
    }
    // Increasing the batch size cuts the all-reduce calls in proportion: 48, 12, 3.
    let calls: Vec<u64> = b.iter().map(|m| m.allreduce_calls).collect();
    assert_eq!(calls, vec![48, 12, 3]);
}

#[test]
fn a_dead_rank_ends_the_job_with_an_error() {
    // Rank 1 aborts at once (a config error only it sees would do the same): mpirun must end
    // rank 0 too instead of leaving it waiting in the first collective.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let start = std::time::Instant::now();
    let o = Command::new("mpirun")
        .args(["-np", "2", "--oversubscribe", "sh", "-c"])
        .arg(format!(
            "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then kill -9 $$; else exec {BIN} train {} -q --out {}; fi",
            cfg.display(),
            tmp.path().join("o").display()
        ))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("NOISESCALE_COMM_TIMEOUT", "20")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(start.elapsed().as_secs() < 60, "the job hung");
}

/// The adaptive schedule decides from statistics every rank shares: two ranks make the
/// decisions of one process (same epochs, updates and batch sizes; the bounds they acted on
/// agree to f32 summation order). B is a multiple of 2 × the micro-batch, so both cut every
/// batch into the same pieces.
#[test]
fn an_adaptive_run_on_two_ranks_decides_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("adaptive.toml");
    let text = format!(
        r#"{}
[schedule]
kind = "adaptive"
epochs = 6
lr = 0.05
batch_size = 32
momentum = 0.9
batch_multiple = 32
max_batch_size = 512
[schedule.adaptive]
alpha = 1.0
min_change = 1.5
[train]
max_micro_batch = 16
"#,
        common::mnist_mlp_slice(7, 4000)
    );
    std::fs::write(&cfg, text).unwrap();
    let a = train_on(1, &cfg, tmp.path(), "single");
    let b = train_on(2, &cfg, tmp.path(), "double");
    let decisions = |name: &str| -> Vec<noisescale::schedule::adaptive::Decision> {
        std::fs::read_to_string(tmp.path().join(name).join("decisions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (da, db) = (decisions("single"), decisions("double"));
    assert!(da.len() >= 2, "expected decisions: {da:?}");
    assert_eq!(da.len(), db.len(), "{da:?}\n{db:?}");
    for (x, y) in da.iter().zip(&db) {
        assert_eq!(
            (
                x.epoch,
                x.update,
                x.old_batch_size,
                x.new_batch_size,
                x.measurements
            ),
            (
                y.epoch,
                y.update,
                y.old_batch_size,
                y.new_batch_size,
                y.measurements
            )
        );
        assert!(x.new_batch_size.is_multiple_of(32));
        let rel = (x.b_simple_bound - y.b_simple_bound).abs() / x.b_simple_bound;
        assert!(rel < 1e-3, "{x:?} vs {y:?}");
    }
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.updates, x.batch_size), (y.updates, y.batch_size));
        assert!((x.train_loss - y.train_loss).abs() <= 1e-4 * x.train_loss.max(1.0));
    }
}

/// On a GPU device (wgpu; lavapipe in CI) each rank's gradients cross host memory for the
/// all-reduce in one buffer: two ranks on wgpu follow one flex process, within the tolerance of
/// GPU arithmetic (`tests/wgpu.rs`), and the ranks' weights stay identical (checked by the run
/// every epoch).
#[cfg(feature = "wgpu-base")]
#[test]
fn two_ranks_on_wgpu_follow_one_flex_process() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, CONFIG.replace("train = 1536", "train = 1537")).unwrap();
    let one = train_on(1, &cfg, tmp.path(), "flex");
    let two = train_with(2, &cfg, tmp.path(), "wgpu", &["--device", "wgpu"]);
    assert_eq!(one.len(), two.len());
    for (x, y) in one.iter().zip(&two) {
        assert_eq!((x.updates, x.samples), (y.updates, y.samples));
        assert_eq!(y.world_size, 2);
        assert_close("train loss", x.train_loss, y.train_loss, 2e-3);
        assert_close("test loss", x.test_loss, y.test_loss, 2e-3);
        assert!(
            (x.test_accuracy - y.test_accuracy).abs() <= 0.01,
            "test accuracy {} vs {}",
            x.test_accuracy,
            y.test_accuracy
        );
    }
}
