//! `berthctl logs TARGET`: a container's or a service's logs (a service's
//! replicas merged by time), streamed as the agent sends them; `-f` keeps
//! following, also replicas started later.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::client;
use crate::cli::Cli;
use crate::client::query_escape;

/// The arguments of `berthctl logs` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Logs {
    /// A service, or a container id (or unique prefix).
    target: String,
    /// Keep printing new lines; for a service, also those of replicas
    /// started later (after a rollout or restart).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<usize>,
    /// Only lines since an RFC 3339 time or for a duration back (10m, 1h).
    #[arg(long)]
    since: Option<String>,
    /// Prefix each line with its RFC 3339 time.
    #[arg(long)]
    timestamps: bool,
    /// The service's last exited or replaced replica.
    #[arg(short = 'p', long)]
    previous: bool,
}

/// Streams the logs to stdout.
pub async fn run(cli: &Cli, args: &Logs) -> Result<ExitCode> {
    let path = logs_path(args);
    // `logs … | head` ends quietly, like every other command.
    client(cli)?
        .stream_raw(&path, |chunk| {
            crate::out::write_bytes(chunk);
            Ok(())
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// The `GET /v1/containers/TARGET/logs` request (TARGET may be a service or
/// a container).
fn logs_path(args: &Logs) -> String {
    let Logs {
        target,
        follow,
        tail,
        since,
        timestamps,
        previous,
    } = args;
    let mut path = format!(
        "/v1/containers/{}/logs?follow={follow}&timestamps={timestamps}&previous={previous}",
        query_escape(target)
    );
    if let Some(n) = tail {
        path.push_str(&format!("&tail={n}"));
    }
    if let Some(s) = since {
        path.push_str(&format!("&since={}", query_escape(s)));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_path_carries_every_flag_escaped() {
        let mut args = Logs {
            target: "web".into(),
            follow: false,
            tail: None,
            since: None,
            timestamps: false,
            previous: false,
        };
        assert_eq!(
            logs_path(&args),
            "/v1/containers/web/logs?follow=false&timestamps=false&previous=false"
        );
        args = Logs {
            target: "web".into(),
            follow: true,
            tail: Some(5),
            since: Some("2024-05-01T10:00:00+02:00".into()),
            timestamps: true,
            previous: true,
        };
        assert_eq!(
            logs_path(&args),
            "/v1/containers/web/logs?follow=true&timestamps=true&previous=true&tail=5&since=2024-05-01T10%3A00%3A00%2B02%3A00"
        );
    }
}
