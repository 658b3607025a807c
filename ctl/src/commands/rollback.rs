//! `berthctl rollback [REVISION]`: asks the agent to re-apply an earlier
//! revision's exact manifest and digests (by default the newest earlier one
//! that completed) and prints the plan of the new revision; `--wait` follows
//! its rollout as `apply --wait` does.

use std::process::ExitCode;

use anyhow::Result;
use berth_core::api::ApplyResponse;
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::plan::print_plan;
use super::{client, parse_timeout};
use crate::cli::Cli;
use crate::client::error_text;

/// The arguments of `berthctl rollback` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Rollback {
    revision: Option<u64>,
    /// Follow the rollout until it completes or fails (non-zero exit on failure).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long.
    #[arg(long, default_value = "5m")]
    timeout: String,
}

/// `POST /v1/rollback`.
pub async fn run(cli: &Cli, args: &Rollback) -> Result<ExitCode> {
    let body = serde_json::json!({ "revision": args.revision });
    let reply = client(cli)?
        .request(
            Method::POST,
            "/v1/rollback",
            Some("application/json"),
            Bytes::from(body.to_string()),
        )
        .await?;
    if !reply.status.is_success() {
        eprintln!("{}", error_text(&reply.body));
        return Ok(ExitCode::FAILURE);
    }
    if cli.json() {
        if !args.wait {
            outln!("{}", String::from_utf8_lossy(&reply.body));
        }
    } else {
        let resp: ApplyResponse = serde_json::from_slice(&reply.body)?;
        print_plan(&resp.plan);
        outln!("rolled back as revision {}", resp.revision.unwrap_or(0));
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let limit = parse_timeout(&args.timeout)?;
    crate::wait::wait_for_rollout(&client(cli)?, limit, cli.json()).await
}
