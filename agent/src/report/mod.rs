//! What a reconcile reports: what it did to each object ([`changes`]), why it failed
//! ([`Reason`], one bounded vocabulary for errors, reports, metric labels, Events and the status
//! API), the state it ended in, its [`Report`], and, while it runs, its [`Heartbeat`].

pub mod changes;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelValue;
use serde::{Deserialize, Serialize};

use crate::live::watch::Scope;
use crate::manifest::ObjectRef;
use crate::plan::Plan;
use crate::Error;
use changes::ChangeSet;

/// Why a source is not Synced (or, for [`Reason::PruneHeld`], not fully pruned). A metric label
/// and a status field: the set is closed, never a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, EncodeLabelValue)]
pub enum Reason {
    /// Checking the remote ref, fetching or reading the commit failed.
    FetchFailed,
    /// Files could not be turned into objects.
    RenderFailed,
    /// The plan, the live state or the server-side dry-run rejected the revision.
    ValidationFailed,
    /// A write failed.
    ApplyFailed,
    /// A wave did not become Healthy in time.
    HealthCheckFailed,
    /// Deleting what left git failed.
    PruneFailed,
    /// A safeguard held the prune.
    PruneHeld,
    /// The configuration is invalid.
    ConfigInvalid,
    /// The source's loop panicked (and was restarted).
    Panicked,
    /// Owned objects drifted and are not corrected.
    DriftDetected,
    /// A newer commit arrived while a wave waited for health: the wait ended and the newer
    /// commit is reconciled at once.
    Superseded,
    /// A failed revision was rolled back to the last one that was Synced and Healthy.
    RolledBack,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 12] = [
        Reason::FetchFailed,
        Reason::RenderFailed,
        Reason::ValidationFailed,
        Reason::ApplyFailed,
        Reason::HealthCheckFailed,
        Reason::PruneFailed,
        Reason::PruneHeld,
        Reason::ConfigInvalid,
        Reason::Panicked,
        Reason::DriftDetected,
        Reason::Superseded,
        Reason::RolledBack,
    ];

    /// The reasons a reconcile's stage fails with.
    pub const STAGE_FAILURES: [Reason; 6] = [
        Reason::FetchFailed,
        Reason::RenderFailed,
        Reason::ValidationFailed,
        Reason::ApplyFailed,
        Reason::HealthCheckFailed,
        Reason::PruneFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FetchFailed => "FetchFailed",
            Reason::RenderFailed => "RenderFailed",
            Reason::ValidationFailed => "ValidationFailed",
            Reason::ApplyFailed => "ApplyFailed",
            Reason::HealthCheckFailed => "HealthCheckFailed",
            Reason::PruneFailed => "PruneFailed",
            Reason::PruneHeld => "PruneHeld",
            Reason::ConfigInvalid => "ConfigInvalid",
            Reason::Panicked => "Panicked",
            Reason::DriftDetected => "DriftDetected",
            Reason::Superseded => "Superseded",
            Reason::RolledBack => "RolledBack",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason as the status API and reports write it: its name, or `""` when there is none.
pub fn reason_or_empty<S: serde::Serializer>(reason: &Option<Reason>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(reason.map_or("", Reason::as_str))
}

/// Reads what [`reason_or_empty`] wrote; a reason this build does not know (another version's)
/// reads as none rather than failing the whole status.
pub fn reason_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Reason>, D::Error> {
    let text = String::deserialize(d)?;
    Ok(Reason::ALL.into_iter().find(|r| r.as_str() == text))
}

/// The state a source ends a reconcile in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum State {
    /// Applied and pruned.
    Synced,
    /// Applied; the prune was held by a safeguard.
    PruneHeld,
    /// A stage failed.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Synced => "Synced",
            State::PruneHeld => "PruneHeld",
            State::Failed => "Failed",
        }
    }
}

/// What a successful apply leaves for the live state.
#[derive(Debug, Default)]
pub struct Outcome {
    pub plan: Plan,
    pub applyset_id: String,
    /// Where the set's members live, to watch.
    pub scopes: Vec<Scope>,
    /// Objects that drifted from git and were left so (`selfHeal: false`).
    pub drifted: Vec<ObjectRef>,
}

/// The outcome of one reconcile.
#[derive(Debug, Serialize)]
pub struct Report {
    pub source: String,
    /// The commit reconciled (when the fetch got that far).
    pub commit: Option<String>,
    pub state: State,
    /// Why it failed, or [`Reason::PruneHeld`]; `""` when synced.
    #[serde(serialize_with = "reason_or_empty")]
    pub reason: Option<Reason>,
    pub message: String,
    pub changes: ChangeSet,
    /// What rendered the revision (`plain`, `kustomize v5.8.2`, `helm v3.22.0`), once it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renderer: Option<String>,
    #[serde(skip)]
    pub duration: Duration,
    #[serde(skip)]
    pub error: Option<Error>,
    /// Set when the revision was applied (whatever happened to the prune).
    #[serde(skip)]
    pub outcome: Option<Outcome>,
}

impl Report {
    /// A failure the run loop finds outside a reconcile (a remote check, a health timeout after
    /// the apply): nothing changed by it.
    pub fn failed(source: &str, commit: Option<String>, reason: Reason, message: String, duration: Duration, error: Option<Error>) -> Self {
        Report {
            source: source.to_string(),
            commit,
            state: State::Failed,
            reason: Some(reason),
            message,
            changes: ChangeSet::default(),
            renderer: None,
            duration,
            error,
            outcome: None,
        }
    }
}

/// A reconcile's heartbeat: it beats at every step (a stage done, prune included; a batch of
/// dry-runs; an object applied; a health poll), so a reconcile that runs long can be told from
/// one that is stuck. Every API request is bounded, so a reconcile that stops beating is a bug,
/// not a slow server: the agent's `/healthz` fails for it.
#[derive(Debug, Default)]
pub struct Heartbeat {
    /// Milliseconds since the Unix epoch; 0 while no reconcile runs.
    started: AtomicU64,
    last: AtomicU64,
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64).max(1)
}

impl Heartbeat {
    /// A reconcile begins.
    pub fn start(&self) {
        let now = unix_millis(SystemTime::now());
        self.last.store(now, SeqCst);
        self.started.store(now, SeqCst);
    }

    /// The reconcile made progress.
    pub fn beat(&self) {
        self.last.store(unix_millis(SystemTime::now()), SeqCst);
    }

    /// A heartbeat as read back from the status API: `(started, last progress)` while running.
    pub fn from_running(running: Option<(SystemTime, SystemTime)>) -> Self {
        let beat = Heartbeat::default();
        if let Some((started, last)) = running {
            beat.started.store(unix_millis(started), SeqCst);
            beat.last.store(unix_millis(last), SeqCst);
        }
        beat
    }

    /// The reconcile ended.
    pub fn stop(&self) {
        self.started.store(0, SeqCst);
    }

    /// While a reconcile runs: when it started and when it last made progress.
    pub fn running(&self) -> Option<(SystemTime, SystemTime)> {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        match self.started.load(SeqCst) {
            0 => None,
            started => Some((at(started), at(self.last.load(SeqCst)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_as_its_name_in_text_json_and_labels() {
        for reason in Reason::ALL {
            assert_eq!(reason.to_string(), format!("{reason:?}"));
            assert_eq!(serde_json::to_value(reason).unwrap(), serde_json::json!(reason.as_str()));
        }
        #[derive(Serialize)]
        struct R {
            #[serde(serialize_with = "reason_or_empty")]
            reason: Option<Reason>,
        }
        assert_eq!(serde_json::to_string(&R { reason: None }).unwrap(), r#"{"reason":""}"#);
        assert_eq!(serde_json::to_string(&R { reason: Some(Reason::PruneHeld) }).unwrap(), r#"{"reason":"PruneHeld"}"#);
    }
}
