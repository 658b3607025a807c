//! `berthctl gc`: asks the agent to free blobs, layers and archived logs that
//! no kept image or revision uses, and prints what was removed and freed.

use std::process::ExitCode;

use anyhow::Result;
use hyper::Method;

use super::call;
use crate::cli::Cli;
use crate::table::human_bytes;

/// `POST /v1/gc` and its summary line.
pub async fn run(cli: &Cli) -> Result<ExitCode> {
    let reply = call(cli, Method::POST, "/v1/gc").await?;
    if cli.json() {
        outln!("{}", String::from_utf8_lossy(&reply.body));
    } else {
        let r: serde_json::Value = serde_json::from_slice(&reply.body)?;
        outln!(
            "removed {} images, {} blobs, {} layer snapshots, {} archived container logs; freed {}",
            r["images_removed"].as_array().map(|a| a.len()).unwrap_or(0),
            r["blobs_removed"],
            r["snapshots_removed"],
            r["log_archives_removed"].as_u64().unwrap_or(0),
            human_bytes(r["bytes_freed"].as_u64().unwrap_or(0))
        );
    }
    Ok(ExitCode::SUCCESS)
}
