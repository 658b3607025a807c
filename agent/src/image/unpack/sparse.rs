//! GNU sparse files in PAX form — formats 0.0, 0.1 and 1.0, what
//! `tar --format=posix --sparse` writes (GNU tar manual, "Storing Sparse
//! Files"). Pure decisions for the applier: [`from_pax`] turns an entry's
//! `GNU.sparse.*` records into a [`SparseHeader`], [`MapParser`] reads the 1.0
//! map that leads the entry's data, [`validate`] checks a map against the real
//! size and the stored data (the checks of Go's `archive/tar` and bsdtar).

/// Bytes a 1.0 map (in the data) may take, and so the most segments any map
/// may list (each needs at least `"0\n0\n"`).
pub(super) const MAX_MAP_BYTES: u64 = 1 << 20;
const MAX_SEGMENTS: u64 = MAX_MAP_BYTES / 4;
/// The 1.0 map is stored in whole tar blocks.
pub(super) const MAP_BLOCK: usize = 512;

/// One data region of a sparse file: `len` stored bytes belong at `offset`.
/// Everything between segments (and after the last, up to the real size) is
/// a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub offset: u64,
    pub len: u64,
}

/// Which GNU sparse PAX format an entry uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// Repeated `GNU.sparse.offset` / `GNU.sparse.numbytes` records.
    V0_0,
    /// One `GNU.sparse.map` record: `offset,len,offset,len,…`.
    V0_1,
    /// `GNU.sparse.major=1`, `minor=0`; the map leads the data (see [`MapParser`]).
    V1_0,
}

/// What an entry's `GNU.sparse.*` records say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SparseHeader {
    pub format: Format,
    /// The file's size once holes are restored (`GNU.sparse.size` / `realsize`).
    pub real_size: u64,
    /// The file's real name (`GNU.sparse.name`); the header carries a
    /// placeholder (`…/GNUSparseFile.PID/NAME`) in 0.1 and 1.0.
    pub name: Option<Vec<u8>>,
    /// 0.x: the map from the records. 1.0: empty (read it with [`MapParser`]).
    pub map: Vec<Segment>,
    /// 1.0 only: a `GNU.sparse.numblocks` record, which the data's map must match.
    pub count: Option<u64>,
}

/// Why an entry's sparse description is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SparseError {
    /// A number that is not plain decimal digits below 2^64.
    #[error("{field} {value:?} is not a decimal number below 2^64")]
    Number { field: String, value: String },
    /// The same record twice (writers never do; readers would disagree).
    #[error("PAX record {0} appears twice")]
    Duplicate(String),
    /// A `GNU.sparse.*` key no GNU tar writes.
    #[error("unknown PAX record {0}")]
    UnknownRecord(String),
    /// A major/minor pair other than 0.0, 0.1 and 1.0.
    #[error("unsupported GNU sparse format version {major}.{minor}")]
    Version { major: String, minor: String },
    /// Neither `GNU.sparse.size` nor `GNU.sparse.realsize`.
    #[error("no GNU.sparse.size or GNU.sparse.realsize record (real size unknown)")]
    MissingRealSize,
    /// Both size records, with different values.
    #[error("GNU.sparse.size {size} and GNU.sparse.realsize {realsize} disagree")]
    ConflictingRealSize { size: u64, realsize: u64 },
    /// A 0.x header without `GNU.sparse.numblocks`.
    #[error("no GNU.sparse.numblocks record")]
    MissingCount,
    /// Records of two formats at once.
    #[error("mixed sparse formats: {0}")]
    MixedFormats(&'static str),
    /// Offsets and lengths that do not pair up.
    #[error("sparse map does not pair up: {0}")]
    Pairing(&'static str),
    /// More segments than any valid map can hold.
    #[error("sparse map claims {0} segments (at most {MAX_SEGMENTS})")]
    TooManySegments(u64),
    /// `numblocks` (or the 1.0 count) and the listed segments differ.
    #[error("sparse map declares {declared} segments but lists {found}")]
    CountMismatch { declared: u64, found: u64 },
    /// A segment that ends past the real size (or past 2^64).
    #[error(
        "sparse segment {index} (offset {offset}, {len} bytes) ends past the real size {real_size}"
    )]
    PastRealSize {
        index: usize,
        offset: u64,
        len: u64,
        real_size: u64,
    },
    /// A segment starting before the previous one ends.
    #[error(
        "sparse segment {index} at offset {offset} starts before the previous one ends \
         ({prev_end}): segments overlap or are not sorted"
    )]
    Unsorted {
        index: usize,
        offset: u64,
        prev_end: u64,
    },
    /// The map's lengths do not add up to the data stored in the entry.
    #[error("sparse map covers {mapped} data bytes but the entry stores {stored}")]
    DataMismatch { mapped: u128, stored: u64 },
    /// A 1.0 map over [`MAX_MAP_BYTES`].
    #[error("sparse map is over {MAX_MAP_BYTES} bytes")]
    MapTooLarge,
    /// A 1.0 map that does not end within the entry's data.
    #[error("sparse map runs past the entry's {stored} stored bytes")]
    MapPastData { stored: u64 },
    /// A byte other than a digit or newline in a 1.0 map.
    #[error("sparse map has byte {byte:#04x} at offset {at} (only digits and newlines)")]
    MapSyntax { byte: u8, at: u64 },
}

/// Parses an entry's `GNU.sparse.*` PAX records (keys with the prefix, in
/// archive order, as 0.0 repeats `offset`/`numbytes`). `records` must not be
/// empty. The map is not validated against the sizes here (see [`validate`]).
pub(super) fn from_pax(records: &[(String, Vec<u8>)]) -> Result<SparseHeader, SparseError> {
    let mut major: Option<u64> = None;
    let mut minor: Option<u64> = None;
    let mut size = None;
    let mut realsize = None;
    let mut numblocks = None;
    let mut name = None;
    let mut map01: Option<Vec<u64>> = None;
    let mut pairs: Vec<u64> = Vec::new();
    for (key, value) in records {
        let set = |slot: &mut Option<u64>| -> Result<(), SparseError> {
            if slot.is_some() {
                return Err(SparseError::Duplicate(key.clone()));
            }
            *slot = Some(number(key, value)?);
            Ok(())
        };
        match key.as_str() {
            "GNU.sparse.major" => set(&mut major)?,
            "GNU.sparse.minor" => set(&mut minor)?,
            "GNU.sparse.size" => set(&mut size)?,
            "GNU.sparse.realsize" => set(&mut realsize)?,
            "GNU.sparse.numblocks" => set(&mut numblocks)?,
            "GNU.sparse.name" => {
                if name.is_some() {
                    return Err(SparseError::Duplicate(key.clone()));
                }
                name = Some(value.clone());
            }
            "GNU.sparse.map" => {
                if map01.is_some() {
                    return Err(SparseError::Duplicate(key.clone()));
                }
                let mut nums = Vec::new();
                if !value.is_empty() {
                    for v in value.split(|b| *b == b',') {
                        if nums.len() as u64 >= 2 * MAX_SEGMENTS {
                            return Err(SparseError::TooManySegments(nums.len() as u64 / 2 + 1));
                        }
                        nums.push(number(key, v)?);
                    }
                }
                map01 = Some(nums);
            }
            "GNU.sparse.offset" | "GNU.sparse.numbytes" => {
                let want_offset = pairs.len().is_multiple_of(2);
                if want_offset != (key == "GNU.sparse.offset") {
                    return Err(SparseError::Pairing(if want_offset {
                        "GNU.sparse.numbytes without a GNU.sparse.offset before it"
                    } else {
                        "GNU.sparse.offset twice without a GNU.sparse.numbytes between"
                    }));
                }
                if pairs.len() as u64 >= 2 * MAX_SEGMENTS {
                    return Err(SparseError::TooManySegments(pairs.len() as u64 / 2 + 1));
                }
                pairs.push(number(key, value)?);
            }
            _ => return Err(SparseError::UnknownRecord(key.clone())),
        }
    }
    let real_size = match (size, realsize) {
        (Some(s), Some(r)) if s != r => {
            return Err(SparseError::ConflictingRealSize {
                size: s,
                realsize: r,
            })
        }
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => return Err(SparseError::MissingRealSize),
    };
    let v1 = match (major, minor) {
        (Some(1), Some(0)) => true,
        (Some(0), Some(0 | 1)) | (None, None) => false,
        (major, minor) => {
            let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
            return Err(SparseError::Version {
                major: show(major),
                minor: show(minor),
            });
        }
    };
    if v1 {
        if map01.is_some() || !pairs.is_empty() {
            return Err(SparseError::MixedFormats(
                "0.x map records in a 1.0 header (whose map is in the data)",
            ));
        }
        return Ok(SparseHeader {
            format: Format::V1_0,
            real_size,
            name,
            map: Vec::new(),
            count: numblocks,
        });
    }
    let (format, nums) = match (map01, pairs.is_empty()) {
        (Some(_), false) => {
            return Err(SparseError::MixedFormats(
                "both GNU.sparse.map and GNU.sparse.offset/numbytes records",
            ))
        }
        (Some(nums), true) => {
            if !nums.len().is_multiple_of(2) {
                return Err(SparseError::Pairing(
                    "GNU.sparse.map has an odd number of values",
                ));
            }
            (Format::V0_1, nums)
        }
        (None, _) => {
            if !pairs.len().is_multiple_of(2) {
                return Err(SparseError::Pairing(
                    "last GNU.sparse.offset has no GNU.sparse.numbytes",
                ));
            }
            (Format::V0_0, pairs)
        }
    };
    let declared = numblocks.ok_or(SparseError::MissingCount)?;
    let map = segments(&nums);
    if declared != map.len() as u64 {
        return Err(SparseError::CountMismatch {
            declared,
            found: map.len() as u64,
        });
    }
    Ok(SparseHeader {
        format,
        real_size,
        name,
        map,
        count: None,
    })
}

fn segments(nums: &[u64]) -> Vec<Segment> {
    nums.chunks_exact(2)
        .map(|p| Segment {
            offset: p[0],
            len: p[1],
        })
        .collect()
}

/// Plain decimal (GNU tar writes nothing else; no sign, no spaces).
fn number(field: &str, value: &[u8]) -> Result<u64, SparseError> {
    let bad = || SparseError::Number {
        field: field.to_owned(),
        value: String::from_utf8_lossy(value).into_owned(),
    };
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)
}

/// Checks a map against the real size and the entry's stored data: every
/// segment inside the real size, in order and not overlapping (as GNU tar
/// writes them), and the lengths adding up to exactly `stored` bytes (no
/// segment reads past the data, no data is left unreferenced).
pub(super) fn validate(map: &[Segment], real_size: u64, stored: u64) -> Result<(), SparseError> {
    let mut prev_end = 0u64;
    let mut mapped: u128 = 0;
    for (index, s) in map.iter().enumerate() {
        let end = s.offset.checked_add(s.len).filter(|e| *e <= real_size);
        let Some(end) = end else {
            return Err(SparseError::PastRealSize {
                index,
                offset: s.offset,
                len: s.len,
                real_size,
            });
        };
        if s.offset < prev_end {
            return Err(SparseError::Unsorted {
                index,
                offset: s.offset,
                prev_end,
            });
        }
        prev_end = end;
        mapped += u128::from(s.len);
    }
    if mapped != u128::from(stored) {
        return Err(SparseError::DataMismatch { mapped, stored });
    }
    Ok(())
}

/// Incremental parser of a format 1.0 map: decimal numbers, each ending in
/// `\n` — the segment count, then offset and length per segment — padded with
/// anything to a whole [`MAP_BLOCK`]; the file's data starts at the next block.
#[derive(Debug, Default)]
pub(super) struct MapParser {
    count: Option<u64>,
    nums: Vec<u64>,
    cur: Option<u64>,
    fed: u64,
}

impl MapParser {
    /// Feeds the next block of the entry's data (exactly [`MAP_BLOCK`] bytes).
    /// Returns the map once complete (the rest of that block is padding).
    pub(super) fn feed(&mut self, block: &[u8]) -> Result<Option<Vec<Segment>>, SparseError> {
        let start = self.fed;
        self.fed += block.len() as u64;
        if self.fed > MAX_MAP_BYTES {
            return Err(SparseError::MapTooLarge);
        }
        for (i, &b) in block.iter().enumerate() {
            if b == b'\n' {
                let Some(n) = self.cur.take() else {
                    return Err(SparseError::MapSyntax {
                        byte: b,
                        at: start + i as u64,
                    });
                };
                match self.count {
                    None if n > MAX_SEGMENTS => return Err(SparseError::TooManySegments(n)),
                    None => self.count = Some(n),
                    Some(_) => self.nums.push(n),
                }
                // `count` is set here; the map is done when all pairs are in.
                if self.count.is_some_and(|c| self.nums.len() as u64 == 2 * c) {
                    return Ok(Some(segments(&std::mem::take(&mut self.nums))));
                }
            } else if b.is_ascii_digit() {
                let d = u64::from(b - b'0');
                let n = self
                    .cur
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(d));
                let Some(n) = n else {
                    return Err(SparseError::Number {
                        field: "sparse map value".into(),
                        value: format!("{}{}…", self.cur.unwrap_or(0), d),
                    });
                };
                self.cur = Some(n);
            } else {
                return Err(SparseError::MapSyntax {
                    byte: b,
                    at: start + i as u64,
                });
            }
        }
        Ok(None)
    }

    /// Bytes fed so far: the map's size in the data once complete.
    pub(super) fn fed(&self) -> u64 {
        self.fed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn recs(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(k, v)| (format!("GNU.sparse.{k}"), v.as_bytes().to_vec()))
            .collect()
    }

    fn seg(offset: u64, len: u64) -> Segment {
        Segment { offset, len }
    }

    #[test]
    fn parses_the_three_formats() {
        let h = from_pax(&recs(&[
            ("size", "1048576"),
            ("numblocks", "2"),
            ("offset", "196608"),
            ("numbytes", "4096"),
            ("offset", "1048576"),
            ("numbytes", "0"),
        ]))
        .unwrap();
        assert_eq!(h.format, Format::V0_0);
        assert_eq!(h.real_size, 1_048_576);
        assert_eq!(h.name, None);
        assert_eq!(h.map, vec![seg(196_608, 4096), seg(1_048_576, 0)]);

        let h = from_pax(&recs(&[
            ("size", "100"),
            ("numblocks", "2"),
            ("name", "dir/f"),
            ("map", "0,10,90,10"),
        ]))
        .unwrap();
        assert_eq!(h.format, Format::V0_1);
        assert_eq!(h.name.as_deref(), Some(&b"dir/f"[..]));
        assert_eq!(h.map, vec![seg(0, 10), seg(90, 10)]);

        let h = from_pax(&recs(&[
            ("major", "1"),
            ("minor", "0"),
            ("name", "f"),
            ("realsize", "7"),
        ]))
        .unwrap();
        assert_eq!(h.format, Format::V1_0);
        assert_eq!((h.real_size, h.map.len(), h.count), (7, 0, None));

        // An all-hole file: no segments at all.
        let h = from_pax(&recs(&[("size", "5"), ("numblocks", "0")])).unwrap();
        assert_eq!((h.format, h.map.len()), (Format::V0_0, 0));
        let h = from_pax(&recs(&[("size", "5"), ("numblocks", "0"), ("map", "")])).unwrap();
        assert_eq!((h.format, h.map.len()), (Format::V0_1, 0));
    }

    #[test]
    fn refuses_malformed_records() {
        type Want = fn(&SparseError) -> bool;
        let cases: &[(&[(&str, &str)], Want)] = &[
            (&[("numblocks", "0")], |e| {
                matches!(e, SparseError::MissingRealSize)
            }),
            (&[("size", "1")], |e| matches!(e, SparseError::MissingCount)),
            (&[("size", "-1"), ("numblocks", "0")], |e| {
                matches!(e, SparseError::Number { .. })
            }),
            (&[("size", "+1"), ("numblocks", "0")], |e| {
                matches!(e, SparseError::Number { .. })
            }),
            (
                &[("size", "99999999999999999999"), ("numblocks", "0")],
                |e| matches!(e, SparseError::Number { .. }),
            ),
            (&[("size", "1"), ("numblocks", "1"), ("map", "0,x")], |e| {
                matches!(e, SparseError::Number { .. })
            }),
            (&[("size", "1"), ("size", "1"), ("numblocks", "0")], |e| {
                matches!(e, SparseError::Duplicate(_))
            }),
            (
                &[("size", "1"), ("realsize", "2"), ("numblocks", "0")],
                |e| matches!(e, SparseError::ConflictingRealSize { .. }),
            ),
            (&[("size", "1"), ("numblocks", "0"), ("bogus", "1")], |e| {
                matches!(e, SparseError::UnknownRecord(_))
            }),
            (&[("major", "2"), ("minor", "0"), ("realsize", "1")], |e| {
                matches!(e, SparseError::Version { .. })
            }),
            (&[("major", "1"), ("realsize", "1")], |e| {
                matches!(e, SparseError::Version { .. })
            }),
            (
                &[
                    ("major", "1"),
                    ("minor", "0"),
                    ("realsize", "1"),
                    ("map", "0,1"),
                ],
                |e| matches!(e, SparseError::MixedFormats(_)),
            ),
            (
                &[
                    ("size", "9"),
                    ("numblocks", "1"),
                    ("map", "0,1"),
                    ("offset", "0"),
                ],
                |e| matches!(e, SparseError::MixedFormats(_)),
            ),
            (
                &[("size", "9"), ("numblocks", "1"), ("map", "0,1,2")],
                |e| matches!(e, SparseError::Pairing(_)),
            ),
            (
                &[("size", "9"), ("numblocks", "1"), ("numbytes", "1")],
                |e| matches!(e, SparseError::Pairing(_)),
            ),
            (
                &[
                    ("size", "9"),
                    ("numblocks", "1"),
                    ("offset", "0"),
                    ("offset", "1"),
                ],
                |e| matches!(e, SparseError::Pairing(_)),
            ),
            (&[("size", "9"), ("numblocks", "1"), ("offset", "0")], |e| {
                matches!(e, SparseError::Pairing(_))
            }),
            // Huge counts are compared, never allocated.
            (
                &[
                    ("size", "9"),
                    ("numblocks", "18446744073709551615"),
                    ("map", "0,1"),
                ],
                |e| matches!(e, SparseError::CountMismatch { found: 1, .. }),
            ),
            (&[("size", "9"), ("numblocks", "0"), ("map", "0,1")], |e| {
                matches!(e, SparseError::CountMismatch { declared: 0, .. })
            }),
        ];
        for (list, want) in cases {
            let err = from_pax(&recs(list)).unwrap_err();
            assert!(want(&err), "{list:?}: {err}");
        }
        let many = vec!["0"; 2 * MAX_SEGMENTS as usize + 2].join(",");
        let err =
            from_pax(&recs(&[("size", "9"), ("numblocks", "1"), ("map", &many)])).unwrap_err();
        assert!(matches!(err, SparseError::TooManySegments(_)), "{err}");
    }

    #[test]
    fn validates_maps() {
        // (map, real size, stored bytes, Ok?)
        let ok: &[(&[Segment], u64, u64)] = &[
            (&[], 0, 0),
            (&[], 100, 0),
            (&[seg(0, 10), seg(90, 10)], 100, 20),
            (&[seg(10, 0), seg(10, 5), seg(15, 5), seg(100, 0)], 100, 10),
        ];
        for (map, real, stored) in ok {
            validate(map, *real, *stored).unwrap();
        }
        let bad: &[(&[Segment], u64, u64, &str)] = &[
            (&[seg(95, 10)], 100, 10, "past"),
            (&[seg(101, 0)], 100, 0, "past"),
            (&[seg(u64::MAX, 2)], u64::MAX, 2, "past"),
            (&[seg(0, 60), seg(50, 10)], 100, 70, "unsorted"),
            (&[seg(50, 10), seg(0, 10)], 100, 20, "unsorted"),
            (&[seg(0, 10)], 100, 5, "data"),
            (&[seg(0, 10)], 100, 11, "data"),
            (&[seg(0, u64::MAX), seg(u64::MAX, 0)], u64::MAX, 1, "data"),
        ];
        for (map, real, stored, want) in bad {
            let err = validate(map, *real, *stored).unwrap_err();
            let hit = match *want {
                "past" => matches!(err, SparseError::PastRealSize { .. }),
                "unsorted" => matches!(err, SparseError::Unsorted { .. }),
                _ => matches!(err, SparseError::DataMismatch { .. }),
            };
            assert!(hit, "{map:?} {real} {stored}: {err}");
        }
    }

    fn blocks(text: &[u8]) -> Vec<Vec<u8>> {
        let mut v = text.to_vec();
        v.resize(text.len().div_ceil(MAP_BLOCK).max(1) * MAP_BLOCK, 0);
        v.chunks(MAP_BLOCK).map(<[u8]>::to_vec).collect()
    }

    fn parse(text: &[u8]) -> Result<Option<(Vec<Segment>, u64)>, SparseError> {
        let mut p = MapParser::default();
        for b in blocks(text) {
            if let Some(map) = p.feed(&b)? {
                return Ok(Some((map, p.fed())));
            }
        }
        Ok(None)
    }

    #[test]
    fn parses_1_0_maps() {
        let (map, fed) = parse(b"2\n0\n4096\n8192\n0\n").unwrap().unwrap();
        assert_eq!((map, fed), (vec![seg(0, 4096), seg(8192, 0)], 512));
        let (map, fed) = parse(b"0\n").unwrap().unwrap();
        assert_eq!((map.len(), fed), (0, 512));
        // A map over several blocks (numbers split across a block boundary).
        let mut text = b"100\n".to_vec();
        for i in 0..100u64 {
            text.extend_from_slice(format!("{}\n{}\n", i * 100_000, 512).as_bytes());
        }
        let (map, fed) = parse(&text).unwrap().unwrap();
        assert_eq!(map.len(), 100);
        assert_eq!(map[99], seg(9_900_000, 512));
        assert_eq!(fed, text.len().div_ceil(512) as u64 * 512);
        // Incomplete after a whole block: the parser wants more (the caller
        // refuses once the entry's data runs out); padding inside the map is
        // a syntax error.
        let mut block = b"1000\n".to_vec();
        block.resize(MAP_BLOCK, b'\n');
        block[5..].iter_mut().step_by(2).for_each(|b| *b = b'7');
        assert_eq!(parse(&block).unwrap(), None);
        let err = parse(b"2\n0\n1\n").unwrap_err();
        assert!(
            matches!(err, SparseError::MapSyntax { byte: 0, at: 6 }),
            "{err}"
        );
    }

    #[test]
    fn refuses_bad_1_0_maps() {
        let err = parse(b"1\n0\n-1\n").unwrap_err();
        assert!(
            matches!(err, SparseError::MapSyntax { byte: b'-', at: 4 }),
            "{err}"
        );
        let err = parse(b"1\n\n").unwrap_err();
        assert!(matches!(err, SparseError::MapSyntax { .. }), "{err}");
        let err = parse(b"1\n0 1\n").unwrap_err();
        assert!(matches!(err, SparseError::MapSyntax { .. }), "{err}");
        let err = parse(b"99999999999999999999\n").unwrap_err();
        assert!(matches!(err, SparseError::Number { .. }), "{err}");
        let err = parse(b"18446744073709551615\n").unwrap_err();
        assert!(matches!(err, SparseError::TooManySegments(_)), "{err}");
        // Digits that never end: refused once over the cap, not buffered.
        let mut p = MapParser::default();
        let mut err = None;
        for _ in 0..=(MAX_MAP_BYTES as usize / MAP_BLOCK) {
            if let Err(e) = p.feed(&[b'0'; MAP_BLOCK]) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(SparseError::MapTooLarge));
    }
}
