//! Drift, decided without I/O. A watched object is trimmed to an [`Entry`]; after every apply
//! Driftless records what it expects ([`Expected`]): the hash of the fields its field manager
//! owns. Drift is the object gone, or that field set changed: another writer took a field
//! Driftless applied (server-side apply moves ownership of a changed field to whoever changed it).
//! Fields Driftless never set (an HPA's `replicas`, status, other controllers' additions) do not
//! touch its field set, so they are never drift.
//!
//! [`Fight`] keeps a writer that keeps undoing Driftless's fields from turning self-heal into a
//! loop: corrections back off per object, and the fight is reported with the other manager's name.

use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::health::{self, Status};
use crate::{keys, FIELD_MANAGER};

/// What is kept of a watched object: identity, versions, recorded hash, ownership, health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub uid: String,
    pub resource_version: String,
    pub generation: i64,
    /// The `driftless.dev/desired-hash` annotation.
    pub desired_hash: Option<String>,
    /// sha256 of the fields owned by Driftless's apply.
    pub fields_hash: String,
    /// The manager of the most recent write by anyone else (not status updates).
    pub other_manager: Option<String>,
    pub health: Status,
}

impl Entry {
    /// Trims a live object (as JSON) to its entry.
    pub fn from_object(group: &str, kind: &str, object: &Value) -> Self {
        let meta = &object["metadata"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Entry {
            uid: s(&meta["uid"]),
            resource_version: s(&meta["resourceVersion"]),
            generation: meta["generation"].as_i64().unwrap_or_default(),
            desired_hash: meta["annotations"][keys::DESIRED_HASH].as_str().map(String::from),
            fields_hash: owned_fields_hash(object),
            other_manager: latest_other_manager(object),
            health: health::evaluate(group, kind, object),
        }
    }
}

/// sha256 over the `fieldsV1` of every managedFields entry of Driftless's Apply operations.
pub fn owned_fields_hash(object: &Value) -> String {
    let mut hasher = Sha256::new();
    for m in object["metadata"]["managedFields"].as_array().into_iter().flatten() {
        if m["manager"] == FIELD_MANAGER && m["operation"] == "Apply" && m["subresource"].as_str().unwrap_or("").is_empty() {
            hasher.update(m["apiVersion"].as_str().unwrap_or_default());
            hasher.update(m["fieldsV1"].to_string());
        }
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The most recent manager other than Driftless that wrote the object itself (status
/// subresource writes by controllers are not interesting).
fn latest_other_manager(object: &Value) -> Option<String> {
    object["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .filter(|m| m["manager"] != FIELD_MANAGER && m["subresource"].as_str().unwrap_or("").is_empty())
        .max_by(|a, b| a["time"].as_str().unwrap_or("").cmp(b["time"].as_str().unwrap_or("")))
        .and_then(|m| m["manager"].as_str().map(String::from))
}

/// What Driftless expects of an object after applying it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub fields_hash: String,
}

impl Expected {
    pub fn from_object(object: &Value) -> Self {
        Expected { fields_hash: owned_fields_hash(object) }
    }
}

/// How an object drifted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The object was deleted.
    Deleted,
    /// Fields Driftless applied were changed or taken over (by the named manager, when known).
    Modified { by: Option<String> },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Deleted => write!(f, "deleted"),
            Drift::Modified { by: Some(m) } => write!(f, "fields changed by {m}"),
            Drift::Modified { by: None } => write!(f, "fields changed"),
        }
    }
}

/// Whether the current state of an object (None: gone) drifted from what Driftless expects.
pub fn detect(entry: Option<&Entry>, expected: &Expected) -> Option<Drift> {
    match entry {
        None => Some(Drift::Deleted),
        Some(e) if e.fields_hash != expected.fields_hash => Some(Drift::Modified { by: e.other_manager.clone() }),
        Some(_) => None,
    }
}

/// Corrections closer together than this count as one fight.
pub const FIGHT_WINDOW: Duration = Duration::from_secs(60);
/// Corrections in one window before it is called a fight and backed off.
pub const FIGHT_AFTER: u32 = 3;
/// The longest wait between corrections of one object.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Per-object correction history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fight {
    /// Corrections in the current window.
    pub streak: u32,
    pub last_correction: Option<Instant>,
    /// Total corrections of this object.
    pub corrections: u64,
    /// Whether the current fight was already reported.
    pub reported: bool,
}

/// What to do about a drift now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Correct it now.
    Correct,
    /// Correct it no sooner than this.
    Wait(Instant),
}

impl Fight {
    /// The backoff before the next correction, given the streak so far.
    pub fn backoff(&self) -> Duration {
        if self.streak < FIGHT_AFTER {
            Duration::ZERO
        } else {
            let exp = (self.streak - FIGHT_AFTER).min(16);
            (Duration::from_secs(1) * 2u32.pow(exp)).min(MAX_BACKOFF)
        }
    }

    /// Decides whether a drift seen at `now` may be corrected now.
    pub fn on_drift(&self, now: Instant) -> Verdict {
        match self.last_correction {
            Some(last) if now.duration_since(last) < FIGHT_WINDOW => {
                let at = last + self.backoff();
                if at > now {
                    Verdict::Wait(at)
                } else {
                    Verdict::Correct
                }
            }
            _ => Verdict::Correct,
        }
    }

    /// Records a correction at `now`. Returns true when this correction makes it a fight that
    /// was not reported yet.
    pub fn on_corrected(&mut self, now: Instant) -> bool {
        let in_window = self.last_correction.is_some_and(|last| now.duration_since(last) < FIGHT_WINDOW);
        self.streak = if in_window { self.streak + 1 } else { 1 };
        if !in_window {
            self.reported = false;
        }
        self.last_correction = Some(now);
        self.corrections += 1;
        if self.streak >= FIGHT_AFTER && !self.reported {
            self.reported = true;
            true
        } else {
            false
        }
    }

    pub fn is_fighting(&self) -> bool {
        self.streak >= FIGHT_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(fields: Value, others: &[(&str, &str)]) -> Value {
        let mut mf = vec![
            json!({"manager": "driftless", "operation": "Apply", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z", "fieldsV1": fields}),
        ];
        for (m, t) in others {
            mf.push(json!({"manager": m, "operation": "Update", "apiVersion": "v1", "time": t, "fieldsV1": {"f:data": {}}}));
        }
        mf.push(
            json!({"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "time": "2027-01-01T00:00:00Z"}),
        );
        json!({"metadata": {"name": "a", "uid": "u1", "resourceVersion": "5", "generation": 2,
            "annotations": {keys::DESIRED_HASH: "h"}, "managedFields": mf}})
    }

    #[test]
    fn an_entry_keeps_identity_versions_hashes_and_the_latest_other_writer() {
        let o = object(json!({"f:data": {"f:a": {}}}), &[("kubectl-edit", "2026-02-01T00:00:00Z"), ("hpa", "2026-01-15T00:00:00Z")]);
        let e = Entry::from_object("", "ConfigMap", &o);
        assert_eq!((e.uid.as_str(), e.resource_version.as_str(), e.generation), ("u1", "5", 2));
        assert_eq!(e.desired_hash.as_deref(), Some("h"));
        assert_eq!(e.other_manager.as_deref(), Some("kubectl-edit"), "status writers are ignored");
        assert_eq!(e.fields_hash.len(), 64);
    }

    #[test]
    fn no_drift_while_driftless_owns_the_same_fields() {
        let applied = object(json!({"f:data": {"f:a": {}, "f:b": {}}}), &[]);
        let expected = Expected::from_object(&applied);
        // someone else adds fields Driftless never set: its own field set is untouched
        let touched = object(json!({"f:data": {"f:a": {}, "f:b": {}}}), &[("hpa", "2026-03-01T00:00:00Z")]);
        assert_eq!(detect(Some(&Entry::from_object("", "ConfigMap", &touched)), &expected), None);
    }

    #[test]
    fn a_taken_field_is_drift_naming_the_other_manager() {
        let expected = Expected::from_object(&object(json!({"f:data": {"f:a": {}, "f:b": {}}}), &[]));
        let edited = object(json!({"f:data": {"f:a": {}}}), &[("kubectl-edit", "2026-03-01T00:00:00Z")]);
        assert_eq!(
            detect(Some(&Entry::from_object("", "ConfigMap", &edited)), &expected),
            Some(Drift::Modified { by: Some("kubectl-edit".into()) })
        );
    }

    #[test]
    fn a_deleted_object_is_drift() {
        let expected = Expected::from_object(&object(json!({}), &[]));
        assert_eq!(detect(None, &expected), Some(Drift::Deleted));
    }

    #[test]
    fn first_corrections_are_immediate_then_a_fight_backs_off_and_is_reported_once() {
        let t0 = Instant::now();
        let mut f = Fight::default();
        assert_eq!(f.on_drift(t0), Verdict::Correct);
        assert!(!f.on_corrected(t0));
        assert_eq!(f.on_drift(t0 + Duration::from_millis(100)), Verdict::Correct);
        assert!(!f.on_corrected(t0 + Duration::from_millis(100)));
        assert!(f.on_corrected(t0 + Duration::from_millis(200)), "the third correction in a window is a fight");
        assert!(f.is_fighting());
        // now corrections wait: 1s, then 2s, 4s...
        let t = t0 + Duration::from_millis(300);
        assert_eq!(f.on_drift(t), Verdict::Wait(t0 + Duration::from_millis(200) + Duration::from_secs(1)));
        assert!(!f.on_corrected(t0 + Duration::from_secs(2)), "reported once per fight");
        assert_eq!(f.backoff(), Duration::from_secs(2));
        assert_eq!(f.corrections, 4);
    }

    #[test]
    fn a_quiet_window_ends_the_fight() {
        let t0 = Instant::now();
        let mut f = Fight::default();
        for i in 0..4 {
            f.on_corrected(t0 + Duration::from_millis(i * 10));
        }
        assert!(f.is_fighting());
        let later = t0 + FIGHT_WINDOW + Duration::from_secs(1);
        assert_eq!(f.on_drift(later), Verdict::Correct);
        assert!(!f.on_corrected(later));
        assert_eq!(f.streak, 1);
        assert!(!f.is_fighting());
    }

    #[test]
    fn backoff_is_capped() {
        let f = Fight { streak: 40, ..Fight::default() };
        assert_eq!(f.backoff(), MAX_BACKOFF);
    }
}
