//! Reconcile: one revision of one source becomes the live state of the cluster. The stages run
//! in order, each failing with its own reason ([`crate::Error::reason`]):
//! fetch, render, plan, validate (dry-run), apply, prune.
//!
//! Nothing is lost: a failed fetch, render, plan or validation applies nothing and prunes
//! nothing; prune runs only after every object of the revision applied cleanly. The one write
//! that can precede validation: CRDs and Namespaces of the revision, and new roles its bindings
//! name, applied first so that the objects needing them can be dry-run; they are additive and
//! never pruned by a failed sync.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::apply::changeset::{Action, ChangeSet};
use crate::apply::{self, api_message, Cluster, Decision, Keep, Live};
use crate::config::Source;
use crate::live::drift::Expected;
use crate::live::health::{self, Health};
use crate::live::watch::Scope;
use crate::live::LiveState;
use crate::manifest::ObjectRef;
use crate::plan::ownership;
use crate::plan::prune::{plan_prune, Hold, PrunePolicy};
use crate::plan::schedule::{self, Schedule};
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
    /// This install's name (`--instance`), recorded on its parents: another install with a
    /// source of the same name in the same inventory namespace is refused, never shares its set.
    pub instance: String,
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
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options { mode: Mode::Full, live: None, heartbeat: None }
    }
}

impl Options<'_> {
    fn beat(&self) {
        if let Some(h) = self.heartbeat {
            h.beat();
        }
    }
}

/// A reconcile's heartbeat: it beats at every step (a stage done, prune included; a batch of
/// dry-runs; an object applied; a health poll), so a reconcile that runs long can be told from one that is
/// stuck. Every API request is bounded, so a reconcile that stops beating is a bug, not a slow
/// server: the agent's `/healthz` fails for it.
#[derive(Debug, Default)]
pub struct Heartbeat {
    /// Milliseconds since the Unix epoch; 0 while no reconcile runs.
    started: AtomicU64,
    last: AtomicU64,
}

fn unix_millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64).max(1)
}

impl Heartbeat {
    /// A reconcile begins.
    pub fn start(&self) {
        let now = unix_millis(std::time::SystemTime::now());
        self.last.store(now, SeqCst);
        self.started.store(now, SeqCst);
    }

    /// The reconcile made progress.
    pub fn beat(&self) {
        self.last.store(unix_millis(std::time::SystemTime::now()), SeqCst);
    }

    /// The reconcile ended.
    pub fn stop(&self) {
        self.started.store(0, SeqCst);
    }

    /// While a reconcile runs: when it started and when it last made progress.
    pub fn running(&self) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
        let at = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
        match self.started.load(SeqCst) {
            0 => None,
            started => Some((at(started), at(self.last.load(SeqCst)))),
        }
    }
}

/// Objects dry-run between two beats of the heartbeat.
const DRY_RUN_BATCH: usize = 256;

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
    /// `FetchFailed`, `RenderFailed`, ... or `PruneHeld`; empty when synced.
    pub reason: String,
    pub message: String,
    pub changes: ChangeSet,
    #[serde(skip)]
    pub duration: Duration,
    #[serde(skip)]
    pub error: Option<Error>,
    /// Set when the revision was applied (whatever happened to the prune).
    #[serde(skip)]
    pub outcome: Option<Outcome>,
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
pub async fn reconcile_fetched(
    ctx: &Context,
    source: &Source,
    opts: Options<'_>,
    fetched: Option<(String, Vec<crate::manifest::SourceFile>)>,
) -> Report {
    let started = Instant::now();
    let mut changes = ChangeSet::default();
    let mut commit = None;
    let mut outcome = None;
    let result = run_stages(ctx, source, opts, fetched, &mut commit, &mut changes, &mut outcome).await;
    let (state, reason, message, error) = match result {
        Ok(None) => (State::Synced, String::new(), String::new(), None),
        Ok(Some(hold)) => (State::PruneHeld, "PruneHeld".to_string(), hold.to_string(), None),
        Err(e) => (State::Failed, e.reason().to_string(), e.to_string(), Some(e)),
    };
    let report =
        Report { source: source.name.clone(), commit, state, reason, message, changes, duration: started.elapsed(), error, outcome };
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
    opts: Options<'_>,
    fetched: Option<(String, Vec<crate::manifest::SourceFile>)>,
    commit_out: &mut Option<String>,
    changes: &mut ChangeSet,
    outcome: &mut Option<Outcome>,
) -> Result<Option<Hold>, Error> {
    // fetch: ask the remote for the ref's commit (unless the caller just did), fetch it if new,
    // read its tree.
    let started = Instant::now();
    let stage_done = |stage: &str| {
        opts.beat();
        debug!(source = %source.name, stage, elapsed_ms = started.elapsed().as_millis() as u64, "stage done")
    };
    let (commit, files) = match fetched {
        Some(f) => f,
        None => match check_and_fetch(ctx, source, None).await? {
            Fetched::New { commit, files } => (commit, files),
            // with no commit applied every commit is new; never reconcile an unread revision
            Fetched::Unchanged(commit) => return Err(Error::Validation(format!("commit {commit} was not fetched"))),
        },
    };
    *commit_out = Some(commit.clone());
    stage_done("fetch");

    // render: documents to objects, within limits.
    let manifests = render::render(&files, &ctx.limits)?;
    drop(files);
    stage_done("render");

    // plan: resolve kinds through discovery, default namespaces, order, hash, label.
    let cluster = &ctx.cluster;
    let catalog = cluster.discover().await?;
    inventory::ensure_namespace(cluster, &ctx.agent_namespace).await?;
    let parent = applyset::parent_ref(&source.name, &ctx.agent_namespace);
    let applyset_id = applyset::applyset_id(&parent);
    let plan_opts =
        PlanOptions { default_namespace: source.namespace.clone(), applyset_id: applyset_id.clone(), source: source.name.clone() };
    let plan = plan::build(manifests, &catalog, &plan_opts).map_err(|e| Error::Validation(e.to_string()))?;
    let (recorded, holder) = match inventory::read_parent(cluster, &parent).await? {
        Some((live, inv)) => (inv, live["metadata"]["annotations"][keys::INSTANCE].as_str().map(String::from)),
        None => (Inventory::default(), None),
    };
    // two installs in one inventory namespace never share a source's ApplySet
    if let Some(other) = holder.filter(|other| *other != ctx.instance) {
        return Err(Error::Validation(format!(
            "the ApplySet parent {parent} belongs to the Driftless install {other:?} (this is {:?}): name the source differently or give this install its own inventory namespace",
            ctx.instance
        )));
    }
    let desired_inventory = inventory_of(&plan);

    // live state: the set's members, and any desired object that is not one yet.
    // Memory grows with what is managed: incrementally, members are kept to what the hash
    // check, the ownership check and the drift expectation read (objects whose hash changed are
    // dry-run against that and so written, a no-op on the server if equal); a full sync keeps
    // what a dry-run result is compared with.
    let keep = match opts.mode {
        Mode::Full => Keep::Body,
        Mode::Incremental => Keep::Checks,
    };
    let versions = plan.objects().iter().map(|p| (p.id.group_kind(), p.resource.clone())).collect();
    let mut members = inventory::list_members(cluster, &catalog, &versions, &applyset_id, &recorded.union(&desired_inventory), keep)
        .await
        .map_err(|e| if e.is_forbidden() { Error::Validation(e.to_string()) } else { Error::Kube(e.source) })?;
    let live = live_objects(cluster, &plan, &mut members, keep).await?;
    if let Err(conflicts) = check_ownership(ctx, &plan, &live, &applyset_id) {
        if !conflicts.claims.is_empty() {
            // record the claim, so the other source hands those objects over once its revision
            // no longer declares them
            let claims = inventory::encode_claims(&conflicts.claims);
            let extra = [(keys::INSTANCE, ctx.instance.clone()), (keys::CLAIMS, claims)];
            inventory::write_parent(cluster, &parent, &recorded, &extra).await?;
        }
        return Err(Error::Validation(plan::first_problems(&conflicts.problems)));
    }
    stage_done("plan and live state");

    // validate: a server-side dry-run of every object that can be checked before any write
    // (incrementally, an object whose recorded desired hash is unchanged needs none); objects
    // that need a Namespace, CRD or Role of this revision are prechecked in an existing namespace
    // where that can judge them, and dry-run in place once their definitions are applied.
    let exists = |id: &ObjectRef| live.contains_key(id);
    let unchanged =
        |p: &Planned| opts.mode == Mode::Incremental && live.get(&p.id).and_then(|o| o.desired_hash.as_deref()) == Some(p.hash.as_str());
    let schedule = schedule::build(&plan, &exists, &unchanged);
    let mut decisions: Decisions = pick(&plan, &schedule.unchanged).into_iter().map(|p| (&p.id, (Decision::Unchanged, None))).collect();
    decide(cluster, &plan, &pick(&plan, &schedule.validate), &live, &mut decisions, changes, opts).await?;
    if let Err(failures) = apply::precheck(cluster, &pick(&plan, &schedule.precheck), &ctx.agent_namespace).await {
        return Err(validation_failed(&plan, failures, changes));
    }
    let drifted = hold_drift(&plan, &live, source.self_heal, &mut decisions);
    stage_done("validate");

    // apply: record the superset inventory first, then definitions, then wave by wave and
    // stage by stage; a wave starts only when every object of the waves before it is Healthy.
    inventory::write_parent(cluster, &parent, &recorded.union(&desired_inventory), &[(keys::INSTANCE, ctx.instance.clone())]).await?;
    let stages = Stages { cluster, live: &live, opts, health_timeout: source.health_timeout };
    if let Err(e) = stages.apply(&plan, &schedule, &mut decisions, changes).await {
        skip_undone(&plan, changes);
        return Err(e);
    }
    if let Some(state) = opts.live {
        // from here on, what left git is no longer expected: its deletion is not drift
        state.retain_desired(&plan.objects().iter().map(|p| p.id.clone()).collect());
    }

    stage_done("apply");

    // prune: members that left git, behind the safeguards, in reverse order.
    let hold = if source.prune { prune(ctx, source, &plan, &members, &parent, &applyset_id, changes).await } else { None };
    stage_done("prune");

    // record: what the set holds now, and the revision.
    let remaining = remaining_inventory(&plan, &members, changes);
    let extra = [(crate::status::annotations::REVISION, commit.clone()), (keys::INSTANCE, ctx.instance.clone())];
    inventory::write_parent(cluster, &parent, &remaining, &extra).await?;
    *outcome = Some(Outcome { scopes: scopes(&plan, &remaining, &catalog), plan, applyset_id, drifted });
    if changes.failed() {
        return Err(Error::Prune(failures(changes)));
    }
    Ok(hold)
}

/// The failed entries, for an error message.
fn failures(changes: &ChangeSet) -> String {
    let failed: Vec<String> =
        changes.entries.iter().filter(|c| c.action == Action::Failed).map(|c| format!("{}: {}", c.id, c.message)).collect();
    failed.join("; ")
}

/// Every kind and namespace the set's members may be in: what to watch.
fn scopes(plan: &Plan, inventory: &Inventory, catalog: &crate::plan::Catalog) -> Vec<Scope> {
    let versions: HashMap<_, _> = plan.objects().iter().map(|p| (p.id.group_kind(), p.resource.clone())).collect();
    let namespaces = &inventory.namespaces;
    let mut out = Vec::new();
    for gk in &inventory.group_kinds {
        let Some(rt) = versions.get(gk).or_else(|| catalog.preferred(gk)) else { continue };
        if rt.namespaced {
            out.extend(namespaces.iter().map(|ns| (rt.clone(), ns.clone())));
        } else {
            out.push((rt.clone(), String::new()));
        }
    }
    out
}

/// What a remote check found.
#[derive(Debug)]
pub enum Fetched {
    /// The ref still names the commit already applied.
    Unchanged(String),
    /// A new commit, fetched, with the files of the source's path.
    New { commit: String, files: Vec<crate::manifest::SourceFile> },
}

/// Asks the remote which commit the source's ref names and, unless it is `applied`, fetches it
/// and reads its files (blocking git work off the runtime). Needs no `&mut` of anything, so the
/// agent runs it beside its loop: a slow remote never holds up drift correction.
pub async fn check_and_fetch(ctx: &Context, source: &Source, applied: Option<&str>) -> Result<Fetched, Error> {
    let applied = applied.map(String::from);
    let spec = source.spec.clone();
    let cache = ctx.cache_dir.join(&source.name);
    let limits = ctx.limits.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let repo = Repo::open(spec, &cache)?;
        let commit = repo.remote_commit()?;
        if applied.as_deref() == Some(commit.as_str()) {
            return Ok(Fetched::Unchanged(commit));
        }
        repo.fetch(&commit)?;
        let files = repo.read(&commit, &limits)?;
        Ok::<_, crate::source::SourceError>(Fetched::New { commit, files })
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

/// Beyond this many desired objects of one kind in one namespace that are not members yet, one
/// (paged) LIST of that kind and namespace replaces their GETs: a first sync of a large set.
const LIST_INSTEAD_OF_GETS: usize = 20;

/// Live objects by identity: members from the listing, others by GET (or by a LIST of their kind
/// and namespace when many are missing).
async fn live_objects(cluster: &Cluster, plan: &Plan, members: &mut [Member], keep: Keep) -> Result<HashMap<ObjectRef, Live>, Error> {
    // the listed objects move here; members keep their plain data for the prune
    let mut live: HashMap<ObjectRef, Live> = members.iter_mut().map(|m| (m.live.id.clone(), std::mem::take(&mut m.current))).collect();
    let missing: Vec<&Planned> = plan.objects().iter().filter(|p| !live.contains_key(&p.id) && !p.needs_crd).collect();
    let mut by_scope: HashMap<(String, String, String), Vec<&Planned>> = HashMap::new();
    for p in &missing {
        by_scope.entry((p.id.group.clone(), p.id.kind.clone(), p.id.namespace.clone())).or_default().push(p);
    }
    let mut singles: Vec<&Planned> = Vec::new();
    for ((_, _, namespace), objects) in by_scope {
        let Some(first) = objects.first().copied().filter(|_| objects.len() > LIST_INSTEAD_OF_GETS) else {
            singles.extend(objects);
            continue;
        };
        let wanted: HashSet<&ObjectRef> = objects.iter().map(|p| &p.id).collect();
        match cluster.list_live(&first.resource, &namespace, "", keep).await {
            Ok(items) => {
                for item in items {
                    let id = ObjectRef::new(first.id.group.clone(), first.id.kind.clone(), item.namespace.clone(), item.name.clone());
                    if wanted.contains(&id) {
                        live.insert(id, item);
                    }
                }
            }
            // a namespace this revision creates does not exist yet: nothing lives there
            Err(e) if apply::status_code(&e) == Some(404) => {}
            // e.g. may not list there: look each object up instead
            Err(_) => singles.extend(objects),
        }
    }
    let singles = &singles;
    let fetched: Vec<(ObjectRef, Result<Option<Live>, kube::Error>)> = stream::iter(0..singles.len())
        .map(|i| async move {
            let p = singles[i];
            (p.id.clone(), cluster.get_live(&p.resource, &p.id, keep).await)
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

/// An object that already belongs to another ApplySet is a conflict, never adopted; parents and
/// the agent's bookkeeping are never a repository's (see [`ownership`]).
fn check_ownership(ctx: &Context, plan: &Plan, live: &HashMap<ObjectRef, Live>, applyset_id: &str) -> Result<(), ownership::Conflicts> {
    let holder = |id: &ObjectRef| {
        live.get(id).map(|l| ownership::Holder { part_of: l.part_of.as_deref(), source: l.source.as_deref(), is_parent: l.is_parent })
    };
    let set_of = |source: &str| applyset::applyset_id(&applyset::parent_ref(source, &ctx.agent_namespace));
    ownership::check(plan, &holder, &set_of, ownership::Scope { applyset_id, agent_namespace: &ctx.agent_namespace })
}

/// The planned objects at these indices of the plan.
fn pick<'p>(plan: &'p Plan, indices: &[usize]) -> Vec<&'p Planned> {
    indices.iter().filter_map(|&i| plan.objects().get(i)).collect()
}

/// What each object needs, as its dry-run decided (with, for an object it would change, what
/// Driftless would own of it afterwards).
type Decisions<'p> = HashMap<&'p ObjectRef, (Decision, Option<Expected>)>;

/// Dry-runs objects and records what each needs; every failure fails the revision (all of them
/// are reported). Each batch of [`DRY_RUN_BATCH`] beats the heartbeat.
async fn decide<'p>(
    cluster: &Cluster,
    plan: &Plan,
    objects: &[&'p Planned],
    live: &HashMap<ObjectRef, Live>,
    decisions: &mut Decisions<'p>,
    changes: &mut ChangeSet,
    opts: Options<'_>,
) -> Result<(), Error> {
    let mut failed = Vec::new();
    for batch in objects.chunks(DRY_RUN_BATCH) {
        match apply::dry_run(cluster, batch, live).await {
            Ok(d) => decisions.extend(batch.iter().map(|p| &p.id).zip(d)),
            Err(failures) => failed.extend(failures),
        }
        opts.beat();
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(validation_failed(plan, failed, changes))
    }
}

/// With `selfHeal: false`, drift is reported, not corrected: an object whose desired hash is
/// the one recorded on it (git did not change it) but whose dry-run would change it is left as
/// it is, and expected to look as the dry-run would leave it, so its watch keeps reporting the
/// drift until it is mended. Returns those objects.
fn hold_drift(plan: &Plan, live: &HashMap<ObjectRef, Live>, self_heal: bool, decisions: &mut Decisions<'_>) -> Vec<ObjectRef> {
    if self_heal {
        return Vec::new();
    }
    let mut drifted = Vec::new();
    for p in plan.objects() {
        let recorded = live.get(&p.id).and_then(|o| o.desired_hash.as_deref());
        let Some((decision, expected)) = decisions.get_mut(&p.id) else { continue };
        if recorded == Some(p.hash.as_str()) && *decision == Decision::Configure {
            *decision = Decision::Unchanged;
            // what the object should own: never the drifted fields as they are now (its apply
            // step reports it skipped)
            expected.get_or_insert_with(Expected::default);
            drifted.push(p.id.clone());
        }
    }
    drifted
}

/// One line per object the server rejected: file and line, object, the server's message.
fn validation_failed(plan: &Plan, failures: Vec<(ObjectRef, String)>, changes: &mut ChangeSet) -> Error {
    let text: Vec<String> = failures
        .iter()
        .map(|(id, m)| match plan.get(id) {
            Some(p) => format!("{}: {id}: {m}", p.origin),
            None => format!("{id}: {m}"),
        })
        .collect();
    for (id, m) in failures {
        changes.push(id, Action::Failed, m);
    }
    Error::Validation(plan::first_problems(&text))
}

/// Marks every planned object that has no entry yet as skipped: an earlier stage failed.
fn skip_undone(plan: &Plan, changes: &mut ChangeSet) {
    let done: HashSet<ObjectRef> = changes.entries.iter().map(|c| c.id.clone()).collect();
    for p in plan.objects().iter().filter(|p| !done.contains(&p.id)) {
        changes.push(p.id.clone(), Action::Skipped, "not applied: an earlier stage failed");
    }
}

/// Applies a plan group by group (wave, then stage), each group concurrently.
struct Stages<'a> {
    cluster: &'a Cluster,
    live: &'a HashMap<ObjectRef, Live>,
    /// The live state to tell (`opts.live`) and the heartbeat to beat.
    opts: Options<'a>,
    health_timeout: Duration,
}

impl Stages<'_> {
    /// Applies the definitions first (see [`schedule`]), each group dry-running the members that
    /// needed an earlier one; waits for new CRDs; dry-runs what waited for the definitions; then
    /// applies the rest, wave by wave and stage by stage. Tells the live state what each object
    /// is expected to look like afterwards.
    async fn apply<'p>(
        &self,
        plan: &'p Plan,
        schedule: &Schedule,
        decisions: &mut Decisions<'p>,
        changes: &mut ChangeSet,
    ) -> Result<(), Error> {
        for group in &schedule.definitions {
            decide(self.cluster, plan, &pick(plan, &group.check_first), self.live, decisions, changes, self.opts).await?;
            self.apply_group(&pick(plan, &group.objects), decisions, changes).await?;
        }
        let crds: Vec<String> = pick(plan, &schedule.definitions.iter().flat_map(|g| g.objects.clone()).collect::<Vec<_>>())
            .into_iter()
            .filter(|p| p.id.kind == "CustomResourceDefinition")
            .map(|p| p.id.name.clone())
            .collect();
        if !crds.is_empty() {
            self.cluster.wait_crds_established(&crds, CRD_TIMEOUT).await.map_err(Error::Apply)?;
        }
        decide(self.cluster, plan, &pick(plan, &schedule.deferred), self.live, decisions, changes, self.opts).await?;

        for (i, group) in schedule.rest.iter().enumerate() {
            let first_of_wave = i == 0 || schedule.rest.get(i - 1).is_some_and(|g| g.wave != group.wave);
            if first_of_wave && plan.objects().iter().any(|p| p.wave < group.wave) {
                let earlier: Vec<&Planned> = plan.objects().iter().filter(|p| p.wave < group.wave).collect();
                wait_healthy(self.cluster, &earlier, self.health_timeout, self.opts).await?;
            }
            self.apply_group(&pick(plan, &group.objects), decisions, changes).await?;
        }
        Ok(())
    }

    /// Applies one group concurrently, by the decisions made.
    async fn apply_group(&self, group: &[&Planned], decisions: &Decisions<'_>, changes: &mut ChangeSet) -> Result<(), Error> {
        let cluster = self.cluster;
        let started = Instant::now();
        // each result is reduced to its expectation at once: a stage's applied objects are
        // never all held
        let results: Vec<(ObjectRef, Action, String, Option<Expected>)> = stream::iter(0..group.len())
            .map(|j| async move {
                let p = group[j];
                let Some((decision, dry_run)) = decisions.get(&p.id) else {
                    // the schedule decides every object before its apply; never write undecided
                    return (p.id.clone(), Action::Failed, "not validated before its apply".to_string(), None);
                };
                if *decision != Decision::Unchanged {
                    if let Some(state) = self.opts.live {
                        state.begin_apply(&p.id);
                    }
                }
                let applied = apply_one(cluster, p, *decision).await;
                self.opts.beat();
                let (id, action, message, result) = match applied {
                    // an unchanged object expected otherwise: drift left in place (selfHeal off)
                    (id, Action::Unchanged, _, None) if dry_run.is_some() => {
                        (id, Action::Skipped, "drifted from git; selfHeal is off, not corrected".to_string(), None)
                    }
                    other => other,
                };
                let expected = match result {
                    _ if action == Action::Failed => None,
                    Some(object) => Some(Expected::from_object(&object)),
                    // unchanged: as it is, unless drift was left in place (then as it should be)
                    None => dry_run.clone().or_else(|| self.live.get(&id).map(|l| l.expected.clone())),
                };
                (id, action, message, expected)
            })
            .buffered(apply::CONCURRENCY)
            .collect()
            .await;
        if let Some(first) = group.first() {
            debug!(kind = %first.id.kind, wave = first.wave, objects = group.len(), elapsed_ms = started.elapsed().as_millis() as u64, "group applied");
        }
        let failed = results.iter().any(|r| r.1 == Action::Failed);
        for (id, action, message, result) in results {
            if let Some(e) = result {
                if let Some(state) = self.opts.live {
                    state.applied(&id, e);
                }
            } else if let Some(state) = self.opts.live {
                state.apply_failed(&id);
            }
            changes.push(id, action, message);
        }
        if failed {
            return Err(Error::Apply(failures(changes)));
        }
        Ok(())
    }
}

/// Waits until every object is Healthy, polling those that are not yet.
async fn wait_healthy(cluster: &Cluster, objects: &[&Planned], timeout: Duration, opts: Options<'_>) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waiting: Vec<&Planned> = objects.to_vec();
    loop {
        opts.beat();
        let mut still = Vec::new();
        let mut last = String::new();
        for p in waiting {
            let status = match cluster.get(&p.resource, &p.id).await {
                Ok(Some(o)) => health::evaluate(&p.id.group, &p.id.kind, &o),
                Ok(None) => health::Status { health: Health::Unknown, reason: "not found".into() },
                Err(e) => health::Status { health: Health::Unknown, reason: api_message(&e) },
            };
            if status.health != Health::Healthy {
                last = format!("{} is {}: {}", p.id, status.health.as_str(), status.reason);
                still.push(p);
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::HealthCheck(format!(
                "{} object(s) of earlier waves not Healthy after {}s; {last}",
                still.len(),
                timeout.as_secs()
            )));
        }
        waiting = still;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn apply_one(cluster: &Cluster, p: &Planned, decision: Decision) -> (ObjectRef, Action, String, Option<Value>) {
    let id = p.id.clone();
    let result = match decision {
        Decision::Unchanged => return (id, Action::Unchanged, String::new(), None),
        Decision::Create => cluster.apply(p, false).await.map(|o| (Action::Created, o)).map_err(|e| api_message(&e)),
        Decision::Configure => cluster.apply(p, false).await.map(|o| (Action::Configured, o)).map_err(|e| api_message(&e)),
        Decision::Recreate => recreate(cluster, p).await.map(|o| (Action::Recreated, o)),
    };
    match result {
        Ok((action, object)) => (id, action, String::new(), Some(object)),
        Err(message) => (id, Action::Failed, message, None),
    }
}

/// Deletes and creates again an object whose immutable fields changed.
async fn recreate(cluster: &Cluster, p: &Planned) -> Result<Value, String> {
    cluster.delete(&p.resource, &p.id, None).await.map_err(|e| format!("delete before recreate: {}", api_message(&e)))?;
    cluster.wait_gone(&p.resource, &p.id, RECREATE_TIMEOUT).await?;
    cluster.apply(p, false).await.map_err(|e| format!("create after delete: {}", api_message(&e)))
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
    let desired: HashSet<&ObjectRef> = plan.objects().iter().map(|p| &p.id).collect();
    // what other sources claim is handed over, not deleted: read it when anything left git
    let mut claims = HashMap::new();
    if members.iter().any(|m| !desired.contains(&m.live.id)) {
        match inventory::read_claims(&ctx.cluster, &ctx.agent_namespace, parent).await {
            Ok(c) => claims = c,
            Err(e) => {
                changes.push(parent.clone(), Action::Failed, format!("not pruned: reading other sources' claims: {}", api_message(&e)));
                return None;
            }
        }
    }
    let policy = PrunePolicy {
        applyset_id: applyset_id.to_string(),
        allow_empty: source.allow_empty,
        max_prune_percent: source.max_prune_percent,
        prunable: source.prunable.clone(),
        agent_namespace: ctx.agent_namespace.clone(),
        parent: parent.clone(),
        claims,
    };
    let prune_plan = plan_prune(members.iter().map(|m| &m.live), &desired, &policy);
    for (id, reason) in &prune_plan.kept {
        if *reason != crate::plan::prune::KeepReason::NotAMember {
            changes.push(id.clone(), Action::Skipped, format!("not pruned: {reason:?}"));
        }
    }
    if let Some(hold) = &prune_plan.held {
        warn!(source = %source.name, %hold, "prune held");
        return Some(hold.clone());
    }
    let types = members.iter().map(|m| (&m.live.id, &*m.resource)).collect();
    inventory::execute(&ctx.cluster, &prune_plan, &types, changes).await;
    None
}

/// The inventory after a reconcile: the desired objects plus members that still exist.
fn remaining_inventory(plan: &Plan, members: &[Member], changes: &ChangeSet) -> Inventory {
    let deleted: HashSet<&ObjectRef> = changes.entries.iter().filter(|c| c.action == Action::Deleted).map(|c| &c.id).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_live_object_keeps_what_the_checks_read_and_for_a_full_sync_what_the_differ_compares() {
        use crate::keys;
        let full = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "7",
                "labels": {keys::APPLYSET_PART_OF: "set"},
                "annotations": {keys::DESIRED_HASH: "h", keys::PRUNE: "disabled", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "driftless", "operation": "Apply", "apiVersion": "apps/v1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                                  {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {}}}]},
            "spec": {"replicas": 3}, "status": {"availableReplicas": 3}});
        let object = || serde_json::from_value::<kube::api::DynamicObject>(full.clone()).unwrap();

        let checks = Live::from_meta(&mut object().metadata);
        assert_eq!(
            (checks.name.as_str(), checks.namespace.as_str(), checks.uid.as_str(), checks.resource_version.as_str()),
            ("a", "n", "u", "7")
        );
        assert_eq!(checks.part_of.as_deref(), Some("set"));
        assert_eq!(checks.desired_hash.as_deref(), Some("h"));
        assert!(checks.prune_disabled);
        assert_eq!(checks.expected, Expected::from_object(&full), "the drift expectation of the full object");
        assert!(checks.body.is_none());
        let member = inventory::live_object(&crate::manifest::GroupKind::new("apps", "Deployment"), "deployments", &checks);
        assert_eq!(
            (member.id.to_string(), member.uid, member.part_of),
            ("Deployment.apps n/a".to_string(), "u".to_string(), Some("set".to_string()))
        );

        let body = Live::read(object());
        assert_eq!(Live { body: None, ..body.clone() }, checks);
        let body = body.body.unwrap();
        assert!(body.get("status").is_none() && body["metadata"].get("managedFields").is_none());
        assert_eq!(body["spec"], full["spec"]);
        assert!(!apply::diff::differs(&body, &full), "what is dropped is what the differ ignores");
        let mut changed = full.clone();
        changed["spec"]["replicas"] = json!(4);
        assert!(apply::diff::differs(&body, &changed));
    }
}
