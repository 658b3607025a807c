//! `bench-pull-prep`: builds the multi-layer pull benchmark image with umoci
//! (a busybox layer, then one layer per host directory) and pushes it with skopeo to a registry on
//! 127.0.0.1. Driven by `bench/pull.sh`; see bench/README.md.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_bench::{emit, run_output, run_quiet, table};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Builds and pushes the pull benchmark image")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Prints a free TCP port on 127.0.0.1.
    FreePort,
    /// Builds the image and pushes it.
    Build {
        /// `127.0.0.1:PORT`.
        #[arg(long)]
        registry: String,
        /// `repo:tag` in the registry.
        #[arg(long, default_value = "bench/big:1")]
        image: String,
        /// Work dir for the OCI layout (created, removed afterwards).
        #[arg(long)]
        work: PathBuf,
        /// One layer per host directory, bottom first (copied to the same path).
        #[arg(long, required = true)]
        layer: Vec<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn s(v: &str) -> String {
    v.to_string()
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::FreePort => {
            println!("{}", berth_e2e::free_port());
            Ok(())
        }
        Cmd::Build {
            registry,
            image,
            work,
            layer,
            out,
        } => {
            std::fs::create_dir_all(&work)?;
            let layout = tempfile::Builder::new().prefix("oci-").tempdir_in(&work)?;
            let r = build(&registry, &image, layout.path(), &layer, out.as_deref());
            drop(layout);
            r
        }
    }
}

/// Regular files, dirs and symlinks under `dir` (not following symlinks).
fn count_entries(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            total += 1;
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => files += 1,
                _ => {}
            }
        }
    }
    (files, total)
}

fn build(
    registry: &str,
    image: &str,
    layout: &Path,
    layers: &[PathBuf],
    out: Option<&Path>,
) -> Result<()> {
    let oci = layout.join("oci");
    let tagged = format!("{}:bench", oci.display());
    run_quiet(&[
        s("umoci"),
        s("init"),
        s("--layout"),
        oci.display().to_string(),
    ])?;
    run_quiet(&[s("umoci"), s("new"), s("--image"), tagged.clone()])?;
    let bundle = layout.join("bundle");
    run_quiet(&[
        s("umoci"),
        s("unpack"),
        s("--image"),
        tagged.clone(),
        bundle.display().to_string(),
    ])?;
    let rootfs = bundle.join("rootfs");
    // `umoci repack`, not `umoci insert`: umoci 0.4.7's insert writes layer
    // tars without the end-of-archive blocks, which Berth refuses (see README).
    let repack = || {
        run_quiet(&[
            s("umoci"),
            s("repack"),
            s("--refresh-bundle"),
            s("--image"),
            tagged.clone(),
            bundle.display().to_string(),
        ])
    };
    // Layer 1: a busybox root filesystem, so the image also runs (`/bin/true`).
    berth_e2e::registry::busybox_rootfs(&rootfs)?;
    repack()?;
    let (mut all_files, mut all_entries) = count_entries(&rootfs);
    let mut rows = vec![(
        "busybox (`/bin`, `/etc`)".to_string(),
        all_files,
        all_entries,
    )];
    for l in layers {
        if !l.is_dir() {
            bail!("{} is not a directory", l.display());
        }
        let rel = l
            .strip_prefix("/")
            .with_context(|| format!("{} must be absolute", l.display()))?;
        let dest = rootfs.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        run_quiet(&[
            s("cp"),
            s("-a"),
            l.display().to_string(),
            dest.display().to_string(),
        ])?;
        repack()?;
        let (files, entries) = count_entries(l);
        all_files += files;
        all_entries += entries;
        rows.push((format!("`{}`", l.display()), files, entries));
    }
    run_quiet(&[
        s("umoci"),
        s("config"),
        s("--image"),
        tagged.clone(),
        s("--config.cmd=/bin/true"),
    ])?;
    // Layer sizes from the manifest.
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(oci.join("index.json"))?)?;
    let mdigest = index["manifests"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["digest"].as_str())
        .context("index.json without manifests")?
        .to_string();
    let blob = |d: &str| {
        oci.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(blob(&mdigest))?)?;
    let sizes: Vec<u64> = manifest["layers"]
        .as_array()
        .context("manifest without layers")?
        .iter()
        .map(|l| l["size"].as_u64().unwrap_or(0))
        .collect();
    let total: u64 = sizes.iter().sum();

    let dest = format!("docker://{registry}/{image}");
    let pushed = run_output(&[
        s("skopeo"),
        s("copy"),
        s("--quiet"),
        s("--insecure-policy"),
        s("--dest-tls-verify=false"),
        format!("oci:{tagged}"),
        dest.clone(),
    ]);
    pushed.with_context(|| format!("pushing to {dest}"))?;

    let mut trows = Vec::new();
    for ((name, files, entries), size) in rows.iter().zip(sizes.iter()) {
        trows.push(vec![
            name.clone(),
            files.to_string(),
            entries.to_string(),
            format!("{:.1} MiB", *size as f64 / 1048576.0),
        ]);
    }
    trows.push(vec![
        "**total**".into(),
        all_files.to_string(),
        all_entries.to_string(),
        format!("{:.1} MiB", total as f64 / 1048576.0),
    ]);
    let mut md = format!(
        "\n### Pull benchmark image `{registry}/{image}` ({} layers, gzip, built with `umoci repack`, pushed with `skopeo copy`)\n\n",
        sizes.len()
    );
    md.push_str(&table(
        &["layer (host dir)", "files", "entries", "compressed"],
        &trows,
    ));
    emit(out, &md)
}
