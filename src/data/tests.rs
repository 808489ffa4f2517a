//! Acceptance tests. Real data is read from `$NOISESCALE_DATA`, else
//! `CARGO_MANIFEST_DIR/../shared/data`; corrupted copies go to temporary directories.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::*;

fn data_dir() -> PathBuf {
    std::env::var_os("NOISESCALE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")))
}

fn mnist() -> &'static Split {
    static S: OnceLock<Split> = OnceLock::new();
    S.get_or_init(|| load(DatasetKind::Mnist, &data_dir()).expect("load MNIST"))
}

fn cifar() -> &'static Split {
    static S: OnceLock<Split> = OnceLock::new();
    S.get_or_init(|| load(DatasetKind::Cifar10, &data_dir()).expect("load CIFAR-10"))
}

fn mnist_file(stem: &str) -> PathBuf {
    data_dir().join("mnist").join(format!("{stem}.gz"))
}

fn cifar_file(name: &str) -> PathBuf {
    data_dir().join("cifar10-subset").join(name)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn link(dir: &Path, target: &Path) {
    std::os::unix::fs::symlink(target, dir.join(target.file_name().unwrap())).unwrap();
}

/// Writes `bytes` raw and gzipped under `name` / `name.gz`; returns both paths.
fn both(dir: &Path, name: &str, bytes: &[u8]) -> [PathBuf; 2] {
    [
        write(dir, name, bytes),
        write(dir, &format!("{name}.gz"), &gzip(bytes)),
    ]
}

fn names_file(e: &DataError, p: &Path) -> bool {
    e.to_string()
        .contains(p.file_name().unwrap().to_str().unwrap())
}

// ---------------------------------------------------------------- real data

#[test]
fn mnist_loads() {
    let s = mnist();
    assert_eq!(s.train.len(), 60_000);
    assert_eq!(s.test.len(), 10_000);
    for d in [&s.train, &s.test] {
        assert_eq!(d.image_shape(), [1, 28, 28]);
        assert_eq!(d.images.len(), d.len() * 784);
        assert_eq!(d.num_classes, 10);
    }
    assert_eq!(
        s.train.class_counts(),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(s.test.class_counts().iter().sum::<usize>(), 10_000);
    assert_eq!(s.train.samples(), crate::units::Samples(60_000));
}

#[test]
fn mnist_known_statistics() {
    let n = Normalizer::from_dataset(&mnist().train);
    assert!((n.mean[0] - 0.1307).abs() < 1e-3, "{:?}", n.mean);
    assert!((n.std[0] - 0.3081).abs() < 1e-3, "{:?}", n.std);
}

#[test]
fn cifar_loads() {
    let s = cifar();
    assert_eq!(s.train.len(), 4_000);
    assert_eq!(s.test.len(), 1_000);
    assert_eq!(s.train.image_shape(), [3, 32, 32]);
    assert_eq!(s.test.image_shape(), [3, 32, 32]);
    assert_eq!(s.train.labels[..10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    assert_eq!(s.test.labels[..10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    // CHW layout: image 0's first red pixel is byte 1 of the file.
    let raw = std::fs::read(cifar_file("data_batch_1.bin")).unwrap();
    assert_eq!(s.train.image(0), &raw[1..3073]);
    assert_eq!(s.train.image(1), &raw[3074..6146]);
}

#[test]
fn inspect_reports_and_checksums() {
    let r = inspect(&data_dir()).unwrap();
    let kinds: Vec<_> = r.datasets.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [DatasetKind::Mnist, DatasetKind::Cifar10]);
    let want = [
        (
            "train-images-idx3-ubyte.gz",
            47_040_016,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            60_008,
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            7_840_016,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            10_008,
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
        (
            "data_batch_1.bin",
            12_292_000,
            "0993cf8b8e43bc207603aef9787006995746513f5e3fa5a52e06d1b069926330",
        ),
        (
            "test_batch.bin",
            3_073_000,
            "8314c96d7cd65618193bab23acdd5d4c4af15bf6dd00a1781d55beedf3be1ef5",
        ),
    ];
    let got: Vec<_> = r
        .datasets
        .iter()
        .flat_map(|d| &d.files)
        .map(|f| {
            let n = f.path.file_name().unwrap().to_str().unwrap().to_string();
            (n, f.decoded_bytes, f.sha256.clone())
        })
        .collect();
    let want: Vec<_> = want
        .iter()
        .map(|(n, l, h)| (n.to_string(), *l, h.to_string()))
        .collect();
    assert_eq!(got, want);
    let m = &r.datasets[0].splits[0];
    assert_eq!(
        (m.split.as_str(), m.count, m.shape),
        ("train", 60_000, [1, 28, 28])
    );
    assert_eq!(m.class_counts[0], 5923);
    let text = r.to_string();
    assert!(text.contains("mnist") && text.contains("cifar10") && text.contains("60000"));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["datasets"][1]["kind"], "cifar10");
    // A directory with nothing recognisable.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        inspect(empty.path()),
        Err(DataError::NoDataset { .. })
    ));
}

#[test]
fn kind_serde_kebab_case() {
    let s = serde_json::to_string(&[
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
        DatasetKind::Synthetic,
    ]);
    assert_eq!(s.unwrap(), r#"["mnist","cifar10","synthetic"]"#);
    let k: DatasetKind = serde_json::from_str(r#""cifar10""#).unwrap();
    assert_eq!(k, DatasetKind::Cifar10);
}

#[test]
fn cifar_reads_many_files_sorted_numerically() {
    let raw = std::fs::read(cifar_file("data_batch_1.bin")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = cifar::RECORD_LEN;
    // 10 must come after 2 (numeric, not lexical order).
    write(dir.path(), "data_batch_10.bin", &raw[2500 * r..]);
    write(dir.path(), "data_batch_1.bin", &raw[..1000 * r]);
    write(dir.path(), "data_batch_2.bin", &raw[1000 * r..2500 * r]);
    write(
        dir.path(),
        "data_batch_x.bin",
        b"ignored: not a numbered batch",
    );
    link(dir.path(), &cifar_file("test_batch.bin"));
    let s = load_cifar10(dir.path()).unwrap();
    assert_eq!(s.train.images, cifar().train.images);
    assert_eq!(s.train.labels, cifar().train.labels);
    assert_eq!(s.test.labels, cifar().test.labels);
}

// ---------------------------------------------------------------- corruption

fn t10k_labels() -> Vec<u8> {
    read_decoded(&mnist_file(idx::TEST_LABELS)).unwrap()
}

#[test]
fn mnist_wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = t10k_labels();
    b[3] = 0x03; // 2049 -> 2051
    for p in both(dir.path(), "t10k-labels-idx1-ubyte", &b) {
        let e = read_labels(&p, 10).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::BadMagic {
                    expected: 2049,
                    found: 2051,
                    ..
                }
            ),
            "{e}"
        );
        assert!(names_file(&e, &p), "{e}");
        assert!(e.to_string().contains("expected"), "{e}");
    }
    // A labels file where an images file is expected.
    let p = write(dir.path(), "labels-as-images", &t10k_labels());
    let e = read_images(&p).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadMagic {
                expected: 2051,
                found: 2049,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn mnist_count_disagrees_with_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut more = t10k_labels();
    more[7] = more[7].wrapping_add(1); // header claims 10001 labels
    let mut trailing = t10k_labels();
    trailing.push(0);
    for (name, b, word) in [
        ("more", &more, "truncated"),
        ("trail", &trailing, "trailing"),
    ] {
        for p in both(dir.path(), name, b) {
            let e = read_labels(&p, 10).unwrap_err();
            assert!(matches!(e, DataError::LengthMismatch { .. }), "{e}");
            assert!(names_file(&e, &p) && e.to_string().contains(word), "{e}");
        }
    }
    // Images file cut short mid-image (raw and gzip).
    let img = read_decoded(&mnist_file(idx::TEST_IMAGES)).unwrap();
    for p in both(
        dir.path(),
        "t10k-images-idx3-ubyte",
        &img[..img.len() - 100],
    ) {
        let e = read_images(&p).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::LengthMismatch {
                    expected: 7_840_016,
                    found: 7_839_916,
                    ..
                }
            ),
            "{e}"
        );
        assert!(names_file(&e, &p), "{e}");
    }
    // Shorter than the header.
    let p = write(dir.path(), "tiny", &t10k_labels()[..6]);
    assert!(matches!(
        read_labels(&p, 10),
        Err(DataError::ShortHeader { .. })
    ));
}

#[test]
fn mnist_label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = t10k_labels();
    b[8 + 5] = 10;
    for p in both(dir.path(), "t10k-labels-idx1-ubyte", &b) {
        let e = read_labels(&p, 10).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::LabelOutOfRange {
                    index: 5,
                    label: 10,
                    ..
                }
            ),
            "{e}"
        );
        assert!(names_file(&e, &p), "{e}");
    }
}

#[test]
fn mnist_corrupt_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let gz = std::fs::read(mnist_file(idx::TEST_LABELS)).unwrap();
    let p = write(dir.path(), "t10k-labels-idx1-ubyte.gz", &gz[..gz.len() / 2]);
    let e = read_labels(&p, 10).unwrap_err();
    assert!(matches!(e, DataError::Gzip { .. }), "{e}");
    assert!(names_file(&e, &p), "{e}");
}

#[test]
fn mnist_missing_file_and_count_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    for stem in [idx::TRAIN_IMAGES, idx::TRAIN_LABELS, idx::TEST_IMAGES] {
        link(dir.path(), &mnist_file(stem));
    }
    let e = load_mnist(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("t10k-labels-idx1-ubyte"), "{e}");
    // Raw labels file with one label fewer than there are test images.
    let mut b = t10k_labels();
    b.pop();
    b[4..8].copy_from_slice(&9999u32.to_be_bytes());
    write(dir.path(), "t10k-labels-idx1-ubyte", &b);
    let e = load_mnist(dir.path()).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                images: 10_000,
                labels: 9_999,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("t10k-labels-idx1-ubyte"), "{e}");
    assert!(e.to_string().contains("t10k-images-idx3-ubyte"), "{e}");
}

#[test]
fn cifar_corruptions() {
    let test = std::fs::read(cifar_file("test_batch.bin")).unwrap();
    let train = std::fs::read(cifar_file("data_batch_1.bin")).unwrap();
    // Truncated last record, through the directory loader.
    let dir = tempfile::tempdir().unwrap();
    link(dir.path(), &cifar_file("data_batch_1.bin"));
    write(dir.path(), "test_batch.bin", &test[..test.len() - 10]);
    let e = load_cifar10(dir.path()).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::TruncatedRecord {
                record: 999,
                partial: 3063,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("test_batch.bin") && e.to_string().contains("record 999"),
        "{e}"
    );
    // Label 10 in record 3 of a training file.
    let dir = tempfile::tempdir().unwrap();
    let mut bad = train.clone();
    bad[3 * cifar::RECORD_LEN] = 10;
    write(dir.path(), "data_batch_1.bin", &bad);
    link(dir.path(), &cifar_file("test_batch.bin"));
    let e = load_cifar10(dir.path()).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                index: 3,
                label: 10,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("data_batch_1.bin"), "{e}");
    // No data_batch files.
    let dir = tempfile::tempdir().unwrap();
    link(dir.path(), &cifar_file("test_batch.bin"));
    let e = load_cifar10(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::NoDataBatches { .. }), "{e}");
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
    // Missing test file.
    let dir = tempfile::tempdir().unwrap();
    link(dir.path(), &cifar_file("data_batch_1.bin"));
    let e = load_cifar10(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("test_batch.bin"), "{e}");
}

// ---------------------------------------------------------------- sampler

fn flatten(perm: &[u32], ranges: impl Iterator<Item = std::ops::Range<u64>>) -> Vec<u32> {
    ranges
        .flat_map(|r| perm[r.start as usize..r.end as usize].to_vec())
        .collect()
}

fn assert_once(n: usize, seen: &[u32]) {
    let mut s = seen.to_vec();
    s.sort_unstable();
    assert_eq!(s, (0..n as u32).collect::<Vec<_>>());
}

#[test]
fn sampler_every_sample_once_per_epoch() {
    let n = 1000;
    let s = Sampler::new(n, 7);
    for b in [1, 7, 128, 333, 999, 1000, 1500] {
        let perm = s.permutation(3);
        let ranges: Vec<_> = s.batches(3, b, 0).collect();
        assert_eq!(ranges.len(), n.div_ceil(b));
        assert_eq!(ranges.len() as u64, s.updates_per_epoch(b).0);
        assert!(ranges.iter().all(|r| r.end - r.start <= b as u64));
        assert_once(n, &flatten(&perm, ranges.into_iter()));
        // Drop policy: only full batches.
        let d = s.with_last_batch(LastBatch::Drop);
        let full: Vec<_> = d.batches(3, b, 0).collect();
        assert_eq!(full.len(), n / b);
        assert_eq!(full.len() as u64, d.updates_per_epoch(b).0);
        assert!(full.iter().all(|r| r.end - r.start == b as u64));
    }
}

#[test]
fn sampler_reproducible_per_epoch() {
    let s = Sampler::new(500, 42);
    assert_eq!(s.permutation(5), s.permutation(5));
    assert_eq!(s.permutation(5), Sampler::new(500, 42).permutation(5));
    assert_ne!(s.permutation(5), s.permutation(6));
    assert_ne!(s.permutation(0), s.permutation(1));
    assert_ne!(s.permutation(5), Sampler::new(500, 43).permutation(5));
    assert_ne!(s.permutation(0), (0..500).collect::<Vec<u32>>());
}

#[test]
fn batch_size_change_and_resume_neither_repeat_nor_skip() {
    let n = 1037;
    let s = Sampler::new(n, 1);
    // Epoch 0 at B = 32, epoch 1 at B = 100: each covers every sample once.
    for (epoch, b) in [(0u32, 32usize), (1, 100)] {
        assert_once(n, &flatten(&s.permutation(epoch), s.batches(epoch, b, 0)));
    }
    // Interrupt epoch 2 after 5 batches of 64, checkpoint, resume (also at another size).
    let full = flatten(&s.permutation(2), s.batches(2, 64, 0));
    let mut pos = Position::start_of(2);
    let mut seen = Vec::new();
    let perm = s.permutation(2);
    for r in s.batches(pos.epoch, 64, pos.offset).take(5) {
        seen.extend_from_slice(&perm[r.start as usize..r.end as usize]);
        pos = pos.after(r.end, n as u64);
    }
    let json = serde_json::to_string(&pos).unwrap();
    let pos: Position = serde_json::from_str(&json).unwrap();
    assert_eq!(
        pos,
        Position {
            epoch: 2,
            offset: 320
        }
    );
    let mut resumed = seen.clone();
    let perm = Sampler::new(n, 1).permutation(pos.epoch); // a fresh process
    resumed.extend(flatten(&perm, s.batches(pos.epoch, 64, pos.offset)));
    assert_eq!(resumed, full);
    let mut other = seen.clone();
    other.extend(flatten(&perm, s.batches(pos.epoch, 100, pos.offset)));
    assert_eq!(
        other, full,
        "resuming at another batch size keeps the order"
    );
    // The last batch rolls the position into the next epoch.
    let last = s.batches(2, 64, 0).last().unwrap();
    assert_eq!(pos.after(last.end, n as u64), Position::start_of(3));
}

#[test]
fn shards_cover_each_batch_once() {
    for len in 0..20u64 {
        for world in 1..6 {
            let range = 100..100 + len;
            let parts: Vec<_> = (0..world)
                .map(|rank| {
                    let s = Shard {
                        rank,
                        world,
                        quantum: 1,
                    };
                    shard(range.clone(), s)
                })
                .collect();
            let mut next = range.start;
            for (r, p) in parts.iter().enumerate() {
                assert_eq!(p.start, next);
                let size = len / world as u64 + u64::from((r as u64) < len % world as u64);
                assert_eq!(p.end - p.start, size);
                next = p.end;
            }
            assert_eq!(next, range.end);
        }
    }
}

/// With a quantum (the ghost batch size), every shard starts on a multiple of it from the
/// batch's start, so ghost chunks are the same whatever the number of ranks; the last chunk
/// may be short and ranks past the data get empty shards.
#[test]
fn shards_keep_whole_chunks() {
    for len in 0..40u64 {
        for world in 1..5 {
            for quantum in [1usize, 3, 4, 8] {
                let range = 50..50 + len;
                let mut next = range.start;
                let mut sizes = Vec::new();
                for rank in 0..world {
                    let p = shard(
                        range.clone(),
                        Shard {
                            rank,
                            world,
                            quantum,
                        },
                    );
                    assert_eq!(p.start, next, "len {len} world {world} q {quantum}");
                    assert!(
                        p.is_empty() || (p.start - range.start).is_multiple_of(quantum as u64),
                        "shard {p:?} of {range:?} splits a chunk of {quantum}"
                    );
                    sizes.push((p.end - p.start).div_ceil(quantum as u64));
                    next = p.end;
                }
                assert_eq!(next, range.end);
                // Chunks near-equally dealt: counts differ by at most one, larger first.
                assert!(sizes.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
            }
        }
    }
    // 10 samples in chunks of 4 over 2 ranks: [0, 8) and [8, 10).
    let s = |rank| Shard {
        rank,
        world: 2,
        quantum: 4,
    };
    assert_eq!(shard(0..10, s(0)), 0..8);
    assert_eq!(shard(0..10, s(1)), 8..10);
}

// ---------------------------------------------------------------- augmentation

fn mirrored(src: &[u8], [c, h, w]: [usize; 3]) -> Vec<u8> {
    let mut out = vec![0; src.len()];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                out[(ch * h + y) * w + x] = src[(ch * h + y) * w + (w - 1 - x)];
            }
        }
    }
    out
}

#[test]
fn crop_flip_geometry() {
    let ds = &cifar().train;
    let shape = ds.image_shape();
    let src = ds.image(0);
    let mut out = vec![0; src.len()];
    let p = |dy, dx, flip| CropFlipParams { dy, dx, flip };
    crop_flip(src, shape, 0, p(0, 0, false), &mut out);
    assert_eq!(out, src);
    crop_flip(src, shape, 0, p(0, 0, true), &mut out);
    assert_eq!(out, mirrored(src, shape));
    crop_flip(src, shape, 4, p(4, 4, false), &mut out);
    assert_eq!(out, src, "centre crop of the padded image is the image");
    // Shift down-right by 4: top rows and left columns are padding.
    crop_flip(src, shape, 4, p(0, 0, false), &mut out);
    for ch in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                let o = out[(ch * 32 + y) * 32 + x];
                let want = if y < 4 || x < 4 {
                    0
                } else {
                    src[(ch * 32 + y - 4) * 32 + x - 4]
                };
                assert_eq!(o, want);
            }
        }
    }
    // Any crop/flip: non-zero values form a sub-multiset of the source's.
    for i in 0..50u64 {
        let q = CropFlipParams::draw(4, 9, 1, i);
        crop_flip(src, shape, 4, q, &mut out);
        let mut hist = [0i64; 256];
        src.iter().for_each(|&v| hist[v as usize] += 1);
        out.iter().for_each(|&v| hist[v as usize] -= 1);
        assert!(hist[1..].iter().all(|&h| h >= 0));
        // Pixels that come from outside the image are zero.
        let keep = (32 - q.dy.abs_diff(4)) * (32 - q.dx.abs_diff(4));
        assert!(out.iter().filter(|&&v| v != 0).count() <= 3 * keep);
    }
}

#[test]
fn augmentation_deterministic_and_varied() {
    let a = Augment::CropFlip { pad: 4 };
    let ds = &cifar().train;
    let shape = ds.image_shape();
    let run = |seed, epoch, i: u64| {
        let mut out = vec![0; ds.image_len()];
        a.apply(ds.image(i as usize), shape, seed, epoch, i, &mut out);
        out
    };
    assert_eq!(run(1, 2, 3), run(1, 2, 3));
    let params: Vec<_> = (0..2000)
        .map(|i| CropFlipParams::draw(4, 1, 0, i))
        .collect();
    let flips = params.iter().filter(|p| p.flip).count();
    assert!((850..1150).contains(&flips), "{flips}");
    assert!(params.iter().all(|p| p.dy <= 8 && p.dx <= 8));
    assert!(params.iter().any(|p| p.dy == 0) && params.iter().any(|p| p.dx == 8));
    assert_ne!(
        (0..20)
            .map(|i| CropFlipParams::draw(4, 1, 0, i))
            .collect::<Vec<_>>(),
        (0..20)
            .map(|i| CropFlipParams::draw(4, 1, 1, i))
            .collect::<Vec<_>>()
    );
    let mut out = vec![0; ds.image_len()];
    Augment::None.apply(ds.image(5), shape, 1, 2, 5, &mut out);
    assert_eq!(out, ds.image(5));
    let n = Normalizer::from_dataset(ds);
    let b = assemble(ds, &[0, 5, 7], &n, a, 1, 2);
    assert_eq!(b.shape, [3, 3, 32, 32]);
    assert_eq!(b.images.len(), 3 * 3 * 32 * 32);
    assert_eq!(b.labels, [ds.labels[0], ds.labels[5], ds.labels[7]]);
}

// ---------------------------------------------------------------- normaliser

#[test]
fn normalised_train_set_has_zero_mean_unit_std() {
    let ds = &cifar().train;
    let n = Normalizer::from_dataset(ds);
    let all: Vec<u32> = (0..ds.len() as u32).collect();
    let b = assemble(ds, &all, &n, Augment::None, 0, 0);
    let plane = 32 * 32;
    for c in 0..3 {
        let vals: Vec<f64> = b
            .images
            .chunks_exact(3 * plane)
            .flat_map(|img| img[c * plane..(c + 1) * plane].iter().map(|&v| v as f64))
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let s = (vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / vals.len() as f64).sqrt();
        assert!(m.abs() < 1e-4, "channel {c} mean {m}");
        assert!((s - 1.0).abs() < 1e-4, "channel {c} std {s}");
    }
    // Per-image `apply` agrees with batch assembly.
    let mut out = vec![0f32; ds.image_len()];
    n.apply(ds.image(9), &mut out);
    assert_eq!(out, b.images[9 * 3 * plane..10 * 3 * plane]);
    let id = Normalizer::identity(3);
    assert_eq!(id.table(0)[255], 1.0);
}

// ---------------------------------------------------------------- loader

fn sequential(
    loader: &Loader,
    epoch: u32,
    b: usize,
    offset: u64,
    n: &Normalizer,
    aug: Augment,
) -> Vec<Batch> {
    let s = loader.sampler();
    let perm = s.permutation(epoch);
    s.batches(epoch, b, offset)
        .map(|r| {
            let idx = &perm[r.start as usize..r.end as usize];
            let mut bt = assemble(loader.dataset(), idx, n, aug, s.seed, epoch);
            (bt.start, bt.end) = (r.start, r.end);
            bt
        })
        .collect()
}

#[test]
fn loader_matches_sequential_assembly() {
    let ds = Arc::new(cifar().train.clone());
    let n = Normalizer::from_dataset(&ds);
    let aug = Augment::CropFlip { pad: 4 };
    let loader = Loader::new(ds.clone(), n.clone(), aug, 11, 3, 4);
    let inline = Loader::new(ds.clone(), n.clone(), aug, 11, 0, 4);
    for (epoch, b) in [(0u32, 128usize), (1, 300)] {
        let want = sequential(&loader, epoch, b, 0, &n, aug);
        let it = loader.epoch(epoch, b, 0, None);
        assert_eq!(it.len(), 4000usize.div_ceil(b));
        let got: Vec<Batch> = it.collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (g.start, g.end, g.epoch, g.shape),
                (w.start, w.end, w.epoch, w.shape)
            );
            assert_eq!(g.labels, w.labels);
            assert!(
                g.images
                    .iter()
                    .zip(&w.images)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
        assert_eq!(inline.epoch(epoch, b, 0, None).collect::<Vec<_>>(), want);
        assert_eq!(
            got.last().unwrap().position_after(4000),
            Position::start_of(epoch + 1)
        );
    }
    // Resume mid-epoch.
    let want = sequential(&loader, 1, 300, 0, &n, aug);
    let got: Vec<Batch> = loader.epoch(1, 300, 1200, None).collect();
    assert_eq!(got, want[4..]);
}

#[test]
fn loader_shards_partition_global_batches() {
    let ds = Arc::new(synthetic(103, 0, 4, 1, 4, 4, 5).train);
    let n = Normalizer::from_dataset(&ds);
    let loader = Loader::new(ds, n, Augment::None, 3, 2, 2);
    let whole: Vec<Batch> = loader.epoch(0, 10, 0, None).collect();
    let world = 3;
    let ranks: Vec<Vec<Batch>> = (0..world)
        .map(|rank| {
            let s = Shard {
                rank,
                world,
                quantum: 1,
            };
            loader.epoch(0, 10, 0, Some(s)).collect()
        })
        .collect();
    for (i, w) in whole.iter().enumerate() {
        let mut labels = Vec::new();
        let mut images = Vec::new();
        for r in &ranks {
            assert_eq!((r[i].start, r[i].end), (w.start, w.end));
            labels.extend_from_slice(&r[i].labels);
            images.extend_from_slice(&r[i].images);
        }
        assert_eq!(labels, w.labels);
        assert_eq!(images, w.images);
    }
}

#[test]
fn loader_stops_cleanly_when_dropped() {
    let ds = Arc::new(cifar().train.clone());
    let n = Normalizer::from_dataset(&ds);
    let loader = Loader::new(ds, n, Augment::CropFlip { pad: 4 }, 0, 2, 2);
    for take in [0, 1, 3] {
        let mut it = loader.epoch(0, 64, 0, None);
        for _ in 0..take {
            assert!(it.next().is_some());
        }
        drop(it); // must not hang or panic
    }
    // Still usable afterwards, at a new batch size.
    assert_eq!(loader.epoch(1, 1000, 0, None).count(), 4);
}

#[test]
fn eval_batches_in_order() {
    let ds = &cifar().test;
    let n = Normalizer::from_dataset(&cifar().train);
    let batches: Vec<Batch> = eval_batches(ds, &n, 300).collect();
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [300, 300, 300, 100]
    );
    let labels: Vec<u8> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(labels, ds.labels);
    assert_eq!((batches[3].start, batches[3].end), (900, 1000));
    let mut out = vec![0f32; ds.image_len()];
    n.apply(ds.image(301), &mut out);
    assert_eq!(out, batches[1].images[ds.image_len()..2 * ds.image_len()]);
}

// ---------------------------------------------------------------- synthetic

#[test]
fn synthetic_is_deterministic_and_separable() {
    let a = synthetic(400, 100, 5, 2, 6, 6, 9);
    assert_eq!(a, synthetic(400, 100, 5, 2, 6, 6, 9));
    assert_ne!(
        a.train.images,
        synthetic(400, 100, 5, 2, 6, 6, 10).train.images
    );
    assert_eq!(a.train.class_counts(), [80; 5]);
    assert_eq!(a.test.image_shape(), [2, 6, 6]);
    // Nearest class mean classifies every test image correctly.
    let l = a.train.image_len();
    let mut means = vec![vec![0f64; l]; 5];
    for i in 0..a.train.len() {
        let c = a.train.labels[i] as usize;
        for (m, &p) in means[c].iter_mut().zip(a.train.image(i)) {
            *m += p as f64 / 80.0;
        }
    }
    for i in 0..a.test.len() {
        let img = a.test.image(i);
        let dist = |m: &Vec<f64>| {
            m.iter()
                .zip(img)
                .map(|(a, &b)| (a - b as f64).powi(2))
                .sum::<f64>()
        };
        let best = (0..5)
            .min_by(|&x, &y| dist(&means[x]).total_cmp(&dist(&means[y])))
            .unwrap();
        assert_eq!(best, a.test.labels[i] as usize);
    }
    let d = load(DatasetKind::Synthetic, Path::new("/nonexistent")).unwrap();
    assert_eq!(
        (d.train.len(), d.train.image_shape()),
        (synthetic::DEFAULT_TRAIN, [3, 32, 32])
    );
}
