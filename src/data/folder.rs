//! Image folders, as torchvision's `ImageFolder` reads them: `DIR/train/<class>/*.png|jpg|jpeg`
//! and `DIR/test/<class>/*`, classes in sorted order of their folder names, files in sorted
//! order within a class. Decoded with the `image` crate (PNG, JPEG), to grey (one channel) when
//! every image of the set is grey and to RGB otherwise (alpha dropped), then to one size: the
//! configured `data.image_size = [h, w]` (`data.resize`: `stretch`, or `center-crop` to the
//! aspect ratio first) or, unset, the size every image already has. Without a `test/` folder,
//! `data.validation_fraction` of the training images (chosen by the run's seed) are held out
//! for evaluation.
//!
//! No allocation is sized by a header before it is checked: each image's dimensions are read
//! first and refused above [`MAX_SIDE`] pixels a side, and the decoder runs under a memory limit.

use super::{DataError, Dataset, Split};
use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The largest width or height of an image read (pixels).
pub const MAX_SIDE: u32 = 8192;

/// The decoder's memory limit per image (bytes).
const MAX_DECODE_BYTES: u64 = 256 << 20;

/// How images of another size are brought to `data.image_size`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Scaled to the size, aspect ratio not kept (bilinear).
    #[default]
    Stretch,
    /// The largest centred crop of the target's aspect ratio, then scaled (torchvision's
    /// `Resize` + `CenterCrop` in one step).
    CenterCrop,
}

/// How a folder's images become one tensor shape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FolderOptions {
    /// `[height, width]` every image is brought to; `None`: all must have one size already.
    pub image_size: Option<[usize; 2]>,
    /// How (see [`Resize`]).
    pub resize: Resize,
    /// Without `test/`: the fraction of training images held out for evaluation.
    pub validation_fraction: f64,
    /// Chooses the held-out images.
    pub seed: u64,
}

fn bad(path: &Path, what: impl Into<String>) -> DataError {
    DataError::Image {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| super::idx::io_error(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Image files with their class index.
pub type Labelled = Vec<(PathBuf, u8)>;

/// The classes (sorted folder names) of `split_dir` and every image file with its class index.
pub fn list(split_dir: &Path) -> Result<(Vec<String>, Labelled), DataError> {
    let classes: Vec<PathBuf> = sorted_entries(split_dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if classes.is_empty() {
        return Err(bad(
            split_dir,
            "no class folders (DIR/train/<class>/<image>)",
        ));
    }
    if classes.len() > 256 {
        return Err(bad(
            split_dir,
            format!("{} class folders: at most 256", classes.len()),
        ));
    }
    let mut files = Vec::new();
    for (c, dir) in classes.iter().enumerate() {
        for f in sorted_entries(dir)?.into_iter().filter(|p| is_image(p)) {
            files.push((f, c as u8));
        }
    }
    let names = classes
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    Ok((names, files))
}

/// Decodes one image's bytes (`path` names it in errors): dimensions checked before decoding.
pub fn decode(bytes: &[u8], path: &Path) -> Result<DynamicImage, DataError> {
    let reader = || {
        ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(path, format!("unreadable: {e}")))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| bad(path, format!("not a PNG or JPEG image: {e}")))?;
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(bad(
            path,
            format!("{w}x{h} pixels: each side must be 1..={MAX_SIDE}"),
        ));
    }
    let mut r = reader()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    r.limits(limits);
    r.decode()
        .map_err(|e| bad(path, format!("does not decode: {e}")))
}

/// `img` at `size` (`[h, w]`) as `resize` says.
fn fit(img: DynamicImage, [h, w]: [usize; 2], resize: Resize) -> DynamicImage {
    let (h, w) = (h as u32, w as u32);
    if img.width() == w && img.height() == h {
        return img;
    }
    let img = match resize {
        Resize::Stretch => img,
        Resize::CenterCrop => {
            // The largest centred crop with the target's aspect ratio.
            let (iw, ih) = (u64::from(img.width()), u64::from(img.height()));
            let (cw, ch) = if iw * u64::from(h) > ih * u64::from(w) {
                ((ih * u64::from(w) / u64::from(h)).max(1), ih)
            } else {
                (iw, (iw * u64::from(h) / u64::from(w)).max(1))
            };
            img.crop_imm(
                ((iw - cw) / 2) as u32,
                ((ih - ch) / 2) as u32,
                cw as u32,
                ch as u32,
            )
        }
    };
    img.resize_exact(w, h, FilterType::Triangle)
}

/// Reads the images `files` into a [`Dataset`] of `classes` classes (`CHW`, `u8`).
fn read_set(
    name: &str,
    files: &[(PathBuf, u8)],
    classes: usize,
    opts: &FolderOptions,
    on_file: &mut dyn FnMut(&Path, &[u8]),
) -> Result<Dataset, DataError> {
    let mut decoded = Vec::with_capacity(files.len());
    for (path, label) in files {
        let bytes = std::fs::read(path).map_err(|e| super::idx::io_error(path, e))?;
        on_file(path, &bytes);
        let img = decode(&bytes, path)?;
        let img = match opts.image_size {
            Some(size) => fit(img, size, opts.resize),
            None => img,
        };
        decoded.push((path, img, *label));
    }
    let Some((first, img0, _)) = decoded.first() else {
        return Err(DataError::NoSamples {
            path: PathBuf::from(name),
            what: format!("{name}: no .png, .jpg or .jpeg files in the class folders"),
        });
    };
    let (width, height) = (img0.width() as usize, img0.height() as usize);
    let grey = decoded.iter().all(|(_, i, _)| !i.color().has_color());
    let channels = if grey { 1 } else { 3 };
    let mut images = Vec::with_capacity(decoded.len() * channels * height * width);
    let mut labels = Vec::with_capacity(decoded.len());
    for (path, img, label) in &decoded {
        if (img.width() as usize, img.height() as usize) != (width, height) {
            return Err(bad(
                path,
                format!(
                    "{}x{} pixels, but {} has {width}x{height}: set data.image_size to bring every image to one size",
                    img.width(),
                    img.height(),
                    first.display()
                ),
            ));
        }
        if grey {
            images.extend_from_slice(img.to_luma8().as_raw());
        } else {
            // HWC interleaved → CHW planes.
            let rgb = img.to_rgb8();
            for c in 0..3 {
                images.extend(rgb.as_raw().iter().skip(c).step_by(3));
            }
        }
        labels.push(*label);
    }
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

/// Reads the image folder `dir` (see the module docs), passing each file's bytes to `on_file`.
pub fn load_with(
    dir: &Path,
    opts: &FolderOptions,
    on_file: &mut dyn FnMut(&Path, &[u8]),
) -> Result<Split, DataError> {
    let (classes, mut train_files) = list(&dir.join("train"))?;
    let test_dir = dir.join("test");
    let test_files = if test_dir.is_dir() {
        let (test_classes, files) = list(&test_dir)?;
        if let Some(c) = test_classes.iter().find(|c| !classes.contains(c)) {
            return Err(bad(
                &test_dir.join(c),
                format!("class {c:?} is not among the training classes {classes:?}"),
            ));
        }
        // Test labels by the training classes' order.
        files
            .into_iter()
            .map(|(p, l)| {
                let name = &test_classes[l as usize];
                let index = classes.iter().position(|c| c == name).unwrap_or(0);
                (p, index as u8)
            })
            .collect()
    } else {
        let f = opts.validation_fraction;
        if !(f > 0.0 && f < 1.0) {
            return Err(bad(
                dir,
                format!(
                    "no test/ folder: set data.validation_fraction in (0, 1) to hold out part of train/ for evaluation (it is {f})"
                ),
            ));
        }
        // A seeded shuffle, then the held-out part sorted back into file order.
        let mut order: Vec<usize> = (0..train_files.len()).collect();
        order.shuffle(&mut super::derive_rng(opts.seed, 0, 0x76616c, 0));
        let held =
            ((train_files.len() as f64 * f).round() as usize).clamp(1, train_files.len() - 1);
        let mut held_idx: Vec<usize> = order[..held].to_vec();
        held_idx.sort_unstable();
        let mut keep = vec![true; train_files.len()];
        held_idx.iter().for_each(|&i| keep[i] = false);
        let test: Vec<_> = held_idx.iter().map(|&i| train_files[i].clone()).collect();
        let mut i = 0;
        train_files.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        test
    };
    let k = classes.len();
    Ok(Split {
        train: read_set("folder-train", &train_files, k, opts, on_file)?,
        test: read_set("folder-test", &test_files, k, opts, on_file)?,
    })
}

/// The number of training images of the folder `dir` (by file names, none decoded), less the
/// held-out fraction where there is no `test/`.
pub fn train_count(dir: &Path, validation_fraction: f64) -> Result<usize, DataError> {
    let (_, files) = list(&dir.join("train"))?;
    if dir.join("test").is_dir() || files.len() < 2 {
        return Ok(files.len());
    }
    let held =
        ((files.len() as f64 * validation_fraction).round() as usize).clamp(1, files.len() - 1);
    Ok(files.len() - held)
}

/// Whether `dir` looks like an image folder: a `train/` holding at least one folder.
pub fn looks_like(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("train"))
        .map(|mut it| it.any(|e| e.is_ok_and(|e| e.path().is_dir())))
        .unwrap_or(false)
}
