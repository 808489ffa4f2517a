//! Tests of the bench tables' formatting.

use super::*;

pub(crate) fn row(device: &str, model: &str, batch: usize, ips: f64) -> TrainRow {
    TrainRow {
        device: device.into(),
        model: model.into(),
        input: [3, 32, 32],
        batch,
        noise_scale: false,
        steps: 10,
        seconds_per_step: batch as f64 / ips,
        images_per_second: ips,
    }
}

/// A report of these rows on a test CPU, the rest of its fields at plain values.
fn report(
    train: Vec<TrainRow>,
    matmul: Vec<MatmulRow>,
    pytorch: Option<TorchReport>,
) -> BenchReport {
    BenchReport {
        noisescale_version: "0".into(),
        rounds: 1,
        devices: vec!["flex".into()],
        threads: 2,
        rayon_num_threads: None,
        cpu: "test CPU".into(),
        avx512: true,
        denormals_flushed: true,
        direct_conv: None,
        purge_delay_ms: None,
        train,
        gns: Vec::new(),
        matmul,
        data: Vec::new(),
        pytorch,
    }
}

fn product(
    name: &str,
    batch: usize,
    pieces: usize,
    [m, k, n]: [usize; 3],
    micros: f64,
) -> MatmulRow {
    MatmulRow {
        spec: MatmulSpec {
            product: name.into(),
            batch,
            // The piece is the product's rows, or its summed dimension for a weight
            // gradient (`ᵀ·` in its name).
            piece: if name.contains("ᵀ·") { k } else { m },
            pieces,
            m,
            k,
            n,
            lhs_transposed: false,
            rhs_transposed: false,
        },
        calls: 10,
        seconds_per_call: micros * 1e-6,
    }
}

#[test]
fn the_products_table_gives_gflops_ratios_totals_and_the_step_share() {
    // B = 64 in one piece; B = 1,024 in two pieces of 512; B = 256, whose step was not
    // timed, with a product PyTorch lacks.
    let ours = vec![
        product("x·W1", 64, 1, [64, 1000, 100], 40.0),
        product("xᵀ·dY1", 64, 1, [1000, 64, 100], 60.0),
        product("x·W1", 1024, 2, [512, 1000, 100], 200.0),
        product("xᵀ·dY1", 1024, 2, [1000, 512, 100], 300.0),
        product("x·W1", 256, 1, [256, 1000, 100], 100.0),
        product("xᵀ·dY1", 256, 1, [1000, 256, 100], 150.0),
        // B = 600: a piece of 512 and one of 88, each run once.
        product("x·W1", 600, 1, [512, 1000, 100], 200.0),
        product("x·W1", 600, 1, [88, 1000, 100], 50.0),
    ];
    let theirs = vec![
        product("x·W1", 64, 1, [64, 1000, 100], 80.0),
        product("xᵀ·dY1", 64, 1, [1000, 64, 100], 30.0),
        product("x·W1", 1024, 2, [512, 1000, 100], 250.0),
        product("xᵀ·dY1", 1024, 2, [1000, 512, 100], 500.0),
        product("x·W1", 256, 1, [256, 1000, 100], 200.0),
        product("x·W1", 600, 1, [512, 1000, 100], 200.0),
        product("x·W1", 600, 1, [88, 1000, 100], 50.0),
    ];
    let mlp = |b: usize, micros: f64| row("flex", "mlp-256", b, b as f64 / (micros * 1e-6));
    let torch_row = |b: usize, micros: f64| TorchRow {
        model: "mlp-256".into(),
        batch: b,
        images_per_second: b as f64 / (micros * 1e-6),
    };
    // A second device's step is not the one the products ran beside.
    let train = vec![
        mlp(1024, 10.0),
        mlp(64, 200.0),
        mlp(1024, 1250.0),
        mlp(600, 500.0),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, r)| TrainRow {
        device: if i == 0 { "wgpu".into() } else { r.device },
        ..r
    })
    .collect();
    let pytorch = TorchReport {
        torch_version: "2".into(),
        threads: 2,
        rows: vec![
            torch_row(64, 440.0),
            torch_row(1024, 5000.0),
            torch_row(600, 1000.0),
        ],
        matmul: theirs,
    };
    let report = BenchReport {
        rounds: 3,
        devices: vec!["flex".into(), "wgpu".into()],
        ..report(train, ours, Some(pytorch))
    };
    let text = format_report(&report);
    let has = |line: &str| assert!(text.contains(line), "missing {line:?} in\n{text}");
    // 2·64·1000·100 flops in 40 µs: 320 GFLOP/s; PyTorch's 80 µs: 160, ratio 2.
    has("| 64 | x·W1 | 64×1000×100 | 1 | 40.0 | 320.0 | 80.0 | 160.0 | 2.00 |");
    has("| 64 | xᵀ·dY1 | 1000×64×100 | 1 | 60.0 | 213.3 | 30.0 | 426.7 | 0.50 |");
    // Together: 25.6 Mflop in 100 µs against 110 µs.
    has("| 64 | all 2 | – | – | 100.0 | 256.0 | 110.0 | 232.7 | 1.10 |");
    has(
        "B = 64: the products take 50% of noisescale's step (100.0 of 200.0 µs), 25% of PyTorch's (110.0 of 440.0 µs)",
    );
    // Two pieces: each product twice per step, 409.6 Mflop in 1,000 µs against 1,500.
    has("| 1024 | x·W1 | 512×1000×100 | 2 | 200.0 | 512.0 | 250.0 | 409.6 | 1.25 |");
    has("| 1024 | all 2 | – | – | 1000.0 | 409.6 | 1500.0 | 273.1 | 1.50 |");
    // PyTorch's step does not split B, so these products are not its step's.
    has(
        "B = 1024: the products take 80% of noisescale's step (1000.0 of 1250.0 µs); PyTorch's step runs B in one piece, so no share is given for it",
    );
    // A product PyTorch did not time is marked, and so is the total it would be part of;
    // no MLP step at B = 256, so no share line.
    has("| 256 | x·W1 | 256×1000×100 | 1 | 100.0 | 512.0 | 200.0 | 256.0 | 2.00 |");
    has("| 256 | xᵀ·dY1 | 1000×256×100 | 1 | 150.0 | 341.3 | – | – | – |");
    has("| 256 | all 2 | – | – | 250.0 | 409.6 | – | – | – |");
    assert!(!text.contains("B = 256: the products"), "{text}");
    // Pieces of unequal length, each run once, are a split step too.
    has(
        "B = 600: the products take 50% of noisescale's step (250.0 of 500.0 µs); PyTorch's step runs B in one piece",
    );
    // The share lines follow the table after a blank line (else Markdown reads them as
    // its rows), not break it.
    has(" |\n\nB = 64: the products");
    assert!(
        text.trim_end().ends_with("no share is given for it"),
        "{text}"
    );
    has("on flex, threads = 2, PyTorch 2, median of 3 interleaved rounds");
}

#[test]
fn products_alone_leave_the_step_table_without_pytorch_columns() {
    // `--only data,matmul --pytorch`: PyTorch timed products, no steps.
    let report = report(
        vec![row("flex", "resnet-8", 128, 500.0)],
        vec![product("x·W1", 64, 1, [64, 1000, 100], 40.0)],
        Some(TorchReport {
            torch_version: "2".into(),
            threads: 2,
            rows: Vec::new(),
            matmul: vec![product("x·W1", 64, 1, [64, 1000, 100], 80.0)],
        }),
    );
    let text = format_report(&report);
    assert!(
        text.contains("| resnet-8 | 3×32×32 | 128 | 10 | 0.256 | 500 |\n"),
        "{text}"
    );
    assert!(!text.contains("PyTorch img/s"), "{text}");
    assert!(text.contains("| 80.0 | 160.0 | 2.00 |"), "{text}");
}

#[test]
fn a_second_device_sits_beside_the_first_with_its_ratio() {
    let train = vec![
        row("flex", "cnn", 128, 1000.0),
        row("flex", "resnet-8", 128, 500.0),
        row("wgpu", "cnn", 128, 4000.0),
    ];
    let report = BenchReport {
        devices: vec!["flex".into(), "wgpu".into()],
        avx512: false,
        purge_delay_ms: Some(250),
        ..report(train, Vec::new(), None)
    };
    let text = format_report(&report);
    assert!(
        text.contains("flushed to zero: yes · direct convolution: no (im2col + GEMM)"),
        "{text}"
    );
    assert!(
        text.contains("Freed memory: returned to the kernel after 250 ms unused"),
        "{text}"
    );
    assert!(
        text.contains("| noisescale img/s (flex) | img/s (wgpu) | wgpu/flex |"),
        "{text}"
    );
    assert!(text.contains("| 1000 | 4000 | 4.00 |"), "{text}");
    // A row the second device lacks is marked, not dropped.
    assert!(text.contains("| 500 | – | – |"), "{text}");
    assert_eq!(text.matches("\n| cnn |").count(), 1, "{text}");
}
