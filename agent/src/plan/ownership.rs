//! Who may write what, decided without I/O: a revision never overwrites an object that belongs
//! to another ApplySet, an ApplySet parent, or the agent's own bookkeeping.
//!
//! Handover: an object of another Driftless source (same inventory namespace) that this revision
//! declares is a conflict while that source's revision declares it too. This source records its
//! claim on its own parent; the other source, once its revision no longer declares the object,
//! relabels it to this set instead of deleting it (see [`super::prune`]), and this source adopts
//! it at its next sync, with its UID.

use super::Plan;
use crate::manifest::ObjectRef;

/// What the ownership checks read of a live object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holder<'a> {
    /// Its `applyset.kubernetes.io/part-of` label.
    pub part_of: Option<&'a str>,
    /// Its `driftless.dev/source` annotation.
    pub source: Option<&'a str>,
    /// Labelled `applyset.kubernetes.io/id`: an ApplySet parent.
    pub is_parent: bool,
}

/// Where the checks run.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// This source's ApplySet id.
    pub applyset_id: &'a str,
    /// The agent's namespace, where ApplySet parents and the leader Lease live.
    pub agent_namespace: &'a str,
}

/// Why a revision may not be applied as it is; each problem names the object and its file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conflicts {
    pub problems: Vec<String>,
    /// Objects of other Driftless sources this revision declares: to record as claims.
    pub claims: Vec<ObjectRef>,
}

/// Checks every planned object against what lives in the cluster. `live` reads an object's
/// holder; `set_of` gives the ApplySet id of a Driftless source of the same inventory namespace.
pub fn check<'l>(
    plan: &Plan,
    live: &dyn Fn(&ObjectRef) -> Option<Holder<'l>>,
    set_of: &dyn Fn(&str) -> String,
    scope: Scope<'_>,
) -> Result<(), Conflicts> {
    let mut out = Conflicts::default();
    for p in plan.objects() {
        let id = &p.id;
        if is_bookkeeping(id, scope.agent_namespace) {
            out.problems.push(format!(
                "{id} ({}): the agent's namespace {} holds Driftless's ApplySet parents and leader Lease; a repository may not manage them",
                p.origin, scope.agent_namespace
            ));
            continue;
        }
        let Some(holder) = live(id) else { continue };
        if holder.is_parent {
            out.problems.push(format!("{id} ({}): is the parent of an ApplySet; a repository may not manage it", p.origin));
            continue;
        }
        let Some(other) = holder.part_of.filter(|other| *other != scope.applyset_id) else { continue };
        match holder.source.filter(|source| set_of(source) == other) {
            Some(source) => {
                out.problems.push(format!(
                    "{id} ({}): already belongs to another ApplySet ({other}, source {source}); not adopted while {source}'s revision declares it: it is handed over, keeping its UID, once that revision no longer does",
                    p.origin
                ));
                out.claims.push(id.clone());
            }
            None => out.problems.push(format!("{id} ({}): already belongs to another ApplySet ({other}); not adopted", p.origin)),
        }
    }
    if out.problems.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

/// ApplySet parents (`driftless-<source>` ConfigMaps) and Leases of the agent's namespace.
fn is_bookkeeping(id: &ObjectRef, agent_namespace: &str) -> bool {
    id.namespace == agent_namespace
        && ((id.group.is_empty() && id.kind == "ConfigMap" && id.name.starts_with("driftless-"))
            || (id.group == "coordination.k8s.io" && id.kind == "Lease"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{manifest, opts, rt};
    use crate::plan::{self, Catalog};
    use serde_json::json;
    use std::collections::HashMap;

    fn plan_of(objects: &[(&str, &str, &str, &str)]) -> Plan {
        let cat = Catalog::new([rt("", "v1", "ConfigMap", "configmaps", true), rt("coordination.k8s.io", "v1", "Lease", "leases", true)]);
        let docs = objects
            .iter()
            .map(|(api, kind, ns, name)| {
                manifest(&format!("{name}.yaml"), json!({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}}))
            })
            .collect();
        plan::build(docs, &cat, &opts()).unwrap()
    }

    const SCOPE: Scope<'static> = Scope { applyset_id: "set-b", agent_namespace: "driftless-system" };

    fn set_of(source: &str) -> String {
        format!("set-{source}")
    }

    #[test]
    fn parents_and_the_lease_of_the_agent_namespace_are_refused() {
        let plan = plan_of(&[
            ("v1", "ConfigMap", "driftless-system", "driftless-other"),
            ("coordination.k8s.io/v1", "Lease", "driftless-system", "driftless"),
            ("v1", "ConfigMap", "driftless-system", "settings"),
            ("v1", "ConfigMap", "apps", "driftless-lookalike"),
        ]);
        let err = check(&plan, &|_| None, &set_of, SCOPE).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{:?}", err.problems);
        assert!(err.problems.iter().all(|m| m.contains("may not manage them")));
        assert!(err.problems[0].contains("driftless-other.yaml:1"), "{}", err.problems[0]);
        assert!(err.claims.is_empty());
    }

    #[test]
    fn any_applyset_parent_is_refused_wherever_it_lives() {
        let plan = plan_of(&[("v1", "ConfigMap", "apps", "kubectl-set")]);
        let err = check(&plan, &|_| Some(Holder { is_parent: true, ..Holder::default() }), &set_of, SCOPE).unwrap_err();
        assert!(err.problems[0].contains("is the parent of an ApplySet"), "{:?}", err.problems);
    }

    #[test]
    fn another_driftless_sources_object_is_claimed_and_a_foreign_sets_is_refused() {
        let plan =
            plan_of(&[("v1", "ConfigMap", "apps", "moved"), ("v1", "ConfigMap", "apps", "kubectls"), ("v1", "ConfigMap", "apps", "ours")]);
        let holders: HashMap<&str, Holder<'_>> = HashMap::from([
            ("moved", Holder { part_of: Some("set-a"), source: Some("a"), is_parent: false }),
            // labelled by a set whose id is not the named source's: not a Driftless handover
            ("kubectls", Holder { part_of: Some("applyset-x"), source: Some("a"), is_parent: false }),
            ("ours", Holder { part_of: Some("set-b"), source: Some("b"), is_parent: false }),
        ]);
        let err = check(&plan, &|id| holders.get(id.name.as_str()).copied(), &set_of, SCOPE).unwrap_err();
        assert_eq!(err.claims.iter().map(|id| id.name.as_str()).collect::<Vec<_>>(), ["moved"]);
        assert_eq!(err.problems.len(), 2);
        assert!(err
            .problems
            .iter()
            .any(|m| m.contains("ConfigMap apps/moved (moved.yaml:1): already belongs to another ApplySet (set-a, source a)")));
        assert!(err.problems.iter().any(|m| m.contains("(applyset-x); not adopted")));
        assert!(
            check(&plan_of(&[("v1", "ConfigMap", "apps", "ours")]), &|id| holders.get(id.name.as_str()).copied(), &set_of, SCOPE).is_ok()
        );
    }
}
