//! What a run writes into its directory besides metrics and checkpoints: its description
//! (config, resolved plan, planned schedule, identity) and the adaptive schedule's decisions;
//! and how a finished run is recognised from them.

use super::TrainOptions;
use crate::checkpoint;
use crate::config::Resolved;
use crate::config::RunConfig;
use crate::data;
use crate::metrics::RunSummary;
use crate::params::trainable_params;
use crate::run_dir::{self, RunInfo};
use crate::schedule::adaptive::AdaptiveState;
use crate::state::TrainState;
use anyhow::Result;
use burn::module::Module;
use std::path::Path;

/// The run directory's description of the run, written by the leader before the first update
/// (and again on resume): `config.toml`, `resolved.json`, the planned `schedule.json`,
/// `run.json`, the adaptive schedule's decisions so far; and, in a verbose run, one line saying
/// what runs where.
pub(super) fn write_run_files(
    resolved: &Resolved,
    opts: &TrainOptions,
    model: &impl Module,
    state: &TrainState,
) -> Result<()> {
    let (cfg, out, schedule) = (&resolved.config, &opts.out, &resolved.schedule);
    let (n, epochs) = (resolved.dataset_size, schedule.epochs().0);
    if let Some(a) = &state.adaptive {
        // Decisions after the checkpoint are made again, identically.
        write_decisions(out, a)?;
    }
    // So are evaluations within epochs; a fresh run starts with none.
    write_evals(out, &state.evals)?;
    checkpoint::write_atomic(&out.join(run_dir::CONFIG_FILE), cfg.to_toml().as_bytes())?;
    // What the config resolved to on this data and these workers: N, the schedule's
    // phases, the micro-batch and the world size.
    checkpoint::write_atomic(
        &out.join(run_dir::RESOLVED_FILE),
        serde_json::to_string_pretty(resolved)?.as_bytes(),
    )?;
    checkpoint::write_atomic(
        &out.join(run_dir::SCHEDULE_FILE),
        serde_json::to_string_pretty(&schedule.table())?.as_bytes(),
    )?;
    let info = RunInfo {
        name: cfg.label(),
        group: opts.group.clone().unwrap_or_else(|| cfg.label()),
        seed: cfg.seed,
        schedule: cfg.schedule.kind.to_string(),
        optimizer: cfg.optimizer.kind.to_string(),
        model: cfg.model.name(),
        dataset: cfg.data.dataset.to_string(),
        normalization: resolved.describe_normalization(),
    };
    if let Some(w) = resolved.normalization_warning() {
        eprintln!("warning: {w}");
    }
    checkpoint::write_atomic(
        &out.join(run_dir::RUN_INFO_FILE),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    if opts.verbose {
        eprintln!(
            "{}: {} ({} parameters) on {} · N = {} · {} epochs · {}{}",
            cfg.label(),
            cfg.model.name(),
            trainable_params(model),
            cfg.device,
            n,
            epochs,
            resolved.describe_plan(),
            if state.position != data::Position::start_of(0) {
                format!(
                    " · resuming at epoch {} (+{} samples), update {}",
                    state.position.epoch, state.position.offset, state.updates
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Rewrites the adaptive schedule's decision log (small: one line per change).
pub(super) fn write_decisions(out: &Path, state: &AdaptiveState) -> Result<()> {
    let mut text = String::new();
    for d in &state.decisions {
        text.push_str(&serde_json::to_string(d)?);
        text.push('\n');
    }
    checkpoint::write_atomic(&out.join(run_dir::DECISIONS_FILE), text.as_bytes())
}

/// Rewrites the log of evaluations within training (small: one line per evaluation).
pub(super) fn write_evals(out: &Path, evals: &[crate::metrics::EvalMetrics]) -> Result<()> {
    let path = out.join(run_dir::EVALS_FILE);
    if evals.is_empty() {
        std::fs::remove_file(&path).ok();
        return Ok(());
    }
    let mut text = String::new();
    for e in evals {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    checkpoint::write_atomic(&path, text.as_bytes())
}

/// The summary of the run in `out` if it finished all `config`'s epochs (or samples) with
/// `config`'s seed:
/// `summary.json`, written after the last epoch's checkpoint, counts them, `metrics.jsonl` holds
/// each and the checkpoint is there. A resume of such a run has nothing to do and touches
/// nothing (not even the lock), so that it also works on a read-only copy. `None` otherwise
/// (not finished, no or an unreadable summary, another seed, a lost checkpoint), and the resume
/// goes the usual way, which continues the run or names what is wrong.
pub fn finished_run(out: &Path, config: &RunConfig) -> Option<RunSummary> {
    if !super::checkpoint_path(out).exists() {
        return None;
    }
    let text = std::fs::read_to_string(out.join(run_dir::SUMMARY_FILE)).ok()?;
    let summary: RunSummary = serde_json::from_str(&text).ok()?;
    let logged = crate::metrics::read_metrics(&out.join(run_dir::METRICS_FILE)).ok()?;
    let done = match config.schedule.samples {
        // The sample clock: every sample trained, one line per epoch begun.
        Some(samples) => summary.samples.0 == samples && logged.len() == summary.epochs.0 as usize,
        None => {
            let epochs = config.schedule.epochs as usize;
            summary.epochs.0 as usize == epochs && logged.len() == epochs
        }
    };
    (summary.seed == config.seed && done).then_some(summary)
}
