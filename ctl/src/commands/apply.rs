//! `berthctl apply`: sends a manifest to the agent as a new revision and
//! prints the plan; a manifest that leaves out running services is refused
//! unless `--prune` (on a terminal it asks); `--wait` follows the rollout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use berth_core::api::{ApplyResponse, ErrorBody};
use clap::Args;

use super::plan::{print_all, put_manifest};
use super::{client, parse_timeout, read_manifest};
use crate::cli::Cli;
use crate::client::error_text;

/// The arguments of `berthctl apply` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Apply {
    #[arg(short = 'f', long = "file")]
    path: PathBuf,
    /// Show the plan without recording anything.
    #[arg(long)]
    dry_run: bool,
    /// Remove services the current revision runs that the manifest leaves
    /// out (without it, apply refuses and names them; on a terminal it asks).
    #[arg(long)]
    prune: bool,
    /// Follow the rollout until it completes or fails (non-zero exit on failure).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long.
    #[arg(long, default_value = "5m")]
    timeout: String,
}

/// Applies, then with `--wait` follows the rollout.
pub async fn run(cli: &Cli, args: &Apply) -> Result<ExitCode> {
    let code = apply(cli, &args.path, args.dry_run, args.prune).await?;
    if code != ExitCode::SUCCESS || args.dry_run || !args.wait {
        return Ok(code);
    }
    let limit = parse_timeout(&args.timeout)?;
    crate::wait::wait_for_rollout(&client(cli)?, limit, cli.json()).await
}

/// The services a `would_remove` refusal names, if `body` is one.
fn would_remove(body: &[u8]) -> Option<Vec<String>> {
    let e: ErrorBody = serde_json::from_slice(body).ok()?;
    if e.error.code != "would_remove" {
        return None;
    }
    serde_json::from_value(e.error.details.get("services")?.clone()).ok()
}

/// Asks on the terminal whether to remove `services`; false when stdin or
/// stderr is not a terminal.
fn confirm_removal(services: &[String]) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return false;
    }
    eprint!(
        "this manifest removes {}. Remove? [y/N] ",
        services.join(", ")
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes")
}

async fn apply(cli: &Cli, path: &Path, dry_run: bool, prune: bool) -> Result<ExitCode> {
    let files = read_manifest(path)?;
    let mut reply = put_manifest(cli, &files, dry_run, prune).await?;
    if reply.status.as_u16() == 409 && !cli.json() && path != Path::new("-") {
        if let Some(services) = would_remove(&reply.body) {
            if confirm_removal(&services) {
                reply = put_manifest(cli, &files, dry_run, true).await?;
            }
        }
    }
    if !reply.status.is_success() {
        if cli.json() {
            outln!("{}", String::from_utf8_lossy(&reply.body));
        } else {
            eprintln!("{}", error_text(&reply.body));
        }
        return Ok(ExitCode::FAILURE);
    }
    if cli.json() {
        outln!("{}", String::from_utf8_lossy(&reply.body));
        return Ok(ExitCode::SUCCESS);
    }
    let resp: ApplyResponse =
        serde_json::from_slice(&reply.body).context("decoding the agent's plan")?;
    print_all(&resp.changes, &resp.plan);
    if dry_run {
        outln!("dry run: nothing recorded");
    } else if resp.unchanged {
        outln!(
            "unchanged: revision {} already has this manifest",
            resp.revision.unwrap_or(0)
        );
    } else {
        outln!("applied as revision {}", resp.revision.unwrap_or(0));
    }
    Ok(ExitCode::SUCCESS)
}
