//! `berthctl inspect CONTAINER`: everything the agent knows about one
//! container (id or unique prefix), as pretty-printed JSON in every output
//! format.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::client;
use crate::cli::Cli;
use crate::client::error_text;

/// The arguments of `berthctl inspect` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Inspect {
    container: String,
}

/// `GET /v1/containers/ID`, pretty-printed.
pub async fn run(cli: &Cli, args: &Inspect) -> Result<ExitCode> {
    let reply = client(cli)?
        .request(
            Method::GET,
            &format!("/v1/containers/{}", args.container),
            None,
            Bytes::new(),
        )
        .await?;
    if !reply.status.is_success() {
        bail!("{}", error_text(&reply.body));
    }
    let v: serde_json::Value = serde_json::from_slice(&reply.body).context("decoding container")?;
    outln!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}
