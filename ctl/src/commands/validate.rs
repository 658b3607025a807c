//! `berthctl validate -f PATH`: checks a manifest file or directory offline
//! with `berth-core`'s rules, no agent needed; every problem names file,
//! line and column. Exit 1 when invalid.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use berth_core::manifest::Manifest;
use clap::Args;

use super::read_manifest;
use crate::cli::Cli;

/// The arguments of `berthctl validate` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Validate {
    #[arg(short = 'f', long = "file")]
    path: PathBuf,
}

/// Prints `valid (…)` or the problems (stderr; stdout with `-o json`).
pub fn run(cli: &Cli, args: &Validate) -> Result<ExitCode> {
    let path = &args.path;
    let files = read_manifest(path)?;
    match Manifest::from_sources(&files) {
        Ok(m) => {
            if cli.json() {
                outln!(
                    "{}",
                    serde_json::json!({ "valid": true, "services": m.services.keys().collect::<Vec<_>>() })
                );
            } else {
                let plural = |n: usize, one: &str, many: &str| {
                    format!("{n} {}", if n == 1 { one } else { many })
                };
                outln!(
                    "{}: valid ({} in {})",
                    path.display(),
                    plural(m.services.len(), "service", "services"),
                    plural(files.len(), "file", "files")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if cli.json() {
                outln!(
                    "{}",
                    serde_json::json!({ "valid": false, "problems": e.problems() })
                );
            } else {
                eprintln!("{e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
