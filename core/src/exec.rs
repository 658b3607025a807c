//! The streaming exec protocol between `berthctl exec` and `berthd`
//! (docs/exec.md): the JSON request body, and the frames both sides exchange
//! on the connection once the server has answered `101 Switching Protocols`
//! to `Upgrade: berth-exec.v1`. A frame is Docker's multiplexed-stream header
//! (`[kind, 0, 0, 0, len_be32]`) followed by `len` bytes; data frames carry raw
//! bytes, control frames carry one JSON object. Pure code: no I/O here.

use serde::{Deserialize, Serialize};

/// The `Upgrade:` token of a streaming exec request.
pub const UPGRADE_PROTOCOL: &str = "berth-exec.v1";
/// Length of a frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload a receiver accepts (a larger length is a protocol error).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest data payload a sender puts in one frame (bigger writes are split).
pub const DATA_CHUNK: usize = 32 << 10;

/// The body of `POST /v1/containers/ID/exec` (and `/v1/services/NAME/exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The command and its arguments (`argv`; `cmd[0]` is looked up in the
    /// container's `PATH`).
    pub cmd: Vec<String>,
    /// Kill the command after this many milliseconds (at most one hour).
    /// Unset: 60 s for the one-shot JSON answer, no limit when streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run the command on a new pty of the container (streaming only).
    #[serde(default)]
    pub tty: bool,
    /// Keep the command's stdin open for `Stdin` frames (streaming only);
    /// without it the command reads end-of-file at once.
    #[serde(default)]
    pub stdin: bool,
    /// The pty's initial window size (with `tty`; default 24x80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<WindowSize>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

impl Default for WindowSize {
    fn default() -> Self {
        WindowSize { rows: 24, cols: 80 }
    }
}

/// The payload of an [`Frame::Exit`] frame: how the command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The container the command ran in (full id).
    pub container: String,
    /// Exit status; 128 + signal when signalled; 124 on timeout; 126/127
    /// when the command could not be executed / found (as a shell).
    pub exit_code: i32,
    #[serde(default)]
    pub timed_out: bool,
}

/// The payload of an [`Frame::Error`] frame (the `error` object of the API's
/// error body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamError {
    pub code: String,
    pub message: String,
}

/// The payload of a [`Frame::Signal`] frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalName {
    /// A signal name as `kill -l` spells it with the prefix: `SIGINT`, `SIGTERM`.
    pub signal: String,
}

/// One frame. Client → server: `Stdin`, `CloseStdin`, `Resize`, `Signal`.
/// Server → client: `Stdout`, `Stderr`, then exactly one `Exit` or `Error`
/// as the last frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes for the command's stdin (kind 0).
    Stdin(Vec<u8>),
    /// Bytes the command wrote to stdout, or to its pty (kind 1).
    Stdout(Vec<u8>),
    /// Bytes the command wrote to stderr; never with a pty (kind 2).
    Stderr(Vec<u8>),
    /// The command ended (kind 3, JSON [`ExitStatus`]); the last frame.
    Exit(ExitStatus),
    /// New window size of the pty (kind 4, JSON [`WindowSize`]).
    Resize(WindowSize),
    /// Send this signal to the command (kind 5, JSON [`SignalName`]).
    Signal(String),
    /// The client's stdin ended: the command reads end-of-file (kind 6, empty).
    CloseStdin,
    /// The session failed (kind 7, JSON [`StreamError`]); the last frame.
    Error(StreamError),
}

/// The kind byte of each frame.
pub mod kind {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const EXIT: u8 = 3;
    pub const RESIZE: u8 = 4;
    pub const SIGNAL: u8 = 5;
    pub const CLOSE_STDIN: u8 = 6;
    pub const ERROR: u8 = 7;
}

/// A byte sequence that is not a valid frame stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("exec stream: unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("exec stream: frame header has non-zero reserved bytes")]
    Reserved,
    #[error("exec stream: frame of {len} bytes is larger than {MAX_PAYLOAD}")]
    TooLarge { len: usize },
    #[error("exec stream: bad {what} frame: {message}")]
    BadPayload { what: &'static str, message: String },
}

/// A frame header: `kind`, three zero bytes, the payload length (big-endian).
pub fn header(kind: u8, len: usize) -> [u8; HEADER_LEN] {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [kind, 0, 0, 0, len[0], len[1], len[2], len[3]]
}

/// One data frame of `kind` carrying `data` (callers keep `data` at most
/// [`DATA_CHUNK`] bytes; see [`encode_data`] for longer buffers).
pub fn data_frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + data.len());
    out.extend_from_slice(&header(kind, data.len()));
    out.extend_from_slice(data);
    out
}

/// `data` as consecutive data frames of `kind`, each at most [`DATA_CHUNK`]
/// bytes of payload. Empty data gives no frame (an empty `Stdin` frame is
/// harmless but means nothing).
pub fn encode_data(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + HEADER_LEN * (1 + data.len() / DATA_CHUNK));
    for chunk in data.chunks(DATA_CHUNK) {
        out.extend_from_slice(&header(kind, chunk.len()));
        out.extend_from_slice(chunk);
    }
    out
}

fn json_frame<T: Serialize>(kind: u8, value: &T) -> Vec<u8> {
    let payload = serde_json::to_vec(value).unwrap_or_default();
    data_frame(kind, &payload)
}

impl Frame {
    /// The frame's bytes on the wire (data longer than [`DATA_CHUNK`] is
    /// split into several frames of the same kind).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Stdin(d) => encode_data(kind::STDIN, d),
            Frame::Stdout(d) => encode_data(kind::STDOUT, d),
            Frame::Stderr(d) => encode_data(kind::STDERR, d),
            Frame::Exit(s) => json_frame(kind::EXIT, s),
            Frame::Resize(s) => json_frame(kind::RESIZE, s),
            Frame::Signal(name) => json_frame(
                kind::SIGNAL,
                &SignalName {
                    signal: name.clone(),
                },
            ),
            Frame::CloseStdin => data_frame(kind::CLOSE_STDIN, &[]),
            Frame::Error(e) => json_frame(kind::ERROR, e),
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    payload: &[u8],
) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::BadPayload {
        what,
        message: e.to_string(),
    })
}

/// Turns a byte stream, fed in arbitrary pieces, back into frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `None` until one has fully arrived. An error
    /// is final: the stream cannot be resynchronised.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let k = self.buf[0];
        if self.buf[1..4] != [0, 0, 0] {
            return Err(FrameError::Reserved);
        }
        if k > kind::ERROR {
            return Err(FrameError::UnknownKind(k));
        }
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge { len });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        let frame = match k {
            kind::STDIN => Frame::Stdin(payload),
            kind::STDOUT => Frame::Stdout(payload),
            kind::STDERR => Frame::Stderr(payload),
            kind::EXIT => Frame::Exit(parse("exit", &payload)?),
            kind::RESIZE => Frame::Resize(parse("resize", &payload)?),
            kind::SIGNAL => Frame::Signal(parse::<SignalName>("signal", &payload)?.signal),
            kind::CLOSE_STDIN => Frame::CloseStdin,
            _ => Frame::Error(parse("error", &payload)?),
        };
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut d = Decoder::new();
        d.push(bytes);
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f);
        }
        assert_eq!(d.pending(), 0, "left over bytes");
        Ok(out)
    }

    #[test]
    fn the_header_is_dockers_multiplexed_stream_header() {
        assert_eq!(
            Frame::Stdout(b"hi".to_vec()).encode(),
            [1, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']
        );
        assert_eq!(
            Frame::Stderr(vec![7; 300]).encode()[..HEADER_LEN],
            [2, 0, 0, 0, 0, 0, 1, 44]
        );
        assert_eq!(Frame::CloseStdin.encode(), [6, 0, 0, 0, 0, 0, 0, 0]);
        let exit = Frame::Exit(ExitStatus {
            container: "c1".into(),
            exit_code: 3,
            timed_out: false,
        })
        .encode();
        assert_eq!(exit[0], kind::EXIT);
        assert_eq!(
            &exit[HEADER_LEN..],
            br#"{"container":"c1","exit_code":3,"timed_out":false}"#
        );
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = vec![
            Frame::Stdin(b"echo hi\n".to_vec()),
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(b"oops".to_vec()),
            Frame::Resize(WindowSize {
                rows: 50,
                cols: 132,
            }),
            Frame::Signal("SIGINT".into()),
            Frame::CloseStdin,
            Frame::Error(StreamError {
                code: "internal".into(),
                message: "helper died".into(),
            }),
            Frame::Exit(ExitStatus {
                container: "abc".into(),
                exit_code: 130,
                timed_out: true,
            }),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        assert_eq!(decode_all(&wire).unwrap(), frames);
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let frames = vec![
            Frame::Stdout(b"hello".to_vec()),
            Frame::Resize(WindowSize { rows: 1, cols: 2 }),
            Frame::Stderr(b"x".to_vec()),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        for piece in 1..wire.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "pieces of {piece}");
        }
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let wire = Frame::Stdout(b"abcdef".to_vec()).encode();
        let mut d = Decoder::new();
        d.push(&wire[..5]);
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&wire[5..10]);
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&wire[10..]);
        assert_eq!(
            d.next_frame().unwrap(),
            Some(Frame::Stdout(b"abcdef".to_vec()))
        );
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn long_data_is_split_into_chunks() {
        let data: Vec<u8> = (0..(2 * DATA_CHUNK + 5)).map(|i| (i % 251) as u8).collect();
        let frames = decode_all(&Frame::Stdout(data.clone()).encode()).unwrap();
        assert_eq!(frames.len(), 3);
        let joined: Vec<u8> = frames
            .into_iter()
            .flat_map(|f| match f {
                Frame::Stdout(d) => {
                    assert!(d.len() <= DATA_CHUNK);
                    d
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(joined, data);
        assert!(encode_data(kind::STDOUT, &[]).is_empty());
    }

    #[test]
    fn malformed_streams_are_errors() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![9, 0, 0, 0, 0, 0, 0, 0], FrameError::UnknownKind(9)),
            (vec![1, 0, 1, 0, 0, 0, 0, 0], FrameError::Reserved),
            (
                header(kind::STDOUT, MAX_PAYLOAD + 1).to_vec(),
                FrameError::TooLarge {
                    len: MAX_PAYLOAD + 1,
                },
            ),
        ];
        for (wire, want) in cases {
            assert_eq!(decode_all(&wire).unwrap_err(), want, "{wire:?}");
        }
        for (k, what) in [
            (kind::EXIT, "exit"),
            (kind::RESIZE, "resize"),
            (kind::SIGNAL, "signal"),
            (kind::ERROR, "error"),
        ] {
            let err = decode_all(&data_frame(k, b"{not json")).unwrap_err();
            assert!(
                matches!(err, FrameError::BadPayload { what: w, .. } if w == what),
                "{err:?}"
            );
        }
    }

    #[test]
    fn the_request_body_has_defaults_and_refuses_unknown_keys() {
        let r: ExecRequest = serde_json::from_str(r#"{"cmd":["sh"]}"#).unwrap();
        assert_eq!(
            r,
            ExecRequest {
                cmd: vec!["sh".into()],
                ..ExecRequest::default()
            }
        );
        let r: ExecRequest = serde_json::from_str(
            r#"{"cmd":["sh"],"tty":true,"stdin":true,"size":{"rows":40,"cols":100},"timeout_ms":5}"#,
        )
        .unwrap();
        assert!(r.tty && r.stdin);
        assert_eq!(
            r.size,
            Some(WindowSize {
                rows: 40,
                cols: 100
            })
        );
        assert!(serde_json::from_str::<ExecRequest>(r#"{"cmd":["sh"],"tyy":true}"#).is_err());
    }
}
