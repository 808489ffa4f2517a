//! Image folders (`data.dataset = "image-folder"`): classes in sorted order, PNG pixels equal to
//! PIL's, JPEG within ±2 of PIL's (`tests/fixtures/make_image_folder.py`), RGBA to RGB, grey as
//! one channel, a seeded held-out part without `test/`, resizing, and named errors for images of
//! different sizes, a corrupt file and a folder without classes; `data inspect` and `train`.

use crate::common::{BIN, succeed, write};
use noisescale::data::folder::{self, FolderOptions, Resize};
use noisescale::data::{DataError, Dataset};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/folder")
}

fn load(set: &str, opts: FolderOptions) -> Result<noisescale::data::Split, DataError> {
    folder::load_with(&fixtures().join(set), &opts, &mut |_, _| {})
}

/// The largest and the mean absolute difference of image `i` of `ds` from what PIL decoded
/// from `file`.
fn differences(ds: &Dataset, i: usize, file: &str) -> (i32, f64) {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want: Vec<i32> = v[file]["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect();
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let img = ds.image(i);
    let mut d = Vec::new();
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                d.push((img[ch * h * w + y * w + x] as i32 - want[(y * w + x) * c + ch]).abs());
            }
        }
    }
    let max = d.iter().copied().max().unwrap_or(0);
    (max, d.iter().sum::<i32>() as f64 / d.len() as f64)
}

/// Checks image `i` of `ds` against what PIL decoded from `file`, within `tolerance`.
fn assert_pixels(ds: &Dataset, i: usize, file: &str, tolerance: i32) {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want: Vec<i32> = v[file]["pixels"]
        .as_array()
        .unwrap_or_else(|| panic!("{file} in expected.json"))
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect();
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let img = ds.image(i);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                // Ours CHW, PIL's HWC.
                let (got, exp) = (
                    img[ch * h * w + y * w + x] as i32,
                    want[(y * w + x) * c + ch],
                );
                assert!(
                    (got - exp).abs() <= tolerance,
                    "{file} at ({x}, {y}) channel {ch}: {got} vs PIL's {exp}"
                );
            }
        }
    }
}

#[test]
fn an_image_folder_reads_as_pil_decodes_it() {
    let s = load("sized", FolderOptions::default()).unwrap();
    // cat before dog; files in name order; notes.txt skipped.
    assert_eq!(s.train.labels, [0, 0, 1, 1]);
    assert_eq!(s.test.labels, [0, 1]);
    assert_eq!((s.train.channels, s.train.height, s.train.width), (3, 5, 6));
    assert_eq!(s.train.num_classes, 2);
    assert_pixels(&s.train, 0, "sized/train/cat/a.png", 0);
    // JPEG with full-resolution colour (4:4:4): the inverse DCTs differ by rounding only.
    assert_pixels(&s.train, 1, "sized/train/cat/b.jpg", 2);
    assert_pixels(&s.train, 2, "sized/train/dog/c.png", 0);
    // RGBA: alpha dropped, as PIL's convert("RGB").
    assert_pixels(&s.train, 3, "sized/train/dog/d.png", 0);
    // 4:2:0 (PIL's default): the image crate's chroma upsampling differs from libjpeg's at
    // colour edges and borders (16 at most on this 6x5 pattern, 0.79 on average).
    let (max, mean) = differences(&s.test, 1, "sized/test/dog/f.jpg");
    assert!(
        max <= 16 && mean <= 1.0,
        "4:2:0 JPEG: max {max}, mean {mean:.2}"
    );

    let grey = load(
        "grey",
        FolderOptions {
            validation_fraction: 0.4,
            seed: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(grey.train.channels, 1);
    assert_eq!((grey.train.len(), grey.test.len()), (3, 2));
    assert_eq!(grey.train.num_classes, 2);
}

#[test]
fn the_held_out_part_follows_the_seed_and_partitions_train() {
    let split = |seed| {
        let s = load(
            "grey",
            FolderOptions {
                validation_fraction: 0.4,
                seed,
                ..Default::default()
            },
        )
        .unwrap();
        let rows = |d: &Dataset| {
            (0..d.len())
                .map(|i| d.image(i).to_vec())
                .collect::<Vec<_>>()
        };
        (rows(&s.train), rows(&s.test))
    };
    let (a_train, a_test) = split(3);
    assert_eq!(
        split(3),
        (a_train.clone(), a_test.clone()),
        "same seed, same split"
    );
    let mut all: Vec<_> = a_train.iter().chain(&a_test).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5, "every image once");
    let differs = (0..20).any(|s| split(s).1 != a_test);
    assert!(differs, "the held-out part never changed with the seed");
    let err = load("grey", FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no test/ folder") && err.contains("validation_fraction"),
        "{err}"
    );
}

#[test]
fn images_of_other_sizes_are_resized_as_configured_or_named() {
    let err = load("mixed", FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("small.png") && err.contains("data.image_size"),
        "{err}"
    );
    for resize in [Resize::Stretch, Resize::CenterCrop] {
        let s = load(
            "mixed",
            FolderOptions {
                image_size: Some([4, 4]),
                resize,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((s.train.height, s.train.width, s.test.height), (4, 4, 4));
    }
    // small.png is 4x4 already: left as it is.
    let s = load(
        "mixed",
        FolderOptions {
            image_size: Some([4, 4]),
            ..Default::default()
        },
    )
    .unwrap();
    assert_pixels(&s.train, 1, "mixed/train/b/small.png", 0);
    let err = load("bad", FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.png") && err.contains("decode"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("train")).unwrap();
    std::fs::write(tmp.path().join("train/a.png"), b"loose").unwrap();
    let err = folder::load_with(tmp.path(), &FolderOptions::default(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("no class folders"), "{err}");
}

#[test]
fn data_inspect_and_train_read_an_image_folder() {
    let out = succeed({
        let mut c = Command::new(BIN);
        c.args(["data", "inspect", "--json"])
            .arg(fixtures().join("sized"));
        c
    });
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &report["datasets"][0];
    assert_eq!(d["kind"], "image-folder");
    assert_eq!(d["splits"][0]["count"], 4);
    assert_eq!(d["splits"][0]["shape"], serde_json::json!([3, 5, 6]));
    assert_eq!(d["files"].as_array().unwrap().len(), 6);

    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[data]
format = "image-folder"
dir = "{}"
image_size = [4, 4]
validation_fraction = 0.4
augment = {{ crop-flip = {{ pad = 1 }} }}
[model]
kind = "mlp"
widths = [8]
[schedule]
epochs = 2
lr = 0.05
batch_size = 2
"#,
        fixtures().join("grey").display()
    );
    let file = write(tmp.path(), "folder.toml", &config);
    let out = tmp.path().join("run");
    succeed({
        let mut c = Command::new(BIN);
        c.args(["train", "-q"]).arg(&file).arg("--out").arg(&out);
        c
    });
    let m = noisescale::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap();
    // 3 training images after holding out 2: 2 updates of B = 2 per epoch.
    assert_eq!(m[1].updates.0, 4);
}
