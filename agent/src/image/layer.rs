//! One layer from compressed bytes to a verified snapshot, in one streaming
//! pass: decompress (gzip, zstd or plain), hash the tar stream for the
//! config's diff_id, and apply it with `unpack`. Bytes arrive either from a
//! blob file or, while downloading, through a channel from the async side.

use std::io::{self, Read};
use std::path::Path;

use berth_core::image_ref::Digest;
use sha2::{Digest as _, Sha256};

use super::unpack::{apply_layer, UnpackError, UnpackLimits, UnpackStats};
use crate::registry::LayerCompression;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {digest}: decompressing: {source}")]
    Decompress { digest: Digest, source: io::Error },
    #[error("layer {digest}: {source}")]
    Unpack { digest: Digest, source: UnpackError },
    #[error("layer {digest}: uncompressed content is {actual}, the image config says diff_id {expected}")]
    DiffIdMismatch {
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {digest}: uncompressed stream is over the {limit}-byte limit (a decompression bomb, or not enough disk)")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("layer {digest}: reading the blob: {source}")]
    Read { digest: Digest, source: io::Error },
}

impl LayerError {
    /// True when the layer itself is refused (bad compression, a tar the
    /// applier will not unpack, a wrong diff_id, over the size limit); false
    /// for local I/O failures (reading the blob, writing the snapshot).
    pub fn is_permanent(&self) -> bool {
        match self {
            LayerError::Decompress { .. }
            | LayerError::DiffIdMismatch { .. }
            | LayerError::TooLarge { .. } => true,
            LayerError::Unpack { source, .. } => !matches!(source, UnpackError::Io { .. }),
            LayerError::Read { .. } => false,
        }
    }
}

/// Hashes and counts what passes through, failing past `limit` bytes.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(TooLargeMarker));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug)]
struct TooLargeMarker;
impl std::fmt::Display for TooLargeMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uncompressed stream over limit")
    }
}
impl std::error::Error for TooLargeMarker {}

fn is_too_large(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<TooLargeMarker>())
}

/// Reads `Bytes` chunks sent from the async side; end of stream when the
/// sender is dropped.
#[derive(Debug)]
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl ChannelReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> ChannelReader {
        ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

/// Decompresses `compressed`, checks the diff_id and applies the tar into
/// `root`. Everything is read to the end so trailing garbage is caught.
pub fn apply_compressed<R: Read>(
    compressed: R,
    compression: LayerCompression,
    digest: &Digest,
    diff_id: &Digest,
    root: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, LayerError> {
    let decoder: Box<dyn Read> = match compression {
        LayerCompression::None => Box::new(compressed),
        LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        LayerCompression::Zstd => Box::new(zstd::stream::read::Decoder::new(compressed).map_err(
            |source| LayerError::Decompress {
                digest: digest.clone(),
                source,
            },
        )?),
    };
    let limit = limits.max_total_bytes.saturating_add(64 << 20);
    let mut reader = HashingReader {
        inner: decoder,
        hasher: Sha256::new(),
        count: 0,
        limit,
    };
    let result = apply_layer(&mut reader, root, limits);
    let stats = match result {
        Ok(s) => s,
        Err(UnpackError::Read { source, .. }) if is_too_large(&source) => {
            return Err(LayerError::TooLarge {
                digest: digest.clone(),
                limit,
            })
        }
        Err(source) => {
            return Err(LayerError::Unpack {
                digest: digest.clone(),
                source,
            })
        }
    };
    // apply_layer consumed the archive and its padding; anything left would
    // have been refused as trailing data, but drain defensively.
    let mut sink = [0u8; 8192];
    loop {
        match reader.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if is_too_large(&e) => {
                return Err(LayerError::TooLarge {
                    digest: digest.clone(),
                    limit,
                })
            }
            Err(source) => {
                return Err(LayerError::Decompress {
                    digest: digest.clone(),
                    source,
                })
            }
        }
    }
    let actual = Digest::sha256_from_bytes(&reader.hasher.finalize());
    if &actual != diff_id {
        return Err(LayerError::DiffIdMismatch {
            digest: digest.clone(),
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(stats)
}

/// [`apply_compressed`] from a stored blob file.
pub fn apply_blob_file(
    path: &Path,
    compression: LayerCompression,
    digest: &Digest,
    diff_id: &Digest,
    root: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, LayerError> {
    let file = std::fs::File::open(path).map_err(|source| LayerError::Read {
        digest: digest.clone(),
        source,
    })?;
    apply_compressed(
        io::BufReader::with_capacity(256 << 10, file),
        compression,
        digest,
        diff_id,
        root,
        limits,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn each_compression_applies_and_checks_the_diff_id() {
        crate::require_root!();
        let tar = tar_with("hello.txt", b"hi");
        let diff_id = Digest::sha256_of(&tar);
        for (compression, bytes) in [
            (LayerCompression::None, tar.clone()),
            (LayerCompression::Gzip, gzip(&tar)),
            (
                LayerCompression::Zstd,
                zstd::encode_all(&tar[..], 3).unwrap(),
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let digest = Digest::sha256_of(&bytes);
            apply_compressed(
                &bytes[..],
                compression,
                &digest,
                &diff_id,
                dir.path(),
                &UnpackLimits::default(),
            )
            .unwrap();
            assert_eq!(std::fs::read(dir.path().join("hello.txt")).unwrap(), b"hi");
        }
    }

    #[test]
    fn a_wrong_diff_id_is_refused() {
        crate::require_root!();
        let tar = tar_with("a", b"x");
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::sha256_of(&tar);
        let wrong = Digest::sha256_of(b"other");
        let err = apply_compressed(
            &tar[..],
            LayerCompression::None,
            &digest,
            &wrong,
            dir.path(),
            &UnpackLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, LayerError::DiffIdMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&digest.to_string()));
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        // 64 MiB of zeros in one file compresses to a few KiB.
        let big = vec![0u8; 64 << 20];
        let tar = tar_with("zeros", &big);
        let bomb = zstd::encode_all(&tar[..], 3).unwrap();
        assert!(bomb.len() < 1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let limits = UnpackLimits {
            max_total_bytes: 1 << 20,
            ..UnpackLimits::default()
        };
        let d = Digest::sha256_of(&bomb);
        let err = apply_compressed(
            &bomb[..],
            LayerCompression::Zstd,
            &d,
            &Digest::sha256_of(&tar),
            dir.path(),
            &limits,
        )
        .unwrap_err();
        assert!(
            matches!(err, LayerError::Unpack { .. } | LayerError::TooLarge { .. }),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_garbage_compressed_streams_fail() {
        let tar = tar_with("a", &[7u8; 10000]);
        let gz = gzip(&tar);
        let d = Digest::sha256_of(&gz);
        let diff = Digest::sha256_of(&tar);
        let dir = tempfile::tempdir().unwrap();
        let cut = &gz[..gz.len() / 2];
        assert!(apply_compressed(
            cut,
            LayerCompression::Gzip,
            &d,
            &diff,
            dir.path(),
            &UnpackLimits::default()
        )
        .is_err());
        let dir = tempfile::tempdir().unwrap();
        let mut trailing = gz.clone();
        trailing.extend_from_slice(b"garbage after the gzip member");
        assert!(apply_compressed(
            &trailing[..],
            LayerCompression::Gzip,
            &d,
            &diff,
            dir.path(),
            &UnpackLimits::default()
        )
        .is_err());
    }

    #[test]
    fn the_channel_reader_streams_chunks() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let t = std::thread::spawn(move || {
            let mut r = ChannelReader::new(rx);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            out
        });
        for chunk in [&b"ab"[..], b"", b"cde"] {
            tx.blocking_send(bytes::Bytes::copy_from_slice(chunk))
                .unwrap();
        }
        drop(tx);
        assert_eq!(t.join().unwrap(), b"abcde");
    }
}
