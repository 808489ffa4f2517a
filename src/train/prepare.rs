//! The data a run trains and evaluates on.

use crate::config::RunConfig;
use crate::data::tokens::Windows;
use crate::data::{self, DataError, Dataset, DatasetKind, EvalSet, Normalizer, Split, TrainSet};
use crate::units::Samples;
use anyhow::{Context, Result};
use std::sync::Arc;

/// Training and test data prepared for a run.
pub struct Prepared {
    /// Training set after `data.train_subset`, shared with the loader threads.
    pub train: Arc<Dataset>,
    /// Test set after `data.test_subset`, evaluated in file order.
    pub test: Arc<Dataset>,
    /// Per-channel normalisation from the training set.
    pub normalizer: Normalizer,
}

/// A token stream's windows for a language-model run.
pub struct TokenData {
    /// Training windows (a seeded offset each epoch).
    pub train: Windows,
    /// The validation windows, evaluated at epoch ends.
    pub eval: Windows,
    /// `train.eval_subset` of them spread evenly, for the evaluations within epochs.
    pub probe: Windows,
}

/// A built-in run's data, loaded: images with class labels, or a token stream.
pub enum Loaded {
    /// Images for the built-in classifiers.
    Images(Prepared),
    /// Windows of a token stream for the language model.
    Tokens(TokenData),
}

impl Loaded {
    /// The training-set size N.
    pub fn train_size(&self) -> Samples {
        match self {
            Loaded::Images(p) => p.train.samples(),
            Loaded::Tokens(t) => Samples(TrainSet::len(&t.train) as u64),
        }
    }

    /// Training and evaluation samples.
    pub fn sizes(&self) -> (usize, usize) {
        match self {
            Loaded::Images(p) => (p.train.len(), p.test.len()),
            Loaded::Tokens(t) => (TrainSet::len(&t.train), EvalSet::len(&t.eval)),
        }
    }
}

/// Loads the data a config names: [`prepare_data`]'s images, or a token stream's windows.
pub fn load_data(config: &RunConfig) -> Result<Loaded> {
    if config.data.dataset != DatasetKind::Tokens {
        return prepare_data(config).map(Loaded::Images);
    }
    let (train, eval) = open_tokens(config)?;
    let probe = eval.spread(config.train.eval_subset);
    Ok(Loaded::Tokens(TokenData { train, eval, probe }))
}

/// The training and validation windows of a `tokens` config.
fn open_tokens(config: &RunConfig) -> Result<(Windows, Windows)> {
    let d = &config.data;
    let t = d.tokens.as_ref().context(
        "data.dataset = \"tokens\" needs a [data.tokens] table: context, and format and validation_from as the file needs",
    )?;
    t.open(&d.dir)
        .with_context(|| format!("opening the token stream {}", d.dir.display()))
}

/// The size of a set of `len` samples under a `data.*_subset` of `n` (0: all of them).
fn subset_len(len: usize, n: usize) -> usize {
    if n > 0 { n.min(len) } else { len }
}

fn take_first(ds: &mut Dataset, n: usize) {
    let n = subset_len(ds.len(), n);
    if n < ds.len() {
        let img = ds.image_len();
        ds.images.truncate(n * img);
        ds.labels.truncate(n);
    }
}

/// Loads the data set a config names (`data_dir` overrides `data.dir`), applying the subsets.
pub fn prepare_data(config: &RunConfig) -> Result<Prepared> {
    let d = &config.data;
    let Split {
        mut train,
        mut test,
    } = match d.dataset {
        DatasetKind::Synthetic => {
            let s = &d.synthetic;
            let [c, h, w] = s.shape;
            data::synthetic(s.train, s.test, s.classes, c, h, w, config.seed)
        }
        DatasetKind::ImageFolder => {
            data::folder::load_with(&d.dir, &config.folder_options(), &mut |_, _| {})
                .with_context(|| format!("loading the image folder {}", d.dir.display()))?
        }
        kind => data::load(kind, &d.dir)
            .with_context(|| format!("loading {kind} from {}", d.dir.display()))?,
    };
    take_first(&mut train, d.train_subset);
    take_first(&mut test, d.test_subset);
    let normalizer = Normalizer::from_dataset(&train);
    Ok(Prepared {
        train: Arc::new(train),
        test: Arc::new(test),
        normalizer,
    })
}

/// The training-set size N a run of `config` would train on, found without loading the images
/// (the data's labels or file sizes), for planning its schedule. Where the data is not at hand,
/// N is the published data set's and the note says so.
pub fn planned_train_size(config: &RunConfig) -> Result<(Samples, Option<String>)> {
    let d = &config.data;
    let (full, note) = match d.dataset {
        DatasetKind::Synthetic => (Samples(d.synthetic.train as u64), None),
        DatasetKind::ImageFolder => {
            let n = data::folder::train_count(&d.dir, d.validation_fraction)
                .with_context(|| format!("sizing the image folder {}", d.dir.display()))?;
            (Samples(n as u64), None)
        }
        DatasetKind::Tokens => (Samples(open_tokens(config)?.0.windows() as u64), None),
        kind => match data::train_size(kind, &d.dir) {
            Ok(n) => (n, None),
            Err(DataError::Missing { .. } | DataError::NoDataBatches { .. })
                if kind.published_train_size().is_some() =>
            {
                let n = kind.published_train_size().unwrap_or_default();
                let note = format!(
                    "{kind}'s published size: no {kind} data in {}",
                    d.dir.display()
                );
                (n, Some(note))
            }
            Err(e) => {
                return Err(e).with_context(|| format!("sizing {kind} in {}", d.dir.display()));
            }
        },
    };
    let n = subset_len(full.0 as usize, d.train_subset);
    Ok((Samples(n as u64), note))
}
