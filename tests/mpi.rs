//! Data parallelism over MPI: `mpirun -np 2` gives the metrics of a single process with the
//! same global batch (same seed, no batch norm), within f32 tolerance.
#![cfg(feature = "mpi")]

use noisescale::metrics::read_metrics;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_noisescale");

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

fn mpirun(np: usize, args: &[&str]) -> std::process::Output {
    Command::new("mpirun")
        .args(["-np", &np.to_string(), "--oversubscribe", BIN])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("mpirun (openmpi-bin) must be installed for the mpi feature's tests")
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
