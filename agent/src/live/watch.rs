//! Watches of every source's members, shared by all sources ([`WatchHub`]): per kind, one watch of
//! every namespace when the sources want the kind in more than one and the agent may list it
//! everywhere, otherwise one watch per namespace. Each selects objects by the presence of the
//! ApplySet part-of label and hands what it sees to the source whose ApplySet that label names,
//! so a thousand sources cost a watch per kind, not one per source per kind.
//!
//! A watch keeps what it saw, trimmed to [`Entry`]s: a source that subscribes to a watch already
//! listed is told its members from there, without a listing of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::drift::Entry;
use super::LiveState;
use crate::cluster::Cluster;
use crate::keys;
use crate::manifest::{GroupKind, ObjectRef, ResourceType};

/// Objects per page of a watch's initial listing, so a large set is never held at once.
const WATCH_PAGE: u32 = 100;

/// The first wait before a failed watch is restarted; it doubles with each failure in a row.
const RESTART_MIN: Duration = Duration::from_millis(500);

/// The longest wait before a failed watch is restarted: once the API server is back, drift is
/// seen again within it (kube-runtime's default grows to 30 s).
const RESTART_MAX: Duration = Duration::from_secs(5);

/// A watch that ran this long without failing starts over from [`RESTART_MIN`].
const RESTART_RESET: Duration = Duration::from_secs(60);

/// One scope a source's members may be in: a resource type in a namespace (empty for
/// cluster-scoped types).
pub type Scope = (Arc<ResourceType>, String);

/// Where a watch looks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reach {
    /// One namespace.
    Namespace(String),
    /// Every namespace, or the cluster for a cluster-scoped kind.
    All,
}

/// One watch: a kind and where it looks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchKey {
    pub kind: GroupKind,
    pub reach: Reach,
}

impl WatchKey {
    fn covers(&self, namespace: &str) -> bool {
        match &self.reach {
            Reach::All => true,
            Reach::Namespace(ns) => ns == namespace,
        }
    }
}

/// The watches that serve the wanted scopes (per kind, the namespaces wanted; `""` for a
/// cluster-scoped kind): a kind wanted in two namespaces or more is watched everywhere when the
/// agent may (one connection instead of one per namespace; the objects of ApplySets no source
/// here owns come along and are only kept, trimmed), otherwise in each namespace.
pub fn plan(wanted: &BTreeMap<GroupKind, BTreeSet<String>>, may_watch_everywhere: impl Fn(&GroupKind) -> bool) -> BTreeSet<WatchKey> {
    let mut out = BTreeSet::new();
    for (kind, namespaces) in wanted {
        if namespaces.is_empty() {
            continue;
        }
        let cluster_scoped = namespaces.contains("");
        if cluster_scoped || (namespaces.len() >= 2 && may_watch_everywhere(kind)) {
            out.insert(WatchKey { kind: kind.clone(), reach: Reach::All });
        } else {
            out.extend(namespaces.iter().map(|ns| WatchKey { kind: kind.clone(), reach: Reach::Namespace(ns.clone()) }));
        }
    }
    out
}

/// The watches of one agent, shared by its sources.
pub struct WatchHub {
    cluster: Cluster,
    hub: Mutex<Hub>,
    /// How many watches are open (`driftless_watches`).
    open: Gauge,
}

#[derive(Default)]
struct Hub {
    /// Each subscribed source, by ApplySet id.
    subscribers: HashMap<String, Subscriber>,
    running: HashMap<WatchKey, Running>,
    /// The resource type each kind is watched as (the first a source named).
    types: HashMap<GroupKind, Arc<ResourceType>>,
    /// Whether the agent may list and watch a kind everywhere (asked once per kind).
    everywhere: HashMap<GroupKind, bool>,
}

struct Subscriber {
    state: Arc<LiveState>,
    /// Per kind, the namespaces its members may be in (`""` for cluster-scoped kinds).
    scopes: BTreeMap<GroupKind, BTreeSet<String>>,
}

struct Running {
    task: JoinHandle<()>,
    feed: Arc<Feed>,
}

/// What one watch saw, and whom it tells.
struct Feed {
    key: WatchKey,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The watch completed a listing: `objects` is real.
    listed: bool,
    /// Every object the watch saw, with the ApplySet id its label names.
    objects: HashMap<ObjectRef, (String, Entry)>,
    /// The objects of each ApplySet.
    members: HashMap<String, HashSet<ObjectRef>>,
    /// The sources told, by ApplySet id: their state and the namespaces they want of this kind.
    told: HashMap<String, (Arc<LiveState>, BTreeSet<String>)>,
}

impl Seen {
    /// The source of `set` wants to hear of objects in `namespace`.
    fn wants(&self, set: &str, namespace: &str) -> Option<&Arc<LiveState>> {
        self.told.get(set).filter(|(_, namespaces)| namespaces.contains(namespace)).map(|(state, _)| state)
    }

    fn remove(&mut self, id: &ObjectRef) {
        if let Some((set, _)) = self.objects.remove(id) {
            if let Some(members) = self.members.get_mut(&set) {
                members.remove(id);
                if members.is_empty() {
                    self.members.remove(&set);
                }
            }
            if let Some(state) = self.wants(&set, &id.namespace) {
                state.observe(id, None);
            }
        }
    }

    fn upsert(&mut self, id: ObjectRef, set: String, entry: Entry) {
        // an object relabelled into another ApplySet leaves the first one
        if self.objects.get(&id).is_some_and(|(old, _)| *old != set) {
            self.remove(&id);
        }
        if let Some(state) = self.wants(&set, &id.namespace) {
            state.observe(&id, Some(entry.clone()));
        }
        self.members.entry(set.clone()).or_default().insert(id.clone());
        self.objects.insert(id, (set, entry));
    }

    /// Tells a source its members in `namespaces` and that they are all there is.
    fn replay(&self, kind: &GroupKind, set: &str, state: &LiveState, namespaces: &BTreeSet<String>) {
        let empty = HashSet::new();
        let members = self.members.get(set).unwrap_or(&empty);
        for namespace in namespaces {
            let present: HashSet<ObjectRef> = members.iter().filter(|id| id.namespace == *namespace).cloned().collect();
            for id in &present {
                if let Some((_, entry)) = self.objects.get(id) {
                    state.observe(id, Some(entry.clone()));
                }
            }
            state.listed(&kind.group, &kind.kind, namespace, &present);
        }
    }

    /// A listing completed: it replaces what was seen, and every source told hears of it.
    fn relisted(&mut self, kind: &GroupKind, listing: HashMap<ObjectRef, (String, Entry)>) {
        self.members.clear();
        for (id, (set, _)) in &listing {
            self.members.entry(set.clone()).or_default().insert(id.clone());
        }
        self.objects = listing;
        self.listed = true;
        for (set, (state, namespaces)) in &self.told {
            self.replay(kind, set, state, namespaces);
        }
    }
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tells the source of `set` what it wants of this watch from now on (nothing: `None`).
    fn tell(&self, set: &str, wanted: Option<(&Arc<LiveState>, BTreeSet<String>)>) {
        let mut seen = self.lock();
        let Some((state, namespaces)) = wanted else {
            seen.told.remove(set);
            return;
        };
        let before = seen.told.get(set).map(|(_, ns)| ns.clone()).unwrap_or_default();
        if before == namespaces {
            return;
        }
        let added: BTreeSet<String> = namespaces.difference(&before).cloned().collect();
        seen.told.insert(set.to_string(), (state.clone(), namespaces));
        if seen.listed {
            seen.replay(&self.key.kind, set, state, &added);
        }
    }
}

impl WatchHub {
    pub fn new(cluster: Cluster) -> Self {
        WatchHub { cluster, hub: Mutex::new(Hub::default()), open: Gauge::default() }
    }

    /// The number of open watches, for the metrics.
    pub fn open_watches(&self) -> Gauge {
        self.open.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes a source (by ApplySet id) to the watches of its scopes, from now on instead of
    /// what it was subscribed to before; starts and stops watches as the set of scopes changed.
    pub async fn subscribe(&self, applyset_id: &str, state: &Arc<LiveState>, scopes: &[Scope]) {
        let mut wanted: BTreeMap<GroupKind, BTreeSet<String>> = BTreeMap::new();
        let mut types = Vec::new();
        for (rt, ns) in scopes {
            let kind = GroupKind::new(rt.group.clone(), rt.kind.clone());
            let namespace = if rt.namespaced { ns.clone() } else { String::new() };
            wanted.entry(kind.clone()).or_default().insert(namespace);
            types.push((kind, rt.clone()));
        }
        // kinds about to span namespaces: may the agent watch them everywhere? (asked unlocked)
        let to_ask: Vec<(GroupKind, Arc<ResourceType>)> = {
            let mut hub = self.lock();
            for (kind, rt) in types {
                hub.types.entry(kind).or_insert(rt);
            }
            let mut union = hub.wanted_except(applyset_id);
            for (kind, namespaces) in &wanted {
                union.entry(kind.clone()).or_default().extend(namespaces.iter().cloned());
            }
            union
                .iter()
                .filter(|(kind, namespaces)| namespaces.len() >= 2 && !namespaces.contains("") && !hub.everywhere.contains_key(*kind))
                .filter_map(|(kind, _)| Some((kind.clone(), hub.types.get(kind)?.clone())))
                .collect()
        };
        for (kind, rt) in to_ask {
            match self.cluster.may_watch_everywhere(&rt).await {
                Ok(may) => {
                    debug!(kind = %kind, everywhere = may, "may the agent watch it in every namespace");
                    self.lock().everywhere.insert(kind, may);
                }
                // asked again at the next subscription; meanwhile watched per namespace
                Err(e) => warn!(kind = %kind, error = %e, "cannot tell whether the agent may watch it in every namespace"),
            }
        }
        let mut hub = self.lock();
        hub.subscribers.insert(applyset_id.to_string(), Subscriber { state: state.clone(), scopes: wanted });
        self.rewire(&mut hub);
    }

    /// Ends a source's subscription; watches no source needs stop.
    pub fn unsubscribe(&self, applyset_id: &str) {
        let mut hub = self.lock();
        if hub.subscribers.remove(applyset_id).is_some() {
            self.rewire(&mut hub);
        }
    }

    /// Whether every watch of the source's scopes has listed them (true when it has none).
    pub fn synced(&self, applyset_id: &str) -> bool {
        let hub = self.lock();
        let Some(subscriber) = hub.subscribers.get(applyset_id) else { return true };
        subscriber.scopes.iter().all(|(kind, namespaces)| {
            namespaces
                .iter()
                .all(|ns| hub.running.iter().any(|(key, running)| key.kind == *kind && key.covers(ns) && running.feed.lock().listed))
        })
    }

    /// The watches open now.
    pub fn keys(&self) -> BTreeSet<WatchKey> {
        self.lock().running.keys().cloned().collect()
    }

    /// Starts the watches the subscriptions need, stops the others, and tells each watch whom to
    /// tell of what.
    fn rewire(&self, hub: &mut Hub) {
        let wanted = hub.wanted_except("");
        let keys = plan(&wanted, |kind| hub.everywhere.get(kind).copied().unwrap_or(false));
        hub.running.retain(|key, running| {
            let keep = keys.contains(key) && !running.task.is_finished();
            if !keep {
                running.task.abort();
            }
            keep
        });
        for key in &keys {
            if hub.running.contains_key(key) {
                continue;
            }
            let Some(rt) = hub.types.get(&key.kind).cloned() else { continue };
            let namespace = match &key.reach {
                Reach::Namespace(ns) => ns.as_str(),
                Reach::All => "",
            };
            let api = self.cluster.api(&rt, namespace);
            let feed = Arc::new(Feed { key: key.clone(), seen: Mutex::default() });
            let task = tokio::spawn(watch(api, rt, feed.clone()));
            hub.running.insert(key.clone(), Running { task, feed });
        }
        for (key, running) in &hub.running {
            for (set, subscriber) in &hub.subscribers {
                let namespaces: BTreeSet<String> = subscriber
                    .scopes
                    .get(&key.kind)
                    .map(|all| all.iter().filter(|ns| key.covers(ns)).cloned().collect())
                    .unwrap_or_default();
                running.feed.tell(set, (!namespaces.is_empty()).then_some((&subscriber.state, namespaces)));
            }
            let gone: Vec<String> = running.feed.lock().told.keys().filter(|set| !hub.subscribers.contains_key(*set)).cloned().collect();
            for set in gone {
                running.feed.tell(&set, None);
            }
        }
        self.open.set(hub.running.len() as i64);
    }
}

impl Hub {
    /// Per kind, the namespaces every subscriber but `except` wants.
    fn wanted_except(&self, except: &str) -> BTreeMap<GroupKind, BTreeSet<String>> {
        let mut out: BTreeMap<GroupKind, BTreeSet<String>> = BTreeMap::new();
        for (set, subscriber) in &self.subscribers {
            if set == except {
                continue;
            }
            for (kind, namespaces) in &subscriber.scopes {
                out.entry(kind.clone()).or_default().extend(namespaces.iter().cloned());
            }
        }
        out
    }
}

impl Drop for WatchHub {
    fn drop(&mut self) {
        for running in self.lock().running.values() {
            running.task.abort();
        }
    }
}

/// One source's subscription to the hub, ended when it is dropped (its loop ended).
pub struct Subscription {
    hub: Arc<WatchHub>,
    applyset_id: Option<String>,
}

impl Subscription {
    pub fn new(hub: Arc<WatchHub>) -> Self {
        Subscription { hub, applyset_id: None }
    }

    /// Watches the source's scopes from now on.
    pub async fn update(&mut self, state: &Arc<LiveState>, applyset_id: &str, scopes: &[Scope]) {
        if let Some(old) = self.applyset_id.as_deref().filter(|old| *old != applyset_id) {
            self.hub.unsubscribe(old);
        }
        self.applyset_id = Some(applyset_id.to_string());
        self.hub.subscribe(applyset_id, state, scopes).await;
    }

    /// Whether every watch of the source's scopes has listed them.
    pub fn synced(&self) -> bool {
        self.applyset_id.as_deref().is_none_or(|id| self.hub.synced(id))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(id) = &self.applyset_id {
            self.hub.unsubscribe(id);
        }
    }
}

/// Runs one watch until it is aborted, feeding what it sees to `feed`.
async fn watch(api: kube::Api<kube::api::DynamicObject>, rt: Arc<ResourceType>, feed: Arc<Feed>) {
    let trim = |o: kube::api::DynamicObject| {
        let id = ObjectRef::new(
            rt.group.clone(),
            rt.kind.clone(),
            o.metadata.namespace.clone().unwrap_or_default(),
            o.metadata.name.clone().unwrap_or_default(),
        );
        let set = o.metadata.labels.as_ref().and_then(|l| l.get(keys::APPLYSET_PART_OF)).cloned().unwrap_or_default();
        let value = serde_json::to_value(o).unwrap_or_default();
        (id, set, Entry::from_object(&rt.group, &rt.kind, &value))
    };
    let mut listing: HashMap<ObjectRef, (String, Entry)> = HashMap::new();
    // small pages: the initial listing of a large set is never held at once
    let config = watcher::Config::default().labels(keys::APPLYSET_PART_OF).page_size(WATCH_PAGE);
    let backoff = ResetTimerBackoff::new(RestartBackoff::default(), RESTART_RESET);
    let mut stream = watcher::watcher(api, config).backoff(backoff).boxed();
    let key = &feed.key;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(o)) => {
                let (id, set, entry) = trim(o);
                listing.insert(id, (set, entry));
            }
            Ok(Event::InitDone) => {
                let objects = listing.len();
                feed.lock().relisted(&key.kind, std::mem::take(&mut listing));
                debug!(kind = %key.kind, reach = ?key.reach, objects, "watch listed");
            }
            Ok(Event::Apply(o)) => {
                let (id, set, entry) = trim(o);
                feed.lock().upsert(id, set, entry);
            }
            Ok(Event::Delete(o)) => {
                let (id, _, _) = trim(o);
                feed.lock().remove(&id);
            }
            Err(e) => warn!(kind = %key.kind, reach = ?key.reach, error = %e, "watch error; retrying"),
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
    use super::super::health::{Health, Status};
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

    fn kind(k: &str) -> GroupKind {
        GroupKind::new("", k)
    }

    fn wants(pairs: &[(&str, &[&str])]) -> BTreeMap<GroupKind, BTreeSet<String>> {
        pairs.iter().map(|(k, ns)| (kind(k), ns.iter().map(|n| n.to_string()).collect())).collect()
    }

    fn key(k: &str, ns: Option<&str>) -> WatchKey {
        WatchKey { kind: kind(k), reach: ns.map_or(Reach::All, |n| Reach::Namespace(n.into())) }
    }

    #[test]
    fn a_kind_in_many_namespaces_is_one_watch_where_the_agent_may_watch_everywhere() {
        let many: Vec<String> = (0..1000).map(|i| format!("app-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let wanted = wants(&[("ConfigMap", &many), ("Service", &many), ("Namespace", &[""]), ("Secret", &["one"])]);
        let everywhere = plan(&wanted, |_| true);
        assert_eq!(
            everywhere,
            BTreeSet::from([key("ConfigMap", None), key("Service", None), key("Namespace", None), key("Secret", Some("one"))])
        );
        // namespace-scoped RBAC: one watch per namespace, the cluster-scoped kind still one
        let per_namespace = plan(&wanted, |_| false);
        assert_eq!(per_namespace.len(), 1000 + 1000 + 1 + 1);
        assert!(per_namespace.contains(&key("ConfigMap", Some("app-7"))) && per_namespace.contains(&key("Namespace", None)));
        assert!(plan(&wants(&[("ConfigMap", &[])]), |_| true).is_empty(), "nothing wanted, nothing watched");
    }

    fn entry(rv: &str) -> Entry {
        Entry {
            uid: "u".into(),
            resource_version: rv.into(),
            generation: 0,
            desired_hash: None,
            fields_hash: "f".into(),
            other_manager: None,
            health: Status { health: Health::Healthy, reason: String::new() },
        }
    }

    fn cm(ns: &str, name: &str) -> ObjectRef {
        ObjectRef::new("", "ConfigMap", ns, name)
    }

    #[test]
    fn a_watch_tells_each_source_only_its_own_members_in_the_namespaces_it_wants() {
        let feed = Feed { key: key("ConfigMap", None), seen: Mutex::default() };
        let (a, _ra) = LiveState::new();
        let (b, _rb) = LiveState::new();
        let (a, b) = (Arc::new(a), Arc::new(b));
        feed.tell("set-a", Some((&a, BTreeSet::from(["x".to_string()]))));
        // the first listing: a's member in x, b's in y, an object of a set nobody here owns
        let listing = HashMap::from([
            (cm("x", "a1"), ("set-a".to_string(), entry("1"))),
            (cm("y", "b1"), ("set-b".to_string(), entry("1"))),
            (cm("x", "other"), ("set-z".to_string(), entry("1"))),
        ]);
        feed.lock().relisted(&kind("ConfigMap"), listing);
        assert!(a.get(&cm("x", "a1")).is_some_and(|t| t.seen && t.entry.is_some()));
        assert_eq!(a.len(), 1, "only its own member");
        // b subscribes to the listed watch: told from what it kept, no listing of its own
        feed.tell("set-b", Some((&b, BTreeSet::from(["y".to_string()]))));
        assert!(b.get(&cm("y", "b1")).is_some_and(|t| t.seen && t.entry.as_ref().is_some_and(|e| e.resource_version == "1")));
        // events go to the owner only
        feed.lock().upsert(cm("y", "b1"), "set-b".into(), entry("2"));
        assert!(b.get(&cm("y", "b1")).is_some_and(|t| t.entry.is_some_and(|e| e.resource_version == "2")));
        assert!(a.get(&cm("y", "b1")).is_none());
        // relabelled from b's set into a's (in x? no: in y, which a does not want): b sees it go
        feed.lock().upsert(cm("y", "b1"), "set-a".into(), entry("3"));
        assert!(b.get(&cm("y", "b1")).is_some_and(|t| t.entry.is_none()), "left b's set");
        assert!(a.get(&cm("y", "b1")).is_none(), "a does not want namespace y");
        // deleted while the watch was down: the next listing lacks it, and a hears it is gone
        feed.lock().relisted(&kind("ConfigMap"), HashMap::new());
        assert!(a.get(&cm("x", "a1")).is_some_and(|t| t.seen && t.entry.is_none()));
        // an ended subscription hears nothing more
        feed.tell("set-a", None);
        feed.lock().upsert(cm("x", "a2"), "set-a".into(), entry("1"));
        assert!(a.get(&cm("x", "a2")).is_none());
    }
}
