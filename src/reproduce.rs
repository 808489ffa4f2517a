//! `noisescale reproduce`: the paper's comparison, run by run, then the report.
//!
//! Everything but the schedule is held fixed: the same preset (model, data, optimiser, seed
//! list), with `schedule.kind` set to decay-lr, hybrid and increase-batch in turn (Smith et al.
//! 2018, figs. 2–3). With `--variants` it adds the optimiser comparison (plain SGD at the same
//! effective learning rate ε/(1−m), Nesterov, Adam; each with decay-lr and increase-batch, figs.
//! 4 and 6) and the effective-learning-rate variants (ε×5 with B×5, and m = 0.98 with
//! B ∝ 1/(1−m), fig. 5). Each run lives in `OUT/runs/NAME/`; a run whose `summary.json` exists
//! with the same config is reused and a run with a checkpoint is resumed, so an interrupted
//! `reproduce` continues where it stopped.

use crate::config::RunConfig;
use crate::config::{ConfigSource, Overrides, load_preset};
use crate::optim::OptimizerKind;
use crate::run_dir;
use crate::schedule::ScheduleKind;
use crate::train::{self, TrainOptions};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

pub use crate::config::ReproduceConfig;

/// `noisescale reproduce`.
#[derive(Args, Debug)]
pub struct ReproduceArgs {
    #[command(flatten)]
    source: ConfigSource,
    #[command(flatten)]
    overrides: Overrides,
    /// Seeds per schedule (default: the preset's).
    #[arg(long)]
    seeds: Option<u32>,
    /// Output directory (default: runs/reproduce-PRESET).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also run the optimiser and effective-learning-rate variants.
    #[arg(long)]
    variants: bool,
    /// Replace runs in OUT/runs/ that were started with another config (else an error).
    #[arg(long)]
    overwrite: bool,
    /// Only per-run summaries, no per-epoch lines.
    #[arg(long, short)]
    quiet: bool,
}

/// One run of the comparison.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Directory name and run label.
    pub name: String,
    /// Group label in the report.
    pub group: String,
    /// The base config with this group's changes (schedule kind, optimiser, ε or m) and its seed.
    pub config: RunConfig,
}

/// A finished run's result in words: its test accuracy, or its test loss where it has none
/// (with bits per token, as a language model's loss is in nats per token).
pub fn describe_result(s: &crate::metrics::RunSummary) -> String {
    if s.final_test_accuracy.is_nan() {
        format!(
            "test loss {:.4} ({:.3} bits/token)",
            s.final_test_loss,
            s.final_test_loss / std::f64::consts::LN_2
        )
    } else {
        format!("test accuracy {:.2}%", 100.0 * s.final_test_accuracy)
    }
}

/// The runs of a comparison, in report order.
pub fn plan(base: &RunConfig, seeds: u32, variants: bool) -> Vec<Planned> {
    let mut groups: Vec<(String, RunConfig)> = Vec::new();
    let with_kind = |c: &RunConfig, k: ScheduleKind| {
        let mut c = c.clone();
        c.schedule = c.schedule.with_kind(k);
        c
    };
    let kinds = base
        .reproduce
        .as_ref()
        .and_then(|r| r.schedules.clone())
        .unwrap_or_else(crate::config::default_schedules);
    for k in kinds {
        groups.push((k.to_string(), with_kind(base, k)));
    }
    if variants {
        let m = base.schedule.momentum;
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Nesterov,
            OptimizerKind::Adam,
        ] {
            let mut c = base.clone();
            c.optimizer.kind = kind;
            match kind {
                OptimizerKind::Sgd => {
                    // Same noise scale without momentum: ε_sgd = ε/(1−m).
                    c.schedule.lr = base.schedule.lr / (1.0 - m);
                    c.schedule.momentum = 0.0;
                }
                OptimizerKind::Adam => {
                    c.schedule.lr = base
                        .reproduce
                        .as_ref()
                        .and_then(|r| r.adam_lr)
                        .unwrap_or(1e-3);
                }
                _ => {}
            }
            for k in [ScheduleKind::DecayLr, ScheduleKind::IncreaseBatch] {
                groups.push((format!("{kind} {k}"), with_kind(&c, k)));
            }
        }
        let mut c = with_kind(base, ScheduleKind::IncreaseBatch);
        c.schedule.lr_scale = 5.0;
        groups.push(("lr×5 B×5 increase-batch".into(), c));
        let mut c = with_kind(base, ScheduleKind::IncreaseBatch);
        c.schedule.momentum_scaled = Some(0.98);
        groups.push(("m=0.98 increase-batch".into(), c));
    }
    let mut runs = Vec::new();
    for (group, cfg) in groups {
        for s in 0..seeds {
            let mut c = cfg.clone();
            c.seed = base.seed + s as u64;
            let slug: String = group
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() || ch == '.' {
                        ch
                    } else {
                        '-'
                    }
                })
                .collect();
            let name = format!("{slug}-seed{}", c.seed);
            c.name = Some(name.clone());
            runs.push(Planned {
                name,
                group: group.clone(),
                config: c,
            });
        }
    }
    runs
}

/// Lines describing where and how the results were measured, for reports.
pub fn environment_notes() -> Vec<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    vec![
        format!("date: {} UTC", utc_now()),
        format!("machine: {cpu}, {cores} cores available"),
        format!(
            "noisescale {} on burn 0.22 (flex backend unless the config says otherwise)",
            env!("CARGO_PKG_VERSION")
        ),
        format!(
            "command: {}",
            std::env::args().collect::<Vec<_>>().join(" ")
        ),
    ]
}

/// The current UTC time as `YYYY-MM-DD HH:MM` (civil-from-days, H. Hinnant's algorithm).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Whether `dir` holds a run started with `cfg` (or the same run elsewhere / on another device).
fn same_config(dir: &Path, cfg: &RunConfig) -> bool {
    RunConfig::load(&dir.join(run_dir::CONFIG_FILE)).is_ok_and(|saved| saved.same_run(cfg))
}

fn reusable(dir: &Path, cfg: &RunConfig) -> bool {
    dir.join(run_dir::SUMMARY_FILE).exists() && same_config(dir, cfg)
}

/// Runs `noisescale reproduce`.
pub fn run(a: ReproduceArgs) -> Result<()> {
    let preset_name = a.source.preset.clone().unwrap_or_else(|| "mnist".into());
    let mut base = match a.source.load()? {
        Some(c) => c,
        None => load_preset(&preset_name)?,
    };
    a.overrides.apply(&mut base)?;
    let seeds = a
        .seeds
        .or(base.reproduce.as_ref().and_then(|r| r.seeds))
        .unwrap_or(1)
        .max(1);
    let label = a
        .source
        .config
        .as_ref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or(preset_name);
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/reproduce-{label}")));
    let runs_dir = out.join("runs");
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("creating {}", runs_dir.display()))?;
    let comm = crate::dist::from_env()?;
    let leader = comm.rank() == 0;
    // One reproduce per output directory; each run also locks its own directory.
    let _lock = if leader {
        let lock = run_dir::RunLock::acquire(&out)?;
        lock.notes.iter().for_each(|n| eprintln!("{n}"));
        Some(lock)
    } else {
        None
    };
    let data = train::load_data(&base)?;
    let n = data.train_size();
    let (train_len, test_len) = data.sizes();
    let planned = plan(&base, seeds, a.variants);
    let say = |msg: String| {
        if leader {
            eprintln!("{msg}");
        }
    };
    say(format!(
        "reproduce {label}: {} runs ({seeds} seed(s) each) on {} ({} train / {} test) → {}",
        planned.len(),
        base.data.dataset,
        train_len,
        test_len,
        out.display()
    ));
    for p in &planned {
        let dir = runs_dir.join(&p.name);
        if reusable(&dir, &p.config) {
            say(format!("{}: finished earlier, reused", p.name));
            continue;
        }
        let resolved = p.config.resolve(n, comm.world_size())?;
        let same = same_config(&dir, &p.config);
        let resume = dir.join(run_dir::CHECKPOINT_FILE).exists() && same;
        say(format!(
            "{}: {}{}",
            p.name,
            resolved.describe_plan(),
            if resume { ", resuming" } else { "" }
        ));
        let s = train::train_loaded(
            &resolved,
            &data,
            &TrainOptions {
                out: dir,
                resume,
                // A run of this config that cannot be resumed is started again; a run of
                // another config is only replaced when asked.
                overwrite: a.overwrite || same,
                group: Some(p.group.clone()),
                verbose: !a.quiet && leader,
            },
            comm.as_ref(),
        )?;
        say(format!(
            "{}: {} after {} updates, {:.1}s",
            p.name,
            describe_result(&s),
            s.updates,
            s.wall_seconds
        ));
    }
    if !leader {
        return Ok(());
    }
    let mut runs = crate::report::load_runs(&[runs_dir])?;
    let order: Vec<String> = planned.iter().map(|p| p.group.clone()).collect();
    let order: Vec<&str> = order.iter().map(String::as_str).collect();
    crate::report::order_groups(&mut runs, &order);
    let files = crate::report::write_report(
        &runs,
        &out,
        &format!("noisescale reproduce: {label}"),
        &environment_notes(),
    )?;
    print!(
        "{}",
        crate::report::markdown_table(&crate::report::summarize(&runs))
    );
    println!(
        "report: {} (and {})",
        files.html.display(),
        files.markdown.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Samples;

    #[test]
    fn the_date_is_well_formed() {
        let d = utc_now();
        assert_eq!(d.len(), 16, "{d}");
        assert!(d.starts_with("20"), "{d}");
        assert_eq!(&d[4..5], "-");
    }

    #[test]
    fn the_plan_holds_every_schedule_and_variant() {
        let base = load_preset("mnist").unwrap();
        let runs = plan(&base, 2, false);
        assert_eq!(runs.len(), 8);
        assert_eq!(runs[0].name, "decay-lr-seed0");
        assert_eq!(runs[1].config.seed, 1);
        assert_eq!(runs[5].group, "increase-batch");
        // The adaptive group drops the preset's milestones (it takes none) and resolves.
        assert_eq!(runs[7].group, "adaptive");
        assert!(runs[7].config.schedule.milestones.is_empty());
        assert!(runs[7].config.resolve(Samples(60_000), 1).is_ok());

        let runs = plan(&base, 1, true);
        let groups: Vec<&str> = runs.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(
            groups,
            vec![
                "decay-lr",
                "hybrid",
                "increase-batch",
                "adaptive",
                "sgd decay-lr",
                "sgd increase-batch",
                "nesterov decay-lr",
                "nesterov increase-batch",
                "adam decay-lr",
                "adam increase-batch",
                "lr×5 B×5 increase-batch",
                "m=0.98 increase-batch",
            ]
        );
        let n = Samples(60_000);
        let updates = |g: &str| {
            let r = runs.iter().find(|r| r.group == g).unwrap();
            r.config.validate().unwrap();
            r.config.resolve(n, 1).unwrap().schedule.total_updates().0
        };
        // Plain SGD at the same effective learning rate ε/(1−m) = 1.0 has the same g.
        let sgd = runs.iter().find(|r| r.group == "sgd decay-lr").unwrap();
        assert!((sgd.config.schedule.lr - 1.0).abs() < 1e-12);
        assert_eq!(sgd.config.schedule.momentum, 0.0);
        // Decay-lr: 30 × 938; increase-batch: 9·938 + 9·188 + 6·38 + 6·8.
        assert_eq!(updates("decay-lr"), 28_140);
        assert_eq!(updates("increase-batch"), 10_410);
        // ε×5 with B×5 (B0 = 320): 9·188 + 9·38 + 6·8 + 6·2 = 2,094.
        assert_eq!(updates("lr×5 B×5 increase-batch"), 2_094);
        assert_eq!(updates("m=0.98 increase-batch"), 2_094);
    }
}
