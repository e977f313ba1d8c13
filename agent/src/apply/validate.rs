//! Validate: a server-side dry-run of every object that can be checked before any write decides
//! what each needs; an object whose namespace the revision creates is prechecked in an existing
//! namespace; every refusal is collected, so one failed revision names all its problems.

use futures::stream::{self, StreamExt};
use std::collections::HashMap;

use super::{diff, Decision, Decisions, Listeners, CONCURRENCY};
use crate::cluster::apply::ApplyOptions;
use crate::cluster::{api_message, status_code, Cluster};
use crate::live::drift::Expected;
use crate::live::object::LiveObject;
use crate::manifest::ObjectRef;
use crate::plan::{self, Plan, Planned};
use crate::report::changes::{Action, ChangeSet};
use crate::Error;

/// Objects dry-run between two beats of the heartbeat.
const DRY_RUN_BATCH: usize = 256;

/// A dry-run's verdict on one object: its decision and, when the dry-run would change it, what
/// Driftless would own of it afterwards; or the server's refusal.
pub type Verdict = Result<(Decision, Option<Expected>), (ObjectRef, String)>;

/// Dry-runs each object against the live state, with bounded concurrency. Returns a decision
/// per object index (with, for an object the dry-run would change, what Driftless would own of
/// it afterwards), or every failure (object and server message).
pub async fn dry_run(
    cluster: &Cluster,
    objects: &[&Planned],
    live: &HashMap<ObjectRef, LiveObject>,
) -> Result<Vec<(Decision, Option<Expected>)>, Vec<(ObjectRef, String)>> {
    // Indices, not references, go through the stream: closures over `&Planned` arguments are
    // not general enough for futures spawned on the runtime.
    let results: Vec<Verdict> = stream::iter(0..objects.len())
        .map(|i| async move {
            let p = objects[i];
            let current = live.get(&p.id);
            match cluster.apply(&p.resource, &p.id, &p.object, ApplyOptions { dry_run: true, ..ApplyOptions::default() }).await {
                Ok(result) => Ok(match current.map(|c| (c.body.as_ref(), &c.expected)) {
                    None => (Decision::Create, None),
                    // only the checks were kept: the object is dry-run because its desired
                    // hash changed, so it is written (a no-op on the server if nothing differs)
                    Some((None, _)) => (Decision::Configure, None),
                    Some((Some(body), owned)) if diff::owned_differs(body, owned, &result) => {
                        tracing::debug!(object = %p.id, changed = ?diff::changed_paths(body, &result, 5), "dry-run differs");
                        (Decision::Configure, Some(Expected::from_object(&result)))
                    }
                    Some((Some(_), _)) => (Decision::Unchanged, None),
                }),
                Err(e) => {
                    let message = api_message(&e);
                    if p.recreate && current.is_some() && diff::is_immutable_field_error(&message) {
                        Ok((Decision::Recreate, None))
                    } else {
                        Err((p.id.clone(), message))
                    }
                }
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
    if failures.is_empty() {
        Ok(results.into_iter().filter_map(Result::ok).collect())
    } else {
        Err(failures)
    }
}

/// Prechecks objects whose namespace this revision creates, before anything is written: each is
/// dry-run as a create in `namespace` (which exists). Only what the object itself gets wrong
/// fails the revision: an unknown field (400) or an invalid value (422). Anything else (the name
/// taken there, that namespace's quota or policies, RBAC) says nothing about the object in its
/// own namespace, where the dry-run in place judges it once the namespace exists.
pub async fn precheck_batch(cluster: &Cluster, objects: &[&Planned], namespace: &str) -> Result<(), Vec<(ObjectRef, String)>> {
    let results: Vec<Option<(ObjectRef, String)>> = stream::iter(0..objects.len())
        .map(|i| async move {
            let p = objects[i];
            match cluster.dry_run_create_in(&p.resource, p.value(), namespace).await {
                Ok(()) => None,
                Err(e) if matches!(status_code(&e), Some(400 | 422)) => Some((p.id.clone(), api_message(&e))),
                Err(e) => {
                    tracing::debug!(object = %p.id, error = %api_message(&e), "precheck inconclusive; dry-run in place later");
                    None
                }
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let failures: Vec<_> = results.into_iter().flatten().collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Dry-runs objects and records what each needs; every failure fails the revision (all of them
/// are reported). Each batch of [`DRY_RUN_BATCH`] beats the heartbeat.
pub async fn decide<'p>(
    cluster: &Cluster,
    plan: &Plan,
    objects: &[&'p Planned],
    live: &HashMap<ObjectRef, LiveObject>,
    decisions: &mut Decisions<'p>,
    changes: &mut ChangeSet,
    to: Listeners<'_>,
) -> Result<(), Error> {
    let mut failed = Vec::new();
    for batch in objects.chunks(DRY_RUN_BATCH) {
        match dry_run(cluster, batch, live).await {
            Ok(d) => decisions.extend(batch.iter().map(|p| &p.id).zip(d)),
            Err(failures) => failed.extend(failures),
        }
        to.beat();
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(validation_failed(plan, failed, changes))
    }
}

/// Prechecks objects whose namespace this revision creates (see [`precheck_batch`]), in batches
/// of [`DRY_RUN_BATCH`], each beating the heartbeat; every refusal fails the revision.
pub async fn precheck(
    cluster: &Cluster,
    plan: &Plan,
    objects: &[&Planned],
    namespace: &str,
    changes: &mut ChangeSet,
    to: Listeners<'_>,
) -> Result<(), Error> {
    let mut failed = Vec::new();
    for batch in objects.chunks(DRY_RUN_BATCH) {
        if let Err(failures) = precheck_batch(cluster, batch, namespace).await {
            failed.extend(failures);
        }
        to.beat();
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
pub fn hold_drift(plan: &Plan, live: &HashMap<ObjectRef, LiveObject>, self_heal: bool, decisions: &mut Decisions<'_>) -> Vec<ObjectRef> {
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
