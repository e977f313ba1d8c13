//! Watches of a source's members: one per kind and namespace, selected by the ApplySet part-of
//! label, so namespace-scoped RBAC suffices and nothing else in the cluster is seen.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use std::time::Duration;

use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::drift::Entry;
use super::LiveState;
use crate::cluster::Cluster;
use crate::keys;
use crate::manifest::{ObjectRef, ResourceType};

/// Objects per page of a watch's initial listing. Every watch of a source lists at once when
/// the agent starts, so pages are kept small.
const WATCH_PAGE: u32 = 100;

/// The first wait before a failed watch is restarted; it doubles with each failure in a row.
const RESTART_MIN: Duration = Duration::from_millis(500);

/// The longest wait before a failed watch is restarted: once the API server is back, drift is
/// seen again within it (kube-runtime's default grows to 30 s).
const RESTART_MAX: Duration = Duration::from_secs(5);

/// A watch that ran this long without failing starts over from [`RESTART_MIN`].
const RESTART_RESET: Duration = Duration::from_secs(60);

/// One watched scope: a resource type in a namespace (empty for cluster-scoped types).
pub type Scope = (Arc<ResourceType>, String);

/// A scope's key: group, kind, namespace.
type ScopeKey = (String, String, String);

/// The running watches of one source.
#[derive(Default)]
pub struct Watches {
    /// Each watch, with a flag set once its initial listing completed.
    running: HashMap<ScopeKey, (JoinHandle<()>, Arc<AtomicBool>)>,
}

impl Watches {
    /// Starts watches for new scopes and stops those no longer needed.
    pub fn update(&mut self, cluster: &Cluster, state: &Arc<LiveState>, applyset_id: &str, scopes: &[Scope]) {
        let wanted: HashSet<ScopeKey> = scopes.iter().map(|(rt, ns)| (rt.group.clone(), rt.kind.clone(), ns.clone())).collect();
        self.running.retain(|key, (handle, _)| {
            let keep = wanted.contains(key) && !handle.is_finished();
            if !keep {
                handle.abort();
            }
            keep
        });
        for (rt, ns) in scopes {
            let key = (rt.group.clone(), rt.kind.clone(), ns.clone());
            if self.running.contains_key(&key) {
                continue;
            }
            let api = cluster.api(rt, ns);
            let selector = format!("{}={applyset_id}", keys::APPLYSET_PART_OF);
            let synced = Arc::new(AtomicBool::new(false));
            let handle = tokio::spawn(watch_scope(api, selector, rt.clone(), ns.clone(), state.clone(), synced.clone()));
            self.running.insert(key, (handle, synced));
        }
    }

    /// Whether every watch has completed its initial listing.
    pub fn synced(&self) -> bool {
        self.running.values().all(|(_, synced)| synced.load(Ordering::SeqCst))
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for (handle, _) in self.running.values() {
            handle.abort();
        }
    }
}

async fn watch_scope(
    api: kube::Api<kube::api::DynamicObject>,
    selector: String,
    rt: Arc<ResourceType>,
    namespace: String,
    state: Arc<LiveState>,
    synced: Arc<AtomicBool>,
) {
    let id_of = |o: &kube::api::DynamicObject| {
        ObjectRef::new(
            rt.group.clone(),
            rt.kind.clone(),
            o.metadata.namespace.clone().unwrap_or_default(),
            o.metadata.name.clone().unwrap_or_default(),
        )
    };
    let entry_of = |o: kube::api::DynamicObject| {
        let value = serde_json::to_value(o).unwrap_or_default();
        Entry::from_object(&rt.group, &rt.kind, &value)
    };
    let mut seen: HashSet<ObjectRef> = HashSet::new();
    let mut known: HashSet<ObjectRef> = HashSet::new();
    // small pages: the initial listing of a large set is never held at once
    let config = watcher::Config::default().labels(&selector).page_size(WATCH_PAGE);
    let backoff = ResetTimerBackoff::new(RestartBackoff::default(), RESTART_RESET);
    let mut stream = watcher::watcher(api, config).backoff(backoff).boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => seen.clear(),
            Ok(Event::InitApply(o)) => {
                let id = id_of(&o);
                seen.insert(id.clone());
                state.observe(&id, Some(entry_of(o)));
            }
            Ok(Event::InitDone) => {
                // objects that vanished while the watch was down
                for id in known.difference(&seen) {
                    state.observe(id, None);
                }
                known = std::mem::take(&mut seen);
                state.listed(&rt.group, &rt.kind, &namespace);
                synced.store(true, Ordering::SeqCst);
                debug!(kind = %rt.kind, namespace = %namespace, objects = known.len(), "watch synced");
            }
            Ok(Event::Apply(o)) => {
                let id = id_of(&o);
                known.insert(id.clone());
                state.observe(&id, Some(entry_of(o)));
            }
            Ok(Event::Delete(o)) => {
                let id = id_of(&o);
                known.remove(&id);
                state.observe(&id, None);
            }
            Err(e) => warn!(kind = %rt.kind, namespace = %namespace, error = %e, "watch error; retrying"),
        }
    }
}

/// The waits between restarts of a failed watch: [`RESTART_MIN`] doubling up to [`RESTART_MAX`],
/// each cut by a random part of up to half, so the watches of an agent that lost the API server
/// do not all come back in the same instant.
#[derive(Debug)]
struct RestartBackoff {
    next: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff { next: RESTART_MIN }
    }
}

impl Iterator for RestartBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (wait * 2).min(RESTART_MAX);
        Some(wait.mul_f64(rand::random_range(0.5..=1.0)))
    }
}

impl Backoff for RestartBackoff {
    fn reset(&mut self) {
        self.next = RESTART_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_to_five_seconds_and_start_over_on_reset() {
        let mut backoff = RestartBackoff::default();
        let waits: Vec<Duration> = (&mut backoff).take(8).collect();
        let caps = [500, 1000, 2000, 4000, 5000, 5000, 5000, 5000].map(Duration::from_millis);
        for (wait, cap) in waits.iter().zip(caps) {
            assert!(*wait <= cap && *wait >= cap / 2, "{waits:?}");
        }
        backoff.reset();
        assert!(backoff.next().is_some_and(|w| w <= RESTART_MIN), "starts over");
    }
}
