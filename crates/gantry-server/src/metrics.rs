//! Prometheus metrics (`GET /metrics`), with prometheus-client.

use gantry_api::{JobStatus, PipelineStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: String,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Every metric, and the registry that writes them.
pub(crate) struct Metrics {
    registry: Registry,
    pub http: HistFamily<HttpLabels>,
    pub pipelines: Family<StatusLabel, Counter>,
    pub jobs: Family<StatusLabel, Counter>,
    pub queue_wait: Histogram,
    pub job_duration: Histogram,
    pub queue_depth: Gauge,
    pub agents: Gauge,
    pub deliveries: Family<ResultLabel, Counter>,
    pub log_bytes: Counter,
    pub notifications: Family<ResultLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let http: HistFamily<HttpLabels> = Family::new_with_constructor(http_buckets);
        registry.register(
            "gantry_http_request_duration_seconds",
            "HTTP request durations by route template, method and status",
            http.clone(),
        );
        let pipelines = Family::<StatusLabel, Counter>::default();
        registry.register(
            "gantry_pipelines",
            "Pipelines that ended, by final status",
            pipelines.clone(),
        );
        let jobs = Family::<StatusLabel, Counter>::default();
        registry.register(
            "gantry_jobs",
            "Jobs that ended, by final status",
            jobs.clone(),
        );
        let queue_wait = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        registry.register(
            "gantry_job_queue_wait_seconds",
            "Time from a job becoming pending to an agent taking it",
            queue_wait.clone(),
        );
        let job_duration = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        registry.register(
            "gantry_job_duration_seconds",
            "Time from an agent taking a job to its end",
            job_duration.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "gantry_queue_depth",
            "Jobs waiting for an agent",
            queue_depth.clone(),
        );
        let agents = Gauge::default();
        registry.register(
            "gantry_agents_connected",
            "Agents heard from within the lease timeout",
            agents.clone(),
        );
        let deliveries = Family::<ResultLabel, Counter>::default();
        registry.register(
            "gantry_webhook_deliveries",
            "Webhook deliveries by result (accepted, duplicate, ignored, unauthorized, invalid)",
            deliveries.clone(),
        );
        let log_bytes = Counter::default();
        registry.register(
            "gantry_log_bytes",
            "Log bytes appended by agents",
            log_bytes.clone(),
        );
        let notifications = Family::<ResultLabel, Counter>::default();
        registry.register(
            "gantry_notifications",
            "Notifications of notify: rules by result (sent, failed for good)",
            notifications.clone(),
        );
        Metrics {
            registry,
            http,
            pipelines,
            jobs,
            queue_wait,
            job_duration,
            queue_depth,
            agents,
            deliveries,
            log_bytes,
            notifications,
        }
    }

    /// Counts a webhook delivery's result.
    pub fn delivery(&self, result: &str) {
        self.deliveries
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts a notification sent, or failed for good.
    pub fn notification(&self, result: &str) {
        self.notifications
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts a job that ended.
    pub fn job_ended(&self, status: JobStatus) {
        self.jobs
            .get_or_create(&StatusLabel {
                status: status.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a pipeline that ended.
    pub fn pipeline_ended(&self, status: PipelineStatus) {
        self.pipelines
            .get_or_create(&StatusLabel {
                status: status.as_str().to_owned(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Milliseconds as seconds, for histograms.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}
