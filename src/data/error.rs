//! Errors of the data layer: every variant names the file (or directory) and what is wrong.

use std::path::PathBuf;

/// Everything that can go wrong while reading or checking a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A required file does not exist (for IDX files both the `.gz` and the raw name were tried).
    #[error("missing file {}: {what}", path.display())]
    Missing {
        /// The path that was looked for.
        path: PathBuf,
        /// Which file this is and what was tried.
        what: String,
    },
    /// Something other than a file (a directory) is where a data file should be.
    #[error("{} is {kind}, not a file: {what}", path.display())]
    NotAFile {
        /// The path that exists but is not a regular file.
        path: PathBuf,
        /// What it is, e.g. `a directory`.
        kind: String,
        /// Which file was expected there.
        what: String,
    },
    /// Reading a file failed for a reason other than its absence. (The I/O error is part of
    /// the message and deliberately not a `source`, so `{:#}` does not print it twice.)
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file or directory being read (not-found errors are [`DataError::Missing`] instead).
        path: PathBuf,
        /// The OS error, shown in the message rather than as a `source`.
        error: std::io::Error,
    },
    /// The file starts with the gzip magic bytes but does not decompress.
    #[error("corrupt gzip stream in {}: {error}", path.display())]
    Gzip {
        /// The compressed file as found on disk.
        path: PathBuf,
        /// The decompressor's error.
        error: std::io::Error,
    },
    /// A gzip file decompresses to more than a data file of this kind can plausibly hold.
    #[error("{} decompresses to more than {limit} bytes, more than its header ({header}) allows: not an IDX file, or a decompression bomb", path.display())]
    TooLarge {
        /// The gzip file that inflated past `limit`.
        path: PathBuf,
        /// The decoded header, e.g. `60000 images of 28x28` or `not an IDX header`.
        header: String,
        /// Bytes read before giving up.
        limit: u64,
    },
    /// An IDX images header with a zero dimension.
    #[error("{}: its header says {header}; images must be at least 1x1", path.display())]
    BadDimensions {
        /// The IDX images file (gzip or raw).
        path: PathBuf,
        /// Count and dimensions from the header, e.g. `10 images of 0x28`.
        header: String,
    },
    /// The IDX magic number is not the one expected for this kind of file.
    #[error("wrong magic number in {}: expected {expected:#010x} ({expected}), found {found:#010x} ({found})", path.display())]
    BadMagic {
        /// The IDX images or labels file; the magic is read after gzip decoding.
        path: PathBuf,
        /// The magic number this file must have.
        expected: u32,
        /// The magic number it has.
        found: u32,
    },
    /// The header's counts and dimensions disagree with the file's length.
    #[error("{} is {found} bytes but its header ({header}) implies {expected} bytes: {}", path.display(), if found < expected { "file truncated" } else { "trailing bytes" })]
    LengthMismatch {
        /// The file (decoded bytes for gzip files).
        path: PathBuf,
        /// The header summary, e.g. `10000 images of 28x28`.
        header: String,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes actually present.
        found: u64,
    },
    /// The file is too short to hold its header.
    #[error("{} is {found} bytes, too short for its {needed}-byte header", path.display())]
    ShortHeader {
        /// The IDX file; its length is counted after gzip decoding.
        path: PathBuf,
        /// Header length in bytes: 16 for images, 8 for labels.
        needed: usize,
        /// Bytes present after decoding, fewer than `needed`.
        found: usize,
    },
    /// An images file and its labels file hold different numbers of samples.
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        /// The MNIST images file as located (`.gz` or raw).
        images_path: PathBuf,
        /// The MNIST labels file as located (`.gz` or raw).
        labels_path: PathBuf,
        /// Image count from the images file's header.
        images: u64,
        /// Label count from the labels file's header.
        labels: u64,
    },
    /// A label is not below the number of classes.
    #[error("label {label} of sample {index} in {} is out of range (must be < {num_classes})", path.display())]
    LabelOutOfRange {
        /// The IDX labels file or CIFAR-10 batch file.
        path: PathBuf,
        /// Sample index within the file.
        index: u64,
        /// The first label out of range (later ones are not checked).
        label: u8,
        /// Classes of the data set (10 for MNIST and CIFAR-10): labels must be below it.
        num_classes: usize,
    },
    /// A CIFAR-10 file's length is not a whole number of 3073-byte records.
    #[error("{} is {len} bytes, not a multiple of {record_len}: record {record} is truncated ({partial} of {record_len} bytes)", path.display())]
    TruncatedRecord {
        /// The CIFAR-10 batch file (`data_batch_<n>.bin` or `test_batch.bin`).
        path: PathBuf,
        /// File length in bytes.
        len: u64,
        /// Record length (3073 for CIFAR-10).
        record_len: u64,
        /// Index of the truncated record within the file (0-based).
        record: u64,
        /// Bytes of that record present.
        partial: u64,
    },
    /// `data.dataset = "custom"` names data given in code to the library's `Trainer`, which no
    /// command can load from files.
    #[error(
        "data.dataset = \"custom\" is a data set given in code to noisescale::Trainer: no files to load; train, evaluate or measure it through the library"
    )]
    GivenInCode,
    /// `data.dataset = "tokens"` where a command needs images with class labels.
    #[error(
        "data.dataset = \"tokens\" is a token stream for language models (model.kind = \"gpt\"), not images with labels"
    )]
    NotImages,
    /// A NumPy `.npy` file or `.npz` archive that cannot be read as noisescale reads them.
    #[error("{}: {what}", path.display())]
    Npy {
        /// The file, or `ARCHIVE.npz:MEMBER.npy`.
        path: PathBuf,
        /// What is wrong (magic, version, dtype, order, shape larger than the data, ...).
        what: String,
    },
    /// An image of an image folder that cannot be used: not PNG or JPEG, corrupt, too large, of
    /// another size than the others; or a folder without classes.
    #[error("{}: {what}", path.display())]
    Image {
        /// The image file or folder.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A token file or window setting that cannot be used.
    #[error("{}: {what}", path.display())]
    Tokens {
        /// The token file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A split holds no samples: a run could neither train on it nor report a test accuracy.
    #[error("{} holds no samples: {what}", path.display())]
    NoSamples {
        /// The file (or, for CIFAR-10 training data, the directory of batch files) that is empty.
        path: PathBuf,
        /// Which split it is and what is needed.
        what: String,
    },
    /// A CIFAR-10 directory holds no `data_batch_*.bin` file.
    #[error("no data_batch_*.bin files in {}", dir.display())]
    NoDataBatches {
        /// The CIFAR-10 directory, searched without its subdirectories.
        dir: PathBuf,
    },
    /// `inspect` found neither MNIST nor CIFAR-10 in a directory.
    #[error("no MNIST or CIFAR-10 files found in {} or its subdirectories", dir.display())]
    NoDataset {
        /// The directory given to `inspect`; its immediate subdirectories were searched too.
        dir: PathBuf,
    },
}
