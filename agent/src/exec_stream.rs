//! One streaming exec session (`berthctl exec [-it]`, docs/exec.md): relays
//! the frames of [`berth_core::exec`] between the client's upgraded HTTP
//! connection and the command started by `Runtime::exec_stream` (its pipes or
//! its pty master), forwards resizes and signals, and ends with the command's
//! exit status. A client that goes away gets its command hung up, then killed.

use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use berth_core::exec::{self as proto, Decoder, ExitStatus, Frame, StreamError};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::runtime::exec::{ExecHandle, ExecProcess, ExecReaper, ExecStdio};
use crate::runtime::{ExecOutput, RuntimeError};

/// How long a command keeps running after its client went away (its stdin
/// closed or its terminal hung up) before it is killed.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(2);
/// After the command ended: how long output may stay silent before the
/// session stops waiting for more (a process that left the session may hold
/// the pipes or pty open), and the most it waits in all.
const DRAIN_IDLE: Duration = Duration::from_millis(100);
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Stdin chunks queued for a command that does not read them yet.
const STDIN_QUEUE: usize = 32;

/// A failed session step (reported to the client as an `Error` frame when it
/// can still be reached).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("exec session: {step}: {source}")]
    Io {
        step: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("exec session: reaping the exec helper: {0}")]
    Join(String),
}

/// A pty master in non-blocking mode, for the reactor.
#[derive(Debug)]
struct Master(AsyncFd<OwnedFd>);

impl Master {
    fn new(fd: OwnedFd) -> Result<Master, SessionError> {
        let io = |source| SessionError::Io {
            step: "pty master",
            source,
        };
        let flags =
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| io(e.into()))?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|e| io(e.into()))?;
        Ok(Master(crate::sys::tty::register_async(fd).map_err(io)?))
    }

    /// Reads output; `Ok(0)` once no process holds the terminal any more
    /// (the kernel's `EIO` on a master whose slave is closed).
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(Into::into)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(Into::into)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Where the command's output comes from.
enum Output {
    Pipes {
        stdout: Option<pipe::Receiver>,
        stderr: Option<pipe::Receiver>,
    },
    Tty {
        master: Option<Arc<Master>>,
    },
}

/// Where stdin frames go.
enum Input {
    Pipe(pipe::Sender),
    Tty(Arc<Master>),
}

impl Input {
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Input::Pipe(p) => p.write_all(data).await,
            Input::Tty(m) => m.write_all(data).await,
        }
    }
}

/// The signal number of a name such as `SIGINT` (standard signals only).
pub fn signal_number(name: &str) -> Option<i32> {
    nix::sys::signal::Signal::from_str(name)
        .ok()
        .map(|s| s as i32)
}

/// The command's stdio as async streams.
struct Streams {
    output: Output,
    /// `None` without stdin.
    input: Option<Input>,
    /// The pty master, for resizes.
    master: Option<Arc<Master>>,
}

fn connect(stdio: ExecStdio, stdin: bool) -> Result<Streams, SessionError> {
    Ok(match stdio {
        ExecStdio::Pipes {
            stdin: input,
            stdout,
            stderr,
        } => Streams {
            // Dropping the write end gives the command end-of-file at once.
            input: if stdin {
                let tx = pipe::Sender::from_owned_fd(input).map_err(io_err("stdin pipe"))?;
                Some(Input::Pipe(tx))
            } else {
                None
            },
            output: Output::Pipes {
                stdout: Some(pipe::Receiver::from_owned_fd(stdout).map_err(io_err("stdout pipe"))?),
                stderr: Some(pipe::Receiver::from_owned_fd(stderr).map_err(io_err("stderr pipe"))?),
            },
            master: None,
        },
        ExecStdio::Tty { master } => {
            let master = Arc::new(Master::new(master)?);
            Streams {
                input: stdin.then(|| Input::Tty(master.clone())),
                output: Output::Tty {
                    master: Some(master.clone()),
                },
                master: Some(master),
            }
        }
    })
}

fn io_err(step: &'static str) -> impl FnOnce(std::io::Error) -> SessionError {
    move |source| SessionError::Io { step, source }
}

/// Ends a started command that never got a client (the upgrade failed):
/// kills it and waits for the helper's cleanup.
pub async fn abandon(process: ExecProcess) {
    process.handle.abandon();
    drop(process.stdio);
    let waiter = process.waiter;
    let _ = tokio::task::spawn_blocking(move || waiter.wait()).await;
}

/// Runs the session on `io` (the upgraded connection) until the command has
/// ended and its last output and exit status are sent; `stdin` says whether
/// the client streams stdin (else the command reads end-of-file at once).
pub async fn serve<S>(io: S, container: String, process: ExecProcess, stdin: bool)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let ExecProcess {
        stdio,
        handle,
        waiter,
    } = process;
    let handle = Arc::new(handle);
    // The report is read here, not on a blocking thread: a runtime shutting
    // down drops this task, and with it the socket, which kills the command.
    let (control, reaper) = waiter.into_parts();
    let mut report = Box::pin(read_report(control, reaper));
    let (client_rd, mut client_wr) = tokio::io::split(io);

    let setup = connect(stdio, stdin);
    let Streams {
        mut output,
        input,
        master,
    } = match setup {
        Ok(streams) => streams,
        Err(e) => {
            handle.abandon();
            let _ = report.await;
            send_error(&mut client_wr, "internal", &e.to_string()).await;
            return;
        }
    };

    // Stdin goes through a queue so resizes and signals are not stuck
    // behind input the command does not read yet.
    let (stdin_tx, stdin_rx) = mpsc::channel::<Option<Vec<u8>>>(STDIN_QUEUE);
    let writer = tokio::spawn(write_stdin(input, stdin_rx));
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(read_client(
        client_rd,
        stdin_tx,
        handle.clone(),
        master,
        gone_tx,
    ));

    let mut client_ok = true;
    let mut orphaned: Option<tokio::time::Instant> = None;
    let mut out_buf = vec![0u8; proto::DATA_CHUNK];
    let mut err_buf = vec![0u8; proto::DATA_CHUNK];
    let result = loop {
        let orphan_deadline = orphaned.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            r = &mut report => break r,
            _ = &mut gone_rx, if orphaned.is_none() => {
                // The client closed its side: hang the command up (EOF on
                // stdin; the reader dropped it) and kill it after a grace.
                client_ok = false;
                orphaned = Some(tokio::time::Instant::now() + ORPHAN_GRACE);
                if let Output::Tty { master } = &mut output {
                    // Closing our master hangs the terminal up (SIGHUP).
                    *master = None;
                }
            }
            _ = tokio::time::sleep_until(orphan_deadline), if orphaned.is_some() => {
                handle.abandon();
                orphaned = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
            (kind, r) = next_output(&mut output, &mut out_buf, &mut err_buf) => {
                match r {
                    Ok(0) | Err(_) => close_output(&mut output, kind),
                    Ok(n) => {
                        let data = if kind == proto::kind::STDERR { &err_buf[..n] } else { &out_buf[..n] };
                        if client_ok && client_wr.write_all(&proto::data_frame(kind, data)).await.is_err() {
                            client_ok = false;
                            if orphaned.is_none() {
                                orphaned = Some(tokio::time::Instant::now() + ORPHAN_GRACE);
                            }
                        }
                    }
                }
            }
        }
    };
    reader.abort();
    writer.abort();
    // The command and its session are gone: what they wrote is in the pipes
    // or the pty (a process that left the session may still hold them).
    let drain_until = tokio::time::Instant::now() + DRAIN_MAX;
    while client_ok && has_output(&output) {
        let idle = tokio::time::Instant::now() + DRAIN_IDLE;
        let step = tokio::time::timeout_at(
            idle.min(drain_until),
            next_output(&mut output, &mut out_buf, &mut err_buf),
        )
        .await;
        match step {
            Err(_elapsed) => break,
            Ok((kind, Ok(0) | Err(_))) => close_output(&mut output, kind),
            Ok((kind, Ok(n))) => {
                let data = if kind == proto::kind::STDERR {
                    &err_buf[..n]
                } else {
                    &out_buf[..n]
                };
                client_ok = client_wr
                    .write_all(&proto::data_frame(kind, data))
                    .await
                    .is_ok();
            }
        }
    }
    if !client_ok {
        return;
    }
    let last = match result {
        Ok(ExecOutput {
            code, timed_out, ..
        }) => Frame::Exit(ExitStatus {
            container,
            exit_code: code,
            timed_out,
        }),
        Err(e) => error_frame("exec_failed", &e.to_string()),
    };
    let _ = client_wr.write_all(&last.encode()).await;
    let _ = client_wr.shutdown().await;
}

/// Reads the helper's report to its end, then reaps the helper.
async fn read_report(
    control: std::os::unix::net::UnixStream,
    reaper: ExecReaper,
) -> Result<ExecOutput, SessionError> {
    control
        .set_nonblocking(true)
        .map_err(io_err("exec helper socket"))?;
    let mut control =
        tokio::net::UnixStream::from_std(control).map_err(io_err("exec helper socket"))?;
    let mut text = Vec::new();
    // An error leaves `text` short: `finish` reports it with what arrived.
    let _ = control.read_to_end(&mut text).await;
    drop(control);
    tokio::task::spawn_blocking(move || reaper.finish(&text))
        .await
        .map_err(|e| SessionError::Join(e.to_string()))?
        .map_err(SessionError::from)
}

fn error_frame(code: &str, message: &str) -> Frame {
    Frame::Error(StreamError {
        code: code.into(),
        message: message.into(),
    })
}

async fn send_error<W: AsyncWrite + Unpin>(w: &mut W, code: &str, message: &str) {
    let _ = w.write_all(&error_frame(code, message).encode()).await;
    let _ = w.shutdown().await;
}

fn has_output(output: &Output) -> bool {
    match output {
        Output::Pipes { stdout, stderr } => stdout.is_some() || stderr.is_some(),
        Output::Tty { master } => master.is_some(),
    }
}

fn close_output(output: &mut Output, kind: u8) {
    match output {
        Output::Pipes { stdout, stderr } => {
            if kind == proto::kind::STDERR {
                *stderr = None;
            } else {
                *stdout = None;
            }
        }
        Output::Tty { master } => *master = None,
    }
}

/// The next read from whichever output is ready: `(frame kind, result)`;
/// pending forever when no output is left.
async fn next_output(
    output: &mut Output,
    out_buf: &mut [u8],
    err_buf: &mut [u8],
) -> (u8, std::io::Result<usize>) {
    match output {
        Output::Pipes { stdout, stderr } => {
            let out = async {
                match stdout {
                    Some(p) => p.read(out_buf).await,
                    None => std::future::pending().await,
                }
            };
            let err = async {
                match stderr {
                    Some(p) => p.read(err_buf).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = out => (proto::kind::STDOUT, r),
                r = err => (proto::kind::STDERR, r),
            }
        }
        Output::Tty { master } => match master {
            Some(m) => (proto::kind::STDOUT, m.read(out_buf).await),
            None => std::future::pending().await,
        },
    }
}

/// Writes queued stdin chunks to the command; `None` (or the queue's end)
/// closes its stdin (a pty cannot be half-closed: it stays open).
async fn write_stdin(mut input: Option<Input>, mut rx: mpsc::Receiver<Option<Vec<u8>>>) {
    while let Some(Some(chunk)) = rx.recv().await {
        let Some(i) = input.as_mut() else { continue };
        if i.write_all(&chunk).await.is_err() {
            // The command closed its stdin: drop what follows.
            input = None;
        }
    }
}

/// Reads the client's frames: stdin to the queue, resizes to the pty,
/// signals to the command. Signals `gone` when the client's side ends (EOF,
/// an error or a protocol violation).
async fn read_client<R: AsyncRead + Unpin>(
    mut rd: R,
    stdin: mpsc::Sender<Option<Vec<u8>>>,
    handle: Arc<ExecHandle>,
    master: Option<Arc<Master>>,
    gone: tokio::sync::oneshot::Sender<()>,
) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; proto::DATA_CHUNK + proto::HEADER_LEN];
    let mut stdin = Some(stdin);
    'read: loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        decoder.push(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "exec: bad frame from the client");
                    break 'read;
                }
            };
            match frame {
                Frame::Stdin(data) => {
                    if let Some(tx) = &stdin {
                        if tx.send(Some(data)).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Frame::CloseStdin => {
                    if let Some(tx) = stdin.take() {
                        let _ = tx.send(None).await;
                    }
                }
                Frame::Resize(size) => {
                    if let Some(m) = &master {
                        if let Err(e) =
                            crate::sys::tty::set_window_size(m.0.as_fd(), size.rows, size.cols)
                        {
                            tracing::debug!(error = %e, "exec: resizing the pty");
                        }
                    }
                }
                Frame::Signal(name) => match signal_number(&name) {
                    Some(sig) => {
                        if let Err(e) = handle.signal(sig) {
                            tracing::debug!(error = %e, "exec: forwarding a signal");
                        }
                    }
                    None => tracing::debug!(signal = %name, "exec: unknown signal from the client"),
                },
                Frame::Stdout(_) | Frame::Stderr(_) | Frame::Exit(_) | Frame::Error(_) => {
                    tracing::debug!("exec: a server-only frame from the client");
                    break 'read;
                }
            }
        }
    }
    if let Some(tx) = stdin.take() {
        let _ = tx.send(None).await;
    }
    let _ = gone.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_map_to_linux_numbers() {
        assert_eq!(signal_number("SIGINT"), Some(libc::SIGINT));
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("SIGUSR1"), Some(libc::SIGUSR1));
        assert_eq!(signal_number("INT"), None);
        assert_eq!(signal_number("SIGNOPE"), None);
    }
}
