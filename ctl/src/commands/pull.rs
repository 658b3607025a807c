//! `berthctl pull`: streams the agent's pull progress; a progress bar per
//! layer on a terminal, plain lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::client;
use crate::cli::Cli;
use crate::client::Client;
use crate::table::{human_bytes, short_digest};

/// The arguments of `berthctl pull` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Pull {
    image: String,
}

/// Pulls `IMAGE`, showing progress; exit 1 when the pull failed.
pub async fn run(cli: &Cli, args: &Pull) -> Result<ExitCode> {
    pull(&client(cli)?, &args.image, cli.json()).await
}

async fn pull(client: &Client, image: &str, json: bool) -> Result<ExitCode> {
    let body = Bytes::from(serde_json::json!({ "image": image }).to_string());
    let tty = std::io::stderr().is_terminal() && !json;
    let multi = indicatif::MultiProgress::new();
    let style =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    let mut bars: HashMap<String, indicatif::ProgressBar> = HashMap::new();
    let mut pending = Vec::new();
    let mut failure: Option<String> = None;
    let mut record: Option<serde_json::Value> = None;
    let mut handle = |line: &str| -> Result<()> {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return Ok(());
        };
        if json {
            outln!("{line}");
        }
        let short = |d: &serde_json::Value| short_digest(d.as_str().unwrap_or(""));
        match v["event"].as_str().unwrap_or("") {
            "resolved" => {
                if !json {
                    eprintln!(
                        "{}: resolved to {}",
                        v["reference"].as_str().unwrap_or(image),
                        v["digest"].as_str().unwrap_or("")
                    );
                }
                if tty {
                    for l in v["layers"].as_array().into_iter().flatten() {
                        let digest = l[0].as_str().unwrap_or("").to_string();
                        let bar =
                            multi.add(indicatif::ProgressBar::new(l[1].as_u64().unwrap_or(0)));
                        bar.set_style(style.clone());
                        bar.set_prefix(short_digest(&digest));
                        bars.insert(digest, bar);
                    }
                }
            }
            "layer" => {
                if let Some(bar) = v["digest"].as_str().and_then(|d| bars.get(d)) {
                    bar.set_position(v["done"].as_u64().unwrap_or(0));
                }
            }
            "layer-done" => {
                let cached = v["cached"] == true;
                match v["digest"].as_str().and_then(|d| bars.get(d)) {
                    Some(bar) => {
                        bar.finish_with_message(if cached { "already present" } else { "done" })
                    }
                    None if !json => eprintln!(
                        "layer {}: {}",
                        short(&v["digest"]),
                        if cached { "already present" } else { "done" }
                    ),
                    None => {}
                }
            }
            "done" if !json => {
                eprintln!(
                    "pulled {} in {:.2}s ({} downloaded)",
                    short(&v["digest"]),
                    v["seconds"].as_f64().unwrap_or(0.0),
                    human_bytes(v["fetched_bytes"].as_u64().unwrap_or(0))
                );
            }
            "record" => record = Some(v["image"].clone()),
            "error" => {
                failure = Some(
                    v["error"]["message"]
                        .as_str()
                        .unwrap_or("pull failed")
                        .to_string(),
                )
            }
            _ => {}
        }
        Ok(())
    };
    client
        .stream_with(Method::POST, "/v1/images/pull?stream=true", body, |chunk| {
            pending.extend_from_slice(chunk);
            while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                handle(String::from_utf8_lossy(&line).trim_end())?;
            }
            Ok(())
        })
        .await?;
    if let Some(message) = failure {
        bail!("{message}");
    }
    match record {
        Some(r) => {
            if !json {
                outln!("{}@{}", image, r["digest"].as_str().unwrap_or(""));
            }
            Ok(ExitCode::SUCCESS)
        }
        None => bail!("the agent ended the pull without a result"),
    }
}
