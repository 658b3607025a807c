//! `berthctl`: the operator CLI. It validates manifests offline with
//! `berth-core` and talks to `berthd`'s API over the root-only unix socket or
//! TCP with a bearer token. It has no Linux-only dependency.

mod client;
mod docs;
#[macro_use]
mod out;
mod pull;
mod top;
mod wait;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use berth_core::api::{ApplyResponse, ErrorBody, Event, RevisionInfo, StatusResponse};
use berth_core::manifest::{self, Manifest};
use berth_core::plan::{ChangeKind, ServiceAction, ServiceChange, ServicePlan, Step};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use hyper::Method;

use crate::client::{AgentAddr, Client};

#[derive(Debug, Parser)]
#[command(name = "berthctl", version, about = "Operate a Berth agent")]
struct Cli {
    /// Agent API: unix:PATH or http://ADDR:PORT.
    #[arg(
        long,
        env = "BERTH_AGENT",
        default_value = "unix:/run/berth/berth.sock",
        global = true
    )]
    agent: String,
    /// Bearer token file for a TCP agent.
    #[arg(long, env = "BERTH_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write berthctl's man pages (berthctl.1, berthctl-COMMAND.1) into DIR.
    #[command(name = "man-pages", hide = true)]
    ManPages { dir: PathBuf },
    /// Check a manifest file or directory offline; errors name file, line and column.
    Validate {
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
    },
    /// Apply a manifest file or directory (`-`: stdin) as a new revision.
    Apply {
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
        /// Show the plan without recording anything.
        #[arg(long)]
        dry_run: bool,
        /// Remove services the current revision runs that the manifest leaves
        /// out (without it, apply refuses and names them; on a terminal it asks).
        #[arg(long)]
        prune: bool,
        /// Follow the rollout until it completes or fails (non-zero exit on failure).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long.
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
    /// Show what `apply` would do, per service and container, with old -> new values.
    Diff {
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
        /// Exit 1 when the manifest changes anything, 0 when not, 2 on errors
        /// (as `git diff --exit-code` and `kubectl diff`).
        #[arg(long)]
        exit_code: bool,
    },
    /// Services, replicas ready/desired and the current revision.
    #[command(alias = "ps")]
    Status,
    /// CPU, memory and pids per running container (sampled over --interval).
    Top {
        /// How long to measure CPU use over, e.g. 1s, 500ms.
        #[arg(long, default_value = "1s")]
        interval: String,
    },
    /// Applied revisions, newest last.
    History,
    /// Kept events (they survive agent restarts); with -f, keep following.
    Events {
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only events of this service.
        #[arg(long)]
        service: Option<String>,
        /// Only events of this kind (e.g. rollout-failed, container-started).
        #[arg(long)]
        kind: Option<String>,
        /// Only events since an RFC 3339 time or a duration ago (10m, 2h).
        #[arg(long)]
        since: Option<String>,
    },
    /// Everything about one container (id or unique prefix).
    Inspect { container: String },
    /// A container's or a service's logs (a service's replicas merged by time).
    Logs {
        /// A service, or a container id (or unique prefix).
        target: String,
        /// Keep printing new lines; for a service, also those of replicas
        /// started later (after a rollout or restart).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Only lines since an RFC 3339 time or for a duration back (10m, 1h).
        #[arg(long)]
        since: Option<String>,
        /// Prefix each line with its RFC 3339 time.
        #[arg(long)]
        timestamps: bool,
        /// The service's last exited or replaced replica.
        #[arg(short = 'p', long)]
        previous: bool,
    },
    /// Run a command in a container (id or unique prefix) or in one running
    /// replica of a SERVICE (a ready one first): the container's namespaces,
    /// cgroup, user, capabilities and seccomp filter, as health checks run.
    /// Prints the command's combined stdout+stderr (first 4 KiB) and exits
    /// with its exit code (124 on timeout).
    Exec {
        /// Keep stdin open (interactive; not supported yet).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a terminal (not supported yet).
        #[arg(short = 't', long)]
        tty: bool,
        /// Kill the command after this long, e.g. 30s, 5m (at most 1h).
        #[arg(long, default_value = "60s")]
        timeout: String,
        /// A container id (or unique prefix) or a service name.
        target: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Replace a service's replicas with new ones of the same spec, through
    /// the service's health-gated rollout (start-first or stop-first).
    Restart {
        service: String,
        /// Follow the rollout until it completes or fails (non-zero exit on failure).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long.
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
    /// Re-apply an earlier revision's exact manifest and digests.
    Rollback { revision: Option<u64> },
    /// Pull an image into the agent's store.
    Pull { image: String },
    /// Images in the agent's store.
    Images,
    /// Free blobs and layers that no kept image uses.
    Gc,
    /// Named volumes: size, the services using them, creation time.
    Volumes {
        #[command(subcommand)]
        action: Option<VolumesAction>,
    },
    /// Take this host out of (on) or back into (off) load balancer rotation.
    Drain {
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum VolumesAction {
    /// Remove a volume and its data; refused while a container or the
    /// current revision uses it.
    Rm { name: String },
}

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
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berthctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(cli: &Cli) -> Result<Client> {
    let token = match &cli.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    Ok(Client::new(AgentAddr::parse(&cli.agent)?, token))
}

/// One request whose non-2xx answer becomes the error (its JSON message).
async fn call(cli: &Cli, method: Method, path: &str) -> Result<client::Reply> {
    let reply = client(cli)?
        .request(method, path, None, Bytes::new())
        .await?;
    if !reply.status.is_success() {
        bail!("{}", error_text(&reply.body));
    }
    Ok(reply)
}

/// The `GET /v1/containers/TARGET/logs` request of `logs` (TARGET may be a
/// service or a container).
fn logs_path(
    target: &str,
    follow: bool,
    tail: Option<usize>,
    since: Option<&str>,
    timestamps: bool,
    previous: bool,
) -> String {
    let mut path = format!(
        "/v1/containers/{}/logs?follow={follow}&timestamps={timestamps}&previous={previous}",
        query_escape(target)
    );
    if let Some(n) = tail {
        path.push_str(&format!("&tail={n}"));
    }
    if let Some(s) = since {
        path.push_str(&format!("&since={}", query_escape(s)));
    }
    path
}

/// The message of a JSON error body, or the raw text.
pub(crate) fn error_text(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

/// Reads a manifest file or directory; `-` reads one file from stdin, named
/// `stdin.toml` in error locations.
fn read_manifest(path: &Path) -> Result<manifest::SourceFiles> {
    if path == Path::new("-") {
        use std::io::Read;
        let mut text = String::new();
        std::io::stdin()
            .take(manifest::MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .context("reading the manifest from stdin")?;
        if text.len() as u64 > manifest::MAX_FILE_BYTES {
            bail!(
                "stdin: manifest larger than {} bytes",
                manifest::MAX_FILE_BYTES
            );
        }
        return Ok(manifest::SourceFiles::from([(
            "stdin.toml".to_string(),
            text,
        )]));
    }
    Ok(manifest::read_sources(path)?)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            docs::completions::<Cli>(*shell, &mut script);
            out::write_bytes(&script);
            Ok(ExitCode::SUCCESS)
        }
        Command::ManPages { dir } => {
            for path in docs::man_pages::<Cli>(dir)? {
                outln!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { path } => {
            let files = read_manifest(path)?;
            match Manifest::from_sources(&files) {
                Ok(m) => {
                    if cli.output == Output::Json {
                        outln!(
                            "{}",
                            serde_json::json!({ "valid": true, "services": m.services.keys().collect::<Vec<_>>() })
                        );
                    } else {
                        let plural = |n: usize, one: &str, many: &str| {
                            format!("{n} {}", if n == 1 { one } else { many })
                        };
                        outln!(
                            "{}: valid ({} in {})",
                            path.display(),
                            plural(m.services.len(), "service", "services"),
                            plural(files.len(), "file", "files")
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if cli.output == Output::Json {
                        outln!(
                            "{}",
                            serde_json::json!({ "valid": false, "problems": e.problems() })
                        );
                    } else {
                        eprintln!("{e}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Apply {
            path,
            dry_run,
            prune,
            wait,
            timeout,
        } => {
            let code = apply(&cli, path, *dry_run, *prune).await?;
            if code != ExitCode::SUCCESS || *dry_run || !*wait {
                return Ok(code);
            }
            let limit = berth_core::units::parse_duration(timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            crate::wait::wait_for_rollout(&client(&cli)?, limit, cli.output == Output::Json).await
        }
        Command::Inspect { container } => {
            let reply = client(&cli)?
                .request(
                    Method::GET,
                    &format!("/v1/containers/{container}"),
                    None,
                    Bytes::new(),
                )
                .await?;
            if !reply.status.is_success() {
                bail!("{}", error_text(&reply.body));
            }
            let v: serde_json::Value =
                serde_json::from_slice(&reply.body).context("decoding container")?;
            outln!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            target,
            follow,
            tail,
            since,
            timestamps,
            previous,
        } => {
            let path = logs_path(
                target,
                *follow,
                *tail,
                since.as_deref(),
                *timestamps,
                *previous,
            );
            // `logs … | head` ends quietly, like every other command.
            client(&cli)?
                .stream_raw(&path, |chunk| {
                    crate::out::write_bytes(chunk);
                    Ok(())
                })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            interactive,
            tty,
            timeout,
            target,
            cmd,
        } => {
            if *interactive || *tty {
                bail!("interactive exec is not supported yet: run the command without -i/-t");
            }
            let limit = berth_core::units::parse_duration(timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            let body = serde_json::json!({
                "cmd": cmd,
                "timeout_ms": u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            });
            let reply = client(&cli)?
                .request(
                    Method::POST,
                    &format!("/v1/containers/{}/exec", query_escape(target)),
                    Some("application/json"),
                    Bytes::from(body.to_string()),
                )
                .await?;
            if !reply.status.is_success() {
                eprintln!("{}", error_text(&reply.body));
                // Docker's code for "the command could not be run".
                return Ok(ExitCode::from(125));
            }
            let v: serde_json::Value =
                serde_json::from_slice(&reply.body).context("decoding the exec reply")?;
            if cli.output == Output::Json {
                outln!("{v}");
            } else {
                out::write_bytes(v["output"].as_str().unwrap_or_default().as_bytes());
                if v["timed_out"].as_bool() == Some(true) {
                    eprintln!("berthctl: exec: the command timed out after {timeout}");
                }
            }
            let code = v["exit_code"].as_i64().unwrap_or(125);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(125)))
        }
        Command::Restart {
            service,
            wait,
            timeout,
        } => {
            let reply = client(&cli)?
                .request(
                    Method::POST,
                    &format!("/v1/services/{}/restart", query_escape(service)),
                    None,
                    Bytes::new(),
                )
                .await?;
            if !reply.status.is_success() {
                eprintln!("{}", error_text(&reply.body));
                return Ok(ExitCode::FAILURE);
            }
            if cli.output == Output::Json && !*wait {
                outln!("{}", String::from_utf8_lossy(&reply.body));
            } else if cli.output != Output::Json {
                outln!("restarting {service}");
            }
            if !*wait {
                return Ok(ExitCode::SUCCESS);
            }
            let limit = berth_core::units::parse_duration(timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            crate::wait::wait_for_rollout(&client(&cli)?, limit, cli.output == Output::Json).await
        }
        Command::Rollback { revision } => {
            let body = serde_json::json!({ "revision": revision });
            let reply = client(&cli)?
                .request(
                    Method::POST,
                    "/v1/rollback",
                    Some("application/json"),
                    Bytes::from(body.to_string()),
                )
                .await?;
            if !reply.status.is_success() {
                eprintln!("{}", error_text(&reply.body));
                return Ok(ExitCode::FAILURE);
            }
            if cli.output == Output::Json {
                outln!("{}", String::from_utf8_lossy(&reply.body));
            } else {
                let resp: ApplyResponse = serde_json::from_slice(&reply.body)?;
                print_plan(&resp.plan);
                outln!("rolled back as revision {}", resp.revision.unwrap_or(0));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pull { image } => {
            crate::pull::pull(&client(&cli)?, image, cli.output == Output::Json).await
        }
        Command::Images => {
            let reply = call(&cli, Method::GET, "/v1/images").await?;
            if cli.output == Output::Json {
                outln!("{}", String::from_utf8_lossy(&reply.body));
            } else {
                let images: Vec<berth_core::api::ImageView> = serde_json::from_slice(&reply.body)?;
                let mut rows = vec![[
                    "IMAGE".to_string(),
                    "DIGEST".into(),
                    "SIZE".into(),
                    "LAYERS".into(),
                    "IN USE".into(),
                ]];
                for i in images {
                    rows.push([
                        i.reference,
                        short_digest(&i.digest),
                        human_bytes(i.size),
                        i.layers.to_string(),
                        if i.in_use { "yes".into() } else { "no".into() },
                    ]);
                }
                print_table(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc => {
            let reply = call(&cli, Method::POST, "/v1/gc").await?;
            if cli.output == Output::Json {
                outln!("{}", String::from_utf8_lossy(&reply.body));
            } else {
                let r: serde_json::Value = serde_json::from_slice(&reply.body)?;
                outln!(
                    "removed {} images, {} blobs, {} layer snapshots, {} archived container logs; freed {}",
                    r["images_removed"].as_array().map(|a| a.len()).unwrap_or(0),
                    r["blobs_removed"],
                    r["snapshots_removed"],
                    r["log_archives_removed"].as_u64().unwrap_or(0),
                    human_bytes(r["bytes_freed"].as_u64().unwrap_or(0))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Volumes { action: None } => {
            let reply = call(&cli, Method::GET, "/v1/volumes").await?;
            if cli.output == Output::Json {
                println!("{}", String::from_utf8_lossy(&reply.body));
            } else {
                let list: Vec<berth_core::api::VolumeView> =
                    serde_json::from_slice(&reply.body).context("decoding volumes")?;
                let mut rows = vec![[
                    "NAME".to_string(),
                    "SIZE".into(),
                    "SERVICES".into(),
                    "CREATED".into(),
                ]];
                for v in list {
                    rows.push([
                        v.name,
                        human_bytes(v.size_bytes),
                        if v.services.is_empty() {
                            "-".into()
                        } else {
                            v.services.join(",")
                        },
                        v.created_at,
                    ]);
                }
                print_table(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Volumes {
            action: Some(VolumesAction::Rm { name }),
        } => {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !valid {
                bail!("`{name}` is not a valid volume name ([A-Za-z0-9_.-])");
            }
            let reply = call(&cli, Method::DELETE, &format!("/v1/volumes/{name}")).await?;
            if cli.output == Output::Json {
                println!("{}", String::from_utf8_lossy(&reply.body));
            } else {
                println!("removed volume {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain { state } => {
            let c = client(&cli)?;
            let reply = match state.as_deref() {
                Some(on_off) => {
                    let body = serde_json::json!({ "on": on_off == "on" }).to_string();
                    c.request(
                        Method::PUT,
                        "/v1/drain",
                        Some("application/json"),
                        Bytes::from(body),
                    )
                    .await?
                }
                None => {
                    c.request(Method::GET, "/v1/drain", None, Bytes::new())
                        .await?
                }
            };
            if !reply.status.is_success() {
                bail!("{}", error_text(&reply.body));
            }
            let v: serde_json::Value = serde_json::from_slice(&reply.body)?;
            if cli.output == Output::Json {
                outln!("{v}");
            } else if v["draining"] == true {
                outln!("draining: every readiness endpoint of this host answers 503");
            } else {
                outln!("not draining");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff { path, exit_code } => diff(&cli, path, *exit_code).await,
        Command::Status => {
            let reply = call(&cli, Method::GET, "/v1/status").await?;
            let containers = client(&cli)?
                .request(Method::GET, "/v1/containers", None, Bytes::new())
                .await?;
            if cli.output == Output::Json {
                // One document: the agent's status plus every container the
                // table lists (docs/cli-json.md names the fields).
                let mut doc: serde_json::Value =
                    serde_json::from_slice(&reply.body).context("decoding status")?;
                if !containers.status.is_success() {
                    bail!("listing containers: {}", error_text(&containers.body));
                }
                let list: serde_json::Value =
                    serde_json::from_slice(&containers.body).context("decoding containers")?;
                if let Some(obj) = doc.as_object_mut() {
                    obj.insert("containers".into(), list);
                }
                outln!("{doc}");
            } else {
                let status: StatusResponse =
                    serde_json::from_slice(&reply.body).context("decoding status")?;
                print_status(&status);
                if containers.status.is_success() {
                    let list: Vec<berth_core::api::ContainerView> =
                        serde_json::from_slice(&containers.body).context("decoding containers")?;
                    if !list.is_empty() {
                        outln!();
                        print_containers(&list);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Top { interval } => {
            let interval = berth_core::units::parse_duration(interval)
                .map_err(|e| anyhow::anyhow!("--interval: {e}"))?;
            top::run(&cli, interval).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::History => {
            let reply = call(&cli, Method::GET, "/v1/revisions").await?;
            if cli.output == Output::Json {
                outln!("{}", String::from_utf8_lossy(&reply.body));
            } else {
                let revs: Vec<RevisionInfo> =
                    serde_json::from_slice(&reply.body).context("decoding revisions")?;
                print_history(&revs);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Events {
            follow,
            service,
            kind,
            since,
        } => {
            let c = client(&cli)?;
            let mut query: Vec<String> = Vec::new();
            for (key, value) in [("service", service), ("kind", kind), ("since", since)] {
                if let Some(v) = value {
                    query.push(format!("{key}={}", query_escape(v)));
                }
            }
            let json = cli.output == Output::Json;
            let print = |e: &Event| {
                if json {
                    outln!("{}", serde_json::to_string(e).unwrap_or_default());
                } else {
                    outln!("{}", event_line(e));
                }
            };
            if *follow {
                query.push("follow=true".into());
                c.stream_lines(&format!("/v1/events?{}", query.join("&")), |line| {
                    match serde_json::from_str::<Event>(line) {
                        Ok(e) => print(&e),
                        Err(_) => outln!("{line}"),
                    }
                    Ok(())
                })
                .await?;
            } else {
                let reply = c
                    .request(
                        Method::GET,
                        &format!("/v1/events?{}", query.join("&")),
                        None,
                        Bytes::new(),
                    )
                    .await?;
                if !reply.status.is_success() {
                    bail!("{}", error_text(&reply.body));
                }
                let events: Vec<Event> =
                    serde_json::from_slice(&reply.body).context("decoding events")?;
                events.iter().for_each(print);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Sends `files` to `PUT /v1/manifest` with the given query flags.
async fn put_manifest(
    cli: &Cli,
    files: &manifest::SourceFiles,
    dry_run: bool,
    prune: bool,
) -> Result<crate::client::Reply> {
    let body = serde_json::to_vec(files)?;
    let mut query = Vec::new();
    if dry_run {
        query.push("dry_run=true");
    }
    if prune {
        query.push("prune=true");
    }
    let path = if query.is_empty() {
        "/v1/manifest".to_string()
    } else {
        format!("/v1/manifest?{}", query.join("&"))
    };
    client(cli)?
        .request(
            Method::PUT,
            &path,
            Some("application/json"),
            Bytes::from(body),
        )
        .await
}

/// The services a `would_remove` refusal names, if `body` is one.
fn would_remove(body: &[u8]) -> Option<Vec<String>> {
    let e: ErrorBody = serde_json::from_slice(body).ok()?;
    if e.error.code != "would_remove" {
        return None;
    }
    serde_json::from_value(e.error.details.get("services")?.clone()).ok()
}

/// Asks on the terminal whether to remove `services`; false when stdin or
/// stderr is not a terminal.
fn confirm_removal(services: &[String]) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return false;
    }
    eprint!(
        "this manifest removes {}. Remove? [y/N] ",
        services.join(", ")
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes")
}

async fn apply(cli: &Cli, path: &Path, dry_run: bool, prune: bool) -> Result<ExitCode> {
    let files = read_manifest(path)?;
    let mut reply = put_manifest(cli, &files, dry_run, prune).await?;
    if reply.status.as_u16() == 409 && cli.output != Output::Json && path != Path::new("-") {
        if let Some(services) = would_remove(&reply.body) {
            if confirm_removal(&services) {
                reply = put_manifest(cli, &files, dry_run, true).await?;
            }
        }
    }
    if !reply.status.is_success() {
        if cli.output == Output::Json {
            outln!("{}", String::from_utf8_lossy(&reply.body));
        } else {
            eprintln!("{}", error_text(&reply.body));
        }
        return Ok(ExitCode::FAILURE);
    }
    if cli.output == Output::Json {
        outln!("{}", String::from_utf8_lossy(&reply.body));
        return Ok(ExitCode::SUCCESS);
    }
    let resp: ApplyResponse =
        serde_json::from_slice(&reply.body).context("decoding the agent's plan")?;
    print_changes(&resp.changes);
    print_values(&resp.changes);
    outln!();
    print_plan(&resp.plan);
    if dry_run {
        outln!("dry run: nothing recorded");
    } else if resp.unchanged {
        outln!(
            "unchanged: revision {} already has this manifest",
            resp.revision.unwrap_or(0)
        );
    } else {
        outln!("applied as revision {}", resp.revision.unwrap_or(0));
    }
    Ok(ExitCode::SUCCESS)
}

/// `berthctl diff`: the agent's dry-run plan, shown as changes (with old ->
/// new values) and steps. With `exit_code`: 1 when anything changes, 0 when
/// not, 2 on errors.
async fn diff(cli: &Cli, path: &Path, exit_code: bool) -> Result<ExitCode> {
    let failed = if exit_code {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    };
    let files = match read_manifest(path) {
        Ok(f) => f,
        Err(e) if exit_code => {
            eprintln!("error: {e:#}");
            return Ok(failed);
        }
        Err(e) => return Err(e),
    };
    let reply = match put_manifest(cli, &files, true, true).await {
        Ok(r) => r,
        Err(e) if exit_code => {
            eprintln!("error: {e:#}");
            return Ok(failed);
        }
        Err(e) => return Err(e),
    };
    if !reply.status.is_success() {
        if cli.output == Output::Json {
            outln!("{}", String::from_utf8_lossy(&reply.body));
        } else {
            eprintln!("{}", error_text(&reply.body));
        }
        return Ok(failed);
    }
    let resp: ApplyResponse =
        serde_json::from_slice(&reply.body).context("decoding the agent's plan")?;
    if cli.output == Output::Json {
        outln!("{}", String::from_utf8_lossy(&reply.body));
    } else {
        print_changes(&resp.changes);
        print_values(&resp.changes);
        outln!();
        print_plan(&resp.plan);
    }
    let changed = resp
        .changes
        .iter()
        .any(|c| c.change != ChangeKind::Unchanged);
    Ok(if exit_code && changed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Per changed service, each changed value as `field old -> new`.
fn print_values(changes: &[ServiceChange]) {
    for c in changes.iter().filter(|c| !c.values.is_empty()) {
        outln!();
        outln!("{}:", c.service);
        for v in &c.values {
            outln!("  {} {} -> {}", v.field, v.from, v.to);
        }
    }
}

fn action_text(a: ServiceAction) -> &'static str {
    match a {
        ServiceAction::Create => "create",
        ServiceAction::Replace => "replace",
        ServiceAction::ScaleUp => "scale-up",
        ServiceAction::ScaleDown => "scale-down",
        ServiceAction::Remove => "remove",
        ServiceAction::Unchanged => "unchanged",
    }
}

fn print_plan(plan: &[ServicePlan]) {
    let mut rows = vec![[
        "SERVICE".to_string(),
        "ACTION".into(),
        "REPLICAS".into(),
        "DETAIL".into(),
    ]];
    for p in plan {
        let mut details = Vec::new();
        let starts = p
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Start { .. }))
            .count();
        if starts > 0 {
            details.push(format!("start {starts}"));
        }
        for s in &p.steps {
            match s {
                Step::Replace { container, fields } => {
                    details.push(format!("replace {container} ({})", fields.join(", ")))
                }
                Step::Remove { container, reason } => details.push(format!(
                    "remove {container} ({})",
                    serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )),
                Step::Start { .. } => {}
            }
        }
        details.extend(p.notes.iter().cloned());
        rows.push([
            p.service.clone(),
            action_text(p.action).into(),
            format!("{} -> {}", p.current_replicas, p.desired_replicas),
            details.join("; "),
        ]);
    }
    print_table(&rows);
}

fn print_changes(changes: &[ServiceChange]) {
    let mut rows = vec![[
        "SERVICE".to_string(),
        "CHANGE".into(),
        "REPLICAS".into(),
        "FIELDS FORCING REPLACEMENT".into(),
    ]];
    for c in changes {
        let change = match c.change {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Modified => "modified",
            ChangeKind::Scaled => "scaled",
            ChangeKind::Unchanged => "unchanged",
        };
        rows.push([
            c.service.clone(),
            change.into(),
            format!("{} -> {}", c.replicas_from, c.replicas_to),
            c.fields
                .iter()
                .chain(c.notes.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        ]);
    }
    print_table(&rows);
}

/// `1.5 MB`-style sizes.
pub(crate) fn human_bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn print_status(s: &StatusResponse) {
    let rev = s
        .revision
        .as_ref()
        .map(|r| format!("revision {} ({}, {})", r.number, r.source, r.state))
        .unwrap_or_else(|| "no revision applied".into());
    outln!(
        "berthd {} — {}{}{}",
        s.agent.version,
        rev,
        if s.agent.ready { "" } else { " — not ready" },
        if s.agent.draining {
            " — DRAINING"
        } else {
            ""
        }
    );
    if let Some(err) = &s.source_error {
        outln!("source error: {err}");
    }
    let mut rows = vec![[
        "SERVICE".to_string(),
        "READY".into(),
        "IMAGE".into(),
        "RESTARTS".into(),
        "LAST ERROR".into(),
    ]];
    for svc in &s.services {
        let image = match &svc.digest {
            Some(d) => format!("{} ({})", svc.image, short_digest(d)),
            None => svc.image.clone(),
        };
        rows.push([
            svc.name.clone(),
            format!("{}/{}", svc.replicas_ready, svc.replicas_desired),
            image,
            svc.restarts.to_string(),
            svc.last_error.clone().unwrap_or_default(),
        ]);
    }
    print_table(&rows);
}

fn print_containers(list: &[berth_core::api::ContainerView]) {
    let mut rows = vec![[
        "CONTAINER".to_string(),
        "SERVICE".into(),
        "STATE".into(),
        "HEALTH".into(),
        "IP".into(),
        "PORTS".into(),
        "REV".into(),
    ]];
    for c in list {
        let state = match (c.state.as_str(), c.exit_code) {
            ("exited", Some(code)) if c.oom_killed => format!("exited ({code}, OOM)"),
            ("exited", Some(code)) => format!("exited ({code})"),
            (s, _) => s.to_string(),
        };
        rows.push([
            c.id.clone(),
            c.service.clone(),
            state,
            c.health.clone(),
            c.ip.clone().unwrap_or_else(|| "-".into()),
            c.ports.join(", "),
            c.revision.map(|r| r.to_string()).unwrap_or_default(),
        ]);
    }
    print_table(&rows);
}

pub(crate) fn short_digest(d: &str) -> String {
    let hex = d.split_once(':').map(|(_, h)| h).unwrap_or(d);
    hex.chars().take(12).collect()
}

fn print_history(revs: &[RevisionInfo]) {
    let mut rows = vec![[
        "REVISION".to_string(),
        "APPLIED".into(),
        "SOURCE".into(),
        "STATE".into(),
        "SERVICES".into(),
    ]];
    for r in revs {
        let services = r
            .services
            .iter()
            .map(|s| match r.digests.get(s) {
                Some(d) => format!("{s}@{}", short_digest(d)),
                None => s.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        rows.push([
            r.number.to_string(),
            r.applied_at.clone(),
            r.source.clone(),
            r.state.to_string(),
            services,
        ]);
    }
    print_table(&rows);
}

fn event_line(e: &Event) -> String {
    let mut subject = String::new();
    if let Some(s) = &e.service {
        subject.push_str(&format!(" service={s}"));
    }
    if let Some(c) = &e.container {
        subject.push_str(&format!(" container={c}"));
    }
    format!("{} {}{} {}", e.time, e.kind, subject, e.message)
}

pub(crate) fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        outln!("{}", line.trim_end());
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_path_carries_every_flag_escaped() {
        assert_eq!(
            logs_path("web", false, None, None, false, false),
            "/v1/containers/web/logs?follow=false&timestamps=false&previous=false"
        );
        assert_eq!(
            logs_path(
                "web",
                true,
                Some(5),
                Some("2024-05-01T10:00:00+02:00"),
                true,
                true
            ),
            "/v1/containers/web/logs?follow=true&timestamps=true&previous=true&tail=5&since=2024-05-01T10%3A00%3A00%2B02%3A00"
        );
        assert_eq!(query_escape("a b/c"), "a%20b%2Fc");
    }
}
