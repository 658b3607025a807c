//! `berthctl save IMAGE --out FILE|-`: writes an image of the agent's store
//! as an OCI image layout tar (what `berthctl load`, `skopeo copy
//! oci-archive:` and `podman load` read). The file is written next to its
//! target and renamed when complete.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::client;
use crate::cli::Cli;
use crate::client::query_escape;

/// The arguments of `berthctl save`.
#[derive(Debug, Args)]
pub struct Save {
    /// The image: a reference as pulled or loaded, or a digest.
    image: String,
    /// The archive to write, or `-` for stdout. (`-o` is berthctl's output format.)
    #[arg(long = "out", value_name = "FILE|-")]
    out: String,
}

/// Saves; exit 1 with the agent's reason when the image is not stored.
pub async fn run(cli: &Cli, args: &Save) -> Result<ExitCode> {
    let path = format!("/v1/images/save?image={}", query_escape(&args.image));
    let client = client(cli)?;
    if args.out == "-" {
        let mut stdout = std::io::stdout().lock();
        client
            .stream_raw(&path, |chunk| Ok(stdout.write_all(chunk)?))
            .await?;
        stdout.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let target = PathBuf::from(&args.out);
    let tmp = target.with_extension("partial");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = client
        .stream_raw(&path, |chunk| Ok(f.write_all(chunk)?))
        .await
        .and_then(|()| Ok(f.sync_all()?));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &target).with_context(|| format!("writing {}", target.display()))?;
    eprintln!("{}: saved to {}", args.image, target.display());
    Ok(ExitCode::SUCCESS)
}
