//! What a sync would do, found with reads and server-side dry-runs only: the revision is
//! fetched, rendered and planned as a reconcile would; the set's members and the desired
//! objects' live state are read; every object that can be is dry-run in place; the prune is
//! planned behind the same safeguards. Nothing is written: not the agent's namespace, not a
//! claim, not the ApplySet parent (the integration test checks the audit log for it).

use std::collections::{HashMap, HashSet};

use futures::stream::{self, StreamExt};
use serde_json::Value;

use super::{diff, ObjectPlan, PlanAction, Preview, PruneAction, PrunePlan, Wave};
use crate::apply::validate::precheck_batch;
use crate::apply::{diff as differ, CONCURRENCY};
use crate::cluster::api_message;
use crate::cluster::apply::ApplyOptions;
use crate::config::Source;
use crate::inventory::prune::read_claims;
use crate::live::object::{Keep, LiveObject};
use crate::manifest::ObjectRef;
use crate::plan::prune::{plan_prune, KeepReason, PrunePolicy};
use crate::plan::schedule::{self, Group};
use crate::plan::{Plan, Planned};
use crate::sync::{self, Context, Prepared, Writes};

/// Where objects of a namespace this revision creates are prechecked (as a create): one every
/// cluster has, since no agent may be installed yet.
const PRECHECK_NAMESPACE: &str = "default";

/// Previews one source's sync.
pub async fn preview(ctx: &Context, source: &Source) -> Preview {
    let (mut commit, mut renderer) = (None, None);
    // fetch, render, plan and live state, as a reconcile runs them, writing nothing
    let prepared = sync::prepare(ctx, source, None, Keep::Body, Writes::Nothing, &|_| {}, &mut commit, &mut renderer).await;
    let mut preview = Preview {
        source: source.name.clone(),
        commit: commit.unwrap_or_default(),
        renderer: renderer.unwrap_or_default(),
        objects: Vec::new(),
        prunes: Vec::new(),
        held: None,
        waves: Vec::new(),
        problems: Vec::new(),
    };
    let Prepared { plan, set, members, live, .. } = match prepared {
        Ok(p) => p,
        Err(e) => {
            preview.problems.push(e.to_string());
            return preview;
        }
    };

    // schedule: every object is compared (as `driftless sync` does); what needs a definition of
    // this revision first is prechecked where it can be, and judged in place only by the sync
    let exists = |id: &ObjectRef| live.contains_key(id);
    let schedule = schedule::build(&plan, &exists, &|_: &Planned| false);
    let in_place: Vec<&Planned> = crate::apply::pick(&plan, &schedule.validate);
    let mut verdicts: HashMap<ObjectRef, (PlanAction, Option<String>, String)> = dry_run(ctx, &in_place, &live, source.self_heal).await;
    let later: Vec<&Planned> = plan.objects().iter().filter(|p| !verdicts.contains_key(&p.id)).collect();
    let prechecked: Vec<&Planned> = crate::apply::pick(&plan, &schedule.precheck);
    let refused: HashMap<ObjectRef, String> = match precheck_batch(&ctx.cluster, &prechecked, PRECHECK_NAMESPACE).await {
        Ok(()) => HashMap::new(),
        Err(failures) => failures.into_iter().collect(),
    };
    for p in later {
        let verdict = match refused.get(&p.id) {
            Some(m) => (PlanAction::Invalid, None, format!("{}: {m}", p.origin)),
            None => {
                let what = if p.needs_crd { "its CustomResourceDefinition" } else { "the Namespace or Role it needs" };
                (PlanAction::Create, None, format!("dry-run in place once {what} is applied"))
            }
        };
        verdicts.insert(p.id.clone(), verdict);
    }
    for p in plan.objects() {
        let (action, diff, message) = verdicts.remove(&p.id).unwrap_or((PlanAction::Create, None, String::new()));
        preview.objects.push(ObjectPlan { object: p.id.clone(), wave: p.wave, action, diff, message });
    }
    preview.waves = waves(&plan, &schedule.definitions, &schedule.rest);

    // prune: the members that left git, behind the same safeguards a sync applies
    let desired: HashSet<&ObjectRef> = plan.objects().iter().map(|p| &p.id).collect();
    let mut claims = HashMap::new();
    if members.iter().any(|m| !desired.contains(&m.member.id)) {
        match read_claims(&ctx.cluster, &set.agent_namespace, &set.parent).await {
            Ok(c) => claims = c,
            Err(e) => {
                preview.problems.push(format!("reading other sources' claims: {}", api_message(&e)));
                return preview;
            }
        }
    }
    let policy = crate::inventory::prune::policy(source, &set, claims);
    let pruned = plan_prune(members.iter().map(|m| &m.member), &desired, &policy);
    let held = match (&pruned.held, source.prune) {
        (_, false) => Some("prune is off for this source".to_string()),
        (Some(hold), true) => Some(hold.to_string()),
        (None, true) => None,
    };
    // a held prune deletes nothing; what it holds is what it would delete without the hold
    let would_delete = match &pruned.held {
        Some(_) => {
            plan_prune(members.iter().map(|m| &m.member), &desired, &PrunePolicy { allow_empty: true, max_prune_percent: 100, ..policy })
                .delete
        }
        None => pruned.delete.clone(),
    };
    for o in &would_delete {
        let (action, reason) = match &held {
            Some(why) => (PruneAction::Held, why.clone()),
            None => (PruneAction::Delete, "left git".to_string()),
        };
        preview.prunes.push(PrunePlan { object: o.id.clone(), action, reason });
    }
    for (o, claimant) in &pruned.handover {
        let reason = format!("handed over to ApplySet {claimant}, whose revision declares it");
        preview.prunes.push(PrunePlan { object: o.id.clone(), action: PruneAction::Held, reason });
    }
    for (id, why) in &pruned.kept {
        if let Some(reason) = kept_reason(why) {
            preview.prunes.push(PrunePlan { object: id.clone(), action: PruneAction::Held, reason: reason.to_string() });
        }
    }
    preview.held = held.filter(|_| !would_delete.is_empty());
    preview
}

/// Why a safeguard keeps a member that left git, in words; None for what is not a member.
fn kept_reason(why: &KeepReason) -> Option<&'static str> {
    Some(match why {
        KeepReason::ProtectedKind => "a protected kind the source does not list as prunable",
        KeepReason::PruneDisabled => "annotated driftless.dev/prune: disabled",
        KeepReason::AgentNamespace => "the agent's own namespace",
        KeepReason::Parent => "the ApplySet parent",
        KeepReason::NotOwned => "labelled as a member, but Driftless never applied it",
        KeepReason::DefinitionKept => "its CustomResourceDefinition is kept",
        KeepReason::NotAMember => return None,
    })
}

/// Dry-runs each object in place (server-side apply with dryRun=All) and says what a sync would
/// do with it, with the diff of what Driftless would own; a refusal names the file and line.
async fn dry_run(
    ctx: &Context,
    objects: &[&Planned],
    live: &HashMap<ObjectRef, LiveObject>,
    self_heal: bool,
) -> HashMap<ObjectRef, (PlanAction, Option<String>, String)> {
    let cluster = &ctx.cluster;
    stream::iter(0..objects.len())
        .filter_map(|i| async move { objects.get(i).copied() })
        .map(|p| async move {
            let current = live.get(&p.id);
            let verdict =
                match cluster.apply(&p.resource, &p.id, &p.object, ApplyOptions { dry_run: true, ..ApplyOptions::default() }).await {
                    Ok(result) => {
                        let (action, diff, message) = judge(p, current, &result, self_heal);
                        if action == PlanAction::Update {
                            // the diff reads what Driftless owns now from the live object's
                            // managedFields (the listing kept none), so a field git removed shows
                            match cluster.get(&p.resource, &p.id).await {
                                Ok(Some(full)) => (action, diff::object_diff(&p.id, Some(&full), &result), message),
                                _ => (action, diff, message),
                            }
                        } else {
                            (action, diff, message)
                        }
                    }
                    Err(e) => {
                        let message = api_message(&e);
                        if p.recreate && current.is_some() && differ::is_immutable_field_error(&message) {
                            (PlanAction::Recreate, None, "immutable fields changed: deleted and created again".to_string())
                        } else {
                            (PlanAction::Invalid, None, format!("{}: {message}", p.origin))
                        }
                    }
                };
            (p.id.clone(), verdict)
        })
        .buffered(CONCURRENCY)
        .collect()
        .await
}

/// A dry-run result against the live object: create, update (with its diff), or unchanged.
fn judge(p: &Planned, current: Option<&LiveObject>, result: &Value, self_heal: bool) -> (PlanAction, Option<String>, String) {
    let Some(current) = current else {
        return (PlanAction::Create, diff::object_diff(&p.id, None, result), String::new());
    };
    let Some(body) = current.body.as_ref() else {
        return (PlanAction::Update, None, "the live object could not be compared".to_string());
    };
    if !differ::owned_differs(body, &current.expected, result) {
        return (PlanAction::Unchanged, None, String::new());
    }
    // git did not change it since the last sync, but the cluster did: drift, which a sync
    // corrects only with selfHeal
    if !self_heal && current.desired_hash.as_deref() == Some(p.hash.as_str()) {
        return (PlanAction::Unchanged, None, "drifted from git; selfHeal is off, so a sync leaves it".to_string());
    }
    (PlanAction::Update, diff::object_diff(&p.id, Some(body), result), String::new())
}

/// The apply order: definitions first, group by group, then wave by wave.
fn waves(plan: &Plan, definitions: &[Group], rest: &[Group]) -> Vec<Wave> {
    let ids = |group: &Group| crate::apply::pick(plan, &group.objects).into_iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    let mut out: Vec<Wave> = Vec::new();
    if !definitions.is_empty() {
        let objects = definitions.iter().flat_map(ids).collect();
        out.push(Wave { wave: definitions.first().map_or(0, |g| g.wave), definitions: true, objects });
    }
    for group in rest {
        match out.last_mut() {
            Some(last) if !last.definitions && last.wave == group.wave => last.objects.extend(ids(group)),
            _ => out.push(Wave { wave: group.wave, definitions: false, objects: ids(group) }),
        }
    }
    out
}
