//! CIFAR-10 binary format: records of 3073 bytes (label, then 1024 red, 1024 green, 1024
//! blue bytes, each plane row-major 32×32). Training data is every `data_batch_<n>.bin` in
//! the directory, in increasing `n`; test data is `test_batch.bin`.

use std::path::{Path, PathBuf};

use super::idx::{check_labels, io_error, read_file as read_bytes};
use super::{DataError, Dataset, Split};
use crate::units::Samples;

/// Image side of CIFAR-10.
pub const SIDE: usize = 32;
/// Channels of CIFAR-10.
pub const CHANNELS: usize = 3;
/// Bytes per record: one label byte plus `3·32·32` pixels.
pub const RECORD_LEN: usize = 1 + CHANNELS * SIDE * SIDE;
/// Number of CIFAR-10 classes.
pub const CLASSES: usize = 10;
/// Training-set size of the published CIFAR-10 (Krizhevsky 2009), the paper's main benchmark
/// (Smith et al. 2018, section 5).
pub const TRAIN_SAMPLES: Samples = Samples(50_000);
/// Name of the test file.
pub const TEST_FILE: &str = "test_batch.bin";
/// Class names in label order.
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The `data_batch_<n>.bin` files of `dir`, sorted by `n` (numerically, so 10 follows 9).
pub fn data_batch_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name
            .strip_prefix("data_batch_")
            .and_then(|r| r.strip_suffix(".bin"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((num, entry.path()));
    }
    files.sort();
    Ok(files)
}

/// Parses CIFAR-10 records into `(pixels CHW, labels)` (`path` is used in errors only).
pub fn parse_records(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    if !bytes.len().is_multiple_of(RECORD_LEN) {
        return Err(DataError::TruncatedRecord {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            record_len: RECORD_LEN as u64,
            record: (bytes.len() / RECORD_LEN) as u64,
            partial: (bytes.len() % RECORD_LEN) as u64,
        });
    }
    let n = bytes.len() / RECORD_LEN;
    let mut images = Vec::with_capacity(n * (RECORD_LEN - 1));
    let mut labels = Vec::with_capacity(n);
    for rec in bytes.chunks_exact(RECORD_LEN) {
        labels.push(rec[0]);
        images.extend_from_slice(&rec[1..]);
    }
    check_labels(path, &labels, CLASSES)?;
    Ok((images, labels))
}

/// Reads one CIFAR-10 binary file.
pub fn read_file(path: &Path) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let bytes = read_bytes(path, "a CIFAR-10 batch file")?;
    parse_records(path, &bytes)
}

/// The number of training records in `dir`, from the sizes of its `data_batch_<n>.bin` files
/// (each a whole number of records, as [`parse_records`] requires).
pub fn train_count(dir: &Path) -> Result<Samples, DataError> {
    let files = data_batch_files(dir)?;
    if files.is_empty() {
        return Err(DataError::NoDataBatches {
            dir: dir.to_path_buf(),
        });
    }
    let mut records = 0;
    for (_, path) in &files {
        let len = std::fs::metadata(path)
            .map_err(|e| io_error(path, e))?
            .len();
        if !len.is_multiple_of(RECORD_LEN as u64) {
            return Err(DataError::TruncatedRecord {
                path: path.clone(),
                len,
                record_len: RECORD_LEN as u64,
                record: len / RECORD_LEN as u64,
                partial: len % RECORD_LEN as u64,
            });
        }
        records += len / RECORD_LEN as u64;
    }
    Ok(Samples(records))
}

/// Loads CIFAR-10 (any number of `data_batch_*.bin` files of any number of records).
pub fn load_cifar10(dir: &Path) -> Result<Split, DataError> {
    load_cifar10_with(dir, &mut |_, _| {})
}

/// Like [`load_cifar10`], calling `on_file(path, bytes)` for each file read.
pub fn load_cifar10_with(
    dir: &Path,
    on_file: &mut dyn FnMut(&Path, &[u8]),
) -> Result<Split, DataError> {
    let files = data_batch_files(dir)?;
    if files.is_empty() {
        return Err(DataError::NoDataBatches {
            dir: dir.to_path_buf(),
        });
    }
    let test_path = dir.join(TEST_FILE);
    if !test_path.exists() {
        return Err(DataError::Missing {
            path: test_path,
            what: "CIFAR-10 test file not found".into(),
        });
    }
    let mut train = dataset(Vec::new(), Vec::new(), "cifar10-train");
    for (_, path) in &files {
        let bytes = read_bytes(path, "a CIFAR-10 batch file")?;
        on_file(path, &bytes);
        let (img, lab) = parse_records(path, &bytes)?;
        train.images.extend_from_slice(&img);
        train.labels.extend_from_slice(&lab);
    }
    let bytes = read_bytes(&test_path, "the CIFAR-10 test file")?;
    on_file(&test_path, &bytes);
    let (img, lab) = parse_records(&test_path, &bytes)?;
    if train.labels.is_empty() {
        return Err(DataError::NoSamples {
            path: dir.to_path_buf(),
            what: "its data_batch_*.bin files are empty; training needs at least one record".into(),
        });
    }
    if lab.is_empty() {
        return Err(DataError::NoSamples {
            path: test_path,
            what: "the CIFAR-10 test file is empty; evaluation needs at least one record".into(),
        });
    }
    Ok(Split {
        train,
        test: dataset(img, lab, "cifar10-test"),
    })
}

fn dataset(images: Vec<u8>, labels: Vec<u8>, name: &str) -> Dataset {
    Dataset {
        images,
        labels,
        channels: CHANNELS,
        height: SIDE,
        width: SIDE,
        num_classes: CLASSES,
        name: name.into(),
    }
}

#[cfg(test)]
mod tests {
    use crate::data::test_util::{cifar, cifar_file, link, write};
    use crate::data::*;

    // ---------------------------------------------------------------- real data

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
        // The count from file sizes is the loader's, over all three files.
        assert_eq!(
            train_size(DatasetKind::Cifar10, dir.path()).unwrap().0,
            4_000
        );
        assert_eq!(s.train.images, cifar().train.images);
        assert_eq!(s.train.labels, cifar().train.labels);
        assert_eq!(s.test.labels, cifar().test.labels);
    }

    // ---------------------------------------------------------------- corruption

    #[test]
    fn cifar_count_refuses_a_partial_record_and_an_empty_dir() {
        let raw = std::fs::read(cifar_file("data_batch_1.bin")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = train_size(DatasetKind::Cifar10, dir.path()).unwrap_err();
        assert!(matches!(e, DataError::NoDataBatches { .. }), "{e}");
        write(
            dir.path(),
            "data_batch_1.bin",
            &raw[..2 * cifar::RECORD_LEN + 7],
        );
        let e = train_size(DatasetKind::Cifar10, dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::TruncatedRecord {
                    record: 2,
                    partial: 7,
                    ..
                }
            ),
            "{e}"
        );
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
        // An empty test file: no accuracy to report (it used to give NaN and exit 0).
        let dir = tempfile::tempdir().unwrap();
        link(dir.path(), &cifar_file("data_batch_1.bin"));
        write(dir.path(), "test_batch.bin", &[]);
        let e = load_cifar10(dir.path()).unwrap_err();
        assert!(matches!(e, DataError::NoSamples { .. }), "{e}");
        assert!(
            e.to_string().contains("test_batch.bin") && e.to_string().contains("no samples"),
            "{e}"
        );
        // Empty training files.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "data_batch_1.bin", &[]);
        link(dir.path(), &cifar_file("test_batch.bin"));
        let e = load_cifar10(dir.path()).unwrap_err();
        assert!(matches!(e, DataError::NoSamples { .. }), "{e}");
        assert!(e.to_string().contains("data_batch_*.bin"), "{e}");
    }
}
