//! The status model: what a source looks like from outside. The source loops write it; the
//! status API serves it as JSON (and `driftless status` reads that JSON back into it); the
//! metrics and `/healthz` read it too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Source;
use crate::live::health::Health;
use crate::manifest::ObjectRef;
use crate::report::changes::Action;
use crate::report::{reason_or_empty, reason_or_none, Heartbeat, Reason};
use crate::source::redact_url;

/// A source's sync state as users read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncState {
    /// Not reconciled yet.
    Pending,
    /// The revision is applied and every member is Healthy.
    Synced,
    /// The revision is applied; members are not all Healthy yet.
    Progressing,
    /// Owned objects drifted and are not corrected (self-heal off, or backing off a fight).
    OutOfSync,
    /// The last reconcile failed; the last good state stays in place.
    Failed,
    /// Applied, but a prune safeguard held the prune.
    PruneHeld,
    /// The git revision failed and the last good one was applied again (`rollback: onFailure`);
    /// the failed commit is not retried until a newer one lands.
    RolledBack,
}

impl SyncState {
    /// Every state, in the order above (the `driftless_source_state` series).
    pub const ALL: [SyncState; 7] = [
        SyncState::Pending,
        SyncState::Synced,
        SyncState::Progressing,
        SyncState::OutOfSync,
        SyncState::Failed,
        SyncState::PruneHeld,
        SyncState::RolledBack,
    ];

    /// The state's name, as the status JSON and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Pending => "Pending",
            SyncState::Synced => "Synced",
            SyncState::Progressing => "Progressing",
            SyncState::OutOfSync => "OutOfSync",
            SyncState::Failed => "Failed",
            SyncState::PruneHeld => "PruneHeld",
            SyncState::RolledBack => "RolledBack",
        }
    }
}

/// One object in a source's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectStatus {
    #[serde(flatten)]
    pub id: ObjectRef,
    pub action: Action,
    pub health: Health,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The apply wave it belongs to (`driftless.dev/wave`).
    #[serde(default)]
    pub wave: i64,
}

/// What a source looks like from outside: the status API, the CLI and the metrics read this.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub name: String,
    /// The repository URL with any credentials removed.
    pub repo: String,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub path: String,
    #[serde(default)]
    pub last_fetched_commit: Option<String>,
    #[serde(default)]
    pub last_applied_commit: Option<String>,
    pub state: SyncState,
    pub health: Health,
    #[serde(default, serialize_with = "reason_or_empty", deserialize_with = "reason_or_none")]
    pub reason: Option<Reason>,
    pub message: String,
    #[serde(default, with = "unix_seconds")]
    pub last_sync_time: Option<SystemTime>,
    #[serde(default)]
    pub last_sync_duration_seconds: Option<f64>,
    #[serde(default)]
    pub counts: HashMap<Action, usize>,
    /// What rendered the last revision read: `plain`, `kustomize v5.8.2`, `helm v3.22.0`.
    #[serde(default)]
    pub renderer: Option<String>,
    #[serde(default)]
    pub objects: Vec<ObjectStatus>,
    /// Drift corrections and fights since the agent started.
    #[serde(default)]
    pub drift_corrections: u64,
    #[serde(default)]
    pub fights: u64,
    /// From noticing the last applied commit to every member Healthy.
    #[serde(default)]
    pub commit_to_healthy_seconds: Option<f64>,
    /// Reconciled once and every watch synced (readiness).
    #[serde(default)]
    pub ready: bool,
    /// When the remote check (and fetch) in progress started; none when idle.
    #[serde(default, with = "unix_seconds")]
    pub fetch_started: Option<SystemTime>,
    /// A fetch in progress longer than this (three intervals, and at least twice the fetch
    /// timeout and a minute more) is stuck: `/healthz` fails for it.
    #[serde(skip)]
    pub stuck_after: Duration,
    /// The reconcile in progress (`{started, lastProgress}`), none when idle.
    #[serde(default, with = "heartbeat")]
    pub reconcile: Arc<Heartbeat>,
    /// A reconcile without progress for longer than this (three intervals, and at least ten
    /// minutes: every API request is bounded by a minute) is stuck: `/healthz` fails for it.
    #[serde(skip)]
    pub stalled_after: Duration,
}

/// The least time without progress before a reconcile counts as stuck.
const MIN_STALL: Duration = Duration::from_secs(600);

/// A reconcile's heartbeat as `{"started": unix s, "lastProgress": unix s}`, or null when idle.
mod heartbeat {
    use std::sync::Arc;
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::unix_seconds;
    use crate::report::Heartbeat;

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Progress {
        #[serde(with = "unix_seconds")]
        started: Option<SystemTime>,
        #[serde(with = "unix_seconds")]
        last_progress: Option<SystemTime>,
    }

    pub(super) fn serialize<S: Serializer>(h: &Arc<Heartbeat>, s: S) -> Result<S::Ok, S::Error> {
        h.running().map(|(started, last)| Progress { started: Some(started), last_progress: Some(last) }).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Heartbeat>, D::Error> {
        let progress = Option::<Progress>::deserialize(d)?;
        let running = progress.and_then(|p| Some((p.started?, p.last_progress?)));
        Ok(Arc::new(Heartbeat::from_running(running)))
    }
}

/// Times as whole seconds since the Unix epoch, or null.
pub(crate) mod unix_seconds {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))))
    }
}

impl SourceStatus {
    pub fn new(source: &Source) -> Self {
        SourceStatus {
            name: source.name.clone(),
            repo: redact_url(&source.spec.url),
            reference: source.spec.reference.clone(),
            path: source.spec.path.clone(),
            last_fetched_commit: None,
            last_applied_commit: None,
            state: SyncState::Pending,
            health: Health::Unknown,
            reason: None,
            message: String::new(),
            last_sync_time: None,
            last_sync_duration_seconds: None,
            counts: HashMap::new(),
            renderer: None,
            objects: Vec::new(),
            drift_corrections: 0,
            fights: 0,
            commit_to_healthy_seconds: None,
            ready: false,
            fetch_started: None,
            stuck_after: (source.interval * 3).max(source.spec.timeout * 2 + Duration::from_secs(60)),
            reconcile: Arc::default(),
            stalled_after: (source.interval * 3).max(MIN_STALL),
        }
    }

    /// What is stuck in this source's loop, if anything: a fetch running too long, or a
    /// reconcile that made no progress for too long.
    pub fn stuck(&self, now: SystemTime) -> Option<String> {
        let fetching = self.fetch_started.and_then(|t| now.duration_since(t).ok()).filter(|d| *d > self.stuck_after);
        if let Some(running) = fetching {
            return Some(format!("fetching for {}s", running.as_secs()));
        }
        let (_, last) = self.reconcile.running()?;
        let quiet = now.duration_since(last).ok().filter(|d| *d > self.stalled_after)?;
        Some(format!("reconciling, no progress for {}s", quiet.as_secs()))
    }
}

/// The statuses of every source, shared with whatever reports them.
pub type Statuses = Arc<RwLock<std::collections::BTreeMap<String, SourceStatus>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_is_stuck_only_past_three_intervals_and_twice_its_deadline() {
        let source: Source =
            crate::config::parse("sources:\n  - name: shop\n    repo: file:///nowhere\n    interval: 10s\n    timeout: 30s\n")
                .unwrap()
                .remove(0);
        let mut status = SourceStatus::new(&source);
        assert_eq!(status.stuck_after, Duration::from_secs(120), "2 x 30 s + 60 s is more than 3 x 10 s");
        let now = SystemTime::now();
        assert_eq!(status.stuck(now), None, "idle");
        status.fetch_started = Some(now - Duration::from_secs(100));
        assert_eq!(status.stuck(now), None, "slow, within its deadlines");
        status.fetch_started = Some(now - Duration::from_secs(121));
        assert_eq!(status.stuck(now).as_deref(), Some("fetching for 121s"));
    }

    #[test]
    fn a_reconcile_is_stuck_only_when_it_stops_making_progress() {
        let source: Source =
            crate::config::parse("sources:\n  - name: shop\n    repo: file:///nowhere\n    interval: 5m\n").unwrap().remove(0);
        let status = SourceStatus::new(&source);
        assert_eq!(status.stalled_after, Duration::from_secs(900), "three intervals of 5 min, more than 10 min");
        let json = |s: &SourceStatus| serde_json::to_value(s).unwrap()["reconcile"].clone();
        assert_eq!(json(&status), serde_json::Value::Null, "idle");
        status.reconcile.start();
        let running = json(&status);
        assert!(running["started"].is_u64() && running["lastProgress"] == running["started"], "{running}");
        let now = SystemTime::now();
        // long, but beating: a reconcile that waits on health for an hour is not stuck
        assert_eq!(status.stuck(now + Duration::from_secs(899)), None);
        assert_eq!(
            status.stuck(now + Duration::from_secs(3600)).as_deref().map(|s| s.starts_with("reconciling, no progress for ")),
            Some(true)
        );
        status.reconcile.beat();
        assert_eq!(status.stuck(SystemTime::now() + Duration::from_secs(600)), None, "a beat starts the count again");
        status.reconcile.stop();
        assert_eq!(status.stuck(now + Duration::from_secs(3600)), None, "ended");
        assert_eq!(json(&status), serde_json::Value::Null);
        // a short interval: ten minutes at least
        let quick: Source =
            crate::config::parse("sources:\n  - name: q\n    repo: file:///nowhere\n    interval: 10s\n").unwrap().remove(0);
        assert_eq!(SourceStatus::new(&quick).stalled_after, MIN_STALL);
    }

    #[test]
    fn the_status_json_reads_back_into_the_model() {
        let source: Source =
            crate::config::parse("sources:\n  - name: shop\n    repo: https://user:secret@example.com/r.git\n").unwrap().remove(0);
        let mut status = SourceStatus::new(&source);
        status.state = SyncState::Failed;
        status.reason = Some(Reason::FetchFailed);
        status.last_sync_time = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        status.counts.insert(Action::Created, 2);
        status.objects.push(ObjectStatus {
            id: ObjectRef::new("apps", "Deployment", "n", "a"),
            action: Action::Created,
            health: Health::Healthy,
            message: String::new(),
            wave: 0,
        });
        status.reconcile.start();
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["reason"], "FetchFailed");
        assert!(!json.to_string().contains("secret"), "{json}");
        let back: SourceStatus = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json, "what was served reads back as it was");
        assert_eq!((back.state, back.reason, back.last_sync_time), (status.state, status.reason, status.last_sync_time));
        assert!(back.reconcile.running().is_some());
        let idle: SourceStatus = serde_json::from_value(serde_json::to_value(SourceStatus::new(&source)).unwrap()).unwrap();
        assert_eq!((idle.reason, idle.reconcile.running()), (None, None));
        // another version's status: a reason this build does not know, fields it lacks
        let other = serde_json::json!({"name": "shop", "repo": "r", "ref": null, "path": "", "state": "Failed",
            "health": "Unknown", "reason": "ApiError", "message": "m", "lastSyncTime": u64::MAX});
        let read: SourceStatus = serde_json::from_value(other).unwrap();
        assert_eq!((read.state, read.reason, read.last_sync_time, read.objects.len()), (SyncState::Failed, None, None, 0));
    }

    #[test]
    fn state_names_are_the_json_names() {
        for state in SyncState::ALL {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str(), "{state:?}");
        }
        let distinct: std::collections::BTreeSet<&str> = SyncState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(distinct.len(), SyncState::ALL.len());
    }
}
