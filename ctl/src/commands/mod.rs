//! One module per berthctl command, as youki's CLI has one file per command:
//! each holds its clap arguments and a `run` that prints the result and
//! returns the exit code. What several commands share is here: the client
//! built from the global flags, a request whose non-2xx answer is the error,
//! reading a manifest, and parsing a `--timeout`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_core::manifest;
use bytes::Bytes;
use hyper::Method;

use crate::cli::Cli;
use crate::client::{error_text, AgentAddr, Client, Reply};

pub mod apply;
pub mod completions;
pub mod convert;
pub mod diff;
pub mod drain;
pub mod events;
pub mod exec;
pub mod fleet;
pub mod gc;
pub mod history;
pub mod images;
pub mod inspect;
pub mod load;
pub mod logs;
pub mod man_pages;
mod plan;
pub mod pull;
pub mod restart;
pub mod rollback;
pub mod save;
pub mod status;
pub mod top;
pub mod validate;
pub mod volumes;

/// The agent client for `--agent`, `--token-file` and the TLS files.
pub fn client(cli: &Cli) -> Result<Client> {
    let token = match &cli.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let tls = crate::tls::TlsFiles {
        ca_file: cli.ca_file.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    Client::new(AgentAddr::parse(&cli.agent)?, token, &tls)
}

/// One request whose non-2xx answer becomes the error (its JSON message).
pub async fn call(cli: &Cli, method: Method, path: &str) -> Result<Reply> {
    let reply = client(cli)?
        .request(method, path, None, Bytes::new())
        .await?;
    if !reply.status.is_success() {
        bail!("{}", error_text(&reply.body));
    }
    Ok(reply)
}

/// A `--timeout` value (`30s`, `5m`); the error names the flag.
pub fn parse_timeout(value: &str) -> Result<Duration> {
    berth_core::units::parse_duration(value).map_err(|e| anyhow::anyhow!("--timeout: {e}"))
}

/// Reads a manifest file or directory; `-` reads one file from stdin, named
/// `stdin.toml` in error locations.
pub fn read_manifest(path: &Path) -> Result<manifest::SourceFiles> {
    if path == Path::new("-") {
        use std::io::Read;
        let mut text = String::new();
        std::io::stdin()
            .take(manifest::MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .context("reading the manifest from stdin")?;
        if text.len() as u64 > manifest::MAX_FILE_BYTES {
            bail!(
                "stdin: manifest larger than {} bytes",
                manifest::MAX_FILE_BYTES
            );
        }
        return Ok(manifest::SourceFiles::from([(
            "stdin.toml".to_string(),
            text,
        )]));
    }
    Ok(manifest::read_sources(path)?)
}
