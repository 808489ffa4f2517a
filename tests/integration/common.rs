//! Helpers shared by the integration tests: the binary, CLI runs, waiting on a live run, and
//! metrics without their timing fields.

use noisescale::metrics::{EpochMetrics, read_metrics};
use noisescale::run_dir::METRICS_FILE;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `noisescale` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_noisescale");

/// The top of a run config: `seed`, the first `train` images of the real MNIST (500 test images)
/// and a 784-32-10 MLP with momentum; the caller adds `[schedule]` and `[train]`.
pub fn mnist_mlp_slice(seed: u64, train: usize) -> String {
    format!(
        r#"
seed = {seed}
[data]
dataset = "mnist"
dir = "{}/../shared/data"
train_subset = {train}
test_subset = 500
workers = 1
[model]
kind = "mlp"
widths = [32]
[optimizer]
kind = "momentum"
"#,
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Writes `text` as `name` in `dir` and returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `noisescale train CONFIG -q --out OUT` with extra environment variables.
pub fn train_cmd(config: &Path, out: &Path, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["train", config.to_str().unwrap(), "-q", "--out"])
        .arg(out)
        .envs(env.iter().copied());
    c
}

/// `noisescale train -q --resume DIR`.
pub fn resume_cmd(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["train", "-q", "--resume"]).arg(dir);
    c
}

/// Runs a command and asserts it succeeded, showing its output otherwise.
pub fn succeed(mut cmd: Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Epoch records of a run directory without the timing fields.
pub fn timing_free(dir: &Path) -> Vec<EpochMetrics> {
    read_metrics(&dir.join(METRICS_FILE))
        .unwrap()
        .iter()
        .map(|m| m.without_timing())
        .collect()
}

/// Waits until the run in `dir` has logged `epochs` epochs (2 minutes at most).
pub fn wait_for_epochs(dir: &Path, epochs: usize) {
    let start = Instant::now();
    while read_metrics(&dir.join(METRICS_FILE)).map_or(0, |m| m.len()) < epochs {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} logged fewer than {epochs} epochs in 2 minutes",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `cmd` with its standard error captured.
pub fn spawn(mut cmd: Command) -> Child {
    cmd.stderr(Stdio::piped()).spawn().unwrap()
}

/// Sends `signal` (e.g. `-INT`) to process `pid`.
pub fn kill(signal: &str, pid: u32) {
    assert!(
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}
