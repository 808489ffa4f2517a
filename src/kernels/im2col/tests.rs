use super::*;

/// `n` deterministic values in [−1.55, 1.55), a different sequence for each multiplier `m`.
fn fill(n: usize, m: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * m) % 1009) as f32 / 1009.0 - 0.5) * 3.1)
        .collect()
}

#[test]
fn im2col_and_col2im_are_adjoint() {
    // <im2col(x), c> = <x, col2im(c)> for any x, c: the input gradient is the exact adjoint.
    let g = Geometry::new(&[1, 2, 5, 6], &[1, 2, 3, 3], [2, 1], [1, 2]);
    let x: Vec<f32> = (0..g.image())
        .map(|i| ((i * 7919) % 13) as f32 - 6.0)
        .collect();
    let c: Vec<f32> = (0..g.k() * g.p())
        .map(|i| ((i * 104729) % 11) as f32 - 5.0)
        .collect();
    let mut col = vec![f32::NAN; g.k() * g.p()];
    im2col(&g, &x, &mut col);
    let back = col2im(&g, &c);
    let lhs: f32 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
    let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
    assert!(
        col.iter().all(|v| v.is_finite()),
        "im2col left entries unwritten"
    );
    assert_eq!(lhs, rhs);
}

/// The same input gives bit-identical outputs and gradients on pools of 1, 2, 3, 16 and 32
/// threads, both when tasks outnumber threads (single-threaded GEMMs) and when threads
/// outnumber tasks (GEMMs over the whole pool, where a thread waiting in a GEMM steals
/// another conv task and re-enters the scratch buffer: this panicked with 9+ threads).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    // 13 images: 7 tasks of 2; 37 images: 8 tasks of 5 (accumulating); 1×1 and 3×3. The
    // 32×32 case is large enough (16×1024×144 per image) for gemm to use the pool's
    // threads, which is where a waiting thread steals a sibling conv task.
    for (n, c, side, kernel, pad) in [
        (13, 3, 9, 3, 1),
        (37, 3, 9, 3, 1),
        (13, 3, 9, 1, 0),
        (13, 16, 32, 3, 1),
    ] {
        let g = Geometry::new(
            &[n, c, side, side],
            &[c.max(5), c, kernel, kernel],
            [1, 1],
            [pad, pad],
        );
        let x = fill(g.n * g.image(), 7919);
        let w = fill(g.o * g.k(), 104729);
        let dy = fill(g.n * g.o * g.p(), 31337);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            // Several convolutions at once, as the layers of a batch's forward pass are not,
            // but as rayon may interleave them when GEMMs share the pool.
            pool.install(|| {
                // The branch taken: single-threaded GEMMs exactly when tasks ≥ threads.
                let (per_task, par) = split(n);
                assert_eq!(
                    matches!(par, gemm::Parallelism::Rayon(1)),
                    n.div_ceil(per_task) >= threads
                );
                let runs: Vec<_> = (0..4)
                    .into_par_iter()
                    .map(|_| (forward(&g, &x, &w), backward(&g, &x, &w, &dy, true, true)))
                    .collect();
                assert!(runs.windows(2).all(|p| p[0] == p[1]));
                runs.into_iter().next().expect("one run")
            })
        };
        let one = run(1);
        for threads in [2, 3, 16, 32] {
            assert!(
                one == run(threads),
                "{n} images, {kernel}×{kernel}: {threads} threads differ from 1"
            );
        }
    }
}

/// The direct kernels give im2col + GEMM's outputs (to rounding) on the shapes they take,
/// and AVX-512's the same bits as AVX2's: every channel-block tail (O = 13, 5, 8, 16, 9 leave
/// 1, 5, 2, 4, 3 of AVX2's 6 and 5, 5, 0, 0, 1 of AVX-512's 8), non-square kernels, padding
/// and none, rows of 16 to 48 pixels, planes of an odd number of 16-pixel vectors (AVX-512's
/// last run of one: 15 rows of 16); on AVX-512, rows ending in a masked vector of 14 or 12
/// pixels (14×14, and the CNN's first layer, 28×28 at 5×5). It is refused for rows ending
/// in fewer pixels (8×8) or not whole 16-pixel tiles on AVX2, fewer than 3 output channels,
/// stride 2 and 1×1, and everywhere on a CPU without AVX2 and FMA.
#[test]
fn direct_forward_matches_im2col() {
    let cases: [DirectCase; _] = [
        (2, 3, 16, 16, 13, [3, 3], 1, [1, 1], BOTH),
        (3, 4, 18, 20, 5, [3, 5], 1, [0, 0], BOTH),
        (2, 2, 32, 30, 8, [3, 3], 1, [1, 2], BOTH),
        (1, 16, 32, 32, 16, [3, 3], 1, [1, 1], BOTH),
        (2, 3, 16, 48, 9, [1, 3], 1, [0, 1], BOTH),
        (2, 3, 17, 16, 5, [3, 3], 1, [0, 1], BOTH),
        (2, 4, 14, 14, 4, [3, 3], 1, [1, 1], AVX512),
        (3, 1, 28, 28, 10, [5, 5], 1, [2, 2], AVX512),
        (2, 4, 8, 8, 4, [3, 3], 1, [1, 1], NONE),
        (2, 4, 16, 16, 2, [3, 3], 1, [1, 1], NONE),
        (2, 4, 32, 32, 4, [3, 3], 2, [1, 1], NONE),
        (2, 4, 16, 16, 4, [1, 1], 1, [0, 0], NONE),
    ];
    let mut outputs = std::collections::HashMap::new();
    each_direct_case(&cases, direct_plan, |g, case, plan| {
        let x = fill(g.n * g.image(), 7919);
        let weight = fill(g.o * g.k(), 104729);
        let ours = forward_with(g, &x, &weight, Some(plan));
        let im2col = forward_with(g, &x, &weight, None);
        assert_close_to(case, "y", &ours, &im2col);
        assert_same_bits_on_every_isa(&mut outputs, g, case, ours);
    });
}

/// The input gradient through the direct kernel (the forward of the transposed, flipped
/// convolution) gives GEMM + col2im's (to rounding), the same bits on AVX2 and AVX-512, with
/// or without the weight gradient, which stays bit for bit the same. Cases: every AVX2
/// channel-block tail of the gradient's C output channels (C = 3, 13, 5, 16, 8 leave 3, 1,
/// 5, 4, 2), non-square kernels, padding 0 to kernel − 1 (the gradient padded by kernel − 1
/// to 0), rows of 16 to 48 pixels, on AVX-512 14-pixel rows (the CNN's second layer). It is
/// refused for stride 2, padding ≥ the kernel, input rows that are not whole 16-pixel
/// vectors on AVX2, a 1-channel input, and 1×1.
#[test]
fn direct_input_gradient_matches_col2im() {
    let cases: [DirectCase; _] = [
        (2, 3, 16, 16, 13, [3, 3], 1, [1, 1], BOTH),
        (2, 13, 16, 32, 4, [3, 3], 1, [1, 1], BOTH),
        (3, 5, 20, 16, 7, [3, 5], 1, [0, 2], BOTH),
        (1, 16, 32, 32, 16, [3, 3], 1, [2, 2], BOTH),
        (2, 8, 16, 48, 9, [1, 3], 1, [0, 1], BOTH),
        (2, 5, 15, 16, 6, [3, 3], 1, [1, 1], BOTH),
        (2, 4, 32, 32, 4, [3, 3], 2, [1, 1], NONE),
        (2, 4, 16, 16, 4, [3, 3], 1, [3, 3], NONE),
        (2, 4, 14, 14, 4, [3, 3], 1, [1, 1], AVX512),
        (2, 32, 14, 14, 6, [5, 5], 1, [2, 2], AVX512),
        (2, 1, 16, 16, 4, [3, 3], 1, [1, 1], NONE),
        (2, 4, 16, 16, 4, [1, 1], 1, [0, 0], NONE),
    ];
    let mut outputs = std::collections::HashMap::new();
    each_direct_case(&cases, direct_input_gradient, |g, case, plan| {
        let direct = DirectGradients {
            dx: Some(plan),
            dw: None,
        };
        let ours = check_direct_gradient(g, case, direct);
        assert_same_bits_on_every_isa(&mut outputs, g, case, ours);
    });
}

/// The weight gradient through the direct kernel gives im2col + GEMM's (to rounding), with
/// or without the input gradient, which stays bit for bit the same. Cases: every tail of
/// AVX2's 4-channel blocks (O = 13, 6, 7, 16, 3, 32 leave 1, 2, 3, 4, 3, 4) and of AVX-512's
/// 8 (5, 6, 7, 8, 3, 8), kernels 1, 3 and 5 tall, padding and none, rows of 16 to 48 pixels,
/// 17 images (tasks of 3, each summing its images' gradients). It is refused for 16-pixel
/// rows with over 32 output channels (on AVX-512 with any), 8-pixel rows, rows not whole
/// vectors (40 pixels on AVX-512), kernels not 3 wide, stride 2 and 1×1.
#[test]
fn direct_weight_gradient_matches_im2col() {
    let cases: [DirectCase; _] = [
        (17, 3, 32, 32, 13, [3, 3], 1, [1, 1], BOTH),
        (3, 5, 20, 48, 6, [5, 3], 1, [2, 1], BOTH),
        (3, 5, 20, 40, 6, [5, 3], 1, [2, 1], AVX2),
        (2, 4, 16, 34, 7, [3, 3], 1, [0, 0], BOTH),
        (1, 16, 32, 32, 16, [3, 3], 1, [1, 1], BOTH),
        (2, 2, 8, 48, 3, [1, 3], 1, [0, 1], BOTH),
        (2, 4, 16, 16, 32, [3, 3], 1, [1, 1], AVX2),
        (2, 4, 16, 16, 33, [3, 3], 1, [1, 1], NONE),
        (2, 4, 8, 8, 4, [3, 3], 1, [1, 1], NONE),
        (2, 4, 32, 36, 4, [3, 3], 1, [1, 1], NONE),
        (2, 4, 32, 32, 4, [3, 5], 1, [1, 2], NONE),
        (2, 4, 64, 64, 4, [3, 3], 2, [1, 1], NONE),
        (2, 4, 32, 32, 4, [1, 1], 1, [0, 0], NONE),
    ];
    each_direct_case(&cases, direct_weight_gradient, |g, case, plan| {
        let direct = DirectGradients {
            dx: None,
            dw: Some(plan),
        };
        check_direct_gradient(g, case, direct);
    });
}

/// (N, C, H, W, O, [kh, kw], stride, [ph, pw], the kernels that take it).
type DirectCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    [usize; 2],
    usize,
    [usize; 2],
    &'static [Isa],
);

/// Taken by every direct kernel.
const BOTH: &[Isa] = &[Isa::Avx2, Isa::Avx512];
/// Taken by none.
const NONE: &[Isa] = &[];
/// Taken by the AVX2 kernels only.
const AVX2: &[Isa] = &[Isa::Avx2];
/// Taken by the AVX-512 kernels only.
const AVX512: &[Isa] = &[Isa::Avx512];

/// Runs `check` (geometry, the case's name, plan) on every case `plan` takes, for every
/// direct kernel the CPU has (AVX-512's first), after asserting that each takes exactly the
/// cases marked so.
fn each_direct_case<P>(
    cases: &[DirectCase],
    plan: impl Fn(&Geometry, Isa) -> Option<P>,
    mut check: impl FnMut(&Geometry, &str, P),
) {
    for isa in direct_conv::available() {
        for &(n, c, h, w, o, [kh, kw], s, pad, takes) in cases {
            let g = Geometry::new(&[n, c, h, w], &[o, c, kh, kw], [s, s], pad);
            let case = format!(
                "{}: {n}×{c}×{h}×{w} → {o}, {kh}×{kw}, stride {s}, pad {pad:?}",
                isa.name()
            );
            let taken = plan(&g, isa);
            assert_eq!(taken.is_some(), takes.contains(&isa), "{case}");
            if let Some(taken) = taken {
                check(&g, &case, taken);
            }
        }
    }
}

/// Checks the one gradient `direct` computes through [`direct_conv`] on deterministic
/// inputs: close (to rounding) to the one through `col`; the same bits whether or not the
/// other gradient is computed too; and the other gradient, through `col` both ways, the same
/// bits with and without `direct`. Returns the direct gradient.
fn check_direct_gradient(g: &Geometry, case: &str, direct: DirectGradients) -> Vec<f32> {
    let x = fill(g.n * g.image(), 7919);
    let weight = fill(g.o * g.k(), 104729);
    let dy = fill(g.n * g.o * g.p(), 31337);
    let of_dx = direct.dx.is_some();
    let (what, other) = if of_dx { ("dx", "dW") } else { ("dW", "dx") };
    // (the checked gradient, the other), with the other computed or not.
    let run = |with_other: bool, direct| {
        let (want_dx, want_dw) = if of_dx {
            (true, with_other)
        } else {
            (with_other, true)
        };
        let (dx, dw) = backward_with(g, &x, &weight, &dy, want_dx, want_dw, direct);
        if of_dx { (dx, dw) } else { (dw, dx) }
    };
    let none = DirectGradients { dx: None, dw: None };
    let (ours, ours_other) = run(true, direct);
    let (col, col_other) = run(true, none);
    let (alone, no_other) = run(false, direct);
    let (ours, col) = (ours.expect(what), col.expect(what));
    assert!(
        ours_other.is_some() && ours_other == col_other,
        "{case}: {other} changed"
    );
    assert!(
        no_other.is_none() && alone == Some(ours.clone()),
        "{case}: {what} alone"
    );
    assert_close_to(case, what, &ours, &col);
    ours
}

/// `ours` is the same bits as the first output recorded for `g` (by another ISA's kernels).
fn assert_same_bits_on_every_isa(
    outputs: &mut std::collections::HashMap<String, Vec<f32>>,
    g: &Geometry,
    case: &str,
    ours: Vec<f32>,
) {
    let first = outputs.entry(format!("{g:?}")).or_insert(ours.clone());
    assert!(*first == ours, "{case}: not the same bits on every ISA");
}

/// `ours` equals `reference` to within 1e-5 of the reference's largest magnitude.
fn assert_close_to(case: &str, what: &str, ours: &[f32], reference: &[f32]) {
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_eq!(ours.len(), reference.len(), "{case}: {what} length");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * scale,
            "{case}: {what}[{i}] {a} against {b}"
        );
    }
}

#[test]
fn output_size_follows_pytorch() {
    let g = Geometry::new(&[1, 3, 32, 32], &[16, 3, 3, 3], [2, 2], [1, 1]);
    assert_eq!((g.oh, g.ow), (16, 16));
    let g = Geometry::new(&[1, 3, 28, 28], &[32, 3, 5, 5], [1, 1], [0, 0]);
    assert_eq!((g.oh, g.ow), (24, 24));
}
