//! Every metric berthd exports, declared in one place. Label values are
//! bounded (no error strings, no digests outside the info metric).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `berth_build_info` | gauge | version | 1, labelled with the berthd version |
//! | `berth_manifest_apply_errors_total` | counter | source | manifests refused (invalid or unstorable), by source kind: api, file, url, git |
//! | `berth_revisions_applied_total` | counter | source | revisions recorded, by source kind |
//! | `berth_current_revision` | gauge | | number of the current revision (0 before the first) |
//! | `berth_http_requests_total` | counter | listener, route, code | API and read-only requests served; route is the matched route template |
//! | `berth_events_total` | counter | kind | events emitted, by kind |
//! | `berth_image_pull_bytes_total` | counter | | bytes downloaded from registries by pulls |
//! | `berth_image_pull_duration_seconds` | histogram | | duration of successful pulls |
//! | `berth_registry_errors_total` | counter | registry, kind | registry failures by registry host and bounded kind |
//! | `berth_reconcile_duration_seconds` | histogram | | duration of one reconcile pass |
//! | `berth_reconcile_errors_total` | counter | | reconcile passes that failed |
//! | `berth_services_desired_replicas` | gauge | service | replicas the current revision asks for |
//! | `berth_services_ready_replicas` | gauge | service | replicas ready now (not draining) |
//! | `berth_containers` | gauge | state | containers on this host by state (running, exited, created, unknown) |
//! | `berth_container_restarts_total` | counter | service | replicas replaced after an exit or failed health check |
//! | `berth_container_cpu_seconds_total` | counter | service, container | CPU time used, read from the cgroup at scrape |
//! | `berth_container_memory_bytes` | gauge | service, container | memory in use, read from the cgroup at scrape |
//! | `berth_rollouts_total` | counter | service, result | finished rollouts: success, failed |
//! | `berth_rollout_duration_seconds` | histogram | service | from the first new replica to the last old one gone |
//! | `berth_health_check_failures_total` | counter | service | failed health probes (outside start_period) |
//! | `berth_drift_total` | counter | service, kind | drift corrected: missing (replica gone), unwanted (replica nobody wants) |
//! | `berth_service_image_info` | gauge | service, digest | 1 for the digest each service runs now |
//! | `berth_oom_kills_total` | counter | service | replicas the kernel OOM-killed |
//! | `berth_host_draining` | gauge | | 1 while the host is drained (`berthctl drain on`) |
//! | `berth_replicas_draining` | gauge | service | replicas being drained and stopped now |
//! | `berth_last_reconcile_success_timestamp_seconds` | gauge | | Unix time the last reconcile pass succeeded |
//! | `berth_store_bytes` | gauge | part | bytes on disk under the state dir: blobs, layers, containers, volumes, logs, db (cached 60 s) |
//! | `process_*` | | | the agent's own CPU, memory, fds, start time (the prometheus crate's process collector) |
//! | `berth_dns_server_up` | gauge | | 1 while berth-dns (service discovery) serves the bridge gateway, checked every 2 s |
//! | `berth_dns_server_starts_total` | counter | reason | berth-dns processes started: missing (none ran), replaced (binary or arguments changed) |
//! | `berth_fleet_etcd_up` | gauge | | 1 while the fleet's etcd answers (only with `--fleet-etcd`) |
//! | `berth_fleet_slots_held` | gauge | | rollout slots of the fleet this host holds now (0 or 1) |
//! | `berth_fleet_gated_waiting_seconds` | gauge | | how long the manifest waiting for a fleet slot has waited (0: none waits) |
//! | `berth_fleet_halts_total` | counter | | manifests this host halted for the fleet (its rollout failed) |

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The agent's metrics and the registry they live in.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub build_info: IntGaugeVec,
    pub manifest_apply_errors: IntCounterVec,
    pub revisions_applied: IntCounterVec,
    pub current_revision: IntGauge,
    pub http_requests: IntCounterVec,
    pub events: IntCounterVec,
    pub image_pull_bytes: IntCounter,
    pub image_pull_duration: Histogram,
    pub registry_errors: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: IntCounter,
    pub services_desired: IntGaugeVec,
    pub services_ready: IntGaugeVec,
    pub containers: IntGaugeVec,
    pub container_restarts: IntCounterVec,
    pub rollouts: IntCounterVec,
    pub rollout_duration: HistogramVec,
    pub health_check_failures: IntCounterVec,
    pub drift: IntCounterVec,
    pub service_image_info: IntGaugeVec,
    pub oom_kills: IntCounterVec,
    pub host_draining: IntGauge,
    pub replicas_draining: IntGaugeVec,
    pub last_reconcile_success: IntGauge,
    pub dns_server_up: IntGauge,
    pub dns_server_starts: IntCounterVec,
    pub fleet_etcd_up: IntGauge,
    pub fleet_slots_held: IntGauge,
    pub fleet_gated_waiting_seconds: IntGauge,
    pub fleet_halts: IntCounter,
}

/// The `kind` label of `berth_drift_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// A replica that should run was gone.
    Missing,
    /// A replica nobody wants was running.
    Unwanted,
}

impl Drift {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Drift::Missing => "missing",
            Drift::Unwanted => "unwanted",
        }
    }
}

/// Source kinds used as the `source` label.
pub const SOURCE_KINDS: &[&str] = &["api", "file", "url", "git"];

impl Metrics {
    /// Builds and registers every metric.
    #[allow(clippy::expect_used)] // registration only fails on a duplicate name: a programming error
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let manifest_apply_errors = counter_vec(
            "berth_manifest_apply_errors_total",
            "Manifests refused (invalid or unstorable), by source kind.",
            &["source"],
        );
        let revisions_applied = counter_vec(
            "berth_revisions_applied_total",
            "Revisions recorded, by source kind.",
            &["source"],
        );
        let http_requests = counter_vec(
            "berth_http_requests_total",
            "HTTP requests served, by listener, route template and status code.",
            &["listener", "route", "code"],
        );
        let events = counter_vec("berth_events_total", "Events emitted, by kind.", &["kind"]);
        let registry_errors = counter_vec(
            "berth_registry_errors_total",
            "Registry failures, by registry host and kind.",
            &["registry", "kind"],
        );
        let image_pull_bytes = IntCounter::new(
            "berth_image_pull_bytes_total",
            "Bytes downloaded from registries by pulls.",
        )
        .expect("metric");
        registry
            .register(Box::new(image_pull_bytes.clone()))
            .expect("register");
        let image_pull_duration = Histogram::with_opts(
            HistogramOpts::new(
                "berth_image_pull_duration_seconds",
                "Duration of successful image pulls.",
            )
            .buckets(vec![
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
        )
        .expect("metric");
        registry
            .register(Box::new(image_pull_duration.clone()))
            .expect("register");
        let build_info = IntGaugeVec::new(
            Opts::new("berth_build_info", "1, labelled with the berthd version."),
            &["version"],
        )
        .expect("metric");
        registry
            .register(Box::new(build_info.clone()))
            .expect("register");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let current_revision = IntGauge::new(
            "berth_current_revision",
            "Number of the current revision (0 before the first).",
        )
        .expect("metric");
        registry
            .register(Box::new(current_revision.clone()))
            .expect("register");
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "berth_reconcile_duration_seconds",
                "Duration of one reconcile pass.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("metric");
        registry
            .register(Box::new(reconcile_duration.clone()))
            .expect("register");
        let reconcile_errors = IntCounter::new(
            "berth_reconcile_errors_total",
            "Reconcile passes that failed.",
        )
        .expect("metric");
        registry
            .register(Box::new(reconcile_errors.clone()))
            .expect("register");
        let services_desired = gauge_vec(
            "berth_services_desired_replicas",
            "Replicas the current revision asks for.",
            &["service"],
        );
        let services_ready = gauge_vec(
            "berth_services_ready_replicas",
            "Replicas ready now (not draining).",
            &["service"],
        );
        let containers = gauge_vec(
            "berth_containers",
            "Containers on this host by state.",
            &["state"],
        );
        let container_restarts = counter_vec(
            "berth_container_restarts_total",
            "Replicas replaced after an exit or a failed health check.",
            &["service"],
        );
        let rollouts = counter_vec(
            "berth_rollouts_total",
            "Finished rollouts by result.",
            &["service", "result"],
        );
        let rollout_duration = HistogramVec::new(
            HistogramOpts::new("berth_rollout_duration_seconds", "Rollout duration.")
                .buckets(vec![0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
            &["service"],
        )
        .expect("metric");
        registry
            .register(Box::new(rollout_duration.clone()))
            .expect("register");
        let health_check_failures = counter_vec(
            "berth_health_check_failures_total",
            "Failed health probes (outside start_period).",
            &["service"],
        );
        let drift = counter_vec(
            "berth_drift_total",
            "Drift corrected, by kind.",
            &["service", "kind"],
        );
        let service_image_info = gauge_vec(
            "berth_service_image_info",
            "1 for the image digest each service runs now.",
            &["service", "digest"],
        );
        let oom_kills = counter_vec(
            "berth_oom_kills_total",
            "Replicas the kernel OOM-killed.",
            &["service"],
        );
        let replicas_draining = gauge_vec(
            "berth_replicas_draining",
            "Replicas being drained and stopped now.",
            &["service"],
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let host_draining = gauge(
            "berth_host_draining",
            "1 while the host is drained (every readiness endpoint answers 503).",
        );
        let last_reconcile_success = gauge(
            "berth_last_reconcile_success_timestamp_seconds",
            "Unix time the last reconcile pass succeeded.",
        );
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("register");
        let dns_server_up = IntGauge::new(
            "berth_dns_server_up",
            "1 while berth-dns serves the bridge gateway.",
        )
        .expect("metric");
        registry
            .register(Box::new(dns_server_up.clone()))
            .expect("register");
        let dns_server_starts = counter_vec(
            "berth_dns_server_starts_total",
            "berth-dns processes started, by reason: missing, replaced.",
            &["reason"],
        );
        for reason in ["missing", "replaced"] {
            dns_server_starts.with_label_values(&[reason]);
        }
        let fleet_etcd_up = gauge(
            "berth_fleet_etcd_up",
            "1 while the fleet's etcd answers (only with --fleet-etcd).",
        );
        let fleet_slots_held = gauge(
            "berth_fleet_slots_held",
            "Rollout slots of the fleet this host holds now.",
        );
        let fleet_gated_waiting_seconds = gauge(
            "berth_fleet_gated_waiting_seconds",
            "How long the manifest waiting for a fleet slot has waited (0: none waits).",
        );
        let fleet_halts = IntCounter::new(
            "berth_fleet_halts_total",
            "Manifests this host halted for the fleet (its rollout failed).",
        )
        .expect("metric");
        registry
            .register(Box::new(fleet_halts.clone()))
            .expect("register");
        // Pre-create the bounded label sets so the series exist from the start.
        for source in SOURCE_KINDS {
            manifest_apply_errors.with_label_values(&[source]);
            revisions_applied.with_label_values(&[source]);
        }
        Metrics {
            registry,
            build_info,
            manifest_apply_errors,
            revisions_applied,
            current_revision,
            http_requests,
            events,
            image_pull_bytes,
            image_pull_duration,
            registry_errors,
            reconcile_duration,
            reconcile_errors,
            services_desired,
            services_ready,
            containers,
            container_restarts,
            rollouts,
            rollout_duration,
            health_check_failures,
            drift,
            service_image_info,
            oom_kills,
            host_draining,
            replicas_draining,
            last_reconcile_success,
            dns_server_up,
            dns_server_starts,
            fleet_etcd_up,
            fleet_slots_held,
            fleet_gated_waiting_seconds,
            fleet_halts,
        }
    }

    /// Counts one emitted event (`berth_events_total{kind}`).
    pub fn count_event(&self, kind: berth_core::vocab::EventKind) {
        self.events.with_label_values(&[kind.as_str()]).inc();
    }

    /// Counts an HTTP request served: listener, route template, status code.
    pub fn http_request(&self, listener: &str, route: &str, code: &str) {
        self.http_requests
            .with_label_values(&[listener, route, code])
            .inc();
    }

    /// Counts a refused manifest from a source kind (`api`, `file`, `url`, `git`).
    pub fn apply_refused(&self, source: &str) {
        self.manifest_apply_errors
            .with_label_values(&[source])
            .inc();
    }

    /// Counts a recorded revision from a source kind and makes it current.
    pub fn revision_recorded(&self, source: &str, number: u64) {
        self.revisions_applied.with_label_values(&[source]).inc();
        self.current_revision.set(number as i64);
    }

    /// Counts a registry failure by host and bounded kind.
    pub fn registry_error(&self, registry: &str, kind: &str) {
        self.registry_errors
            .with_label_values(&[registry, kind])
            .inc();
    }

    /// Counts a berth-dns process started, with why (`missing`, `replaced`).
    pub fn dns_server_started(&self, reason: &str) {
        self.dns_server_starts.with_label_values(&[reason]).inc();
    }

    /// A service's desired and ready replicas. Every per-service series
    /// exists from the first pass (at 0), so rates and alerts work before
    /// the first event.
    pub fn service_replicas(&self, service: &str, desired: u32, ready: u32) {
        self.container_restarts.with_label_values(&[service]);
        self.health_check_failures.with_label_values(&[service]);
        self.rollout_duration.with_label_values(&[service]);
        for result in ["success", "failed"] {
            self.rollouts.with_label_values(&[service, result]);
        }
        for kind in [Drift::Missing, Drift::Unwanted] {
            self.drift.with_label_values(&[service, kind.as_str()]);
        }
        self.services_desired
            .with_label_values(&[service])
            .set(i64::from(desired));
        self.services_ready
            .with_label_values(&[service])
            .set(i64::from(ready));
    }

    /// Drops a service no revision runs any more from the per-service gauges.
    pub fn service_gone(&self, service: &str) {
        self.services_desired.remove_label_values(&[service]).ok();
        self.services_ready.remove_label_values(&[service]).ok();
        self.set_image_info(service, None);
    }

    /// A finished rollout of `service` and how long it took, when known.
    pub fn rollout_finished(
        &self,
        service: &str,
        success: bool,
        took: Option<std::time::Duration>,
    ) {
        let result = if success { "success" } else { "failed" };
        self.rollouts.with_label_values(&[service, result]).inc();
        if let Some(d) = took {
            self.rollout_duration
                .with_label_values(&[service])
                .observe(d.as_secs_f64());
        }
    }

    /// Counts drift corrected for `service`.
    pub fn drift(&self, service: &str, kind: Drift) {
        self.drift
            .with_label_values(&[service, kind.as_str()])
            .inc();
    }

    /// Counts a replica replaced after an exit or a failed health check
    /// (and an OOM kill, when the kernel killed it).
    pub fn replica_failed(&self, service: &str, oom_killed: bool) {
        self.container_restarts.with_label_values(&[service]).inc();
        if oom_killed {
            self.oom_kills.with_label_values(&[service]).inc();
        }
    }

    /// Counts a failed health probe outside the start period.
    pub fn health_check_failed(&self, service: &str) {
        self.health_check_failures
            .with_label_values(&[service])
            .inc();
    }

    /// Containers on this host by state (`running`, `exited`, `created`, `unknown`).
    pub fn containers_by_state(&self, counts: &std::collections::BTreeMap<&str, i64>) {
        for state in ["running", "exited", "created", "unknown"] {
            self.containers
                .with_label_values(&[state])
                .set(counts.get(state).copied().unwrap_or(0));
        }
    }

    /// Replicas being drained now, per service (services without any vanish).
    pub fn replicas_draining(&self, per_service: &std::collections::BTreeMap<String, i64>) {
        self.replicas_draining.reset();
        for (service, n) in per_service {
            self.replicas_draining.with_label_values(&[service]).set(*n);
        }
    }

    /// `berth_service_image_info{service,digest}` is 1 for the digest
    /// `service` runs now (`None`: it runs none). Only this service's other
    /// digests are dropped, and only when its digest changed, so a no-op
    /// pass does one lookup.
    pub fn set_image_info(&self, service: &str, digest: Option<&str>) {
        use prometheus::core::Collector;
        if let Some(d) = digest {
            if self
                .service_image_info
                .with_label_values(&[service, d])
                .get()
                == 1
            {
                return;
            }
        }
        let mut stale = Vec::new();
        for family in self.service_image_info.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                };
                if label("service").as_deref() == Some(service) {
                    if let Some(d) = label("digest").filter(|d| Some(d.as_str()) != digest) {
                        stale.push(d);
                    }
                }
            }
        }
        for d in stale {
            self.service_image_info
                .remove_label_values(&[service, &d])
                .ok();
        }
        if let Some(d) = digest {
            self.service_image_info
                .with_label_values(&[service, d])
                .set(1);
        }
    }

    /// Every metric name berthd can export (series of a labelled metric appear
    /// only once a label value is used; the name is declared from the start):
    /// this registry's, the process collector's and the scrape-time ones.
    pub fn declared_names(&self) -> std::collections::BTreeSet<String> {
        use prometheus::core::Collector;
        let fields: [&dyn Collector; 30] = [
            &self.build_info,
            &self.manifest_apply_errors,
            &self.revisions_applied,
            &self.current_revision,
            &self.http_requests,
            &self.events,
            &self.image_pull_bytes,
            &self.image_pull_duration,
            &self.registry_errors,
            &self.reconcile_duration,
            &self.reconcile_errors,
            &self.services_desired,
            &self.services_ready,
            &self.containers,
            &self.container_restarts,
            &self.rollouts,
            &self.rollout_duration,
            &self.health_check_failures,
            &self.drift,
            &self.service_image_info,
            &self.oom_kills,
            &self.host_draining,
            &self.replicas_draining,
            &self.last_reconcile_success,
            &self.dns_server_up,
            &self.dns_server_starts,
            &self.fleet_etcd_up,
            &self.fleet_slots_held,
            &self.fleet_gated_waiting_seconds,
            &self.fleet_halts,
        ];
        let mut names: std::collections::BTreeSet<String> = fields
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect();
        names.extend(self.registry.gather().iter().map(|f| f.name().to_string()));
        names.extend(
            crate::stats::SCRAPE_TIME_METRICS
                .iter()
                .map(|n| n.to_string()),
        );
        names
    }

    /// Registers a collector read at scrape time (per-container stats).
    pub fn register_collector(&self, c: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(c) {
            tracing::warn!(error = %e, "collector not registered");
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_build_info_and_bounded_series() {
        let m = Metrics::new();
        m.manifest_apply_errors.with_label_values(&["api"]).inc();
        let text = m.render();
        assert!(
            text.contains(&format!(
                "berth_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(
            text.contains("berth_manifest_apply_errors_total{source=\"api\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_manifest_apply_errors_total{source=\"git\"} 0"),
            "{text}"
        );
    }
}
