//! Waves: the decided objects are applied group by group (wave, then tier), each group
//! concurrently; definitions first, and a wave starts only when every object of the waves before
//! it is Healthy. Each apply is told to the live state, so its watch expects what was written.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::Value;
use tracing::debug;

use super::validate::decide;
use super::{pick, Decision, Decisions, Listeners, CONCURRENCY};
use crate::cluster::apply::ApplyOptions;
use crate::cluster::{api_message, wait, Cluster};
use crate::live::drift::Expected;
use crate::live::health::{self, Health};
use crate::live::object::LiveObject;
use crate::manifest::ObjectRef;
use crate::plan::schedule::Schedule;
use crate::plan::{Plan, Planned};
use crate::report::changes::{Action, ChangeSet};
use crate::Error;

/// How long to wait for new CRDs to be served.
const CRD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a recreated object may take to disappear.
const RECREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the objects of earlier waves are looked at while they are not all Healthy.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// The failed entries, for an error message.
pub fn failures(changes: &ChangeSet) -> String {
    let failed: Vec<String> =
        changes.entries.iter().filter(|c| c.action == Action::Failed).map(|c| format!("{}: {}", c.id, c.message)).collect();
    failed.join("; ")
}

/// Marks every planned object that has no entry yet as skipped: an earlier stage failed.
pub fn skip_undone(plan: &Plan, changes: &mut ChangeSet) {
    let done: HashSet<ObjectRef> = changes.entries.iter().map(|c| c.id.clone()).collect();
    for p in plan.objects().iter().filter(|p| !done.contains(&p.id)) {
        changes.push(p.id.clone(), Action::Skipped, "not applied: an earlier stage failed");
    }
}

/// Applies a plan group by group (wave, then tier), each group concurrently.
pub struct Waves<'a> {
    pub cluster: &'a Cluster,
    /// The live objects, as read before the dry-run.
    pub live: &'a HashMap<ObjectRef, LiveObject>,
    pub to: Listeners<'a>,
    /// How long the objects of earlier waves may take to become Healthy.
    pub health_timeout: Duration,
}

impl Waves<'_> {
    /// Applies the definitions first (see [`crate::plan::schedule`]), each group dry-running the members that
    /// needed an earlier one; waits for new CRDs; dry-runs what waited for the definitions; then
    /// applies the rest, wave by wave and tier by tier. Tells the live state what each object
    /// is expected to look like afterwards.
    pub async fn apply<'p>(
        &self,
        plan: &'p Plan,
        schedule: &Schedule,
        decisions: &mut Decisions<'p>,
        changes: &mut ChangeSet,
    ) -> Result<(), Error> {
        for group in &schedule.definitions {
            decide(self.cluster, plan, &pick(plan, &group.check_first), self.live, decisions, changes, self.to).await?;
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
        decide(self.cluster, plan, &pick(plan, &schedule.deferred), self.live, decisions, changes, self.to).await?;

        for (i, group) in schedule.rest.iter().enumerate() {
            let first_of_wave = i == 0 || schedule.rest.get(i - 1).is_some_and(|g| g.wave != group.wave);
            if first_of_wave && plan.objects().iter().any(|p| p.wave < group.wave) {
                let earlier: Vec<&Planned> = plan.objects().iter().filter(|p| p.wave < group.wave).collect();
                wait_healthy(self.cluster, &earlier, self.health_timeout, self.to).await?;
            }
            self.apply_group(&pick(plan, &group.objects), decisions, changes).await?;
        }
        Ok(())
    }

    /// Applies one group concurrently, by the decisions made.
    async fn apply_group(&self, group: &[&Planned], decisions: &Decisions<'_>, changes: &mut ChangeSet) -> Result<(), Error> {
        let cluster = self.cluster;
        let started = Instant::now();
        // each result is reduced to its expectation (and the generation written) at once: a
        // group's applied objects are never all held
        let results: Vec<Applied> = stream::iter(0..group.len())
            .map(|j| async move {
                let p = group[j];
                let Some((decision, dry_run)) = decisions.get(&p.id) else {
                    // the schedule decides every object before its apply; never write undecided
                    return Applied {
                        id: p.id.clone(),
                        action: Action::Failed,
                        message: "not validated before its apply".into(),
                        expected: None,
                        written: None,
                    };
                };
                if *decision != Decision::Unchanged {
                    if let Some(state) = self.to.live {
                        state.begin_apply(&p.id);
                    }
                }
                let applied = apply_one(cluster, p, *decision).await;
                self.to.beat();
                let (id, action, message, result) = match applied {
                    // an unchanged object expected otherwise: drift left in place (selfHeal off)
                    (id, Action::Unchanged, _, None) if dry_run.is_some() => {
                        (id, Action::Skipped, "drifted from git; selfHeal is off, not corrected".to_string(), None)
                    }
                    other => other,
                };
                let written = result.as_ref().and_then(|o| {
                    let meta = &o["metadata"];
                    Some((meta["uid"].as_str()?.to_string(), meta["resourceVersion"].as_str()?.to_string()))
                });
                let expected = match result {
                    _ if action == Action::Failed => None,
                    Some(object) => Some(Expected::from_object(&object)),
                    // unchanged: as it is, unless drift was left in place (then as it should be)
                    None => dry_run.clone().or_else(|| self.live.get(&id).map(|l| l.expected.clone())),
                };
                Applied { id, action, message, expected, written }
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        if let Some(first) = group.first() {
            debug!(kind = %first.id.kind, wave = first.wave, objects = group.len(), elapsed_ms = started.elapsed().as_millis() as u64, "group applied");
        }
        let failed = results.iter().any(|r| r.action == Action::Failed);
        for Applied { id, action, message, expected, written } in results {
            if let Some(state) = self.to.live {
                match expected {
                    Some(e) => state.applied(&id, e),
                    None => state.apply_failed(&id),
                }
                if let Some((uid, resource_version)) = written {
                    state.written(&id, &uid, &resource_version);
                }
            }
            changes.push(id, action, message);
        }
        if failed {
            return Err(Error::Apply(failures(changes)));
        }
        Ok(())
    }
}

/// What one object's apply left: what the report says of it, what its watch should expect, and
/// the uid and resourceVersion written.
struct Applied {
    id: ObjectRef,
    action: Action,
    message: String,
    expected: Option<Expected>,
    written: Option<(String, String)>,
}

/// Waits until every object is Healthy, looking again only at those that are not yet. Where the
/// source's watches already saw what was written, their cache answers; otherwise a GET does.
async fn wait_healthy(cluster: &Cluster, objects: &[&Planned], timeout: Duration, to: Listeners<'_>) -> Result<(), Error> {
    let waiting = std::sync::Mutex::new(objects.to_vec());
    let wait = wait::until(timeout, HEALTH_POLL, || async {
        to.beat();
        let looking = std::mem::take(&mut *waiting.lock().unwrap_or_else(|p| p.into_inner()));
        let mut still = Vec::new();
        let mut last = String::new();
        for p in looking {
            let status = match to.live.and_then(|state| state.current_health(&p.id)) {
                Some(watched) => watched,
                None => match cluster.get(&p.resource, &p.id).await {
                    Ok(Some(o)) => health::evaluate(&p.id.group, &p.id.kind, &o),
                    Ok(None) => health::Status { health: Health::Unknown, reason: "not found".into() },
                    Err(e) => health::Status { health: Health::Unknown, reason: api_message(&e) },
                },
            };
            if status.health != Health::Healthy {
                last = format!("{} is {}: {}", p.id, status.health.as_str(), status.reason);
                still.push(p);
            }
        }
        let count = still.len();
        *waiting.lock().unwrap_or_else(|p| p.into_inner()) = still;
        if count == 0 {
            wait::Poll::Done(())
        } else {
            wait::Poll::Pending((count, last))
        }
    });
    // a newer commit ends the wait: this revision is superseded, the loop reconciles that one
    let outcome = match to.cancel {
        Some(cancel) => tokio::select! {
            outcome = wait => outcome,
            () = cancel.cancelled() => return Err(Error::Superseded),
        },
        None => wait.await,
    };
    match outcome {
        wait::Outcome::Done(()) => Ok(()),
        wait::Outcome::Failed(message) => Err(Error::HealthCheck(message)),
        wait::Outcome::TimedOut((count, last)) => {
            Err(Error::HealthCheck(format!("{count} object(s) of earlier waves not Healthy after {}s; {last}", timeout.as_secs())))
        }
    }
}

async fn apply_one(cluster: &Cluster, p: &Planned, decision: Decision) -> (ObjectRef, Action, String, Option<Value>) {
    let id = p.id.clone();
    let result = match decision {
        Decision::Unchanged => return (id, Action::Unchanged, String::new(), None),
        Decision::Create => cluster
            .apply(&p.resource, &p.id, &p.object, ApplyOptions::default())
            .await
            .map(|o| (Action::Created, o))
            .map_err(|e| api_message(&e)),
        Decision::Configure => cluster
            .apply(&p.resource, &p.id, &p.object, ApplyOptions::default())
            .await
            .map(|o| (Action::Configured, o))
            .map_err(|e| api_message(&e)),
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
    cluster
        .apply(&p.resource, &p.id, &p.object, ApplyOptions::default())
        .await
        .map_err(|e| format!("create after delete: {}", api_message(&e)))
}
