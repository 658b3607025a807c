//! The `berth-dns` process: a hickory-server DNS server on the bridge gateway
//! (UDP and TCP, SO_REUSEPORT) that answers service and container names from
//! `records.json` (reloaded when it changes) and forwards every other name to
//! the upstream resolvers (hickory-resolver; the host's `/etc/resolv.conf`,
//! re-read when it changes, unless `--upstream` is given). It detaches from
//! berthd (setsid + fork) and stops on SIGTERM.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, PTR};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record};
use hickory_server::resolver::config::{NameServerConfig, ResolverOpts};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};
use hickory_server::Server;
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};

use super::records::{self, answer, rotate, Answer, Table, TTL};
use super::supervise::{self, PidFile, RECORDS_FILE};
use super::DnsError;

/// How often the records file and resolv.conf are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Upstream query timeout and attempts (the client's own resolver retries too).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const UPSTREAM_ATTEMPTS: usize = 2;

/// Flags of `berth-dns` (berthd passes them; see [`super::DnsConfig::args`]).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "berth-dns",
    version,
    about = "Berth's DNS server for containers (started by berthd)"
)]
pub struct Args {
    /// Address to serve (the bridge gateway), UDP and TCP.
    #[arg(long)]
    pub listen: SocketAddrV4,
    /// Only clients in this subnet are answered (the bridge subnet).
    #[arg(long)]
    pub subnet: ipnet::Ipv4Net,
    /// Directory of records.json and the pid file.
    #[arg(long)]
    pub dir: PathBuf,
    /// Upstream resolver ADDR:PORT (repeatable); default: the nameservers
    /// of --resolv-conf, port 53.
    #[arg(long = "upstream")]
    pub upstreams: Vec<SocketAddr>,
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Stay in the foreground (do not detach).
    #[arg(long)]
    pub foreground: bool,
}

/// Entry point of the `berth-dns` binary.
pub fn main(args: Args) -> ExitCode {
    if !args.foreground {
        if let Err(e) = detach() {
            eprintln!("berth-dns: detaching: {e}");
            return ExitCode::FAILURE;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| {
                "info,hickory_server=warn,hickory_resolver=warn,hickory_proto=warn,hickory_net=warn"
                    .into()
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "berth-dns failed");
            ExitCode::FAILURE
        }
    }
}

/// Leaves berthd's session and process group and lets the first process
/// exit, so the server is reparented away from berthd and outlives it.
fn detach() -> std::io::Result<()> {
    use crate::sys::process::{exit_now, fork_single_threaded, ignore_signals, Forked};
    use nix::sys::signal::Signal;
    ignore_signals(&[Signal::SIGHUP, Signal::SIGPIPE])?;
    nix::unistd::setsid().map_err(std::io::Error::from)?;
    nix::unistd::chdir("/").map_err(std::io::Error::from)?;
    match fork_single_threaded()? {
        Forked::Parent(_) => exit_now(0),
        Forked::Child => Ok(()),
    }
}

/// Binds, reports `ready PID` on stdout, serves until SIGTERM/SIGINT.
pub async fn serve(args: Args) -> Result<(), DnsError> {
    let udp = bind(args.listen, SockType::Datagram)?;
    let tcp = bind(args.listen, SockType::Stream)?;
    let udp =
        tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(udp)).map_err(|source| {
            DnsError::Bind {
                addr: args.listen,
                source,
            }
        })?;
    let tcp =
        tokio::net::TcpListener::from_std(std::net::TcpListener::from(tcp)).map_err(|source| {
            DnsError::Bind {
                addr: args.listen,
                source,
            }
        })?;
    let shared = Arc::new(Shared::new(&args));
    let mut server = Server::with_access(
        Handler {
            shared: shared.clone(),
        },
        [],
        [ipnet::IpNet::V4(args.subnet)],
    );
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 64);

    let me = std::process::id() as i32;
    let pid = PidFile {
        pid: me,
        start_time: crate::runtime::proc_start(me).unwrap_or_default(),
        args: std::env::args().skip(1).collect(),
    };
    supervise::write_pid_file(&args.dir, &pid)?;
    announce_ready(me);
    tracing::info!(listen = %args.listen, pid = me, version = env!("CARGO_PKG_VERSION"), "berth-dns serving");

    let reloader = tokio::spawn(reload_loop(shared, args.clone()));
    crate::shutdown::wait_for_signal().await;
    tracing::info!("stopping");
    reloader.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), server.shutdown_gracefully()).await;
    supervise::remove_pid_file(&args.dir, me);
    Ok(())
}

/// A socket on `addr` with SO_REUSEADDR and SO_REUSEPORT (a replacement
/// binds while the old server still serves), non-blocking, close-on-exec.
fn bind(addr: SocketAddrV4, ty: SockType) -> Result<OwnedFd, DnsError> {
    let err = |e: nix::Error| DnsError::Bind {
        addr,
        source: e.into(),
    };
    let fd = socket::socket(
        AddressFamily::Inet,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(err)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true).map_err(err)?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).map_err(err)?;
    if ty == SockType::Stream {
        socket::listen(&fd, Backlog::new(128).map_err(err)?).map_err(err)?;
    }
    Ok(fd)
}

/// `ready PID` on stdout for berthd, then stdin/stdout on /dev/null (berthd
/// reads to EOF).
fn announce_ready(pid: i32) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready {pid}");
    let _ = out.flush();
    drop(out);
    if let Ok(null) = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        let _ = nix::unistd::dup2_stdin(null.as_fd());
        let _ = nix::unistd::dup2_stdout(null.as_fd());
    }
}

/// What the handler reads; swapped whole on reload.
struct Shared {
    table: RwLock<Arc<Table>>,
    upstream: RwLock<Arc<Catalog>>,
    /// Per service: queries answered so far (round-robin rotation).
    turns: Mutex<HashMap<String, usize>>,
}

impl Shared {
    fn new(args: &Args) -> Shared {
        let path = args.dir.join(RECORDS_FILE);
        let table = match records::read(&path) {
            Ok(r) => Table::new(&r, Some(args.subnet)),
            Err(e) => {
                if path.exists() {
                    tracing::warn!(error = %e, "no records yet");
                }
                Table::new(&Default::default(), Some(args.subnet))
            }
        };
        let upstream = upstream_catalog(args).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "names other than services are not resolved");
            Catalog::new()
        });
        Shared {
            table: RwLock::new(Arc::new(table)),
            upstream: RwLock::new(Arc::new(upstream)),
            turns: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn upstream(&self) -> Arc<Catalog> {
        self.upstream
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The rotation for this query of `service` (0 for container names).
    fn turn(&self, service: Option<&str>) -> usize {
        let Some(s) = service else { return 0 };
        let mut t = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(s.to_string()).or_default();
        let turn = *n;
        *n = n.wrapping_add(1);
        turn
    }
}

/// The upstream resolvers: `--upstream`, else the nameservers of
/// resolv.conf (loopback ones work: this process runs on the host), never
/// this server itself.
fn upstream_catalog(args: &Args) -> Result<Catalog, DnsError> {
    let servers: Vec<SocketAddr> = if args.upstreams.is_empty() {
        let bytes = std::fs::read(&args.resolv_conf)
            .map_err(|e| DnsError::Upstream(format!("{}: {e}", args.resolv_conf.display())))?;
        let (conf, _) = hickory_server::resolver::system_conf::parse_resolv_conf(bytes)
            .map_err(|e| DnsError::Upstream(format!("{}: {e}", args.resolv_conf.display())))?;
        conf.name_servers
            .iter()
            .map(|ns| SocketAddr::new(ns.ip, 53))
            .collect()
    } else {
        args.upstreams.clone()
    };
    let servers: Vec<SocketAddr> = servers
        .into_iter()
        .filter(|s| *s != SocketAddr::V4(args.listen))
        .collect();
    if servers.is_empty() {
        return Err(DnsError::Upstream("no upstream nameserver".into()));
    }
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut udp = hickory_server::resolver::config::ConnectionConfig::udp();
            udp.port = s.port();
            let mut tcp = hickory_server::resolver::config::ConnectionConfig::tcp();
            tcp.port = s.port();
            NameServerConfig::new(s.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut options = ResolverOpts::default();
    options.timeout = UPSTREAM_TIMEOUT;
    options.attempts = UPSTREAM_ATTEMPTS;
    options.ndots = 0;
    let forwarder = ForwardZoneHandler::builder_tokio(ForwardConfig {
        name_servers,
        options: Some(options),
    })
    .build()
    .map_err(DnsError::Upstream)?;
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(forwarder)]);
    tracing::info!(upstreams = ?servers, "forwarding other names");
    Ok(catalog)
}

/// Identity of a file's current content: a rename (how berthd writes)
/// always changes the inode.
fn signature(path: &Path) -> Option<(u64, u64, Option<SystemTime>, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.modified().ok(), m.len()))
}

/// Reloads the records (and resolv.conf, when it is the upstream source)
/// when they change. A missing or unreadable records file keeps what was
/// last known.
async fn reload_loop(shared: Arc<Shared>, args: Args) {
    let records_path = args.dir.join(RECORDS_FILE);
    let mut records_sig = signature(&records_path);
    let mut resolv_sig = signature(&args.resolv_conf);
    loop {
        tokio::time::sleep(RELOAD_INTERVAL).await;
        let sig = signature(&records_path);
        if sig != records_sig {
            records_sig = sig;
            if sig.is_some() {
                match records::read(&records_path) {
                    Ok(r) => {
                        tracing::debug!(services = r.services.len(), "records reloaded");
                        *shared.table.write().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(Table::new(&r, Some(args.subnet)));
                    }
                    Err(e) => tracing::warn!(error = %e, "keeping the last records"),
                }
            }
        }
        if args.upstreams.is_empty() {
            let sig = signature(&args.resolv_conf);
            if sig != resolv_sig {
                resolv_sig = sig;
                match upstream_catalog(&args) {
                    Ok(c) => {
                        *shared.upstream.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c)
                    }
                    Err(e) => tracing::warn!(error = %e, "keeping the last upstream resolvers"),
                }
            }
        }
    }
}

/// Answers from the records, forwards the rest.
struct Handler {
    shared: Arc<Shared>,
}

impl Handler {
    /// The local answer to `request`, or Forward for anything not a plain
    /// IN-class query with one question.
    fn local_answer(&self, request: &Request) -> Answer {
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return Answer::Forward;
        }
        let Ok(info) = request.request_info() else {
            return Answer::Forward;
        };
        if info.query.query_class() != DNSClass::IN {
            return Answer::Forward;
        }
        answer(
            &self.shared.table(),
            &info.query.name().to_string(),
            info.query.query_type(),
        )
    }

    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        local: Answer,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;
        // The client's spelling of the name (0x20 case randomization).
        let qname = request
            .request_info()
            .map(|i| i.query.original().name().clone())
            .unwrap_or_default();
        let records: Vec<Record> = match local {
            Answer::Addresses { service, addrs } => {
                let turn = self.shared.turn(service.as_deref());
                rotate(addrs, turn)
                    .into_iter()
                    .map(|ip| Record::from_rdata(qname.clone(), TTL, RData::A(A(ip))))
                    .collect()
            }
            Answer::Ptr(target) => match Name::from_ascii(&target) {
                Ok(t) => vec![Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(t)))],
                Err(_) => Vec::new(),
            },
            Answer::NxDomain => {
                metadata.response_code = ResponseCode::NXDomain;
                Vec::new()
            }
            Answer::NoData | Answer::Forward => Vec::new(),
        };
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let response = builder.build(
            metadata,
            records.iter(),
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a response failed");
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        match self.local_answer(request) {
            Answer::Forward => {
                let upstream = self.shared.upstream();
                upstream
                    .handle_request::<R, T>(request, response_handle)
                    .await
            }
            local => self.respond(request, local, response_handle).await,
        }
    }
}
