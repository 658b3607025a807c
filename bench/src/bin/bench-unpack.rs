//! `bench-unpack`: a diagnostic for the pull benchmark. Unpacks each layer of
//! an image from a local blob file with Berth's layer applier
//! (`berth_agent::image::layer::apply_blob_file`: gunzip + sha256 diff_id +
//! tar apply) beside GNU `tar -xzf` of the same blob, one layer at a time,
//! `sync` before each, to separate unpack cost from download and concurrency.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use berth_agent::image::layer::apply_blob_file;
use berth_agent::image::unpack::UnpackLimits;
use berth_agent::registry::LayerCompression;
use berth_bench::{emit, fmt_dur, ratio, registry_get, run_quiet, table, Samples};
use berth_core::image_ref::Digest;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Per-layer unpack: Berth's applier vs GNU tar")]
struct Cli {
    /// `127.0.0.1:PORT`.
    #[arg(long)]
    registry: String,
    #[arg(long, default_value = "bench/big")]
    repo: String,
    #[arg(long, default_value = "1")]
    tag: String,
    /// Parent of the temp dirs.
    #[arg(long)]
    work: PathBuf,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let a = Cli::parse();
    std::fs::create_dir_all(&a.work)?;
    let base = format!("http://{}/v2/{}", a.registry, a.repo);
    let manifest: serde_json::Value = serde_json::from_slice(&registry_get(
        &format!("{base}/manifests/{}", a.tag),
        "application/vnd.oci.image.manifest.v1+json",
    )?)?;
    let cfg_digest = manifest["config"]["digest"].as_str().context("no config")?;
    let config: serde_json::Value = serde_json::from_slice(&registry_get(
        &format!("{base}/blobs/{cfg_digest}"),
        "application/octet-stream",
    )?)?;
    let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
        .as_array()
        .context("no diff_ids")?
        .iter()
        .map(|d| d.as_str().unwrap_or_default().parse())
        .collect::<Result<_, _>>()?;
    let layers: Vec<(Digest, u64)> = manifest["layers"]
        .as_array()
        .context("no layers")?
        .iter()
        .map(|l| {
            Ok((
                l["digest"].as_str().unwrap_or_default().parse()?,
                l["size"].as_u64().unwrap_or(0),
            ))
        })
        .collect::<Result<_>>()?;
    let tmp = tempfile::Builder::new()
        .prefix("berth-unpack-")
        .tempdir_in(&a.work)?;
    let mut rows = Vec::new();
    let (mut berth_total, mut tar_total) = (Samples::new("b"), Samples::new("t"));
    berth_total.times = vec![Default::default(); a.rounds];
    tar_total.times = vec![Default::default(); a.rounds];
    for (i, ((digest, size), diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        let blob = tmp.path().join(format!("layer-{i}.tar.gz"));
        std::fs::write(
            &blob,
            registry_get(&format!("{base}/blobs/{digest}"), "*/*")?,
        )?;
        let (mut berth, mut tar) = (Samples::new("berth"), Samples::new("tar"));
        let mut entries = 0;
        for round in 0..a.rounds {
            let dest = tmp.path().join(format!("berth-{i}-{round}"));
            std::fs::create_dir(&dest)?;
            run_quiet(&["sync".into()])?;
            let t = Instant::now();
            let stats = apply_blob_file(
                &blob,
                LayerCompression::Gzip,
                digest,
                diff_id,
                &dest,
                &UnpackLimits::default(),
            )
            .with_context(|| format!("layer {digest}"))?;
            let d = t.elapsed();
            entries = stats.entries;
            berth.times.push(d);
            berth_total.times[round] += d;
            std::fs::remove_dir_all(&dest)?;

            let dest = tmp.path().join(format!("tar-{i}-{round}"));
            std::fs::create_dir(&dest)?;
            run_quiet(&["sync".into()])?;
            let t = Instant::now();
            run_quiet(&[
                "tar".into(),
                "-xzf".into(),
                blob.display().to_string(),
                "-C".into(),
                dest.display().to_string(),
                "--numeric-owner".into(),
                "--same-permissions".into(),
            ])?;
            let d = t.elapsed();
            tar.times.push(d);
            tar_total.times[round] += d;
            std::fs::remove_dir_all(&dest)?;
        }
        rows.push(vec![
            format!("{i}: {}", &digest.to_string()[7..19]),
            format!("{:.1} MiB", *size as f64 / 1048576.0),
            entries.to_string(),
            fmt_dur(berth.p50()),
            fmt_dur(tar.p50()),
            format!("{:.2}×", ratio(berth.p50(), tar.p50())),
        ]);
    }
    rows.push(vec![
        "**all layers (sum)**".into(),
        "".into(),
        "".into(),
        fmt_dur(berth_total.p50()),
        fmt_dur(tar_total.p50()),
        format!("{:.2}×", ratio(berth_total.p50(), tar_total.p50())),
    ]);
    let mut md = format!(
        "\n### Diagnostic: unpack one layer at a time from a local blob (p50 of {} rounds, `sync` before each)\n\n",
        a.rounds
    );
    md.push_str(&table(
        &[
            "layer",
            "compressed",
            "entries",
            "Berth `apply_blob_file`",
            "GNU `tar -xzf`",
            "Berth ÷ tar",
        ],
        &rows,
    ));
    emit(a.out.as_deref(), &md)
}
