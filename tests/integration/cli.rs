//! The command line: schedules of the paper's CIFAR-10 setting, help, errors, inspection.

use std::process::Command;

use crate::common::BIN;

fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `noisescale bench` names the process's settings above its table: which direct convolution
/// kernels ran (the widest the CPU has; `NOISESCALE_DIRECT_CONV=avx2` the AVX2 ones, `off` none,
/// and a value it does not know is an error), and whether freed memory is
/// kept (the default) or returned after `MIMALLOC_PURGE_DELAY` ms, which also checks that
/// `noisescale::allocator` sets the option that variable names. A batch size no row runs is an
/// error, not an empty table.
#[test]
fn bench_reports_the_direct_convolution_and_refuses_unknown_batch_sizes() {
    let bench = |env: Option<(&str, &str)>, batch: &str| {
        let mut c = Command::new(BIN);
        c.args([
            "bench",
            "--threads",
            "2",
            "--only",
            "train-step",
            "--no-gns-cost",
        ])
        .args(["--models", "cnn", "--batch-sizes", batch, "--steps", "1"])
        .args(["--min-seconds", "0", "--max-seconds", "0.1"])
        .env_remove("NOISESCALE_DIRECT_CONV")
        .env_remove("MIMALLOC_PURGE_DELAY");
        if let Some((var, value)) = env {
            c.env(var, value);
        }
        let o = c.output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    #[cfg(target_arch = "x86_64")]
    let [avx2_fma, avx512] = {
        use std::arch::is_x86_feature_detected as has;
        [has!("avx2") && has!("fma"), has!("avx512f")]
    };
    #[cfg(not(target_arch = "x86_64"))]
    let [avx2_fma, avx512] = [false, false];
    let line = |kernels| format!("direct convolution: {kernels}");
    let im2col = line("no (im2col + GEMM)");
    let (avx2, widest) = match (avx2_fma, avx512) {
        (true, true) => (line("yes (AVX2)"), line("yes (AVX-512)")),
        (true, false) => (line("yes (AVX2)"), line("yes (AVX2)")),
        _ => (im2col.clone(), im2col.clone()),
    };
    let (ok, out, err) = bench(None, "128");
    assert!(ok, "{err}");
    assert!(out.contains(&widest), "{out}");
    assert!(out.contains("Freed memory: kept for reuse"), "{out}");
    assert!(out.contains("| cnn | 1×28×28 | 128 | 1 |"), "{out}");
    for (setting, expected) in [("off", &im2col), ("avx2", &avx2), ("auto", &widest)] {
        let (ok, out, err) = bench(Some(("NOISESCALE_DIRECT_CONV", setting)), "128");
        assert!(ok, "{err}");
        assert!(out.contains(expected.as_str()), "{setting}: {out}");
    }
    let (ok, _, err) = bench(Some(("NOISESCALE_DIRECT_CONV", "avx-512")), "128");
    assert!(
        !ok && err.contains("NOISESCALE_DIRECT_CONV=\"avx-512\" is not one of off, avx2, auto"),
        "{err}"
    );
    let (ok, out, err) = bench(Some(("MIMALLOC_PURGE_DELAY", "250")), "128");
    assert!(ok, "{err}");
    assert!(
        out.contains("Freed memory: returned to the kernel after 250 ms unused"),
        "{out}"
    );
    let (ok, _, err) = bench(None, "4");
    assert!(
        !ok && err.contains("--batch-sizes [4]") && err.contains("cnn at [128, 1024]"),
        "{err}"
    );
}

/// The paper's counts hold for the full CIFAR-10 (N = 50,000), not the subset in ../shared/data.
fn total_updates(args: &[&str]) -> u64 {
    let mut all = vec![
        "schedule",
        "--preset",
        "paper-cifar10",
        "--json",
        "--dataset-size",
        "50000",
    ];
    all.extend_from_slice(args);
    let (ok, out, err) = run(&all);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["total_updates"].as_u64().unwrap()
}

#[test]
fn paper_cifar10_update_counts() {
    assert_eq!(total_updates(&["--schedule", "decay-lr"]), 78_200);
    assert_eq!(total_updates(&["--schedule", "increase-batch"]), 29_000);
    assert_eq!(
        total_updates(&["--schedule", "increase-batch", "--milestones", "60,120,180"]),
        29_240
    );
    // Hybrid, cap 5,120: 128 → 640 → 3200, then ε ÷ 5 at 160:
    // 60·391 + 60·79 + 40·16 + 40·16.
    assert_eq!(total_updates(&["--schedule", "hybrid"]), 29_480);
}

#[test]
fn schedule_table_prints_phases_and_noise_scale() {
    let (ok, out, err) = run(&[
        "schedule",
        "--preset",
        "paper-cifar10",
        "--schedule",
        "increase-batch",
        "--data",
        "/nonexistent",
    ]);
    assert!(ok, "{err}");
    // No data there: the published CIFAR-10's N, said so.
    assert!(
        out.contains("N = 50000 (cifar10's published size: no cifar10 data in /nonexistent)"),
        "{out}"
    );
    assert!(out.contains("16000"), "{out}");
    assert!(out.contains("29000"), "{out}");
}

/// `schedule` plans for the data a run would load: its own count, under the subset.
#[test]
fn schedule_sizes_n_from_the_data() {
    let n_of = |args: &[&str]| {
        let mut all = vec!["schedule", "--json"];
        all.extend_from_slice(args);
        let (ok, out, err) = run(&all);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["dataset_size"].as_u64().unwrap()
    };
    assert_eq!(n_of(&["--preset", "cifar10-subset"]), 4_000);
    // The paper's preset on the same 4,000 images: the count comes from the files, not the name.
    assert_eq!(n_of(&["--preset", "paper-cifar10"]), 4_000);
    assert_eq!(n_of(&["--preset", "mnist"]), 60_000);
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("subset.toml");
    std::fs::write(
        &p,
        "[data]\ndataset = \"mnist\"\ndir = \"../shared/data\"\ntrain_subset = 1000\n[schedule]\nepochs = 2\nlr = 0.1\nbatch_size = 100\n",
    )
    .unwrap();
    assert_eq!(n_of(&[p.to_str().unwrap()]), 1_000);
}

#[test]
fn help_lists_every_subcommand() {
    let (ok, out, _) = run(&["--help"]);
    assert!(ok);
    for sub in [
        "train",
        "eval",
        "schedule",
        "reproduce",
        "report",
        "data",
        "models",
        "presets",
    ] {
        assert!(out.contains(sub), "{sub} missing from --help:\n{out}");
    }
}

#[test]
fn models_lists_pytorch_parameter_counts() {
    let (ok, out, err) = run(&["models"]);
    assert!(ok, "{err}");
    for n in ["1663370", "78042", "2748890"] {
        assert!(out.contains(n), "{n} missing:\n{out}");
    }
}

fn bad_config(body: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, body).unwrap();
    let (ok, _, err) = run(&["schedule", p.to_str().unwrap(), "--dataset-size", "1000"]);
    assert!(!ok);
    err
}

const GOOD: &str = r#"
[data]
dataset = "synthetic"
[schedule]
epochs = 10
lr = 0.1
batch_size = 32
momentum = 0.9
milestones = [3, 6]
"#;

#[test]
fn bad_settings_are_named() {
    let err = bad_config(&format!("{GOOD}\nbogus = 1\n"));
    assert!(err.contains("bogus"), "{err}");
    let err = bad_config(&GOOD.replace("batch_size = 32", "batch_size = 0"));
    assert!(
        err.contains("schedule.batch_size = 0 is out of range"),
        "{err}"
    );
    let err = bad_config(&GOOD.replace("momentum = 0.9", "momentum = 1.0"));
    assert!(err.contains("schedule.momentum"), "{err}");
    let err = bad_config(&GOOD.replace("[3, 6]", "[6, 3]"));
    assert!(err.contains("schedule.milestones"), "{err}");
    let err = bad_config(&GOOD.replace("[data]", "[data]\nworkerz = 2"));
    assert!(err.contains("workerz"), "{err}");
    let err = bad_config(&format!("{GOOD}\n[model]\nkind = \"resnet\"\ndepth = 9\n"));
    assert!(err.contains("model.depth = 9"), "{err}");
    let err = bad_config(&format!("{GOOD}\ndevice = \"tpu\"\n"));
    assert!(err.contains("tpu"), "{err}");
}

#[test]
fn missing_data_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(&[
        "train",
        "--preset",
        "mnist",
        "--data",
        tmp.path().to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
}

#[test]
fn data_inspect_counts_the_shipped_sets() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data");
    let (ok, out, err) = run(&["data", "inspect", dir, "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("60000") && out.contains("4000"), "{out}");
    assert!(out.contains("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"));
}

#[test]
fn reproduce_runs_the_four_schedules_writes_the_report_and_reuses_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rep");
    let args = [
        "reproduce",
        "--preset",
        "synthetic",
        "-q",
        "--out",
        out.to_str().unwrap(),
    ];
    let (ok, stdout, err) = run(&args);
    assert!(ok, "{err}");
    for g in ["decay-lr", "hybrid", "increase-batch", "adaptive"] {
        assert!(stdout.contains(g), "{stdout}");
        assert!(
            out.join("runs")
                .join(format!("{g}-seed0"))
                .join("summary.json")
                .exists()
        );
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("data:image/png;base64,"));
    let resolved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/hybrid-seed0/resolved.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(resolved["dataset_size"], 2048);
    assert_eq!(resolved["world_size"], 1);
    assert!(out.join("test_accuracy_vs_updates.svg").exists());
    // A second call finds every run finished and only redraws the report.
    let (ok, _, err) = run(&args);
    assert!(ok, "{err}");
    assert_eq!(err.matches("finished earlier, reused").count(), 4, "{err}");
    // `report` redraws from the run directories alone.
    let again = tmp.path().join("again");
    let (ok, stdout, err) = run(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("increase-batch"));
    // Groups in the order of the schedule kinds, not of the directory names.
    let groups: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .filter(|g| *g != "group" && !g.starts_with('-'))
        .collect();
    assert_eq!(
        groups,
        ["decay-lr", "hybrid", "increase-batch", "adaptive"],
        "{stdout}"
    );
    assert!(again.join("report.md").exists());
}

/// `data inspect` on a token stream: its parts and windows at the context, its ids and the
/// checksum `../shared/data/README.md` gives; named errors for a missing context or split.
#[test]
fn data_inspect_reports_a_token_stream() {
    let kjv = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/text/kjv.txt");
    let (ok, out, err) = run(&[
        "data",
        "inspect",
        kjv,
        "--context",
        "64",
        "--validation-from",
        "3868416",
        "--json",
    ]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let split = |i: usize| {
        (
            r["splits"][i]["tokens"].as_u64().unwrap(),
            r["splits"][i]["windows"].as_u64().unwrap(),
        )
    };
    // ⌊L / 64⌋ − 1 windows of each part.
    assert_eq!(split(0), (3_868_416, 60_443));
    assert_eq!(split(1), (429_823, 6_714));
    assert_eq!(r["files"][0]["decoded_bytes"], 4_298_239);
    assert_eq!(
        r["files"][0]["sha256"],
        "82fa5f3788c6a9a010fb128a0f0bf588984b5888a82058520620eded59b033ea"
    );
    assert_eq!(
        (r["distinct"].as_u64(), r["max_id"].as_u64()),
        (Some(73), Some(122))
    );
    let bits = r["unigram_bits"].as_f64().unwrap();
    assert!((4.4..4.5).contains(&bits), "{bits}");
    let (ok, _, err) = run(&["data", "inspect", kjv]);
    assert!(
        !ok && err.contains("a token stream needs --context"),
        "{err}"
    );
    let (ok, _, err) = run(&["data", "inspect", kjv, "--context", "64"]);
    assert!(
        !ok && err.contains("needs data.tokens.validation_from"),
        "{err}"
    );
}

/// `bench --only lm-step` times the transformer's step at both shapes and prints their table
/// (without `--pytorch`, no ratio).
#[test]
fn bench_times_the_language_model_step() {
    let (ok, out, err) = run(&[
        "bench",
        "--only",
        "lm-step",
        "--threads",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--min-seconds",
        "0",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("transformer training step (AdamW), 2 thread(s)"),
        "{out}"
    );
    assert!(
        out.contains("| lm preset | 4 × 128, 4 | 16 × 64 |"),
        "{out}"
    );
    assert!(
        out.contains("| nanoGPT char | 6 × 384, 6 | 8 × 256 |"),
        "{out}"
    );
    assert!(err.contains("bench lm lm preset B=16 T=64"), "{err}");
}
