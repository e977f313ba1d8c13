//! Reconcile: one revision of one source becomes the live state of the cluster. The stages run
//! in order, each failing with its own reason ([`crate::Error::reason`]): fetch, render, plan,
//! live state, validate (dry-run), apply, prune, record. This file only orchestrates; each stage's
//! body lives in its module.
//!
//! Nothing is lost: a failed fetch, render, plan or validation applies nothing and prunes
//! nothing; prune runs only after every object of the revision applied cleanly. The one write
//! that can precede validation: CRDs and Namespaces of the revision, and new roles its bindings
//! name, applied first so that the objects needing them can be dry-run; they are additive and
//! never pruned by a failed sync.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::apply::validate::{decide, hold_drift, precheck};
use crate::apply::waves::{failures, skip_undone, Waves};
use crate::apply::{pick, Decision, Decisions, Listeners};
use crate::cluster::Cluster;
use crate::config::Source;
use crate::inventory::applyset::Inventory;
use crate::inventory::{self, Set};
use crate::live::object::{self, Keep, LiveObject};
use crate::live::watch::{Scope, WatchHub};
use crate::live::LiveState;
use crate::manifest::ObjectRef;
use crate::plan::prune::Hold;
use crate::plan::{self, ownership, schedule, Catalog, Plan, PlanOptions, Planned};
use crate::render::helm::{self, Capabilities, Helm};
use crate::render::kustomize::{self, Kustomize};
use crate::render::tool::Sandbox;
use crate::render::{self, Limits};
use crate::report::changes::{Action, ChangeSet};
use crate::report::{Heartbeat, Outcome, Reason, Report, State};
use crate::source::{self, Fetched, Revision};
use crate::{keys, Error};

/// What every reconcile of an agent shares.
#[derive(Clone)]
pub struct Context {
    pub cluster: Cluster,
    /// Where ApplySet parents live; never pruned.
    pub agent_namespace: String,
    /// Where bare repository caches live.
    pub cache_dir: PathBuf,
    /// This install's name (`--instance`), recorded on its parents: another install with a
    /// source of the same name in the same inventory namespace is refused, never shares its set.
    pub instance: String,
    pub limits: Limits,
    /// How kustomizations are built (each source sets its own time limit and remote policy).
    pub kustomize: Kustomize,
    /// How charts are rendered (each source sets its own time limit, release and values).
    pub helm: Helm,
    /// The watches of every source's members, shared.
    pub watches: Arc<WatchHub>,
}

/// How much of a revision is checked against the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Dry-run every object (`driftless sync`): finds drift too.
    Full,
    /// Dry-run and apply only objects whose recorded desired hash differs (`driftless run`, where
    /// watches find drift).
    Incremental,
}

/// What a reconcile needs beyond the source.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    pub mode: Mode,
    /// The source's live state, told about each apply so its watches do not mistake Driftless's
    /// own writes for drift, and about what is no longer desired before anything is pruned.
    pub live: Option<&'a LiveState>,
    /// Beaten at every step of the reconcile, for whoever watches it for a stall.
    pub heartbeat: Option<&'a Heartbeat>,
    /// Cancelled when a newer commit arrives: a wave's wait for health ends at once (the
    /// revision is then superseded, see [`crate::Error::Superseded`]).
    pub cancel: Option<&'a CancellationToken>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options { mode: Mode::Full, live: None, heartbeat: None, cancel: None }
    }
}

/// Reconciles one source once, dry-running every object.
pub async fn reconcile(ctx: &Context, source: &Source) -> Report {
    reconcile_with(ctx, source, Options::default()).await
}

/// Reconciles one source once.
pub async fn reconcile_with(ctx: &Context, source: &Source, opts: Options<'_>) -> Report {
    reconcile_fetched(ctx, source, opts, None).await
}

/// Reconciles one source once; `fetched` is a commit and its files already fetched (then the
/// fetch stage is skipped).
pub async fn reconcile_fetched(ctx: &Context, source: &Source, opts: Options<'_>, fetched: Option<(String, Revision)>) -> Report {
    let started = Instant::now();
    let mut run = Run { changes: ChangeSet::default(), commit: None, renderer: None, outcome: None };
    let result = run_stages(ctx, source, opts, fetched, &mut run).await;
    let (state, reason, message, error) = match result {
        Ok(None) => (State::Synced, None, String::new(), None),
        Ok(Some(hold)) => (State::PruneHeld, Some(Reason::PruneHeld), hold.to_string(), None),
        Err(e) => (State::Failed, Some(e.reason()), e.to_string(), Some(e)),
    };
    let Run { changes, commit, renderer, outcome } = run;
    let duration = started.elapsed();
    let report = Report { source: source.name.clone(), commit, state, reason, message, changes, renderer, duration, error, outcome };
    let rev = report.commit.as_deref().map(source::short).unwrap_or("-");
    let summary = report.changes.summary();
    match (report.state, report.reason) {
        (State::Failed, Some(reason)) => {
            warn!(source = %report.source, revision = rev, %reason, error = %report.message, %summary, "sync failed")
        }
        _ => info!(source = %report.source, revision = rev, state = ?report.state, %summary,
            duration_ms = report.duration.as_millis() as u64, "sync finished"),
    }
    report
}

/// What the stages leave for the report, whatever stage they stop at.
struct Run {
    changes: ChangeSet,
    commit: Option<String>,
    renderer: Option<String>,
    outcome: Option<Outcome>,
}

/// Asks the remote which commit the source's ref names and, unless it is `applied`, fetches it
/// and reads its files (see [`source::check_and_fetch`]).
pub async fn check_and_fetch(ctx: &Context, source: &Source, applied: Option<&str>) -> Result<Fetched, Error> {
    let cache = ctx.cache_dir.join(&source.name);
    Ok(source::check_and_fetch(source.spec.clone(), cache, applied.map(String::from), ctx.limits.read(), source.render).await?)
}

/// What the stages up to the live state leave: the revision rendered and planned, and what the
/// cluster holds of it (the set's recorded inventory, its members, the desired objects' live
/// state). A reconcile goes on to validate and apply it; `driftless plan` only compares it.
pub struct Prepared {
    pub commit: String,
    pub renderer: String,
    pub plan: Plan,
    pub catalog: Catalog,
    pub set: Set,
    /// The inventory the set's parent records (empty before the first sync).
    pub recorded: Inventory,
    pub members: Vec<inventory::Listed>,
    pub live: HashMap<ObjectRef, LiveObject>,
}

/// Whether the stages before the apply may write. A reconcile creates the agent's namespace and
/// records its claims on objects of other sets; a preview writes nothing at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    Allowed,
    Nothing,
}

/// Reads a commit already in the source's cache (the last good revision, to roll back to).
pub async fn read_commit(ctx: &Context, source: &Source, commit: &str) -> Result<Revision, Error> {
    let (spec, cache, limits, mode, commit) =
        (source.spec.clone(), ctx.cache_dir.join(&source.name), ctx.limits.read(), source.render, commit.to_string());
    let read = tokio::task::spawn_blocking(move || source::Repo::open(spec, &cache)?.read_revision(&commit, &limits, mode));
    Ok(read.await.map_err(|e| source::SourceError::Worker(e.to_string()))??)
}

/// The stages in order. `Ok(Some(hold))` when everything applied but the prune was held.
async fn run_stages(
    ctx: &Context,
    source: &Source,
    opts: Options<'_>,
    fetched: Option<(String, Revision)>,
    run: &mut Run,
) -> Result<Option<Hold>, Error> {
    let started = Instant::now();
    let to = Listeners { live: opts.live, heartbeat: opts.heartbeat, cancel: opts.cancel };
    let stage_done = |stage: &str| {
        to.beat();
        debug!(source = %source.name, stage, elapsed_ms = started.elapsed().as_millis() as u64, "stage done")
    };
    let cluster = &ctx.cluster;
    let keep = if opts.mode == Mode::Full { Keep::Body } else { Keep::Checks };
    let Prepared { commit, renderer, plan, catalog, set, recorded, members, live } =
        prepare(ctx, source, fetched, keep, Writes::Allowed, &stage_done, &mut run.commit, &mut run.renderer).await?;
    let desired_inventory = inventory::of_plan(&plan);
    let changes = &mut run.changes;

    // validate: a server-side dry-run of every object that can be checked before any write
    // (incrementally, an object whose recorded desired hash is unchanged needs none); objects
    // that need a Namespace, CRD or Role of this revision are prechecked in an existing namespace
    // where that can judge them, and dry-run in place once their definitions are applied.
    let exists = |id: &ObjectRef| live.contains_key(id);
    let unchanged =
        |p: &Planned| opts.mode == Mode::Incremental && live.get(&p.id).and_then(|o| o.desired_hash.as_deref()) == Some(p.hash.as_str());
    let schedule = schedule::build(&plan, &exists, &unchanged);
    let mut decisions: Decisions<'_> = pick(&plan, &schedule.unchanged).into_iter().map(|p| (&p.id, (Decision::Unchanged, None))).collect();
    decide(cluster, &plan, &pick(&plan, &schedule.validate), &live, &mut decisions, changes, to).await?;
    precheck(cluster, &plan, &pick(&plan, &schedule.precheck), &ctx.agent_namespace, changes, to).await?;
    let drifted = hold_drift(&plan, &live, source.self_heal, &mut decisions);
    stage_done("validate");

    // apply: record the superset inventory first, then definitions, then wave by wave and
    // tier by tier; a wave starts only when every object of the waves before it is Healthy.
    let superset = recorded.union(&desired_inventory);
    inventory::write_parent(cluster, &set.parent, &superset, &[(keys::INSTANCE, ctx.instance.clone())])
        .await
        .map_err(Error::request(Reason::ApplyFailed, "recording the inventory before the apply"))?;
    let waves = Waves { cluster, live: &live, to, health_timeout: source.health_timeout };
    if let Err(e) = waves.apply(&plan, &schedule, &mut decisions, changes).await {
        skip_undone(&plan, changes);
        return Err(e);
    }
    if let Some(state) = opts.live {
        // from here on, what left git is no longer expected: its deletion is not drift
        state.retain_desired(&plan.objects().iter().map(|p| p.id.clone()).collect());
    }
    stage_done("apply");

    // prune: members that left git, behind the safeguards, in reverse order.
    let hold = if source.prune { inventory::prune::prune(cluster, source, &set, &plan, &members, changes).await } else { None };
    stage_done("prune");

    // record: what the set holds now, and the revision.
    let deleted: HashSet<&ObjectRef> = changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| &c.id).collect();
    let remaining = inventory::remaining(&plan, &members, &deleted);
    let extra = [(keys::REVISION, commit), (keys::INSTANCE, ctx.instance.clone()), (keys::RENDERER, renderer)];
    inventory::write_parent(cluster, &set.parent, &remaining, &extra)
        .await
        .map_err(Error::request(Reason::PruneFailed, "recording the inventory after the prune"))?;
    run.outcome = Some(Outcome { scopes: scopes(&plan, &remaining, &catalog), plan, applyset_id: set.id, drifted });
    if changes.failed() {
        return Err(Error::Prune(failures(changes)));
    }
    Ok(hold)
}

/// Fetch, render, plan and live state: the stages that only read (see [`Writes`] for the two
/// writes a reconcile makes here). `commit` and `renderer` are filled in as soon as known, so a
/// failure of a later stage still names them.
#[allow(clippy::too_many_arguments)]
pub async fn prepare(
    ctx: &Context,
    source: &Source,
    fetched: Option<(String, Revision)>,
    keep: Keep,
    writes: Writes,
    stage_done: &(dyn Fn(&str) + Sync),
    commit_out: &mut Option<String>,
    renderer_out: &mut Option<String>,
) -> Result<Prepared, Error> {
    let cluster = &ctx.cluster;
    // fetch: ask the remote for the ref's commit (unless the caller just did), fetch it if new,
    // read its tree.
    let (commit, revision) = match fetched {
        Some(f) => f,
        None => match check_and_fetch(ctx, source, None).await? {
            Fetched::New { commit, revision } => (commit, revision),
            // with no commit applied every commit is new; never reconcile an unread revision
            Fetched::Unchanged(commit) => return Err(Error::Validation(format!("commit {commit} was not fetched"))),
        },
    };
    *commit_out = Some(commit.clone());
    stage_done("fetch");

    // discover, for a chart: its templates see the served kinds and the server's version as
    // `.Capabilities` (other revisions are rendered first, so a bad file is named whatever the
    // cluster answers)
    let discover = || async { cluster.discover().await.map_err(Error::request(Reason::ValidationFailed, "discovering the served kinds")) };
    let (discovered, capabilities) = match &revision {
        Revision::Chart(_) => {
            let discovered = discover().await?;
            let kube_version =
                cluster.server_version().await.map_err(Error::request(Reason::ValidationFailed, "reading the server's version"))?;
            let capabilities = Capabilities { kube_version, api_versions: helm::api_versions(&discovered) };
            (Some(discovered), capabilities)
        }
        _ => (None, Capabilities::default()),
    };

    // render: a kustomization built by kustomize or a chart by helm (in their sandbox), then
    // documents to objects, within limits, off the async worker threads.
    let renderer = match &revision {
        Revision::Files(_) => "plain".to_string(),
        Revision::Kustomization(_) => format!("kustomize {}", ctx.kustomize.version),
        Revision::Chart(_) => format!("helm {}", ctx.helm.version),
    };
    *renderer_out = Some(renderer.clone());
    let limits = ctx.limits.clone();
    // what a tool prints is one revision: bounded as a whole by the total size, not per file
    let rendered = Limits { max_file_bytes: limits.max_total_bytes, ..limits.clone() };
    let bounded = |sandbox: Sandbox, offline: bool| Sandbox {
        timeout: source.render_timeout,
        max_output: sandbox.max_output.min(limits.max_total_bytes),
        offline: sandbox.offline && offline,
    };
    let allow_remote = source.allow_remote_bases;
    let kustomize = Kustomize { allow_remote, sandbox: bounded(ctx.kustomize.sandbox, !allow_remote), ..ctx.kustomize.clone() };
    // helm never fetches: dependencies are vendored
    let helm = Helm { sandbox: bounded(ctx.helm.sandbox, true), ..ctx.helm.clone() };
    let src = source.clone();
    let manifests = blocking(move || match revision {
        Revision::Files(files) => render::render(&files, &limits),
        Revision::Kustomization(checkout) => render::render(&[kustomize::build(&kustomize, &checkout)?], &rendered),
        Revision::Chart(checkout) => {
            let files = helm::template(&helm, &checkout, src.helm_release(), &src.namespace, &src.helm, &capabilities)?;
            let (manifests, skipped) = helm::hooks(render::render(&files, &rendered)?);
            if !skipped.is_empty() {
                info!(source = %src.name, skipped = %skipped.join(", "), "left out the chart's delete, rollback and test hooks");
            }
            Ok(manifests)
        }
    })
    .await??;
    stage_done("render");

    // plan: resolve kinds through discovery, default namespaces, order, hash, label; read what
    // the set's parent records, and refuse a set another install holds.
    let catalog = Catalog::new(match discovered {
        Some(discovered) => discovered,
        None => discover().await?,
    });
    if writes == Writes::Allowed {
        inventory::ensure_namespace(cluster, &ctx.agent_namespace)
            .await
            .map_err(Error::request(Reason::ApplyFailed, "creating the agent's namespace"))?;
    }
    let set = Set::of(&source.name, &ctx.agent_namespace);
    let plan_opts = PlanOptions { default_namespace: source.namespace.clone(), applyset_id: set.id.clone(), source: source.name.clone() };
    let (plan, catalog) = blocking(move || (plan::build(manifests, &catalog, &plan_opts), catalog)).await?;
    let plan = plan.map_err(|e| Error::Validation(e.to_string()))?;
    let parent = inventory::read_parent(cluster, &set.parent)
        .await
        .map_err(Error::request(Reason::ValidationFailed, "reading the ApplySet parent"))?;
    let (recorded, holder) = parent.map_or((Inventory::default(), None), |(live, inv)| {
        (inv, live["metadata"]["annotations"][keys::INSTANCE].as_str().map(String::from))
    });
    if let Some(other) = holder.filter(|other| *other != ctx.instance) {
        return Err(Error::Validation(format!(
            "the ApplySet parent {} belongs to the Driftless install {other:?} (this is {:?}): name the source differently or give this install its own inventory namespace",
            set.parent, ctx.instance
        )));
    }
    let desired_inventory = inventory::of_plan(&plan);

    // live state: the set's members, and any desired object that is not one yet; objects of
    // another set are conflicts. Incrementally only what the checks read is kept (an object whose
    // hash changed is dry-run and written, a no-op on the server if equal); a full sync keeps
    // what a dry-run result is compared with.
    let versions = plan.objects().iter().map(|p| (p.id.group_kind(), p.resource.clone())).collect();
    let mut members = inventory::list_members(cluster, &catalog, &versions, &set.id, &recorded.union(&desired_inventory), keep)
        .await
        .map_err(|e| if e.is_forbidden() { Error::Validation(e.to_string()) } else { Error::Members(e) })?;
    // the listed objects move to the live state; the members keep their plain data for the prune
    let listed = members.iter_mut().map(|m| (m.member.id.clone(), std::mem::take(&mut m.object))).collect();
    let live = object::read_desired(cluster, &plan, listed, keep).await.map_err(Error::LiveObject)?;
    if let Err(conflicts) = check_ownership(&set, &plan, &live) {
        if writes == Writes::Allowed && !conflicts.claims.is_empty() {
            // record the claim, so the other source hands those objects over once its revision
            // no longer declares them
            let extra = [(keys::INSTANCE, ctx.instance.clone()), (keys::CLAIMS, inventory::prune::encode_claims(&conflicts.claims))];
            inventory::write_parent(cluster, &set.parent, &recorded, &extra)
                .await
                .map_err(Error::request(Reason::ApplyFailed, "recording claims"))?;
        }
        return Err(Error::Validation(plan::first_problems(&conflicts.problems)));
    }
    stage_done("plan and live state");
    Ok(Prepared { commit, renderer, plan, catalog, set, recorded, members, live })
}

/// Runs CPU-bound work (render, plan) off the async worker threads; a panic in it is a bug,
/// reported as `Panicked` (and counted as the loop's own panics are) without taking the loop down.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::Panicked(format!("the render and plan worker stopped: {e}")))
}

/// An object that already belongs to another ApplySet is a conflict, never adopted; parents and
/// the agent's bookkeeping are never a repository's (see [`ownership`]).
fn check_ownership(set: &Set, plan: &Plan, live: &HashMap<ObjectRef, LiveObject>) -> Result<(), ownership::Conflicts> {
    let holder = |id: &ObjectRef| {
        live.get(id).map(|l| ownership::Holder { part_of: l.part_of.as_deref(), source: l.source.as_deref(), is_parent: l.is_parent })
    };
    let set_of = |source: &str| Set::of(source, &set.agent_namespace).id;
    ownership::check(plan, &holder, &set_of, ownership::Scope { applyset_id: &set.id, agent_namespace: &set.agent_namespace })
}

/// Every kind and namespace the set's members may be in: what to watch.
fn scopes(plan: &Plan, inventory: &Inventory, catalog: &Catalog) -> Vec<Scope> {
    let versions: HashMap<_, _> = plan.objects().iter().map(|p| (p.id.group_kind(), p.resource.clone())).collect();
    let mut out = Vec::new();
    for gk in &inventory.group_kinds {
        let Some(rt) = versions.get(gk).or_else(|| catalog.preferred(gk)) else { continue };
        if rt.namespaced {
            out.extend(inventory.namespaces.iter().map(|ns| (rt.clone(), ns.clone())));
        } else {
            out.push((rt.clone(), String::new()));
        }
    }
    out
}
