//! Status: where users read what Driftless did. The HTTP server ([`http`]: health, readiness,
//! metrics, status API, push webhooks), Prometheus metrics ([`metrics`]), webhook verification
//! ([`webhook`]), Kubernetes Events and annotations on each source's ApplySet parent (here),
//! and `driftless status` ([`cli`]).
//!
//! Nothing here ever carries a credential or Secret data: URLs are redacted, messages come from
//! reports that name objects and causes only.

pub mod cli;
pub mod http;
pub mod metrics;
pub mod model;
pub mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::debug;

use crate::cluster::Cluster;
use crate::inventory::applyset;
use crate::keys;
use crate::manifest::{ObjectRef, ResourceType};
use crate::report::changes::Action;
use crate::report::{Reason, Report, State};
use metrics::Metrics;
use model::Statuses;
use webhook::RateLimit;

/// Field manager of the status annotations (separate from `driftless`, which owns the
/// inventory, so each writer can apply just its own fields).
pub const STATUS_MANAGER: &str = "driftless-status";
/// Field manager of the health annotation: only the run loop knows health, and a `driftless
/// sync` that applies the other status annotations must not remove it.
pub const HEALTH_MANAGER: &str = "driftless-health";

/// What the agent shares between its loops and its HTTP server.
pub struct Shared {
    pub statuses: Statuses,
    pub metrics: Arc<Metrics>,
    /// Asks a source's loop for an immediate remote check (replaced at each leadership term).
    pub triggers: std::sync::RwLock<HashMap<String, mpsc::Sender<()>>>,
    /// Per source, the file holding its webhook secret (read on each request, so it can rotate).
    pub webhook_secrets: HashMap<String, PathBuf>,
    /// Per source, the budget of accepted webhooks.
    pub rate_limits: Mutex<HashMap<String, RateLimit>>,
    /// Per source, the budget of refused webhooks (bad or missing proof), checked before any
    /// proof is: once spent, every webhook of the source is answered 429 until it refills.
    pub refusal_limits: Mutex<HashMap<String, RateLimit>>,
    /// Source loops still running (liveness).
    pub running: Arc<AtomicUsize>,
    /// Source loops that should be running: all of them while leading, none on standby.
    pub expected_loops: AtomicUsize,
}

impl Shared {
    /// Whether every source loop is alive.
    pub fn alive(&self) -> bool {
        self.running.load(Ordering::SeqCst) >= self.expected_loops.load(Ordering::SeqCst)
    }
}

/// Decrements the running-loop count when a loop ends, however it ends.
pub struct LoopGuard(pub Arc<AtomicUsize>);

impl LoopGuard {
    pub fn new(running: &Arc<AtomicUsize>) -> Self {
        running.fetch_add(1, Ordering::SeqCst);
        LoopGuard(running.clone())
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a source loop reports through: the shared statuses, metrics and Events.
#[derive(Clone)]
pub struct Telemetry {
    pub statuses: Statuses,
    pub metrics: Arc<Metrics>,
    /// `None` where Events are not wanted (unit tests).
    pub events: Option<Arc<Events>>,
}

impl Telemetry {
    /// Statuses and metrics only.
    pub fn quiet() -> Self {
        Telemetry { statuses: Statuses::default(), metrics: Arc::new(Metrics::new()), events: None }
    }
}

/// Reports a reconcile where Kubernetes users look: an Event on the parent (Synced, SyncFailed,
/// HealthCheckFailed, PruneHeld, and Pruned when members were deleted) and its status
/// annotations.
pub async fn publish_report(cluster: &Cluster, events: Option<&Events>, source: &str, agent_namespace: &str, report: &Report) {
    let parent = applyset::parent_ref(source, agent_namespace);
    let revision = report.commit.as_deref().map(crate::source::short).unwrap_or("-");
    if let Some(events) = events {
        match report.state {
            State::Synced => {
                events
                    .publish(cluster, &parent, false, reasons::SYNCED, &format!("revision {revision}: {}", report.changes.summary()))
                    .await
            }
            State::PruneHeld => {
                events.publish(cluster, &parent, true, reasons::PRUNE_HELD, &format!("revision {revision}: {}", report.message)).await
            }
            State::Failed => {
                let reason =
                    if report.reason == Some(Reason::HealthCheckFailed) { reasons::HEALTH_CHECK_FAILED } else { reasons::SYNC_FAILED };
                let why = report.reason.map_or("", Reason::as_str);
                events.publish(cluster, &parent, true, reason, &format!("revision {revision}: {why}: {}", report.message)).await
            }
        }
        let pruned: Vec<String> = report.changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| c.id.to_string()).collect();
        if !pruned.is_empty() {
            let note = format!("revision {revision}: pruned {} object(s): {}", pruned.len(), pruned.join(", "));
            events.publish(cluster, &parent, false, reasons::PRUNED, &note).await;
        }
    }
    let state = report.state.as_str();
    let message = if report.message.is_empty() { report.changes.summary() } else { report.message.clone() };
    // health is the run loop's to write (see [`HEALTH_MANAGER`]); a report leaves it as it is
    if let Err(e) = annotate(cluster, &parent, state, None, &message, SystemTime::now()).await {
        debug!(parent = %parent, error = %e, "could not annotate the parent");
    }
}

/// Writes the status annotations of a source's parent (its own field manager: only these keys).
pub async fn annotate(
    cluster: &Cluster,
    parent: &ObjectRef,
    state: &str,
    health: Option<&str>,
    message: &str,
    time: SystemTime,
) -> Result<(), kube::Error> {
    let labels = json!({
        keys::APPLYSET_ID: applyset::applyset_id(parent),
        "app.kubernetes.io/managed-by": "driftless",
    });
    let api = cluster.api(&ResourceType::config_maps(), &parent.namespace);
    let apply = |manager: &'static str, ann: serde_json::Value| {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": parent.name, "namespace": parent.namespace, "labels": labels, "annotations": ann}});
        let api = api.clone();
        let name = parent.name.clone();
        async move { api.patch(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&body)).await.map(|_| ()) }
    };
    apply(
        STATUS_MANAGER,
        json!({
            keys::STATE: state,
            keys::MESSAGE: truncate(message, 1000),
            keys::LAST_SYNC: rfc3339(time),
        }),
    )
    .await?;
    if let Some(h) = health {
        apply(HEALTH_MANAGER, json!({ keys::HEALTH: h })).await?;
    }
    Ok(())
}

/// Kubernetes Events on ApplySet parents, visible in `kubectl describe configmap driftless-<source>`.
/// Written as `events.k8s.io/v1` Events, one per occurrence: each names its revision, so a
/// recorder that folds repeats into the first one's note would hide the new revision.
pub struct Events {
    api: Api<DynamicObject>,
    namespace: String,
    instance: String,
}

/// Event reasons.
pub mod reasons {
    pub const SYNCED: &str = "Synced";
    pub const SYNC_FAILED: &str = "SyncFailed";
    pub const PRUNED: &str = "Pruned";
    pub const PRUNE_HELD: &str = "PruneHeld";
    pub const DRIFT_CORRECTED: &str = "DriftCorrected";
    pub const HEALTH_CHECK_FAILED: &str = "HealthCheckFailed";
}

impl Events {
    /// Events go to the agent's namespace, where the parents live.
    pub fn new(cluster: &Cluster, namespace: &str, instance: Option<String>) -> Self {
        let rt = ResourceType {
            group: "events.k8s.io".into(),
            version: "v1".into(),
            kind: "Event".into(),
            plural: "events".into(),
            namespaced: true,
        };
        Events {
            api: cluster.api(&rt, namespace),
            namespace: namespace.into(),
            instance: instance.unwrap_or_else(|| format!("driftless-{}", std::process::id())),
        }
    }

    /// Publishes one event on the parent (looked up for its uid). Failures are logged, not fatal:
    /// status reporting never fails a sync.
    pub async fn publish(&self, cluster: &Cluster, parent: &ObjectRef, warning: bool, reason: &str, note: &str) {
        let uid = match cluster.get(&ResourceType::config_maps(), parent).await {
            Ok(Some(o)) => o["metadata"]["uid"].as_str().map(String::from),
            _ => None,
        };
        let event = json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{}-", parent.name), "namespace": self.namespace},
            "eventTime": rfc3339_micros(SystemTime::now()),
            "type": if warning { "Warning" } else { "Normal" },
            "reason": reason,
            "action": "Reconcile",
            "note": truncate(note, 1000),
            "reportingController": "driftless.dev/agent",
            "reportingInstance": truncate(&self.instance, 128),
            "regarding": {"apiVersion": "v1", "kind": "ConfigMap", "name": parent.name, "namespace": parent.namespace, "uid": uid},
        });
        let event: DynamicObject = match serde_json::from_value(event) {
            Ok(e) => e,
            Err(e) => return debug!(error = %e, "could not build an event"),
        };
        if let Err(e) = self.api.create(&PostParams::default(), &event).await {
            debug!(parent = %parent, error = %e, "could not publish an event");
        }
    }
}

/// RFC 3339 in UTC, microseconds precision (an Event's `eventTime`).
fn rfc3339_micros(t: SystemTime) -> String {
    let ts = Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH);
    format!("{:.6}", ts)
}

/// At most `max` bytes, cut at a character boundary, with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// RFC 3339 in UTC, seconds precision.
pub fn rfc3339(t: SystemTime) -> String {
    let ts = Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH);
    format!("{:.0}", ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)), "1970-01-01T00:00:01Z", "whole seconds");
        assert_eq!(rfc3339_micros(SystemTime::UNIX_EPOCH + Duration::from_micros(1_000_001)), "1970-01-01T00:00:01.000001Z");
        assert_eq!(rfc3339_micros(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn truncate_cuts_at_character_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééééé", 7), "éé...");
        assert!(truncate(&"x".repeat(5000), 1000).len() <= 1000);
    }
}
