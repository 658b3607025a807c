//! `berthctl convert COMPOSE_FILE [--out DIR|-] [--strict] [--profile P]`:
//! writes a Berth manifest from a Compose file (see `crate::compose`), prints
//! every note with file:line:col on stderr and checks that the manifest
//! validates. Exit 1 when it does not, or with `--strict` and any key Berth
//! cannot express. Offline: no agent needed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use berth_core::manifest::Manifest;
use clap::Args;

use crate::cli::Cli;
use crate::compose::{self, NoteKind, Options};

/// The arguments of `berthctl convert`.
#[derive(Debug, Args)]
pub struct Convert {
    /// The Compose file (its `.env` and relative paths are read from its directory).
    file: PathBuf,
    /// Where to write: a directory (the manifest is DIR/PROJECT.toml), a
    /// file ending in `.toml`, or `-` for stdout (the default). An existing
    /// manifest is not overwritten without --force. (`-o` is berthctl's
    /// output format.)
    #[arg(long = "out", value_name = "DIR|FILE.toml|-", default_value = "-")]
    out: String,
    /// Overwrite an existing manifest at --out.
    #[arg(long)]
    force: bool,
    /// Fail (exit 1, nothing written) when a key cannot be converted.
    #[arg(long)]
    strict: bool,
    /// Activate a Compose profile (repeatable; COMPOSE_PROFILES too).
    #[arg(long = "profile", value_name = "NAME")]
    profiles: Vec<String>,
}

/// Converts, prints the notes, validates, writes.
pub fn run(cli: &Cli, args: &Convert) -> Result<ExitCode> {
    let opts = Options {
        profiles: args.profiles.clone(),
        env: std::env::vars().collect(),
    };
    let converted = compose::convert_file(&args.file, &opts)?;
    let unsupported = converted
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::Unsupported)
        .count();
    let name = format!("{}.toml", converted.project);
    let valid = Manifest::from_str_named(&name, &converted.toml);
    if cli.json() {
        outln!(
            "{}",
            serde_json::json!({
                "services": converted.services,
                "notes": converted.notes,
                "valid": valid.is_ok(),
                "problems": valid.as_ref().err().map(|e| e.problems().to_vec()).unwrap_or_default(),
                "manifest": converted.toml,
            })
        );
    } else {
        for n in &converted.notes {
            eprintln!("{n}");
        }
    }
    if let Err(e) = &valid {
        if !cli.json() {
            eprintln!("the converted manifest does not validate:\n{e}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if args.strict && unsupported > 0 {
        eprintln!("berthctl: {unsupported} key(s) cannot be converted (--strict): nothing written");
        return Ok(ExitCode::FAILURE);
    }
    if args.out == "-" {
        if !cli.json() {
            outln!("{}", converted.toml.trim_end());
        }
    } else {
        let path = if args.out.ends_with(".toml") {
            PathBuf::from(&args.out)
        } else {
            let dir = PathBuf::from(&args.out);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join(&name)
        };
        if path.exists() && !args.force {
            anyhow::bail!(
                "{} exists: not overwritten (--force to replace it)",
                path.display()
            );
        }
        std::fs::write(&path, &converted.toml)
            .with_context(|| format!("writing {}", path.display()))?;
        if cli.json() {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "{}: {} service(s) converted to {} ({} note(s), {unsupported} not converted)",
            args.file.display(),
            converted.services.len(),
            path.display(),
            converted.notes.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
