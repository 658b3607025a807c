//! `berthctl exec TARGET -- CMD…`: runs a command in a container or in one
//! running replica of a service, through the agent (as health checks run),
//! prints its combined output and exits with its exit code; 125 when the
//! command could not be run (Docker's code), 124 on timeout.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::{client, parse_timeout};
use crate::cli::Cli;
use crate::client::{error_text, query_escape};

/// The arguments of `berthctl exec` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Exec {
    /// Keep stdin open (interactive; not supported yet).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal (not supported yet).
    #[arg(short = 't', long)]
    tty: bool,
    /// Kill the command after this long, e.g. 30s, 5m (at most 1h).
    #[arg(long, default_value = "60s")]
    timeout: String,
    /// A container id (or unique prefix) or a service name.
    target: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// `POST /v1/containers/TARGET/exec`; the exit code as the module doc says.
pub async fn run(cli: &Cli, args: &Exec) -> Result<ExitCode> {
    if args.interactive || args.tty {
        bail!("interactive exec is not supported yet: run the command without -i/-t");
    }
    let limit = parse_timeout(&args.timeout)?;
    let body = serde_json::json!({
        "cmd": args.cmd,
        "timeout_ms": u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
    });
    let reply = client(cli)?
        .request(
            Method::POST,
            &format!("/v1/containers/{}/exec", query_escape(&args.target)),
            Some("application/json"),
            Bytes::from(body.to_string()),
        )
        .await?;
    if !reply.status.is_success() {
        eprintln!("{}", error_text(&reply.body));
        // Docker's code for "the command could not be run".
        return Ok(ExitCode::from(125));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&reply.body).context("decoding the exec reply")?;
    if cli.json() {
        outln!("{v}");
    } else {
        crate::out::write_bytes(v["output"].as_str().unwrap_or_default().as_bytes());
        if v["timed_out"].as_bool() == Some(true) {
            eprintln!(
                "berthctl: exec: the command timed out after {}",
                args.timeout
            );
        }
    }
    let code = v["exit_code"].as_i64().unwrap_or(125);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(125)))
}
