//! `bench-pull-bound`: the pull benchmark's lower bound on this machine. Each
//! stage of a pull is timed alone over every layer of the image, all layers
//! at once (one thread each, as a pull at full parallelism would):
//! download (registry → memory), sha256 of the compressed blobs, gunzip
//! (flate2, the decompressor Berth uses) and extraction (GNU `tar -xf` of the
//! already decompressed tarballs into the store's filesystem). No pull can be
//! faster than the slowest stage; `bench/pull.sh` prints Berth's time as a
//! multiple of it. Writes the bound in seconds to `--bound-out`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_bench::{emit, fmt_dur, registry_get, run_quiet, table, Samples};
use clap::Parser;
use sha2::Digest as _;

#[derive(Parser, Debug)]
#[command(about = "Lower bound of a pull: each stage alone, all layers in parallel")]
struct Cli {
    /// `127.0.0.1:PORT`.
    #[arg(long)]
    registry: String,
    #[arg(long, default_value = "bench/big")]
    repo: String,
    #[arg(long, default_value = "1")]
    tag: String,
    /// Parent of the scratch dirs: put it on the filesystem the stores use.
    #[arg(long)]
    work: PathBuf,
    /// Rounds per stage; the table shows the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where to write the bound (seconds, the slowest stage's median).
    #[arg(long)]
    bound_out: Option<PathBuf>,
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `f` on every item at once, one thread each; the wall time.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> (Duration, Vec<R>) {
    let t = Instant::now();
    let out = thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|i| s.spawn(|| f(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("stage thread panicked"))
            .collect()
    });
    (t.elapsed(), out)
}

fn gunzip(blob: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(blob.len() * 3);
    flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut out)?;
    Ok(out)
}

fn untar(tarball: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    run_quiet(&[
        "tar".into(),
        "-xf".into(),
        tarball.display().to_string(),
        "-C".into(),
        dest.display().to_string(),
        "--numeric-owner".into(),
        "--same-permissions".into(),
    ])
}

fn main() -> Result<()> {
    let a = Cli::parse();
    std::fs::create_dir_all(&a.work)?;
    let base = format!("http://{}/v2/{}", a.registry, a.repo);
    let manifest: serde_json::Value = serde_json::from_slice(&registry_get(
        &format!("{base}/manifests/{}", a.tag),
        "application/vnd.oci.image.manifest.v1+json",
    )?)?;
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .context("manifest has no layers")?
        .iter()
        .map(|l| l["digest"].as_str().unwrap_or_default().to_string())
        .collect();
    let scratch = tempfile::Builder::new()
        .prefix("berth-pull-bound-")
        .tempdir_in(&a.work)?;

    let mut download = Samples::new("download");
    let mut hash = Samples::new("sha256");
    let mut inflate = Samples::new("gunzip");
    let mut extract = Samples::new("extract");
    let mut blobs = Vec::new();
    for _ in 0..a.rounds {
        let (d, got) = parallel(&layers, |digest| {
            registry_get(&format!("{base}/blobs/{digest}"), "*/*")
                .with_context(|| format!("layer {digest}"))
        });
        download.times.push(d);
        blobs = got.into_iter().collect::<Result<Vec<_>>>()?;
    }
    let compressed: u64 = blobs.iter().map(|b| b.len() as u64).sum();
    for _ in 0..a.rounds {
        let (d, sums) = parallel(&blobs, |b| format!("{:x}", sha2::Sha256::digest(b)));
        for (sum, digest) in sums.iter().zip(&layers) {
            if digest.strip_prefix("sha256:") != Some(sum.as_str()) {
                bail!("layer {digest}: the blob hashes to sha256:{sum}");
            }
        }
        hash.times.push(d);
    }
    let mut tars = Vec::new();
    for _ in 0..a.rounds {
        let (d, out) = parallel(&blobs, |b| gunzip(b));
        inflate.times.push(d);
        tars = out.into_iter().collect::<Result<Vec<_>>>()?;
    }
    let uncompressed: u64 = tars.iter().map(|t| t.len() as u64).sum();
    let tar_files: Vec<PathBuf> = tars
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = scratch.path().join(format!("layer-{i}.tar"));
            std::fs::write(&p, t).map(|()| p)
        })
        .collect::<std::io::Result<_>>()?;
    drop(tars);
    for round in 0..a.rounds {
        run_quiet(&["sync".into()])?;
        let dests: Vec<(PathBuf, PathBuf)> = tar_files
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), scratch.path().join(format!("x-{round}-{i}"))))
            .collect();
        let (d, done) = parallel(&dests, |(t, dest)| untar(t, dest));
        done.into_iter().collect::<Result<Vec<_>>>()?;
        extract.times.push(d);
        for (_, dest) in &dests {
            std::fs::remove_dir_all(dest)?;
        }
    }

    let stages = [&download, &hash, &inflate, &extract];
    let slowest = stages.iter().max_by_key(|s| s.p50()).expect("four stages");
    let bound = slowest.p50();
    let sum: Duration = stages.iter().map(|s| s.p50()).sum();
    let mib = |b: u64| b as f64 / 1048576.0;
    let rows: Vec<Vec<String>> = stages
        .iter()
        .map(|s| {
            let bytes = if s.name == "extract" {
                uncompressed
            } else {
                compressed
            };
            vec![
                s.name.clone(),
                fmt_dur(s.p50()),
                format!("{:.0} MiB/s", mib(bytes) / s.p50().as_secs_f64().max(1e-9)),
                if s.name == slowest.name {
                    "**slowest: the bound**".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let mut md = format!(
        "\n### Lower bound of a pull on this machine: each stage alone, all {} layers in parallel (median of {} rounds)\n\n\
         {:.1} MiB compressed, {:.1} MiB uncompressed. download: registry → memory; sha256: of the compressed blobs; \
         gunzip: flate2 (Berth's decompressor) to memory; extract: GNU `tar -xf` of the decompressed tarballs on the stores' filesystem, `sync` before.\n\n",
        layers.len(),
        a.rounds,
        mib(compressed),
        mib(uncompressed)
    );
    md.push_str(&table(&["stage", "time", "throughput", ""], &rows));
    md.push_str(&format!(
        "\nBound (slowest stage): {}; all stages one after another: {}.\n",
        fmt_dur(bound),
        fmt_dur(sum)
    ));
    if let Some(p) = &a.bound_out {
        std::fs::write(p, format!("{}\n", bound.as_secs_f64()))?;
    }
    emit(a.out.as_deref(), &md)
}
