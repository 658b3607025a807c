//! `berthctl completions SHELL`: prints the shell completion script generated
//! from berthctl's clap definition (see `crate::docs`).

use std::process::ExitCode;

use clap::Args;

use crate::cli::Cli;

/// The arguments of `berthctl completions` (its help text is on `cli::Command`).
#[derive(Debug, Args)]
pub struct Completions {
    shell: clap_complete::Shell,
}

/// Writes the script to stdout.
pub fn run(args: &Completions) -> ExitCode {
    let mut script = Vec::new();
    crate::docs::completions::<Cli>(args.shell, &mut script);
    crate::out::write_bytes(&script);
    ExitCode::SUCCESS
}
