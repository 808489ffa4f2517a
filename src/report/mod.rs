//! Side-by-side report of several training runs, drawn as the paper's figures are.
//!
//! Smith, Kindermans, Ying & Le ("Don't Decay the Learning Rate, Increase the Batch Size",
//! ICLR 2018) argue that what shapes SGD's trajectory is the noise scale
//! g = ε/(1−m)·(N/B − 1) ≈ εN/(B(1−m)), not the learning rate ε or the batch size B on their
//! own. So the schedules that `noisescale reproduce` compares (decay-lr, hybrid,
//! increase-batch, and optimiser or effective-lr variants) all follow the *same* g per epoch
//! and should reach the same test accuracy per epoch; the ones that raise B instead of
//! lowering ε get there in far fewer parameter updates. The report makes both claims checkable:
//!
//! * test accuracy against epochs (curves should overlap) and against parameter updates on a
//!   log axis (increase-batch should sit to the left), as in the paper's figures 2 and 3;
//! * the schedules themselves (ε, B and g per epoch, B and g on log axes), so that a reader
//!   can see that equal g really was used;
//! * training loss per epoch and cumulative gradient all-reduce calls (fewer, larger batches
//!   mean fewer synchronisations when data-parallel);
//! * a table with one row per group of seeds: final and best test accuracy (mean ± sample
//!   std), updates and their ratio to the first group, wall time, throughput and all-reduce
//!   calls.
//!
//! Input is a set of run directories (`metrics.jsonl`, `run.json`, and `summary.json` once
//! finished; see [`load_runs`]). Runs sharing a [`RunInfo::group`] are aggregated: every curve
//! is the mean over seeds per epoch, drawn thick, with each seed drawn thin behind it. A run
//! that has metrics but no summary is unfinished: it is drawn (its group is marked with `*` in
//! the legends) and named in a note under its group's table row.
//!
//! Output ([`write_report`]) is `report.md`, a self-contained `report.html` (plots embedded as
//! base64 PNG data URIs, no external resources), and each plot as PNG and SVG. PNG text is
//! rendered with a font embedded in the binary (Ubuntu Light from `epaint_default_fonts`), so
//! nothing depends on the system's fonts.

mod epochs;
mod evals;
mod html;
mod plot;
mod table;
#[cfg(test)]
mod tests;

pub use epochs::PLOT_NAMES;
pub use evals::EVAL_PLOT_NAMES;
pub use table::{html_table, markdown_table};

use crate::metrics::{EpochMetrics, RunSummary, read_metrics};
use crate::units::Updates;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

pub use crate::run_dir::RunInfo;

/// One run as read from its directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The run directory (holding `metrics.jsonl`, `summary.json` and/or `run.json`).
    pub dir: PathBuf,
    /// Its `run.json` (or, where that is missing, what could be inferred).
    pub info: RunInfo,
    /// Its epoch records, in order.
    pub metrics: Vec<EpochMetrics>,
    /// Its `summary.json`; `None` while the run is unfinished.
    pub summary: Option<RunSummary>,
    /// Its evaluations within training (`evals.jsonl`; empty where it has none).
    pub evals: Vec<crate::metrics::EvalMetrics>,
}

impl Run {
    /// Whether the run wrote its `summary.json`.
    pub fn finished(&self) -> bool {
        self.summary.is_some()
    }

    /// The run's summary, or for an unfinished run one computed from the epochs so far.
    pub fn stats(&self) -> Option<RunSummary> {
        self.summary.clone().or_else(|| {
            RunSummary::from_metrics(
                &self.info.name,
                &self.info.schedule,
                &self.info.optimizer,
                &self.info.model,
                self.info.seed,
                &self.metrics,
            )
        })
    }

    /// Reads one run directory. `run.json` is optional: without it the name is the directory's
    /// and the group is the name less a trailing `-seedN`.
    pub fn load(dir: &Path) -> Result<Run> {
        let metrics = read_metrics(&dir.join(crate::run_dir::METRICS_FILE))?;
        let summary_path = dir.join(crate::run_dir::SUMMARY_FILE);
        let summary: Option<RunSummary> = if summary_path.is_file() {
            let text = std::fs::read_to_string(&summary_path)
                .with_context(|| format!("reading {}", summary_path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a run summary", summary_path.display()))?,
            )
        } else {
            None
        };
        let info_path = dir.join(crate::run_dir::RUN_INFO_FILE);
        let info = if info_path.is_file() {
            let text = std::fs::read_to_string(&info_path)
                .with_context(|| format!("reading {}", info_path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a run description", info_path.display()))?
        } else {
            let name = summary.as_ref().map(|s| s.name.clone()).unwrap_or_else(|| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| dir.display().to_string())
            });
            RunInfo {
                group: group_from_name(&name),
                seed: summary.as_ref().map_or(0, |s| s.seed),
                schedule: summary
                    .as_ref()
                    .map_or_else(String::new, |s| s.schedule.clone()),
                optimizer: summary
                    .as_ref()
                    .map_or_else(String::new, |s| s.optimizer.clone()),
                model: summary
                    .as_ref()
                    .map_or_else(String::new, |s| s.model.clone()),
                dataset: String::new(),
                normalization: String::new(),
                name,
            }
        };
        let evals = crate::metrics::read_evals(&dir.join(crate::run_dir::EVALS_FILE))?;
        Ok(Run {
            dir: dir.to_path_buf(),
            info,
            metrics,
            summary,
            evals,
        })
    }
}

/// `decay-lr-seed3` → `decay-lr`; names without a seed suffix are their own group.
fn group_from_name(name: &str) -> String {
    match name.rsplit_once("-seed") {
        Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
            head.to_string()
        }
        _ => name.to_string(),
    }
}

/// Whether `dir` looks like a run directory.
fn is_run_dir(dir: &Path) -> bool {
    [
        crate::run_dir::METRICS_FILE,
        crate::run_dir::SUMMARY_FILE,
        crate::run_dir::RUN_INFO_FILE,
    ]
    .iter()
    .any(|f| dir.join(f).is_file())
}

/// Immediate subdirectories of `dir`, sorted by name.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_dir() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Reads runs. Each of `dirs` is a run directory, or a directory whose immediate
/// subdirectories are run directories (an output directory), or one level above that (so
/// `OUT` finds `OUT/runs/*`). Runs under one directory come sorted by directory name; the
/// order of `dirs` is kept, and it decides the group order of the report (the first group is
/// the reference for the updates ratio; see [`order_groups`] to choose it). Runs without any
/// recorded epoch are skipped; a directory that yields no run is an error naming it.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Run>> {
    if dirs.is_empty() {
        bail!("no run directories given");
    }
    let mut runs = Vec::new();
    for dir in dirs {
        if !dir.is_dir() {
            bail!("{}: not a directory", dir.display());
        }
        let candidates = if is_run_dir(dir) {
            vec![dir.clone()]
        } else {
            let first: Vec<PathBuf> = subdirs(dir)?
                .into_iter()
                .filter(|d| is_run_dir(d))
                .collect();
            if first.is_empty() {
                let mut second = Vec::new();
                for sub in subdirs(dir)? {
                    second.extend(subdirs(&sub)?.into_iter().filter(|d| is_run_dir(d)));
                }
                second
            } else {
                first
            }
        };
        let before = runs.len();
        for cand in candidates {
            let run = Run::load(&cand)?;
            if !run.metrics.is_empty() || run.summary.is_some() {
                runs.push(run);
            }
        }
        if runs.len() == before {
            bail!(
                "{}: no run found (looked for metrics.jsonl with at least one epoch in it, \
                 its subdirectories and theirs)",
                dir.display()
            );
        }
    }
    Ok(runs)
}

/// Reorders runs so that the groups named in `order` come first, in that order; other groups
/// follow in their present order (the sort is stable).
pub fn order_groups(runs: &mut [Run], order: &[&str]) {
    runs.sort_by_key(|r| {
        order
            .iter()
            .position(|g| *g == r.info.group)
            .unwrap_or(order.len())
    });
}

/// Group labels in order of first appearance.
fn group_order(runs: &[Run]) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for r in runs {
        if !groups.contains(&r.info.group) {
            groups.push(r.info.group.clone());
        }
    }
    groups
}

/// One table row: a group's seeds aggregated.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSummary {
    /// Group label ([`RunInfo::group`]) shared by the seeds aggregated in this row.
    pub group: String,
    /// Runs whose numbers enter the means: the finished ones, or all where none finished.
    pub seeds: usize,
    /// Mean final test accuracy, in percent.
    pub final_acc_mean: f64,
    /// Sample standard deviation (n−1) of the final test accuracy, in percent; `None` for one
    /// run.
    pub final_acc_std: Option<f64>,
    /// Mean best test accuracy over epochs, in percent.
    pub best_acc_mean: f64,
    /// Sample standard deviation of the best test accuracy, in percent; `None` for one run.
    pub best_acc_std: Option<f64>,
    /// Parameter updates per run (mean over runs, rounded).
    pub updates: Updates,
    /// Mean wall seconds per run.
    pub wall_seconds_mean: f64,
    /// Mean training samples per second.
    pub samples_per_second_mean: f64,
    /// All-reduce calls per run (mean over runs, rounded).
    pub allreduce_calls: u64,
    /// Runs without `summary.json`, as `name (N epochs so far)`.
    pub unfinished: Vec<String>,
    /// Whether the numbers come from unfinished runs (no run of the group finished).
    pub partial: bool,
    /// For language models (token streams): the final validation loss in bits per token, mean
    /// and sample standard deviation; `None` for other runs.
    pub final_bits: Option<(f64, Option<f64>)>,
    /// For language models: the final validation loss in nats per token, mean and deviation.
    pub final_nats: Option<(f64, Option<f64>)>,
}

impl GroupSummary {
    /// This group's updates as a fraction of `reference`'s (`None` if that has none).
    pub fn updates_ratio(&self, reference: &GroupSummary) -> Option<f64> {
        (reference.updates.0 > 0).then(|| self.updates.0 as f64 / reference.updates.0 as f64)
    }
}

/// Mean and sample standard deviation (n−1; `None` for fewer than two values).
pub fn mean_std(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, None);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, None);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, Some(var.sqrt()))
}

/// One [`GroupSummary`] per group, in order of first appearance.
pub fn summarize(runs: &[Run]) -> Vec<GroupSummary> {
    group_order(runs)
        .into_iter()
        .map(|group| {
            let members: Vec<&Run> = runs.iter().filter(|r| r.info.group == group).collect();
            let finished: Vec<&Run> = members.iter().copied().filter(|r| r.finished()).collect();
            let partial = finished.is_empty();
            let used = if partial { &members } else { &finished };
            let stats: Vec<RunSummary> = used.iter().filter_map(|r| r.stats()).collect();
            let col = |f: &dyn Fn(&RunSummary) -> f64| stats.iter().map(f).collect::<Vec<f64>>();
            let (final_acc_mean, final_acc_std) =
                mean_std(&col(&|s| 100.0 * s.final_test_accuracy));
            let (best_acc_mean, best_acc_std) = mean_std(&col(&|s| 100.0 * s.best_test_accuracy));
            let mean = |f: &dyn Fn(&RunSummary) -> f64| mean_std(&col(f)).0;
            let tokens = used.iter().all(|r| r.info.dataset == "tokens");
            let final_nats = tokens.then(|| mean_std(&col(&|s| s.final_test_loss)));
            let final_bits =
                tokens.then(|| mean_std(&col(&|s| s.final_test_loss / std::f64::consts::LN_2)));
            let unfinished = members
                .iter()
                .filter(|r| !r.finished())
                .map(|r| format!("{} ({} epochs so far)", r.info.name, r.metrics.len()))
                .collect();
            GroupSummary {
                seeds: stats.len(),
                final_acc_mean,
                final_acc_std,
                best_acc_mean,
                best_acc_std,
                updates: Updates(mean(&|s| s.updates.0 as f64).round() as u64),
                wall_seconds_mean: mean(&|s| s.wall_seconds),
                samples_per_second_mean: mean(&|s| s.samples_per_second),
                allreduce_calls: mean(&|s| s.allreduce_calls as f64).round() as u64,
                unfinished,
                partial,
                final_bits,
                final_nats,
                group,
            }
        })
        .collect()
}

/// Paths of what [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    /// `report.html`, self-contained.
    pub html: PathBuf,
    /// `report.md`, referring to the PNGs beside it.
    pub markdown: PathBuf,
    /// Every plot file, PNG and SVG.
    pub plots: Vec<PathBuf>,
}

/// What the plots show, for readers of the report (markdown; also used in HTML).
const EXPLANATION: &str = "The noise scale of SGD with momentum is g = ε/(1−m)·(N/B − 1) ≈ εN/(B(1−m)) \
(ε learning rate, N training-set size, B batch size, m momentum). The paper's claim is that \
schedules following the same g per epoch reach the same test accuracy per epoch, whether g \
falls because ε is decayed or because B is increased; increasing B instead needs far fewer \
parameter updates. So the curves of test accuracy against epochs should overlap, the curves \
against parameter updates (log axis) should be shifted left for the schedules that increase \
B, and the schedule plots show ε, B and g per epoch (B and g on log axes). Thick lines are the \
mean over seeds, thin lines the individual seeds; groups marked * include unfinished runs. \
The gradient-noise-scale plot shows the measured B_simple = tr(Σ)/|G|² (McCandlish et al. 2018) \
beside the batch size each schedule used: a schedule whose B stays below B_simple spends its \
samples efficiently. All-reduce calls matter only for data-parallel runs (world size > 1).";

/// Writes `report.md`, `report.html` and every plot (PNG and SVG, see [`PLOT_NAMES`]) into
/// `out`, creating it. `notes` (hardware, versions, command line) are listed under the table.
pub fn write_report(
    runs: &[Run],
    out: &Path,
    title: &str,
    notes: &[String],
) -> Result<ReportFiles> {
    if runs.is_empty() {
        bail!("no runs to report");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let groups = summarize(runs);
    let mut figures = epochs::figures(runs, &groups);
    figures.extend(evals::figures(runs, &groups));
    let mut plots = Vec::new();
    let mut embedded = Vec::new();
    for fig in &figures {
        let (png, svg) = plot::render(fig, out)?;
        let bytes = std::fs::read(&png).with_context(|| format!("reading {}", png.display()))?;
        embedded.push((fig.name, fig.title.clone(), bytes));
        plots.push(png);
        plots.push(svg);
    }

    // What batch norm normalised over, per group: it changes the model, so a reader comparing
    // schedules must see it.
    let mut notes = notes.to_vec();
    for run in runs {
        if !run.info.normalization.is_empty() {
            let note = format!(
                "batch norm in {}: {}",
                run.info.group, run.info.normalization
            );
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    let notes = &notes[..];
    let mut md = format!("# {title}\n\n## Summary\n\n");
    md.push_str(&markdown_table(&groups));
    if !notes.is_empty() {
        md.push('\n');
        for n in notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    md.push_str(&format!("\n{EXPLANATION}\n\n## Plots\n\n"));
    for fig in &figures {
        md.push_str(&format!("![{}]({}.png)\n\n", fig.title, fig.name));
    }
    let markdown = out.join("report.md");
    std::fs::write(&markdown, md).with_context(|| format!("writing {}", markdown.display()))?;

    let page = html::page(title, &groups, notes, EXPLANATION, &embedded);
    let html = out.join("report.html");
    std::fs::write(&html, page).with_context(|| format!("writing {}", html.display()))?;
    Ok(ReportFiles {
        html,
        markdown,
        plots,
    })
}
