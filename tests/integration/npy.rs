//! NumPy data (`data.dataset = "npy"` and `noisescale::data::npy`): the arrays NumPy wrote
//! (`tests/fixtures/make_npy.py`) read back value for value, `.npy` and `.npz` (stored and
//! deflated), every dtype and format version NumPy writes for them; named errors for Fortran
//! order, big-endian data, a shape larger than the file, an unread dtype and class targets that
//! are not one per row; our writer's bytes equal NumPy's; `data inspect` and `train` on them.

use crate::common::{BIN, succeed, write};
use noisescale::data::npy::{self, Values};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/npy")
}

fn expected(set: &str, array: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[set][array]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn as_f64(v: &Values) -> Vec<f64> {
    (0..v.len()).map(|i| f64::from(v.get_f32(i))).collect()
}

#[test]
fn numpy_arrays_read_back_value_for_value() {
    let images = npy::load(&fixtures().join("images")).unwrap();
    assert_eq!(images.train.x.shape, [6, 1, 4, 4]);
    assert!(matches!(images.train.x.values, Values::U8(_)));
    assert_eq!(
        as_f64(&images.train.x.values),
        expected("images", "train_x")
    );
    assert_eq!(
        as_f64(&images.train.y.values),
        expected("images", "train_y")
    );
    // int32 labels widen to i64.
    assert!(matches!(images.test.y.values, Values::I64(_)));
    assert_eq!(as_f64(&images.test.x.values), expected("images", "test_x"));
    assert_eq!(as_f64(&images.test.y.values), expected("images", "test_y"));

    // float64 (format 2.0) rounds to f32; a deflated .npz (savez_compressed).
    let reg = npy::load(&fixtures().join("regression")).unwrap();
    assert_eq!(reg.train.x.shape, [5, 3]);
    for (name, got) in [
        ("train_x", &reg.train.x),
        ("train_y", &reg.train.y),
        ("test_x", &reg.test.x),
        ("test_y", &reg.test.y),
    ] {
        let want: Vec<f64> = expected("regression", name)
            .iter()
            .map(|&v| f64::from(v as f32))
            .collect();
        assert_eq!(as_f64(&got.values), want, "{name}");
    }
    assert!(!reg.train.classes());
    assert!(reg.train.classification().is_err());
    assert_eq!(noisescale::data::TrainSet::len(&reg.train.regression()), 5);
}

#[test]
fn our_npy_writer_writes_the_bytes_numpy_writes() {
    let numpy = fixtures().join("regression/train_y.npy");
    let a = npy::read_npy(&numpy, &mut |_, _| {}).unwrap();
    let Values::F32(v) = &a.values else {
        panic!("float32")
    };
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("y.npy");
    npy::write_f32(&ours, &a.shape, v).unwrap();
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&numpy).unwrap()
    );
}

#[test]
fn arrays_noisescale_cannot_read_are_named_errors() {
    let bad = fixtures().join("bad");
    for (file, words) in [
        ("fortran.npy", "Fortran order"),
        ("bigendian.npy", "big-endian"),
        ("truncated.npy", "needs 48 bytes of data, the file holds 40"),
        ("bool.npy", "not one noisescale reads"),
    ] {
        let err = npy::read_npy(&bad.join(file), &mut |_, _| {}).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(file) && msg.contains(words), "{file}: {msg}");
    }
    let err = npy::load(&bad.join("3d_labels")).unwrap_err().to_string();
    assert!(err.contains("one per row"), "{err}");
    let err = npy::load(&bad).unwrap_err().to_string();
    assert!(err.contains("train_x.npy"), "{err}");
}

#[test]
fn data_inspect_reports_a_numpy_data_set() {
    let out = succeed({
        let mut c = Command::new(BIN);
        c.args(["data", "inspect", "--json"])
            .arg(fixtures().join("images"));
        c
    });
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &report["datasets"][0];
    assert_eq!(d["kind"], "npy");
    assert_eq!(d["splits"][0]["count"], 6);
    assert_eq!(d["splits"][0]["class_counts"], serde_json::json!([2, 2, 2]));
    assert_eq!(d["splits"][0]["shape"], serde_json::json!([1, 4, 4]));
    assert_eq!(d["splits"][1]["count"], 3);
    // One digest per array: both members of train.npz, then the two test files.
    assert_eq!(d["files"].as_array().unwrap().len(), 4);
    let out = succeed({
        let mut c = Command::new(BIN);
        c.args(["data", "inspect"])
            .arg(fixtures().join("regression"));
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("regression targets: 2 per sample"), "{text}");
}

#[test]
fn the_cli_trains_a_builtin_model_on_numpy_images() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[data]
format = "npy"
dir = "{}"
[model]
kind = "cnn"
hidden = 8
[schedule]
kind = "increase-batch"
epochs = 2
lr = 0.05
batch_size = 2
factor = 3.0
milestones = [1]
"#,
        fixtures().join("images").display()
    );
    let file = write(tmp.path(), "npy.toml", &config);
    let out = tmp.path().join("run");
    succeed({
        let mut c = Command::new(BIN);
        c.args(["train", "-q"]).arg(&file).arg("--out").arg(&out);
        c
    });
    let m = noisescale::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap();
    // N = 6: 3 updates of B = 2, then 1 of B = 6.
    assert_eq!((m[0].updates.0, m[1].updates.0), (3, 4));
    assert!(m[1].test_accuracy.is_finite());
    // Float features are the library's: a named error, not a crash.
    let reg = write(
        tmp.path(),
        "reg.toml",
        &config.replace("images", "regression"),
    );
    let o = Command::new(BIN)
        .args(["train", "-q"])
        .arg(&reg)
        .arg("--out")
        .arg(tmp.path().join("reg"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("features are float32") && err.contains("library"),
        "{err}"
    );
}

#[test]
fn a_forged_npz_member_size_is_refused_before_anything_is_allocated_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = std::fs::read(fixtures().join("images/train.npz")).unwrap();
    let n = b.len();
    // The first central-directory entry's uncompressed size (what the reader trusts) at 4 GiB.
    let cd = u32::from_le_bytes(b[n - 6..n - 2].try_into().unwrap()) as usize;
    assert_eq!(&b[cd..cd + 4], b"PK\x01\x02");
    b[cd + 24..cd + 28].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let path = tmp.path().join("train.npz");
    std::fs::write(&path, b).unwrap();
    let err = npy::read_npz_member(&path, "x", &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("claims 4294967280 bytes from 224 compressed"),
        "{err}"
    );
    // The member the forgery did not touch still reads.
    assert!(npy::read_npz_member(&path, "y", &mut |_, _| {}).is_ok());
}
