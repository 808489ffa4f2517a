use super::*;
use crate::units::{Epochs, Samples, updates_per_epoch};
use std::path::Path;

const N: u64 = 60_000;
const EPOCHS: u32 = 6;

/// Batch size per epoch (0-based) of each synthetic schedule.
fn batch(group: &str, e: u32) -> usize {
    match group {
        "decay-lr" => 128,
        "hybrid" => [128, 128, 640, 640, 640, 640][e as usize],
        _ => [128, 128, 640, 640, 3200, 3200][e as usize],
    }
}

fn lr(group: &str, e: u32) -> f64 {
    match group {
        "decay-lr" => 0.1 / 5f64.powi((e / 2) as i32),
        "hybrid" if e >= 4 => 0.02,
        _ => 0.1,
    }
}

/// Records for one synthetic run whose test accuracy rises to `final_acc` at the last epoch.
fn records(group: &str, final_acc: f64, epochs: u32, world: usize) -> Vec<EpochMetrics> {
    let mut updates = Updates(0);
    let mut samples = Samples(0);
    (0..epochs)
        .map(|e| {
            let b = batch(group, e);
            let u = updates_per_epoch(Samples(N), b);
            updates += u;
            samples += Samples(N);
            let lr = lr(group, e);
            let acc = final_acc - 0.3 * (EPOCHS - 1 - e) as f64 / EPOCHS as f64;
            EpochMetrics {
                epoch: Epochs(e + 1),
                updates,
                samples,
                lr,
                batch_size: b,
                momentum: 0.9,
                noise_scale: lr / 0.1 * (N as f64 / b as f64 - 1.0),
                train_loss: 2.0 / (e as f64 + 1.0),
                train_accuracy: acc,
                test_loss: 2.0 / (e as f64 + 1.5),
                test_accuracy: acc,
                world_size: world,
                allreduce_calls: if world > 1 { u.0 } else { 0 },
                allreduce_bytes: 0,
                wall_seconds: 10.0 * (e + 1) as f64,
                epoch_seconds: 10.0,
                samples_per_second: 6000.0,
                comm_seconds: 0.0,
                peak_memory_bytes: 0,
                gns: crate::metrics::GnsMetrics {
                    gns_b_simple: Some(40.0 * (e + 1) as f64),
                    gns_b_simple_stderr: Some(4.0),
                    ..Default::default()
                },
            }
        })
        .collect()
}

/// Writes a run directory; `finished` decides whether `summary.json` is written.
fn write_run(dir: &Path, group: &str, seed: u64, recs: &[EpochMetrics], finished: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let name = format!("{group}-seed{seed}");
    let info = RunInfo {
        name: name.clone(),
        group: group.into(),
        seed,
        schedule: group.into(),
        optimizer: "momentum".into(),
        model: "mlp-256".into(),
        dataset: "mnist".into(),
        normalization: String::new(),
    };
    std::fs::write(dir.join("run.json"), serde_json::to_string(&info).unwrap()).unwrap();
    crate::metrics::write_metrics(&dir.join("metrics.jsonl"), recs).unwrap();
    if finished {
        let s = RunSummary::from_metrics(&name, group, "momentum", "mlp-256", seed, recs).unwrap();
        std::fs::write(dir.join("summary.json"), serde_json::to_string(&s).unwrap()).unwrap();
    }
}

/// Final accuracies: decay-lr 97 / 98, hybrid 96 / (unfinished), increase-batch 97.5 / 98.5.
fn make_out(root: &Path, world: usize) -> PathBuf {
    let out = root.join("out");
    let runs = out.join("runs");
    let plan: [(&str, u64, f64, bool); 6] = [
        ("decay-lr", 0, 0.97, true),
        ("decay-lr", 1, 0.98, true),
        ("hybrid", 0, 0.96, true),
        ("hybrid", 1, 0.95, false),
        ("increase-batch", 0, 0.975, true),
        ("increase-batch", 1, 0.985, true),
    ];
    for (i, (group, seed, acc, finished)) in plan.into_iter().enumerate() {
        let epochs = if finished { EPOCHS } else { 4 };
        let recs = records(group, acc, epochs, world);
        // Prefixed so that sorting by directory name keeps the plan's order.
        write_run(
            &runs.join(format!("{i}-{group}-seed{seed}")),
            group,
            seed,
            &recs,
            finished,
        );
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn summarize_means_sample_std_and_updates_ratio() {
    let tmp = tempfile::tempdir().unwrap();
    let out = make_out(tmp.path(), 1);
    let runs = load_runs(&[out.join("runs")]).unwrap();
    assert_eq!(runs.len(), 6);
    let groups = summarize(&runs);
    let names: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["decay-lr", "hybrid", "increase-batch"]);

    let d = &groups[0];
    assert_eq!(d.seeds, 2);
    assert!(close(d.final_acc_mean, 97.5));
    // Sample std of {97, 98}: sqrt((0.25 + 0.25) / 1).
    assert!(close(d.final_acc_std.unwrap(), 0.5f64.sqrt()));
    assert!(close(d.best_acc_mean, 97.5));
    assert_eq!(d.updates, Updates(6 * 469));
    assert!(close(d.wall_seconds_mean, 60.0));
    assert!(d.unfinished.is_empty());

    let h = &groups[1];
    assert_eq!(h.seeds, 1, "the unfinished seed is left out of the means");
    assert!(close(h.final_acc_mean, 96.0));
    assert_eq!(h.final_acc_std, None);
    assert_eq!(h.unfinished, ["hybrid-seed1 (4 epochs so far)"]);
    assert!(!h.partial);

    let ib = &groups[2];
    assert!(close(ib.final_acc_mean, 98.0));
    assert!(close(ib.final_acc_std.unwrap(), 0.5f64.sqrt()));
    // 469 + 469 + 94 + 94 + 19 + 19 updates.
    assert_eq!(ib.updates, Updates(1164));
    let ratio = ib.updates_ratio(d).unwrap();
    assert!(close(ratio, 1164.0 / 2814.0));

    let table = markdown_table(&groups);
    assert!(table.contains("| 41% |"), "{table}");
    assert!(table.contains("| 100% |"), "{table}");
    assert!(table.contains("97.50 ± 0.71"), "{table}");
    assert!(table.contains("96.00 ± —"), "{table}");
    assert!(table.contains("hybrid unfinished: hybrid-seed1"), "{table}");
}

#[test]
fn group_of_only_unfinished_runs_is_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    write_run(&dir, "hybrid", 3, &records("hybrid", 0.9, 3, 1), false);
    let runs = load_runs(std::slice::from_ref(&dir)).unwrap();
    assert!(!runs[0].finished());
    let g = &summarize(&runs)[0];
    assert!(g.partial);
    assert_eq!(g.seeds, 1);
    assert!(close(g.final_acc_mean, 100.0 * (0.9 - 0.3 * 3.0 / 6.0)));
    assert!(markdown_table(std::slice::from_ref(g)).contains("no run finished"));
}

#[test]
fn write_report_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let out = make_out(tmp.path(), 2);
    // The output directory itself (runs one level further down) and explicit run dirs.
    let runs = load_runs(std::slice::from_ref(&out)).unwrap();
    assert_eq!(runs.len(), 6);
    let explicit: Vec<PathBuf> = runs.iter().map(|r| r.dir.clone()).collect();
    assert_eq!(load_runs(&explicit).unwrap(), runs);

    let rep = tmp.path().join("report");
    let notes = vec![
        "hardware: 2 CPU cores".to_string(),
        "command: noisescale reproduce --preset <mnist> & more".to_string(),
    ];
    let files = write_report(&runs, &rep, "MNIST: decay vs increase", &notes).unwrap();
    assert_eq!(files.plots.len(), 2 * PLOT_NAMES.len());
    for name in PLOT_NAMES {
        let png = rep.join(format!("{name}.png"));
        let svg = rep.join(format!("{name}.svg"));
        assert!(files.plots.contains(&png) && files.plots.contains(&svg));
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}.png");
        let svg = std::fs::read_to_string(&svg).unwrap();
        for label in ["decay-lr", "hybrid *", "increase-batch", "epoch"] {
            if label == "epoch" && name == "test_accuracy_vs_updates" {
                continue;
            }
            assert!(svg.contains(label), "{name}.svg lacks {label}");
        }
    }
    let svg = |n: &str| std::fs::read_to_string(rep.join(format!("{n}.svg"))).unwrap();
    assert!(svg("test_accuracy_vs_updates").contains("parameter updates (log scale)"));
    assert!(svg("test_accuracy_vs_epoch").contains("test accuracy (%)"));
    assert!(svg("schedule_lr").contains("learning rate ε"));
    assert!(svg("schedule_batch_size").contains("batch size B (samples"));
    assert!(svg("schedule_noise_scale").contains("noise scale g"));
    assert!(svg("allreduce_calls").contains("world size 2"));

    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(md.starts_with("# MNIST: decay vs increase"));
    assert!(md.contains("| decay-lr | 2 | 97.50 ± 0.71"), "{md}");
    assert!(md.contains("- hardware: 2 CPU cores"));
    assert!(md.contains("![Test accuracy vs epoch](test_accuracy_vs_epoch.png)"));
    assert!(md.contains("εN/(B(1−m))"));

    let html = std::fs::read_to_string(&files.html).unwrap();
    assert_eq!(
        html.matches("src=\"data:image/png;base64,").count(),
        PLOT_NAMES.len()
    );
    for name in PLOT_NAMES {
        assert!(html.contains(&format!("<figure id=\"{name}\">")));
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("<link") && !html.contains("<script"));
    assert!(
        html.contains("&lt;mnist&gt; &amp; more"),
        "notes are escaped"
    );
    assert!(html.contains("<tr class=\"note\">"));
    assert!(html.contains("hybrid-seed1 (4 epochs so far)"));
}

#[test]
fn load_runs_errors_name_the_directory_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    let err = format!("{:#}", load_runs(std::slice::from_ref(&empty)).unwrap_err());
    assert!(err.contains(&empty.display().to_string()), "{err}");

    let missing = tmp.path().join("missing");
    let err = format!(
        "{:#}",
        load_runs(std::slice::from_ref(&missing)).unwrap_err()
    );
    assert!(err.contains("missing"), "{err}");

    let bad = tmp.path().join("bad");
    write_run(&bad, "decay-lr", 0, &records("decay-lr", 0.9, 2, 1), false);
    let path = bad.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{not json\n");
    std::fs::write(&path, text).unwrap();
    let err = format!("{:#}", load_runs(&[tmp.path().join("bad")]).unwrap_err());
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn run_without_run_json_is_grouped_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("decay-lr-seed4");
    std::fs::create_dir_all(&dir).unwrap();
    crate::metrics::write_metrics(&dir.join("metrics.jsonl"), &records("decay-lr", 0.9, 2, 1))
        .unwrap();
    let runs = load_runs(&[tmp.path().to_path_buf()]).unwrap();
    assert_eq!(runs[0].info.name, "decay-lr-seed4");
    assert_eq!(runs[0].info.group, "decay-lr");
    assert_eq!(group_from_name("lr×5 B×5"), "lr×5 B×5");
}

#[test]
fn order_groups_puts_named_groups_first() {
    let tmp = tempfile::tempdir().unwrap();
    let out = make_out(tmp.path(), 1);
    let mut runs = load_runs(&[out]).unwrap();
    order_groups(&mut runs, &["increase-batch"]);
    let groups: Vec<String> = summarize(&runs).into_iter().map(|g| g.group).collect();
    assert_eq!(groups, ["increase-batch", "decay-lr", "hybrid"]);
}

#[test]
fn helpers() {
    assert_eq!(mean_std(&[1.0]), (1.0, None));
    let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
    assert!(close(m, 2.5) && close(s.unwrap(), (5.0f64 / 3.0).sqrt()));
    assert_eq!(plot::fmt_num(0.1), "0.1");
    assert_eq!(plot::fmt_num(2000.0), "2000");
    assert_eq!(plot::fmt_num(2.5e6), "2.5e6");
    assert_eq!(plot::fmt_num(1e-4), "1e-4");
    assert_eq!(plot::fmt_num(0.0), "0");
    assert_eq!(
        plot::log_ticks(300.0, 3500.0),
        [
            300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 2000.0, 3000.0
        ]
    );
    assert_eq!(
        plot::log_ticks(3.0, 700.0),
        [5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
    );
    assert_eq!(plot::log_ticks(1e-5, 1e5).len(), 11);
}

/// Writes a demo report to `$REPORT_DEMO_DIR` for looking at (`cargo test -- --ignored`).
#[test]
#[ignore]
fn demo_report() {
    let Ok(dir) = std::env::var("REPORT_DEMO_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let out = make_out(&dir, 2);
    let runs = load_runs(&[out]).unwrap();
    let notes = vec![
        "hardware: demo".to_string(),
        "command: noisescale reproduce".to_string(),
    ];
    write_report(&runs, &dir.join("report"), "Demo report", &notes).unwrap();
}

/// A language model's runs: the table gives validation bits per token in place of accuracies,
/// and the evaluations within training get their three figures after the epoch ones.
#[test]
fn language_model_runs_report_bits_per_token_and_their_evaluations() {
    use crate::metrics::EvalMetrics;
    let tmp = tempfile::tempdir().unwrap();
    let run = |group: &str, nats: f64, b: usize| {
        let mut m = records(group, f64::NAN, 1, 1);
        m[0].test_loss = nats;
        m[0].train_accuracy = f64::NAN;
        let summary = RunSummary::from_metrics(group, group, "adamw", "gpt-4x128", 0, &m).unwrap();
        let evals = (1..=4)
            .map(|i| EvalMetrics {
                samples: Samples(1000 * i),
                updates: Updates(100 * i / b as u64),
                epochs: i as f64 / 60.0,
                lr: 2e-3,
                batch_size: b,
                test_loss: nats + 0.5 / i as f64,
                test_accuracy: f64::NAN,
                test_samples: 512,
                wall_seconds: i as f64,
                gns: crate::metrics::GnsMetrics {
                    gns_b_simple: Some(5.0 * i as f64),
                    ..Default::default()
                },
            })
            .collect();
        Run {
            dir: tmp.path().join(group),
            info: RunInfo {
                name: group.into(),
                group: group.into(),
                seed: 0,
                schedule: group.into(),
                optimizer: "adamw".into(),
                model: "gpt-4x128".into(),
                dataset: "tokens".into(),
                normalization: String::new(),
            },
            metrics: m,
            summary: Some(summary),
            evals,
        }
    };
    let ln2 = std::f64::consts::LN_2;
    let runs = [
        run("decay-lr", 2.5 * ln2, 16),
        run("increase-batch", 2.53 * ln2, 160),
    ];
    let out = tmp.path().join("report");
    let files = write_report(&runs, &out, "lm", &[]).unwrap();
    assert_eq!(
        files.plots.len(),
        2 * (PLOT_NAMES.len() + EVAL_PLOT_NAMES.len())
    );
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(
        md.contains("| final val. bits/token | final val. loss (nats) |"),
        "{md}"
    );
    assert!(
        md.contains("| decay-lr | 1 | 2.500 ± — | 1.7329 ± — |"),
        "{md}"
    );
    assert!(md.contains("| increase-batch | 1 | 2.530 ± — |"), "{md}");
    let svg = std::fs::read_to_string(out.join("validation_vs_samples.svg")).unwrap();
    assert!(svg.contains("validation bits per token") && svg.contains("increase-batch"));
    assert!(
        std::fs::read_to_string(out.join("gradient_noise_scale_vs_samples.svg"))
            .unwrap()
            .contains("training samples")
    );
}
