//! NumPy arrays: `.npy` files and `.npz` archives of them, as `numpy.save`, `numpy.savez` and
//! `numpy.savez_compressed` write them (format versions 1–3, C order, little-endian).
//!
//! A data set in NumPy form is a directory holding `train.npz` (members `x` and `y`) or
//! `train_x.npy` and `train_y.npy`, and likewise `test`. Features `x` are `[N, ...]` of
//! `float32`, `float64` (converted to `f32`) or `uint8`; targets `y` are `[N]` of `int64` or
//! `int32` (class indices) or `[N]`/`[N, k]` of `float32`/`float64` (regression targets).
//!
//! Every size is checked against the bytes actually there before anything is allocated from it:
//! a header's shape larger than the file, a `fortran_order` or big-endian array, an unknown
//! dtype or a malformed header is a [`DataError::Npy`] naming the file and what is wrong.

use super::idx::io_error;
use super::source::{BurnData, FeatureBatcher, Features, RegressionBatch, RegressionBatcher};
use super::{DataError, Dataset, Split};
use burn::data::dataset::InMemDataset;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The magic string every `.npy` file starts with.
const MAGIC: &[u8] = b"\x93NUMPY";

/// Elements of an array, converted where the trainer needs it (`float64` → `f32`, `int32` →
/// `i64`).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `uint8` (pixels).
    U8(Vec<u8>),
    /// `float32`, or `float64` rounded to `f32`.
    F32(Vec<f32>),
    /// `int64`, or `int32` widened.
    I64(Vec<i64>),
}

impl Values {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Values::U8(v) => v.len(),
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The NumPy dtype it was read as (after conversion).
    pub fn dtype(&self) -> &'static str {
        match self {
            Values::U8(_) => "uint8",
            Values::F32(_) => "float32",
            Values::I64(_) => "int64",
        }
    }

    /// Element `i` as `f32`.
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            Values::U8(v) => f32::from(v[i]),
            Values::F32(v) => v[i],
            Values::I64(v) => v[i] as f32,
        }
    }
}

/// One array: its shape (C order) and its elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The shape, outermost first; `[]` for a scalar.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements.
    pub values: Values,
}

impl Array {
    /// Rows: the first dimension (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row: the product of the dimensions after the first.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
}

fn bad(path: &Path, what: impl Into<String>) -> DataError {
    DataError::Npy {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The dtypes read: (descr as NumPy writes it, element bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    U8,
    F32,
    F64,
    I32,
    I64,
}

impl Dtype {
    fn parse(descr: &str, path: &Path) -> Result<Dtype, DataError> {
        let (order, kind) = descr.split_at(descr.len().min(1));
        if order == ">" && kind != "u1" && kind != "i1" {
            return Err(bad(
                path,
                format!(
                    "dtype {descr:?} is big-endian; save it little-endian (`a.astype(a.dtype.newbyteorder('<'))`)"
                ),
            ));
        }
        match (order, kind) {
            ("|" | "<" | ">" | "=", "u1") => Ok(Dtype::U8),
            ("<" | "=", "f4") => Ok(Dtype::F32),
            ("<" | "=", "f8") => Ok(Dtype::F64),
            ("<" | "=", "i4") => Ok(Dtype::I32),
            ("<" | "=", "i8") => Ok(Dtype::I64),
            _ => Err(bad(
                path,
                format!(
                    "dtype {descr:?} is not one noisescale reads (uint8, float32, float64, int32, int64)"
                ),
            )),
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }
}

/// The value of `key` in a NumPy header dict (`{'descr': '<f4', 'fortran_order': False,
/// 'shape': (3, 4), }`): the text from after `'key':` to the next top-level `,` or `}`.
fn header_value<'a>(header: &'a str, key: &str, path: &Path) -> Result<&'a str, DataError> {
    let pat = format!("'{key}':");
    let start = header
        .find(&pat)
        .ok_or_else(|| bad(path, format!("header has no {key:?}: {header:?}")))?
        + pat.len();
    let rest = &header[start..];
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Ok(rest[..i].trim()),
            _ => {}
        }
    }
    Err(bad(
        path,
        format!("header's {key:?} does not end: {header:?}"),
    ))
}

/// Parses a `.npy` file's bytes (`path` names it in errors).
pub fn parse(bytes: &[u8], path: &Path) -> Result<Array, DataError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => {
            return Err(bad(
                path,
                format!("format version {major}.{minor} is not 1.0, 2.0 or 3.0"),
            ));
        }
    };
    let data_start = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "header of {header_len} bytes runs past the end of the file ({} bytes)",
                    bytes.len()
                ),
            )
        })?;
    let header = std::str::from_utf8(&bytes[start..data_start])
        .map_err(|_| bad(path, "header is not text"))?;
    let descr = header_value(header, "descr", path)?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype = Dtype::parse(descr, path)?;
    match header_value(header, "fortran_order", path)? {
        "False" => {}
        "True" => {
            return Err(bad(
                path,
                "the array is in Fortran order; save it in C order (`numpy.ascontiguousarray`)",
            ));
        }
        other => return Err(bad(path, format!("fortran_order is {other:?}"))),
    }
    let shape_text = header_value(header, "shape", path)?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad(path, format!("shape {shape_text:?} is not a tuple")))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L').parse::<usize>().map_err(|_| {
                bad(
                    path,
                    format!("shape {shape_text:?} is not a tuple of sizes"),
                )
            })
        })
        .collect::<Result<Vec<usize>, DataError>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(path, format!("shape {shape:?} overflows")))?;
    let data = &bytes[data_start..];
    let need = count.checked_mul(dtype.size());
    if need.is_none_or(|n| n > data.len()) {
        return Err(bad(
            path,
            format!(
                "shape {shape:?} of {descr} needs {} bytes of data, the file holds {}",
                need.map_or("more than 2^64".into(), |n| n.to_string()),
                data.len()
            ),
        ));
    }
    let data = &data[..count * dtype.size()];
    // Sized by `count`, which the check above bounds by the bytes read.
    let values = match dtype {
        Dtype::U8 => Values::U8(data.to_vec()),
        Dtype::F32 => Values::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F64 => Values::F32(
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
        ),
        Dtype::I32 => Values::I64(
            data.chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        Dtype::I64 => Values::I64(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
    };
    Ok(Array { shape, values })
}

/// Reads a `.npy` file, passing its bytes to `on_file` (digests for `data inspect`).
pub fn read_npy(path: &Path, on_file: &mut dyn FnMut(&Path, &[u8])) -> Result<Array, DataError> {
    let bytes = read_file(path, "a .npy array")?;
    on_file(path, &bytes);
    parse(&bytes, path)
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            path: path.to_path_buf(),
            what: what.into(),
        },
        _ => io_error(path, e),
    })
}

/// Reads member `name` (`name.npy` in the archive) of the `.npz` file `path`. A member inflates
/// to at most what its header promises and the file's own size allows for stored members, so a
/// forged size cannot make it allocate more than it reads.
pub fn read_npz_member(
    path: &Path,
    name: &str,
    on_file: &mut dyn FnMut(&Path, &[u8]),
) -> Result<Array, DataError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            path: path.to_path_buf(),
            what: "a .npz archive".into(),
        },
        _ => io_error(path, e),
    })?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| bad(path, format!("not a readable .npz (zip) archive: {e}")))?;
    let member = format!("{name}.npy");
    let mut entry = zip.by_name(&member).map_err(|_| {
        bad(
            path,
            format!("the archive has no member {member:?} (numpy.savez(..., {name}=...))"),
        )
    })?;
    let declared = entry.size();
    // Deflate expands at most 1,032-fold: a larger promise is a forged header or a bomb.
    if declared
        > entry
            .compressed_size()
            .saturating_mul(1032)
            .saturating_add(1024)
    {
        return Err(bad(
            path,
            format!(
                "member {member:?} claims {declared} bytes from {} compressed, more than deflate can expand to",
                entry.compressed_size()
            ),
        ));
    }
    let mut bytes = Vec::new();
    // Grows as bytes arrive (not reserved from the declared size), stopping one byte past it.
    (&mut entry)
        .take(declared.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| bad(path, format!("member {member:?} does not decompress: {e}")))?;
    if bytes.len() as u64 != declared {
        return Err(bad(
            path,
            format!(
                "member {member:?} holds {} bytes, its header says {declared}",
                bytes.len()
            ),
        ));
    }
    let shown = PathBuf::from(format!("{}:{member}", path.display()));
    on_file(&shown, &bytes);
    parse(&bytes, &shown)
}

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

/// Writes `values` of shape `shape` as a `float32` `.npy` file (version 1.0, C order): for
/// tests and examples that make their own data.
pub fn write_f32(path: &Path, shape: &[usize], values: &[f32]) -> std::io::Result<()> {
    assert_eq!(
        shape.iter().product::<usize>(),
        values.len(),
        "shape and values"
    );
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}").into_bytes();
    // Padded with spaces to a multiple of 64 bytes with the magic and lengths, then a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * values.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out)
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
