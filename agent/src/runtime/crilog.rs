//! Container logs in the CRI log format (what kubelet and containerd write and
//! `crictl logs` reads): one record per line,
//! `<RFC3339Nano time> <stdout|stderr> <P|F> <content>\n`. A line longer than
//! [`MAX_LINE`] is split into `P` (partial) records and a closing `F` (full)
//! one, as containerd does with `max_container_log_line_size`. The monitor
//! encodes ([`LineSplitter`], [`encode`]); readers decode ([`decode`]) and join
//! fragments back into lines ([`Decoder`]). Text without a CRI prefix (log files
//! written before this format, by monitors of re-adopted containers) decodes as
//! lines of the file's stream with no timestamp.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest content of one record; longer lines become `P` records (16 KiB,
/// containerd's default `max_container_log_line_size`).
pub const MAX_LINE: usize = 16 * 1024;

/// Nanoseconds since the Unix epoch (UTC); enough until the year 2262.
pub type Nanos = i64;

/// The stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`, as in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One log file and the stream of its lines that carry no CRI prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFile {
    pub path: PathBuf,
    pub stream: Stream,
}

/// One decoded record (one line of a log file, without its `\n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// `None` for text without a CRI prefix.
    pub time: Option<Nanos>,
    pub stream: Stream,
    /// `P`: the line continues in the stream's next record.
    pub partial: bool,
    pub content: &'a [u8],
}

/// One whole line as read back: fragments joined, without its `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When the line was complete (the time of its `F` record); `None` for
    /// text without a CRI prefix.
    pub time: Option<Nanos>,
    pub stream: Stream,
    pub line: Vec<u8>,
}

/// The current time as [`Nanos`].
pub fn now() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as Nanos)
        .unwrap_or(0)
}

/// Appends `t` as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (RFC 3339, UTC, always
/// nine fraction digits so the text sorts as the time does). Times before
/// 1970 are written as the epoch. No allocation beyond `out`, no time zone
/// database: the monitor calls this per line.
pub fn format_time(t: Nanos, out: &mut Vec<u8>) {
    let t = t.max(0);
    let secs = t / 1_000_000_000;
    let nanos = t % 1_000_000_000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let sod = secs % 86_400;
    num(out, y, 4);
    out.push(b'-');
    num(out, m, 2);
    out.push(b'-');
    num(out, d, 2);
    out.push(b'T');
    num(out, sod / 3600, 2);
    out.push(b':');
    num(out, sod / 60 % 60, 2);
    out.push(b':');
    num(out, sod % 60, 2);
    out.push(b'.');
    num(out, nanos, 9);
    out.push(b'Z');
}

/// Appends `v` as exactly `width` (at most 9) decimal digits.
fn num(out: &mut Vec<u8>, mut v: i64, width: usize) {
    let mut buf = [b'0'; 9];
    for i in (0..width).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

/// [`format_time`] as a `String`.
pub fn time_string(t: Nanos) -> String {
    let mut v = Vec::with_capacity(30);
    format_time(t, &mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// Year, month, day of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses any RFC 3339 time (`2024-05-01T10:00:00Z`, fractions of any
/// length, numeric offsets) into [`Nanos`], saturating outside its range.
pub fn parse_time(text: &str) -> Option<Nanos> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(nanos_of)
}

/// A time as [`Nanos`]; beyond the range (before 1678, after 2262) the nearest end.
pub fn nanos_of(t: time::OffsetDateTime) -> Nanos {
    let ns = t.unix_timestamp_nanos();
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}

/// Appends one record: `<time> <stream> <P|F> <content>\n`. `content` must
/// not contain `\n`.
pub fn encode(out: &mut Vec<u8>, time: Nanos, stream: Stream, partial: bool, content: &[u8]) {
    format_time(time, out);
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Decodes one line of a log file (without its `\n`). A line that is not a
/// CRI record is returned whole as a full line of `default` with no time.
pub fn decode(line: &[u8], default: Stream) -> Record<'_> {
    let raw = Record {
        time: None,
        stream: default,
        partial: false,
        content: line,
    };
    let mut parts = line.splitn(4, |b| *b == b' ');
    let (Some(ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return raw;
    };
    let content = parts.next().unwrap_or_default();
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return raw,
    };
    // Tags are `:`-separated (CRI reserves room for more); the first is P or F.
    let partial = match tag.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return raw,
    };
    let Some(time) = std::str::from_utf8(ts).ok().and_then(parse_time) else {
        return raw;
    };
    Record {
        time: Some(time),
        stream,
        partial,
        content,
    }
}

/// One stream's bytes cut into records as they arrive from a pipe: each
/// complete line is one `F` record, a line longer than `max` becomes `P`
/// records of `max` bytes and a closing `F`. Bytes after the last `\n` wait
/// for the rest of their line (or [`LineSplitter::finish`]).
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    max: usize,
    buf: Vec<u8>,
    /// The record being encoded (kept to reuse its allocation).
    rec: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream, max: usize) -> Self {
        LineSplitter {
            stream,
            max: max.max(1),
            buf: Vec::new(),
            rec: Vec::new(),
        }
    }

    /// Feeds bytes read at `time`; `emit` gets each finished record.
    pub fn push(&mut self, data: &[u8], time: Nanos, emit: &mut impl FnMut(&[u8])) {
        let mut rest = data;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            self.append(&rest[..i], time, emit);
            self.record(time, false, emit);
            rest = &rest[i + 1..];
        }
        self.append(rest, time, emit);
    }

    /// The stream ended: what waits for a `\n` becomes a last `F` record.
    pub fn finish(&mut self, time: Nanos, emit: &mut impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            self.record(time, false, emit);
        }
    }

    fn append(&mut self, mut bytes: &[u8], time: Nanos, emit: &mut impl FnMut(&[u8])) {
        while self.buf.len() + bytes.len() > self.max {
            let take = self.max - self.buf.len();
            self.buf.extend_from_slice(&bytes[..take]);
            self.record(time, true, emit);
            bytes = &bytes[take..];
        }
        self.buf.extend_from_slice(bytes);
    }

    fn record(&mut self, time: Nanos, partial: bool, emit: &mut impl FnMut(&[u8])) {
        self.rec.clear();
        encode(&mut self.rec, time, self.stream, partial, &self.buf);
        self.buf.clear();
        emit(&self.rec);
    }
}

/// Turns a log file's bytes, fed in any pieces, into [`Entry`]s: records are
/// decoded once their `\n` has arrived and `P` fragments are joined (per
/// stream, as both streams share one file) with the stream's next records up
/// to its `F`. Feeding the files of a container in order (rotated first)
/// joins a line split across a rotation too.
#[derive(Debug, Default)]
pub struct Decoder {
    carry: Vec<u8>,
    pending: [Option<Vec<u8>>; 2],
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Decodes the complete lines of `data` (and of what was carried over);
    /// `default` is the stream of lines without a CRI prefix.
    pub fn feed(&mut self, data: &[u8], default: Stream, out: &mut Vec<Entry>) {
        let mut data = data;
        if !self.carry.is_empty() {
            let Some(i) = data.iter().position(|b| *b == b'\n') else {
                self.carry.extend_from_slice(data);
                return;
            };
            let mut line = std::mem::take(&mut self.carry);
            line.extend_from_slice(&data[..i]);
            self.line(&line, default, out);
            data = &data[i + 1..];
        }
        let mut rest = data;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            self.line(&rest[..i], default, out);
            rest = &rest[i + 1..];
        }
        self.carry.extend_from_slice(rest);
    }

    /// The input ended: a last line without `\n` and fragments whose `F`
    /// never came are returned as they are.
    pub fn finish(&mut self, default: Stream, out: &mut Vec<Entry>) {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.line(&line, default, out);
        }
        for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            if let Some(line) = self.pending[slot].take() {
                out.push(Entry {
                    time: None,
                    stream,
                    line,
                });
            }
        }
    }

    fn line(&mut self, line: &[u8], default: Stream, out: &mut Vec<Entry>) {
        let rec = decode(line, default);
        let slot = &mut self.pending[rec.stream as usize];
        if rec.partial {
            slot.get_or_insert_with(Vec::new)
                .extend_from_slice(rec.content);
            return;
        }
        let line = match slot.take() {
            Some(mut head) => {
                head.extend_from_slice(rec.content);
                head
            }
            None => rec.content.to_vec(),
        };
        out.push(Entry {
            time: rec.time,
            stream: rec.stream,
            line,
        });
    }
}

/// Reads and decodes a container's log files in order (missing files are
/// skipped: a rotation may have just renamed one). A line continues from a
/// rotated file `X.1` into `X` only; any other file ends the lines before it.
pub fn read_entries(files: &[LogFile]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut dec = Decoder::new();
    let mut prev: Option<&LogFile> = None;
    for f in files {
        if let Some(p) = prev {
            let continues = p
                .path
                .to_str()
                .and_then(|s| s.strip_suffix(".1"))
                .is_some_and(|s| Path::new(s) == f.path);
            if !continues {
                dec.finish(p.stream, &mut out);
            }
        }
        if let Ok(bytes) = read_file(&f.path) {
            dec.feed(&bytes, f.stream, &mut out);
        }
        prev = Some(f);
    }
    if let Some(p) = prev {
        dec.finish(p.stream, &mut out);
    }
    out
}

fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn records(stream: Stream, max: usize, chunks: &[(&[u8], Nanos)], end: Nanos) -> Vec<String> {
        let mut s = LineSplitter::new(stream, max);
        let mut out = Vec::new();
        let mut emit = |r: &[u8]| out.push(String::from_utf8(r.to_vec()).unwrap());
        for (c, t) in chunks {
            s.push(c, *t, &mut emit);
        }
        s.finish(end, &mut emit);
        out
    }

    const T0: Nanos = 1_700_000_000_123_456_789;

    #[test]
    fn times_format_as_fixed_width_rfc3339_utc() {
        let rfc = &time::format_description::well_known::Rfc3339;
        for t in [
            0,
            1,
            999_999_999,
            T0,
            951_782_400_000_000_000,   // 2000-02-29 (leap day)
            4_102_444_799_999_999_999, // 2099-12-31T23:59:59.999999999
            -5,                        // clamped to the epoch
        ] {
            let s = time_string(t);
            assert_eq!(s.len(), 30, "{s}");
            let expect = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.max(0)))
                .unwrap()
                .format(rfc)
                .unwrap();
            // `time` trims trailing fraction zeros; both name the same instant.
            assert_eq!(parse_time(&s), Some(t.max(0)), "{s} vs {expect}");
            assert_eq!(parse_time(&expect), Some(t.max(0)));
        }
        assert_eq!(time_string(T0), "2023-11-14T22:13:20.123456789Z");
        // Offsets and short fractions (containerd's RFC3339Nano) parse too.
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00"),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2999-01-01T00:00:00Z"), Some(Nanos::MAX));
    }

    #[test]
    fn splitter_writes_full_and_partial_records() {
        type Case<'a> = (&'a str, usize, &'a [(&'a [u8], Nanos)], Vec<&'a str>);
        let cases: &[Case<'_>] = &[
            (
                "one line per record, time of its read",
                100,
                &[(b"a\nbb\n", T0)],
                vec![
                    "2023-11-14T22:13:20.123456789Z stdout F a\n",
                    "2023-11-14T22:13:20.123456789Z stdout F bb\n",
                ],
            ),
            (
                "a line spanning reads gets the time it was completed",
                100,
                &[(b"he", T0), (b"llo\n", T0 + 1)],
                vec!["2023-11-14T22:13:20.123456790Z stdout F hello\n"],
            ),
            (
                "an empty line is a record",
                100,
                &[(b"\n", T0)],
                vec!["2023-11-14T22:13:20.123456789Z stdout F \n"],
            ),
            (
                "longer than max: P fragments then F",
                4,
                &[(b"abcdefghij\n", T0)],
                vec![
                    "2023-11-14T22:13:20.123456789Z stdout P abcd\n",
                    "2023-11-14T22:13:20.123456789Z stdout P efgh\n",
                    "2023-11-14T22:13:20.123456789Z stdout F ij\n",
                ],
            ),
            (
                "exactly max is one F record",
                4,
                &[(b"abcd\n", T0)],
                vec!["2023-11-14T22:13:20.123456789Z stdout F abcd\n"],
            ),
            (
                "the unterminated rest is flushed as F at the end",
                100,
                &[(b"x\nno newline", T0)],
                vec![
                    "2023-11-14T22:13:20.123456789Z stdout F x\n",
                    "2023-11-14T22:13:20.123456799Z stdout F no newline\n",
                ],
            ),
        ];
        for (name, max, chunks, want) in cases {
            assert_eq!(
                records(Stream::Stdout, *max, chunks, T0 + 10),
                *want,
                "{name}"
            );
        }
        assert_eq!(
            records(Stream::Stderr, 100, &[(b"e\n", T0)], T0),
            vec!["2023-11-14T22:13:20.123456789Z stderr F e\n"]
        );
    }

    #[test]
    fn decode_reads_records_and_falls_back_to_raw_lines() {
        let full = decode(
            b"2023-11-14T22:13:20.123456789Z stderr F a b  c",
            Stream::Stdout,
        );
        assert_eq!(
            full,
            Record {
                time: Some(T0),
                stream: Stream::Stderr,
                partial: false,
                content: b"a b  c"
            }
        );
        let part = decode(
            b"2023-11-14T22:13:20.123456789Z stdout P:x abc",
            Stream::Stderr,
        );
        assert!(part.partial && part.stream == Stream::Stdout && part.content == b"abc");
        // An empty line written without the separating space still decodes.
        let empty = decode(b"2023-11-14T22:13:20.123456789Z stdout F", Stream::Stdout);
        assert_eq!((empty.time, empty.content), (Some(T0), &b""[..]));
        // Anything else is a raw line of the file's stream, with no time.
        for raw in [
            &b"hello world"[..],
            b"",
            b"2023-11-14T22:13:20Z stdin F x",
            b"2023-11-14T22:13:20Z stdout X x",
            b"not-a-time stdout F x",
        ] {
            assert_eq!(
                decode(raw, Stream::Stderr),
                Record {
                    time: None,
                    stream: Stream::Stderr,
                    partial: false,
                    content: raw
                },
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn decoder_joins_fragments_per_stream_and_across_feeds() {
        let mut enc = Vec::new();
        encode(&mut enc, T0, Stream::Stdout, true, b"long-");
        encode(&mut enc, T0 + 1, Stream::Stderr, false, b"err");
        encode(&mut enc, T0 + 2, Stream::Stdout, true, b"er-");
        encode(&mut enc, T0 + 3, Stream::Stdout, false, b"line");
        encode(&mut enc, T0 + 4, Stream::Stdout, false, b"next");
        // Fed in awkward pieces: records split anywhere.
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        for piece in enc.chunks(7) {
            dec.feed(piece, Stream::Stdout, &mut out);
        }
        dec.finish(Stream::Stdout, &mut out);
        let got: Vec<(Option<Nanos>, Stream, &[u8])> = out
            .iter()
            .map(|e| (e.time, e.stream, e.line.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(T0 + 1), Stream::Stderr, &b"err"[..]),
                (Some(T0 + 3), Stream::Stdout, &b"long-er-line"[..]),
                (Some(T0 + 4), Stream::Stdout, &b"next"[..]),
            ]
        );
    }

    #[test]
    fn splitter_output_decodes_back_to_the_lines() {
        let long = "x".repeat(40_000);
        let text = format!("short\n{long}\n\nlast");
        let mut file = Vec::new();
        let mut s = LineSplitter::new(Stream::Stderr, MAX_LINE);
        s.push(text.as_bytes(), T0, &mut |r| file.extend_from_slice(r));
        s.finish(T0, &mut |r| file.extend_from_slice(r));
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        dec.feed(&file, Stream::Stdout, &mut out);
        dec.finish(Stream::Stdout, &mut out);
        let lines: Vec<String> = out
            .iter()
            .map(|e| String::from_utf8(e.line.clone()).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec!["short".to_string(), long, String::new(), "last".into()]
        );
        assert!(out
            .iter()
            .all(|e| e.stream == Stream::Stderr && e.time == Some(T0)));
    }

    #[test]
    fn old_format_files_read_as_untimed_lines_of_their_stream() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout.log");
        let err = dir.path().join("stderr.log");
        std::fs::write(&out, "o1\no2").unwrap();
        std::fs::write(&err, "e1").unwrap();
        let cri = dir.path().join("container.log");
        let mut rec = Vec::new();
        encode(&mut rec, T0, Stream::Stdout, false, b"new");
        std::fs::write(&cri, rec).unwrap();
        let files = [
            LogFile {
                path: dir.path().join("stdout.log.1"), // missing
                stream: Stream::Stdout,
            },
            LogFile {
                path: out,
                stream: Stream::Stdout,
            },
            LogFile {
                path: err,
                stream: Stream::Stderr,
            },
            LogFile {
                path: cri,
                stream: Stream::Stdout,
            },
        ];
        let got: Vec<(Option<Nanos>, Stream, String)> = read_entries(&files)
            .into_iter()
            .map(|e| (e.time, e.stream, String::from_utf8(e.line).unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                (None, Stream::Stdout, "o1".into()),
                (None, Stream::Stdout, "o2".into()),
                (None, Stream::Stderr, "e1".into()),
                (Some(T0), Stream::Stdout, "new".into()),
            ]
        );
    }
}
