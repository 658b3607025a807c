//! Terminal ioctls nix does not wrap safely, for `exec -t`: making a pty the
//! controlling terminal of the calling session (`TIOCSCTTY`) and reading or
//! setting a terminal's window size (`TIOCGWINSZ`/`TIOCSWINSZ`, which makes
//! the kernel send SIGWINCH to the terminal's foreground process group); and
//! registering a pty master (or a pidfd) with tokio's reactor.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// Registers `fd` (a non-blocking descriptor such as a pty master, or a
/// pidfd, which only turns readable) with the current tokio reactor for
/// readable and writable readiness.
pub fn register_async(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid, open descriptor that stays open and
    // keeps its number until it is dropped, which happens only when the
    // `AsyncFd` that now owns it is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// `ioctl(fd, TIOCSCTTY, 0)`: `fd` (a terminal) becomes the controlling
/// terminal of the caller, which must be a session leader without one.
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a valid fd and an integer argument (0: do not steal the
    // terminal from another session); TIOCSCTTY reads no memory of ours.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioctl(fd, TIOCSWINSZ)`: sets the window size of the terminal (a pty
/// master or slave) to `rows` x `cols`.
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid fd and a pointer to an initialised winsize that outlives
    // the call; TIOCSWINSZ only reads it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioctl(fd, TIOCGWINSZ)`: the terminal's window size as `(rows, cols)`.
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid fd and a pointer to a writable winsize that outlives the
    // call; TIOCGWINSZ fills it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((ws.ws_row, ws.ws_col))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pty_keeps_the_window_size_set_on_it() {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_window_size(pty.master.as_fd(), 33, 101).unwrap();
        assert_eq!(window_size(pty.slave.as_fd()).unwrap(), (33, 101));
        assert_eq!(window_size(pty.master.as_fd()).unwrap(), (33, 101));
        // Not a terminal: a clear error, not garbage.
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(window_size(null.as_fd()).is_err());
        assert!(set_window_size(null.as_fd(), 1, 1).is_err());
    }
}
