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
    /// Follow the rollout until it completes or fails (non-zero exit on
    /// failure); on a fleet agent, first wait for a rollout slot.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (the slot wait included).
    #[arg(long, default_value = "5m")]
    timeout: String,
}

/// How often `apply --wait` asks a fleet agent again while the manifest
/// waits for a rollout slot (the agent keeps the host's place in the slot
/// queue only while it is asked).
const FLEET_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Applies, then with `--wait` follows the rollout. With `--wait`, a fleet
/// agent's `fleet_wait` refusal is not final: the apply is sent again every
/// [`FLEET_RETRY`] (each new reason printed once) until a slot is granted or
/// `--timeout` runs out, which then covers the rollout too.
pub async fn run(cli: &Cli, args: &Apply) -> Result<ExitCode> {
    let limit = parse_timeout(&args.timeout)?;
    let deadline = tokio::time::Instant::now() + limit;
    let retry = args.wait && !args.dry_run;
    let code = apply(
        cli,
        &args.path,
        args.dry_run,
        args.prune,
        retry.then_some(deadline),
    )
    .await?;
    if code != ExitCode::SUCCESS || args.dry_run || !args.wait {
        return Ok(code);
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    crate::wait::wait_for_rollout(&client(cli)?, left, cli.json()).await
}

/// The error code of an agent's refusal (`fleet_wait`, `would_remove`, …).
fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|e| e.error.code)
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

/// Sends the manifest and prints the answer. With `fleet_retry`, a
/// `fleet_wait` refusal is retried until that deadline.
async fn apply(
    cli: &Cli,
    path: &Path,
    dry_run: bool,
    mut prune: bool,
    fleet_retry: Option<tokio::time::Instant>,
) -> Result<ExitCode> {
    let files = read_manifest(path)?;
    let mut reply = put_manifest(cli, &files, dry_run, prune).await?;
    if reply.status.as_u16() == 409 && !cli.json() && path != Path::new("-") {
        if let Some(services) = would_remove(&reply.body) {
            if confirm_removal(&services) {
                prune = true;
                reply = put_manifest(cli, &files, dry_run, prune).await?;
            }
        }
    }
    let mut said = String::new();
    while let Some(deadline) = fleet_retry {
        if reply.status.as_u16() != 409
            || error_code(&reply.body).as_deref() != Some("fleet_wait")
            || tokio::time::Instant::now() + FLEET_RETRY > deadline
        {
            break;
        }
        let reason = error_text(&reply.body);
        if reason != said && !cli.json() {
            eprintln!("{reason} (asking again until --timeout)");
        }
        said = reason;
        tokio::time::sleep(FLEET_RETRY).await;
        reply = put_manifest(cli, &files, dry_run, prune).await?;
    }
    if !reply.status.is_success() {
        if cli.json() {
            outln!("{}", String::from_utf8_lossy(&reply.body));
        } else {
            eprintln!("{}", error_text(&reply.body));
            if fleet_retry.is_none()
                && !dry_run
                && error_code(&reply.body).as_deref() == Some("fleet_wait")
            {
                eprintln!(
                    "hint: nothing applies it later by itself; the host keeps its place in the \
                     fleet's queue only while the apply is repeated: `berthctl apply --wait` \
                     repeats it until a slot is granted"
                );
            }
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
