//! berthctl's command line: the global flags (agent address, token file,
//! TLS files, output format) and the list of commands. Each command's own flags and
//! help text live with the command in `commands/`; `docs` renders man pages
//! and completions from this definition.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::{
    apply, completions, convert, diff, drain, events, exec, fleet, inspect, load, logs, man_pages,
    pull, restart, rollback, save, top, validate, volumes,
};

/// The whole command line: global flags and one command.
#[derive(Debug, Parser)]
#[command(name = "berthctl", version, about = "Operate a Berth agent")]
pub struct Cli {
    /// Agent API: unix:PATH, https://HOST:PORT, or http://HOST:PORT for an
    /// agent started with --api-insecure.
    #[arg(
        long,
        env = "BERTH_AGENT",
        default_value = "unix:/run/berth/berth.sock",
        global = true
    )]
    pub agent: String,
    /// Bearer token file for a TCP agent.
    #[arg(long, env = "BERTH_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates the https:// agent's certificate must chain to
    /// (default: the Mozilla roots).
    #[arg(long, value_name = "FILE", env = "BERTH_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for an agent that requires one (mTLS).
    #[arg(long, value_name = "FILE", env = "BERTH_CERT_FILE", global = true)]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", env = "BERTH_KEY_FILE", global = true)]
    pub key: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// True with `-o json`.
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// `-o`: tables for people, JSON for scripts (docs/cli-json.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// berthctl's commands, in `--help` order.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Completions),
    /// Write berthctl's man pages (berthctl.1, berthctl-COMMAND.1) into DIR.
    #[command(name = "man-pages", hide = true)]
    ManPages(man_pages::ManPages),
    /// Check a manifest file or directory offline; errors name file, line and column.
    Validate(validate::Validate),
    /// Convert a Compose file to a Berth manifest (offline); keys Berth
    /// cannot express are named with line and column.
    Convert(convert::Convert),
    /// Apply a manifest file or directory (`-`: stdin) as a new revision.
    Apply(apply::Apply),
    /// Show what `apply` would do, per service and container, with old -> new values.
    Diff(diff::Diff),
    /// Services, replicas ready/desired and the current revision.
    #[command(alias = "ps")]
    Status,
    /// CPU, memory and pids per running container (sampled over --interval).
    Top(top::Top),
    /// Applied revisions, newest last.
    History,
    /// Kept events (they survive agent restarts); with -f, keep following.
    Events(events::Events),
    /// Everything about one container (id or unique prefix).
    Inspect(inspect::Inspect),
    /// A container's or a service's logs (a service's replicas merged by time).
    Logs(logs::Logs),
    /// Run a command in a container (id or unique prefix) or in one running
    /// replica of a SERVICE (a ready one first): the container's namespaces,
    /// cgroup, user, capabilities and seccomp filter, as health checks run.
    /// Streams its stdout and stderr (-i: and stdin; -t: on a pty of the
    /// container, window size followed) and exits with its exit code (125
    /// when it could not be run, 124 after --timeout).
    Exec(exec::Exec),
    /// Replace a service's replicas with new ones of the same spec, through
    /// the service's health-gated rollout (start-first or stop-first).
    Restart(restart::Restart),
    /// Re-apply an earlier revision's exact manifest and digests.
    Rollback(rollback::Rollback),
    /// Pull an image into the agent's store.
    Pull(pull::Pull),
    /// Images in the agent's store.
    Images,
    /// Import images from an archive (OCI image layout or `docker save`
    /// tar, optionally compressed) into the agent's store, every digest
    /// checked as on a pull; run them with `pull.policy = "never"`.
    Load(load::Load),
    /// Write an image of the agent's store as an OCI image layout tar.
    Save(save::Save),
    /// Free blobs and layers that no kept image uses.
    Gc,
    /// Named volumes: size, the services using them, creation time.
    Volumes(volumes::Volumes),
    /// Take this host out of (on) or back into (off) load balancer rotation.
    Drain(drain::Drain),
    /// The fleet this agent is in (berthd --fleet-etcd): status, pause, resume.
    Fleet(fleet::Fleet),
}
