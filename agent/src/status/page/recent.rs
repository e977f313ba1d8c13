//! The recent Events of a source's ApplySet parent, read from the API server for its page: a
//! few seconds old at most, one read per source per [`FRESH_FOR`] however often the page is
//! loaded, and bounded by a timeout (a slow API server shows an empty list, never a hung page).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

use crate::cluster::Cluster;
use crate::manifest::ObjectRef;

/// How long a read of a parent's Events is served again.
const FRESH_FOR: Duration = Duration::from_secs(10);
/// How long a read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The most Events a page shows (the newest).
pub const SHOWN: usize = 20;
/// The most Events read.
const READ_LIMIT: u32 = 200;

/// One Event as the page shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentEvent {
    pub time: Option<SystemTime>,
    pub warning: bool,
    pub reason: String,
    pub note: String,
    pub count: i32,
}

/// What a read found: the Events, newest first, or why there are none.
pub type Recent = Result<Arc<Vec<RecentEvent>>, String>;

/// Reads parents' Events, each kept for [`FRESH_FOR`].
pub struct RecentEvents {
    cluster: Cluster,
    cache: Mutex<HashMap<ObjectRef, (Instant, Recent)>>,
}

impl RecentEvents {
    pub fn new(cluster: Cluster) -> Self {
        RecentEvents { cluster, cache: Mutex::default() }
    }

    /// The newest Events about `parent`.
    pub async fn about(&self, parent: &ObjectRef) -> Recent {
        if let Some((at, recent)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(parent) {
            if at.elapsed() < FRESH_FOR {
                return recent.clone();
            }
        }
        let recent = match tokio::time::timeout(READ_TIMEOUT, read(&self.cluster, parent)).await {
            Ok(Ok(events)) => Ok(Arc::new(events)),
            Ok(Err(e)) => Err(format!("cannot read Events: {e}")),
            Err(_) => Err(format!("cannot read Events: no answer within {}s", READ_TIMEOUT.as_secs())),
        };
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(parent.clone(), (Instant::now(), recent.clone()));
        recent
    }
}

/// The Events regarding `parent`, through the core API's view of them (which selects on the
/// object they are about), newest first.
async fn read(cluster: &Cluster, parent: &ObjectRef) -> Result<Vec<RecentEvent>, kube::Error> {
    let api: Api<Event> = Api::namespaced(cluster.client().clone(), &parent.namespace);
    let fields = format!("involvedObject.kind=ConfigMap,involvedObject.name={}", parent.name);
    let list = api.list(&ListParams::default().fields(&fields).limit(READ_LIMIT)).await?;
    Ok(newest(list.items.into_iter().map(shown).collect()))
}

/// Newest first, at most [`SHOWN`].
fn newest(mut events: Vec<RecentEvent>) -> Vec<RecentEvent> {
    events.sort_by_key(|e| std::cmp::Reverse(e.time));
    events.truncate(SHOWN);
    events
}

fn shown(e: Event) -> RecentEvent {
    let micro = e.event_time.map(|t| t.0);
    let time = micro.or(e.last_timestamp.map(|t| t.0)).or(e.metadata.creation_timestamp.map(|t| t.0)).map(SystemTime::from);
    let count = e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1);
    RecentEvent {
        time,
        warning: e.type_.as_deref() == Some("Warning"),
        reason: e.reason.unwrap_or_default(),
        note: e.message.unwrap_or_default(),
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_shown_newest_first_and_capped() {
        let at = |s: u64| RecentEvent {
            time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            warning: false,
            reason: format!("r{s}"),
            note: String::new(),
            count: 1,
        };
        let shown = newest((0..30).map(at).collect());
        assert_eq!(shown.len(), SHOWN);
        assert_eq!(shown.first().map(|e| e.reason.as_str()), Some("r29"));
        assert_eq!(shown.last().map(|e| e.reason.as_str()), Some("r10"));
    }

    #[test]
    fn a_core_event_reads_as_shown() {
        let e: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e", "namespace": "n", "creationTimestamp": "2026-12-03T10:00:00Z"},
            "involvedObject": {"kind": "ConfigMap", "name": "driftless-shop"},
            "type": "Warning", "reason": "SyncFailed", "message": "revision abc: RenderFailed: x",
            "eventTime": "2026-12-03T10:00:01.000001Z",
        }))
        .unwrap();
        let shown = shown(e);
        assert!(shown.warning);
        assert_eq!((shown.reason.as_str(), shown.note.as_str(), shown.count), ("SyncFailed", "revision abc: RenderFailed: x", 1));
        assert_eq!(shown.time.map(crate::status::rfc3339).as_deref(), Some("2026-12-03T10:00:01Z"));
    }
}
