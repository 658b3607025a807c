//! `berthctl load ARCHIVE|- [--tag REF]`: sends an image archive (an OCI
//! image layout tar such as skopeo's `oci-archive:`, or a `docker save` tar;
//! gzip or zstd compressed too) to the agent, which checks every digest and
//! unpacks the layers as a pull does. Prints each image loaded and its digest.
//! The archive is read into berthctl's memory before it is sent.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::client;
use crate::cli::Cli;
use crate::client::{error_text, query_escape};

/// The arguments of `berthctl load`.
#[derive(Debug, Args)]
pub struct Load {
    /// The archive file, or `-` for stdin.
    archive: PathBuf,
    /// The name to give the image (REPO:TAG), for an archive of one image
    /// that names none or to rename it.
    #[arg(long)]
    tag: Option<String>,
}

/// Loads; exit 1 (with the agent's reason, naming the digest) on failure.
pub async fn run(cli: &Cli, args: &Load) -> Result<ExitCode> {
    let mut data = Vec::new();
    if args.archive.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut data)
            .context("reading the archive from stdin")?;
    } else {
        std::fs::File::open(&args.archive)
            .and_then(|mut f| f.read_to_end(&mut data))
            .with_context(|| format!("reading {}", args.archive.display()))?;
    }
    let path = match &args.tag {
        Some(t) => format!("/v1/images/load?tag={}", query_escape(t)),
        None => "/v1/images/load".to_string(),
    };
    let reply = client(cli)?
        .request(
            Method::POST,
            &path,
            Some("application/x-tar"),
            Bytes::from(data),
        )
        .await?;
    if !reply.status.is_success() {
        bail!("{}", error_text(&reply.body));
    }
    if cli.json() {
        outln!("{}", String::from_utf8_lossy(&reply.body));
        return Ok(ExitCode::SUCCESS);
    }
    let recs: Vec<serde_json::Value> =
        serde_json::from_slice(&reply.body).context("the agent's reply")?;
    for r in &recs {
        outln!(
            "loaded {} as {}",
            r["reference"].as_str().unwrap_or("?"),
            r["digest"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}
