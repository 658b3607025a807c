//! `berthd`: parses flags and the config file, then runs the agent.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_agent::config::{AgentConfig, ConfigLayer, DEFAULT_CONFIG};
use clap::Parser;

/// The Berth per-host deploy agent.
#[derive(Debug, Parser)]
#[command(name = "berthd", version, about)]
struct Flags {
    /// Config file (TOML; flags win over it).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// unix:PATH or tcp:ADDR:PORT; repeatable. Default unix:<run-dir>/berth.sock.
    #[arg(long)]
    api: Vec<String>,
    /// Bearer token file, required for a tcp API listener.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Read-only listener: /metrics, /healthz, /readyz, /v1/services/NAME/ready.
    #[arg(long)]
    http: Option<String>,
    /// Manifest file or directory, watched.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Manifest URL, polled with If-None-Match.
    #[arg(long)]
    manifest_url: Option<String>,
    /// Git repository whose --git-path at --git-ref is the manifest.
    #[arg(long)]
    git: Option<String>,
    /// Branch, tag or commit of --git (default main).
    #[arg(long)]
    git_ref: Option<String>,
    /// File or directory inside --git (default manifests/).
    #[arg(long)]
    git_path: Option<String>,
    /// How often --manifest-url and --git are polled (default 30s).
    #[arg(long)]
    manifest_poll_interval: Option<String>,
    #[arg(long)]
    registry_config: Option<PathBuf>,
    #[arg(long)]
    subnet: Option<String>,
    #[arg(long)]
    bridge: Option<String>,
    #[arg(long)]
    cgroup_parent: Option<String>,
    /// Upstream resolver of the containers' DNS server, ADDR or ADDR:PORT;
    /// repeatable. Default: the host's /etc/resolv.conf.
    #[arg(long)]
    dns_upstream: Vec<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // Hidden: the per-container monitor (see berth_agent::runtime::monitor).
    // It must run before anything else: no logging, no async runtime.
    if args.get(1).map(String::as_str) == Some(berth_agent::runtime::MONITOR_SUBCOMMAND) {
        berth_agent::runtime::monitor_main(&args[2..]);
    }
    // Hidden: a command run inside a running container (see berth_agent::runtime::exec).
    if args.get(1).map(String::as_str) == Some(berth_agent::runtime::EXEC_SUBCOMMAND) {
        berth_agent::runtime::exec_main(&args[2..]);
    }
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (config_path, required) = match &flags.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let config = ConfigLayer::from_file(&config_path, required).and_then(|file| {
        AgentConfig::from_layer(file.overlay(ConfigLayer {
            state_dir: flags.state_dir,
            run_dir: flags.run_dir,
            api: (!flags.api.is_empty()).then_some(flags.api),
            api_token_file: flags.api_token_file,
            http: flags.http,
            manifests: flags.manifests,
            manifest_url: flags.manifest_url,
            git: flags.git,
            git_ref: flags.git_ref,
            git_path: flags.git_path,
            manifest_poll_interval: flags.manifest_poll_interval,
            registry_config: flags.registry_config,
            subnet: flags.subnet,
            bridge: flags.bridge,
            cgroup_parent: flags.cgroup_parent,
            dns_upstream: (!flags.dns_upstream.is_empty()).then_some(flags.dns_upstream),
        }))
    });
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(berth_agent::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e}");
            ExitCode::FAILURE
        }
    }
}
