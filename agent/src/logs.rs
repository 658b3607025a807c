//! Container logs after the monitor wrote them (see `runtime::crilog` for the
//! format): the per-service archive that keeps the logs of removed containers
//! (`<state-dir>/logs/<service>/<id>.log[.1]` + `<id>.json`) with its
//! retention policy, and the read side of `logs`: merging replicas by time,
//! `since`/`tail` selection, rendering, and following files across rotation,
//! removal and new replicas.

use std::collections::BTreeSet;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::labels::{LABEL_IMAGE, LABEL_REVISION, LABEL_SERVICE};
use crate::runtime::config::{self, StateFile};
use crate::runtime::crilog::{self, Decoder, Entry, LogFile, Nanos, Stream};
use crate::runtime::{ContainerInfo, ContainerState, Runtime, RuntimeError};

/// Archived containers kept per service (newest first).
pub const ARCHIVE_KEEP: usize = 5;
/// Bytes of archived logs kept per service; the newest archived container is
/// kept even when it alone is larger (at most two rotated files).
pub const ARCHIVE_MAX_BYTES: u64 = 64 << 20;
/// Version of the `<id>.json` metadata.
const META_VERSION: u32 = 1;

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("container {id}: archiving logs: {step} {path}: {source}")]
    Io {
        id: String,
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `<id>.json` records about an archived container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMeta {
    pub version: u32,
    pub id: String,
    pub service: String,
    pub revision: Option<u64>,
    pub image: Option<String>,
    /// RFC 3339 (UTC, nanoseconds).
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// `None` when the exit status is unknown (its monitor died).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub archived_at: String,
    /// The log files beside this one, in reading order.
    pub files: Vec<ArchivedFile>,
}

/// One archived log file, relative to the service's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedFile {
    pub name: String,
    /// The stream of lines without a CRI prefix (pre-CRI files).
    pub stream: Stream,
}

/// How long a reader waits for an archive whose files are still being
/// moved in (a rename each; a copy across filesystems).
pub const ARCHIVING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One archived container as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub meta: ArchiveMeta,
    /// The service's archive directory.
    pub dir: PathBuf,
}

impl Archived {
    /// Its log files, in reading order.
    pub fn files(&self) -> Vec<LogFile> {
        self.meta
            .files
            .iter()
            .map(|f| LogFile {
                path: self.dir.join(&f.name),
                stream: f.stream,
            })
            .collect()
    }

    /// Every line of its files. An archive is written metadata first, then
    /// its files are moved in: one caught in between (a replica removed just
    /// now) is waited for, up to [`ARCHIVING_WAIT`], rather than read empty.
    pub fn read_all(&self) -> Vec<Entry> {
        let files = self.files();
        let deadline = std::time::Instant::now() + ARCHIVING_WAIT;
        while !files.iter().all(|f| f.path.exists()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        read_all(&files)
    }

    /// Bytes of its log files and metadata on disk.
    pub fn bytes(&self) -> u64 {
        self.files()
            .iter()
            .map(|f| f.path.clone())
            .chain([self.dir.join(format!("{}.json", self.meta.id))])
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    fn archived_at(&self) -> Nanos {
        crilog::parse_time(&self.meta.archived_at).unwrap_or(0)
    }

    fn remove(&self) -> u64 {
        let bytes = self.bytes();
        for f in self.files() {
            let _ = std::fs::remove_file(f.path);
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{}.json", self.meta.id)));
        bytes
    }
}

/// What pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub containers: usize,
    pub bytes: u64,
}

impl PruneReport {
    fn add(&mut self, other: PruneReport) {
        self.containers += other.containers;
        self.bytes += other.bytes;
    }
}

/// How many of a service's archived containers to keep, given their sizes
/// newest first: the newest always, then each older one while at most
/// `keep` are kept and their bytes stay within `max_bytes`; the first one
/// that does not fit and every older one go (so what is kept is always the
/// most recent run of containers).
pub fn retained(sizes_newest_first: &[u64], keep: usize, max_bytes: u64) -> usize {
    let mut total = 0u64;
    for (i, size) in sizes_newest_first.iter().enumerate() {
        total = total.saturating_add(*size);
        if i > 0 && (i >= keep || total > max_bytes) {
            return i;
        }
    }
    sizes_newest_first.len()
}

/// The per-service log archive under `<state-dir>/logs/`.
#[derive(Debug, Clone)]
pub struct LogArchive {
    dir: PathBuf,
    keep: usize,
    max_bytes: u64,
}

impl LogArchive {
    /// An archive in `dir` keeping `keep` containers and `max_bytes` per service.
    pub fn new(dir: impl Into<PathBuf>, keep: usize, max_bytes: u64) -> Self {
        LogArchive {
            dir: dir.into(),
            keep,
            max_bytes,
        }
    }

    fn service_dir(&self, service: &str) -> Option<PathBuf> {
        config::valid_id(service).then(|| self.dir.join(service))
    }

    /// Moves a removed container's log files into its service's archive
    /// (metadata first, so a crash in between leaves no unlisted file) and
    /// applies the retention policy. A container without a service label is
    /// not archived. Call it once the container's monitor has exited.
    pub fn archive(&self, info: &ContainerInfo, files: &[LogFile]) -> Result<(), LogError> {
        let Some(service) = info.labels.get(LABEL_SERVICE) else {
            return Ok(());
        };
        let Some(dir) = self.service_dir(service) else {
            return Ok(());
        };
        let id = info.id.as_str();
        let io = |step: &'static str, path: &Path| {
            let (id, path) = (id.to_string(), path.to_path_buf());
            move |source| LogError::Io {
                id,
                step,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let mut moves = Vec::new();
        let mut listed = Vec::new();
        for f in files.iter().filter(|f| f.path.exists()) {
            let Some(name) = f.path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            // container.log[.1] → <id>.log[.1]; pre-CRI stdout.log → <id>.stdout.log
            let tail = name.strip_prefix("container.").unwrap_or(&name);
            let archived = format!("{id}.{tail}");
            moves.push((f.path.clone(), dir.join(&archived)));
            listed.push(ArchivedFile {
                name: archived,
                stream: f.stream,
            });
        }
        let started = config::read_json::<StateFile>(id, &info.dir.join("state.json"))
            .ok()
            .flatten()
            .map(|s| crilog::time_string(s.started_at_ms as Nanos * 1_000_000));
        let (exit_code, signal, oom_killed, finished) = match &info.state {
            ContainerState::Exited {
                code,
                signal,
                oom_killed,
                finished_at,
            } => (
                Some(*code),
                *signal,
                *oom_killed,
                Some(system_nanos(*finished_at)),
            ),
            _ => (None, None, false, None),
        };
        let meta = ArchiveMeta {
            version: META_VERSION,
            id: id.into(),
            service: service.clone(),
            revision: info.labels.get(LABEL_REVISION).and_then(|r| r.parse().ok()),
            image: info.labels.get(LABEL_IMAGE).cloned(),
            started_at: started,
            finished_at: finished.map(crilog::time_string),
            exit_code,
            signal,
            oom_killed,
            archived_at: crilog::time_string(crilog::now()),
            files: listed,
        };
        write_meta(&dir.join(format!("{id}.json")), &meta).map_err(io("writing", &dir))?;
        for (from, to) in moves {
            move_file(&from, &to).map_err(io("moving", &from))?;
        }
        self.prune(service);
        Ok(())
    }

    /// A service's archived containers, newest first.
    pub fn list(&self, service: &str) -> Vec<Archived> {
        let Some(dir) = self.service_dir(service) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<Archived> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".json")?;
                let meta: ArchiveMeta = config::read_json(id, &e.path()).ok().flatten()?;
                (meta.id == id).then(|| Archived {
                    meta,
                    dir: dir.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (b.archived_at(), &b.meta.id).cmp(&(a.archived_at(), &a.meta.id)));
        out
    }

    /// Services with an archive directory.
    pub fn services(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|s| config::valid_id(s))
            .collect();
        v.sort();
        v
    }

    /// The archived container with this id, or the only one whose id starts
    /// with it; `Err(n)` when `n > 1` match.
    pub fn find(&self, id: &str) -> Result<Option<Archived>, usize> {
        let all: Vec<Archived> = self.services().iter().flat_map(|s| self.list(s)).collect();
        if let Some(a) = all.iter().find(|a| a.meta.id == id) {
            return Ok(Some(a.clone()));
        }
        let mut matches: Vec<Archived> = all
            .into_iter()
            .filter(|a| a.meta.id.starts_with(id))
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.pop()),
            n => Err(n),
        }
    }

    /// Applies the retention policy ([`retained`]) to one service.
    pub fn prune(&self, service: &str) -> PruneReport {
        let list = self.list(service);
        let sizes: Vec<u64> = list.iter().map(Archived::bytes).collect();
        let keep = retained(&sizes, self.keep, self.max_bytes);
        let mut report = PruneReport::default();
        for a in &list[keep..] {
            report.add(PruneReport {
                containers: 1,
                bytes: a.remove(),
            });
        }
        report
    }

    /// GC: prunes every service, removes the whole archive of services not
    /// in `keep_services`, and files no metadata lists (a crash mid-archive).
    pub fn gc(&self, keep_services: &BTreeSet<String>) -> PruneReport {
        let mut report = PruneReport::default();
        for service in self.services() {
            let Some(dir) = self.service_dir(&service) else {
                continue;
            };
            if !keep_services.contains(&service) {
                for a in self.list(&service) {
                    report.add(PruneReport {
                        containers: 1,
                        bytes: a.remove(),
                    });
                }
            } else {
                report.add(self.prune(&service));
            }
            let listed: BTreeSet<String> = self
                .list(&service)
                .iter()
                .flat_map(|a| {
                    a.meta
                        .files
                        .iter()
                        .map(|f| f.name.clone())
                        .chain([format!("{}.json", a.meta.id)])
                        .collect::<Vec<_>>()
                })
                .collect();
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // A recent `.tmp` file is metadata being written right now.
                    let writing = name.ends_with(TMP_SUFFIX)
                        && e.metadata().and_then(|m| m.modified()).is_ok_and(|t| {
                            t.elapsed().unwrap_or_default() < Duration::from_secs(60)
                        });
                    if !listed.contains(&name) && !writing {
                        report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&dir); // only when empty
        }
        report
    }
}

/// Writes the metadata atomically (temp file + rename). Not fsynced: the
/// log files it lists are not either, and a removal in a crash loop should
/// not wait for the disk.
fn write_meta(path: &Path, meta: &ArchiveMeta) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Suffix of metadata being written.
const TMP_SUFFIX: &str = ".tmp";

fn system_nanos(t: std::time::SystemTime) -> Nanos {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as Nanos)
        .unwrap_or(0)
}

/// Renames `from` to `to`, copying when they are on different filesystems.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(from, to)?;
            std::fs::remove_file(from)
        }
        other => other,
    }
}

/// What a `logs` request selects and how it prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only the last N lines (of the merged output).
    pub tail: Option<usize>,
    /// Only lines written at or after this time; lines without a time
    /// (pre-CRI files) are left out when it is set.
    pub since: Option<Nanos>,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
}

/// Merges each source's lines (each in its own order) into one sequence by
/// time. Order within a source is kept even when its clock went back; a line
/// without a time sorts with the line before it in its source.
pub fn merge(sources: Vec<Vec<Entry>>) -> Vec<Entry> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let total = sources.iter().map(Vec::len).sum();
    let mut iters: Vec<std::vec::IntoIter<Entry>> =
        sources.into_iter().map(Vec::into_iter).collect();
    let mut last: Vec<Nanos> = vec![Nanos::MIN; iters.len()];
    let mut heads: Vec<Option<Entry>> = iters.iter_mut().map(Iterator::next).collect();
    let key = |e: &Entry, last: Nanos| e.time.unwrap_or(last).max(last);
    let mut heap: BinaryHeap<Reverse<(Nanos, usize)>> = heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.as_ref().map(|e| Reverse((key(e, Nanos::MIN), i))))
        .collect();
    let mut out = Vec::with_capacity(total);
    while let Some(Reverse((k, i))) = heap.pop() {
        let Some(e) = heads[i].take() else { continue };
        last[i] = k;
        out.push(e);
        heads[i] = iters[i].next();
        if let Some(next) = &heads[i] {
            heap.push(Reverse((key(next, last[i]), i)));
        }
    }
    out
}

/// Applies `since`, then `tail`.
pub fn select(mut entries: Vec<Entry>, q: &LogQuery) -> Vec<Entry> {
    if let Some(since) = q.since {
        entries.retain(|e| e.time.is_some_and(|t| t >= since));
    }
    if let Some(n) = q.tail {
        let drop = entries.len().saturating_sub(n);
        entries.drain(..drop);
    }
    entries
}

/// Appends each line and a `\n`, after its time and a space with `timestamps`
/// (lines without a time get no prefix).
pub fn render(entries: &[Entry], timestamps: bool, out: &mut Vec<u8>) {
    for e in entries {
        if let (true, Some(t)) = (timestamps, e.time) {
            crilog::format_time(t, out);
            out.push(b' ');
        }
        out.extend_from_slice(&e.line);
        out.push(b'\n');
    }
}

/// One log file being followed: the open file (kept across renames, so the
/// last lines of a rotated or archived file are still read) and its decoder.
#[derive(Debug)]
struct TailFile {
    path: PathBuf,
    stream: Stream,
    file: Option<std::fs::File>,
    ino: u64,
    pos: u64,
    dec: Decoder,
}

impl TailFile {
    fn read_open(&mut self, out: &mut Vec<Entry>) {
        let Some(f) = &mut self.file else { return };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.pos)).is_ok() && f.read_to_end(&mut buf).is_ok() {
            self.pos += buf.len() as u64;
            self.dec.feed(&buf, self.stream, out);
        }
    }

    /// Reads what was appended; switches to a new file at the path (after a
    /// rotation) once the old one is read to its end.
    fn poll(&mut self, out: &mut Vec<Entry>) {
        for _ in 0..4 {
            self.read_open(out);
            let Ok(m) = std::fs::metadata(&self.path) else {
                return; // not created yet, or moved away: keep the open file
            };
            if self.file.is_some() && m.ino() == self.ino {
                return;
            }
            // Every write to the old file happened before the rename we just saw.
            self.read_open(out);
            match std::fs::File::open(&self.path) {
                Ok(f) => {
                    self.ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                    self.file = Some(f);
                    self.pos = 0;
                }
                Err(_) => return,
            }
        }
    }
}

/// A container's log files being followed.
#[derive(Debug)]
pub struct ContainerTail {
    pub id: String,
    files: Vec<TailFile>,
}

impl ContainerTail {
    /// Opens a container's files (as [`crate::runtime::Runtime::logs`] lists
    /// them): returns the tail and every complete line already written.
    pub fn open(id: &str, files: &[LogFile]) -> (ContainerTail, Vec<Entry>) {
        let mut out = Vec::new();
        let mut tails: Vec<TailFile> = Vec::new();
        // Rotated files (`x.1`) are read once, before their live file.
        for f in files.iter().filter(|f| rotated_of(files, f).is_none()) {
            let file = std::fs::File::open(&f.path).ok();
            let ino = file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map_or(0, |m| m.ino());
            let mut t = TailFile {
                path: f.path.clone(),
                stream: f.stream,
                file,
                ino,
                pos: 0,
                dec: Decoder::new(),
            };
            for old in files
                .iter()
                .filter(|o| rotated_of(files, o) == Some(&f.path))
            {
                // Opened after the live file: if a rotation came in between,
                // the rotated file is the one already open.
                let same = std::fs::metadata(&old.path).is_ok_and(|m| m.ino() == ino);
                if !same {
                    if let Ok(bytes) = std::fs::read(&old.path) {
                        t.dec.feed(&bytes, old.stream, &mut out);
                    }
                }
            }
            t.poll(&mut out);
            tails.push(t);
        }
        (
            ContainerTail {
                id: id.into(),
                files: tails,
            },
            out,
        )
    }

    /// Lines written since the last call.
    pub fn poll(&mut self) -> Vec<Entry> {
        let mut out = Vec::new();
        for f in &mut self.files {
            f.poll(&mut out);
        }
        out
    }

    /// The files will not grow any more: what is left over, as lines.
    pub fn finish(&mut self) -> Vec<Entry> {
        let mut out = self.poll();
        for f in &mut self.files {
            f.dec.finish(f.stream, &mut out);
        }
        out
    }
}

/// Removes a container (see [`Runtime::remove_with`]), moving its logs into
/// its service's archive once its monitor has written the last line. A
/// failure to archive is logged and does not stop the removal.
pub fn remove_keeping_logs(
    rt: &Runtime,
    archive: &LogArchive,
    id: &str,
) -> Result<(), RuntimeError> {
    rt.remove_with(id, |info, files| {
        if let Err(e) = archive.archive(info, files) {
            tracing::warn!(container = %id, error = %e, "logs not archived");
        }
    })
}

/// The live file a rotated file (`<live>.1`) of `files` belongs to.
fn rotated_of<'a>(files: &'a [LogFile], f: &LogFile) -> Option<&'a PathBuf> {
    let s = f.path.to_str()?.strip_suffix(".1")?;
    files
        .iter()
        .map(|o| &o.path)
        .find(|p| p.to_str() == Some(s))
}

/// Every line of a container's files, read once (archived or finished).
pub fn read_all(files: &[LogFile]) -> Vec<Entry> {
    crilog::read_entries(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::crilog::encode;

    fn e(time: Option<Nanos>, line: &str) -> Entry {
        Entry {
            time,
            stream: Stream::Stdout,
            line: line.as_bytes().to_vec(),
        }
    }

    fn lines(v: &[Entry]) -> Vec<String> {
        v.iter()
            .map(|e| String::from_utf8(e.line.clone()).unwrap())
            .collect()
    }

    #[test]
    fn retention_keeps_the_newest_run_within_count_and_bytes() {
        let cases: &[(&str, &[u64], usize, u64, usize)] = &[
            ("nothing archived", &[], 5, 100, 0),
            ("under both bounds", &[10, 10, 10], 5, 100, 3),
            ("count bound", &[1, 1, 1, 1, 1, 1, 1], 5, 100, 5),
            ("byte bound", &[40, 40, 40], 5, 100, 2),
            ("exactly at the byte bound", &[50, 50], 5, 100, 2),
            ("newest alone is over: kept", &[500, 1], 5, 100, 1),
            (
                "an older small one after a gap is not kept",
                &[60, 60, 1],
                5,
                100,
                1,
            ),
            ("keep 1", &[1, 1], 1, 100, 1),
            ("keep 0 still keeps the newest", &[1, 1], 0, 100, 1),
        ];
        for (name, sizes, keep, max, want) in cases {
            assert_eq!(retained(sizes, *keep, *max), *want, "{name}");
        }
    }

    #[test]
    fn merge_orders_by_time_and_keeps_each_source_in_order() {
        let a = vec![e(Some(1), "a1"), e(Some(4), "a4"), e(Some(6), "a6")];
        let b = vec![e(Some(2), "b2"), e(Some(3), "b3"), e(Some(7), "b7")];
        assert_eq!(
            lines(&merge(vec![a, b])),
            ["a1", "b2", "b3", "a4", "a6", "b7"]
        );
        // Equal times: the earlier source first.
        let a = vec![e(Some(5), "a")];
        let b = vec![e(Some(5), "b")];
        assert_eq!(lines(&merge(vec![a, b])), ["a", "b"]);
        // A clock step back does not reorder a source; untimed lines stay
        // after the line before them.
        let a = vec![e(Some(10), "a10"), e(Some(2), "a2"), e(None, "a-untimed")];
        let b = vec![e(Some(5), "b5"), e(Some(11), "b11")];
        assert_eq!(
            lines(&merge(vec![a, b])),
            ["b5", "a10", "a2", "a-untimed", "b11"]
        );
        // Untimed-only sources (pre-CRI files) come first, in order.
        let a = vec![e(None, "old1"), e(None, "old2")];
        let b = vec![e(Some(1), "new")];
        assert_eq!(lines(&merge(vec![b, a])), ["old1", "old2", "new"]);
        assert!(merge(vec![vec![], vec![]]).is_empty());
    }

    #[test]
    fn select_applies_since_then_tail_and_render_prefixes_times() {
        let v = vec![
            e(None, "old"),
            e(Some(1), "one"),
            e(Some(2), "two"),
            e(Some(3), "three"),
        ];
        let q = |tail, since| LogQuery {
            tail,
            since,
            timestamps: false,
        };
        assert_eq!(lines(&select(v.clone(), &q(None, None))).len(), 4);
        assert_eq!(
            lines(&select(v.clone(), &q(Some(2), None))),
            ["two", "three"]
        );
        assert_eq!(lines(&select(v.clone(), &q(Some(0), None))).len(), 0);
        assert_eq!(lines(&select(v.clone(), &q(Some(9), None))).len(), 4);
        assert_eq!(
            lines(&select(v.clone(), &q(None, Some(2)))),
            ["two", "three"]
        );
        assert_eq!(lines(&select(v.clone(), &q(Some(1), Some(2)))), ["three"]);
        let mut out = Vec::new();
        render(&v[..2], true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "old\n1970-01-01T00:00:00.000000001Z one\n"
        );
        let mut out = Vec::new();
        render(&v[1..3], false, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "one\ntwo\n");
    }

    fn write_records(path: &Path, recs: &[(Nanos, Stream, bool, &str)]) {
        use std::io::Write as _;
        let mut buf = Vec::new();
        for (t, s, p, c) in recs {
            encode(&mut buf, *t, *s, *p, c.as_bytes());
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(&buf).unwrap();
    }

    #[test]
    fn a_tail_follows_across_rotation_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("container.log");
        let old = dir.path().join("container.log.1");
        write_records(&old, &[(1, Stream::Stdout, false, "r1")]);
        write_records(&live, &[(2, Stream::Stdout, true, "split-")]);
        let files = [
            LogFile {
                path: old.clone(),
                stream: Stream::Stdout,
            },
            LogFile {
                path: live.clone(),
                stream: Stream::Stdout,
            },
        ];
        let (mut t, head) = ContainerTail::open("c", &files);
        assert_eq!(lines(&head), ["r1"]);
        // The monitor appends, then rotates (rename + new file) mid-line.
        write_records(&live, &[(3, Stream::Stderr, false, "e3")]);
        assert_eq!(lines(&t.poll()), ["e3"]);
        write_records(&live, &[(4, Stream::Stdout, false, "line")]);
        std::fs::rename(&live, &old).unwrap();
        write_records(&live, &[(5, Stream::Stdout, false, "after")]);
        assert_eq!(lines(&t.poll()), ["split-line", "after"]);
        assert!(t.poll().is_empty());
        // The container is removed: its file moves to the archive.
        write_records(&live, &[(6, Stream::Stdout, false, "last")]);
        std::fs::rename(&live, dir.path().join("archived.log")).unwrap();
        assert_eq!(lines(&t.finish()), ["last"]);
    }

    fn info(dir: &Path, id: &str, service: &str) -> ContainerInfo {
        let cdir = dir.join("containers").join(id);
        std::fs::create_dir_all(cdir.join("logs")).unwrap();
        ContainerInfo {
            id: id.into(),
            name: id.into(),
            labels: [
                (LABEL_SERVICE.to_string(), service.to_string()),
                (LABEL_REVISION.to_string(), "3".to_string()),
            ]
            .into(),
            dir: cdir,
            created_at: std::time::SystemTime::UNIX_EPOCH,
            state: ContainerState::Exited {
                code: 1,
                signal: None,
                oom_killed: false,
                finished_at: std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5),
            },
        }
    }

    /// `logs --previous` right as a replica is removed: the metadata is
    /// there, its file not moved in yet. The reader waits for it instead of
    /// showing nothing.
    #[test]
    fn an_archive_caught_before_its_files_moved_in_is_read_whole() {
        let state = tempfile::tempdir().unwrap();
        let archive = LogArchive::new(state.path().join("logs"), 2, 1 << 20);
        let c = info(state.path(), "web-1", "web");
        let live = c.dir.join("logs/container.log");
        write_records(&live, &[(1, Stream::Stdout, false, "last words")]);
        archive
            .archive(&c, &crate::runtime::Runtime::logs_in(&c.dir))
            .unwrap();
        // Back to the moment between the metadata and the move.
        let moved = state.path().join("logs/web/web-1.log");
        let aside = state.path().join("aside.log");
        std::fs::rename(&moved, &aside).unwrap();
        let mover = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            std::fs::rename(&aside, &moved).unwrap();
        });
        let newest = archive.list("web").remove(0);
        assert_eq!(lines(&newest.read_all()), ["last words"]);
        mover.join().unwrap();
    }

    #[test]
    fn archive_moves_logs_keeps_metadata_and_prunes() {
        let state = tempfile::tempdir().unwrap();
        let archive = LogArchive::new(state.path().join("logs"), 2, 1 << 20);
        for (i, id) in ["web-1", "web-2", "web-3"].iter().enumerate() {
            let c = info(state.path(), id, "web");
            let live = c.dir.join("logs/container.log");
            write_records(&live, &[(i as Nanos, Stream::Stderr, false, id)]);
            let files = crate::runtime::Runtime::logs_in(&c.dir);
            archive.archive(&c, &files).unwrap();
            assert!(!live.exists());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let list = archive.list("web");
        let ids: Vec<&str> = list.iter().map(|a| a.meta.id.as_str()).collect();
        assert_eq!(ids, ["web-3", "web-2"], "newest first, keep 2");
        let web1 = state.path().join("logs/web/web-1.log");
        assert!(!web1.exists() && !state.path().join("logs/web/web-1.json").exists());
        let newest = &list[0];
        assert_eq!(newest.meta.exit_code, Some(1));
        assert_eq!(newest.meta.revision, Some(3));
        assert_eq!(
            newest.meta.finished_at.as_deref(),
            Some("1970-01-01T00:00:05.000000000Z")
        );
        assert_eq!(lines(&read_all(&newest.files())), ["web-3"]);
        assert_eq!(archive.find("web-2").unwrap().unwrap().meta.id, "web-2");
        assert_eq!(archive.find("web-").unwrap_err(), 2);
        assert!(archive.find("api").unwrap().is_none());
        // GC: a stray file goes; a service nobody names any more goes whole.
        std::fs::write(state.path().join("logs/web/stray.log"), "x").unwrap();
        let r = archive.gc(&["web".to_string()].into());
        assert_eq!(r.containers, 0);
        assert!(!state.path().join("logs/web/stray.log").exists());
        assert_eq!(archive.list("web").len(), 2);
        let r = archive.gc(&BTreeSet::new());
        assert_eq!(r.containers, 2);
        assert!(!state.path().join("logs/web").exists());
    }
}
