//! Token streams for language models: a flat file of `u16` or `u32` token ids (nanoGPT's
//! `train.bin` / `val.bin`, little-endian) or a text read as bytes (vocabulary 256),
//! memory-mapped, cut into windows of `context + 1` tokens: the model reads the first `context`
//! and predicts each next one.
//!
//! **Windows.** A stream of `L` tokens holds `N = ⌊L / T⌋ − 1` non-overlapping windows of
//! context `T`. Training windows start at `offset + i·T`, the offset drawn in `0..T` from
//! `(seed, epoch)` alone, so every epoch sees the text cut at other places and a resumed run the
//! same ones; evaluation windows start at `i·T`. `N` is the training-set size of the noise scale
//! (an epoch is a pass over the windows), the same in every epoch.

use super::source::{EvalSet, Share, TrainSet};
use super::{DataError, derive_rng};
use burn::tensor::{Device, Int, Tensor, TensorData};
use memmap2::Mmap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Stream tag of the window-offset RNG (see [`derive_rng`]).
const OFFSET_STREAM: u64 = 0x746f6b;

/// How a token file stores its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TokenFormat {
    /// Little-endian `u16` ids (nanoGPT's `.bin`, vocabularies up to 65,536).
    #[default]
    U16,
    /// Little-endian `u32` ids.
    U32,
    /// Any file (a UTF-8 text) read as bytes: ids 0..=255.
    Bytes,
}

impl TokenFormat {
    fn width(self) -> usize {
        match self {
            TokenFormat::U16 => 2,
            TokenFormat::U32 => 4,
            TokenFormat::Bytes => 1,
        }
    }
}

/// The `[data.tokens]` table: how `data.dir` (a token file, or a directory of `train.bin` and
/// `val.bin`) is read and cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// How tokens are stored (default `bytes`: a text, vocabulary 256).
    #[serde(default = "default_format")]
    pub format: TokenFormat,
    /// Tokens a window gives the model (its context length T).
    pub context: usize,
    /// For one file: the token at which the validation part starts (the rest trains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_from: Option<usize>,
}

fn default_format() -> TokenFormat {
    TokenFormat::Bytes
}

impl TokenConfig {
    /// The training and validation windows of `path`: one file split at `validation_from`, or
    /// a directory's `train.bin` and `val.bin`.
    pub fn open(&self, path: &Path) -> Result<(Windows, Windows), DataError> {
        if path.is_dir() {
            let (train, val) = (path.join("train.bin"), path.join("val.bin"));
            return splits(&train, Some(&val), self.format, 0, self.context);
        }
        let from = self.validation_from.ok_or_else(|| DataError::Tokens {
            path: path.to_path_buf(),
            what: "one token file needs data.tokens.validation_from, the token where its validation part starts (or give a directory of train.bin and val.bin)".into(),
        })?;
        splits(path, None, self.format, from, self.context)
    }
}

/// A memory-mapped token file.
#[derive(Debug)]
pub struct TokenFile {
    map: Mmap,
    format: TokenFormat,
    path: PathBuf,
}

impl TokenFile {
    /// Maps `path`, whose length must be a whole number of tokens (and not zero).
    pub fn open(path: &Path, format: TokenFormat) -> Result<TokenFile, DataError> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::Missing {
                path: path.to_path_buf(),
                what: "a token file".into(),
            },
            _ => super::idx::io_error(path, e),
        })?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped would
        // fault on access, which the data set's README rules out (data is read-only).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| super::idx::io_error(path, e))?;
        let width = format.width();
        if map.is_empty() || map.len() % width != 0 {
            return Err(DataError::Tokens {
                path: path.to_path_buf(),
                what: format!(
                    "{} bytes is not a whole, non-zero number of {width}-byte tokens ({format:?})",
                    map.len()
                ),
            });
        }
        Ok(TokenFile {
            map,
            format,
            path: path.to_path_buf(),
        })
    }

    /// Tokens in the file.
    pub fn len(&self) -> usize {
        self.map.len() / self.format.width()
    }

    /// Whether the file holds no token (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u32 {
        let b = &self.map;
        match self.format {
            TokenFormat::Bytes => u32::from(b[i]),
            TokenFormat::U16 => u32::from(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])),
            TokenFormat::U32 => {
                u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
            }
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// How the file stores its tokens.
    pub fn format(&self) -> TokenFormat {
        self.format
    }

    /// The largest token id in `range` (a vocabulary must be larger).
    pub fn max_id(&self, range: Range<usize>) -> u32 {
        range.map(|i| self.get(i)).max().unwrap_or(0)
    }
}

/// A batch of windows on the device: `tokens` `[B, T]` and the next token of each, `targets`
/// `[B, T]`.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// Input ids.
    pub tokens: Tensor<2, Int>,
    /// The id following each input id.
    pub targets: Tensor<2, Int>,
}

/// Non-overlapping windows of `context + 1` tokens over `range` of a token file (see the
/// module docs); a [`TrainSet`] with a seeded offset per epoch and an [`EvalSet`] without.
#[derive(Debug, Clone)]
pub struct Windows {
    file: Arc<TokenFile>,
    range: Range<usize>,
    context: usize,
    /// As an evaluation set, only these windows ([`Windows::spread`]); all when `None`.
    picked: Option<Arc<[u32]>>,
}

impl Windows {
    /// Windows of `context` over tokens `range` of `file`; an error where the range holds fewer
    /// than two windows' worth or lies outside the file.
    pub fn new(
        file: Arc<TokenFile>,
        range: Range<usize>,
        context: usize,
    ) -> Result<Windows, DataError> {
        if context == 0 || range.end > file.len() || range.len() < 2 * context {
            return Err(DataError::Tokens {
                path: file.path.clone(),
                what: format!(
                    "tokens {range:?} of {} with a context of {context}: need a context of at least 1 and at least {} tokens inside the file",
                    file.len(),
                    2 * context.max(1)
                ),
            });
        }
        Ok(Windows {
            file,
            range,
            context,
            picked: None,
        })
    }

    /// The same windows as an evaluation set of `count` of them spread evenly (window
    /// `⌊i · N / count⌋` for i < count), for quick evaluations within training; all of them
    /// where `count` is 0 or at least N.
    pub fn spread(&self, count: usize) -> Windows {
        let n = self.windows();
        let picked = (count > 0 && count < n).then(|| {
            (0..count)
                .map(|i| (i * n / count) as u32)
                .collect::<Arc<[u32]>>()
        });
        Windows {
            picked,
            ..self.clone()
        }
    }

    /// The context length T.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The tokens the windows are cut from.
    pub fn tokens(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The token file.
    pub fn file(&self) -> &Arc<TokenFile> {
        &self.file
    }

    /// The largest token id in the windows' range.
    pub fn max_id(&self) -> u32 {
        self.file.max_id(self.range.clone())
    }

    /// Windows in the range: `⌊L / T⌋ − 1`, whatever the epoch's offset.
    pub fn windows(&self) -> usize {
        self.range.len() / self.context - 1
    }

    fn share(&self, indices: &[u32], offset: usize) -> TokenShare {
        let t = self.context;
        let mut rows = Vec::with_capacity(indices.len() * (t + 1));
        for &i in indices {
            let start = self.range.start + offset + i as usize * t;
            rows.extend((start..start + t + 1).map(|j| self.file.get(j)));
        }
        TokenShare { rows, context: t }
    }
}

/// A rank's share of windows: `n` rows of `context + 1` ids, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenShare {
    rows: Vec<u32>,
    context: usize,
}

impl TokenShare {
    /// A share of `rows` of `context + 1` ids each, as assembled from windows (benchmarks and
    /// tests build one from ids of their own).
    pub fn from_rows(rows: Vec<u32>, context: usize) -> TokenShare {
        assert!(
            rows.len().is_multiple_of(context + 1),
            "rows of context + 1 ids"
        );
        TokenShare { rows, context }
    }
}

impl Share for TokenShare {
    type Input = TokenBatch;
    fn len(&self) -> usize {
        self.rows.len() / (self.context + 1)
    }
    fn into_pieces(self, piece_len: usize, device: &Device) -> Vec<TokenBatch> {
        let (t, n) = (self.context, self.len());
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < n {
            let len = piece_len.max(1).min(n - start);
            let rows = &self.rows[start * (t + 1)..(start + len) * (t + 1)];
            let ids = |skip: usize| -> Tensor<2, Int> {
                let v: Vec<i64> = rows
                    .chunks_exact(t + 1)
                    .flat_map(|r| r[skip..skip + t].iter().map(|&x| i64::from(x)))
                    .collect();
                Tensor::from_data(TensorData::new(v, [len, t]), device)
            };
            pieces.push(TokenBatch {
                tokens: ids(0),
                targets: ids(1),
            });
            start += len;
        }
        pieces
    }
}

impl TrainSet for Windows {
    type Share = TokenShare;
    fn len(&self) -> usize {
        self.windows()
    }
    fn assemble(&self, indices: &[u32], seed: u64, epoch: u32) -> TokenShare {
        let offset = derive_rng(seed, epoch, OFFSET_STREAM, 0).random_range(0..self.context);
        self.share(indices, offset)
    }
}

impl EvalSet for Windows {
    type Input = TokenBatch;
    fn len(&self) -> usize {
        self.picked.as_ref().map_or(self.windows(), |p| p.len())
    }
    fn for_each_batch(
        &self,
        batch_size: usize,
        device: &Device,
        each: &mut dyn FnMut(TokenBatch, usize),
    ) {
        let n = EvalSet::len(self);
        let mut start = 0;
        while start < n {
            let end = (start + batch_size.max(1)).min(n);
            let idx: Vec<u32> = match &self.picked {
                Some(p) => p[start..end].to_vec(),
                None => (start as u32..end as u32).collect(),
            };
            for piece in self.share(&idx, 0).into_pieces(end - start, device) {
                each(piece, end - start);
            }
            start = end;
        }
    }
}

/// The training and validation windows of a token data set in `dir`: nanoGPT's `train.bin` and
/// `val.bin` (`u16`), or one file `text` with the validation part from token `validation_from`
/// (as `../shared/data/text/kjv.txt` from byte 3,868,416).
pub fn splits(
    train: &Path,
    validation: Option<&Path>,
    format: TokenFormat,
    validation_from: usize,
    context: usize,
) -> Result<(Windows, Windows), DataError> {
    let file = Arc::new(TokenFile::open(train, format)?);
    match validation {
        Some(v) => {
            let val = Arc::new(TokenFile::open(v, format)?);
            let (n, m) = (file.len(), val.len());
            Ok((
                Windows::new(file, 0..n, context)?,
                Windows::new(val, 0..m, context)?,
            ))
        }
        None => {
            let n = file.len();
            if validation_from == 0 || validation_from >= n {
                return Err(DataError::Tokens {
                    path: train.to_path_buf(),
                    what: format!(
                        "the validation part must start inside the file's {n} tokens (validation_from = {validation_from})"
                    ),
                });
            }
            Ok((
                Windows::new(file.clone(), 0..validation_from, context)?,
                Windows::new(file, validation_from..n, context)?,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(
        bytes: &[u8],
        format: TokenFormat,
    ) -> (tempfile::TempDir, Result<TokenFile, DataError>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        std::fs::write(&p, bytes).unwrap();
        let f = TokenFile::open(&p, format);
        (dir, f)
    }

    #[test]
    fn every_format_reads_its_ids_little_endian() {
        let bytes = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let (_d, f) = file(&bytes, TokenFormat::Bytes);
        assert_eq!(
            (0..8)
                .map(|i| f.as_ref().unwrap().get(i))
                .collect::<Vec<_>>(),
            bytes.map(u32::from)
        );
        let (_d, f) = file(&bytes, TokenFormat::U16);
        let f = f.unwrap();
        assert_eq!((f.len(), f.get(0), f.get(3)), (4, 0x0201, 0x0807));
        let (_d, f) = file(&bytes, TokenFormat::U32);
        let f = f.unwrap();
        assert_eq!((f.len(), f.get(1)), (2, 0x0807_0605));
        assert_eq!(f.max_id(0..2), 0x0807_0605);
    }

    #[test]
    fn partial_tokens_an_empty_file_and_short_ranges_are_named() {
        let (_d, f) = file(&[1, 2, 3], TokenFormat::U16);
        let e = f.unwrap_err().to_string();
        assert!(e.contains("t.bin") && e.contains("3 bytes"), "{e}");
        let (_d, f) = file(&[], TokenFormat::Bytes);
        assert!(f.is_err());
        let (_d, f) = file(&[0; 10], TokenFormat::Bytes);
        let f = Arc::new(f.unwrap());
        assert!(
            Windows::new(f.clone(), 0..10, 6).is_err(),
            "10 tokens hold no 2 windows of 6"
        );
        assert!(Windows::new(f.clone(), 0..11, 2).is_err(), "past the end");
        assert!(Windows::new(f, 0..10, 0).is_err());
    }

    #[test]
    fn windows_are_shifted_pairs_cut_at_a_seeded_offset_per_epoch() {
        let text: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let (_d, f) = file(&text, TokenFormat::Bytes);
        let w = Windows::new(Arc::new(f.unwrap()), 100..1000, 16).unwrap();
        // 900 tokens: ⌊900/16⌋ − 1 = 55 windows, at any offset in 0..16.
        assert_eq!(w.windows(), 55);
        let device = Device::flex();
        let rows = |seed, epoch| {
            let s = w.assemble(&[0, 54], seed, epoch);
            assert_eq!(s.len(), 2);
            s.rows
        };
        let a = rows(7, 0);
        assert_eq!(a, rows(7, 0), "a function of (seed, epoch)");
        // Window 0 starts at 100 + offset; window 54 at 100 + offset + 54·16, its last id inside.
        let offset = (a[0] as usize + 256 - 100) % 256;
        assert!(offset < 16);
        assert_eq!(a[17] as usize, (100 + offset + 54 * 16) % 256);
        let offsets: std::collections::BTreeSet<u32> = (0..40).map(|e| rows(7, e)[0]).collect();
        assert!(
            offsets.len() > 4,
            "the offset moves between epochs: {offsets:?}"
        );
        // Targets are the inputs shifted by one.
        let b = &w.assemble(&[3], 1, 2).into_pieces(1, &device)[0];
        let host = |t: &Tensor<2, Int>| -> Vec<i64> {
            t.to_data().convert::<i64>().try_into_vec::<i64>().unwrap()
        };
        let (x, y) = (host(&b.tokens), host(&b.targets));
        assert_eq!(x[1..], y[..15]);
        assert_eq!(b.tokens.dims(), [1, 16]);
        // Evaluation: offset 0, every window once, in order.
        let mut seen = Vec::new();
        w.for_each_batch(20, &device, &mut |b, n| {
            let x: Vec<i64> = b
                .tokens
                .to_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap();
            assert_eq!(x.len(), n * 16);
            seen.extend(x.chunks(16).map(|r| r[0]));
        });
        let want: Vec<i64> = (0..55).map(|i| ((100 + i * 16) % 256) as i64).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_text_splits_at_the_validation_start() {
        let (d, _) = file(&[0; 1], TokenFormat::Bytes);
        let p = d.path().join("text.txt");
        std::fs::write(&p, vec![b'a'; 500]).unwrap();
        let (train, val) = splits(&p, None, TokenFormat::Bytes, 400, 8).unwrap();
        assert_eq!((train.windows(), val.windows()), (49, 11));
        assert!(splits(&p, None, TokenFormat::Bytes, 500, 8).is_err());
    }
}
