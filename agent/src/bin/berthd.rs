//! `berthd`: parses flags and the config file, then runs the agent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_agent::config::{AgentConfig, ConfigLayer, DEFAULT_CONFIG};
use clap::{CommandFactory, Parser};

/// The Berth per-host deploy agent: reconciles a desired-state TOML manifest
/// into containers it runs itself. Flags win over the config file's keys of the
/// same name (snake_case).
#[derive(Debug, Parser)]
#[command(name = "berthd", version, about, long_about = None)]
struct Flags {
    /// Config file (TOML; see deploy/agent.toml). A missing default file is fine.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Images, containers, volumes and the state database (made 0700).
    #[arg(
        long,
        value_name = "DIR",
        help = "State directory [default: /var/lib/berth]"
    )]
    state_dir: Option<PathBuf>,
    /// Runtime files: the API socket, netns pins.
    #[arg(
        long,
        value_name = "DIR",
        help = "Runtime directory [default: /run/berth]"
    )]
    run_dir: Option<PathBuf>,
    /// Mutating API listener, repeatable: unix:PATH or tcp:ADDR:PORT (tcp is
    /// HTTPS: needs --api-tls-cert/--api-tls-key, and --api-token-file or
    /// --api-tls-client-ca).
    #[arg(
        long,
        value_name = "LISTEN",
        help = "Mutating API listener, repeatable: unix:PATH or tcp:ADDR:PORT (HTTPS: --api-tls-cert, --api-tls-key; plain only with --api-insecure) [default: unix:<run-dir>/berth.sock]"
    )]
    api: Vec<String>,
    /// Bearer token file: a tcp API listener requires this token (unless
    /// client certificates alone authenticate, see --api-tls-client-ca).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// PEM certificate chain (leaf first) the tcp API listener serves HTTPS with.
    #[arg(long, value_name = "FILE")]
    api_tls_cert: Option<PathBuf>,
    /// PEM private key of --api-tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    api_tls_key: Option<PathBuf>,
    /// PEM CA certificates: tcp API clients must present a certificate one of
    /// them signed (mTLS), in addition to the token when --api-token-file is
    /// given, instead of it otherwise.
    #[arg(long, value_name = "FILE")]
    api_tls_client_ca: Option<PathBuf>,
    /// Serve the tcp API listener as plain HTTP, without TLS: the token and
    /// every manifest cross the network in clear text (logged as a warning).
    #[arg(long)]
    api_insecure: bool,
    /// Read-only listener: /metrics, /healthz, /readyz, /v1/services/NAME/ready.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        help = "Read-only listener (/metrics, /healthz, /readyz, /v1/services/NAME/ready) [default: 127.0.0.1:9480]"
    )]
    http: Option<String>,
    /// Manifest file or directory, watched (a manifest source: apply is refused).
    #[arg(long, value_name = "PATH")]
    manifests: Option<PathBuf>,
    /// Manifest URL, polled with If-None-Match (a manifest source).
    #[arg(long, value_name = "URL")]
    manifest_url: Option<String>,
    /// Git repository whose --git-path at --git-ref is the manifest (a manifest source).
    #[arg(long, value_name = "REPO")]
    git: Option<String>,
    /// Branch, tag or commit of --git.
    #[arg(
        long,
        value_name = "REF",
        help = "Branch, tag or commit of --git [default: main]"
    )]
    git_ref: Option<String>,
    /// File or directory inside --git.
    #[arg(
        long,
        value_name = "PATH",
        help = "File or directory inside --git [default: manifests/]"
    )]
    git_path: Option<String>,
    /// How often --manifest-url and --git are polled (also the --manifests rescan).
    #[arg(
        long,
        value_name = "DURATION",
        help = "How often --manifest-url and --git are polled, and --manifests rescanned [default: 30s]"
    )]
    manifest_poll_interval: Option<String>,
    /// How often the state filesystem's usage is checked.
    #[arg(
        long,
        value_name = "DURATION",
        help = "How often the state filesystem is checked; above 90% used, unused images are removed [default: 10s]"
    )]
    disk_check_interval: Option<String>,
    /// Registry credentials, mirrors and plain-http registries (TOML).
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    /// The host address published ports bind when the manifest gives no
    /// host_ip (Docker's `dockerd --ip`).
    #[arg(
        long,
        value_name = "IP",
        help = "Host address of published ports whose manifest gives no host_ip [default: 0.0.0.0, every address]"
    )]
    publish_ip: Option<String>,
    /// Container addresses come from this IPv4 subnet.
    #[arg(
        long,
        value_name = "CIDR",
        help = "IPv4 subnet of container addresses [default: 10.89.0.0/16]"
    )]
    subnet: Option<String>,
    /// The Linux bridge containers attach to.
    #[arg(
        long,
        value_name = "NAME",
        help = "Bridge containers attach to [default: berth0]"
    )]
    bridge: Option<String>,
    /// The cgroup under which each container's cgroup is made.
    #[arg(
        long,
        value_name = "NAME",
        help = "Cgroup under which containers' cgroups are made [default: berth]"
    )]
    cgroup_parent: Option<String>,
    /// Upstream resolver of the containers' DNS server, ADDR or ADDR:PORT;
    /// repeatable. Default: the host's /etc/resolv.conf.
    #[arg(long)]
    dns_upstream: Vec<String>,
    /// Subordinate ids for the services' user namespaces, START:COUNT
    /// (65536 per service; multiples of 65536).
    #[arg(
        long,
        value_name = "START:COUNT",
        help = "Subordinate id pool of the services' user namespaces [default: 0x10000000:0x10000000]"
    )]
    userns_range: Option<String>,
    /// On a kernel without user namespaces or idmapped mounts, run
    /// `userns = "auto"` services in the host's user namespace instead of
    /// failing them.
    #[arg(long)]
    userns_fallback: bool,
    /// Join a fleet whose rollouts are coordinated on these etcd endpoints
    /// (http(s)://HOST:PORT, comma-separated): new manifests wait for a slot.
    #[arg(long, value_name = "URL[,URL...]")]
    fleet_etcd: Option<String>,
    /// The fleet's name (its keys live under /berth/fleet/NAME/ in etcd).
    #[arg(long, value_name = "NAME")]
    fleet: Option<String>,
    /// This host's rollout group.
    #[arg(
        long,
        value_name = "GROUP",
        help = "This host's rollout group [default: default]"
    )]
    fleet_group: Option<String>,
    /// This host's id in the fleet.
    #[arg(
        long,
        value_name = "ID",
        help = "This host's id in the fleet [default: the hostname]"
    )]
    fleet_host: Option<String>,
    /// etcd user (with --fleet-etcd-password-file).
    #[arg(long, value_name = "USER")]
    fleet_etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, value_name = "FILE")]
    fleet_etcd_password_file: Option<PathBuf>,
    /// PEM CA certificates that sign etcd's server certificate (https endpoints).
    #[arg(long, value_name = "FILE")]
    fleet_etcd_ca: Option<PathBuf>,
    /// PEM client certificate presented to etcd (mTLS).
    #[arg(long, value_name = "FILE")]
    fleet_etcd_cert: Option<PathBuf>,
    /// PEM private key of --fleet-etcd-cert.
    #[arg(long, value_name = "FILE")]
    fleet_etcd_key: Option<PathBuf>,
    /// Most hosts rolling out at once (a manifest's [fleet] max_parallel wins).
    #[arg(
        long,
        value_name = "N",
        help = "Most hosts rolling out at once [default: 1]"
    )]
    fleet_max_parallel: Option<u32>,
    /// Groups in rollout order, comma-separated (a manifest's [fleet] groups wins).
    #[arg(long, value_name = "G1,G2,...")]
    fleet_groups: Option<String>,
    /// How long a group stays healthy on a new manifest before the next starts.
    #[arg(
        long,
        value_name = "DURATION",
        help = "Bake time between groups [default: 0s]"
    )]
    fleet_bake: Option<String>,
    /// Roll back a completed manifest the fleet later halted.
    #[arg(long)]
    fleet_auto_revert: bool,
    /// How often the host record, slot and halts are checked.
    #[arg(
        long,
        value_name = "DURATION",
        help = "Fleet check interval [default: 2s]"
    )]
    fleet_interval: Option<String>,
    /// TTL of the agent's etcd lease (a gone host's record and slot outlive it by this).
    #[arg(long, value_name = "DURATION", help = "etcd lease TTL [default: 10s]")]
    fleet_lease_ttl: Option<String>,
}

/// Writes berthd's man page (roff, section 8) to stdout.
fn print_man_page() -> ExitCode {
    let mut buf = Vec::new();
    let page = clap_mangen::Man::new(Flags::command())
        .title("BERTHD")
        .section("8");
    if let Err(e) = page.render(&mut buf) {
        eprintln!("berthd: rendering the man page: {e}");
        return ExitCode::FAILURE;
    }
    match std::io::Write::write_all(&mut std::io::stdout(), &buf) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // Hidden: the per-container monitor (see berth_agent::runtime::monitor).
    // It must run before anything else: no logging, no async runtime.
    if args.get(1).map(String::as_str) == Some(berth_agent::runtime::MONITOR_SUBCOMMAND) {
        berth_agent::runtime::monitor_main(&args[2..]);
    }
    // Hidden: the start-up check of the state dir's filesystem for id-mapped mounts.
    if args.get(1).map(String::as_str) == Some(berth_agent::runtime::userns::PROBE_SUBCOMMAND) {
        berth_agent::runtime::userns::probe_main(&args[2..]);
    }
    // Hidden: a command run inside a running container (see berth_agent::runtime::exec).
    if args.get(1).map(String::as_str) == Some(berth_agent::runtime::EXEC_SUBCOMMAND) {
        berth_agent::runtime::exec_main(&args[2..]);
    }
    // Hidden: the man page, for the install step (scripts/install.sh).
    if args.get(1).map(String::as_str) == Some("--man-page") {
        return print_man_page();
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
    // Only the default path may be missing.
    let required = flags.config != Path::new(DEFAULT_CONFIG);
    let config_path = flags.config.clone();
    let config = ConfigLayer::from_file(&config_path, required).and_then(|file| {
        AgentConfig::from_layer(file.overlay(ConfigLayer {
            state_dir: flags.state_dir,
            run_dir: flags.run_dir,
            api: (!flags.api.is_empty()).then_some(flags.api),
            api_token_file: flags.api_token_file,
            api_tls_cert: flags.api_tls_cert,
            api_tls_key: flags.api_tls_key,
            api_tls_client_ca: flags.api_tls_client_ca,
            api_insecure: flags.api_insecure.then_some(true),
            http: flags.http,
            manifests: flags.manifests,
            manifest_url: flags.manifest_url,
            git: flags.git,
            git_ref: flags.git_ref,
            git_path: flags.git_path,
            manifest_poll_interval: flags.manifest_poll_interval,
            disk_check_interval: flags.disk_check_interval,
            registry_config: flags.registry_config,
            publish_ip: flags.publish_ip,
            subnet: flags.subnet,
            bridge: flags.bridge,
            cgroup_parent: flags.cgroup_parent,
            dns_upstream: (!flags.dns_upstream.is_empty()).then_some(flags.dns_upstream),
            userns_range: flags.userns_range,
            userns_fallback: flags.userns_fallback.then_some(true),
            fleet_etcd: flags.fleet_etcd.map(|e| vec![e]),
            fleet: flags.fleet,
            fleet_group: flags.fleet_group,
            fleet_host: flags.fleet_host,
            fleet_etcd_user: flags.fleet_etcd_user,
            fleet_etcd_password_file: flags.fleet_etcd_password_file,
            fleet_etcd_ca: flags.fleet_etcd_ca,
            fleet_etcd_cert: flags.fleet_etcd_cert,
            fleet_etcd_key: flags.fleet_etcd_key,
            fleet_max_parallel: flags.fleet_max_parallel,
            fleet_groups: flags.fleet_groups.map(|g| vec![g]),
            fleet_bake: flags.fleet_bake,
            fleet_auto_revert: flags.fleet_auto_revert.then_some(true),
            fleet_interval: flags.fleet_interval,
            fleet_lease_ttl: flags.fleet_lease_ttl,
        }))
    });
    let config = match config {
        Ok(mut c) => {
            c.docker_config = berth_agent::config::docker_config_from_env();
            c
        }
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
