//! What the pass observes and publishes: each replica's phase (through the
//! pure rule in `policy::phase`), each service's ready replicas for status,
//! metrics and readiness, its published ports (proxy and DNAT) and its DNS
//! records. Called by the pass only.

use std::collections::BTreeMap;
use std::time::SystemTime;

use berth_core::manifest::{Manifest, Service};
use berth_core::vocab::EventKind;

use super::decide::Phase;
use super::policy::{self, Observed};
use crate::control::Agent;
use crate::health;
use crate::labels::{stored_spec, LABEL_SERVICE};
use crate::network::HostPort;
use crate::runtime::{ContainerInfo, ContainerState};

/// The phase of replica `c` of `svc` at `now`, from what the live state
/// knows of it (retiring, health, adoption); see [`policy::phase`].
pub(super) fn phase_of(
    agent: &Agent,
    c: &ContainerInfo,
    svc: &Service,
    now: SystemTime,
) -> Option<Phase> {
    let checked = health::of_container(svc.health.as_ref(), &c.labels).is_some();
    let live = agent.live();
    policy::phase(
        Observed {
            state: &c.state,
            retiring: live.retiring.contains_key(&c.id),
            checked,
            health: live.health.get(&c.id).map(|h| h.status),
            adopted_ready: live.adopted_ready.contains(&c.id),
        },
        now,
    )
}

/// Publishes each service's ready replicas (and running containers' names)
/// to berth-dns; see `dns::build_records`.
pub(super) fn publish_dns(
    agent: &Agent,
    manifest: &Manifest,
    containers: &[ContainerInfo],
    now: SystemTime,
) {
    use crate::dns::{Readiness, ReplicaView};
    let addresses = agent.live().addresses.clone();
    let replicas: Vec<ReplicaView> = containers
        .iter()
        .filter_map(|c| {
            let service = c.labels.get(LABEL_SERVICE)?;
            let phase = manifest
                .services
                .get(service)
                .and_then(|svc| phase_of(agent, c, svc, now));
            Some(ReplicaView {
                service,
                id: &c.id,
                ip: addresses.get(&c.id).copied(),
                running: matches!(c.state, ContainerState::Running { .. }),
                readiness: match phase {
                    Some(Phase::Ready) => Readiness::Ready,
                    Some(Phase::Starting) => Readiness::Unknown,
                    _ => Readiness::NotReady,
                },
            })
        })
        .collect();
    let services = manifest.services.keys().map(String::as_str);
    if let Err(e) = agent.dns.publish(services, &replicas) {
        tracing::warn!(error = %e, "publishing DNS records failed");
    }
}

/// Counts ready replicas of a service (any spec, not retiring) for status,
/// metrics and the readiness endpoint; `updated` is the pass's count of
/// replicas of the desired spec and the revision it was counted against.
pub(super) fn update_ready(
    agent: &Agent,
    svc: &Service,
    list: &[ContainerInfo],
    now: SystemTime,
    updated: Option<(u32, u64)>,
) -> u32 {
    let ready_ids: Vec<String> = list
        .iter()
        .filter(|c| phase_of(agent, c, svc, now) == Some(Phase::Ready))
        .map(|c| c.id.clone())
        .collect();
    let ready = ready_ids.len() as u32;
    let members: Vec<&ContainerInfo> = list
        .iter()
        .filter(|c| {
            matches!(
                c.state,
                ContainerState::Running { .. } | ContainerState::Created
            )
        })
        .collect();
    let mut live = agent.live();
    for c in &members {
        if !live.ports.contains_key(&c.id) {
            let ports = stored_spec(&c.labels).map(|s| s.ports).unwrap_or_default();
            live.ports.insert(c.id.clone(), ports);
        }
    }
    let l = live.services.entry(svc.name.clone()).or_default();
    l.desired = svc.replicas;
    l.ready = ready;
    if let Some((updated, revision)) = updated {
        // With `ready`, under the same lock: status never shows more ready
        // replicas than updated ones of a pass.
        l.updated = updated;
        l.updated_revision = revision;
    }
    l.ready_ids = ready_ids;
    l.members = members.iter().map(|c| c.id.clone()).collect();
    let export = l.exported != Some((svc.replicas, ready));
    l.exported = Some((svc.replicas, ready));
    drop(live);
    if export {
        agent
            .metrics
            .service_replicas(&svc.name, svc.replicas, ready);
    }
    ready
}

/// Points a service's published ports at its replicas, with the ports
/// of the spec its last pass rolled out (see [`sync_ports`]).
pub fn sync_proxy(agent: &Agent, service: &str) {
    let spec_ports = match agent.live().services.get(service) {
        Some(l) => l.spec_ports.clone(),
        None => return,
    };
    sync_ports(agent, service, &spec_ports);
}

/// Publishes `service`: each replica publishes the host ports of its own
/// spec (so during a rollout that moves a port, the old port stays with the
/// old replicas until they retire); Ready replicas take new connections,
/// retiring ones drain; the ports of `spec_ports` (the spec being rolled
/// out) are held even before a replica has them. Ports that cannot be
/// published are recorded (status; readiness answers 503) and named in an event.
pub(super) fn sync_ports(agent: &Agent, service: &str, spec_ports: &[berth_core::manifest::Port]) {
    use crate::network::proxy::{Endpoint, EndpointState};
    let ports = {
        let mut live = agent.live();
        let live = &mut *live;
        let Some(l) = live.services.get_mut(service) else {
            return;
        };
        l.spec_ports = spec_ports.to_vec();
        let mut ports: BTreeMap<HostPort, Vec<Endpoint>> = BTreeMap::new();
        for hp in spec_ports.iter().filter_map(|p| agent.proxy.host_port(p)) {
            ports.entry(hp).or_default();
        }
        let ready: std::collections::BTreeSet<&str> =
            l.ready_ids.iter().map(String::as_str).collect();
        for id in &l.members {
            let (Some(ip), Some(own)) = (live.addresses.get(id), live.ports.get(id)) else {
                continue;
            };
            if own.is_empty() {
                continue;
            }
            let state = if live.retiring.contains_key(id) {
                Some(EndpointState::Draining)
            } else if ready.contains(id.as_str()) {
                Some(EndpointState::Ready)
            } else {
                None
            };
            for p in own {
                let Some(hp) = agent.proxy.host_port(p) else {
                    continue;
                };
                let eps = ports.entry(hp).or_default();
                if let Some(state) = state {
                    eps.push(Endpoint {
                        id: id.clone(),
                        addr: std::net::SocketAddrV4::new(*ip, p.container),
                        state,
                    });
                }
            }
        }
        ports
    };
    let errors: Vec<String> = agent
        .proxy
        .set_service(service, ports)
        .iter()
        .map(|e| e.to_string())
        .collect();
    let mut live = agent.live();
    let Some(l) = live.services.get_mut(service) else {
        return;
    };
    if l.unpublished == errors {
        return;
    }
    l.unpublished = errors.clone();
    if errors.is_empty() {
        return;
    }
    let message = errors.join("; ");
    l.last_error = Some(message.clone());
    drop(live);
    agent.emit(EventKind::PortFailed, Some(service), message);
}
