//! Rebuilding what a lost state database held (see [`crate::state::Lost`])
//! from what the kernel and the disk still know, at start, before anything
//! can hand out an address or id range or collect an image: address leases
//! from the containers' pinned network namespaces and recorded addresses,
//! user-namespace id ranges from their id maps, image records from the
//! content store. [`plan`] decides from plain [`Observations`] (pure,
//! table-tested); [`run`] observes, executes and reports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use berth_core::api::StateRebuild;
use berth_core::image_ref::{Digest, ImageRef};
use berth_core::vocab::EventKind;

use crate::control::{pinned_image, Agent, RETAINED_REVISIONS};
use crate::labels::{LABEL_IMAGE, LABEL_SERVICE, LABEL_VOLUMES};
use crate::network::Network;
use crate::runtime::userns::IdRange;
use crate::runtime::ContainerState;
use crate::state::OpenReport;

/// One container on disk as the rebuild sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSeen {
    pub id: String,
    /// Its `berth.service` label.
    pub service: Option<String>,
    pub running: bool,
    /// Its network namespace is pinned (it holds its address).
    pub attached: bool,
    /// The address it was created with (`config.json`).
    pub address: Option<Ipv4Addr>,
    /// The id map it runs with (`None`: the host's).
    pub userns: Option<IdRange>,
    /// Its `berth.image` label (pinned reference).
    pub image: Option<String>,
    /// Its `berth.volumes` label, split.
    pub volumes: Vec<String>,
}

/// What the kernel, the disk and the (new) database hold at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    /// Every container on disk, oldest first.
    pub containers: Vec<ContainerSeen>,
    /// Stored address leases, by container id.
    pub leases: BTreeMap<String, Ipv4Addr>,
    /// Stored id ranges, by service.
    pub ranges: BTreeMap<String, IdRange>,
    /// Digests with an image record.
    pub images: BTreeSet<Digest>,
    /// The pinned images of the retained revisions (GC keeps them).
    pub revision_images: Vec<String>,
    /// Digests (of the containers' and those revisions' images) whose
    /// manifest or index a pull left in the content store.
    pub blobs: BTreeSet<Digest>,
    /// Named volumes on disk.
    pub volumes: BTreeSet<String>,
}

/// What to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Lease records to drop first: another container holds their address,
    /// or their own container holds a different one.
    pub drop_leases: Vec<String>,
    /// Leases to record: (container id, address).
    pub leases: Vec<(String, Ipv4Addr)>,
    /// Range records to drop: they overlap a range another service's
    /// containers use (the service gets a free range when it next starts).
    pub forget_ranges: Vec<String>,
    /// Ranges to record: (service, range).
    pub ranges: Vec<(String, IdRange)>,
    /// Pinned image references whose records to rebuild.
    pub images: Vec<String>,
    /// Disagreements and gaps, one line each (for the log and `status`).
    pub problems: Vec<String>,
}

fn overlaps(a: IdRange, b: IdRange) -> bool {
    let (a0, a1) = (u64::from(a.base), u64::from(a.base) + u64::from(a.len));
    let (b0, b1) = (u64::from(b.base), u64::from(b.base) + u64::from(b.len));
    a0 < b1 && b0 < a1
}

fn show(r: IdRange) -> String {
    format!("{}:{}", r.base, r.len)
}

/// What to rebuild from `obs`. What runs wins over what is recorded: a
/// container's address and id map are what the kernel uses. Pure.
pub fn plan(obs: &Observations) -> Plan {
    let mut p = Plan::default();

    // Leases: every attached container keeps the address it has.
    let mut claimed: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for c in obs.containers.iter().filter(|c| c.attached) {
        let Some(ip) = c.address else { continue };
        if let Some(first) = claimed.get(&ip) {
            p.problems.push(format!(
                "containers {first} and {} both have address {ip}; the lease stays {first}'s",
                c.id
            ));
            continue;
        }
        claimed.insert(ip, &c.id);
    }
    for (ip, id) in &claimed {
        if obs.leases.get(*id) != Some(ip) {
            p.leases.push((id.to_string(), *ip));
        }
    }
    for (id, ip) in &obs.leases {
        let taken_by_other = claimed.get(ip).is_some_and(|holder| holder != id);
        let moved = p.leases.iter().any(|(l, _)| l == id);
        if taken_by_other || moved {
            p.drop_leases.push(id.clone());
        }
    }

    // Id ranges: each service's containers' map, a running one's first.
    let mut seen: Vec<(String, IdRange, bool)> = Vec::new();
    for c in &obs.containers {
        let (Some(service), Some(range)) = (&c.service, c.userns) else {
            continue;
        };
        match seen.iter_mut().find(|(s, _, _)| s == service) {
            None => seen.push((service.clone(), range, c.running)),
            Some((_, r, _)) if *r == range => {}
            Some((_, r, running)) => {
                let keep = if c.running && !*running { range } else { *r };
                p.problems.push(format!(
                    "service {service}: its containers use id ranges {} and {}; keeping {}",
                    show(*r),
                    show(range),
                    show(keep)
                ));
                *running |= c.running;
                *r = keep;
            }
        }
    }
    let mut adopted: Vec<(String, IdRange)> = Vec::new();
    for (service, range, _) in seen {
        if let Some((other, _)) = adopted.iter().find(|(_, r)| overlaps(*r, range)) {
            p.problems.push(format!(
                "services {other} and {service} use overlapping id ranges; {service}'s ({}) is not recorded",
                show(range)
            ));
            continue;
        }
        adopted.push((service, range));
    }
    for (service, range) in &adopted {
        if obs.ranges.get(service) != Some(range) {
            p.ranges.push((service.clone(), *range));
        }
    }
    for (other, r) in &obs.ranges {
        let in_use = adopted.iter().any(|(s, _)| s == other);
        if let Some((service, _)) = adopted.iter().find(|(s, a)| s != other && overlaps(*a, *r)) {
            if !in_use {
                p.forget_ranges.push(other.clone());
                p.problems.push(format!(
                    "service {other}'s recorded id range {} overlaps the one {service}'s containers use; {other} gets a new one",
                    show(*r)
                ));
            }
        }
    }

    // Image records: every container's image and the retained revisions'.
    let mut wanted = BTreeSet::new();
    let refs = obs
        .containers
        .iter()
        .filter_map(|c| c.image.as_ref())
        .chain(&obs.revision_images);
    for text in refs {
        let Some(digest) = ImageRef::parse(text).ok().and_then(|r| r.digest) else {
            continue;
        };
        // Never pulled (a failed rollout's image): nothing to rebuild from.
        if !obs.blobs.contains(&digest) {
            continue;
        }
        if !obs.images.contains(&digest) && wanted.insert(digest) {
            p.images.push(text.clone());
        }
    }

    // Volumes live outside the database: only say when one is gone.
    for c in obs.containers.iter().filter(|c| c.running) {
        for v in c.volumes.iter().filter(|v| !obs.volumes.contains(*v)) {
            p.problems.push(format!(
                "container {} mounts volume {v}, which is not on disk",
                c.id
            ));
        }
    }
    p
}

/// Whether a start is worth reporting: the database was lost, or records
/// had to be written. Pure.
pub fn worth_reporting(open: &OpenReport, plan: &Plan) -> bool {
    open.lost.is_some()
        || open.rebuilt_revisions > 0
        || !plan.leases.is_empty()
        || !plan.ranges.is_empty()
        || !plan.images.is_empty()
        || !plan.drop_leases.is_empty()
        || !plan.forget_ranges.is_empty()
}

/// Reads what the kernel, the disk and the database hold now.
pub fn observe(agent: &Agent, network: &Network) -> Observations {
    let mut obs = Observations::default();
    match agent.runtime.list() {
        Ok(list) => {
            for info in list {
                let Ok(cfg) = agent.runtime.config(&info.id) else {
                    continue;
                };
                obs.containers.push(ContainerSeen {
                    service: info.labels.get(LABEL_SERVICE).cloned(),
                    running: matches!(info.state, ContainerState::Running { .. }),
                    attached: network.is_attached(&info.id),
                    address: cfg.address,
                    userns: cfg.userns,
                    image: info.labels.get(LABEL_IMAGE).cloned(),
                    volumes: info
                        .labels
                        .get(LABEL_VOLUMES)
                        .map(|v| {
                            v.split(',')
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default(),
                    id: info.id,
                });
            }
        }
        Err(e) => tracing::warn!(error = %e, "rebuild: cannot list containers"),
    }
    obs.leases = network.ipam().entries().into_iter().collect();
    obs.ranges = agent.id_ranges.all();
    obs.images = agent
        .images
        .list()
        .map(|l| l.into_iter().map(|r| r.digest).collect())
        .unwrap_or_default();
    let revisions = agent.store().revisions().unwrap_or_default();
    for rec in revisions.iter().rev().take(RETAINED_REVISIONS) {
        let Ok((manifest, _)) = Agent::desired_of(rec) else {
            continue;
        };
        for svc in manifest.services.values() {
            let image = pinned_image(&svc.image, rec.info.digests.get(&svc.name));
            if image.digest.is_some() {
                obs.revision_images.push(image.to_string());
            }
        }
    }
    let content = agent.images.content();
    obs.blobs = obs
        .containers
        .iter()
        .filter_map(|c| c.image.as_ref())
        .chain(&obs.revision_images)
        .filter_map(|t| ImageRef::parse(t).ok().and_then(|r| r.digest))
        .filter(|d| content.has(d))
        .collect();
    obs.volumes = agent
        .volumes
        .list()
        .map(|l| l.into_iter().map(|v| v.meta.name).collect())
        .unwrap_or_default();
    obs
}

/// Observes, plans and writes what a lost database held, then reports it
/// (log line, `state-rebuilt` event, `status.rebuilt`). Returns the report,
/// `None` when there was nothing to rebuild. Call once at start, before the
/// network's start-up reconcile, the reconciler or any API listener.
pub fn run(agent: &Arc<Agent>, network: &Network, open: &OpenReport) -> Option<StateRebuild> {
    let obs = observe(agent, network);
    let plan = plan(&obs);
    if !worth_reporting(open, &plan) {
        return None;
    }
    let mut problems = plan.problems.clone();
    let ipam = network.ipam();
    for id in &plan.drop_leases {
        if let Err(e) = ipam.release(id) {
            problems.push(format!("dropping the lease of {id}: {e}"));
        }
    }
    let mut leases = 0;
    for (id, ip) in &plan.leases {
        match ipam.adopt(id, *ip) {
            Ok(()) => leases += 1,
            Err(e) => problems.push(format!("lease of {id}: {e}")),
        }
    }
    for service in &plan.forget_ranges {
        if let Err(e) = agent.id_ranges.forget(service) {
            problems.push(format!("dropping the id range of {service}: {e}"));
        }
    }
    let mut ranges = 0;
    for (service, range) in &plan.ranges {
        match agent.id_ranges.adopt(service, *range) {
            Ok(()) => ranges += 1,
            Err(e) => problems.push(format!("id range of {service}: {e}")),
        }
    }
    let mut images = 0;
    for text in &plan.images {
        let rebuilt = ImageRef::parse(text)
            .map_err(|e| e.to_string())
            .and_then(|r| agent.images.rebuild_record(&r).map_err(|e| e.to_string()));
        match rebuilt {
            Ok(_) => images += 1,
            Err(e) => problems.push(format!(
                "image {text}: no record rebuilt ({e}); it is pulled again when needed"
            )),
        }
    }
    let report = StateRebuild {
        reason: open.lost.as_ref().map(|l| l.describe()),
        moved_aside: open.moved_aside.as_ref().map(|p| p.display().to_string()),
        at: crate::now_rfc3339(),
        revisions: open.rebuilt_revisions as u64,
        containers: obs
            .containers
            .iter()
            .filter(|c| c.running && c.service.is_some())
            .count() as u64,
        leases,
        id_ranges: ranges,
        images,
        volumes: obs.volumes.len() as u64,
        problems,
    };
    let why = report
        .reason
        .clone()
        .unwrap_or_else(|| "records were missing".into());
    tracing::warn!(reason = %why, moved_aside = ?report.moved_aside, revisions = report.revisions,
        containers = report.containers, leases = report.leases, id_ranges = report.id_ranges,
        images = report.images, volumes = report.volumes, problems = ?report.problems,
        "state rebuilt from the kernel and the disk: {}", report.summary());
    agent.emit(
        EventKind::StateRebuilt,
        None,
        format!("{why}; rebuilt: {}", report.summary()),
    );
    Some(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LEN: u32 = 65536;

    fn range(n: u32) -> IdRange {
        IdRange {
            base: n * LEN,
            len: LEN,
        }
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn image(c: char) -> String {
        format!("127.0.0.1:5000/shop/web:1@{}", digest(c))
    }

    fn container(id: &str, service: &str, last: u8, r: Option<u32>) -> ContainerSeen {
        ContainerSeen {
            id: id.into(),
            service: Some(service.into()),
            running: true,
            attached: true,
            address: Some(ip(last)),
            userns: r.map(range),
            image: Some(image('a')),
            volumes: Vec::new(),
        }
    }

    #[test]
    fn a_deleted_database_gets_every_lease_range_and_image_back() {
        let obs = Observations {
            containers: vec![
                container("w1", "web", 2, Some(1)),
                container("w2", "web", 3, Some(1)),
                container("d1", "db", 4, Some(2)),
                container("h1", "host", 5, None),
            ],
            revision_images: vec![image('a'), image('b'), image('c')],
            // c was never pulled (its rollout failed): nothing to rebuild.
            blobs: [digest('a'), digest('b')].into(),
            ..Default::default()
        };
        let p = plan(&obs);
        assert_eq!(
            p.leases,
            [
                ("w1".to_string(), ip(2)),
                ("w2".into(), ip(3)),
                ("d1".into(), ip(4)),
                ("h1".into(), ip(5))
            ]
        );
        assert_eq!(
            p.ranges,
            [("web".to_string(), range(1)), ("db".into(), range(2))]
        );
        assert_eq!(p.images, [image('a'), image('b')], "each digest once");
        assert!(p.drop_leases.is_empty() && p.forget_ranges.is_empty());
        assert!(p.problems.is_empty(), "{:?}", p.problems);
    }

    #[test]
    fn an_intact_database_needs_nothing() {
        let mut obs = Observations {
            containers: vec![container("w1", "web", 2, Some(1))],
            revision_images: vec![image('a')],
            ..Default::default()
        };
        obs.leases.insert("w1".into(), ip(2));
        obs.ranges.insert("web".into(), range(1));
        obs.images.insert(digest('a'));
        obs.blobs.insert(digest('a'));
        // A failed revision's image that was never pulled changes nothing.
        obs.revision_images.push(image('f'));
        let p = plan(&obs);
        assert_eq!(p, Plan::default());
        let open = OpenReport::default();
        assert!(!worth_reporting(&open, &p));
        let lost = OpenReport {
            lost: Some(crate::state::Lost::Missing("x".into())),
            ..Default::default()
        };
        assert!(worth_reporting(&lost, &p), "a lost database is always told");
    }

    /// Rows: stored leases, containers (id, address, attached) → leases to
    /// record, records to drop, problems mentioning.
    #[test]
    fn leases_follow_what_the_kernel_has() {
        type Row<'a> = (
            &'a [(&'a str, u8)],
            &'a [(&'a str, u8, bool)],
            &'a [(&'a str, u8)],
            &'a [&'a str],
            Option<&'a str>,
        );
        let rows: &[Row] = &[
            // Nothing stored: every attached container's address.
            (
                &[],
                &[("a", 2, true), ("b", 3, true)],
                &[("a", 2), ("b", 3)],
                &[],
                None,
            ),
            // Detached containers hold no address.
            (&[], &[("a", 2, false)], &[], &[], None),
            // A stale record of a gone id on a live address is dropped.
            (
                &[("gone", 2)],
                &[("a", 2, true)],
                &[("a", 2)],
                &["gone"],
                None,
            ),
            // A record disagreeing with the kernel moves.
            (&[("a", 9)], &[("a", 2, true)], &[("a", 2)], &["a"], None),
            // Two records swapped: both move.
            (
                &[("a", 3), ("b", 2)],
                &[("a", 2, true), ("b", 3, true)],
                &[("a", 2), ("b", 3)],
                &["a", "b"],
                None,
            ),
            // Two containers on one address: the first keeps it.
            (
                &[],
                &[("a", 2, true), ("b", 2, true)],
                &[("a", 2)],
                &[],
                Some("both have address 10.0.0.2"),
            ),
        ];
        for (stored, seen, want, drop, problem) in rows {
            let obs = Observations {
                leases: stored
                    .iter()
                    .map(|(id, l)| (id.to_string(), ip(*l)))
                    .collect(),
                containers: seen
                    .iter()
                    .map(|(id, l, attached)| ContainerSeen {
                        attached: *attached,
                        ..container(id, "web", *l, None)
                    })
                    .collect(),
                images: [digest('a')].into(),
                ..Default::default()
            };
            let p = plan(&obs);
            let want: Vec<(String, Ipv4Addr)> = want
                .iter()
                .map(|(id, l)| (id.to_string(), ip(*l)))
                .collect();
            let mut got = p.leases.clone();
            got.sort();
            assert_eq!(got, want, "{stored:?} {seen:?}");
            assert_eq!(p.drop_leases, *drop, "{stored:?} {seen:?}");
            match problem {
                None => assert!(p.problems.is_empty(), "{:?}", p.problems),
                Some(w) => assert!(p.problems.iter().any(|x| x.contains(w)), "{:?}", p.problems),
            }
        }
    }

    /// Rows: stored ranges, containers (service, range index, running) →
    /// ranges to record, records to forget, a problem mentioning.
    #[test]
    fn id_ranges_follow_the_containers_id_maps() {
        type Row<'a> = (
            &'a [(&'a str, u32)],
            &'a [(&'a str, u32, bool)],
            &'a [(&'a str, u32)],
            &'a [&'a str],
            Option<&'a str>,
        );
        let rows: &[Row] = &[
            (
                &[],
                &[("web", 1, true), ("db", 2, true)],
                &[("web", 1), ("db", 2)],
                &[],
                None,
            ),
            (&[("web", 1)], &[("web", 1, true)], &[], &[], None),
            // Another (stopped) service's record on a range in use: forgotten.
            (
                &[("old", 1)],
                &[("web", 1, true)],
                &[("web", 1)],
                &["old"],
                Some("old gets a new one"),
            ),
            // The recorded range disagrees with the id map: the map wins.
            (&[("web", 3)], &[("web", 1, true)], &[("web", 1)], &[], None),
            // A service's containers on two ranges: the running one's is kept.
            (
                &[],
                &[("web", 1, false), ("web", 2, true)],
                &[("web", 2)],
                &[],
                Some("keeping 131072"),
            ),
            (
                &[],
                &[("web", 1, true), ("web", 2, false)],
                &[("web", 1)],
                &[],
                Some("keeping 65536"),
            ),
            // Two services on one range: the first is recorded.
            (
                &[],
                &[("web", 1, true), ("db", 1, true)],
                &[("web", 1)],
                &[],
                Some("overlapping"),
            ),
        ];
        for (stored, seen, want, forget, problem) in rows {
            let obs = Observations {
                ranges: stored
                    .iter()
                    .map(|(s, n)| (s.to_string(), range(*n)))
                    .collect(),
                containers: seen
                    .iter()
                    .enumerate()
                    .map(|(i, (s, n, running))| ContainerSeen {
                        running: *running,
                        attached: false,
                        ..container(&format!("c{i}"), s, 2, Some(*n))
                    })
                    .collect(),
                images: [digest('a')].into(),
                ..Default::default()
            };
            let p = plan(&obs);
            let want: Vec<(String, IdRange)> = want
                .iter()
                .map(|(s, n)| (s.to_string(), range(*n)))
                .collect();
            assert_eq!(p.ranges, want, "{stored:?} {seen:?}");
            assert_eq!(p.forget_ranges, *forget, "{stored:?} {seen:?}");
            match problem {
                None => assert!(p.problems.is_empty(), "{:?}", p.problems),
                Some(w) => assert!(p.problems.iter().any(|x| x.contains(w)), "{:?}", p.problems),
            }
        }
    }

    #[test]
    fn images_and_volumes() {
        let mut with_vol = container("w1", "web", 2, None);
        with_vol.volumes = vec!["data".into(), "gone".into()];
        with_vol.image = Some("not a reference".into());
        let obs = Observations {
            containers: vec![with_vol],
            revision_images: vec![
                image('b'),
                "127.0.0.1:5000/shop/web:1".into(), // not pinned: nothing to rebuild
                image('c'),
            ],
            images: [digest('c')].into(),
            blobs: [digest('b'), digest('c')].into(),
            volumes: ["data".to_string()].into(),
            ..Default::default()
        };
        let p = plan(&obs);
        assert_eq!(p.images, [image('b')]);
        assert_eq!(
            p.problems,
            ["container w1 mounts volume gone, which is not on disk"]
        );
    }
}
