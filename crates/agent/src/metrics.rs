//! The agent's Prometheus metrics (OpenMetrics text at `GET /metrics` on the API socket).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set with one `result` or `reason` value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `success`, `failure`, or a cold start's reason.
    pub outcome: String,
}

/// Every metric the agent exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Checkpoints by outcome.
    pub checkpoints: Family<Outcome, Counter>,
    /// Seconds from trigger to a Ready snapshot.
    pub checkpoint_seconds: Histogram,
    /// Bytes of checkpoint images written.
    pub checkpoint_bytes: Counter,
    /// Bytes uploaded to repositories: new chunks only, compressed.
    pub uploaded_bytes: Counter,
    /// Restores by outcome.
    pub restores: Family<Outcome, Counter>,
    /// Checkpoint images of restores, by where they came from (`cached`, `assembled`).
    pub restore_images: Family<Outcome, Counter>,
    /// Seconds to restore a Pod (fetch and engine restore).
    pub restore_seconds: Histogram,
    /// Pods started cold although a policy governs them, by reason.
    pub cold_starts: Family<Outcome, Counter>,
    /// Lazy restores that ended, by outcome (`complete`, `failed`).
    pub lazy_restores: Family<Outcome, Counter>,
    /// Seconds from the start of a lazy restore until the Pod ran.
    pub lazy_resume_seconds: Histogram,
    /// Seconds from the start of a lazy restore until all its memory was in.
    pub lazy_resident_seconds: Histogram,
    /// Page faults served on demand during lazy restores.
    pub lazy_demand_faults: Counter,
    /// 99th percentile of a lazy restore's fault service time, in seconds (per restore).
    pub lazy_fault_p99_seconds: Histogram,
    /// Bytes of recorded working sets brought in first by lazy restores.
    pub lazy_prefetched_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("podsnap");
        let checkpoints = Family::<Outcome, Counter>::default();
        let checkpoint_seconds = Histogram::new(exponential_buckets(0.1, 2.0, 12));
        let checkpoint_bytes = Counter::default();
        let uploaded_bytes = Counter::default();
        let restores = Family::<Outcome, Counter>::default();
        let restore_images = Family::<Outcome, Counter>::default();
        let restore_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        let cold_starts = Family::<Outcome, Counter>::default();
        let lazy_restores = Family::<Outcome, Counter>::default();
        let lazy_resume_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let lazy_resident_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        let lazy_demand_faults = Counter::default();
        let lazy_fault_p99_seconds = Histogram::new(exponential_buckets(0.000_005, 2.0, 14));
        let lazy_prefetched_bytes = Counter::default();
        registry.register(
            "lazy_restores",
            "Lazy restores that ended, by outcome",
            lazy_restores.clone(),
        );
        registry.register(
            "lazy_restore_resume_seconds",
            "Time from the start of a lazy restore until the Pod ran",
            lazy_resume_seconds.clone(),
        );
        registry.register(
            "lazy_restore_resident_seconds",
            "Time from the start of a lazy restore until all its memory was in",
            lazy_resident_seconds.clone(),
        );
        registry.register(
            "lazy_restore_demand_faults",
            "Page faults served on demand during lazy restores",
            lazy_demand_faults.clone(),
        );
        registry.register(
            "lazy_restore_fault_p99_seconds",
            "99th percentile of each lazy restore's fault service time",
            lazy_fault_p99_seconds.clone(),
        );
        registry.register(
            "lazy_restore_prefetched_bytes",
            "Bytes of recorded working sets brought in first by lazy restores",
            lazy_prefetched_bytes.clone(),
        );
        registry.register(
            "checkpoints",
            "Checkpoints taken, by outcome",
            checkpoints.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "Time from trigger to a stored snapshot",
            checkpoint_seconds.clone(),
        );
        registry.register(
            "checkpoint_bytes",
            "Bytes of checkpoint images written",
            checkpoint_bytes.clone(),
        );
        registry.register(
            "uploaded_bytes",
            "Bytes uploaded to snapshot repositories (new chunks, compressed)",
            uploaded_bytes.clone(),
        );
        registry.register(
            "restores",
            "Pods restored from snapshots, by outcome",
            restores.clone(),
        );
        registry.register(
            "restore_images",
            "Checkpoint images of restores, by source: the node's cache or assembled from the repository",
            restore_images.clone(),
        );
        registry.register(
            "restore_duration_seconds",
            "Time to fetch and restore a Pod",
            restore_seconds.clone(),
        );
        registry.register(
            "cold_starts",
            "Pods governed by a policy that started cold, by reason",
            cold_starts.clone(),
        );
        Self {
            registry: Arc::new(registry),
            checkpoints,
            checkpoint_seconds,
            checkpoint_bytes,
            uploaded_bytes,
            restores,
            restore_images,
            restore_seconds,
            cold_starts,
            lazy_restores,
            lazy_resume_seconds,
            lazy_resident_seconds,
            lazy_demand_faults,
            lazy_fault_p99_seconds,
            lazy_prefetched_bytes,
        }
    }
}

impl Metrics {
    /// Records a lazy restore that ended.
    pub fn record_lazy_restore(&self, p: &podsnap_engine::RestoreProgress) {
        Self::count(&self.lazy_restores, &p.state.to_ascii_lowercase());
        self.lazy_resume_seconds.observe(p.seconds_to_resume);
        if let Some(s) = p.seconds_to_resident {
            self.lazy_resident_seconds.observe(s);
        }
        self.lazy_demand_faults.inc_by(p.demand_faults);
        self.lazy_fault_p99_seconds.observe(p.fault_p99_us / 1e6);
        self.lazy_prefetched_bytes.inc_by(p.prefetched_bytes);
    }

    /// Counts one event of `family` with `outcome`.
    pub fn count(family: &Family<Outcome, Counter>, outcome: &str) {
        family
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The metrics in OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
