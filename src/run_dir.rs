//! The run directory: the names of its files, the exclusive lock a writer holds on it, and the
//! clean-up of temporary files left behind by a killed write.
//!
//! **Lock.** A process that writes into a run directory first takes an exclusive OS advisory
//! lock (`flock`, through [`std::fs::File::try_lock`]) on [`LOCK_FILE`] and writes its pid, host
//! and start time into it. The kernel releases the lock when the process ends however it ends
//! (SIGKILL included), so a lock is never left held by a dead process; the file's contents only
//! serve the messages: a second writer is refused with the holder's pid and host, and a writer
//! that finds the contents of a process that no longer holds the lock says it takes it over.
//! The lock file is never deleted (deleting it would let two processes lock two different
//! files of the same name); on a clean exit its contents are cleared.
//!
//! **Leftovers.** [`write_atomic`] writes `.NAME.tmpPID` beside `NAME` and
//! renames it; a kill or a full disk during the write leaves the temporary file. Once the lock is
//! held, such files of this directory (and only of the run's own file names) are removed.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// File name of the checkpoint inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Environment variable for crash tests: `NAME:K` makes the K-th (1-based) atomic write of the
/// file `NAME` in this process kill the process (SIGKILL) after half the temporary file is
/// written, as a crash or `kill -9` during the write would.
pub const CRASH_IN_WRITE_ENV: &str = "NOISESCALE_CRASH_IN_WRITE";

/// Writes `bytes` to `path` atomically: a temporary file beside it (`.NAME.tmpPID`), synced,
/// then renamed. A failed write removes its temporary file; one killed leaves it, and the next
/// start that takes the run directory's lock removes it ([`clean_leftovers`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let crash = crash_requested(&name.to_string_lossy());
        let half = if crash { bytes.len() / 2 } else { bytes.len() };
        f.write_all(&bytes[..half])
            .with_context(|| format!("writing {}", tmp.display()))?;
        if crash {
            f.sync_all().ok();
            kill_self();
        }
        f.write_all(&bytes[half..])
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))
    })();
    if let Err(e) = written {
        // A full disk: do not leave a partial file eating the space a retry needs.
        std::fs::remove_file(&tmp).ok();
        return Err(e);
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all().ok();
    }
    Ok(())
}

fn crash_requested(name: &str) -> bool {
    use std::sync::Mutex;
    static COUNTS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
    let Ok(spec) = std::env::var(CRASH_IN_WRITE_ENV) else {
        return false;
    };
    let Some((file, k)) = spec.rsplit_once(':') else {
        return false;
    };
    if file != name {
        return false;
    }
    let Ok(k) = k.parse::<u64>() else {
        return false;
    };
    let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let n = match counts.iter_mut().find(|(f, _)| f == name) {
        Some((_, n)) => {
            *n += 1;
            *n
        }
        None => {
            counts.push((name.to_string(), 1));
            1
        }
    };
    n == k
}

fn kill_self() -> ! {
    let pid = std::process::id().to_string();
    std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .ok();
    std::process::abort()
}

/// Per-epoch metrics, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The outcome of a finished run.
pub const SUMMARY_FILE: &str = "summary.json";
/// The run's config (after command-line overrides).
pub const CONFIG_FILE: &str = "config.toml";
/// Name, group, seed and kinds of the run, for reports.
pub const RUN_INFO_FILE: &str = "run.json";
/// What the config resolved to on this data and these workers.
pub const RESOLVED_FILE: &str = "resolved.json";
/// The schedule's phase table (for `adaptive`, the phases realised, once the run ends).
pub const SCHEDULE_FILE: &str = "schedule.json";
/// The adaptive schedule's decisions, one JSON object per line.
pub const DECISIONS_FILE: &str = "decisions.jsonl";
/// File name of the evaluations within training (`train.eval_every`), one JSON object a line.
pub const EVALS_FILE: &str = "evals.jsonl";
/// The lock file (pid, host and start time of the process writing the run).
pub const LOCK_FILE: &str = "run.lock";

/// The files a run writes with [`write_atomic`] (whose temporary files
/// [`clean_leftovers`] removes).
pub const RUN_FILES: [&str; 9] = [
    METRICS_FILE,
    DECISIONS_FILE,
    EVALS_FILE,
    SUMMARY_FILE,
    CONFIG_FILE,
    RUN_INFO_FILE,
    RESOLVED_FILE,
    SCHEDULE_FILE,
    CHECKPOINT_FILE,
];

/// The files whose presence means a run was started in a directory (and would be lost if it
/// were overwritten).
pub const STARTED_RUN_FILES: [&str; 3] = [METRICS_FILE, CHECKPOINT_FILE, SUMMARY_FILE];

/// Who holds (or held) a run directory's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id of the holder, checked through `/proc` when `host` is this machine.
    pub pid: u32,
    /// Host name of the holder ([`hostname`]); on another host it is assumed alive.
    pub host: String,
    /// Start of the holding, seconds since the Unix epoch.
    pub started_unix: u64,
    /// The holder's command line.
    #[serde(default)]
    pub command: String,
}

impl Holder {
    /// This process, now.
    pub fn this_process() -> Self {
        Holder {
            pid: std::process::id(),
            host: hostname(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }

    /// Whether the holder's process exists (checked through `/proc` on this host only; a
    /// holder on another host is assumed alive).
    pub fn alive(&self) -> bool {
        if self.host != hostname() {
            return true;
        }
        Path::new("/proc").join(self.pid.to_string()).exists()
    }

    fn describe(&self) -> String {
        let age = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(self.started_unix))
            .unwrap_or(0);
        format!(
            "pid {} on host {}, started {age} s ago{}",
            self.pid,
            self.host,
            if self.command.is_empty() {
                String::new()
            } else {
                format!(": `{}`", self.command)
            }
        )
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `unknown`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The exclusive lock on a run directory; released (and its file cleared) when dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    /// Lines worth telling the user: a stale lock taken over, leftovers removed.
    pub notes: Vec<String>,
}

impl RunLock {
    /// Creates `dir` if needed and takes its lock, or fails naming the process that holds it.
    /// Once held, temporary files of killed writes are removed ([`clean_leftovers`]).
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        let previous = read_holder(&mut file);
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // Re-read: the holder may have written its details after our first read.
                let holder = read_holder(&mut file).or(previous);
                bail!(
                    "{} is in use by another noisescale process ({}); wait for it to finish or stop it (the lock is {})",
                    dir.display(),
                    holder
                        .map(|h| h.describe())
                        .unwrap_or_else(|| "pid and host not yet written".into()),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        let mut notes = Vec::new();
        if let Some(old) = read_holder(&mut file) {
            notes.push(format!(
                "note: {}: taking over the stale lock of {} (that process {}; it no longer holds the lock)",
                dir.display(),
                old.describe(),
                if old.alive() {
                    "still exists on its host or is on another host"
                } else {
                    "is gone"
                }
            ));
        }
        let me = Holder::this_process();
        let text = serde_json::to_string(&me)? + "\n";
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(text.as_bytes()))
            .and_then(|_| file.sync_data())
            .with_context(|| format!("writing the lock file {}", path.display()))?;
        for p in clean_leftovers(dir)? {
            notes.push(format!(
                "note: removed {} (a temporary file of a write that was killed or ran out of disk)",
                p.display()
            ));
        }
        Ok(RunLock { file, path, notes })
    }

    /// Path of the lock file, [`LOCK_FILE`] in the run directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Clear the holder while still holding the lock; closing the file releases it.
        self.file.set_len(0).ok();
        self.file.unlock().ok();
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// The holder recorded in `dir`'s lock file, if the file names one (whether or not it still
/// holds the lock).
pub fn recorded_holder(dir: &Path) -> Option<Holder> {
    let mut f = File::open(dir.join(LOCK_FILE)).ok()?;
    read_holder(&mut f)
}

/// Whether `name` is a temporary file of [`write_atomic`] for one of the
/// run's files: `.NAME.tmpPID`.
pub fn is_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((file, pid)) = rest.rsplit_once(".tmp") else {
        return false;
    };
    !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && RUN_FILES.contains(&file)
}

/// Removes the temporary files of killed or failed atomic writes from `dir` (only plain files
/// named `.NAME.tmpPID` for the run's own file names). Call it only while holding the lock.
/// Returns the files removed.
pub fn clean_leftovers(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_leftover(name) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let p = entry.path();
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        removed.push(p);
    }
    removed.sort();
    Ok(removed)
}

/// The files of a started or finished run present in `dir` (empty for a new directory).
pub fn started_run_files(dir: &Path) -> Vec<&'static str> {
    STARTED_RUN_FILES
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .collect()
}

/// Refuses to start a fresh run (not `resume`) in a directory that holds a started or finished
/// run, unless `overwrite`.
pub fn check_fresh_start(dir: &Path, resume: bool, overwrite: bool) -> Result<()> {
    let found = started_run_files(dir);
    if resume || overwrite || found.is_empty() {
        return Ok(());
    }
    bail!(
        "{} already holds a run ({}); resume it with `noisescale train --resume {}`, or pass --overwrite to replace it",
        dir.display(),
        found.join(", "),
        dir.display()
    )
}

/// Whether `dir` is locked by a live process now: an error naming the holder if so. Takes and
/// releases the lock without writing to it (a quick check before loading data).
pub fn check_unlocked(dir: &Path) -> Result<()> {
    let path = dir.join(LOCK_FILE);
    let Ok(mut file) = std::fs::OpenOptions::new().read(true).open(&path) else {
        return Ok(());
    };
    match file.try_lock() {
        Ok(()) => {
            file.unlock().ok();
            Ok(())
        }
        Err(TryLockError::WouldBlock) => bail!(
            "{} is in use by another noisescale process ({}); wait for it to finish or stop it (the lock is {})",
            dir.display(),
            read_holder(&mut file)
                .map(|h| h.describe())
                .unwrap_or_else(|| "pid and host not yet written".into()),
            path.display()
        ),
        Err(TryLockError::Error(_)) => Ok(()),
    }
}

/// What the trainer does before writing into a run directory: take the lock (which also removes
/// leftovers of killed writes), refuse to replace a started run unless `overwrite` or `resume`,
/// and tell the notes on stderr when `verbose`.
pub fn open_for_training(
    dir: &Path,
    resume: bool,
    overwrite: bool,
    verbose: bool,
) -> Result<RunLock> {
    let lock = RunLock::acquire(dir)?;
    if verbose {
        for n in &lock.notes {
            eprintln!("{n}");
        }
    }
    check_fresh_start(dir, resume, overwrite)?;
    Ok(lock)
}

/// What a run is (`run.json` in its directory), written when the run starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Unique run label, e.g. `increase-batch-seed2`.
    pub name: String,
    /// Label under which seeds are aggregated, e.g. `increase-batch` or `lr×5 B×5`.
    pub group: String,
    /// The config's `seed` (0 where `run.json` lacks it).
    #[serde(default)]
    pub seed: u64,
    /// Schedule kind, e.g. `decay-lr`.
    #[serde(default)]
    pub schedule: String,
    /// Optimiser kind, e.g. `momentum`.
    #[serde(default)]
    pub optimizer: String,
    /// Model name, e.g. `mlp-256`.
    #[serde(default)]
    pub model: String,
    /// Data set name, e.g. `mnist`.
    #[serde(default)]
    pub dataset: String,
    /// Over how many samples batch norm computes its statistics, e.g. `ghost batches of 32`
    /// (empty for models without batch norm).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub normalization: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names_are_only_our_own() {
        assert!(is_leftover(".checkpoint.safetensors.tmp1234"));
        assert!(is_leftover(".metrics.jsonl.tmp7"));
        assert!(!is_leftover(".checkpoint.safetensors.tmp"));
        assert!(!is_leftover(".checkpoint.safetensors.tmp12a"));
        assert!(!is_leftover("checkpoint.safetensors.tmp12"));
        assert!(!is_leftover(".notes.txt.tmp12"));
        assert!(!is_leftover(".bashrc"));
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let first = RunLock::acquire(&dir).unwrap();
        assert!(first.notes.is_empty(), "{:?}", first.notes);
        let err = format!("{:#}", RunLock::acquire(&dir).unwrap_err());
        assert!(
            err.contains(&format!("pid {}", std::process::id()))
                && err.contains(&hostname())
                && err.contains("in use"),
            "{err}"
        );
        drop(first);
        let again = RunLock::acquire(&dir).unwrap();
        assert!(again.notes.is_empty(), "{:?}", again.notes);
    }

    #[test]
    fn a_stale_lock_is_taken_over_with_a_note_and_leftovers_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let dead = Holder {
            pid: u32::MAX - 1,
            host: hostname(),
            started_unix: 0,
            command: "noisescale train".into(),
        };
        assert!(!dead.alive());
        std::fs::write(dir.join(LOCK_FILE), serde_json::to_string(&dead).unwrap()).unwrap();
        std::fs::write(dir.join(".checkpoint.safetensors.tmp99"), b"partial").unwrap();
        std::fs::write(dir.join(".mine.tmp99"), b"not ours").unwrap();
        let lock = RunLock::acquire(dir).unwrap();
        let notes = lock.notes.join("\n");
        assert!(
            notes.contains("stale lock") && notes.contains(&format!("pid {}", u32::MAX - 1)),
            "{notes}"
        );
        assert!(notes.contains("is gone"), "{notes}");
        assert!(notes.contains(".checkpoint.safetensors.tmp99"), "{notes}");
        assert!(!dir.join(".checkpoint.safetensors.tmp99").exists());
        assert!(dir.join(".mine.tmp99").exists());
        assert_eq!(
            recorded_holder(dir).map(|h| h.pid),
            Some(std::process::id())
        );
        drop(lock);
        assert_eq!(recorded_holder(dir), None);
    }
}
