//! The kernel fast path for published ports: nftables DNAT sends each new TCP
//! connection or UDP flow to a published host port (on its host address, or on
//! any local address for `0.0.0.0`) straight to one of the service's Ready
//! replicas, round-robin, with no copy through the agent — from other hosts,
//! from this host (127.0.0.1 included) and from containers of the bridge
//! (hairpin, masqueraded). The rules live in the kernel, so they keep serving
//! while the agent is stopped or restarting; each service's rules are a group
//! of [`super::nft`], rewritten only when its Ready set changes. Conntrack is
//! read back to count a draining replica's connections.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Mutex;

use berth_core::manifest::Protocol;

use super::addr::Ipv4Net;
use super::nft::{self, NftError, Rule, Shape};
use super::proxy::HostPort;
use crate::sys::netlink::ConntrackTuple;

/// Why the fast path could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum DnatError {
    #[error("bridge {bridge}: {source}")]
    Nft { bridge: String, source: NftError },
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

/// The group of the rules every published port needs (loopback and hairpin
/// masquerade, the loopback guard), and the chains it owns.
const STATIC_GROUP: &str = "published";
const STATIC_CHAINS: &[&str] = &["published_postrouting", "published_guard"];
/// The chains of the per-service groups.
const SERVICE_CHAINS: &[&str] = &["published_prerouting", "published_output"];

/// The nft group of `service`'s rules.
fn group(service: &str) -> String {
    format!("svc:{service}")
}

/// Ready endpoints of each published host port of one service.
pub type PortMap = BTreeMap<HostPort, Vec<SocketAddrV4>>;

#[derive(Debug, Default)]
struct State {
    /// Service → the shape of its installed rules.
    applied: BTreeMap<String, Shape>,
    /// Service → its UDP host ports as last set (whose flows to replicas
    /// that left must be forgotten).
    udp: BTreeMap<String, Vec<HostPort>>,
    /// Rules without the agent's comment in the service chains (an older
    /// agent's), removed by the first [`Dnat::prune`].
    strays: bool,
}

/// Published-port DNAT rules of one bridge, in the bridge's nftables table
/// (`berth_<bridge>`).
#[derive(Debug)]
pub struct Dnat {
    bridge: String,
    table: String,
    state: Mutex<State>,
    /// Endpoints the rules sent to when the agent started.
    adopted: BTreeSet<Ipv4Addr>,
}

impl Dnat {
    /// Sets `route_localnet` on the bridge (so a connection to 127.0.0.1 can
    /// be sent on to a container, then masqueraded), checks that every nft
    /// expression a rule needs loads (in a scratch table), installs the
    /// static rules where they differ, adopts the service rules already
    /// installed (an agent restart changes none), and checks that conntrack
    /// can be read. The bridge's table must exist (`Network` with `masquerade`).
    pub fn enable(bridge: &str, subnet: Ipv4Net) -> Result<Dnat, DnatError> {
        let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"));
        std::fs::write(&path, "1").map_err(|source| DnatError::Sysctl { path, source })?;
        let table = nft::table(bridge);
        let err = |source| DnatError::Nft {
            bridge: bridge.into(),
            source,
        };
        nft::apply(&probe(&table, bridge)).map_err(err)?;
        let statics = static_rules(bridge, subnet);
        nft::sync_group(&table, STATIC_GROUP, &statics, STATIC_CHAINS).map_err(err)?;
        let installed = nft::read(&table).map_err(err)?;
        // Changing rules by difference needs nft to list their comments.
        if installed.shape(STATIC_GROUP) != nft::shape(&statics) {
            return Err(err(NftError::Failed(
                "the rules just installed are not listed with their comments (nftables too old?)"
                    .into(),
            )));
        }
        let mut state = State::default();
        let mut adopted = BTreeSet::new();
        for (g, shape) in installed.groups() {
            if let Some(service) = g.strip_prefix("svc:") {
                state.applied.insert(service.to_string(), shape);
            }
        }
        for r in &installed.rules {
            if !SERVICE_CHAINS.contains(&r.chain.as_str()) {
                continue;
            }
            // An older agent's rules too: they serve until the first prune.
            adopted.extend(r.endpoints.iter().map(|e| *e.ip()));
            if r.group.is_none() {
                state.strays = true;
            }
        }
        std::fs::File::open(CONNTRACK).map_err(conntrack_err)?;
        Ok(Dnat {
            bridge: bridge.into(),
            table,
            state: Mutex::new(state),
            adopted,
        })
    }

    /// Container addresses the installed rules sent new connections to when
    /// the agent started: the replicas that were Ready before a restart.
    pub fn adopted(&self) -> &BTreeSet<Ipv4Addr> {
        &self.adopted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: NftError) -> DnatError {
        DnatError::Nft {
            bridge: self.bridge.clone(),
            source,
        }
    }

    /// Sends new connections to each of `service`'s host ports to its Ready
    /// endpoints (a port without any gets no rule: the agent's socket on it
    /// answers). A no-op when nothing changed; otherwise one atomic nft
    /// transaction replacing only this service's rules, done when this returns.
    pub fn set(&self, service: &str, ports: &PortMap) -> Result<(), DnatError> {
        let rules = service_rules(ports);
        let shape = nft::shape(&rules);
        let mut state = self.lock();
        // Every reconcile pass calls this for every service: the no-op is cheap.
        if state.applied.get(service).cloned().unwrap_or_default() == shape {
            return Ok(());
        }
        let installed = nft::read(&self.table).map_err(|e| self.err(e))?;
        if let Some(script) = nft::plan_group(&self.table, &installed, &group(service), &rules, &[])
        {
            nft::apply(&script).map_err(|e| self.err(e))?;
        }
        if shape.is_empty() {
            state.applied.remove(service);
        } else {
            state.applied.insert(service.into(), shape);
        }
        let udp: Vec<HostPort> = ports
            .keys()
            .filter(|hp| hp.protocol == Protocol::Udp)
            .copied()
            .collect();
        let before = match udp.is_empty() {
            true => state.udp.remove(service),
            false => state.udp.insert(service.into(), udp.clone()),
        };
        drop(state);
        // A UDP flow stays on the replica its first datagram was sent to for
        // as long as the client keeps sending; one whose replica left would
        // never reach another (kube-proxy does the same).
        let mut gone: Vec<HostPort> = before.unwrap_or_default();
        gone.extend(udp);
        gone.sort();
        gone.dedup();
        if !gone.is_empty() {
            forget_udp_flows(&gone, ports);
        }
        Ok(())
    }

    /// Removes `service`'s rules.
    pub fn remove(&self, service: &str) -> Result<(), DnatError> {
        self.set(service, &PortMap::new())
    }

    /// Removes the rules of services not in `keep` and an older agent's
    /// rules. Call it after a full reconcile pass (so a restart never removes
    /// rules before their replacement exists); runs nft only when there is
    /// something to remove.
    pub fn prune(&self, keep: &BTreeSet<&str>) -> Result<(), DnatError> {
        let mut state = self.lock();
        let stale = state.applied.keys().any(|s| !keep.contains(s.as_str()));
        if !stale && !state.strays {
            return Ok(());
        }
        let installed = nft::read(&self.table).map_err(|e| self.err(e))?;
        let kept = |g: &str| g.strip_prefix("svc:").is_some_and(|s| keep.contains(s));
        if let Some(script) = nft::plan_prune(&self.table, &installed, SERVICE_CHAINS, kept) {
            nft::apply(&script).map_err(|e| self.err(e))?;
        }
        state.applied.retain(|s, _| keep.contains(s.as_str()));
        state.strays = false;
        Ok(())
    }

    /// Open connections that DNAT sent from host port `port` to `endpoint`,
    /// summed over `pairs` (every conntrack state but TIME_WAIT and CLOSE).
    pub fn active(&self, pairs: &[(u16, SocketAddrV4)]) -> Result<usize, DnatError> {
        if pairs.is_empty() {
            return Ok(0);
        }
        let table = std::fs::read_to_string(CONNTRACK).map_err(conntrack_err)?;
        Ok(pairs
            .iter()
            .map(|(port, ep)| count_active(&table, *port, *ep))
            .sum())
    }
}

/// Deletes the conntrack entries of UDP flows DNAT sent from one of
/// `host_ports` to an endpoint no longer Ready there (see [`stale_udp_flows`]).
/// Best effort: failures are logged.
fn forget_udp_flows(host_ports: &[HostPort], ports: &PortMap) {
    let table = match std::fs::read_to_string(CONNTRACK) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read conntrack to forget UDP flows");
            return;
        }
    };
    let stale: Vec<ConntrackTuple> = host_ports
        .iter()
        .flat_map(|hp| {
            let ready = ports.get(hp).map(Vec::as_slice).unwrap_or_default();
            stale_udp_flows(&table, hp, ready)
        })
        .collect();
    if stale.is_empty() {
        return;
    }
    let mut nl = match crate::sys::netlink::Netlink::open_netfilter() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::warn!(error = %e, "no netfilter netlink socket to forget UDP flows");
            return;
        }
    };
    for t in stale {
        if let Err(e) = nl.delete_conntrack(&t) {
            tracing::warn!(flow = ?t, error = %e, "could not forget a UDP flow");
        }
    }
}

/// The UDP flows in `table` (procfs conntrack text) that DNAT sent from
/// `hp` (its port, and its address unless every address) to an endpoint not
/// in `ready`, by their original direction. Flows to the agent's own socket
/// (reply from the original destination) are not DNAT flows.
pub fn stale_udp_flows(table: &str, hp: &HostPort, ready: &[SocketAddrV4]) -> Vec<ConntrackTuple> {
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            // ipv4 2 udp 17 <timeout> key=value...
            if fields.nth(2) != Some("udp") {
                return None;
            }
            let mut src = Vec::new();
            let mut dst = Vec::new();
            let mut sport = Vec::new();
            let mut dport = Vec::new();
            for f in fields {
                let Some((k, v)) = f.split_once('=') else {
                    continue;
                };
                match k {
                    "src" => src.push(v.parse::<Ipv4Addr>().ok()?),
                    "dst" => dst.push(v.parse::<Ipv4Addr>().ok()?),
                    "sport" => sport.push(v.parse::<u16>().ok()?),
                    "dport" => dport.push(v.parse::<u16>().ok()?),
                    _ => {}
                }
            }
            let (&[o_src, r_src], &[o_dst, _], &[o_sport, r_sport], &[o_dport, _]) =
                (&src[..], &dst[..], &sport[..], &dport[..])
            else {
                return None;
            };
            let dnat = (r_src, r_sport) != (o_dst, o_dport);
            let ours = o_dport == hp.port && (hp.ip.is_unspecified() || o_dst == hp.ip);
            let endpoint = SocketAddrV4::new(r_src, r_sport);
            (dnat && ours && !ready.contains(&endpoint)).then_some(ConntrackTuple {
                protocol: 17,
                src: o_src,
                dst: o_dst,
                sport: o_sport,
                dport: o_dport,
            })
        })
        .collect()
}

fn conntrack_err(source: std::io::Error) -> DnatError {
    DnatError::Conntrack {
        path: CONNTRACK.into(),
        source,
    }
}

/// One transaction that loads every expression a rule uses (fib, numgen, a
/// concatenated dnat map, ct status, masquerade) in a scratch table and
/// deletes it again, so a host without them falls back to the proxy at
/// start, not at the first publish — and the agent's table is not touched.
fn probe(table: &str, bridge: &str) -> String {
    let t = format!("{table}_probe");
    format!(
        "table ip {t} {{\n\
         \tchain o {{ type nat hook output priority -100; policy accept; }}\n\
         \tchain p {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         }}\n\
         add rule ip {t} o fib daddr type local ip daddr != 127.0.0.0/8 udp dport 0 dnat ip to numgen inc mod 1 map {{ 0 : 127.0.0.1 . 9 }}\n\
         add rule ip {t} p ip saddr 127.0.0.0/8 oifname \"{bridge}\" ct status dnat masquerade\n\
         delete table ip {t}\n"
    )
}

/// The rules every published port relies on.
pub fn static_rules(bridge: &str, subnet: Ipv4Net) -> Vec<Rule> {
    vec![
        // route_localnet lets packets from 127.0.0.0/8 leave on the bridge:
        // they are masqueraded to the gateway address...
        Rule::new(
            "published_postrouting",
            format!("ip saddr 127.0.0.0/8 oifname \"{bridge}\" masquerade"),
        ),
        // ...and a container reaching a published port of the bridge gets
        // its reply through the host (hairpin), not straight from the peer.
        Rule::new(
            "published_postrouting",
            format!("ip saddr {subnet} oifname \"{bridge}\" ct status dnat masquerade"),
        ),
        // Nothing on the bridge may send to the host's loopback addresses.
        Rule::new(
            "published_guard",
            format!("iifname \"{bridge}\" ip daddr 127.0.0.0/8 drop"),
        ),
    ]
}

/// The DNAT rules of one service: per host port with Ready endpoints, one
/// for connections from this host (output) and, unless the port is bound to
/// a loopback address, one for everything arriving (prerouting: other hosts
/// and containers of the bridge). Endpoints are sorted, so the same Ready
/// set always renders the same rule.
pub fn service_rules(ports: &PortMap) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (hp, ready) in ports {
        if ready.is_empty() {
            continue;
        }
        let mut ready = ready.clone();
        ready.sort();
        ready.dedup();
        let map: Vec<String> = ready
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{i} : {} . {}", a.ip(), a.port()))
            .collect();
        let target = format!(
            "{} dport {} dnat ip to numgen inc mod {} map {{ {} }}",
            hp.protocol.as_str(),
            hp.port,
            ready.len(),
            map.join(", ")
        );
        let (arriving, local) = if hp.ip.is_unspecified() {
            // Any local address; 127.0.0.0/8 only from this host (a packet
            // for it arriving on an interface is a martian, kept one).
            (
                Some("fib daddr type local ip daddr != 127.0.0.0/8".to_string()),
                "fib daddr type local".to_string(),
            )
        } else if hp.ip.is_loopback() {
            (None, format!("ip daddr {}", hp.ip))
        } else {
            (
                Some(format!("ip daddr {}", hp.ip)),
                format!("ip daddr {}", hp.ip),
            )
        };
        if let Some(m) = arriving {
            rules.push(Rule::new("published_prerouting", format!("{m} {target}")));
        }
        rules.push(Rule::new("published_output", format!("{local} {target}")));
    }
    rules
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

    fn hp(ip: &str, port: u16, protocol: Protocol) -> HostPort {
        HostPort {
            ip: ip.parse().unwrap(),
            port,
            protocol,
        }
    }

    fn bodies(rules: &[Rule], chain: &str) -> Vec<String> {
        rules
            .iter()
            .filter(|r| r.chain == chain)
            .map(|r| r.body.clone())
            .collect()
    }

    #[test]
    fn every_address_port_is_balanced_from_everywhere_but_loopback_from_outside() {
        let mut ports = PortMap::new();
        ports.insert(
            hp("0.0.0.0", 8080, Protocol::Tcp),
            vec![ep("10.89.0.3:80"), ep("10.89.0.2:80")],
        );
        let r = service_rules(&ports);
        // Sorted endpoints: the same set renders the same rule.
        let target = "tcp dport 8080 dnat ip to numgen inc mod 2 map { 0 : 10.89.0.2 . 80, 1 : 10.89.0.3 . 80 }";
        assert_eq!(
            bodies(&r, "published_output"),
            [format!("fib daddr type local {target}")]
        );
        assert_eq!(
            bodies(&r, "published_prerouting"),
            [format!(
                "fib daddr type local ip daddr != 127.0.0.0/8 {target}"
            )]
        );
    }

    #[test]
    fn a_loopback_port_is_reachable_only_from_this_host_on_that_address() {
        let mut ports = PortMap::new();
        ports.insert(
            hp("127.0.0.1", 8080, Protocol::Tcp),
            vec![ep("10.89.0.2:80")],
        );
        ports.insert(
            hp("192.0.2.7", 8081, Protocol::Tcp),
            vec![ep("10.89.0.2:81")],
        );
        let r = service_rules(&ports);
        assert_eq!(
            bodies(&r, "published_output"),
            [
                "ip daddr 127.0.0.1 tcp dport 8080 dnat ip to numgen inc mod 1 map { 0 : 10.89.0.2 . 80 }",
                "ip daddr 192.0.2.7 tcp dport 8081 dnat ip to numgen inc mod 1 map { 0 : 10.89.0.2 . 81 }",
            ]
        );
        // No rule for arriving packets to 127.0.0.1; one for 192.0.2.7.
        assert_eq!(
            bodies(&r, "published_prerouting"),
            ["ip daddr 192.0.2.7 tcp dport 8081 dnat ip to numgen inc mod 1 map { 0 : 10.89.0.2 . 81 }"]
        );
    }

    #[test]
    fn udp_ports_match_udp_and_ports_without_ready_endpoints_get_no_rule() {
        let mut ports = PortMap::new();
        ports.insert(hp("0.0.0.0", 5353, Protocol::Udp), vec![ep("10.89.0.2:53")]);
        ports.insert(hp("0.0.0.0", 8080, Protocol::Tcp), vec![]);
        let r = service_rules(&ports);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            r.iter().all(|r| r.body.contains("udp dport 5353 dnat")),
            "{r:?}"
        );
        assert!(service_rules(&PortMap::new()).is_empty());
    }

    #[test]
    fn a_changed_ready_set_changes_the_shape_an_unchanged_one_does_not() {
        let mut a = PortMap::new();
        a.insert(
            hp("0.0.0.0", 8080, Protocol::Tcp),
            vec![ep("10.89.0.2:80"), ep("10.89.0.3:80")],
        );
        let mut b = PortMap::new();
        b.insert(
            hp("0.0.0.0", 8080, Protocol::Tcp),
            vec![ep("10.89.0.3:80"), ep("10.89.0.2:80")],
        );
        assert_eq!(
            nft::shape(&service_rules(&a)),
            nft::shape(&service_rules(&b))
        );
        b.insert(hp("0.0.0.0", 8080, Protocol::Tcp), vec![ep("10.89.0.3:80")]);
        assert_ne!(
            nft::shape(&service_rules(&a)),
            nft::shape(&service_rules(&b))
        );
    }

    #[test]
    fn static_rules_masquerade_loopback_and_hairpin_and_guard_loopback() {
        let r = static_rules("b1", "10.89.0.0/16".parse().unwrap());
        assert_eq!(
            bodies(&r, "published_postrouting"),
            [
                "ip saddr 127.0.0.0/8 oifname \"b1\" masquerade",
                "ip saddr 10.89.0.0/16 oifname \"b1\" ct status dnat masquerade"
            ]
        );
        assert_eq!(
            bodies(&r, "published_guard"),
            ["iifname \"b1\" ip daddr 127.0.0.0/8 drop"]
        );
    }

    #[test]
    fn udp_flows_to_endpoints_that_left_are_found_by_their_original_tuple() {
        let table = "\
ipv4     2 udp      17 29 src=127.0.0.1 dst=127.0.0.1 sport=40000 dport=5353 src=10.89.0.2 dst=10.89.0.1 sport=53 dport=40000 mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=192.0.2.9 dst=192.0.2.5 sport=40001 dport=5353 [UNREPLIED] src=10.89.0.3 dst=192.0.2.9 sport=53 dport=40001 mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=127.0.0.1 dst=127.0.0.1 sport=40002 dport=5353 src=127.0.0.1 dst=127.0.0.1 sport=5353 dport=40002 mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=127.0.0.1 dst=127.0.0.1 sport=40003 dport=5454 src=10.89.0.2 dst=10.89.0.1 sport=53 dport=40003 mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=40004 dport=5353 src=10.89.0.2 dst=10.89.0.1 sport=53 dport=40004 [ASSURED] mark=0 zone=0 use=2
";
        let any = HostPort {
            ip: Ipv4Addr::UNSPECIFIED,
            port: 5353,
            protocol: Protocol::Udp,
        };
        let flow = |src: &str, dst: &str, sport| ConntrackTuple {
            protocol: 17,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport: 5353,
        };
        // .3 left: its flow goes; .2's stays; the agent's own socket's flow,
        // another port's and TCP are not touched.
        assert_eq!(
            stale_udp_flows(table, &any, &[ep("10.89.0.2:53")]),
            vec![flow("192.0.2.9", "192.0.2.5", 40001)]
        );
        // No Ready endpoint: every DNAT flow of the port goes.
        assert_eq!(
            stale_udp_flows(table, &any, &[]),
            vec![
                flow("127.0.0.1", "127.0.0.1", 40000),
                flow("192.0.2.9", "192.0.2.5", 40001)
            ]
        );
        // A port bound to one address: only flows to that address.
        let lo = HostPort {
            ip: Ipv4Addr::LOCALHOST,
            ..any
        };
        assert_eq!(
            stale_udp_flows(table, &lo, &[]),
            vec![flow("127.0.0.1", "127.0.0.1", 40000)]
        );
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
