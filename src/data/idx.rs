//! MNIST in IDX format: big-endian header, then `u8` data; gzip-compressed or raw (detected
//! by the gzip magic bytes `1f 8b`, not by the file name).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Split};
use crate::units::Samples;

/// IDX magic number of a rank-3 `u8` tensor (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic number of a rank-1 `u8` tensor (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Base name of the MNIST training images (without `.gz`).
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// Base name of the MNIST training labels (without `.gz`).
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// Base name of the MNIST test images (without `.gz`).
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// Base name of the MNIST test labels (without `.gz`).
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
/// Number of MNIST classes.
pub const MNIST_CLASSES: usize = 10;
/// Training-set size of the published MNIST (LeCun et al. 1998).
pub const MNIST_TRAIN_SAMPLES: Samples = Samples(60_000);

/// The images of one IDX images file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images, the header's first dimension.
    pub count: usize,
    /// Rows (height) of each image.
    pub rows: usize,
    /// Columns (width) of each image.
    pub cols: usize,
    /// `count × rows × cols` pixels, row-major.
    pub pixels: Vec<u8>,
}

/// Largest decoded IDX file accepted (2 GiB; MNIST's largest is 47 MB, EMNIST's 550 MB): a
/// gzip stream that inflates past it is refused rather than filling memory.
pub const MAX_DECODED: u64 = 2 << 30;

/// Reads a whole file, decompressing it if it starts with the gzip magic bytes.
pub fn read_decoded(path: &Path) -> Result<Vec<u8>, DataError> {
    decode(path, read_file(path, "an IDX file")?)
}

/// Decompresses `raw` if it starts with the gzip magic bytes (up to [`MAX_DECODED`] bytes),
/// else returns it as it is (`path` is used in errors only).
pub fn decode(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    decode_limited(path, raw, MAX_DECODED)
}

/// [`decode`] with another size limit.
pub fn decode_limited(path: &Path, raw: Vec<u8>, limit: u64) -> Result<Vec<u8>, DataError> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity((raw.len().saturating_mul(4)).min(limit as usize));
    flate2::read::MultiGzDecoder::new(&raw[..])
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|error| DataError::Gzip {
            path: path.to_path_buf(),
            error,
        })?;
    if out.len() as u64 > limit {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            header: header_summary(&out),
            limit,
        });
    }
    Ok(out)
}

fn header_summary(bytes: &[u8]) -> String {
    match (bytes.len() >= 16, bytes.len() >= 8) {
        (true, _) if be_u32(bytes, 0) == IMAGES_MAGIC => format!(
            "{} images of {}x{}",
            be_u32(bytes, 4),
            be_u32(bytes, 8),
            be_u32(bytes, 12)
        ),
        (_, true) if be_u32(bytes, 0) == LABELS_MAGIC => format!("{} labels", be_u32(bytes, 4)),
        _ => "not an IDX header".into(),
    }
}

/// Reads a whole file; `what` says which file was expected there (for a directory in its
/// place).
pub(crate) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, DataError> {
    if let Ok(m) = std::fs::metadata(path)
        && !m.is_file()
    {
        return Err(DataError::NotAFile {
            path: path.to_path_buf(),
            kind: if m.is_dir() {
                "a directory".into()
            } else {
                "not a regular file".into()
            },
            what: format!("expected {what}"),
        });
    }
    std::fs::read(path).map_err(|e| io_error(path, e))
}

/// Maps an I/O error to [`DataError::Missing`] (not found) or [`DataError::Io`].
pub(crate) fn io_error(path: &Path, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DataError::Missing {
            path: path.to_path_buf(),
            what: "file not found".into(),
        }
    } else {
        DataError::Io {
            path: path.to_path_buf(),
            error: e,
        }
    }
}

/// `dir/stem.gz` if it exists, else `dir/stem` if it exists (a directory of that name counts,
/// so that reading it reports a directory where the file should be, not a missing file).
pub fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
}

fn locate(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    find_file(dir, stem).ok_or_else(|| DataError::Missing {
        path: dir.join(format!("{stem}.gz")),
        what: format!("neither {stem}.gz nor {stem} exists"),
    })
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn check_header(path: &Path, bytes: &[u8], len: usize, magic: u32) -> Result<(), DataError> {
    // Check the magic on whatever is there first, so a wrong file type is reported as such.
    if bytes.len() >= 4 && be_u32(bytes, 0) != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: magic,
            found: be_u32(bytes, 0),
        });
    }
    if bytes.len() < len {
        return Err(DataError::ShortHeader {
            path: path.to_path_buf(),
            needed: len,
            found: bytes.len(),
        });
    }
    Ok(())
}

fn check_len(path: &Path, bytes: &[u8], expected: u128, header: String) -> Result<(), DataError> {
    if bytes.len() as u128 != expected {
        return Err(DataError::LengthMismatch {
            path: path.to_path_buf(),
            header,
            expected: expected.min(u64::MAX as u128) as u64,
            found: bytes.len() as u64,
        });
    }
    Ok(())
}

/// Parses decoded IDX images bytes (`path` is used in errors only).
pub fn parse_images(path: &Path, mut bytes: Vec<u8>) -> Result<IdxImages, DataError> {
    check_header(path, &bytes, 16, IMAGES_MAGIC)?;
    let (count, rows, cols) = (be_u32(&bytes, 4), be_u32(&bytes, 8), be_u32(&bytes, 12));
    if rows == 0 || cols == 0 {
        return Err(DataError::BadDimensions {
            path: path.to_path_buf(),
            header: format!("{count} images of {rows}x{cols}"),
        });
    }
    let expected = 16 + count as u128 * rows as u128 * cols as u128;
    check_len(
        path,
        &bytes,
        expected,
        format!("{count} images of {rows}x{cols}"),
    )?;
    bytes.drain(..16);
    Ok(IdxImages {
        count: count as usize,
        rows: rows as usize,
        cols: cols as usize,
        pixels: bytes,
    })
}

/// Parses decoded IDX labels bytes, checking each label is `< num_classes`.
pub fn parse_labels(
    path: &Path,
    mut bytes: Vec<u8>,
    num_classes: usize,
) -> Result<Vec<u8>, DataError> {
    check_header(path, &bytes, 8, LABELS_MAGIC)?;
    let count = be_u32(&bytes, 4);
    check_len(path, &bytes, 8 + count as u128, format!("{count} labels"))?;
    bytes.drain(..8);
    check_labels(path, &bytes, num_classes)?;
    Ok(bytes)
}

pub(crate) fn check_labels(
    path: &Path,
    labels: &[u8],
    num_classes: usize,
) -> Result<(), DataError> {
    match labels.iter().position(|&l| l as usize >= num_classes) {
        Some(i) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index: i as u64,
            label: labels[i],
            num_classes,
        }),
        None => Ok(()),
    }
}

/// Reads an IDX images file (gzip or raw).
pub fn read_images(path: &Path) -> Result<IdxImages, DataError> {
    parse_images(path, read_decoded(path)?)
}

/// Reads an IDX labels file (gzip or raw), checking labels are `< num_classes`.
pub fn read_labels(path: &Path, num_classes: usize) -> Result<Vec<u8>, DataError> {
    parse_labels(path, read_decoded(path)?, num_classes)
}

/// The number of training samples in `dir`, from its (checked) training labels alone: 60 KB
/// against the images' 47 MB.
pub fn train_count(dir: &Path) -> Result<Samples, DataError> {
    let labels = read_labels(&locate(dir, TRAIN_LABELS)?, MNIST_CLASSES)?;
    Ok(Samples(labels.len() as u64))
}

/// Loads MNIST from `dir` (files `train-images-idx3-ubyte[.gz]` etc.).
pub fn load_mnist(dir: &Path) -> Result<Split, DataError> {
    load_mnist_with(dir, &mut |_, _| {})
}

/// Like [`load_mnist`], calling `on_file(path, decoded_bytes)` for each of the four files
/// (used by `inspect` to hash the decoded bytes without decoding twice).
pub fn load_mnist_with(
    dir: &Path,
    on_file: &mut dyn FnMut(&Path, &[u8]),
) -> Result<Split, DataError> {
    let train = load_pair(dir, TRAIN_IMAGES, TRAIN_LABELS, "mnist-train", on_file)?;
    let test = load_pair(dir, TEST_IMAGES, TEST_LABELS, "mnist-test", on_file)?;
    Ok(Split { train, test })
}

fn load_pair(
    dir: &Path,
    images: &str,
    labels: &str,
    name: &str,
    on_file: &mut dyn FnMut(&Path, &[u8]),
) -> Result<Dataset, DataError> {
    let ip = locate(dir, images)?;
    let lp = locate(dir, labels)?;
    let ib = read_decoded(&ip)?;
    on_file(&ip, &ib);
    let img = parse_images(&ip, ib)?;
    let lb = read_decoded(&lp)?;
    on_file(&lp, &lb);
    let lab = parse_labels(&lp, lb, MNIST_CLASSES)?;
    if img.count != lab.len() {
        return Err(DataError::CountMismatch {
            images_path: ip,
            labels_path: lp,
            images: img.count as u64,
            labels: lab.len() as u64,
        });
    }
    if lab.is_empty() {
        return Err(DataError::NoSamples {
            path: ip,
            what: format!("its header counts 0 images; the {name} split needs at least one"),
        });
    }
    Ok(Dataset {
        images: img.pixels,
        labels: lab,
        channels: 1,
        height: img.rows,
        width: img.cols,
        num_classes: MNIST_CLASSES,
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use crate::data::test_util::{data_dir, link, mnist, mnist_file, write};
    use crate::data::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
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
    fn mnist_count_reads_the_labels_only() {
        // From the data root (the `mnist/` subdirectory), as a run's `data.dir` names it.
        let root = data_dir();
        assert_eq!(train_size(DatasetKind::Mnist, &root).unwrap().0, 60_000);
        // Seven gzipped labels and no images: the count needs no image file.
        let dir = tempfile::tempdir().unwrap();
        let mut labels = vec![0, 0, 8, 1, 0, 0, 0, 7];
        labels.extend([1, 2, 3, 4, 5, 6, 9]);
        write(dir.path(), "train-labels-idx1-ubyte.gz", &gzip(&labels));
        assert_eq!(train_size(DatasetKind::Mnist, dir.path()).unwrap().0, 7);
        // A label out of range is refused here as by the loader.
        labels[14] = 10;
        write(dir.path(), "train-labels-idx1-ubyte.gz", &gzip(&labels));
        let e = train_size(DatasetKind::Mnist, dir.path()).unwrap_err();
        assert!(
            matches!(e, DataError::LabelOutOfRange { index: 6, .. }),
            "{e}"
        );
    }

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

    // ---------------------------------------------------------------- corruption

    #[test]
    fn mnist_empty_test_split_is_an_error() {
        // Headers that count 0 images and 0 labels: a run would report NaN accuracy.
        let dir = tempfile::tempdir().unwrap();
        link(dir.path(), &mnist_file(idx::TRAIN_IMAGES));
        link(dir.path(), &mnist_file(idx::TRAIN_LABELS));
        let images = [0, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 28, 0, 0, 0, 28];
        write(dir.path(), "t10k-images-idx3-ubyte", &images);
        write(
            dir.path(),
            "t10k-labels-idx1-ubyte",
            &[0, 0, 8, 1, 0, 0, 0, 0],
        );
        let e = load_mnist(dir.path()).unwrap_err();
        assert!(matches!(e, DataError::NoSamples { .. }), "{e}");
        assert!(
            e.to_string().contains("t10k-images-idx3-ubyte")
                && e.to_string().contains("mnist-test"),
            "{e}"
        );
    }

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
}
