//! Status: where users read what Driftless did. The HTTP server ([`http`]: health, readiness,
//! metrics, status API, push webhooks), Prometheus metrics ([`metrics`]), webhook verification
//! ([`webhook`]), Kubernetes Events ([`events`]) and annotations (here) on each source's ApplySet parent,
//! `driftless status` ([`cli`]), the status page ([`page`]), and what is sent out after a sync: commit statuses and
//! notifications ([`notify`]).
//!
//! Nothing here ever carries a credential or Secret data: URLs are redacted, messages come from
//! reports that name objects and causes only.

pub mod cli;
pub mod events;
pub mod http;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod page;
pub mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::cluster::apply::ApplyOptions;
use crate::cluster::Cluster;
use crate::inventory::applyset;
use crate::keys;
use crate::manifest::{ObjectRef, ResourceType};
use crate::report::changes::Action;
use crate::report::{Reason, Report, State};
pub use events::{reasons, Events};
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
    /// Whether replicas elect a leader (so this one may be on standby).
    pub leader_elect: bool,
    /// The namespace of the ApplySet parents, whose Events the source pages show.
    pub agent_namespace: String,
    /// Reads those Events; none where there is no cluster (unit tests).
    pub recent_events: Option<page::recent::RecentEvents>,
}

impl Shared {
    /// Whether every source loop is alive.
    pub fn alive(&self) -> bool {
        self.running.load(Ordering::SeqCst) >= self.expected_loops.load(Ordering::SeqCst)
    }

    /// Leading, or waiting for the lease while another replica writes.
    pub fn role(&self) -> page::Role {
        if self.leader_elect && self.metrics.leader.get() == 0 {
            page::Role::Standby
        } else {
            page::Role::Leading
        }
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

/// What a source loop reports through: the shared statuses, metrics and Events, and the outbox
/// of commit statuses and notifications.
#[derive(Clone)]
pub struct Telemetry {
    pub statuses: Statuses,
    pub metrics: Arc<Metrics>,
    /// `None` where Events are not wanted (unit tests).
    pub events: Option<Arc<Events>>,
    pub outbox: notify::Outbox,
}

impl Telemetry {
    /// Statuses and metrics only.
    pub fn quiet() -> Self {
        Telemetry { statuses: Statuses::default(), metrics: Arc::new(Metrics::new()), events: None, outbox: notify::Outbox::disabled() }
    }
}

/// Reports a reconcile where Kubernetes users look: its Events on the parent and the parent's
/// status annotations (`driftless sync`; the run loop writes its annotations through its
/// [`AnnotationWriter`]).
pub async fn publish_report(cluster: &Cluster, events: Option<&Events>, source: &str, agent_namespace: &str, report: &Report) {
    let parent = applyset::parent_ref(source, agent_namespace);
    if let Some(events) = events {
        publish_events(cluster, events, &parent, report).await;
    }
    let a = report_annotation(report);
    if let Err(e) = annotate(cluster, &parent, &a.state, a.health.as_deref(), &a.message, a.time).await {
        debug!(parent = %parent, error = %e, "could not annotate the parent");
    }
}

/// The Events of a reconcile on its parent: Synced, SyncFailed, HealthCheckFailed or PruneHeld,
/// and Pruned when members were deleted.
pub async fn publish_events(cluster: &Cluster, events: &Events, parent: &ObjectRef, report: &Report) {
    let revision = report.commit.as_deref().map(crate::source::short).unwrap_or("-");
    match report.state {
        State::Synced => {
            events.publish(cluster, parent, false, reasons::SYNCED, &format!("revision {revision}: {}", report.changes.summary())).await
        }
        State::PruneHeld => {
            events.publish(cluster, parent, true, reasons::PRUNE_HELD, &format!("revision {revision}: {}", report.message)).await
        }
        State::Failed => {
            let reason = if report.reason == Some(Reason::HealthCheckFailed) { reasons::HEALTH_CHECK_FAILED } else { reasons::SYNC_FAILED };
            let why = report.reason.map_or("", Reason::as_str);
            events.publish(cluster, parent, true, reason, &format!("revision {revision}: {why}: {}", report.message)).await
        }
    }
    let pruned: Vec<String> = report.changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| c.id.to_string()).collect();
    if !pruned.is_empty() {
        let note = format!("revision {revision}: pruned {} object(s): {}", pruned.len(), pruned.join(", "));
        events.publish(cluster, parent, false, reasons::PRUNED, &note).await;
    }
}

/// A report's status annotations. Health is the run loop's to write (see [`HEALTH_MANAGER`]):
/// a report leaves it as it is.
pub fn report_annotation(report: &Report) -> Annotation {
    let message = if report.message.is_empty() { report.changes.summary() } else { report.message.clone() };
    Annotation { state: report.state.as_str().to_string(), health: None, message, time: SystemTime::now() }
}

/// What a parent's status annotations say.
#[derive(Clone, Debug, PartialEq)]
pub struct Annotation {
    pub state: String,
    /// Written only by the run loop, which knows it.
    pub health: Option<String>,
    pub message: String,
    pub time: SystemTime,
}

/// The one writer of a parent's status annotations in a run loop: one write at a time, in the
/// order asked; while one is in flight only the newest waits (a pending health is kept when a
/// newer annotation has none), so an older state never lands after a newer one. Its task ends
/// when the writer is dropped.
#[derive(Debug)]
pub struct AnnotationWriter {
    pending: watch::Sender<Option<Annotation>>,
}

/// The annotation to write next: `newer`, keeping the health of the one it replaces when it has
/// none of its own.
fn merged(pending: Option<&Annotation>, newer: Annotation) -> Annotation {
    let health = newer.health.clone().or_else(|| pending.and_then(|p| p.health.clone()));
    Annotation { health, ..newer }
}

impl AnnotationWriter {
    /// Starts the writer of `parent`'s annotations.
    pub fn spawn(cluster: Cluster, parent: ObjectRef) -> Self {
        let (pending, mut next) = watch::channel(None::<Annotation>);
        tokio::spawn(async move {
            while next.changed().await.is_ok() {
                let Some(a) = next.borrow_and_update().clone() else { continue };
                if let Err(e) = annotate(&cluster, &parent, &a.state, a.health.as_deref(), &a.message, a.time).await {
                    debug!(parent = %parent, error = %e, "could not annotate the parent");
                }
            }
        });
        AnnotationWriter { pending }
    }

    /// Asks for `annotation` to be written after what was asked before.
    pub fn write(&self, annotation: Annotation) {
        self.pending.send_modify(|pending| *pending = Some(merged(pending.as_ref(), annotation)));
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
    let apply = |field_manager: &'static str, ann: serde_json::Value| {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": parent.name, "namespace": parent.namespace, "labels": labels, "annotations": ann}});
        async move {
            let opts = ApplyOptions { field_manager, ..ApplyOptions::default() };
            cluster.apply(&ResourceType::config_maps(), parent, &body, opts).await.map(|_| ())
        }
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
    }

    #[test]
    fn a_newer_annotation_replaces_the_pending_one_but_keeps_its_health() {
        let at = |state: &str, health: Option<&str>| Annotation {
            state: state.into(),
            health: health.map(String::from),
            message: state.to_lowercase(),
            time: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(merged(None, at("Synced", None)), at("Synced", None));
        assert_eq!(merged(Some(&at("Progressing", Some("Progressing"))), at("Synced", None)), at("Synced", Some("Progressing")));
        assert_eq!(merged(Some(&at("Synced", Some("Progressing"))), at("Synced", Some("Healthy"))), at("Synced", Some("Healthy")));
    }

    #[test]
    fn truncate_cuts_at_character_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééééé", 7), "éé...");
        assert!(truncate(&"x".repeat(5000), 1000).len() <= 1000);
    }
}
