//! `berthctl exec [-i] [-t] TARGET -- CMD…`: runs a command in a container or
//! in one running replica of a service, through the agent (as health checks
//! run), streaming its stdout and stderr (and with `-i` its stdin) over the
//! upgraded API connection (docs/exec.md), and exits with its exit code; 125
//! when the command could not be run (Docker's code), 124 on `--timeout`.
//! `-t` runs it on a pty of the container: the local terminal is in raw mode
//! for the session (with `-i`), window size changes follow. Without a local
//! raw terminal, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent
//! to berthctl are forwarded to the command (as `docker exec`'s signal proxy).

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_core::exec::{self as proto, Decoder, ExecRequest, ExitStatus, Frame, StreamError};
use bytes::Bytes;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{client, parse_timeout};
use crate::cli::Cli;
use crate::client::{error_text, query_escape, Upgraded};
use crate::terminal::{self, RawMode};

/// The arguments of `berthctl exec` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Exec {
    /// Keep stdin open and stream it to the command.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Run the command on a pty of the container (with -i: an interactive
    /// session; the local terminal is in raw mode meanwhile).
    #[arg(short = 't', long)]
    tty: bool,
    /// Kill the command after this long, e.g. 30s, 5m (at most 1h; default: no limit).
    #[arg(long)]
    timeout: Option<String>,
    /// A container id (or unique prefix) or a service name.
    target: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// How a session ended.
enum Outcome {
    /// The command ended; its output has all been written.
    Exit(ExitStatus),
    /// The agent could not run or follow the command.
    Failed(StreamError),
    /// Our stdout was closed (`| head`): end quietly, as every command does.
    BrokenPipe,
    /// berthctl itself got this signal while the terminal was raw.
    Signalled(i32),
}

/// Signals forwarded to the command when the terminal is not raw.
#[cfg(unix)]
const FORWARDED: &[nix::sys::signal::Signal] = {
    use nix::sys::signal::Signal::*;
    &[SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]
};

/// `POST /v1/containers/TARGET/exec` with `Upgrade: berth-exec.v1`; the exit
/// code as the module doc says.
pub async fn run(cli: &Cli, args: &Exec) -> Result<ExitCode> {
    let stdin_tty = std::io::stdin().is_terminal();
    if args.tty && args.interactive && !stdin_tty {
        bail!("the input device is not a TTY: use -i without -t to pipe input");
    }
    if args.tty && cli.json() {
        bail!("-o json cannot be combined with -t (a pty merges stdout and stderr)");
    }
    let timeout_ms = match &args.timeout {
        Some(t) => Some(u64::try_from(parse_timeout(t)?.as_millis()).unwrap_or(u64::MAX)),
        None => None,
    };
    let req = ExecRequest {
        cmd: args.cmd.clone(),
        timeout_ms,
        tty: args.tty,
        stdin: args.interactive,
        size: if args.tty { terminal::size() } else { None },
    };
    let body = Bytes::from(serde_json::to_vec(&req).context("encoding the request")?);
    let io = match client(cli)?
        .upgrade(
            &format!("/v1/containers/{}/exec", query_escape(&args.target)),
            proto::UPGRADE_PROTOCOL,
            body,
        )
        .await?
    {
        Ok(io) => io,
        Err(reply) => {
            eprintln!("berthctl: {}", error_text(&reply.body));
            // Docker's code for "the command could not be run".
            return Ok(ExitCode::from(125));
        }
    };
    let raw = if args.tty && args.interactive && stdin_tty {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let mut captured = cli.json().then(Captured::default);
    let outcome = session(io, args, raw.is_some(), captured.as_mut()).await;
    drop(raw);
    match outcome? {
        Outcome::BrokenPipe => Ok(ExitCode::SUCCESS),
        Outcome::Signalled(sig) => Ok(ExitCode::from(u8::try_from(128 + sig).unwrap_or(1))),
        Outcome::Failed(e) => {
            eprintln!("berthctl: {}", e.message);
            Ok(ExitCode::from(125))
        }
        Outcome::Exit(status) => {
            if let Some(c) = captured {
                outln!(
                    "{}",
                    serde_json::json!({
                        "container": status.container,
                        "exit_code": status.exit_code,
                        "timed_out": status.timed_out,
                        "stdout": String::from_utf8_lossy(&c.stdout),
                        "stderr": String::from_utf8_lossy(&c.stderr),
                    })
                );
            } else if status.timed_out {
                eprintln!(
                    "berthctl: exec: the command timed out after {}",
                    args.timeout.as_deref().unwrap_or_default()
                );
            }
            Ok(ExitCode::from(
                u8::try_from(status.exit_code).unwrap_or(125),
            ))
        }
    }
}

/// The command's output, kept for `-o json`.
#[derive(Debug, Default)]
struct Captured {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Writes `data` to our stdout or stderr; `Ok(false)` when stdout is closed.
fn emit(to_stderr: bool, data: &[u8], captured: Option<&mut Captured>) -> Result<bool> {
    if let Some(c) = captured {
        if to_stderr {
            c.stderr.extend_from_slice(data);
        } else {
            c.stdout.extend_from_slice(data);
        }
        return Ok(true);
    }
    let result = if to_stderr {
        let mut e = std::io::stderr().lock();
        e.write_all(data).and_then(|()| e.flush())
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(data).and_then(|()| o.flush())
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && !to_stderr => Ok(false),
        // A closed stderr loses only diagnostics.
        Err(_) if to_stderr => Ok(true),
        Err(e) => Err(e).context("writing the command's output"),
    }
}

/// Reads stdin on a plain thread (a blocking read cannot be cancelled; the
/// thread simply ends with the process) into `tx`; `None` is end-of-file.
fn spawn_stdin_reader(tx: mpsc::Sender<Option<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; proto::DATA_CHUNK];
        loop {
            let chunk = match stdin.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => Some(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => None,
            };
            let end = chunk.is_none();
            if tx.blocking_send(chunk).is_err() || end {
                return;
            }
        }
    });
}

/// Signals berthctl handles, as `(name, number)` on one channel. With a raw
/// terminal only SIGTERM and SIGHUP (they end berthctl, restoring the
/// terminal); otherwise the [`FORWARDED`] set.
#[cfg(unix)]
fn watch_signals(raw: bool) -> Result<mpsc::Receiver<(&'static str, i32)>> {
    use nix::sys::signal::Signal;
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel(16);
    for &sig in FORWARDED {
        if raw && sig != Signal::SIGTERM && sig != Signal::SIGHUP {
            continue;
        }
        // Names travel, not numbers: they differ between systems.
        let (name, num) = (sig.as_str(), sig as i32);
        let mut s =
            signal(SignalKind::from_raw(num)).with_context(|| format!("handling {name}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send((name, num)).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}

#[cfg(not(unix))]
fn watch_signals(_raw: bool) -> Result<mpsc::Receiver<(&'static str, i32)>> {
    Ok(mpsc::channel(1).1)
}

/// Window size changes of the local terminal (SIGWINCH), when `tty`.
#[cfg(unix)]
fn watch_resizes(tty: bool) -> Result<mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel(1);
    if tty {
        let mut s = signal(SignalKind::window_change()).context("handling SIGWINCH")?;
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                // A full channel already has a resize pending.
                let _ = tx.try_send(());
            }
        });
    }
    Ok(rx)
}

#[cfg(not(unix))]
fn watch_resizes(_tty: bool) -> Result<mpsc::Receiver<()>> {
    Ok(mpsc::channel(1).1)
}

/// Writes the client's frames: control frames (resize, signal) first, then
/// stdin chunks as the stdin thread delivers them (`None`: its end). A task
/// of its own, so that reading the command's output never waits for the
/// agent to take more input (the command may be blocked writing output).
async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: W,
    mut stdin: Option<mpsc::Receiver<Option<Vec<u8>>>>,
    mut control: mpsc::UnboundedReceiver<Frame>,
) {
    loop {
        let frame = tokio::select! {
            biased;
            f = control.recv() => match f {
                Some(f) => f,
                None => return,
            },
            chunk = async {
                match stdin.as_mut() {
                    Some(rx) => rx.recv().await.flatten(),
                    None => std::future::pending().await,
                }
            } => match chunk {
                Some(data) => Frame::Stdin(data),
                None => {
                    stdin = None;
                    Frame::CloseStdin
                }
            },
        };
        // A failed write shows as the connection's end on the read side.
        if wr.write_all(&frame.encode()).await.is_err() {
            return;
        }
    }
}

/// Runs the frame protocol on `io` until the exit status (or an error) arrives.
async fn session(
    io: Upgraded,
    args: &Exec,
    raw: bool,
    captured: Option<&mut Captured>,
) -> Result<Outcome> {
    let (mut rd, wr) = tokio::io::split(io);
    let stdin = args.interactive.then(|| {
        let (tx, rx) = mpsc::channel(8);
        spawn_stdin_reader(tx);
        rx
    });
    let (control, control_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_frames(wr, stdin, control_rx));
    let result = read_frames(&mut rd, raw, args.tty, &control, captured).await;
    writer.abort();
    result
}

/// Reads the agent's frames (output, then the exit status) and queues
/// resizes and forwarded signals for [`write_frames`].
async fn read_frames<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    raw: bool,
    tty: bool,
    control: &mpsc::UnboundedSender<Frame>,
    mut captured: Option<&mut Captured>,
) -> Result<Outcome> {
    let mut signals = watch_signals(raw)?;
    let mut resizes = watch_resizes(tty)?;
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = r.context("reading from berthd")?;
                if n == 0 {
                    bail!("berthd closed the connection before the command's exit status arrived");
                }
                decoder.push(&buf[..n]);
                while let Some(frame) = decoder.next_frame()? {
                    match frame {
                        Frame::Stdout(d) => {
                            if !emit(false, &d, captured.as_deref_mut())? {
                                return Ok(Outcome::BrokenPipe);
                            }
                        }
                        Frame::Stderr(d) => {
                            emit(true, &d, captured.as_deref_mut())?;
                        }
                        Frame::Exit(status) => return Ok(Outcome::Exit(status)),
                        Frame::Error(e) => return Ok(Outcome::Failed(e)),
                        other => bail!("berthd sent a client-only frame: {other:?}"),
                    }
                }
            }
            Some(()) = resizes.recv() => {
                if let Some(size) = terminal::size() {
                    let _ = control.send(Frame::Resize(size));
                }
            }
            Some((name, num)) = signals.recv() => {
                if raw {
                    return Ok(Outcome::Signalled(num));
                }
                let _ = control.send(Frame::Signal(name.into()));
            }
        }
    }
}
