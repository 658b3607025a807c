//! Networking benchmark (run as root through bench/net.sh): a busybox httpd
//! container on its own bridge; wrk (`-d 5s -c 32 -t 2`) straight to the
//! container IP vs through the published-port proxy on 127.0.0.1; then the
//! container start p50 (30 runs each) with networking (attach + start) vs
//! without. Prints a table with the ratios. Everything it creates is removed.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_agent::network::dnat::Dnat;
use berth_agent::network::{Endpoint, EndpointState, Ipv4Net, NetConfig, Network, PortProxy};
use berth_agent::runtime::{ContainerConfig, Runtime, RuntimePaths};

const RUNS: usize = 30;

fn main() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let monitor = std::env::var_os("BERTH_MONITOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            exe.parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."))
                .join("berthd")
        });
    anyhow::ensure!(
        monitor.exists(),
        "monitor binary {} missing (set BERTH_MONITOR)",
        monitor.display()
    );

    let tmp = tempfile::Builder::new()
        .prefix("berth-netbench-")
        .tempdir()?;
    let layer = busybox_layer(&tmp.path().join("layer"))?;
    let db = sled::open(tmp.path().join("db"))?;
    let bridge = format!("bb{:04x}", fastrand::u16(..));
    let subnet: Ipv4Net = format!("10.201.{}.0/24", fastrand::u8(..)).parse()?;
    let net = Network::open(NetConfig {
        bridge,
        subnet,
        run_dir: tmp.path().join("run"),
        ipam_tree: db.open_tree("net")?,
        // As berthd: the bridge's nftables table, which the DNAT path lives in.
        masquerade: true,
    })?;
    let rt = Runtime::new(RuntimePaths::new(
        tmp.path().join("state"),
        tmp.path().join("run"),
        "berth-bench",
        &monitor,
    ));
    let result = run(&net, &rt, &layer);
    for c in rt.list().unwrap_or_default() {
        let _ = rt.remove(&c.id);
    }
    net.destroy()?;
    result
}

fn run(net: &Network, rt: &Runtime, layer: &Path) -> anyhow::Result<()> {
    // --- throughput: direct vs published port ---------------------------------
    // Each measurement gets a fresh container (fresh namespace): every request is
    // a new connection that the server closes first, and a server-side TIME_WAIT
    // table full from the previous run would turn reused client ports into 1 s
    // SYN retransmits for whichever run comes second.
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let direct = wrk_httpd(net, rt, layer, None, "bench-direct")?;

    // What berthd runs: the DNAT fast path with the proxy behind it.
    let dnat = Dnat::enable(net.bridge(), net.subnet())?;
    let with_dnat = PortProxy::with_dnat(tokio_rt.handle().clone(), dnat);
    let published = wrk_httpd(net, rt, layer, Some(&with_dnat), "bench-dnat")?;
    // The fallback on hosts without nftables: the proxy alone.
    let proxy_only = PortProxy::with_handle(tokio_rt.handle().clone());
    let proxied = wrk_httpd(net, rt, layer, Some(&proxy_only), "bench-proxied")?;

    // --- start latency: with vs without networking ----------------------------
    let mut plain = Vec::new();
    let mut networked = Vec::new();
    let mut attach_only = Vec::new();
    for i in 0..RUNS {
        let id = format!("bench-start-{i}");
        let c = ContainerConfig::new(
            id.clone(),
            vec![layer.to_path_buf()],
            vec!["/bin/sleep".into(), "100".into()],
        );
        let t0 = Instant::now();
        rt.create_and_start(&c)?;
        plain.push(t0.elapsed());
        rt.remove(&id)?;

        let id = format!("bench-net-{i}");
        let mut c = ContainerConfig::new(
            id.clone(),
            vec![layer.to_path_buf()],
            vec!["/bin/sleep".into(), "100".into()],
        );
        let t0 = Instant::now();
        let a = net.attach(&id)?;
        attach_only.push(t0.elapsed());
        c.netns = Some(a.netns_path);
        rt.create_and_start(&c)?;
        networked.push(t0.elapsed());
        rt.remove(&id)?;
        net.detach(&id)?; // the slow part runs in the background, off the start path
    }
    net.settle();
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    let (plain50, net50, attach50) = (p50(&mut plain), p50(&mut networked), p50(&mut attach_only));

    println!();
    println!("| measurement | direct / without | published port / with | ratio / delta |");
    println!("|---|---:|---:|---:|");
    for (what, w) in [
        ("DNAT + proxy (berthd)", &published),
        ("proxy only (no nftables)", &proxied),
    ] {
        println!(
            "| wrk -c32 -t2 -d5s requests/s, {what} | {:.0} | {:.0} | {:.2}x |",
            direct.rps,
            w.rps,
            w.rps / direct.rps
        );
        println!(
            "| wrk p99 latency (ms), {what} | {:.2} | {:.2} | {:+.2} ms |",
            direct.p99_ms,
            w.p99_ms,
            w.p99_ms - direct.p99_ms
        );
    }
    println!(
        "| container start p50 (ms, {RUNS} runs) | {plain50:.2} | {net50:.2} | {:+.2} ms |",
        net50 - plain50
    );
    println!("| attach alone p50 (ms) | | {attach50:.2} | |");
    println!();
    println!(
        "goals: published-port throughput >= 0.8x direct: {}; networking adds <= 10 ms p50: {}",
        if published.rps >= 0.8 * direct.rps {
            "met"
        } else {
            "NOT met"
        },
        if net50 - plain50 <= 10.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

fn start_httpd(
    net: &Network,
    rt: &Runtime,
    layer: &Path,
    id: &str,
) -> anyhow::Result<berth_agent::network::Attachment> {
    let att = net.attach(id)?;
    let mut cfg = ContainerConfig::new(
        att.id.clone(),
        vec![layer.to_path_buf()],
        ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
            .map(String::from)
            .to_vec(),
    );
    cfg.netns = Some(att.netns_path.clone());
    rt.create_and_start(&cfg)?;
    wait_http(SocketAddrV4::new(att.ip, 8080))?;
    Ok(att)
}

fn stop_httpd(net: &Network, rt: &Runtime, id: &str) -> anyhow::Result<()> {
    rt.remove(id)?;
    net.detach(id)?;
    net.settle();
    Ok(())
}

struct Wrk {
    rps: f64,
    p99_ms: f64,
}

/// wrk against a fresh httpd container: straight to its IP, or through a
/// published port on 127.0.0.1 served by `proxy`.
fn wrk_httpd(
    net: &Network,
    rt: &Runtime,
    layer: &Path,
    proxy: Option<&PortProxy>,
    name: &str,
) -> anyhow::Result<Wrk> {
    let att = start_httpd(net, rt, layer, name)?;
    let url = match proxy {
        None => format!("http://{}:8080/", att.ip),
        Some(proxy) => {
            let port = std::net::TcpListener::bind("0.0.0.0:0")?
                .local_addr()?
                .port();
            proxy.set_port(
                "bench",
                port,
                vec![Endpoint {
                    id: att.id.clone(),
                    addr: SocketAddrV4::new(att.ip, 8080),
                    state: EndpointState::Ready,
                }],
            )?;
            wait_http(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))?;
            format!("http://127.0.0.1:{port}/")
        }
    };
    let _warm = wrk(&url, "1s")?;
    let result = wrk(&url, "5s");
    eprintln!(
        "server netns counters ({name}): {}",
        tcp_counters(&att.netns_path)
    );
    if let Some(proxy) = proxy {
        proxy.remove_service("bench");
    }
    stop_httpd(net, rt, &att.id)?;
    result
}

/// Accept-queue overflows, SYN retransmits and TIME_WAIT reuse as counted in
/// the server's namespace (diagnostic; empty when nstat is missing).
fn tcp_counters(netns: &Path) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "nstat",
            "-asz",
            "TcpExtListenOverflows",
            "TcpExtListenDrops",
            "TcpExtTWRecycled",
            "TcpExtPAWSEstab",
            "TcpRetransSegs",
            "TcpExtTCPSynRetrans",
            "TcpPassiveOpens",
        ])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("="))
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("(nstat: {e})"),
    }
}

fn wrk(url: &str, duration: &str) -> anyhow::Result<Wrk> {
    let out = Command::new("wrk")
        .args(["-d", duration, "-c", "32", "-t", "2", "--latency", url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(out.status.success(), "wrk failed: {text}");
    eprintln!("wrk {url}:\n{text}");
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .ok_or_else(|| anyhow::anyhow!("no 99% line in {text}"))?;
    anyhow::ensure!(
        !text.contains("Non-2xx"),
        "HTTP errors during the run: {text}"
    );
    Ok(Wrk { rps, p99_ms: p99 })
}

/// `1.23ms`, `850.00us`, `1.01s` → milliseconds.
fn parse_latency(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * scale
}

fn wait_http(addr: SocketAddrV4) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("{addr} never answered")
}

fn busybox_layer(root: &Path) -> anyhow::Result<PathBuf> {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "www"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    for applet in ["sh", "httpd", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("www/index.html"), "hello from berth\n")?;
    Ok(root.to_path_buf())
}
