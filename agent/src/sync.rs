//! Reconcile: one revision of one source becomes the live state of the cluster. The stages run
//! in order, each failing with its own reason ([`crate::Error::reason`]):
//! fetch, render, plan, validate (dry-run), apply, prune.
//!
//! Nothing is lost: a failed fetch, render, plan or validation applies nothing and prunes
//! nothing; prune runs only after every object of the revision applied cleanly.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::apply::changeset::{Action, ChangeSet};
use crate::apply::{self, api_message, Cluster, Decision};
use crate::config::Source;
use crate::manifest::ObjectRef;
use crate::plan::prune::{plan_prune, Hold, PrunePolicy};
use crate::plan::{self, Plan, PlanOptions, Planned};
use crate::prune::applyset::{self, Inventory};
use crate::prune::{self as inventory, Member};
use crate::render::{self, Limits};
use crate::source::Repo;
use crate::{keys, Error};

/// How long to wait for new CRDs to be served.
const CRD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a recreated object may take to disappear.
const RECREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// What every reconcile of an agent shares.
#[derive(Clone)]
pub struct Context {
    pub cluster: Cluster,
    /// Where ApplySet parents live; never pruned.
    pub agent_namespace: String,
    /// Where bare repository caches live.
    pub cache_dir: PathBuf,
    pub limits: Limits,
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

/// The outcome of one reconcile.
#[derive(Debug, Serialize)]
pub struct Report {
    pub source: String,
    /// The commit reconciled (when the fetch got that far).
    pub commit: Option<String>,
    pub state: State,
    /// `FetchFailed`, `RenderFailed`, ... or `PruneHeld`; empty when synced.
    pub reason: String,
    pub message: String,
    pub changes: ChangeSet,
    #[serde(skip)]
    pub duration: Duration,
    #[serde(skip)]
    pub error: Option<Error>,
}

/// Reconciles one source once.
pub async fn reconcile(ctx: &Context, source: &Source) -> Report {
    let started = Instant::now();
    let mut changes = ChangeSet::default();
    let mut commit = None;
    let result = run_stages(ctx, source, &mut commit, &mut changes).await;
    let (state, reason, message, error) = match result {
        Ok(None) => (State::Synced, String::new(), String::new(), None),
        Ok(Some(hold)) => (State::PruneHeld, "PruneHeld".to_string(), hold.to_string(), None),
        Err(e) => (State::Failed, e.reason().to_string(), e.to_string(), Some(e)),
    };
    let report = Report { source: source.name.clone(), commit, state, reason, message, changes, duration: started.elapsed(), error };
    let rev = report.commit.as_deref().map(short).unwrap_or("-");
    match report.state {
        State::Failed => warn!(source = %report.source, revision = rev, reason = %report.reason, error = %report.message,
            summary = %report.changes.summary(), "sync failed"),
        _ => info!(source = %report.source, revision = rev, state = ?report.state, summary = %report.changes.summary(),
            duration_ms = report.duration.as_millis() as u64, "sync finished"),
    }
    report
}

/// The stages in order. `Ok(Some(hold))` when everything applied but the prune was held.
async fn run_stages(
    ctx: &Context,
    source: &Source,
    commit_out: &mut Option<String>,
    changes: &mut ChangeSet,
) -> Result<Option<Hold>, Error> {
    // fetch: ask the remote for the ref's commit, fetch it if new, read its tree.
    let (commit, files) = fetch(ctx, source).await?;
    *commit_out = Some(commit.clone());

    // render: documents to objects, within limits.
    let manifests = render::render(&files, &ctx.limits)?;

    // plan: resolve kinds through discovery, default namespaces, order, hash, label.
    let cluster = &ctx.cluster;
    let catalog = cluster.discover().await?;
    inventory::ensure_namespace(cluster, &ctx.agent_namespace).await?;
    let parent = applyset::parent_ref(&source.name, &ctx.agent_namespace);
    let applyset_id = applyset::applyset_id(&parent);
    let opts = PlanOptions {
        default_namespace: source.namespace.clone(),
        applyset_id: applyset_id.clone(),
        source: source.name.clone(),
    };
    let plan = plan::build(manifests, &catalog, &opts).map_err(|e| Error::Validation(e.to_string()))?;
    let recorded = inventory::read_parent(cluster, &parent).await?.map(|(_, inv)| inv).unwrap_or_default();
    let desired_inventory = inventory_of(&plan);

    // live state: the set's members, and any desired object that is not one yet.
    let versions = plan.objects.iter().map(|p| (p.id.group_kind(), p.resource.clone())).collect();
    let members = inventory::list_members(
        cluster,
        &catalog,
        &versions,
        &applyset_id,
        &recorded.union(&desired_inventory),
        &ctx.agent_namespace,
    )
    .await?;
    let live = live_objects(cluster, &plan, &members).await?;
    check_ownership(&plan, &live, &applyset_id)?;

    // validate: a server-side dry-run of every object that can be checked before any write;
    // objects in namespaces or of kinds this revision creates are dry-run once those exist.
    let deferred = |p: &Planned| p.needs_crd || creates_namespace(&plan, &live, &p.id.namespace);
    let ready: Vec<&Planned> = plan.objects.iter().filter(|p| !deferred(p)).collect();
    let mut decisions: HashMap<ObjectRef, Decision> = HashMap::new();
    match apply::dry_run(cluster, &ready, &live).await {
        Ok(d) => decisions.extend(ready.iter().map(|p| p.id.clone()).zip(d)),
        Err(failures) => return Err(validation_failed(failures, changes)),
    }

    // apply: record the superset inventory first, then stage by stage.
    inventory::write_parent(cluster, &parent, &recorded.union(&desired_inventory), &[]).await?;
    apply_stages(cluster, &plan, &live, &mut decisions, changes).await?;

    // prune: members that left git, behind the safeguards, in reverse order.
    let hold = if source.prune {
        prune(ctx, source, &plan, &members, &parent, &applyset_id, changes).await
    } else {
        None
    };

    // record: what the set holds now, and the revision.
    let remaining = remaining_inventory(&plan, &members, changes);
    let state = if hold.is_some() { "PruneHeld" } else { "Synced" };
    inventory::write_parent(
        cluster,
        &parent,
        &remaining,
        &[("driftless.dev/revision", commit.clone()), ("driftless.dev/state", state.to_string())],
    )
    .await?;
    if changes.failed() {
        let failed: Vec<String> =
            changes.entries.iter().filter(|c| c.action == Action::Failed).map(|c| format!("{}: {}", c.id, c.message)).collect();
        return Err(Error::Prune(failed.join("; ")));
    }
    Ok(hold)
}

async fn fetch(ctx: &Context, source: &Source) -> Result<(String, Vec<crate::manifest::SourceFile>), Error> {
    let spec = source.spec.clone();
    let cache = ctx.cache_dir.join(&source.name);
    let limits = ctx.limits.clone();
    let joined = tokio::task::spawn_blocking(move || {
        // One cache per source: sources sharing a URL never fetch into the same repository at once.
        let repo = Repo::open(spec, &cache)?;
        let commit = repo.remote_commit()?;
        repo.fetch(&commit)?;
        let files = repo.read(&commit, &limits)?;
        Ok::<_, crate::source::SourceError>((commit, files))
    })
    .await;
    match joined {
        Ok(r) => Ok(r?),
        Err(e) => Err(Error::Validation(format!("the git worker stopped: {e}"))),
    }
}

/// Group-kinds and namespaces of the desired objects.
fn inventory_of(plan: &Plan) -> Inventory {
    Inventory { group_kinds: plan.group_kinds(), namespaces: plan.namespaces() }
}

/// Live objects by identity: members from the listing, others by GET.
async fn live_objects(cluster: &Cluster, plan: &Plan, members: &[Member]) -> Result<HashMap<ObjectRef, Value>, Error> {
    let mut live: HashMap<ObjectRef, Value> = members.iter().map(|m| (m.live.id.clone(), m.object.clone())).collect();
    let missing: Vec<&Planned> = plan.objects.iter().filter(|p| !live.contains_key(&p.id) && !p.needs_crd).collect();
    let missing = &missing;
    let fetched: Vec<(ObjectRef, Result<Option<Value>, kube::Error>)> = stream::iter(0..missing.len())
        .map(|i| async move {
            let p = missing[i];
            (p.id.clone(), cluster.get(&p.resource, &p.id).await)
        })
        .buffer_unordered(apply::CONCURRENCY)
        .collect()
        .await;
    for (id, result) in fetched {
        match result {
            Ok(Some(o)) => {
                live.insert(id, o);
            }
            Ok(None) => {}
            // a namespace that does not exist yet answers 404 above; anything else is fatal
            Err(e) => return Err(Error::Validation(format!("{id}: reading the live object: {}", api_message(&e)))),
        }
    }
    Ok(live)
}

/// An object that already belongs to another ApplySet is a conflict, never adopted.
fn check_ownership(plan: &Plan, live: &HashMap<ObjectRef, Value>, applyset_id: &str) -> Result<(), Error> {
    let conflicts: Vec<String> = plan
        .objects
        .iter()
        .filter_map(|p| {
            let other = live.get(&p.id)?["metadata"]["labels"][keys::APPLYSET_PART_OF].as_str()?;
            (other != applyset_id).then(|| {
                format!("{} ({}): already belongs to another ApplySet ({other}); not adopted", p.id, p.origin)
            })
        })
        .collect();
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(Error::Validation(conflicts.join("; ")))
    }
}

/// Whether this revision creates the namespace (so objects in it are dry-run after it exists).
fn creates_namespace(plan: &Plan, live: &HashMap<ObjectRef, Value>, namespace: &str) -> bool {
    if namespace.is_empty() {
        return false;
    }
    let id = ObjectRef { group: String::new(), kind: "Namespace".into(), namespace: String::new(), name: namespace.into() };
    plan.get(&id).is_some() && !live.contains_key(&id)
}

fn validation_failed(failures: Vec<(ObjectRef, String)>, changes: &mut ChangeSet) -> Error {
    let text: Vec<String> = failures.iter().map(|(id, m)| format!("{id}: {m}")).collect();
    for (id, m) in failures {
        changes.push(id, Action::Failed, m);
    }
    Error::Validation(text.join("; "))
}

/// Applies the plan group by group (wave, then stage), each group concurrently. Objects that
/// could not be dry-run before are dry-run when their group comes; a failure stops the apply.
async fn apply_stages(
    cluster: &Cluster,
    plan: &Plan,
    live: &HashMap<ObjectRef, Value>,
    decisions: &mut HashMap<ObjectRef, Decision>,
    changes: &mut ChangeSet,
) -> Result<(), Error> {
    let mut groups: Vec<Vec<&Planned>> = Vec::new();
    for p in &plan.objects {
        match groups.last_mut() {
            Some(g) if g[0].wave == p.wave && g[0].stage == p.stage => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    for (i, group) in groups.iter().enumerate() {
        let pending: Vec<&Planned> = group.iter().copied().filter(|p| !decisions.contains_key(&p.id)).collect();
        if !pending.is_empty() {
            match apply::dry_run(cluster, &pending, live).await {
                Ok(d) => decisions.extend(pending.iter().map(|p| p.id.clone()).zip(d)),
                Err(failures) => {
                    let err = validation_failed(failures, changes);
                    skip_rest(&groups[i..], changes);
                    return Err(err);
                }
            }
        }
        let decided: &HashMap<ObjectRef, Decision> = decisions;
        let results: Vec<(ObjectRef, Action, String)> = stream::iter(0..group.len())
            .map(|j| async move {
                let p = group[j];
                apply_one(cluster, p, decided[&p.id]).await
            })
            .buffered(apply::CONCURRENCY)
            .collect()
            .await;
        let failed = results.iter().any(|r| r.1 == Action::Failed);
        for (id, action, message) in results {
            changes.push(id, action, message);
        }
        if failed {
            skip_rest(&groups[i + 1..], changes);
            let failed: Vec<String> = changes
                .entries
                .iter()
                .filter(|c| c.action == Action::Failed)
                .map(|c| format!("{}: {}", c.id, c.message))
                .collect();
            return Err(Error::Apply(failed.join("; ")));
        }
        let crds: Vec<String> = group.iter().filter(|p| p.id.kind == "CustomResourceDefinition").map(|p| p.id.name.clone()).collect();
        if !crds.is_empty() {
            cluster.wait_crds_established(&crds, CRD_TIMEOUT).await.map_err(Error::Apply)?;
        }
    }
    Ok(())
}

async fn apply_one(cluster: &Cluster, p: &Planned, decision: Decision) -> (ObjectRef, Action, String) {
    let id = p.id.clone();
    let result = match decision {
        Decision::Unchanged => return (id, Action::Unchanged, String::new()),
        Decision::Create => cluster.apply(p, false).await.map(|_| Action::Created).map_err(|e| api_message(&e)),
        Decision::Configure => cluster.apply(p, false).await.map(|_| Action::Configured).map_err(|e| api_message(&e)),
        Decision::Recreate => recreate(cluster, p).await.map(|_| Action::Recreated),
    };
    match result {
        Ok(action) => (id, action, String::new()),
        Err(message) => (id, Action::Failed, message),
    }
}

/// Deletes and creates again an object whose immutable fields changed.
async fn recreate(cluster: &Cluster, p: &Planned) -> Result<(), String> {
    cluster.delete(&p.resource, &p.id, None).await.map_err(|e| format!("delete before recreate: {}", api_message(&e)))?;
    cluster.wait_gone(&p.resource, &p.id, RECREATE_TIMEOUT).await?;
    cluster.apply(p, false).await.map(|_| ()).map_err(|e| format!("create after delete: {}", api_message(&e)))
}

fn skip_rest(groups: &[Vec<&Planned>], changes: &mut ChangeSet) {
    for p in groups.iter().flatten() {
        if !changes.entries.iter().any(|c| c.id == p.id) {
            changes.push(p.id.clone(), Action::Skipped, "not applied: an earlier stage failed");
        }
    }
}

async fn prune(
    ctx: &Context,
    source: &Source,
    plan: &Plan,
    members: &[Member],
    parent: &ObjectRef,
    applyset_id: &str,
    changes: &mut ChangeSet,
) -> Option<Hold> {
    let policy = PrunePolicy {
        applyset_id: applyset_id.to_string(),
        allow_empty: source.allow_empty,
        max_prune_percent: source.max_prune_percent,
        prunable: source.prunable.clone(),
        agent_namespace: ctx.agent_namespace.clone(),
        parent: parent.clone(),
    };
    let desired: HashSet<ObjectRef> = plan.objects.iter().map(|p| p.id.clone()).collect();
    let live: Vec<_> = members.iter().map(|m| m.live.clone()).collect();
    let prune_plan = plan_prune(&live, &desired, &policy);
    for (id, reason) in &prune_plan.kept {
        if *reason != crate::plan::prune::KeepReason::NotAMember {
            changes.push(id.clone(), Action::Skipped, format!("not pruned: {reason:?}"));
        }
    }
    if let Some(hold) = &prune_plan.held {
        warn!(source = %source.name, %hold, "prune held");
        return Some(hold.clone());
    }
    let types = members.iter().map(|m| (m.live.id.clone(), m.resource.clone())).collect();
    inventory::execute(&ctx.cluster, &prune_plan, &types, changes).await;
    None
}

/// The inventory after a reconcile: the desired objects plus members that still exist.
fn remaining_inventory(plan: &Plan, members: &[Member], changes: &ChangeSet) -> Inventory {
    let deleted: HashSet<&ObjectRef> =
        changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| &c.id).collect();
    let mut inv = inventory_of(plan);
    for m in members.iter().filter(|m| !deleted.contains(&m.live.id)) {
        inv.group_kinds.insert(m.live.id.group_kind());
        if !m.live.id.namespace.is_empty() {
            inv.namespaces.insert(m.live.id.namespace.clone());
        }
    }
    inv
}

/// The first 12 characters of a commit.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}
