//! `berthctl man-pages DIR` (hidden; `scripts/install.sh` runs it): writes
//! berthctl's man pages, generated from its clap definition, into DIR and
//! prints each file written.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::cli::Cli;

/// The arguments of `berthctl man-pages` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct ManPages {
    dir: PathBuf,
}

/// Writes `berthctl.1` and one `berthctl-COMMAND.1` per command.
pub fn run(args: &ManPages) -> Result<ExitCode> {
    for path in crate::docs::man_pages::<Cli>(&args.dir)? {
        outln!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
