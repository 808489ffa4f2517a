//! Run configurations shipped with the crate (`presets/*.toml`), compiled into the binary so
//! that `--preset NAME` works from any directory.

/// `(name, TOML)` of every preset, the default (`mnist`) first.
pub const PRESETS: &[(&str, &str)] = &[
    ("mnist", include_str!("../presets/mnist.toml")),
    (
        "cifar10-subset",
        include_str!("../presets/cifar10-subset.toml"),
    ),
    (
        "paper-cifar10",
        include_str!("../presets/paper-cifar10.toml"),
    ),
    ("synthetic", include_str!("../presets/synthetic.toml")),
    ("lm", include_str!("../presets/lm.toml")),
];

/// The TOML of a preset.
pub fn preset(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The names of all presets, for error messages.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}
