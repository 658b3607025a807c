//! `berthctl rollback [REVISION]`: asks the agent to re-apply an earlier
//! revision's exact manifest and digests (by default the newest earlier one
//! that completed) and prints the plan of the new revision.

use std::process::ExitCode;

use anyhow::Result;
use berth_core::api::ApplyResponse;
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::client;
use super::plan::print_plan;
use crate::cli::Cli;
use crate::client::error_text;

/// The arguments of `berthctl rollback` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Rollback {
    revision: Option<u64>,
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
        outln!("{}", String::from_utf8_lossy(&reply.body));
    } else {
        let resp: ApplyResponse = serde_json::from_slice(&reply.body)?;
        print_plan(&resp.plan);
        outln!("rolled back as revision {}", resp.revision.unwrap_or(0));
    }
    Ok(ExitCode::SUCCESS)
}
