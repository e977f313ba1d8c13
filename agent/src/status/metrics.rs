//! Prometheus metrics, prefix `driftless_`. Labels are bounded: source, kind, action, result,
//! health, reason, state, version, provider, revision (one series per source: the old revision's is
//! removed).
//! No URL, secret or object name ever becomes a label.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::report::Reason;
use crate::status::model::SyncState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub source: String,
    /// `success`, `failure` or `prune_held`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub source: String,
    /// FetchFailed, RenderFailed, ValidationFailed, ApplyFailed, HealthCheckFailed, PruneFailed...
    pub reason: Reason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub source: String,
    /// `Kind` or `Kind.group`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub source: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    pub source: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub source: String,
    /// A [`SyncState`] by name: `Pending`, `Synced`, `Progressing`, `OutOfSync`, `Failed`,
    /// `PruneHeld` or `RolledBack`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub source: String,
    pub revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub source: String,
    /// Where a commit status or notification goes: `github`, `gitlab`, `gitea`, `webhook` or `slack`.
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_buckets() -> Histogram {
    // 5 ms to about 80 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn lead_time_buckets() -> Histogram {
    // 0.25 s to about 68 minutes
    Histogram::new(exponential_buckets(0.25, 2.0, 15))
}

/// Every metric of the agent, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub sync_total: Family<ResultLabels, Counter>,
    pub sync_failures_total: Family<FailureLabels, Counter>,
    pub sync_duration: HistogramFamily<SourceLabels>,
    pub last_sync_timestamp: Family<SourceLabels, FloatGauge>,
    pub last_successful_sync_timestamp: Family<SourceLabels, FloatGauge>,
    /// When the source was last known in sync with git (see [`Metrics::set_in_sync`]).
    pub last_in_sync_timestamp: Family<SourceLabels, FloatGauge>,
    /// One-hot over every [`SyncState`]: the source's state is 1, the others 0.
    pub source_state: Family<StateLabels, Gauge>,
    /// The source's poll interval.
    pub source_interval: Family<SourceLabels, FloatGauge>,
    pub source_info: Family<InfoLabels, Gauge>,
    pub objects: Family<HealthLabels, Gauge>,
    pub apply_total: Family<ActionLabels, Counter>,
    pub drift_detected_total: Family<KindLabels, Counter>,
    pub drift_corrections_total: Family<KindLabels, Counter>,
    pub fights_total: Family<SourceLabels, Counter>,
    pub prune_held_total: Family<SourceLabels, Counter>,
    pub panics_total: Family<SourceLabels, Counter>,
    pub git_fetch_duration: HistogramFamily<SourceLabels>,
    pub git_fetch_errors_total: Family<SourceLabels, Counter>,
    pub commit_to_healthy: HistogramFamily<SourceLabels>,
    pub notifications_sent_total: Family<ProviderLabels, Counter>,
    pub notification_failures_total: Family<ProviderLabels, Counter>,
    pub build_info: Family<VersionLabels, Gauge>,
    pub leader: Gauge,
    /// The revision each source's info series carries, to remove the old one.
    revisions: Mutex<HashMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("driftless");
        let m = Metrics {
            sync_total: Family::default(),
            sync_failures_total: Family::default(),
            sync_duration: Family::new_with_constructor(duration_buckets),
            last_sync_timestamp: Family::default(),
            last_successful_sync_timestamp: Family::default(),
            last_in_sync_timestamp: Family::default(),
            source_state: Family::default(),
            source_interval: Family::default(),
            source_info: Family::default(),
            objects: Family::default(),
            apply_total: Family::default(),
            drift_detected_total: Family::default(),
            drift_corrections_total: Family::default(),
            fights_total: Family::default(),
            prune_held_total: Family::default(),
            panics_total: Family::default(),
            git_fetch_duration: Family::new_with_constructor(duration_buckets),
            git_fetch_errors_total: Family::default(),
            commit_to_healthy: Family::new_with_constructor(lead_time_buckets),
            notifications_sent_total: Family::default(),
            notification_failures_total: Family::default(),
            build_info: Family::default(),
            leader: Gauge::default(),
            revisions: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register("sync", "Reconciles of a source, by result", m.sync_total.clone());
        registry.register("sync_failures", "Failed reconciles, by the stage that failed", m.sync_failures_total.clone());
        registry.register_with_unit("sync_duration", "Duration of a reconcile", Unit::Seconds, m.sync_duration.clone());
        registry.register_with_unit(
            "last_sync_timestamp",
            "When the source was last reconciled (Unix time)",
            Unit::Seconds,
            m.last_sync_timestamp.clone(),
        );
        registry.register_with_unit(
            "last_successful_sync_timestamp",
            "When the source was last reconciled without failure (Unix time)",
            Unit::Seconds,
            m.last_successful_sync_timestamp.clone(),
        );
        registry.register_with_unit(
            "last_in_sync_timestamp",
            "When the source was last known in sync with git: a reconcile that did not fail, or a remote check that found the applied commit unchanged while the source was not Failed (Unix time)",
            Unit::Seconds,
            m.last_in_sync_timestamp.clone(),
        );
        registry.register("source_state", "The source's state: 1 for the current one, 0 for every other", m.source_state.clone());
        registry.register_with_unit("source_interval", "The source's poll interval", Unit::Seconds, m.source_interval.clone());
        registry.register("source_info", "The revision a source has applied (always 1)", m.source_info.clone());
        registry.register("objects", "Objects a source manages, by health", m.objects.clone());
        registry.register("apply", "Objects handled by reconciles, by action", m.apply_total.clone());
        registry.register("drift_detected", "Owned objects found drifted", m.drift_detected_total.clone());
        registry.register("drift_corrections", "Drifted objects corrected", m.drift_corrections_total.clone());
        registry.register("fights", "Objects another writer kept changing (backed off)", m.fights_total.clone());
        registry.register("prune_held", "Prunes held by a safeguard", m.prune_held_total.clone());
        registry.register("panics", "Source loops that panicked and were restarted", m.panics_total.clone());
        registry.register_with_unit(
            "git_fetch_duration",
            "Duration of the remote check and fetch of a new commit",
            Unit::Seconds,
            m.git_fetch_duration.clone(),
        );
        registry.register("git_fetch_errors", "Failed remote checks or fetches", m.git_fetch_errors_total.clone());
        registry.register_with_unit(
            "commit_to_healthy",
            "From noticing a commit to every member Healthy",
            Unit::Seconds,
            m.commit_to_healthy.clone(),
        );
        registry.register(
            "notifications_sent",
            "Commit statuses and notifications delivered, by provider",
            m.notifications_sent_total.clone(),
        );
        registry.register(
            "notification_failures",
            "Commit statuses and notifications not delivered (after retries, or dropped on a full queue), by provider",
            m.notification_failures_total.clone(),
        );
        registry.register("build_info", "The running version (always 1)", m.build_info.clone());
        registry.register("leader", "1 when this replica leads and writes, 0 on standby", m.leader.clone());
        m.build_info.get_or_create(&VersionLabels { version: crate::VERSION.into() }).set(1);
        Metrics { registry, ..m }
    }

    /// Counts the open watches of the agent's members (`driftless_watches`).
    pub fn count_watches(&mut self, open: Gauge) {
        self.registry.register("watches", "Watches of managed objects open now, shared by every source", open);
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // writing to a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Moves a source's info series to a new revision.
    pub fn set_revision(&self, source: &str, revision: &str) {
        let mut revisions = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = revisions.insert(source.to_string(), revision.to_string()) {
            if old != revision {
                self.source_info.remove(&InfoLabels { source: source.into(), revision: old });
            }
        }
        self.source_info.get_or_create(&InfoLabels { source: source.into(), revision: revision.into() }).set(1);
    }

    /// Sets a source's state series: `state` to 1, every other state to 0 (all seven exist, so
    /// an alert on one state has a series whatever the source does).
    pub fn set_state(&self, source: &str, state: SyncState) {
        for s in SyncState::ALL {
            let labels = StateLabels { source: source.into(), state: s.as_str().into() };
            self.source_state.get_or_create(&labels).set(i64::from(s == state));
        }
    }

    /// Records the source's poll interval.
    pub fn set_interval(&self, source: &str, interval: Duration) {
        self.source_interval.get_or_create(&Metrics::source(source)).set(interval.as_secs_f64());
    }

    /// Records that the source was in sync with git at `at`.
    pub fn set_in_sync(&self, source: &str, at: SystemTime) {
        let unix = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        self.last_in_sync_timestamp.get_or_create(&Metrics::source(source)).set(unix);
    }

    /// Sets the per-health object counts of a source (every health, zeros included).
    pub fn set_objects(&self, source: &str, counts: &[(&'static str, i64)]) {
        for (health, n) in counts {
            self.objects.get_or_create(&HealthLabels { source: source.into(), health: (*health).into() }).set(*n);
        }
    }

    /// Creates a source's notification series at zero, one per configured provider, so a rate
    /// or an alert on them has a series before the first delivery.
    pub fn zero_series(&self, source: &str, providers: &[&str]) {
        for provider in providers {
            let labels = Metrics::provider(source, provider);
            let _ = self.notifications_sent_total.get_or_create(&labels);
            let _ = self.notification_failures_total.get_or_create(&labels);
        }
    }

    pub fn provider(source: &str, provider: &str) -> ProviderLabels {
        ProviderLabels { source: source.into(), provider: provider.into() }
    }

    pub fn source(source: &str) -> SourceLabels {
        SourceLabels { source: source.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.sync_total.get_or_create(&ResultLabels { source: "shop".into(), result: "success".into() }).inc();
        m.sync_duration.get_or_create(&Metrics::source("shop")).observe(0.2);
        m.last_sync_timestamp.get_or_create(&Metrics::source("shop")).set(1.7e9);
        let text = m.encode();
        for name in [
            "driftless_sync_total{source=\"shop\",result=\"success\"} 1",
            "# TYPE driftless_sync_duration_seconds histogram",
            "driftless_last_sync_timestamp_seconds{source=\"shop\"}",
            "driftless_build_info{version=\"",
            "# TYPE driftless_leader gauge",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn notification_series_start_at_zero_per_provider() {
        let m = Metrics::new();
        m.zero_series("shop", &["github", "slack"]);
        let text = m.encode();
        assert!(text.contains("driftless_notification_failures_total{source=\"shop\",provider=\"github\"} 0"), "{text}");
        assert!(text.contains("driftless_notification_failures_total{source=\"shop\",provider=\"slack\"} 0"), "{text}");
        assert!(text.contains("driftless_notifications_sent_total{source=\"shop\",provider=\"slack\"} 0"), "{text}");
        assert!(!text.contains("provider=\"gitlab\""));
    }

    #[test]
    fn the_state_series_are_one_hot_over_every_state() {
        let m = Metrics::new();
        m.set_state("shop", SyncState::Pending);
        m.set_state("web", SyncState::Synced);
        m.set_state("shop", SyncState::Failed);
        let text = m.encode();
        let value = |source: &str, state: &str| {
            let series = format!("driftless_source_state{{source=\"{source}\",state=\"{state}\"}} ");
            let line = text.lines().find_map(|l| l.strip_prefix(series.as_str()));
            line.unwrap_or_else(|| panic!("{series} missing from:\n{text}")).trim().to_string()
        };
        for state in SyncState::ALL {
            let name = state.as_str();
            assert_eq!(value("shop", name), if state == SyncState::Failed { "1" } else { "0" }, "shop {name}");
            assert_eq!(value("web", name), if state == SyncState::Synced { "1" } else { "0" }, "web {name}");
        }
        assert_eq!(text.matches("driftless_source_state{").count(), 2 * SyncState::ALL.len(), "{text}");
        assert!(text.contains("# TYPE driftless_source_state gauge"), "{text}");
    }

    #[test]
    fn interval_and_last_in_sync_are_seconds() {
        let m = Metrics::new();
        m.set_interval("shop", Duration::from_millis(2500));
        m.set_in_sync("shop", SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        m.set_in_sync("shop", SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_060));
        let text = m.encode();
        assert!(text.contains("# TYPE driftless_source_interval_seconds gauge"), "{text}");
        assert!(text.contains("# UNIT driftless_source_interval_seconds seconds"), "{text}");
        assert!(text.contains("driftless_source_interval_seconds{source=\"shop\"} 2.5"), "{text}");
        assert!(text.contains("# TYPE driftless_last_in_sync_timestamp_seconds gauge"), "{text}");
        assert!(text.contains("driftless_last_in_sync_timestamp_seconds{source=\"shop\"} 1700000060"), "the latest time: {text}");
        assert_eq!(text.matches("driftless_last_in_sync_timestamp_seconds{").count(), 1);
    }

    #[test]
    fn a_new_revision_replaces_the_old_info_series() {
        let m = Metrics::new();
        m.set_revision("shop", "aaa");
        m.set_revision("shop", "bbb");
        m.set_revision("web", "ccc");
        let text = m.encode();
        assert!(!text.contains("revision=\"aaa\""));
        assert!(text.contains("driftless_source_info{source=\"shop\",revision=\"bbb\"} 1"));
        assert!(text.contains("driftless_source_info{source=\"web\",revision=\"ccc\"} 1"));
    }
}
