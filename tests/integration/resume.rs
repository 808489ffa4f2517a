//! Exact resume: a run killed (SIGKILL at ten seeded random points, inside a checkpoint write, SIGINT
//! mid-epoch) and resumed writes `metrics.jsonl` and `summary.json` equal, byte for byte apart
//! from the timing fields, to an uninterrupted run's.

use noisescale::checkpoint::CRASH_IN_WRITE_ENV;
use noisescale::run_dir::{CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::BIN;

/// Fields that measure time or memory, which no two runs share.
const METRICS_TIMING: [&str; 5] = [
    "wall_seconds",
    "epoch_seconds",
    "samples_per_second",
    "comm_seconds",
    "peak_memory_bytes",
];
const SUMMARY_TIMING: [&str; 3] = ["wall_seconds", "samples_per_second", "comm_seconds"];

const CONFIG: &str = r#"
seed = 5
[data]
dataset = "synthetic"
workers = 2
synthetic = { train = 3000, test = 400, classes = 10, shape = [3, 12, 12] }
[model]
kind = "mlp"
widths = [96]
[optimizer]
kind = "momentum"
weight_decay = 5e-4
[schedule]
kind = "increase-batch"
epochs = 6
lr = 0.05
batch_size = 8
momentum = 0.9
factor = 2.0
milestones = [2, 4]
"#;

/// The text of each metrics line with the timing fields cut out, exactly as written
/// (every record is one flat JSON object of numbers).
fn metrics_text(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(METRICS_FILE)).unwrap();
    assert!(text.ends_with('\n'), "a torn last line: {text:?}");
    text.lines()
        .map(|l| {
            l.trim_matches(|c| c == '{' || c == '}')
                .split(',')
                .filter(|kv| {
                    !METRICS_TIMING
                        .iter()
                        .any(|k| kv.starts_with(&format!("\"{k}\":")))
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// `summary.json` (pretty-printed, one field a line) without the timing lines.
fn summary_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(SUMMARY_FILE))
        .unwrap()
        .lines()
        .filter(|l| {
            !SUMMARY_TIMING
                .iter()
                .any(|k| l.trim_start().starts_with(&format!("\"{k}\":")))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_same_run(a: &Path, b: &Path) {
    let (ma, mb) = (metrics_text(a), metrics_text(b));
    assert_eq!(ma.len(), 6);
    for (i, (x, y)) in ma.iter().zip(&mb).enumerate() {
        assert_eq!(x, y, "line {} of metrics.jsonl differs", i + 1);
    }
    assert_eq!(ma.len(), mb.len());
    assert_eq!(summary_text(a), summary_text(b), "summary.json differs");
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let config = root.join("run.toml");
    std::fs::write(&config, CONFIG).unwrap();
    Setup {
        _tmp: tmp,
        root,
        config,
    }
}

fn start(config: Option<&Path>, out: &Path, env: Option<(&str, &str)>) -> Child {
    let mut c = Command::new(BIN);
    match config {
        Some(cfg) => c.arg("train").arg(cfg).arg("-q").arg("--out").arg(out),
        None => c.args(["train", "-q", "--resume"]).arg(out),
    };
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) {
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn straight(s: &Setup) -> PathBuf {
    let out = s.root.join("straight");
    finish(start(Some(&s.config), &out, None));
    out
}

fn lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(METRICS_FILE))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Waits until `dir` logs `epochs` epochs and holds a checkpoint; false if the process ended.
fn wait_for(child: &mut Child, dir: &Path, epochs: usize) -> bool {
    let start = Instant::now();
    loop {
        if lines(dir) >= epochs && dir.join(CHECKPOINT_FILE).exists() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A small seeded PRNG for the kill delays (splitmix64).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E3779B97F4A7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

#[test]
fn sigkill_at_random_points_then_resume_gives_the_uninterrupted_files() {
    let s = setup();
    let a = straight(&s);
    let b = s.root.join("killed");
    let mut rng = 0x5eed_u64;
    let mut child = start(Some(&s.config), &b, None);
    let mut kills = 0;
    // Ten kill points: two after each of 1..=5 logged epochs, plus a random 0–80 ms, so that
    // they fall at various points of an epoch (some inside a checkpoint or metrics write, some
    // while the resumed process is still loading).
    for i in 0..10 {
        if !wait_for(&mut child, &b, 1 + i / 2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(next(&mut rng) % 80));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        child = start(None, &b, None);
    }
    finish(child);
    assert!(kills >= 6, "only {kills} kills landed before the run ended");
    assert_same_run(&a, &b);
}

#[test]
fn a_kill_inside_a_checkpoint_write_leaves_the_old_one_and_resume_cleans_up() {
    let s = setup();
    let a = straight(&s);
    let b = s.root.join("crashed");
    // The third checkpoint write (after epoch 3) dies half-way through its temporary file.
    let o = start(
        Some(&s.config),
        &b,
        Some((CRASH_IN_WRITE_ENV, "checkpoint.safetensors:3")),
    )
    .wait_with_output()
    .unwrap();
    assert!(!o.status.success());
    let leftovers: Vec<_> = std::fs::read_dir(&b)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".checkpoint.safetensors.tmp"))
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert_eq!(lines(&b), 3, "epoch 3 is logged before its checkpoint");
    // The resume reports and removes the temporary file, starts from epoch 2's checkpoint
    // and trains epoch 3 again.
    let o = Command::new(BIN)
        .args(["train", "--resume"])
        .arg(&b)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("removed {}", b.join(&leftovers[0]).display())),
        "{err}"
    );
    assert!(!b.join(&leftovers[0]).exists());
    assert_same_run(&a, &b);

    // A kill while writing summary.json of a finished run: the resume writes it again.
    let c = s.root.join("summary-crash");
    let o = start(
        Some(&s.config),
        &c,
        Some((CRASH_IN_WRITE_ENV, "summary.json:1")),
    )
    .wait_with_output()
    .unwrap();
    assert!(!o.status.success());
    assert!(!c.join(SUMMARY_FILE).exists());
    finish(start(None, &c, None));
    assert_same_run(&a, &c);
}

#[test]
fn sigint_mid_epoch_then_resume_gives_the_uninterrupted_files() {
    let s = setup();
    let a = straight(&s);
    let b = s.root.join("interrupted");
    let mut child = start(Some(&s.config), &b, None);
    assert!(wait_for(&mut child, &b, 1));
    std::thread::sleep(Duration::from_millis(30));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("resume with"), "{err}");
    let logged = lines(&b);
    assert!(logged < 6, "the run finished before the signal");
    finish(start(None, &b, None));
    assert_same_run(&a, &b);
}

#[test]
fn resuming_a_finished_run_rewrites_nothing() {
    let s = setup();
    let a = straight(&s);
    let metrics = std::fs::read(a.join(METRICS_FILE)).unwrap();
    let summary = std::fs::read(a.join(SUMMARY_FILE)).unwrap();
    // Every file's and the directory's modification time: rewriting a file with the same bytes,
    // or creating and removing the lock, moves them. (Tests run as root, whom a read-only
    // directory would not stop.)
    let stamps = || {
        let mut v: Vec<_> = std::fs::read_dir(&a)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name(), e.metadata().unwrap().modified().unwrap()))
            .collect();
        v.push((
            "..".into(),
            std::fs::metadata(&a).unwrap().modified().unwrap(),
        ));
        v.sort();
        v
    };
    let before = stamps();
    std::thread::sleep(Duration::from_millis(20));
    finish(start(None, &a, None));
    assert_eq!(
        stamps(),
        before,
        "resuming a finished run wrote into its directory"
    );
    assert_eq!(std::fs::read(a.join(METRICS_FILE)).unwrap(), metrics);
    assert_eq!(
        String::from_utf8(std::fs::read(a.join(SUMMARY_FILE)).unwrap()).unwrap(),
        String::from_utf8(summary).unwrap()
    );
}
