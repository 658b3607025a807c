//! `berthctl diff`: the agent's dry-run plan, shown as changes (with old ->
//! new values) and steps. With `--exit-code`: 1 when anything changes, 0
//! when not, 2 on errors (as `git diff --exit-code` and `kubectl diff`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use berth_core::api::ApplyResponse;
use berth_core::plan::ChangeKind;
use clap::Args;

use super::plan::{print_all, put_manifest};
use super::read_manifest;
use crate::cli::Cli;
use crate::client::error_text;

/// The arguments of `berthctl diff` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Diff {
    #[arg(short = 'f', long = "file")]
    path: PathBuf,
    /// Exit 1 when the manifest changes anything, 0 when not, 2 on errors
    /// (as `git diff --exit-code` and `kubectl diff`).
    #[arg(long)]
    exit_code: bool,
}

/// Prints the dry-run plan; the exit code as the module doc says.
pub async fn run(cli: &Cli, args: &Diff) -> Result<ExitCode> {
    let exit_code = args.exit_code;
    let failed = if exit_code {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    };
    let files = match read_manifest(&args.path) {
        Ok(f) => f,
        Err(e) if exit_code => {
            eprintln!("error: {e:#}");
            return Ok(failed);
        }
        Err(e) => return Err(e),
    };
    let reply = match put_manifest(cli, &files, true, true).await {
        Ok(r) => r,
        Err(e) if exit_code => {
            eprintln!("error: {e:#}");
            return Ok(failed);
        }
        Err(e) => return Err(e),
    };
    if !reply.status.is_success() {
        if cli.json() {
            outln!("{}", String::from_utf8_lossy(&reply.body));
        } else {
            eprintln!("{}", error_text(&reply.body));
        }
        return Ok(failed);
    }
    let resp: ApplyResponse =
        serde_json::from_slice(&reply.body).context("decoding the agent's plan")?;
    if cli.json() {
        outln!("{}", String::from_utf8_lossy(&reply.body));
    } else {
        print_all(&resp.changes, &resp.plan);
    }
    let changed = resp
        .changes
        .iter()
        .any(|c| c.change != ChangeKind::Unchanged);
    Ok(if exit_code && changed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
