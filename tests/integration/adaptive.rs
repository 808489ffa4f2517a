//! The adaptive schedule end to end (synthetic data): its decisions are what its metrics show,
//! a decision within an epoch continues the epoch at the new batch size, an interrupted run
//! resumes to the same files, and `schedule --run` prints what was realised.

use crate::common;
use crate::common::{BIN, kill, resume_cmd, spawn, succeed, timing_free, train_cmd, write};
use noisescale::metrics::{EpochMetrics, read_metrics};
use noisescale::schedule::adaptive::Decision;
use std::path::Path;
use std::process::Command;

/// A 10,000-image slice of MNIST, whose B_simple grows from about 100 to thousands in a few
/// epochs: B0 = 32 is cut into two micro-batches of 16, so every update is measured.
fn config(extra: &str) -> String {
    format!(
        r#"{}
[schedule]
kind = "adaptive"
epochs = 10
lr = 0.05
batch_size = 32
momentum = 0.9
max_batch_size = 1000
[train]
max_micro_batch = 16
{extra}
"#,
        common::mnist_mlp_slice(3, 10_000)
    )
}

const ADAPTIVE: &str = "[schedule.adaptive]\nalpha = 1.0\nmin_change = 1.5\nmin_batch_size = 32\n";

fn decisions(dir: &Path) -> Vec<Decision> {
    std::fs::read_to_string(dir.join("decisions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Decisions at epoch ends: each epoch runs at the B and ε the decisions before it set, and the
/// cap turns further growth into a lower ε.
#[test]
fn epoch_decisions_set_the_next_epochs_batch_size() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "a.toml", &config(ADAPTIVE));
    let out = tmp.path().join("run");
    succeed(train_cmd(&cfg, &out, &[]));
    let m = read_metrics(&out.join("metrics.jsonl")).unwrap();
    let d = decisions(&out);
    assert!(d.len() >= 2, "expected at least two decisions: {d:?}");
    let (mut b, mut lr) = (32usize, 0.05f64);
    let mut before = 0u64;
    for (e, r) in m.iter().enumerate() {
        // Decisions taken after epoch e (0-based e + 1 completed) apply from epoch e + 1.
        for x in d.iter().filter(|x| x.epoch as usize == e) {
            assert_eq!((x.old_batch_size, x.old_lr), (b, lr), "{x:?}");
            (b, lr) = (x.new_batch_size, x.new_lr);
            assert_eq!(x.offset, 0);
            assert_eq!(x.update, before);
        }
        assert_eq!((r.batch_size, r.lr), (b, lr), "epoch {}", e + 1);
        assert_eq!(r.updates.0 - before, 10_000u64.div_ceil(b as u64));
        before = r.updates.0;
        let g = noisescale::noise::noise_scale(lr, noisescale::units::Samples(10_000), b, 0.9);
        assert!((r.noise_scale - g).abs() < 1e-9 * g);
    }
    // Each decision follows α times the lower bound on B_simple (rounded to whole samples)
    // past the hysteresis band; the bound is below the estimate where that is resolved.
    for x in &d {
        assert!((x.noise_batch - x.b_simple_bound).abs() < 1e-9 * x.noise_batch);
        assert!(x.b_simple.is_none_or(|b| b > x.b_simple_bound), "{x:?}");
        assert!(x.measurements >= 8);
        if x.new_batch_size < 1000 {
            assert_eq!(x.new_batch_size, x.noise_batch.round() as usize);
            assert_eq!(x.new_lr, 0.05);
        } else {
            assert_eq!(x.new_batch_size, 1000);
            assert!((x.new_lr - 0.05 * 1000.0 / x.noise_batch).abs() < 1e-12);
        }
    }
    assert!(
        d.iter().any(|x| x.new_batch_size < 1000) && d.iter().any(|x| x.new_lr < 0.05),
        "expected growth below the cap and ε decay at it: {d:?}"
    );
    assert!(
        d.windows(2)
            .all(|w| w[1].noise_batch >= 1.5 * w[0].noise_batch),
        "{d:?}"
    );

    // `schedule --run` prints the realised phases and the decisions.
    let o = succeed({
        let mut c = Command::new(BIN);
        c.args(["schedule", "--run"]).arg(&out);
        c
    });
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("adaptive schedule as realised"), "{text}");
    assert_eq!(text.matches("adaptive: after").count(), d.len(), "{text}");
    let json = succeed({
        let mut c = Command::new(BIN);
        c.args(["schedule", "--json", "--run"]).arg(&out);
        c
    });
    let table: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        table["total_updates"].as_u64().unwrap(),
        m.last().unwrap().updates.0
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("schedule.json")).unwrap()).unwrap();
    assert_eq!(saved, table);
}

/// Decisions every K updates (besides epoch ends) change B within an epoch: the epoch continues
/// from the same sample at the new B, so its updates are those of each part.
#[test]
fn decisions_every_k_updates_change_b_within_an_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(
        tmp.path(),
        "k.toml",
        &config(&format!("{ADAPTIVE}every_updates = 25\n")),
    );
    let out = tmp.path().join("run");
    succeed(train_cmd(&cfg, &out, &[]));
    let m = read_metrics(&out.join("metrics.jsonl")).unwrap();
    let d = decisions(&out);
    assert!(
        d.iter().any(|x| x.offset > 0),
        "expected a decision within an epoch: {d:?}"
    );
    // Replay: from each decision's position, count the updates of each part.
    let n = 10_000u64;
    let mut b = 32u64;
    let mut updates = 0u64;
    for (e, r) in m.iter().enumerate() {
        let mut offset = 0u64;
        for x in d.iter().filter(|x| x.epoch as usize == e) {
            assert!(x.update % 25 == 0 || x.offset == 0, "{x:?}");
            updates += (x.offset - offset).div_ceil(b);
            assert_eq!(x.update, updates, "{x:?}");
            assert_eq!(x.old_batch_size as u64, b);
            (offset, b) = (x.offset, x.new_batch_size as u64);
        }
        updates += (n - offset).div_ceil(b);
        assert_eq!(r.updates.0, updates, "epoch {}", e + 1);
        assert_eq!(r.batch_size as u64, b);
    }
}

/// SIGINT (a checkpoint after the current update) or SIGKILL (back to the last checkpoint,
/// possibly after a decision was logged) mid-run, then `--resume`: the metrics and the
/// decisions are those of the run that was never interrupted, with decisions at epoch ends and
/// within epochs.
#[test]
fn an_interrupted_adaptive_run_resumes_to_the_same_decisions() {
    let tmp = tempfile::tempdir().unwrap();
    let every_k = config(&format!("{ADAPTIVE}every_updates = 25\n")).replace(
        "max_micro_batch = 16",
        "max_micro_batch = 16\ncheckpoint_every_updates = 7",
    );
    for (name, text) in [("epochs", config(ADAPTIVE)), ("updates", every_k)] {
        let cfg = write(tmp.path(), &format!("{name}.toml"), &text);
        let straight = tmp.path().join(format!("{name}-straight"));
        succeed(train_cmd(&cfg, &straight, &[]));
        assert!(decisions(&straight).len() >= 3, "{name}");
        for signal in ["-INT", "-KILL"] {
            let cut = tmp.path().join(format!("{name}-cut{signal}"));
            let mut child = spawn(train_cmd(&cfg, &cut, &[]));
            common::wait_for_epochs(&cut, 2);
            kill(signal, child.id());
            let status = child.wait().unwrap();
            assert!(
                !status.success(),
                "{name} {signal}: the run ended before the signal"
            );
            succeed(resume_cmd(&cut));
            let a: Vec<EpochMetrics> = timing_free(&straight);
            assert_eq!(a, timing_free(&cut), "{name} {signal}");
            assert_eq!(decisions(&straight), decisions(&cut), "{name} {signal}");
        }
    }
}

/// `train --schedule adaptive` runs any preset (its milestones dropped); a first batch the
/// estimator cannot cut is refused with the setting to change.
#[test]
fn any_preset_trains_adaptive_and_an_unmeasurable_start_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("preset");
    let o = succeed({
        let mut c = Command::new(BIN);
        c.args([
            "train",
            "--preset",
            "synthetic",
            "--schedule",
            "adaptive",
            "-q",
        ])
        .arg("--out")
        .arg(&out);
        c
    });
    assert!(o.status.success());
    let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(saved.contains("kind = \"adaptive\""), "{saved}");
    assert!(!saved.contains("milestones = [2"), "{saved}");

    let bad = config("")
        .replace(
            "kind = \"mlp\"\nwidths = [32]",
            "kind = \"resnet\"\ndepth = 8\nwidth = 4\nghost_batch_size = 32",
        )
        .replace("max_micro_batch = 16", "max_micro_batch = 32");
    let cfg = write(tmp.path(), "bad.toml", &bad);
    let o = train_cmd(&cfg, &tmp.path().join("bad"), &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot measure the noise scale at B0 = 32")
            && err.contains("model.ghost_batch_size = 32"),
        "{err}"
    );
    let milestones = config("").replace("max_batch_size = 1000", "milestones = [2]");
    let cfg = write(tmp.path(), "ms.toml", &milestones);
    let o = train_cmd(&cfg, &tmp.path().join("ms"), &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("schedule.milestones") && err.contains("adaptive"),
        "{err}"
    );
}

/// Same seed, same decisions: at 1 thread with `-q` and at 16 threads (more than this machine's
/// cores) with per-epoch output, the metrics and the decisions are identical.
#[test]
fn decisions_do_not_depend_on_threads_or_verbosity() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "t.toml", &config(ADAPTIVE));
    let quiet = tmp.path().join("quiet-1");
    succeed(train_cmd(&cfg, &quiet, &[("RAYON_NUM_THREADS", "1")]));
    let loud = tmp.path().join("verbose-16");
    let o = succeed({
        let mut c = Command::new(BIN);
        c.args(["train", cfg.to_str().unwrap(), "--out"])
            .arg(&loud)
            .env("RAYON_NUM_THREADS", "16");
        c
    });
    assert!(String::from_utf8_lossy(&o.stderr).contains("adaptive: after"));
    assert_eq!(timing_free(&quiet), timing_free(&loud));
    assert_eq!(decisions(&quiet), decisions(&loud));
    assert!(!decisions(&quiet).is_empty());
}
