//! Standard output that ends quietly on a closed pipe: `berthctl ps | head -1`
//! exits 0 without a panic, as `ls | head -1` does, instead of Rust's default
//! `println!` panic. Every printing path goes through [`outln!`] / [`out!`].

use std::io::Write;

/// Writes formatted text to stdout; a closed pipe (EPIPE) exits the process
/// with status 0, any other write error with status 1 and one line on stderr.
pub fn write_fmt(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        exit_on(e);
    }
}

/// Writes raw bytes to stdout with the same rule as [`write_fmt`].
pub fn write_bytes(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        exit_on(e);
    }
}

fn exit_on(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    let _ = writeln!(std::io::stderr(), "berthctl: writing output: {e}");
    std::process::exit(1);
}

/// `println!` for berthctl: see the module doc.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::write_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for berthctl: see the module doc.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write_fmt(format_args!($($arg)*)) };
}
