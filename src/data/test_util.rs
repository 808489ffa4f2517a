//! Helpers shared by the data module's acceptance tests (beside each module, in its `tests`
//! module). Real data is read from `$NOISESCALE_DATA`, else
//! `CARGO_MANIFEST_DIR/../shared/data`; corrupted copies go to temporary directories.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{DatasetKind, Split, load};

pub(super) fn data_dir() -> PathBuf {
    std::env::var_os("NOISESCALE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")))
}

pub(super) fn mnist() -> &'static Split {
    static S: OnceLock<Split> = OnceLock::new();
    S.get_or_init(|| load(DatasetKind::Mnist, &data_dir()).expect("load MNIST"))
}

pub(super) fn cifar() -> &'static Split {
    static S: OnceLock<Split> = OnceLock::new();
    S.get_or_init(|| load(DatasetKind::Cifar10, &data_dir()).expect("load CIFAR-10"))
}

pub(super) fn mnist_file(stem: &str) -> PathBuf {
    data_dir().join("mnist").join(format!("{stem}.gz"))
}

pub(super) fn cifar_file(name: &str) -> PathBuf {
    data_dir().join("cifar10-subset").join(name)
}

pub(super) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub(super) fn link(dir: &Path, target: &Path) {
    std::os::unix::fs::symlink(target, dir.join(target.file_name().unwrap())).unwrap();
}
