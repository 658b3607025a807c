//! Per-container CPU, memory and pids, read from each container's cgroup when
//! Prometheus scrapes or `GET /v1/stats` asks (no background polling, no stale
//! series for removed containers).

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::labels::{stored_spec, LABEL_SERVICE};
use crate::runtime::{ContainerState, Runtime};

/// The running containers' stats now, in id order (`GET /v1/stats`). A
/// container that stops while being read is left out.
pub fn snapshot(runtime: &Runtime) -> Vec<berth_core::api::ContainerStats> {
    let mut out: Vec<berth_core::api::ContainerStats> = runtime
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| matches!(c.state, ContainerState::Running { .. }))
        .filter_map(|c| {
            let stats = runtime.stats(&c.id).ok()?;
            let memory_limit_bytes = stored_spec(&c.labels).and_then(|spec| spec.memory_bytes);
            Some(berth_core::api::ContainerStats {
                service: c.labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
                id: c.id,
                cpu_ns: stats.cpu_usage_ns,
                memory_bytes: stats.memory_bytes,
                memory_limit_bytes,
                pids: stats.pids,
                read_at: time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The scrape-time collector of container stats.
#[derive(Debug)]
pub struct ContainerStats {
    runtime: Arc<Runtime>,
    descs: Vec<Desc>,
}

/// The metrics the collectors of this module add at scrape time.
pub const SCRAPE_TIME_METRICS: &[&str] = &[CPU, MEM, STORE];

const CPU: &str = "berth_container_cpu_seconds_total";
const MEM: &str = "berth_container_memory_bytes";

impl ContainerStats {
    pub fn new(runtime: Arc<Runtime>) -> ContainerStats {
        let labels = vec!["service".to_string(), "container".to_string()];
        let descs = [
            (CPU, "CPU time used by the container."),
            (MEM, "Memory the container uses now."),
        ]
        .into_iter()
        .filter_map(|(n, h)| Desc::new(n.into(), h.into(), labels.clone(), Default::default()).ok())
        .collect();
        ContainerStats { runtime, descs }
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.into());
    l
}

impl Collector for ContainerStats {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut cpu = MetricFamily::default();
        cpu.set_name(CPU.into());
        cpu.set_help("CPU time used by the container.".into());
        cpu.set_field_type(MetricType::COUNTER);
        let mut mem = MetricFamily::default();
        mem.set_name(MEM.into());
        mem.set_help("Memory the container uses now.".into());
        mem.set_field_type(MetricType::GAUGE);
        let containers = self.runtime.list().unwrap_or_default();
        for c in containers {
            if !matches!(c.state, ContainerState::Running { .. }) {
                continue;
            }
            let Ok(stats) = self.runtime.stats(&c.id) else {
                continue;
            };
            let service = c.labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
            let labels = vec![label("container", &c.id), label("service", &service)];
            let mut m = Metric::default();
            m.set_label(labels.clone());
            let mut counter = Counter::default();
            counter.set_value(stats.cpu_usage_ns as f64 / 1e9);
            m.set_counter(counter);
            cpu.mut_metric().push(m);
            let mut m = Metric::default();
            m.set_label(labels);
            let mut gauge = Gauge::default();
            gauge.set_value(stats.memory_bytes as f64);
            m.set_gauge(gauge);
            mem.mut_metric().push(m);
        }
        vec![cpu, mem]
    }
}

/// `berth_store_bytes{part}`: disk used under the state dir, by part, walked
/// at most once a minute (a scrape in between gets the cached figures).
#[derive(Debug)]
pub struct StoreSize {
    state_dir: std::path::PathBuf,
    desc: Desc,
    cache: std::sync::Mutex<Option<CachedSizes>>,
}

const STORE: &str = "berth_store_bytes";
/// When the state dir was walked, and bytes per part.
type CachedSizes = (std::time::Instant, Vec<(&'static str, u64)>);
/// How long a walk of the state dir is reused.
const STORE_CACHE: std::time::Duration = std::time::Duration::from_secs(60);
/// The parts of the state dir, as `part` label values.
pub const STORE_PARTS: &[&str] = &["blobs", "layers", "containers", "volumes", "logs", "db"];

impl StoreSize {
    pub fn new(state_dir: std::path::PathBuf) -> Option<StoreSize> {
        let desc = Desc::new(
            STORE.into(),
            "Bytes on disk under the state dir, by part.".into(),
            vec!["part".into()],
            Default::default(),
        )
        .ok()?;
        Some(StoreSize {
            state_dir,
            desc,
            cache: std::sync::Mutex::new(None),
        })
    }

    fn sizes(&self) -> Vec<(&'static str, u64)> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, sizes)) = cache.as_ref() {
            if at.elapsed() < STORE_CACHE {
                return sizes.clone();
            }
        }
        let sizes: Vec<(&'static str, u64)> = STORE_PARTS
            .iter()
            .map(|part| (*part, disk_usage(&self.state_dir.join(part))))
            .collect();
        *cache = Some((std::time::Instant::now(), sizes.clone()));
        sizes
    }
}

/// Bytes allocated on disk under `path` (like `du -s`, links not followed,
/// hard links counted once); 0 when it does not exist.
pub fn disk_usage(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

impl Collector for StoreSize {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut family = MetricFamily::default();
        family.set_name(STORE.into());
        family.set_help("Bytes on disk under the state dir, by part.".into());
        family.set_field_type(MetricType::GAUGE);
        for (part, bytes) in self.sizes() {
            let mut m = Metric::default();
            m.set_label(vec![label("part", part)]);
            let mut g = Gauge::default();
            g.set_value(bytes as f64);
            m.set_gauge(g);
            family.mut_metric().push(m);
        }
        vec![family]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_blocks_once_per_inode_and_not_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::hard_link(d.join("a"), d.join("b")).unwrap();
        std::os::unix::fs::symlink("/usr", d.join("usr")).unwrap();
        let total = disk_usage(d);
        assert!(
            (64 * 1024..64 * 1024 + 3 * 8192).contains(&total),
            "{total}"
        );
        assert_eq!(disk_usage(&d.join("missing")), 0);
    }
}
