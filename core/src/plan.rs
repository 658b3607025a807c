//! The plan: a pure function from (desired services, observed containers) to
//! the steps that converge them, per service. Deciding is separate from doing:
//! `diff` and `apply --dry-run` show a plan; the reconciler executes one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::spec::ContainerSpec;

/// What one service should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    pub name: String,
    /// The image reference as the manifest writes it (with its tag), for
    /// people; `spec.image` holds the resolved digest.
    pub reference: String,
    pub replicas: u32,
    pub spec: ContainerSpec,
    /// How it is rolled out, for people ([`crate::manifest::Service::rollout_notes`]).
    pub notes: Vec<String>,
}

impl DesiredService {
    /// The desired service of a manifest service with its resolved image digest
    /// and env-file pairs.
    pub fn of(
        service: &crate::manifest::Service,
        digest: Option<&crate::image_ref::Digest>,
        env_file: &[(String, String)],
    ) -> Self {
        DesiredService {
            name: service.name.clone(),
            reference: service.image.to_string(),
            replicas: service.replicas,
            spec: ContainerSpec::for_service(service, digest, env_file),
            notes: service.rollout_notes(),
        }
    }
}

/// The field name `diff` shows for `command` when only its meaning changed: a
/// stored spec written before `entrypoint` existed ran `command` as the whole
/// argv; the same text now replaces only the image's Cmd.
pub const COMMAND_MEANING_CHANGED: &str =
    "command (now replaces only the image's Cmd; write `entrypoint` for the whole argv)";

/// A container that exists on the host, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub service: String,
    /// `None` when the stored spec could not be read (a newer format): such a
    /// container is replaced.
    pub spec: Option<ContainerSpec>,
}

/// The overall action for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceAction {
    Create,
    Replace,
    ScaleUp,
    ScaleDown,
    Remove,
    Unchanged,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Start a new replica with the desired spec.
    Start { spec_hash: String },
    /// Replace a running container; `fields` say why.
    Replace {
        container: String,
        fields: Vec<String>,
    },
    /// Stop and remove a container.
    Remove {
        container: String,
        reason: RemoveReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoveReason {
    ServiceRemoved,
    ScaleDown,
}

/// The plan for one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub service: String,
    pub action: ServiceAction,
    pub current_replicas: u32,
    pub desired_replicas: u32,
    pub steps: Vec<Step>,
    /// How the service is rolled out (e.g. stop-first for a single-writer volume).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Decides, per service, what converges `observed` to `desired`. Services are
/// in name order, containers in id order; the same input gives the same plan.
pub fn plan(desired: &[DesiredService], observed: &[ObservedContainer]) -> Vec<ServicePlan> {
    let mut by_service: BTreeMap<&str, Vec<&ObservedContainer>> = BTreeMap::new();
    for c in observed {
        by_service.entry(c.service.as_str()).or_default().push(c);
    }
    for list in by_service.values_mut() {
        list.sort_by(|a, b| a.id.cmp(&b.id));
    }
    let desired_names: BTreeSet<&str> = desired.iter().map(|d| d.name.as_str()).collect();
    let mut out = Vec::new();
    for d in desired {
        let current = by_service.get(d.name.as_str()).cloned().unwrap_or_default();
        out.push(plan_service(d, &current));
    }
    for (service, containers) in &by_service {
        if desired_names.contains(service) {
            continue;
        }
        out.push(ServicePlan {
            service: (*service).to_string(),
            action: ServiceAction::Remove,
            current_replicas: containers.len() as u32,
            desired_replicas: 0,
            notes: Vec::new(),
            steps: containers
                .iter()
                .map(|c| Step::Remove {
                    container: c.id.clone(),
                    reason: RemoveReason::ServiceRemoved,
                })
                .collect(),
        });
    }
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}

fn plan_service(d: &DesiredService, current: &[&ObservedContainer]) -> ServicePlan {
    let hash = d.spec.short_hash();
    let mut matching = Vec::new();
    let mut stale = Vec::new();
    for c in current {
        match &c.spec {
            Some(spec) => {
                let fields = spec.changed_fields(&d.spec);
                if fields.is_empty() {
                    matching.push(*c);
                } else {
                    let meaning_only = spec.entrypoint.is_some()
                        && spec.entrypoint == d.spec.command
                        && d.spec.entrypoint.is_none();
                    let names = fields
                        .iter()
                        .map(|f| match *f {
                            "command" if meaning_only => COMMAND_MEANING_CHANGED.to_string(),
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>();
                    stale.push((*c, names));
                }
            }
            None => stale.push((*c, vec!["spec-version".to_string()])),
        }
    }
    let want = d.replicas as usize;
    let mut steps = Vec::new();
    let action = if current.is_empty() {
        steps.extend((0..want).map(|_| Step::Start {
            spec_hash: hash.clone(),
        }));
        if want == 0 {
            ServiceAction::Unchanged
        } else {
            ServiceAction::Create
        }
    } else if !stale.is_empty() {
        // Keep up to `want` matching replicas; every stale one is replaced
        // while replacements are needed, and removed after that.
        let keep = matching.len().min(want);
        let mut needed = want - keep;
        for (c, fields) in &stale {
            if needed > 0 {
                steps.push(Step::Replace {
                    container: c.id.clone(),
                    fields: fields.clone(),
                });
                needed -= 1;
            } else {
                steps.push(Step::Remove {
                    container: c.id.clone(),
                    reason: RemoveReason::ScaleDown,
                });
            }
        }
        steps.extend((0..needed).map(|_| Step::Start {
            spec_hash: hash.clone(),
        }));
        for c in matching.iter().skip(keep) {
            steps.push(Step::Remove {
                container: c.id.clone(),
                reason: RemoveReason::ScaleDown,
            });
        }
        ServiceAction::Replace
    } else if matching.len() < want {
        steps.extend((matching.len()..want).map(|_| Step::Start {
            spec_hash: hash.clone(),
        }));
        ServiceAction::ScaleUp
    } else if matching.len() > want {
        // The newest (highest id) replicas go first.
        for c in matching.iter().skip(want).rev() {
            steps.push(Step::Remove {
                container: c.id.clone(),
                reason: RemoveReason::ScaleDown,
            });
        }
        ServiceAction::ScaleDown
    } else {
        ServiceAction::Unchanged
    };
    let notes = if action == ServiceAction::Unchanged {
        Vec::new()
    } else {
        d.notes.clone()
    };
    ServicePlan {
        service: d.name.clone(),
        action,
        current_replicas: current.len() as u32,
        desired_replicas: d.replicas,
        steps,
        notes,
    }
}

/// How a service differs between the current revision and a new manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceChange {
    pub service: String,
    pub change: ChangeKind,
    /// Spec fields that differ (each forces replacement of the containers).
    pub fields: Vec<String>,
    pub replicas_from: u32,
    pub replicas_to: u32,
    /// How the new revision rolls it out (e.g. stop-first for a single-writer volume).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Old → new value per changed field (replicas included); env values
    /// are never shown, only which keys were added, removed or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<FieldChange>,
}

/// One changed value, as `diff` prints it: `field: from -> to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The spec field (`image`, `replicas`, `memory_bytes`), or `env.KEY`.
    pub field: String,
    /// The old value, `-` when absent; for env keys `set`/`unset`.
    pub from: String,
    /// The new value, `-` when absent; for env keys `set`/`unset`/`changed`.
    pub to: String,
}

/// How `diff` shows one image: the reference as written and its digest.
fn image_text(reference: &str, spec_image: &str) -> String {
    match spec_image.split_once('@') {
        Some((_, digest)) if !reference.contains(digest) => format!("{reference} ({digest})"),
        _ => reference.to_string(),
    }
}

/// A port as Docker writes it: `[IP:]HOST:CONTAINER/PROTO` or `CONTAINER/PROTO`.
fn port_text(p: &crate::manifest::Port) -> String {
    let proto = p.protocol.as_str();
    match p.host {
        Some(h) if p.host_ip.is_unspecified() => format!("{h}:{}/{proto}", p.container),
        Some(h) => format!("{}:{h}:{}/{proto}", p.host_ip, p.container),
        None => format!("{}/{proto}", p.container),
    }
}

/// Old → new values between two desired services of the same name: replicas,
/// image (reference and digest), env keys (never values), ports, and every
/// other changed spec field as JSON.
pub fn field_changes(old: &DesiredService, new: &DesiredService) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let change = |field: &str, from: String, to: String| FieldChange {
        field: field.into(),
        from,
        to,
    };
    if old.replicas != new.replicas {
        out.push(change(
            "replicas",
            old.replicas.to_string(),
            new.replicas.to_string(),
        ));
    }
    let old_json = serde_json::to_value(&old.spec).unwrap_or_default();
    let new_json = serde_json::to_value(&new.spec).unwrap_or_default();
    for field in old.spec.changed_fields(&new.spec) {
        match field {
            "image" => out.push(change(
                "image",
                image_text(&old.reference, &old.spec.image),
                image_text(&new.reference, &new.spec.image),
            )),
            "env" => {
                let keys: BTreeSet<&String> =
                    old.spec.env.keys().chain(new.spec.env.keys()).collect();
                for k in keys {
                    let (from, to) = match (old.spec.env.get(k), new.spec.env.get(k)) {
                        (None, Some(_)) => ("unset", "set"),
                        (Some(_), None) => ("set", "unset"),
                        (Some(a), Some(b)) if a != b => ("set", "changed"),
                        _ => continue,
                    };
                    out.push(change(&format!("env.{k}"), from.into(), to.into()));
                }
            }
            "ports" => {
                let list = |s: &ContainerSpec| {
                    let v: Vec<String> = s.ports.iter().map(port_text).collect();
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(", ")
                    }
                };
                out.push(change("ports", list(&old.spec), list(&new.spec)));
            }
            other => {
                let text = |v: &serde_json::Value| match v.get(other) {
                    None | Some(serde_json::Value::Null) => "-".to_string(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                };
                out.push(change(other, text(&old_json), text(&new_json)));
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    Added,
    Removed,
    /// Spec fields changed: replicas will be replaced.
    Modified,
    /// Only the replica count changed.
    Scaled,
    Unchanged,
}

/// Compares two revisions' desired services (what `diff` shows per service,
/// independent of which containers run right now).
pub fn revision_diff(current: &[DesiredService], next: &[DesiredService]) -> Vec<ServiceChange> {
    let old: BTreeMap<&str, &DesiredService> =
        current.iter().map(|d| (d.name.as_str(), d)).collect();
    let new: BTreeMap<&str, &DesiredService> = next.iter().map(|d| (d.name.as_str(), d)).collect();
    let names: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    names
        .into_iter()
        .map(|name| match (old.get(name), new.get(name)) {
            (None, Some(n)) => ServiceChange {
                service: name.into(),
                change: ChangeKind::Added,
                fields: vec![],
                replicas_from: 0,
                replicas_to: n.replicas,
                notes: n.notes.clone(),
                values: vec![],
            },
            (Some(o), None) => ServiceChange {
                service: name.into(),
                change: ChangeKind::Removed,
                fields: vec![],
                replicas_from: o.replicas,
                replicas_to: 0,
                notes: vec![],
                values: vec![],
            },
            (Some(o), Some(n)) => {
                let fields: Vec<String> = o
                    .spec
                    .changed_fields(&n.spec)
                    .iter()
                    .map(|f| f.to_string())
                    .collect();
                let change = if !fields.is_empty() {
                    ChangeKind::Modified
                } else if o.replicas != n.replicas {
                    ChangeKind::Scaled
                } else {
                    ChangeKind::Unchanged
                };
                let notes = if change == ChangeKind::Modified {
                    n.notes.clone()
                } else {
                    vec![]
                };
                ServiceChange {
                    service: name.into(),
                    change,
                    fields,
                    replicas_from: o.replicas,
                    replicas_to: n.replicas,
                    notes,
                    values: field_changes(o, n),
                }
            }
            (None, None) => unreachable!("name comes from one of the maps"),
        })
        .collect()
}

/// Desired services of a manifest, with tags not yet resolved (what `diff` and
/// a dry run compare when no digest is known).
pub fn desired_from_manifest(manifest: &crate::manifest::Manifest) -> Vec<DesiredService> {
    manifest
        .services
        .values()
        .map(|s| DesiredService::of(s, None, &[]))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::manifest::Manifest;

    fn desired(text: &str) -> Vec<DesiredService> {
        desired_from_manifest(&Manifest::from_str_named("m.toml", text).unwrap())
    }

    fn running(text: &str, service: &str, ids: &[&str]) -> Vec<ObservedContainer> {
        let d = desired(text);
        let spec = d.iter().find(|s| s.name == service).unwrap().spec.clone();
        ids.iter()
            .map(|id| ObservedContainer {
                id: (*id).into(),
                service: service.into(),
                spec: Some(spec.clone()),
            })
            .collect()
    }

    const WEB: &str = "[service.web]\nimage = \"busybox:1\"\nreplicas = 2\n";

    #[test]
    fn field_changes_table() {
        let values = |old: &str, new: &str| -> Vec<String> {
            let d = revision_diff(&desired(old), &desired(new));
            d[0].values
                .iter()
                .map(|v| format!("{} {} -> {}", v.field, v.from, v.to))
                .collect()
        };
        let base = "[service.web]\nimage = \"busybox:1\"\nreplicas = 1\nenv = { A = \"s3cret\", B = \"x\" }\n";
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            ("unchanged", base.to_string(), vec![]),
            (
                "scaled",
                base.replace("replicas = 1", "replicas = 3"),
                vec!["replicas 1 -> 3"],
            ),
            (
                "image tag",
                base.replace("busybox:1", "busybox:2"),
                vec!["image docker.io/library/busybox:1 -> docker.io/library/busybox:2"],
            ),
            (
                "env keys, never values",
                base.replace("A = \"s3cret\", B = \"x\"", "A = \"other\", C = \"y\""),
                vec!["env.A set -> changed", "env.B set -> unset", "env.C unset -> set"],
            ),
            (
                "limits",
                base.replace("replicas = 1", "replicas = 1\nresources = { memory = \"64Mi\" }"),
                vec!["memory_bytes - -> 67108864"],
            ),
            (
                "ports",
                format!(
                    "{base}[[service.web.ports]]\ncontainer = 80\nhost = 8080\nhost_ip = \"127.0.0.1\"\n\
                     [[service.web.ports]]\ncontainer = 53\nprotocol = \"udp\"\n"
                ),
                vec!["ports - -> 53/udp, 127.0.0.1:8080:80/tcp"],
            ),
        ];
        for (name, new, want) in cases {
            let got = values(base, &new);
            assert_eq!(got, want, "{name}");
            assert!(got.iter().all(|v| !v.contains("s3cret")), "{name}");
        }
    }

    fn actions(plans: &[ServicePlan]) -> Vec<(&str, ServiceAction)> {
        plans
            .iter()
            .map(|p| (p.service.as_str(), p.action))
            .collect()
    }

    #[test]
    fn plan_table() {
        struct Case {
            name: &'static str,
            desired: &'static str,
            observed_from: &'static str,
            want: Vec<(&'static str, ServiceAction)>,
            steps: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "unchanged",
                desired: WEB,
                observed_from: WEB,
                want: vec![("web", ServiceAction::Unchanged)],
                steps: vec![],
            },
            Case {
                name: "image change replaces",
                desired: "[service.web]\nimage = \"busybox:2\"\nreplicas = 2\n",
                observed_from: WEB,
                want: vec![("web", ServiceAction::Replace)],
                steps: vec!["replace a [image]", "replace b [image]"],
            },
            Case {
                name: "env change replaces",
                desired:
                    "[service.web]\nimage = \"busybox:1\"\nreplicas = 2\nenv = { A = \"1\" }\n",
                observed_from: WEB,
                want: vec![("web", ServiceAction::Replace)],
                steps: vec!["replace a [env]", "replace b [env]"],
            },
            Case {
                name: "replicas up scales only",
                desired: "[service.web]\nimage = \"busybox:1\"\nreplicas = 3\n",
                observed_from: WEB,
                want: vec![("web", ServiceAction::ScaleUp)],
                steps: vec!["start"],
            },
            Case {
                name: "replicas down scales only",
                desired: "[service.web]\nimage = \"busybox:1\"\nreplicas = 1\n",
                observed_from: WEB,
                want: vec![("web", ServiceAction::ScaleDown)],
                steps: vec!["remove b scale-down"],
            },
            Case {
                name: "service removed",
                desired: "[service.api]\nimage = \"busybox:1\"\n",
                observed_from: WEB,
                want: vec![
                    ("api", ServiceAction::Create),
                    ("web", ServiceAction::Remove),
                ],
                steps: vec![
                    "start",
                    "remove a service-removed",
                    "remove b service-removed",
                ],
            },
            Case {
                name: "replace while scaling down",
                desired: "[service.web]\nimage = \"busybox:2\"\nreplicas = 1\n",
                observed_from: WEB,
                want: vec![("web", ServiceAction::Replace)],
                steps: vec!["replace a [image]", "remove b scale-down"],
            },
            Case {
                name: "replace while scaling up",
                desired: "[service.web]\nimage = \"busybox:2\"\nreplicas = 3\n",
                observed_from: WEB,
                want: vec![("web", ServiceAction::Replace)],
                steps: vec!["replace a [image]", "replace b [image]", "start"],
            },
        ];
        for case in cases {
            let observed = running(case.observed_from, "web", &["a", "b"]);
            let plans = plan(&desired(case.desired), &observed);
            assert_eq!(actions(&plans), case.want, "{}", case.name);
            let steps: Vec<String> = plans
                .iter()
                .flat_map(|p| p.steps.iter())
                .map(|s| match s {
                    Step::Start { .. } => "start".to_string(),
                    Step::Replace { container, fields } => {
                        format!("replace {container} [{}]", fields.join(","))
                    }
                    Step::Remove { container, reason } => format!(
                        "remove {container} {}",
                        serde_json::to_value(reason).unwrap().as_str().unwrap()
                    ),
                })
                .collect();
            assert_eq!(steps, case.steps, "{}", case.name);
        }
    }

    #[test]
    fn revision_diff_table() {
        let cur = desired("[service.web]\nimage = \"busybox:1\"\nreplicas = 2\n[service.db]\nimage = \"busybox:1\"\n[service.old]\nimage = \"busybox:1\"\n");
        let next = desired("[service.web]\nimage = \"busybox:1\"\nreplicas = 3\n[service.db]\nimage = \"busybox:2\"\nenv = { A = \"1\" }\n[service.new]\nimage = \"busybox:1\"\n");
        let d = revision_diff(&cur, &next);
        let summary: Vec<(&str, ChangeKind, Vec<String>, u32, u32)> = d
            .iter()
            .map(|c| {
                (
                    c.service.as_str(),
                    c.change,
                    c.fields.clone(),
                    c.replicas_from,
                    c.replicas_to,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "db",
                    ChangeKind::Modified,
                    vec!["image".to_string(), "env".to_string()],
                    1,
                    1
                ),
                ("new", ChangeKind::Added, vec![], 0, 1),
                ("old", ChangeKind::Removed, vec![], 1, 0),
                ("web", ChangeKind::Scaled, vec![], 2, 3),
            ]
        );
        assert!(revision_diff(&cur, &cur)
            .iter()
            .all(|c| c.change == ChangeKind::Unchanged));
    }

    #[test]
    fn new_service_is_created_with_its_replicas() {
        let plans = plan(&desired(WEB), &[]);
        assert_eq!(actions(&plans), vec![("web", ServiceAction::Create)]);
        assert_eq!(plans[0].steps.len(), 2);
        assert_eq!(
            (plans[0].current_replicas, plans[0].desired_replicas),
            (0, 2)
        );
    }

    #[test]
    fn a_partially_replaced_service_keeps_its_new_replicas() {
        let new = "[service.web]\nimage = \"busybox:2\"\nreplicas = 2\n";
        let mut observed = running(WEB, "web", &["a"]);
        observed.extend(running(new, "web", &["n"]));
        let plans = plan(&desired(new), &observed);
        assert_eq!(actions(&plans), vec![("web", ServiceAction::Replace)]);
        assert_eq!(
            plans[0].steps,
            vec![Step::Replace {
                container: "a".into(),
                fields: vec!["image".into()]
            }]
        );
    }

    #[test]
    fn unreadable_specs_are_replaced() {
        let observed = vec![ObservedContainer {
            id: "a".into(),
            service: "web".into(),
            spec: None,
        }];
        let plans = plan(
            &desired("[service.web]\nimage = \"busybox:1\"\n"),
            &observed,
        );
        assert_eq!(
            plans[0].steps,
            vec![Step::Replace {
                container: "a".into(),
                fields: vec!["spec-version".into()]
            }]
        );
    }

    #[test]
    fn plans_are_deterministic() {
        let observed = running(WEB, "web", &["b", "a"]);
        let d = desired("[service.web]\nimage = \"busybox:1\"\nreplicas = 1\n");
        assert_eq!(plan(&d, &observed), plan(&d, &observed));
        assert_eq!(
            plan(&d, &observed)[0].steps,
            vec![Step::Remove {
                container: "b".into(),
                reason: RemoveReason::ScaleDown
            }]
        );
    }
}
