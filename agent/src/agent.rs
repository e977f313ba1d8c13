//! The agent loop of one source (`driftless run`): poll the remote ref on a jittered interval,
//! reconcile a new commit incrementally, watch the objects the source owns, and correct drift
//! as soon as a watch reports it, backing off from a writer that keeps undoing it.
//!
//! When neither git nor the owned objects changed, a poll costs one remote-ref check and no API
//! request at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};
use tracing::{debug, info, warn};

use crate::cluster::api_message;
use crate::cluster::apply::ApplyOptions;
use crate::config::{NotifyEvent, Rollback, Source};
use crate::inventory::applyset;
use crate::live::drift::{self, Drift, Expected, Verdict};
use crate::live::health::{self, Health};
use crate::live::watch::Subscription;
use crate::live::LiveState;
use crate::manifest::ObjectRef;
use crate::plan::Plan;
use crate::report::changes::{Action, ChangeSet};
use crate::report::{Heartbeat, Reason, Report, State};
use crate::source::{self, Fetched};
use crate::status::metrics::{ActionLabels, FailureLabels, KindLabels, Metrics, ResultLabels};
use crate::status::model::{ObjectStatus, SourceStatus, SyncState};
use crate::status::notify::forge::CommitState;
use crate::status::notify::{self, hook::Notification};
use crate::status::{self, reasons, Annotation, AnnotationWriter, Telemetry};
use crate::sync::{self, Context, Mode, Options};

/// The interval plus or minus up to 10%, so sources and replicas do not poll in lockstep.
pub fn jittered(interval: Duration) -> Duration {
    let spread = interval.as_millis() as u64 / 10;
    if spread == 0 {
        return interval;
    }
    let offset = rand::rng().random_range(0..=2 * spread);
    Duration::from_millis(interval.as_millis() as u64 - spread + offset)
}

/// Hands memory freed by a reconcile (its listings, renders and plans) back to the system;
/// glibc's allocator otherwise keeps the peak of the largest reconcile resident for good.
#[allow(unsafe_code)]
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no live data.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The longest wait before a source loop that panicked starts again.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(300);

/// Runs a source's loop for as long as the task lives. A panic in it (a bug: no input should
/// cause one) is caught and stays with that source: it reports `Failed` with the panic's message
/// (status, `driftless_panics_total`, a `SyncFailed` Event through `publish`), and its loop starts
/// again after a backoff (1 s, doubling up to 5 min; reset once a loop ran for that long), while
/// the other sources carry on and `/healthz` stays healthy: a pod restart would only repeat a
/// deterministic panic and stop the healthy sources too.
pub async fn supervise<Run, RunFut, Publish, PublishFut>(source: &str, telemetry: &Telemetry, mut run: Run, mut publish: Publish)
where
    Run: FnMut() -> RunFut,
    RunFut: std::future::Future<Output = ()>,
    Publish: FnMut(String) -> PublishFut,
    PublishFut: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let mut backoff = Duration::from_secs(1);
    let mut last_panic: Option<String> = None;
    loop {
        let started = Instant::now();
        let loop_future = run();
        if let Some(message) = &last_panic {
            // the new loop starts from a fresh status: keep the panic visible until it reconciles
            set_panicked(telemetry, source, message);
        }
        let Err(panic) = std::panic::AssertUnwindSafe(loop_future).catch_unwind().await else { return };
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        tracing::error!(source, panic = %message, restart_in_s = backoff.as_secs(), "the source loop panicked; restarting it");
        telemetry.metrics.panics_total.get_or_create(&Metrics::source(source)).inc();
        set_panicked(telemetry, source, &message);
        publish(format!("the reconcile panicked: {message}; restarting in {}s", backoff.as_secs())).await;
        last_panic = Some(message);
        if started.elapsed() >= MAX_RESTART_BACKOFF {
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
    }
}

fn set_panicked(telemetry: &Telemetry, source: &str, message: &str) {
    let mut all = telemetry.statuses.write().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = all.get_mut(source) {
        s.state = SyncState::Failed;
        s.reason = Some(Reason::Panicked);
        s.message = format!("the reconcile panicked: {message}");
        s.last_sync_time = Some(SystemTime::now());
        telemetry.metrics.set_state(source, SyncState::Failed);
    }
}

/// What drifted and stays so (selfHeal off), naming up to five objects, each with how it
/// drifted when the watch saw it (`fields changed by kubectl-edit`).
fn drift_message(drifted: &[(ObjectRef, Option<Drift>)]) -> String {
    let names: Vec<String> = drifted
        .iter()
        .take(5)
        .map(|(id, how)| match how {
            Some(how) => format!("{id} ({how})"),
            None => id.to_string(),
        })
        .collect();
    let more = if drifted.len() > 5 { format!(" and {} more", drifted.len() - 5) } else { String::new() };
    format!("{}{more}: drifted from git; selfHeal is off", names.join(", "))
}

/// Checks the remote at the source's interval (sooner on a webhook's trigger) until its ref
/// names another commit than `applied`; returns that commit, fetched. Failed checks are retried
/// at the next interval (the loop reports fetch failures, not this watch).
async fn newer_commit(
    ctx: &Context,
    source: &Source,
    applied: &str,
    mut triggers: Option<&mut mpsc::Receiver<()>>,
) -> (String, source::Revision) {
    loop {
        let wait = tokio::time::sleep(jittered(source.interval));
        match triggers.as_deref_mut() {
            Some(t) => tokio::select! {
                () = wait => {}
                Some(()) = t.recv() => {}
            },
            None => wait.await,
        }
        match sync::check_and_fetch(ctx, source, Some(applied)).await {
            Ok(Fetched::New { commit, revision }) => return (commit, revision),
            Ok(Fetched::Unchanged(_)) => {}
            Err(e) => debug!(source = %source.name, error = %e, "remote check during a reconcile failed"),
        }
    }
}

/// Runs a reconcile to its end while `newer` watches for a newer commit; when one arrives,
/// `cancel` ends the reconcile's wait for health (its apply of a group always finishes).
async fn until_done<T>(
    reconcile: impl std::future::Future<Output = Report>,
    newer: impl std::future::Future<Output = T>,
    cancel: &CancellationToken,
) -> (Report, Option<T>) {
    tokio::pin!(reconcile);
    tokio::pin!(newer);
    let mut found = None;
    loop {
        tokio::select! {
            report = &mut reconcile => return (report, found),
            arrived = &mut newer, if found.is_none() => {
                cancel.cancel();
                found = Some(arrived);
            }
        }
    }
}

/// The running loop of one source.
pub struct SourceLoop {
    ctx: Context,
    source: Source,
    telemetry: Telemetry,
    live: Arc<LiveState>,
    drifted: mpsc::UnboundedReceiver<ObjectRef>,
    watches: Subscription,
    /// What the source wants now, by identity (memory grows with what it manages).
    desired: Plan,
    applyset_id: String,
    applied_commit: Option<String>,
    /// A commit noticed and applied whose members are not all Healthy yet.
    pending_lead: Option<Instant>,
    last_changes: ChangeSet,
    /// The first reconcile was attempted (for readiness).
    attempted: bool,
    /// The state and health last written to the parent's annotations.
    annotated: Option<(SyncState, Health)>,
    /// Writes the parent's status annotations in order (started at the first write).
    annotations: Option<AnnotationWriter>,
    /// Drifted objects waiting out a fight's backoff before they are judged again: one entry
    /// per object, however often it drifts meanwhile.
    backoffs: DelayQueue<ObjectRef>,
    backoff_keys: HashMap<ObjectRef, delay_queue::Key>,
    /// What the status was last recomputed from: the live state's version and whether the loop
    /// was synced (the loop's own changes recompute it directly).
    refreshed: Option<(u64, bool)>,
    /// Memory to hand back once the watches have listed their objects.
    release_pending: bool,
    /// When the remote check in progress started.
    fetch_started: Option<Instant>,
    /// The reconcile's heartbeat, shared with the source's status.
    heartbeat: Arc<Heartbeat>,
    /// A reconcile compared every member with git since this loop started (a new loop starts
    /// with each leadership term): until then drift made while no loop watched is unseen.
    compared_all: bool,
    /// When the applied commit's members must all be Healthy (its health timeout after the
    /// apply); past it the revision fails its health check.
    health_deadline: Option<Instant>,
    /// The last commit this loop saw Synced with every member Healthy: what a rollback applies.
    last_good: Option<String>,
    /// A commit that failed and was rolled back: not reconciled again while the ref names it.
    held_back: Option<String>,
    /// A failed commit to roll back, and why it failed.
    rollback_due: Option<(String, String)>,
    /// The applied commit failed its health check after the apply: it turns Synced if its
    /// members become Healthy later (without a rollback).
    late_health: bool,
    /// When each drift correction was last notified: at most one notification per object per
    /// [`DRIFT_NOTIFY_EVERY`].
    drift_notified: HashMap<ObjectRef, Instant>,
    /// A failed remote check that made the source Failed: what it wrote, and the state it
    /// replaced, put back when the remote answers again with nothing new.
    fetch_failure: Option<FetchFailure>,
}

/// The status a failed remote check replaced (state, reason, message), and the reason and
/// message it wrote instead.
struct FetchFailure {
    replaced: (SyncState, Option<Reason>, String),
    wrote: (Option<Reason>, String),
}

/// How long a watch may lag behind Driftless's own write before a drift it shows is believed.
const WATCH_LAG: Duration = Duration::from_secs(2);

/// The shortest time between two DriftCorrected notifications of one object.
const DRIFT_NOTIFY_EVERY: Duration = Duration::from_secs(300);

impl SourceLoop {
    pub fn new(ctx: Context, source: Source, telemetry: Telemetry) -> Self {
        let (live, drifted) = LiveState::new();
        let status = SourceStatus::new(&source);
        let heartbeat = status.reconcile.clone();
        telemetry.statuses.write().unwrap_or_else(|p| p.into_inner()).insert(source.name.clone(), status);
        // the state series start with the status (Pending); update_status keeps them in step
        telemetry.metrics.set_state(&source.name, SyncState::Pending);
        telemetry.metrics.set_interval(&source.name, source.interval);
        SourceLoop {
            watches: Subscription::new(ctx.watches.clone()),
            ctx,
            source,
            telemetry,
            live: Arc::new(live),
            drifted,
            desired: Plan::default(),
            applyset_id: String::new(),
            applied_commit: None,
            pending_lead: None,
            last_changes: ChangeSet::default(),
            attempted: false,
            annotated: None,
            annotations: None,
            backoffs: DelayQueue::new(),
            backoff_keys: HashMap::new(),
            refreshed: None,
            release_pending: false,
            compared_all: false,
            health_deadline: None,
            last_good: None,
            held_back: None,
            rollback_due: None,
            late_health: false,
            drift_notified: HashMap::new(),
            fetch_failure: None,
            fetch_started: None,
            heartbeat,
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.telemetry.metrics
    }

    /// Creates the source's counters at 0, so `rate()` and `increase()` see their first event.
    fn zero_series(&self) {
        let m = self.metrics();
        let name = Metrics::source(&self.source.name);
        let _ = m.panics_total.get_or_create(&name);
        for result in ["success", "failure", "prune_held"] {
            let _ = m.sync_total.get_or_create(&ResultLabels { source: self.source.name.clone(), result: result.into() });
        }
        for reason in Reason::STAGE_FAILURES {
            let _ = m.sync_failures_total.get_or_create(&FailureLabels { source: self.source.name.clone(), reason });
        }
        let _ = m.fights_total.get_or_create(&name);
        let _ = m.prune_held_total.get_or_create(&name);
        let _ = m.git_fetch_errors_total.get_or_create(&name);
        m.zero_series(&self.source.name, &notify::providers(self.source.commit_status.as_ref(), &self.source.notify));
    }

    /// Posts a commit status on the source's forge, if it has one (queued; never waits).
    fn post_status(&self, commit: &str, state: CommitState, description: String) {
        if let Some(cfg) = &self.source.commit_status {
            self.telemetry.outbox.post_status(&self.source.name, cfg, commit, state, description);
        }
    }

    /// Sends a notification to the source's targets that want it (queued; never waits).
    fn notify(&self, event: NotifyEvent, commit: Option<&str>, reason: Option<Reason>, message: String, object: Option<&ObjectRef>) {
        if self.source.notify.is_empty() {
            return;
        }
        let n = Notification {
            event,
            source: self.source.name.clone(),
            commit: commit.map(String::from),
            reason: reason.map(|r| r.as_str().to_string()),
            message,
            object: object.map(ToString::to_string),
        };
        self.telemetry.outbox.notify(&self.source.name, &self.source.notify, n);
    }

    /// Reports a finished reconcile of a commit to the forge and the notification targets:
    /// a failure at once; success is posted once its members are Healthy.
    fn announce(&self, report: &Report) {
        let Some(commit) = report.commit.as_deref() else {
            if report.state == State::Failed {
                self.notify(NotifyEvent::SyncFailed, None, report.reason, report.message.clone(), None);
            }
            return;
        };
        let why = |reason: Option<Reason>| format!("{}: {}", reason.map_or("Failed", Reason::as_str), report.message);
        match report.state {
            State::Synced => {}
            State::PruneHeld => {
                self.post_status(commit, CommitState::Failure, why(report.reason));
                self.notify(NotifyEvent::PruneHeld, Some(commit), report.reason, report.message.clone(), None);
            }
            State::Failed => {
                self.post_status(commit, CommitState::Failure, why(report.reason));
                let event =
                    if report.reason == Some(Reason::HealthCheckFailed) { NotifyEvent::HealthCheckFailed } else { NotifyEvent::SyncFailed };
                self.notify(event, Some(commit), report.reason, report.message.clone(), None);
            }
        }
    }

    /// What the status is computed from, beyond what the loop itself changes.
    fn status_inputs(&self) -> (u64, bool) {
        (self.live.version(), self.synced())
    }

    /// Whether the first reconcile was attempted and every watch has listed its objects.
    pub fn synced(&self) -> bool {
        self.attempted && self.watches.synced()
    }

    /// Runs until the task is aborted. `triggers` asks for an immediate remote check.
    pub async fn run(mut self, triggers: Arc<tokio::sync::Mutex<mpsc::Receiver<()>>>) {
        let mut triggers = triggers.lock().await;
        self.zero_series();
        let mut next_poll = tokio::time::Instant::now();
        let mut health_tick = tokio::time::interval(Duration::from_millis(500));
        // the remote check and fetch run beside the loop, so drift is corrected meanwhile; the
        // set aborts them when the loop ends
        let mut fetching: tokio::task::JoinSet<Result<Fetched, crate::Error>> = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_poll), if fetching.is_empty() => self.start_fetch(&mut fetching),
                Some(()) = triggers.recv(), if fetching.is_empty() => self.start_fetch(&mut fetching),
                Some(joined) = fetching.join_next() => {
                    let mut result = joined.unwrap_or_else(|e| Err(crate::Error::Fetch(source::SourceError::Worker(e.to_string()))));
                    // a commit that arrived during the reconcile is reconciled right after it
                    while let Some((commit, revision)) = self.on_fetched(result, Some(&mut triggers)).await {
                        self.fetch_started = Some(Instant::now());
                        result = Ok(Fetched::New { commit, revision });
                    }
                    self.roll_back_if_due().await;
                    next_poll = tokio::time::Instant::now() + jittered(self.source.interval);
                }
                Some(id) = self.drifted.recv() => self.heal(id).await,
                Some(waited) = self.backoffs.next() => {
                    let id = waited.into_inner();
                    self.backoff_keys.remove(&id);
                    self.live.requeue(&id);
                }
                // the status is recomputed only when a watch or an apply changed something
                _ = health_tick.tick() => {
                    if self.refreshed != Some(self.status_inputs()) {
                        self.refresh_health();
                    }
                    self.check_health_deadline().await;
                    self.roll_back_if_due().await;
                }
            }
        }
    }

    /// The commit a remote check does not reconcile again: the applied one, or the failed one
    /// a rollback left behind.
    fn skip_commit(&self) -> Option<&str> {
        self.held_back.as_deref().or(self.applied_commit.as_deref())
    }

    /// Fails the applied revision's health check once its health timeout has passed after the
    /// apply with members not Healthy (the last wave's health; the reconcile gates the waves
    /// before it): reported as HealthCheckFailed, rolled back with `rollback: onFailure`.
    async fn check_health_deadline(&mut self) {
        let (Some(deadline), Some(commit)) = (self.health_deadline, self.applied_commit.clone()) else { return };
        if self.pending_lead.is_none() {
            self.health_deadline = None;
            return;
        }
        if Instant::now() < deadline {
            return;
        }
        self.health_deadline = None;
        self.pending_lead = None;
        self.late_health = true;
        let healths = self.live.health();
        let waiting: Vec<String> = healths
            .iter()
            .filter(|(_, s)| s.health != Health::Healthy)
            .map(|(id, s)| format!("{id} is {}: {}", s.health.as_str(), s.reason))
            .collect();
        let missing = self.desired.objects().len().saturating_sub(healths.len());
        let message = format!(
            "{} object(s) not Healthy {}s after the apply{}",
            waiting.len() + missing,
            self.source.health_timeout.as_secs(),
            waiting.first().map(|w| format!("; {w}")).unwrap_or_default()
        );
        warn!(source = %self.source.name, revision = source::short(&commit), error = %message, "health check failed");
        let report =
            Report::failed(&self.source.name, Some(commit.clone()), Reason::HealthCheckFailed, message.clone(), Duration::ZERO, None);
        let m = self.metrics();
        m.sync_failures_total.get_or_create(&FailureLabels { source: self.source.name.clone(), reason: Reason::HealthCheckFailed }).inc();
        self.update_status(|s| {
            s.state = SyncState::Failed;
            s.reason = Some(Reason::HealthCheckFailed);
            s.message.clone_from(&message);
        });
        self.publish(&report).await;
        self.announce(&report);
        if self.source.rollback == Rollback::OnFailure {
            self.rollback_due = Some((commit, message));
        }
    }

    /// Rolls a failed commit back to the last good one, when one is due: the good revision is
    /// read from the cache and reconciled (what the failed one added is pruned, behind the
    /// safeguards); the failed commit is left alone until the ref names another.
    async fn roll_back_if_due(&mut self) {
        let Some((bad, cause)) = self.rollback_due.take() else { return };
        let Some(good) = self.last_good.clone().filter(|good| *good != bad) else {
            warn!(source = %self.source.name, revision = source::short(&bad), "no revision was Synced and Healthy since the agent started: nothing to roll back to");
            return;
        };
        let (bad_short, good_short) = (source::short(&bad).to_string(), source::short(&good).to_string());
        warn!(source = %self.source.name, failed = %bad_short, to = %good_short, cause = %cause, "rolling back");
        let noticed = Instant::now();
        let revision = match sync::read_commit(&self.ctx, &self.source, &good).await {
            Ok(r) => r,
            Err(e) => {
                warn!(source = %self.source.name, to = %good_short, error = %e, "cannot read the last good revision; not rolling back");
                return;
            }
        };
        self.held_back = Some(bad.clone());
        let opts = Options { mode: Mode::Full, live: Some(&self.live), heartbeat: Some(&self.heartbeat), cancel: None };
        self.heartbeat.start();
        let report = sync::reconcile_fetched(&self.ctx, &self.source, opts, Some((good.clone(), revision))).await;
        self.heartbeat.stop();
        let rolled_back = report.state != State::Failed;
        let failure = report.message.clone();
        self.finish(report, &good, noticed).await;
        let message = if rolled_back {
            format!("rolled back from {bad_short} to {good_short}: {cause}")
        } else {
            // the loop goes on as without a rollback: the failed commit is retried
            self.held_back = None;
            format!("rolling back from {bad_short} to {good_short} failed: {failure}; the failure was: {cause}")
        };
        self.update_status(|s| {
            if rolled_back {
                s.state = SyncState::RolledBack;
            }
            s.reason = Some(Reason::RolledBack);
            s.message.clone_from(&message);
        });
        if let Some(events) = self.telemetry.events.clone() {
            let parent = applyset::parent_ref(&self.source.name, &self.ctx.agent_namespace);
            events.publish(&self.ctx.cluster, &parent, true, reasons::ROLLED_BACK, &message).await;
        }
        self.notify(NotifyEvent::RolledBack, Some(&bad), Some(Reason::RolledBack), message.clone(), None);
        let annotation = Annotation { state: format!("{:?}", SyncState::RolledBack), health: None, message, time: SystemTime::now() };
        self.annotation_writer().write(annotation);
    }

    /// Starts a remote check (and fetch, when the commit is new) beside the loop.
    fn start_fetch(&mut self, fetching: &mut tokio::task::JoinSet<Result<Fetched, crate::Error>>) {
        let (ctx, source, applied) = (self.ctx.clone(), self.source.clone(), self.skip_commit().map(String::from));
        self.fetch_started = Some(Instant::now());
        self.update_status(|s| s.fetch_started = Some(SystemTime::now()));
        fetching.spawn(async move { sync::check_and_fetch(&ctx, &source, applied.as_deref()).await });
    }

    /// Checks the remote and reconciles when the commit is new or the last attempt failed, in
    /// place (tests and one-off callers; the loop runs the check beside itself).
    pub async fn poll(&mut self) {
        self.fetch_started = Some(Instant::now());
        let mut result = sync::check_and_fetch(&self.ctx, &self.source, self.skip_commit()).await;
        while let Some((commit, revision)) = self.on_fetched(result, None).await {
            self.fetch_started = Some(Instant::now());
            result = Ok(Fetched::New { commit, revision });
        }
    }

    /// Handles a finished remote check: reports a failure, or reconciles a new commit. While it
    /// reconciles, the remote is checked again at the source's interval (and on a webhook's
    /// trigger): a newer commit ends a wave's wait for health and is returned, fetched, to be
    /// reconciled next.
    async fn on_fetched(
        &mut self,
        checked: Result<Fetched, crate::Error>,
        triggers: Option<&mut mpsc::Receiver<()>>,
    ) -> Option<(String, source::Revision)> {
        let noticed = self.fetch_started.take().unwrap_or_else(Instant::now);
        self.update_status(|s| s.fetch_started = None);
        let name = Metrics::source(&self.source.name);
        self.metrics().git_fetch_duration.get_or_create(&name).observe(noticed.elapsed().as_secs_f64());
        let (commit, revision) = match checked {
            Ok(Fetched::Unchanged(commit)) => (commit, None),
            Ok(Fetched::New { commit, revision }) => (commit, Some(revision)),
            Err(e) => {
                // a sync that failed at its first stage: counted, shown and reported like any other
                self.attempted = true;
                warn!(source = %self.source.name, reason = %e.reason(), error = %e, "remote check failed; the last good state stays in place");
                let report = Report::failed(&self.source.name, None, e.reason(), e.to_string(), noticed.elapsed(), Some(e));
                self.record_sync(&report);
                let (repeated, before) = {
                    let all = self.telemetry.statuses.read().unwrap_or_else(|p| p.into_inner());
                    let s = all.get(&self.source.name);
                    let repeated = s.is_some_and(|s| s.state == SyncState::Failed && s.message == report.message);
                    (repeated, s.map(|s| (s.state, s.reason, s.message.clone())))
                };
                // the state before the first of a run of failed checks is what comes back, unless
                // something else (a health check) changed the status between two of them
                let still = |f: &FetchFailure| {
                    before.as_ref().is_some_and(|(state, reason, message)| {
                        *state == SyncState::Failed && (*reason, message.as_str()) == (f.wrote.0, f.wrote.1.as_str())
                    })
                };
                let replaced = self.fetch_failure.take().filter(still).map(|f| f.replaced).or(before);
                self.fetch_failure = replaced.map(|replaced| FetchFailure { replaced, wrote: (report.reason, report.message.clone()) });
                let duration = report.duration.as_secs_f64();
                self.update_status(|s| {
                    s.state = SyncState::Failed;
                    s.reason = report.reason;
                    s.message = report.message.clone();
                    s.last_sync_time = Some(SystemTime::now());
                    s.last_sync_duration_seconds = Some(duration);
                });
                // an unchanged failure is not reported again at every poll
                if !repeated {
                    self.publish(&report).await;
                    self.announce(&report);
                }
                return None;
            }
        };
        self.update_status(|s| s.last_fetched_commit = Some(commit.clone()));
        let failure = self.fetch_failure.take();
        let Some(revision) = revision else {
            if let Some(failure) = failure {
                self.fetch_failure_over(failure);
            }
            // nothing new in git: the source is as in sync as its last reconcile left it (a
            // Failed one is not); drift is the watches' business
            if self.state().is_some_and(|s| s != SyncState::Failed) {
                self.metrics().set_in_sync(&self.source.name, SystemTime::now());
            }
            debug!(source = %self.source.name, elapsed_us = noticed.elapsed().as_micros() as u64, "poll: nothing new");
            return None;
        };
        // a commit other than the rolled-back one landed: it is reconciled, and may fail anew
        self.held_back = None;
        self.late_health = false;
        self.rollback_due = None;
        // the first reconcile of a loop compares every member with git: drift made while the
        // agent was down or another replica led is repaired (or reported) like any other
        let mode = if self.compared_all { Mode::Incremental } else { Mode::Full };
        self.post_status(&commit, CommitState::Pending, format!("applying {}", source::short(&commit)));
        let cancel = CancellationToken::new();
        let opts = Options { mode, live: Some(&self.live), heartbeat: Some(&self.heartbeat), cancel: Some(&cancel) };
        self.heartbeat.start();
        let reconcile = sync::reconcile_fetched(&self.ctx, &self.source, opts, Some((commit.clone(), revision)));
        let newer = newer_commit(&self.ctx, &self.source, &commit, triggers);
        let (report, newer) = until_done(reconcile, newer, &cancel).await;
        self.heartbeat.stop();
        if let Some((newer, _)) = &newer {
            info!(source = %self.source.name, revision = source::short(&commit), newer = source::short(newer), "a newer commit arrived during the reconcile; reconciling it next");
        }
        let failed = (report.state == State::Failed).then(|| (report.reason, report.message.clone()));
        self.finish(report, &commit, noticed).await;
        if let Some((Some(Reason::ApplyFailed | Reason::HealthCheckFailed), message)) = failed {
            if self.source.rollback == Rollback::OnFailure {
                self.rollback_due = Some((commit, message));
            }
        }
        newer
    }

    /// The remote answered again with the commit already handled: the state the failed checks
    /// replaced comes back, unless something else (a health check) changed the status since.
    fn fetch_failure_over(&mut self, failure: FetchFailure) {
        let FetchFailure { replaced: (state, reason, message), wrote } = failure;
        let mut restored = false;
        self.update_status(|s| {
            if s.state == SyncState::Failed && (s.reason, s.message.as_str()) == (wrote.0, wrote.1.as_str()) {
                (s.state, s.reason, s.message) = (state, reason, message);
                restored = true;
            }
        });
        if restored {
            info!(source = %self.source.name, state = state.as_str(), "the remote answers again with nothing new; the source is back to its state before the failed checks");
            // health, readiness and the parent's annotations follow the state put back
            self.refresh_health();
        }
    }

    /// Records a finished reconcile of `commit`: metrics, Events, what the source now desires and
    /// watches, and its status.
    async fn finish(&mut self, mut report: Report, commit: &str, noticed: Instant) {
        let mut drifted = Vec::new();
        self.attempted = true;
        self.record_sync(&report);
        self.publish(&report).await;
        self.announce(&report);
        if let Some(outcome) = report.outcome.take() {
            self.compared_all = true;
            drifted = outcome.drifted;
            self.applyset_id = outcome.applyset_id.clone();
            for c in report.changes.entries.iter().filter(|c| c.action == Action::Deleted) {
                self.live.forget(&c.id);
            }
            self.desired = outcome.plan;
            self.watches.update(&self.live, &outcome.applyset_id, &outcome.scopes).await;
        }
        if report.state != State::Failed {
            self.applied_commit = Some(commit.to_string());
            self.health_deadline = Some(Instant::now() + self.source.health_timeout);
            self.pending_lead = Some(noticed);
        }
        let counts: HashMap<Action, usize> =
            [Action::Created, Action::Configured, Action::Unchanged, Action::Recreated, Action::Deleted, Action::Skipped, Action::Failed]
                .into_iter()
                .map(|a| (a, report.changes.count(a)))
                .filter(|(_, n)| *n > 0)
                .collect();
        self.last_changes = std::mem::take(&mut report.changes);
        release_free_memory();
        self.release_pending = true;
        let (state, reason, message) = match report.state {
            State::Synced if !drifted.is_empty() => {
                let drifted: Vec<(ObjectRef, Option<Drift>)> = drifted.into_iter().map(|id| (id, None)).collect();
                (SyncState::OutOfSync, Some(Reason::DriftDetected), drift_message(&drifted))
            }
            State::Synced => (SyncState::Progressing, None, String::new()),
            State::PruneHeld => (SyncState::PruneHeld, report.reason, report.message.clone()),
            State::Failed => (SyncState::Failed, report.reason, report.message.clone()),
        };
        let duration = report.duration.as_secs_f64();
        self.update_status(|s| {
            if report.state != State::Failed {
                s.last_applied_commit = Some(commit.to_string());
            }
            s.state = state;
            s.reason = reason;
            s.message = message;
            s.last_sync_time = Some(SystemTime::now());
            s.last_sync_duration_seconds = Some(duration);
            s.counts = counts;
            if report.renderer.is_some() {
                s.renderer.clone_from(&report.renderer);
            }
        });
        self.refresh_health();
    }

    /// Judges a drifted object again at `at`, once however often it drifts meanwhile.
    fn wait_before_judging(&mut self, id: ObjectRef, at: Instant) {
        match self.backoff_keys.get(&id) {
            Some(key) => self.backoffs.reset_at(key, at.into()),
            None => {
                let key = self.backoffs.insert_at(id.clone(), at.into());
                self.backoff_keys.insert(id, key);
            }
        }
    }

    /// Handles a drifted object: correct it (self-heal) or report it.
    pub async fn heal(&mut self, id: ObjectRef) {
        let Some(t) = self.live.dequeue(&id) else { return };
        let Some(expected) = t.expected.as_ref() else { return };
        let Some(found) = drift::detect(t.entry.as_ref(), expected) else { return };
        let Some(planned) = self.desired.get(&id) else { return };
        // a watch shared with other sources may not have delivered Driftless's own last write
        // yet: what it holds can be older than that write, so give it a moment before believing it
        if t.unseen_write.is_some() && t.written_at.is_some_and(|at| at.elapsed() < WATCH_LAG) {
            self.wait_before_judging(id, Instant::now() + WATCH_LAG / 8);
            return;
        }
        let kind = KindLabels { source: self.source.name.clone(), kind: id.group_kind().to_string() };
        self.metrics().drift_detected_total.get_or_create(&kind).inc();
        if !self.source.self_heal {
            warn!(source = %self.source.name, object = %id, drift = %found, "drift detected; selfHeal is off, not correcting");
            // every object drifted now, not only this one
            let mut all: Vec<(ObjectRef, Option<Drift>)> = self.live.drifted().into_iter().map(|(id, how)| (id, Some(how))).collect();
            if !all.iter().any(|(other, _)| *other == id) {
                all.push((id.clone(), Some(found.clone())));
            }
            all.sort_by(|a, b| a.0.cmp(&b.0));
            self.update_status(|s| {
                s.state = SyncState::OutOfSync;
                s.reason = Some(Reason::DriftDetected);
                s.message = drift_message(&all);
            });
            return;
        }
        let now = Instant::now();
        if let Verdict::Wait(at) = t.fight.on_drift(now) {
            self.wait_before_judging(id, at);
            return;
        }
        self.live.begin_apply(&id);
        match self.ctx.cluster.apply(&planned.resource, &planned.id, &planned.object, ApplyOptions::default()).await {
            Ok(object) => {
                self.live.applied(&id, Expected::from_object(&object));
                let meta = &object["metadata"];
                if let (Some(uid), Some(rv)) = (meta["uid"].as_str(), meta["resourceVersion"].as_str()) {
                    self.live.written(&id, uid, rv);
                }
                let fight = self.live.corrected(&id, now);
                let corrections = self.live.get(&id).map(|t| t.fight.corrections).unwrap_or(0);
                info!(source = %self.source.name, object = %id, drift = %found, latency_ms = now.elapsed().as_millis() as u64, "drift corrected");
                if fight {
                    warn!(source = %self.source.name, object = %id, other_manager = t.entry.as_ref().and_then(|e| e.other_manager.as_deref()).unwrap_or("unknown"),
                        corrections, "another writer keeps changing this object; backing off");
                }
                self.metrics().drift_corrections_total.get_or_create(&kind).inc();
                if fight {
                    self.metrics().fights_total.get_or_create(&Metrics::source(&self.source.name)).inc();
                }
                self.update_status(|s| {
                    s.drift_corrections += 1;
                    if fight {
                        s.fights += 1;
                    }
                });
                let due = self.drift_notified.get(&id).is_none_or(|at| at.elapsed() >= DRIFT_NOTIFY_EVERY);
                if due {
                    self.drift_notified.insert(id.clone(), Instant::now());
                    let message = format!("{id} {found}; re-applied");
                    self.notify(NotifyEvent::DriftCorrected, self.applied_commit.as_deref(), None, message, Some(&id));
                }
                if let Some(events) = &self.telemetry.events {
                    let parent = applyset::parent_ref(&self.source.name, &self.ctx.agent_namespace);
                    let revision = self.applied_commit.as_deref().map(source::short).unwrap_or("-");
                    let mut note = format!("revision {revision}: {id} {found}; re-applied");
                    if fight {
                        note.push_str(&format!(
                            "; another writer ({}) keeps changing it, backing off",
                            t.entry.as_ref().and_then(|e| e.other_manager.as_deref()).unwrap_or("unknown")
                        ));
                    }
                    events.publish(&self.ctx.cluster, &parent, fight, reasons::DRIFT_CORRECTED, &note).await;
                }
            }
            Err(e) => {
                self.live.apply_failed(&id);
                warn!(source = %self.source.name, object = %id, error = %api_message(&e), "drift correction failed");
            }
        }
    }

    /// Reports a reconcile as an Event and annotations on the source's parent.
    async fn publish(&mut self, report: &Report) {
        if let Some(events) = self.telemetry.events.clone() {
            let parent = applyset::parent_ref(&self.source.name, &self.ctx.agent_namespace);
            status::publish_events(&self.ctx.cluster, &events, &parent, report).await;
        }
        self.annotation_writer().write(status::report_annotation(report));
    }

    /// The writer of the parent's status annotations, started at the first write.
    fn annotation_writer(&mut self) -> &AnnotationWriter {
        let (cluster, parent) = (&self.ctx.cluster, applyset::parent_ref(&self.source.name, &self.ctx.agent_namespace));
        self.annotations.get_or_insert_with(|| AnnotationWriter::spawn(cluster.clone(), parent))
    }

    /// Updates the metrics of a finished reconcile.
    fn record_sync(&self, report: &Report) {
        let m = self.metrics();
        let name = Metrics::source(&self.source.name);
        let result = match report.state {
            State::Synced => "success",
            State::PruneHeld => "prune_held",
            State::Failed => "failure",
        };
        m.sync_total.get_or_create(&ResultLabels { source: self.source.name.clone(), result: result.into() }).inc();
        m.sync_duration.get_or_create(&name).observe(report.duration.as_secs_f64());
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        m.last_sync_timestamp.get_or_create(&name).set(now);
        match report.state {
            State::Failed => {
                // a failed report always has its reason; a stage failure is the least surprising default
                let reason = report.reason.unwrap_or(Reason::ValidationFailed);
                m.sync_failures_total.get_or_create(&FailureLabels { source: self.source.name.clone(), reason }).inc();
                if reason == Reason::Panicked {
                    // a stage's worker panicked: a bug, counted as the loop's own panics are
                    m.panics_total.get_or_create(&name).inc();
                }
                if reason == Reason::FetchFailed {
                    m.git_fetch_errors_total.get_or_create(&name).inc();
                }
            }
            State::PruneHeld => {
                m.prune_held_total.get_or_create(&name).inc();
                m.last_successful_sync_timestamp.get_or_create(&name).set(now);
            }
            State::Synced => {
                m.last_successful_sync_timestamp.get_or_create(&name).set(now);
            }
        }
        if report.state != State::Failed {
            // what git names is applied (a rollback's reconcile of the last good commit too)
            m.set_in_sync(&self.source.name, SystemTime::now());
        }
        if report.state != State::Failed {
            if let Some(commit) = &report.commit {
                m.set_revision(&self.source.name, commit);
            }
        }
        for c in &report.changes.entries {
            m.apply_total.get_or_create(&ActionLabels { source: self.source.name.clone(), action: c.action.as_str().into() }).inc();
        }
    }

    /// Recomputes health from the watches; records the commit-to-healthy lead time, readiness,
    /// the object gauges, and the parent's annotations when the state or health changed.
    fn refresh_health(&mut self) {
        self.refreshed = Some(self.status_inputs());
        let ready = self.synced();
        self.update_status(|s| s.ready = ready);
        if self.release_pending && self.watches.synced() {
            // the watches' initial listings came after the reconcile's release
            self.release_pending = false;
            release_free_memory();
        }
        if self.applied_commit.is_none() {
            return;
        }
        let healths = self.live.health();
        let worst = health::worst(healths.iter().map(|(_, s)| &s.health));
        let drifted = self.live.drifted().len();
        let all_healthy = worst == Health::Healthy && healths.len() == self.desired.objects().len();
        let lead = match (self.pending_lead, all_healthy) {
            (Some(noticed), true) => {
                self.pending_lead = None;
                self.health_deadline = None;
                Some(noticed.elapsed().as_secs_f64())
            }
            _ => None,
        };
        let state = self.state();
        if all_healthy && matches!(state, Some(SyncState::Progressing | SyncState::Synced | SyncState::OutOfSync | SyncState::RolledBack)) {
            self.last_good.clone_from(&self.applied_commit);
        }
        // a revision that failed its health check after the apply and became Healthy since
        let recovered = all_healthy && std::mem::take(&mut self.late_health) && state == Some(SyncState::Failed);
        if let Some(l) = lead {
            self.metrics().commit_to_healthy.get_or_create(&Metrics::source(&self.source.name)).observe(l);
            let synced = !matches!(state, Some(SyncState::Failed | SyncState::PruneHeld));
            if let (Some(commit), true) = (self.applied_commit.as_deref(), synced) {
                let note = format!("Synced and Healthy {:.1}s after it was noticed", l);
                self.post_status(commit, CommitState::Success, note.clone());
                self.notify(NotifyEvent::Synced, Some(commit), None, note, None);
            }
        }
        let counts: Vec<(&'static str, i64)> = [Health::Healthy, Health::Progressing, Health::Degraded, Health::Unknown]
            .into_iter()
            .map(|h| (h.as_str(), healths.iter().filter(|(_, s)| s.health == h).count() as i64))
            .collect();
        self.metrics().set_objects(&self.source.name, &counts);
        let changes: HashMap<&ObjectRef, (&Action, &str)> =
            self.last_changes.entries.iter().map(|c| (&c.id, (&c.action, c.message.as_str()))).collect();
        self.update_status(|s| {
            if recovered && s.reason == Some(Reason::HealthCheckFailed) {
                s.state = SyncState::Progressing;
                s.reason = None;
                s.message.clear();
            }
            s.health = if healths.is_empty() { Health::Healthy } else { worst };
            if let Some(l) = lead {
                s.commit_to_healthy_seconds = Some(l);
            }
            if matches!(s.state, SyncState::Progressing | SyncState::Synced | SyncState::OutOfSync) {
                s.state = if drifted > 0 {
                    SyncState::OutOfSync
                } else if worst == Health::Healthy {
                    SyncState::Synced
                } else {
                    SyncState::Progressing
                };
                if drifted == 0 && s.reason == Some(Reason::DriftDetected) {
                    s.reason = None;
                    s.message.clear();
                }
            }
            s.objects = healths
                .iter()
                .map(|(id, st)| {
                    let (action, message) = changes.get(id).map(|(a, m)| (**a, *m)).unwrap_or((Action::Unchanged, ""));
                    let message = if st.health == Health::Healthy { message.to_string() } else { st.reason.clone() };
                    let wave = self.desired.get(id).map_or(0, |p| p.wave);
                    ObjectStatus { id: id.clone(), action, health: st.health, message, wave }
                })
                .collect();
        });
        self.annotate_on_change();
    }

    /// Writes the parent's status annotations when the state or health changed (never on a
    /// quiet poll, so a no-op resync stays free of API requests).
    fn annotate_on_change(&mut self) {
        let (state, health, message) = {
            let all = self.telemetry.statuses.read().unwrap_or_else(|p| p.into_inner());
            let Some(s) = all.get(&self.source.name) else { return };
            (s.state, s.health, s.message.clone())
        };
        let message = if message.is_empty() { self.last_changes.summary() } else { message };
        if self.annotated == Some((state, health)) {
            return;
        }
        self.annotated = Some((state, health));
        let annotation =
            Annotation { state: format!("{state:?}"), health: Some(health.as_str().to_string()), message, time: SystemTime::now() };
        self.annotation_writer().write(annotation);
    }

    /// Changes the source's status; a changed state moves the `driftless_source_state` series
    /// with it (the one place the loop changes the state).
    fn update_status(&self, f: impl FnOnce(&mut SourceStatus)) {
        let changed = {
            let mut all = self.telemetry.statuses.write().unwrap_or_else(|p| p.into_inner());
            let Some(s) = all.get_mut(&self.source.name) else { return };
            let before = s.state;
            f(s);
            (s.state != before).then_some(s.state)
        };
        if let Some(state) = changed {
            self.metrics().set_state(&self.source.name, state);
        }
    }

    /// The source's state now.
    fn state(&self) -> Option<SyncState> {
        self.telemetry.statuses.read().unwrap_or_else(|p| p.into_inner()).get(&self.source.name).map(|s| s.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_loop_reports_failed_and_restarts_with_backoff() {
        let telemetry = Telemetry::quiet();
        let source: Source = crate::config::parse("sources:\n  - name: shop\n    repo: file:///nowhere\n").unwrap().remove(0);
        telemetry.statuses.write().unwrap().insert("shop".into(), SourceStatus::new(&source));
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let published = std::sync::Mutex::new(Vec::new());
        let started = tokio::time::Instant::now();
        let supervised = supervise(
            "shop",
            &telemetry,
            || {
                let n = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if n < 2 {
                        let empty: Vec<u8> = Vec::new();
                        let _ = empty[n]; // the kind of bug issue 10 found: indexing on data
                    }
                    // the third loop runs on
                    std::future::pending::<()>().await
                }
            },
            |note| {
                published.lock().unwrap().push(note);
                async {}
            },
        );
        // the third loop never ends: stop watching after it started
        let _ = tokio::time::timeout(Duration::from_secs(60), supervised).await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3, "restarted after each panic");
        let panics = telemetry.metrics.panics_total.get_or_create(&Metrics::source("shop")).get();
        assert_eq!(panics, 2);
        let notes = published.lock().unwrap().clone();
        assert_eq!(notes.len(), 2);
        assert!(notes[0].contains("index out of bounds") && notes[0].contains("restarting in 1s"), "{notes:?}");
        assert!(notes[1].contains("restarting in 2s"), "backoff doubles: {notes:?}");
        let status = telemetry.statuses.read().unwrap().get("shop").cloned().unwrap();
        assert_eq!((status.state, status.reason), (SyncState::Failed, Some(Reason::Panicked)));
        assert!(status.message.contains("index out of bounds"), "{}", status.message);
        assert!(started.elapsed() >= Duration::from_secs(3), "waited 1 s and 2 s between restarts");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let base = Duration::from_secs(60);
        for _ in 0..200 {
            let j = jittered(base);
            assert!(j >= Duration::from_secs(54) && j <= Duration::from_secs(66), "{j:?}");
        }
        assert_eq!(jittered(Duration::from_millis(5)), Duration::from_millis(5));
    }
}
