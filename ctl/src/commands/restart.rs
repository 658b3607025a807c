//! `berthctl restart SERVICE`: asks the agent to replace a service's replicas
//! with new ones of the same spec through its health-gated rollout; `--wait`
//! follows the rollout as `apply --wait` does.

use std::process::ExitCode;

use anyhow::Result;
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::{client, parse_timeout};
use crate::cli::Cli;
use crate::client::{error_text, query_escape};

/// The arguments of `berthctl restart` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Restart {
    service: String,
    /// Follow the rollout until it completes or fails (non-zero exit on failure).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long.
    #[arg(long, default_value = "5m")]
    timeout: String,
}

/// `POST /v1/services/SERVICE/restart`, then with `--wait` follows the rollout.
pub async fn run(cli: &Cli, args: &Restart) -> Result<ExitCode> {
    let reply = client(cli)?
        .request(
            Method::POST,
            &format!("/v1/services/{}/restart", query_escape(&args.service)),
            None,
            Bytes::new(),
        )
        .await?;
    if !reply.status.is_success() {
        eprintln!("{}", error_text(&reply.body));
        return Ok(ExitCode::FAILURE);
    }
    if cli.json() && !args.wait {
        outln!("{}", String::from_utf8_lossy(&reply.body));
    } else if !cli.json() {
        outln!("restarting {}", args.service);
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let limit = parse_timeout(&args.timeout)?;
    crate::wait::wait_for_rollout(&client(cli)?, limit, cli.json()).await
}
