//! Live state: watches of the objects each source owns, trimmed to what drift, self-heal and
//! health need. Memory grows with what ApplySets hold, not with the cluster: only objects with an
//! ApplySet part-of label are watched, by watches every source shares ([`watch::WatchHub`]).
//!
//! [`object`] reads live objects for a reconcile (members by paged LIST, others by GET), trimmed
//! as they arrive; [`watch`] feeds [`LiveState`]; [`drift`] decides (pure) whether an object
//! drifted and how a fight backs off; [`health`] evaluates each object (pure, kstatus
//! conventions).

pub mod drift;
pub mod health;
pub mod object;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::manifest::ObjectRef;
use drift::{Drift, Entry, Expected, Fight};
use health::{Health, Status};

/// Everything known about one desired or member object.
#[derive(Clone, Debug, Default)]
pub struct Tracked {
    /// The object as last seen by the watch; `None` when it does not exist.
    pub entry: Option<Entry>,
    /// A watch has listed its scope since Driftless started expecting it: `entry` is real.
    pub seen: bool,
    /// What Driftless expects after its last apply; `None` for objects it does not manage now.
    pub expected: Option<Expected>,
    /// An apply of it is in flight: events are recorded but not judged until it returns.
    pub in_flight: bool,
    /// Queued for the source's loop to handle.
    pub queued: bool,
    /// The current, not yet corrected drift.
    pub drift: Option<Drift>,
    pub fight: Fight,
    /// Driftless's last write of it (uid and resourceVersion the server answered), until the
    /// watch has seen that very version: until then its entry does not tell the health of what
    /// was written.
    pub unseen_write: Option<(String, String)>,
    /// When that write was answered.
    pub written_at: Option<std::time::Instant>,
}

/// The live state of one source: the tracked objects and a channel of drifted ones.
pub struct LiveState {
    objects: Mutex<HashMap<ObjectRef, Tracked>>,
    drifted: mpsc::UnboundedSender<ObjectRef>,
    /// Counts the changes a status reads (an object seen, listed, applied, dropped): the status
    /// is recomputed only when it moved.
    version: AtomicU64,
}

impl LiveState {
    /// A new state and the receiver of drifted objects.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ObjectRef>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { objects: Mutex::new(HashMap::new()), drifted: tx, version: AtomicU64::new(0) }, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef, Tracked>> {
        self.objects.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks the objects to change them: the version moves.
    fn change(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef, Tracked>> {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.lock()
    }

    /// Moves with every change a status reads; equal versions mean nothing to recompute.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// What the watch last saw of an object's health, when that answers for Driftless's last
    /// write of it: a watch listed its scope, no apply of it is in flight, and the watch has seen
    /// the very object and version written (same uid and resourceVersion) or something after it.
    /// `None` when only a read can tell.
    pub fn current_health(&self, id: &ObjectRef) -> Option<Status> {
        let objects = self.lock();
        let t = objects.get(id).filter(|t| t.seen && !t.in_flight && t.unseen_write.is_none())?;
        t.entry.as_ref().map(|e| e.health.clone())
    }

    /// Driftless wrote the object: the server answered this uid and resourceVersion.
    pub fn written(&self, id: &ObjectRef, uid: &str, resource_version: &str) {
        if let Some(t) = self.change().get_mut(id) {
            // the watch event of the write may have come before the answer
            let seen = t.entry.as_ref().is_some_and(|e| e.uid == uid && e.resource_version == resource_version);
            t.unseen_write = (!seen).then(|| (uid.to_string(), resource_version.to_string()));
            t.written_at = Some(std::time::Instant::now());
        }
    }

    /// Judges one object and queues it when it drifted. Caller holds the lock.
    fn judge(&self, id: &ObjectRef, t: &mut Tracked) {
        if t.in_flight || !t.seen {
            return;
        }
        let Some(expected) = &t.expected else { return };
        t.drift = drift::detect(t.entry.as_ref(), expected);
        if t.drift.is_some() && !t.queued {
            t.queued = true;
            let _ = self.drifted.send(id.clone());
        }
    }

    /// A watch saw the object (or saw it deleted: `None`).
    pub fn observe(&self, id: &ObjectRef, entry: Option<Entry>) {
        let mut objects = self.change();
        match objects.get_mut(id) {
            Some(t) => {
                let caught_up = t
                    .unseen_write
                    .as_ref()
                    .is_some_and(|(uid, rv)| entry.as_ref().is_some_and(|e| e.uid == *uid && e.resource_version == *rv));
                if caught_up {
                    t.unseen_write = None;
                }
                t.entry = entry;
                t.seen = true;
                self.judge(id, t);
            }
            None => {
                if entry.is_some() {
                    objects.insert(id.clone(), Tracked { entry, seen: true, ..Tracked::default() });
                }
            }
        }
    }

    /// A watch finished listing a scope (group, kind, namespace) and found `present` in it: what
    /// it did not find is gone, whether expected and never seen, or seen before and deleted while
    /// no watch looked.
    pub fn listed(&self, group: &str, kind: &str, namespace: &str, present: &HashSet<ObjectRef>) {
        let mut objects = self.change();
        let ids: Vec<ObjectRef> = objects
            .iter()
            .filter(|(id, t)| {
                id.group == group
                    && id.kind == kind
                    && id.namespace == namespace
                    && (!t.seen || (t.entry.is_some() && !present.contains(*id)))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(t) = objects.get_mut(&id) {
                if !present.contains(&id) {
                    t.entry = None;
                }
                t.seen = true;
                self.judge(&id, t);
            }
        }
    }

    /// Marks an apply of the object as started: its events wait for [`LiveState::applied`].
    pub fn begin_apply(&self, id: &ObjectRef) {
        self.lock().entry(id.clone()).or_default().in_flight = true;
    }

    /// Records what an apply (or a listing of an unchanged object) left, then judges the object
    /// against the latest watched state.
    pub fn applied(&self, id: &ObjectRef, expected: Expected) {
        let mut objects = self.change();
        let t = objects.entry(id.clone()).or_default();
        t.in_flight = false;
        t.expected = Some(expected);
        self.judge(id, t);
    }

    /// An apply failed: stop holding its events back.
    pub fn apply_failed(&self, id: &ObjectRef) {
        if let Some(t) = self.change().get_mut(id) {
            t.in_flight = false;
        }
    }

    /// The objects Driftless manages now; anything else stops being expected (it is only kept
    /// while a watch still reports it, e.g. a member whose prune was held).
    pub fn retain_desired(&self, desired: &HashSet<ObjectRef>) {
        let mut objects = self.change();
        objects.retain(|id, t| {
            if !desired.contains(id) {
                t.expected = None;
                t.drift = None;
            }
            desired.contains(id) || t.entry.is_some()
        });
    }

    /// Forgets an object (deleted by prune).
    pub fn forget(&self, id: &ObjectRef) {
        self.change().remove(id);
    }

    /// Takes a queued object off the queue; returns its state.
    pub fn dequeue(&self, id: &ObjectRef) -> Option<Tracked> {
        let mut objects = self.lock();
        let t = objects.get_mut(id)?;
        t.queued = false;
        Some(t.clone())
    }

    /// Records a correction; true when it turned into a fight not reported before.
    pub fn corrected(&self, id: &ObjectRef, now: std::time::Instant) -> bool {
        self.lock().get_mut(id).map(|t| t.fight.on_corrected(now)).unwrap_or(false)
    }

    /// Queues an object again (after a backoff).
    pub fn requeue(&self, id: &ObjectRef) {
        let mut objects = self.lock();
        if let Some(t) = objects.get_mut(id) {
            t.queued = false;
            self.judge(id, t);
        }
    }

    /// The watched state of an object.
    pub fn get(&self, id: &ObjectRef) -> Option<Tracked> {
        self.lock().get(id).cloned()
    }

    /// Health of every managed object (`Unknown` "not observed yet" when no watch saw it).
    pub fn health(&self) -> Vec<(ObjectRef, Status)> {
        let objects = self.lock();
        let mut out: Vec<(ObjectRef, Status)> = objects
            .iter()
            .filter(|(_, t)| t.expected.is_some())
            .map(|(id, t)| {
                let status = match &t.entry {
                    Some(e) => e.health.clone(),
                    None => Status { health: Health::Unknown, reason: "not found".into() },
                };
                (id.clone(), status)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Objects whose drift is known and not corrected.
    pub fn drifted(&self) -> Vec<(ObjectRef, Drift)> {
        self.lock().iter().filter_map(|(id, t)| t.drift.clone().map(|d| (id.clone(), d))).collect()
    }

    /// How many objects are tracked (for memory accounting and tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::drift::Expected;
    use super::health::Status;
    use super::*;

    fn id(name: &str) -> ObjectRef {
        ObjectRef::new("", "ConfigMap", "a", name)
    }

    fn entry(fields: &str) -> Entry {
        Entry {
            uid: "u".into(),
            resource_version: "1".into(),
            generation: 0,
            desired_hash: None,
            fields_hash: fields.into(),
            other_manager: Some("kubectl-edit".into()),
            health: Status { health: Health::Healthy, reason: String::new() },
        }
    }

    #[test]
    fn nothing_is_judged_before_a_watch_has_seen_it() {
        let (state, mut rx) = LiveState::new();
        state.applied(&id("a"), Expected { fields_hash: "f1".into() });
        assert!(rx.try_recv().is_err(), "expected before any watch event: not deleted");
        state.listed("", "ConfigMap", "a", &HashSet::new());
        assert_eq!(rx.try_recv().unwrap(), id("a"), "listed and absent: deleted");
    }

    #[test]
    fn own_applies_are_not_drift_and_changes_by_others_are_queued_once() {
        let (state, mut rx) = LiveState::new();
        state.observe(&id("a"), Some(entry("f1")));
        state.applied(&id("a"), Expected { fields_hash: "f1".into() });
        assert!(rx.try_recv().is_err());
        // Driftless applies a new revision: the event of its own write arrives before the response
        state.begin_apply(&id("a"));
        state.observe(&id("a"), Some(entry("f2")));
        assert!(rx.try_recv().is_err(), "held back while in flight");
        state.applied(&id("a"), Expected { fields_hash: "f2".into() });
        assert!(rx.try_recv().is_err());
        // someone takes a field, twice before the loop gets to it
        state.observe(&id("a"), Some(entry("f3")));
        state.observe(&id("a"), Some(entry("f4")));
        assert_eq!(rx.try_recv().unwrap(), id("a"));
        assert!(rx.try_recv().is_err(), "queued once");
        assert_eq!(state.drifted().len(), 1);
        let t = state.dequeue(&id("a")).unwrap();
        assert!(matches!(t.drift, Some(Drift::Modified { by: Some(ref m) }) if m == "kubectl-edit"));
    }

    #[test]
    fn the_watch_tells_health_only_once_it_saw_what_was_written() {
        let (state, _rx) = LiveState::new();
        let at = |uid: &str, rv: &str, health: Health| Entry {
            uid: uid.into(),
            resource_version: rv.into(),
            health: Status { health, reason: String::new() },
            ..entry("f1")
        };
        let before = state.version();
        state.begin_apply(&id("a"));
        assert!(state.version() == before, "an apply begun is no status change");
        state.observe(&id("a"), Some(at("u1", "1", Health::Healthy)));
        assert_eq!(state.current_health(&id("a")), None, "in flight");
        state.applied(&id("a"), Expected { fields_hash: "f1".into() });
        state.written(&id("a"), "u1", "2");
        assert_eq!(state.current_health(&id("a")), None, "the watch has not seen version 2");
        state.observe(&id("a"), Some(at("u1", "2", Health::Progressing)));
        assert_eq!(state.current_health(&id("a")).map(|s| s.health), Some(Health::Progressing));
        state.observe(&id("a"), Some(at("u1", "3", Health::Healthy)));
        assert_eq!(state.current_health(&id("a")).map(|s| s.health), Some(Health::Healthy), "and what came after it");
        assert!(state.version() > before, "each observation moves the version");
        // recreated: the old object's entry (another uid) says nothing of the new one
        state.begin_apply(&id("a"));
        state.applied(&id("a"), Expected { fields_hash: "f1".into() });
        state.written(&id("a"), "u2", "9");
        state.observe(&id("a"), Some(at("u1", "3", Health::Healthy)));
        assert_eq!(state.current_health(&id("a")), None, "the old uid");
        state.observe(&id("a"), Some(at("u2", "9", Health::Progressing)));
        assert_eq!(state.current_health(&id("a")).map(|s| s.health), Some(Health::Progressing));
        // the write's event came before the answer
        state.begin_apply(&id("a"));
        state.observe(&id("a"), Some(at("u2", "10", Health::Healthy)));
        state.applied(&id("a"), Expected { fields_hash: "f1".into() });
        state.written(&id("a"), "u2", "10");
        assert_eq!(state.current_health(&id("a")).map(|s| s.health), Some(Health::Healthy));
        // a scope no watch listed yet: only a read can tell
        state.begin_apply(&id("b"));
        state.applied(&id("b"), Expected { fields_hash: "f1".into() });
        assert_eq!(state.current_health(&id("b")), None);
        let quiet = state.version();
        assert_eq!((state.health().len(), state.version()), (2, quiet), "reading moves nothing");
    }

    #[test]
    fn objects_that_left_git_are_no_longer_expected() {
        let (state, mut rx) = LiveState::new();
        state.observe(&id("gone"), Some(entry("f1")));
        state.applied(&id("gone"), Expected { fields_hash: "f1".into() });
        state.retain_desired(&HashSet::new());
        state.observe(&id("gone"), None);
        assert!(rx.try_recv().is_err(), "pruning an object is not drift");
        assert!(state.health().is_empty());
    }
}
