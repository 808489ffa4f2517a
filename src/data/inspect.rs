//! `noisescale data inspect DIR`: finds MNIST and/or CIFAR-10 (and NumPy arrays, image folders)
//! under a directory and reports counts, class balance, shapes, channel statistics and SHA-256 of
//! the decoded files; `noisescale data inspect FILE` reports a token stream ([`inspect_tokens`]).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    DataError, Dataset, DatasetKind, Split, channel_stats, cifar, folder, idx, looks_like, npy,
    tokens,
};

/// SHA-256 of one file's decoded (decompressed) bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDigest {
    /// The file as found on disk (possibly `.gz`; the digest is of its decoded bytes).
    pub path: PathBuf,
    /// Length of the decoded bytes.
    pub decoded_bytes: u64,
    /// Lower-case hex SHA-256 of the decoded bytes.
    pub sha256: String,
}

/// Summary of one split (train or test).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitReport {
    /// `train` or `test`.
    pub split: String,
    /// Number of images in the split (the sum of `class_counts`).
    pub count: usize,
    /// Images per class, by label.
    pub class_counts: Vec<usize>,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// Per-channel mean of pixel/255 (of the values, for float features).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation of pixel/255 (of the values, for float features).
    pub std: Vec<f64>,
    /// Element type of the features (`uint8` for images; `float32` for NumPy float features).
    pub dtype: String,
    /// Regression targets per sample (0: class indices).
    pub targets: usize,
}

impl SplitReport {
    /// Summarises `ds` as split `split`.
    pub fn of(split: &str, ds: &Dataset) -> SplitReport {
        let (mean, std) = channel_stats(ds);
        SplitReport {
            split: split.into(),
            count: ds.len(),
            class_counts: ds.class_counts(),
            shape: ds.image_shape(),
            mean,
            std,
            dtype: "uint8".into(),
            targets: 0,
        }
    }

    /// Summarises a split of NumPy arrays: class counts for class indices, per-channel statistics
    /// of the features (`uint8` scaled by 1/255, as images), the number of regression targets.
    pub fn of_npy(split: &str, part: &npy::Part) -> SplitReport {
        let shape = npy::sample_shape(&part.x);
        let [c, h, w] = shape;
        let scale = if part.x.values.dtype() == "uint8" {
            1.0 / 255.0
        } else {
            1.0
        };
        let (mut mean, mut std) = (vec![0.0; c], vec![0.0; c]);
        for ch in 0..c {
            let (mut s, mut s2, mut n) = (0.0f64, 0.0f64, 0.0f64);
            for i in 0..part.len() {
                let base = i * c * h * w + ch * h * w;
                for j in base..base + h * w {
                    let v = f64::from(part.x.values.get_f32(j)) * scale;
                    (s, s2, n) = (s + v, s2 + v * v, n + 1.0);
                }
            }
            mean[ch] = s / n.max(1.0);
            std[ch] = (s2 / n.max(1.0) - mean[ch] * mean[ch]).max(0.0).sqrt();
        }
        let class_counts = match &part.y.values {
            npy::Values::I64(v) => {
                let k = v.iter().copied().max().map_or(0, |m| m as usize + 1);
                let mut counts = vec![0; k];
                v.iter().for_each(|&l| counts[l as usize] += 1);
                counts
            }
            _ => Vec::new(),
        };
        SplitReport {
            split: split.into(),
            count: part.len(),
            targets: if part.classes() {
                0
            } else {
                part.y.row_len().max(1)
            },
            class_counts,
            shape,
            mean,
            std,
            dtype: part.x.values.dtype().into(),
        }
    }
}

/// Summary of one data set found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetReport {
    /// Which data set was recognised in `dir` (by its file names).
    pub kind: DatasetKind,
    /// The directory it was read from.
    pub dir: PathBuf,
    /// Train then test.
    pub splits: Vec<SplitReport>,
    /// Digests of the files read, in reading order.
    pub files: Vec<FileDigest>,
}

/// Everything `inspect` found under a directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InspectReport {
    /// The directory given on the command line; data sets may lie in its immediate subdirectories.
    pub dir: PathBuf,
    /// One entry per data set found (MNIST first, then CIFAR-10).
    pub datasets: Vec<DatasetReport>,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Inspects `dir` and its immediate subdirectories for MNIST and CIFAR-10; loads each found
/// data set fully (so any corruption is reported as the loader's error).
pub fn inspect(dir: &Path) -> Result<InspectReport, DataError> {
    let mut candidates = vec![dir.to_path_buf()];
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| idx::io_error(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    candidates.extend(subs);
    let mut datasets = Vec::new();
    for kind in [
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
        DatasetKind::Npy,
        DatasetKind::ImageFolder,
    ] {
        for d in candidates.iter().filter(|d| looks_like(kind, d)) {
            datasets.push(inspect_one(kind, d)?);
        }
    }
    if datasets.is_empty() {
        return Err(DataError::NoDataset {
            dir: dir.to_path_buf(),
        });
    }
    Ok(InspectReport {
        dir: dir.to_path_buf(),
        datasets,
    })
}

fn inspect_one(kind: DatasetKind, dir: &Path) -> Result<DatasetReport, DataError> {
    let mut files = Vec::new();
    let mut on_file = |p: &Path, b: &[u8]| {
        files.push(FileDigest {
            path: p.to_path_buf(),
            decoded_bytes: b.len() as u64,
            sha256: sha256_hex(b),
        })
    };
    let split: Split = match kind {
        DatasetKind::Mnist => idx::load_mnist_with(dir, &mut on_file)?,
        DatasetKind::Npy => {
            let s = npy::load_with(dir, &mut on_file)?;
            return Ok(DatasetReport {
                kind,
                dir: dir.to_path_buf(),
                splits: vec![
                    SplitReport::of_npy("train", &s.train),
                    SplitReport::of_npy("test", &s.test),
                ],
                files,
            });
        }
        // As found: without test/, a tenth of train/ shown as the held-out part.
        DatasetKind::ImageFolder => folder::load_with(
            dir,
            &folder::FolderOptions {
                validation_fraction: 0.1,
                ..Default::default()
            },
            &mut on_file,
        )?,
        _ => cifar::load_cifar10_with(dir, &mut on_file)?,
    };
    Ok(DatasetReport {
        kind,
        dir: dir.to_path_buf(),
        splits: vec![
            SplitReport::of("train", &split.train),
            SplitReport::of("test", &split.test),
        ],
        files,
    })
}

/// One part of a token stream: its tokens and the windows a context cuts it into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenSplit {
    /// `train` or `validation`.
    pub split: String,
    /// Tokens in the part.
    pub tokens: usize,
    /// Windows of the context (the part's N).
    pub windows: usize,
}

/// What `data inspect` reports of a token stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenReport {
    /// The files read (a text or a `.bin`, or a directory's `train.bin` and `val.bin`).
    pub files: Vec<FileDigest>,
    /// How the tokens are stored.
    pub format: tokens::TokenFormat,
    /// The context length the windows are counted for.
    pub context: usize,
    /// Train then validation.
    pub splits: Vec<TokenSplit>,
    /// The largest id (a vocabulary must be larger).
    pub max_id: u32,
    /// Ids that occur in the training part.
    pub distinct: usize,
    /// Entropy of the training part's id frequencies, bits per token: what a model that ignores
    /// the context would reach at best (on the training part).
    pub unigram_bits: f64,
}

/// Reports the token stream of `config` at `path`: sizes, windows, ids and checksums.
pub fn inspect_tokens(path: &Path, config: &tokens::TokenConfig) -> Result<TokenReport, DataError> {
    let (train, valid) = config.open(path)?;
    let mut files = Vec::new();
    for w in [&train, &valid] {
        let f = w.file();
        if files.iter().all(|d: &FileDigest| d.path != f.path()) {
            files.push(FileDigest {
                path: f.path().to_path_buf(),
                decoded_bytes: f.bytes().len() as u64,
                sha256: sha256_hex(f.bytes()),
            });
        }
    }
    let mut counts = std::collections::HashMap::<u32, u64>::new();
    for i in train.tokens() {
        *counts.entry(train.file().get(i)).or_default() += 1;
    }
    let total = train.tokens().len() as f64;
    let unigram_bits = counts
        .values()
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.log2()
        })
        .sum();
    let split = |name: &str, w: &tokens::Windows| TokenSplit {
        split: name.into(),
        tokens: w.tokens().len(),
        windows: w.windows(),
    };
    Ok(TokenReport {
        files,
        format: train.file().format(),
        context: config.context,
        splits: vec![split("train", &train), split("validation", &valid)],
        max_id: train.max_id().max(valid.max_id()),
        distinct: counts.len(),
        unigram_bits,
    })
}

impl fmt::Display for TokenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "token stream ({:?}), context {}",
            self.format, self.context
        )?;
        for s in &self.splits {
            writeln!(
                f,
                "  {}: {} tokens, {} windows",
                s.split, s.tokens, s.windows
            )?;
        }
        writeln!(
            f,
            "  ids: {} distinct in train, largest {}; unigram entropy {:.3} bits/token",
            self.distinct, self.max_id, self.unigram_bits
        )?;
        writeln!(f, "  files (sha256):")?;
        for file in &self.files {
            writeln!(
                f,
                "    {}  {:>10} bytes  {}",
                file.sha256,
                file.decoded_bytes,
                file.path.display()
            )?;
        }
        Ok(())
    }
}

fn floats(v: &[f64]) -> String {
    let s: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
    s.join(" ")
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data directory {}", self.dir.display())?;
        for d in &self.datasets {
            writeln!(f, "\n{} in {}", d.kind, d.dir.display())?;
            for s in &d.splits {
                let [c, h, w] = s.shape;
                writeln!(
                    f,
                    "  {}: {} samples of {c}x{h}x{w} {}",
                    s.split, s.count, s.dtype
                )?;
                if s.targets > 0 {
                    writeln!(f, "    regression targets: {} per sample", s.targets)?;
                } else {
                    let counts: Vec<String> =
                        s.class_counts.iter().map(|n| n.to_string()).collect();
                    writeln!(f, "    per class: {}", counts.join(" "))?;
                }
                writeln!(f, "    mean: {}   std: {}", floats(&s.mean), floats(&s.std))?;
            }
            writeln!(f, "  files (sha256 of decoded bytes):")?;
            for file in &d.files {
                let name = file.path.file_name().unwrap_or_default().to_string_lossy();
                writeln!(
                    f,
                    "    {}  {:>10} bytes  {name}",
                    file.sha256, file.decoded_bytes
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::data::test_util::data_dir;
    use crate::data::*;

    // ---------------------------------------------------------------- real data

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
}
