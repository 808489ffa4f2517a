//! Tests of the bench's row selection and its step's products.

use super::*;

fn names(rows: &[TrainRowSpec]) -> Vec<(String, Vec<usize>)> {
    rows.iter().map(|r| (r.0.name(), r.2.clone())).collect()
}

#[test]
fn rounds_give_each_row_its_median() {
    let row = super::report::tests::row;
    let rounds = vec![
        vec![
            row("flex", "cnn", 128, 900.0),
            row("flex", "mlp-256", 64, 30.0),
        ],
        vec![
            row("flex", "cnn", 128, 700.0),
            row("flex", "mlp-256", 64, 50.0),
        ],
        vec![
            row("flex", "cnn", 128, 800.0),
            row("flex", "mlp-256", 64, 10.0),
        ],
    ];
    let rows = median_rows(rounds);
    let got: Vec<(&str, f64, usize)> = rows
        .iter()
        .map(|r| (r.model.as_str(), r.images_per_second, r.steps))
        .collect();
    assert_eq!(got, [("cnn", 800.0, 30), ("mlp-256", 30.0, 30)]);
    assert_eq!(rows[0].seconds_per_step, 128.0 / 800.0);
    let torch = |ips: f64| TorchReport {
        torch_version: "t".into(),
        threads: 2,
        rows: vec![TorchRow {
            model: "cnn".into(),
            batch: 128,
            images_per_second: ips,
        }],
        matmul: Vec::new(),
    };
    let t = median_torch(vec![torch(5.0), torch(1.0), torch(3.0)]).unwrap();
    assert_eq!(t.rows[0].images_per_second, 3.0);
    assert!(median_torch(Vec::new()).is_none());
}

fn bench_args(args: &[&str]) -> BenchArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }
    <Cli as clap::Parser>::parse_from(std::iter::once("bench").chain(args.iter().copied())).bench
}

#[test]
fn the_products_follow_the_mlp_rows_that_models_and_batch_sizes_select() {
    let batches = |args: &[&str]| -> Vec<usize> {
        let products = matmul_products(&bench_args(args)).unwrap();
        let mut b: Vec<usize> = products.iter().map(|p| p.batch).collect();
        b.dedup();
        b
    };
    // The mlp-256 row's batch sizes, five products each (784-256-10).
    assert_eq!(batches(&["--only", "matmul"]), [64, 1024]);
    let all = matmul_products(&bench_args(&["--only", "matmul"])).unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(all[0].k, 784);
    // B = 64 fits one micro-batch; B = 1,024 runs as two pieces of 512, as the step does.
    let pieces: Vec<(usize, usize, usize)> = all
        .iter()
        .map(|p| (p.batch, p.m, p.pieces))
        .step_by(5)
        .collect();
    assert_eq!(pieces, [(64, 64, 1), (1024, 512, 2)]);
    assert_eq!(all[9].k, 512, "{:?}", all[9]);
    assert_eq!(
        batches(&["--only", "matmul", "--batch-sizes", "64,128"]),
        [64]
    );
    assert_eq!(
        batches(&["--only", "all", "--models", "mlp-256,cnn"]),
        [64, 1024]
    );
    // `--only` takes several kinds; `all` (the default) is every one.
    let both = bench_args(&["--only", "train-step,matmul"]);
    assert!(both.runs(Only::TrainStep) && both.runs(Only::Matmul) && !both.runs(Only::Data));
    let default = bench_args(&[]);
    assert!([Only::TrainStep, Only::Matmul, Only::Data].map(|o| default.runs(o)) == [true; 3]);
    assert!(!bench_args(&["--only", "data"]).runs(Only::Matmul));
    // `all` without the MLP times no products; `--only matmul` says why it has none.
    assert!(batches(&["--only", "all", "--models", "cnn"]).is_empty());
    assert!(batches(&["--only", "all", "--batch-sizes", "128"]).is_empty());
    for args in [
        &["--only", "matmul", "--models", "cnn"][..],
        &["--only", "matmul", "--batch-sizes", "128"],
        &["--only", "train-step,matmul", "--models", "cnn"],
    ] {
        let err = matmul_products(&bench_args(args)).unwrap_err().to_string();
        assert!(
            err.contains("--only matmul times the mlp-256 row's products"),
            "{err}"
        );
    }
    // A batch that is not a whole number of micro-batches: its full pieces' products,
    // then the last piece's (600 = 512 + 88).
    let mlp = ModelConfig::Mlp { widths: vec![256] };
    let split: Vec<(usize, usize, usize, usize)> = step_products(&mlp, [1, 28, 28], 600)
        .iter()
        .map(|p| (p.batch, p.piece, p.pieces, p.m.min(p.k)))
        .collect();
    assert_eq!(split.len(), 10);
    assert!(
        split[..5]
            .iter()
            .all(|&(b, piece, pieces, _)| (b, piece, pieces) == (600, 512, 1))
    );
    assert!(
        split[5..]
            .iter()
            .all(|&(b, piece, pieces, _)| (b, piece, pieces) == (600, 88, 1))
    );
    assert_eq!(split[5].3, 88, "x·W1 of the last piece has its 88 rows");
    // An unknown model is named, with or without the MLP beside it.
    for models in ["lenet", "mlp-256,lenet"] {
        let args = bench_args(&["--only", "matmul", "--models", models]);
        let err = matmul_products(&args).unwrap_err().to_string();
        assert!(err.contains("no bench row for `lenet`"), "{err}");
    }
}

#[test]
fn products_take_the_median_time_over_rounds() {
    let row = |micros: f64, calls: usize| matmul::MatmulRow {
        spec: matmul::mlp_products(784, &[256], 10, 64, 64, 1)[0].clone(),
        calls,
        seconds_per_call: micros * 1e-6,
    };
    // For the first product neither the mean, nor the first or last round, is the median;
    // the second's medians come from other rounds than the first's.
    let rows = median_matmul(vec![
        vec![row(100.0, 10), row(9.0, 1)],
        vec![row(60.0, 20), row(1.0, 1)],
        vec![row(50.0, 30), row(20.0, 1)],
    ]);
    let got: Vec<(f64, usize)> = rows
        .iter()
        .map(|r| ((r.seconds_per_call * 1e6).round(), r.calls))
        .collect();
    assert_eq!(got, [(60.0, 60), (9.0, 3)]);
    assert!(median_matmul(Vec::new()).is_empty());
}

#[test]
fn models_and_batch_sizes_select_rows() {
    assert_eq!(selected_rows(&[], &[]).unwrap().len(), train_rows().len());
    let rows = selected_rows(&["cnn".into(), "resnet-8".into()], &[128]).unwrap();
    assert_eq!(
        names(&rows),
        [("cnn".into(), vec![128]), ("resnet-8".into(), vec![128])]
    );
    // A batch size no selected model runs is an error naming the ones they do, not an
    // empty table (the MLP runs 64 and 1,024).
    let err = selected_rows(&["mlp-256".into()], &[128])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[128]") && err.contains("mlp-256 at [64, 1024]"),
        "{err}"
    );
    let err = selected_rows(&["lenet".into()], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("`lenet`") && err.contains("wrn-16-4"), "{err}");
}
