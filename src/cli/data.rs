//! `noisescale data ...`: what is in a data directory or a token stream.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

use crate::data::tokens::{TokenConfig, TokenFormat};

/// `noisescale data ...`.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Counts per split and class, image shape, mean/std and checksums of a data directory; of
    /// a token stream (a file, or a directory of train.bin and val.bin, with --context): tokens,
    /// windows, ids, unigram entropy and checksums.
    Inspect {
        /// Directory holding MNIST and/or CIFAR-10 files (or their parent), NumPy arrays or an
        /// image folder; or a token file.
        dir: PathBuf,
        /// Print the report as pretty JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Read `dir` as a token stream cut into windows of this many tokens.
        #[arg(long)]
        context: Option<usize>,
        /// The token stream's format: bytes (a text; the default for a file) or u16/u32 ids (the
        /// default for a directory of train.bin and val.bin, as nanoGPT writes them).
        #[arg(long, value_enum)]
        token_format: Option<crate::data::tokens::TokenFormat>,
        /// For one token file: the token where its validation part starts.
        #[arg(long)]
        validation_from: Option<usize>,
    },
}

/// Runs a `data` command.
pub(super) fn run(command: DataCommand) -> Result<()> {
    let DataCommand::Inspect {
        dir,
        json,
        context,
        token_format,
        validation_from,
    } = command;
    let print = |json_text: String, text: String| {
        if json {
            println!("{json_text}");
        } else {
            print!("{text}");
        }
    };
    let tokens = context.is_some() || dir.is_file() || dir.join("train.bin").is_file();
    if tokens {
        // nanoGPT writes u16 ids into train.bin and val.bin; a single file is most often a text.
        let default = if dir.is_dir() {
            TokenFormat::U16
        } else {
            TokenFormat::Bytes
        };
        let config = TokenConfig {
            format: token_format.unwrap_or(default),
            context: context.context("a token stream needs --context")?,
            validation_from,
        };
        let report = crate::data::inspect_tokens(&dir, &config)?;
        print(serde_json::to_string_pretty(&report)?, report.to_string());
        return Ok(());
    }
    let report = crate::data::inspect(&dir)?;
    print(serde_json::to_string_pretty(&report)?, report.to_string());
    Ok(())
}
