//! Kubernetes Events on ApplySet parents: what each reconcile did, where `kubectl describe`
//! shows it.

use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use serde_json::json;
use tracing::debug;

use super::truncate;
use crate::cluster::Cluster;
use crate::manifest::{ObjectRef, ResourceType};

/// Kubernetes Events on ApplySet parents, visible in `kubectl describe configmap driftless-<source>`.
/// Written as `events.k8s.io/v1` Events, one per occurrence: each names its revision, so a
/// recorder that folds repeats into the first one's note would hide the new revision.
pub struct Events {
    resource: ResourceType,
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
    pub const ROLLED_BACK: &str = "RolledBack";
}

impl Events {
    /// Events go to the agent's namespace, where the parents live.
    pub fn new(namespace: &str, instance: Option<String>) -> Self {
        let rt = ResourceType {
            group: "events.k8s.io".into(),
            version: "v1".into(),
            kind: "Event".into(),
            plural: "events".into(),
            namespaced: true,
        };
        Events {
            resource: rt,
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
        if let Err(e) = cluster.create(&self.resource, &self.namespace, &event).await {
            debug!(parent = %parent, error = %e, "could not publish an event");
        }
    }
}

/// RFC 3339 in UTC, microseconds precision (an Event's `eventTime`).
fn rfc3339_micros(t: SystemTime) -> String {
    let ts = Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH);
    format!("{:.6}", ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn event_times_have_microseconds() {
        assert_eq!(rfc3339_micros(SystemTime::UNIX_EPOCH + Duration::from_micros(1_000_001)), "1970-01-01T00:00:01.000001Z");
        assert_eq!(rfc3339_micros(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }
}
