//! The kernel fast path for published ports: nftables DNAT sends each new TCP
//! connection to a service's host port (on any local address, 127.0.0.1
//! included) straight to one of its Ready replicas, round-robin, with no copy
//! through the agent. Conntrack keeps an established connection on the replica
//! it started on while the set changes, and is read back to count a draining
//! replica's connections. The proxy keeps the port bound for the rest.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Mutex;

/// Why the fast path could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum DnatError {
    #[error("bridge {bridge}: nft: {message}")]
    Nft { bridge: String, message: String },
    #[error("setting {}: {source}", path.display())]
    Sysctl {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {}: {source}", path.display())]
    Conntrack {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The conntrack table as procfs shows it (the agent's network namespace).
const CONNTRACK: &str = "/proc/net/nf_conntrack";

/// Published-port DNAT rules of one bridge, kept in the bridge's nftables
/// table (`berth_<bridge>`) in chains of their own.
#[derive(Debug)]
pub struct Dnat {
    bridge: String,
    /// service → (host port, Ready replicas in order); what is installed.
    services: Mutex<BTreeMap<String, (u16, Vec<SocketAddrV4>)>>,
}

impl Dnat {
    /// Sets `route_localnet` on the bridge (so a connection to 127.0.0.1 can
    /// be sent on to a container, then masqueraded), installs the empty
    /// chains, and checks that conntrack can be read back. The bridge's table
    /// must exist (`Network` with `masquerade`).
    pub fn enable(bridge: &str) -> Result<Dnat, DnatError> {
        let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"));
        std::fs::write(&path, "1").map_err(|source| DnatError::Sysctl { path, source })?;
        let dnat = Dnat {
            bridge: bridge.into(),
            services: Mutex::new(BTreeMap::new()),
        };
        // Every expression a service rule uses (fib, numgen, a concatenated
        // dnat map) must load here, not at the first publish: a rule for
        // port 0, which no connection has, then the empty set.
        let mut probe = BTreeMap::new();
        probe.insert(
            "probe".to_string(),
            (0, vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9)]),
        );
        dnat.apply(&probe)?;
        dnat.apply(&BTreeMap::new())?;
        std::fs::File::open(CONNTRACK).map_err(conntrack_err)?;
        Ok(dnat)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (u16, Vec<SocketAddrV4>)>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends new connections to `service`'s `port` to `ready` (none: the
    /// rules go and the proxy's listener gets them). A no-op when nothing
    /// changed; otherwise one atomic nft transaction, done when this returns.
    pub fn set(&self, service: &str, port: u16, ready: Vec<SocketAddrV4>) -> Result<(), DnatError> {
        let mut services = self.lock();
        // Every reconcile pass calls this for every service: the no-op is cheap.
        let unchanged = match services.get(service) {
            None => ready.is_empty(),
            Some((p, r)) => *p == port && *r == ready,
        };
        if unchanged {
            return Ok(());
        }
        let mut next = services.clone();
        if ready.is_empty() {
            next.remove(service);
        } else {
            next.insert(service.into(), (port, ready));
        }
        self.apply(&next)?;
        *services = next;
        Ok(())
    }

    /// Removes `service`'s rules.
    pub fn remove(&self, service: &str) -> Result<(), DnatError> {
        self.set(service, 0, Vec::new())
    }

    fn apply(
        &self,
        services: &BTreeMap<String, (u16, Vec<SocketAddrV4>)>,
    ) -> Result<(), DnatError> {
        super::nat::run_nft(&ruleset(&self.bridge, services)).map_err(|message| DnatError::Nft {
            bridge: self.bridge.clone(),
            message,
        })
    }

    /// Open connections that DNAT sent from host port `port` to `endpoint`
    /// (every conntrack state but TIME_WAIT and CLOSE).
    pub fn active(&self, port: u16, endpoint: SocketAddrV4) -> Result<usize, DnatError> {
        let table = std::fs::read_to_string(CONNTRACK).map_err(conntrack_err)?;
        Ok(count_active(&table, port, endpoint))
    }
}

fn conntrack_err(source: std::io::Error) -> DnatError {
    DnatError::Conntrack {
        path: CONNTRACK.into(),
        source,
    }
}

/// The published-port chains of `bridge`'s table, replaced in one
/// transaction: the chains are declared (a no-op when they exist), flushed and
/// filled again, so the table's other chains are untouched.
pub fn ruleset(bridge: &str, services: &BTreeMap<String, (u16, Vec<SocketAddrV4>)>) -> String {
    let t = super::nat::table(bridge);
    let mut s = format!(
        "table ip {t} {{\n\
         \tchain published_prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         \tchain published_output {{ type nat hook output priority -100; policy accept; }}\n\
         \tchain published_postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         \tchain published_guard {{ type filter hook prerouting priority raw; policy accept; }}\n\
         }}\n\
         flush chain ip {t} published_prerouting\n\
         flush chain ip {t} published_output\n\
         flush chain ip {t} published_postrouting\n\
         flush chain ip {t} published_guard\n"
    );
    // route_localnet lets packets from 127.0.0.0/8 leave on the bridge: they
    // are masqueraded to the gateway address, and nothing on the bridge may
    // send to the host's loopback addresses in return.
    let _ = writeln!(
        s,
        "add rule ip {t} published_postrouting ip saddr 127.0.0.0/8 oifname \"{bridge}\" masquerade"
    );
    let _ = writeln!(
        s,
        "add rule ip {t} published_guard iifname \"{bridge}\" ip daddr 127.0.0.0/8 drop"
    );
    for (service, (port, ready)) in services {
        if ready.is_empty() {
            continue;
        }
        let map: Vec<String> = ready
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{i} : {} . {}", a.ip(), a.port()))
            .collect();
        let target = format!(
            "dnat ip to numgen inc mod {} map {{ {} }} comment \"{}\"",
            ready.len(),
            map.join(", "),
            comment(service)
        );
        // From other hosts (containers of this bridge reach the port through
        // the proxy: their replies would not pass back through this host).
        let _ = writeln!(
            s,
            "add rule ip {t} published_prerouting iifname != \"{bridge}\" fib daddr type local tcp dport {port} {target}"
        );
        // From this host, 127.0.0.1 included.
        let _ = writeln!(
            s,
            "add rule ip {t} published_output fib daddr type local tcp dport {port} {target}"
        );
    }
    s
}

/// A service name as an nft comment (names are validated; this only guards quoting).
fn comment(service: &str) -> String {
    service
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect()
}

/// Counts the conntrack entries (procfs format) of TCP connections whose
/// original destination port is `port` on a local address and whose reply
/// comes from `endpoint`: connections DNAT sent there. Direct connections to
/// the container (health checks, the proxy) have the container as original
/// destination and are not counted.
pub fn count_active(table: &str, port: u16, endpoint: SocketAddrV4) -> usize {
    table
        .lines()
        .filter(|line| {
            let mut fields = line.split_whitespace();
            // ipv4 2 tcp 6 <timeout> <state> key=value...
            if fields.nth(2) != Some("tcp") {
                return false;
            }
            let Some(state) = fields.nth(2) else {
                return false;
            };
            if matches!(state, "TIME_WAIT" | "CLOSE") {
                return false;
            }
            let mut orig_dst: Option<Ipv4Addr> = None;
            let mut orig_dport: Option<u16> = None;
            let mut reply_src: Option<Ipv4Addr> = None;
            let mut reply_sport: Option<u16> = None;
            let mut srcs = 0;
            let mut sports = 0;
            for f in fields {
                let Some((k, v)) = f.split_once('=') else {
                    continue;
                };
                match k {
                    "src" => {
                        srcs += 1;
                        if srcs == 2 {
                            reply_src = v.parse().ok();
                        }
                    }
                    "dst" if srcs == 1 => orig_dst = v.parse().ok(),
                    "sport" => {
                        sports += 1;
                        if sports == 2 {
                            reply_sport = v.parse().ok();
                        }
                    }
                    "dport" if sports == 1 => orig_dport = v.parse().ok(),
                    _ => {}
                }
            }
            orig_dport == Some(port)
                && reply_src == Some(*endpoint.ip())
                && reply_sport == Some(endpoint.port())
                && orig_dst != Some(*endpoint.ip())
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn ruleset_balances_over_ready_replicas_from_host_and_other_hosts() {
        let mut services = BTreeMap::new();
        services.insert(
            "web".to_string(),
            (8080, vec![ep("10.89.0.2:80"), ep("10.89.0.3:80")]),
        );
        let r = ruleset("berth0", &services);
        assert!(r.contains("flush chain ip berth_berth0 published_output"));
        assert!(r.contains(
            "add rule ip berth_berth0 published_output fib daddr type local tcp dport 8080 \
             dnat ip to numgen inc mod 2 map { 0 : 10.89.0.2 . 80, 1 : 10.89.0.3 . 80 } comment \"web\""
        ));
        assert!(r.contains(
            "published_prerouting iifname != \"berth0\" fib daddr type local tcp dport 8080 dnat"
        ));
        assert!(r.contains("ip saddr 127.0.0.0/8 oifname \"berth0\" masquerade"));
        assert!(r.contains("iifname \"berth0\" ip daddr 127.0.0.0/8 drop"));
    }

    #[test]
    fn ruleset_without_services_only_guards() {
        let r = ruleset("b1", &BTreeMap::new());
        assert!(!r.contains("dnat"));
        assert!(r.contains("published_guard iifname \"b1\" ip daddr 127.0.0.0/8 drop"));
    }

    #[test]
    fn conntrack_counts_only_open_dnat_connections_to_the_endpoint() {
        let table = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=40000 dport=8080 src=10.89.0.2 dst=10.89.0.1 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 119 SYN_SENT src=192.168.1.5 dst=192.168.1.1 sport=40001 dport=8080 [UNREPLIED] src=10.89.0.2 dst=192.168.1.5 sport=80 dport=40001 mark=0 zone=0 use=2
ipv4     2 tcp      6 60 FIN_WAIT src=127.0.0.1 dst=127.0.0.1 sport=40002 dport=8080 src=10.89.0.2 dst=10.89.0.1 sport=80 dport=40002 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 100 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=40003 dport=8080 src=10.89.0.2 dst=10.89.0.1 sport=80 dport=40003 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=40004 dport=8080 src=10.89.0.3 dst=10.89.0.1 sport=80 dport=40004 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=10.89.0.1 dst=10.89.0.2 sport=40005 dport=8080 src=10.89.0.2 dst=10.89.0.1 sport=8080 dport=40005 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 20 src=127.0.0.1 dst=127.0.0.1 sport=40006 dport=8080 src=10.89.0.2 dst=10.89.0.1 sport=80 dport=40006 mark=0 zone=0 use=2
";
        // Established + SYN_SENT + FIN_WAIT to .2:80 from port 8080; not the
        // TIME_WAIT one, not .3's, not udp.
        assert_eq!(count_active(table, 8080, ep("10.89.0.2:80")), 3);
        assert_eq!(count_active(table, 8080, ep("10.89.0.3:80")), 1);
        assert_eq!(count_active(table, 9090, ep("10.89.0.2:80")), 0);
        // A direct connection to the container (original destination = the
        // container) is not a DNAT connection.
        assert_eq!(count_active(table, 8080, ep("10.89.0.2:8080")), 0);
    }
}
