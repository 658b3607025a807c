//! `berthctl drain [on|off]`: takes this host out of (on) or back into (off)
//! load balancer rotation (every readiness endpoint then answers 503); with
//! no argument, shows whether it is draining.

use std::process::ExitCode;

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::client;
use crate::cli::Cli;
use crate::client::error_text;

/// The arguments of `berthctl drain` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Drain {
    #[arg(value_parser = ["on", "off"])]
    state: Option<String>,
}

/// `PUT /v1/drain` (or `GET` without an argument) and the resulting state.
pub async fn run(cli: &Cli, args: &Drain) -> Result<ExitCode> {
    let c = client(cli)?;
    let reply = match args.state.as_deref() {
        Some(on_off) => {
            let body = serde_json::json!({ "on": on_off == "on" }).to_string();
            c.request(
                Method::PUT,
                "/v1/drain",
                Some("application/json"),
                Bytes::from(body),
            )
            .await?
        }
        None => {
            c.request(Method::GET, "/v1/drain", None, Bytes::new())
                .await?
        }
    };
    if !reply.status.is_success() {
        bail!("{}", error_text(&reply.body));
    }
    let v: serde_json::Value = serde_json::from_slice(&reply.body)?;
    if cli.json() {
        outln!("{v}");
    } else if v["draining"] == true {
        outln!("draining: every readiness endpoint of this host answers 503");
    } else {
        outln!("not draining");
    }
    Ok(ExitCode::SUCCESS)
}
