//! `berthctl events`: the events the agent kept (they survive its restarts),
//! filtered by service, kind and time, one line each (or one JSON object per
//! line); `-f` keeps following new ones.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_core::api::Event;
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::client;
use crate::cli::Cli;
use crate::client::{error_text, query_escape};

/// The arguments of `berthctl events` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Events {
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only events of this service.
    #[arg(long)]
    service: Option<String>,
    /// Only events of this kind (e.g. rollout-failed, container-started).
    #[arg(long)]
    kind: Option<String>,
    /// Only events since an RFC 3339 time or a duration ago (10m, 2h).
    #[arg(long)]
    since: Option<String>,
}

/// `GET /v1/events` (streamed with `follow=true`).
pub async fn run(cli: &Cli, args: &Events) -> Result<ExitCode> {
    let c = client(cli)?;
    let mut query: Vec<String> = Vec::new();
    for (key, value) in [
        ("service", &args.service),
        ("kind", &args.kind),
        ("since", &args.since),
    ] {
        if let Some(v) = value {
            query.push(format!("{key}={}", query_escape(v)));
        }
    }
    let json = cli.json();
    let print = |e: &Event| {
        if json {
            outln!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            outln!("{}", event_line(e));
        }
    };
    if args.follow {
        query.push("follow=true".into());
        c.stream_lines(&format!("/v1/events?{}", query.join("&")), |line| {
            match serde_json::from_str::<Event>(line) {
                Ok(e) => print(&e),
                Err(_) => outln!("{line}"),
            }
            Ok(())
        })
        .await?;
    } else {
        let reply = c
            .request(
                Method::GET,
                &format!("/v1/events?{}", query.join("&")),
                None,
                Bytes::new(),
            )
            .await?;
        if !reply.status.is_success() {
            bail!("{}", error_text(&reply.body));
        }
        let events: Vec<Event> = serde_json::from_slice(&reply.body).context("decoding events")?;
        events.iter().for_each(print);
    }
    Ok(ExitCode::SUCCESS)
}

/// `TIME KIND [service=S] [container=C] MESSAGE`.
fn event_line(e: &Event) -> String {
    let mut subject = String::new();
    if let Some(s) = &e.service {
        subject.push_str(&format!(" service={s}"));
    }
    if let Some(c) = &e.container {
        subject.push_str(&format!(" container={c}"));
    }
    format!("{} {}{} {}", e.time, e.kind, subject, e.message)
}
