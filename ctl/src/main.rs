//! `berthctl`: the operator CLI. It validates manifests offline with
//! `berth-core` and talks to `berthd`'s API over the root-only unix socket or
//! HTTPS with a bearer token and/or a client certificate. It has no Linux-only dependency. This file parses
//! the command line and dispatches to `commands/`, one module per command.

#[macro_use]
mod out;
mod cli;
mod client;
mod commands;
mod compose;
mod docs;
mod table;
mod terminal;
mod tls;
mod wait;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::{
    apply, completions, convert, diff, drain, events, exec, fleet, gc, history, images, inspect,
    load, logs, man_pages, pull, restart, rollback, save, status, top, validate, volumes,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berthctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; its `Err` is printed as `berthctl: …` with exit 1.
async fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Completions(args) => Ok(completions::run(args)),
        Command::ManPages(args) => man_pages::run(args),
        Command::Validate(args) => validate::run(cli, args),
        Command::Convert(args) => convert::run(cli, args),
        Command::Apply(args) => apply::run(cli, args).await,
        Command::Diff(args) => diff::run(cli, args).await,
        Command::Status => status::run(cli).await,
        Command::Top(args) => top::run(cli, args).await,
        Command::History => history::run(cli).await,
        Command::Events(args) => events::run(cli, args).await,
        Command::Inspect(args) => inspect::run(cli, args).await,
        Command::Logs(args) => logs::run(cli, args).await,
        Command::Exec(args) => exec::run(cli, args).await,
        Command::Restart(args) => restart::run(cli, args).await,
        Command::Rollback(args) => rollback::run(cli, args).await,
        Command::Pull(args) => pull::run(cli, args).await,
        Command::Images => images::run(cli).await,
        Command::Load(args) => load::run(cli, args).await,
        Command::Save(args) => save::run(cli, args).await,
        Command::Gc => gc::run(cli).await,
        Command::Volumes(args) => volumes::run(cli, args).await,
        Command::Drain(args) => drain::run(cli, args).await,
        Command::Fleet(args) => fleet::run(cli, args).await,
    }
}
