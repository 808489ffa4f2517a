//! A data set of NumPy arrays: the `train` and `test` splits of a directory (see the parent
//! module), checked to pair up, and what they become: burn data for a model of your own, or the
//! built-in models' image set.

use super::{Array, Values, bad, read_npy, read_npz_member};
use crate::data::source::{BurnData, FeatureBatcher, Features, RegressionBatch, RegressionBatcher};
use crate::data::{DataError, Dataset, Split};
use burn::data::dataset::InMemDataset;
use std::path::Path;

/// Features and targets of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Features `[N, ...]`.
    pub x: Array,
    /// Targets `[N]` (classes, integer) or `[N]`/`[N, k]` (regression, float).
    pub y: Array,
}

impl Part {
    /// Samples in the split.
    pub fn len(&self) -> usize {
        self.x.rows()
    }

    /// Whether the split holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the targets are class indices (integers).
    pub fn classes(&self) -> bool {
        matches!(self.y.values, Values::I64(_))
    }
}

/// Reads split `split` (`train` or `test`) of a NumPy data set in `dir`: `SPLIT.npz` with
/// members `x` and `y`, or `SPLIT_x.npy` and `SPLIT_y.npy`. Checks that the rows pair up, that
/// class indices are not negative and that targets are numbers, not pixels.
pub fn read_part(
    dir: &Path,
    split: &str,
    on_file: &mut dyn FnMut(&Path, &[u8]),
) -> Result<Part, DataError> {
    let npz = dir.join(format!("{split}.npz"));
    let (x, y, y_path) = if npz.exists() {
        (
            read_npz_member(&npz, "x", on_file)?,
            read_npz_member(&npz, "y", on_file)?,
            npz,
        )
    } else {
        let y_path = dir.join(format!("{split}_y.npy"));
        let x = read_npy(&dir.join(format!("{split}_x.npy")), on_file)?;
        (x, read_npy(&y_path, on_file)?, y_path)
    };
    if x.shape.is_empty() || y.shape.is_empty() || x.rows() != y.rows() {
        return Err(bad(
            &y_path,
            format!(
                "features of shape {:?} and targets of shape {:?} do not pair up row for row",
                x.shape, y.shape
            ),
        ));
    }
    match &y.values {
        Values::U8(_) => {
            return Err(bad(
                &y_path,
                "targets are uint8: save class indices as int64 (or int32), regression targets as float",
            ));
        }
        Values::I64(v) => {
            if y.shape.len() != 1 {
                return Err(bad(
                    &y_path,
                    format!(
                        "class indices must be one per row, shape [N]; got {:?}",
                        y.shape
                    ),
                ));
            }
            if let Some(i) = v.iter().position(|&c| c < 0) {
                return Err(bad(
                    &y_path,
                    format!("row {i} has class {}: classes count from 0", v[i]),
                ));
            }
        }
        Values::F32(_) => {
            if y.shape.len() > 2 {
                return Err(bad(
                    &y_path,
                    format!(
                        "regression targets must be [N] or [N, k]; got {:?}",
                        y.shape
                    ),
                ));
            }
        }
    }
    if x.rows() == 0 {
        return Err(DataError::NoSamples {
            path: dir.join(split),
            what: format!("the {split} split of a NumPy data set"),
        });
    }
    Ok(Part { x, y })
}

/// Both splits of a NumPy data set.
#[derive(Debug, Clone, PartialEq)]
pub struct NpySplit {
    /// `train.npz` or `train_x.npy` + `train_y.npy`.
    pub train: Part,
    /// `test.npz` or `test_x.npy` + `test_y.npy`.
    pub test: Part,
}

/// Reads the NumPy data set in `dir` (see the module docs), passing each file's bytes to
/// `on_file`. Both splits must hold the same kind of targets and features of the same shape.
pub fn load_with(dir: &Path, on_file: &mut dyn FnMut(&Path, &[u8])) -> Result<NpySplit, DataError> {
    let train = read_part(dir, "train", on_file)?;
    let test = read_part(dir, "test", on_file)?;
    if train.x.shape[1..] != test.x.shape[1..] || train.classes() != test.classes() {
        return Err(bad(
            dir,
            format!(
                "train and test differ: features {:?} vs {:?}, targets {} vs {}",
                &train.x.shape[1..],
                &test.x.shape[1..],
                train.y.values.dtype(),
                test.y.values.dtype()
            ),
        ));
    }
    Ok(NpySplit { train, test })
}

/// Reads the NumPy data set in `dir`.
pub fn load(dir: &Path) -> Result<NpySplit, DataError> {
    load_with(dir, &mut |_, _| {})
}

impl Part {
    /// Row `i`'s features, flattened, as `f32`.
    fn row(&self, i: usize) -> Vec<f32> {
        let w = self.x.row_len();
        (i * w..(i + 1) * w)
            .map(|j| self.x.values.get_f32(j))
            .collect()
    }

    /// The split as classification items `(features, class)` in a burn data set, batched by
    /// [`FeatureBatcher`]; an error where the targets are not class indices.
    pub fn classification(&self) -> Result<ClassData, DataError> {
        let Values::I64(classes) = &self.y.values else {
            return Err(bad(
                Path::new("y"),
                format!("targets are {}, not class indices", self.y.values.dtype()),
            ));
        };
        let items = (0..self.len()).map(|i| (self.row(i), classes[i])).collect();
        Ok(BurnData::new(InMemDataset::new(items), FeatureBatcher))
    }

    /// The split as regression items `(features, targets)` in a burn data set, batched by
    /// [`RegressionBatcher`] (integer targets count as values too).
    pub fn regression(&self) -> RegressionData {
        let k = self.y.row_len();
        let items = (0..self.len())
            .map(|i| {
                let y = (i * k..(i + 1) * k)
                    .map(|j| self.y.values.get_f32(j))
                    .collect();
                (self.row(i), y)
            })
            .collect();
        BurnData::new(InMemDataset::new(items), RegressionBatcher)
    }
}

/// A classification split from NumPy arrays.
pub type ClassData = BurnData<(Vec<f32>, i64), Features, FeatureBatcher>;
/// A regression split from NumPy arrays.
pub type RegressionData = BurnData<(Vec<f32>, Vec<f32>), RegressionBatch, RegressionBatcher>;

/// The per-sample shape as `[C, H, W]`: `[F]` is `[1, 1, F]`, `[H, W]` is `[1, H, W]`; ranks
/// above 3 are flattened to `[1, 1, F]`.
pub fn sample_shape(x: &Array) -> [usize; 3] {
    match x.shape[1..] {
        [f] => [1, 1, f],
        [h, w] => [1, h, w],
        [c, h, w] => [c, h, w],
        _ => [1, 1, x.row_len()],
    }
}

/// The split as the built-in models' image set: `uint8` features, class indices below 256.
pub fn to_images(
    part: Part,
    name: &str,
    classes: usize,
    path: &Path,
) -> Result<Dataset, DataError> {
    let [channels, height, width] = sample_shape(&part.x);
    let Values::U8(images) = part.x.values else {
        return Err(bad(
            path,
            format!(
                "features are {}: the built-in models train on uint8 images; train {} features through the library (noisescale::data::npy, with a model of your own)",
                part.x.values.dtype(),
                part.x.values.dtype()
            ),
        ));
    };
    let Values::I64(y) = part.y.values else {
        return Err(bad(
            path,
            "targets are not class indices: regression trains through the library (noisescale::data::npy::Part::regression)",
        ));
    };
    let labels = y
        .iter()
        .map(|&c| u8::try_from(c).ok().filter(|&c| usize::from(c) < classes))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| {
            bad(
                path,
                format!("class indices must lie in 0..{classes} (at most 256 classes)"),
            )
        })?;
    Ok(Dataset {
        images,
        labels,
        channels,
        height,
        width,
        num_classes: classes,
        name: name.into(),
    })
}

/// The NumPy data set in `dir` as an image [`Split`] for the built-in models (see
/// [`to_images`]); the class count is one more than the largest class index in either split.
pub fn load_images_with(
    dir: &Path,
    on_file: &mut dyn FnMut(&Path, &[u8]),
) -> Result<Split, DataError> {
    let s = load_with(dir, on_file)?;
    let max = |p: &Part| match &p.y.values {
        Values::I64(v) => v.iter().copied().max().unwrap_or(0),
        _ => 0,
    };
    let classes = (max(&s.train).max(max(&s.test)) + 1).clamp(1, 256) as usize;
    Ok(Split {
        train: to_images(s.train, "npy-train", classes, &dir.join("train"))?,
        test: to_images(s.test, "npy-test", classes, &dir.join("test"))?,
    })
}

/// The number of training samples of the NumPy data set in `dir`, from the targets alone.
pub fn train_rows(dir: &Path) -> Result<usize, DataError> {
    let npz = dir.join("train.npz");
    let y = if npz.exists() {
        read_npz_member(&npz, "y", &mut |_, _| {})?
    } else {
        read_npy(&dir.join("train_y.npy"), &mut |_, _| {})?
    };
    Ok(y.rows())
}

/// Whether `dir` looks like a NumPy data set (by file names).
pub fn looks_like(dir: &Path) -> bool {
    dir.join("train.npz").is_file() || dir.join("train_x.npy").is_file()
}
