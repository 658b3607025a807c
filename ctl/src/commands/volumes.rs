//! `berthctl volumes [rm NAME]`: the named volumes with size, users and
//! creation time; `rm` removes one and its data, which the agent refuses
//! while a container or the current revision uses it.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hyper::Method;

use super::call;
use crate::cli::Cli;
use crate::table::{human_bytes, print_table};

/// The arguments of `berthctl volumes` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Volumes {
    #[command(subcommand)]
    action: Option<VolumesAction>,
}

#[derive(Debug, Subcommand)]
enum VolumesAction {
    /// Remove a volume and its data; refused while a container or the
    /// current revision uses it.
    Rm { name: String },
}

/// Lists, or removes with `rm`.
pub async fn run(cli: &Cli, args: &Volumes) -> Result<ExitCode> {
    match &args.action {
        None => list(cli).await,
        Some(VolumesAction::Rm { name }) => remove(cli, name).await,
    }
}

async fn list(cli: &Cli) -> Result<ExitCode> {
    let reply = call(cli, Method::GET, "/v1/volumes").await?;
    if cli.json() {
        outln!("{}", String::from_utf8_lossy(&reply.body));
    } else {
        let list: Vec<berth_core::api::VolumeView> =
            serde_json::from_slice(&reply.body).context("decoding volumes")?;
        let mut rows = vec![[
            "NAME".to_string(),
            "SIZE".into(),
            "SERVICES".into(),
            "CREATED".into(),
        ]];
        for v in list {
            rows.push([
                v.name,
                human_bytes(v.size_bytes),
                if v.services.is_empty() {
                    "-".into()
                } else {
                    v.services.join(",")
                },
                v.created_at,
            ]);
        }
        print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(cli: &Cli, name: &str) -> Result<ExitCode> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid {
        bail!("`{name}` is not a valid volume name ([A-Za-z0-9_.-])");
    }
    let reply = call(cli, Method::DELETE, &format!("/v1/volumes/{name}")).await?;
    if cli.json() {
        outln!("{}", String::from_utf8_lossy(&reply.body));
    } else {
        outln!("removed volume {name}");
    }
    Ok(ExitCode::SUCCESS)
}
