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

mod dataset;

pub use dataset::*;

use super::DataError;
use super::idx::io_error;
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
