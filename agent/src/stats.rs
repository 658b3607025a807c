//! Per-container CPU, memory and pids, read from each container's cgroup when
//! Prometheus scrapes or `GET /v1/stats` asks (no background polling, no stale
//! series for removed containers).

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::control::LABEL_SERVICE;
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
            let memory_limit_bytes = c
                .labels
                .get(crate::control::LABEL_SPEC)
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .and_then(|v| berth_core::spec::ContainerSpec::from_stored(&v).ok())
                .and_then(|spec| spec.memory_bytes);
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
