//! The local terminal for `exec -t`: its window size, and raw mode (input
//! passed through byte by byte, no echo, no local signals: ^C reaches the
//! remote pty as a byte), restored when the guard drops and by a panic hook
//! (release builds abort on panic, so no destructor would run).

use berth_core::exec::WindowSize;

/// The window size of the terminal on stdout (else stderr), if any.
pub fn size() -> Option<WindowSize> {
    console::Term::stdout()
        .size_checked()
        .or_else(|| console::Term::stderr().size_checked())
        .map(|(rows, cols)| WindowSize { rows, cols })
}

#[cfg(unix)]
mod raw {
    use std::sync::{Mutex, Once};

    use anyhow::{Context, Result};
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

    /// The settings to restore, for the panic hook.
    static SAVED: Mutex<Option<Termios>> = Mutex::new(None);
    static HOOK: Once = Once::new();

    fn restore() {
        let saved = SAVED.lock().map(|mut s| s.take()).unwrap_or(None);
        if let Some(t) = saved {
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &t);
        }
    }

    /// Stdin's terminal in raw mode while this lives.
    #[derive(Debug)]
    pub struct RawMode(());

    impl RawMode {
        /// Puts the terminal on stdin in raw mode (`cfmakeraw`, as Docker's
        /// `MakeRaw`).
        pub fn enter() -> Result<RawMode> {
            let stdin = std::io::stdin();
            let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
            let mut raw = saved.clone();
            cfmakeraw(&mut raw);
            if let Ok(mut s) = SAVED.lock() {
                *s = Some(saved);
            }
            HOOK.call_once(|| {
                let previous = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    restore();
                    previous(info);
                }));
            });
            tcsetattr(&stdin, SetArg::TCSANOW, &raw)
                .context("switching the terminal to raw mode")?;
            Ok(RawMode(()))
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            restore();
        }
    }
}

#[cfg(not(unix))]
mod raw {
    /// Raw mode is not supported here: input stays line-buffered.
    #[derive(Debug)]
    pub struct RawMode(());

    impl RawMode {
        pub fn enter() -> anyhow::Result<RawMode> {
            Ok(RawMode(()))
        }
    }
}

pub use raw::RawMode;
