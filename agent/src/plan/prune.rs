//! Prune planning: which live members of an ApplySet may be deleted, and which safeguard holds
//! the rest. Pure: the live objects come from the API layer as plain data.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use super::order;
use crate::manifest::{GroupKind, ObjectRef};

/// A member of the set as the prune planner sees it: plain data from the inventory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: ObjectRef,
    pub uid: String,
    pub resource_version: String,
    /// The value of its `applyset.kubernetes.io/part-of` label.
    pub part_of: Option<String>,
    /// Annotated `driftless.dev/prune: disabled`.
    pub prune_disabled: bool,
    /// Driftless's field manager applied it (see [`crate::live::object::LiveObject::owned`]).
    pub owned: bool,
    /// Its resource's plural name (`widgets`): with the group, the name of the CRD defining it.
    pub plural: String,
}

/// The safeguards' settings for one source.
#[derive(Clone, Debug)]
pub struct PrunePolicy {
    /// The ApplySet id of this source.
    pub applyset_id: String,
    /// Permit a revision that renders no objects to prune every member.
    pub allow_empty: bool,
    /// Hold the prune when it would delete more than this percentage of the members.
    pub max_prune_percent: u32,
    /// Kinds normally protected (Namespace, CustomResourceDefinition, PersistentVolumeClaim)
    /// that this source allows to prune.
    pub prunable: BTreeSet<GroupKind>,
    /// The agent's own namespace: never pruned.
    pub agent_namespace: String,
    /// The ApplySet parent: never pruned.
    pub parent: ObjectRef,
    /// Objects other sources' revisions declare (their parents' `driftless.dev/claims`), with the
    /// claiming set's id: a member this revision no longer declares is handed over to that set,
    /// keeping its UID, instead of being deleted.
    pub claims: HashMap<ObjectRef, String>,
}

/// Kinds never pruned unless listed as prunable: deleting them loses data or whole trees.
pub fn protected_kinds() -> [GroupKind; 3] {
    [
        GroupKind::new("", "Namespace"),
        GroupKind::new("apiextensions.k8s.io", "CustomResourceDefinition"),
        GroupKind::new("", "PersistentVolumeClaim"),
    ]
}

/// Why a member that left git is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum KeepReason {
    /// A protected kind the source did not list as prunable.
    ProtectedKind,
    /// Annotated `driftless.dev/prune: disabled`.
    PruneDisabled,
    /// The agent's own namespace.
    AgentNamespace,
    /// The ApplySet parent.
    Parent,
    /// No longer labelled as a member of this set.
    NotAMember,
    /// Labelled as a member, but Driftless never applied it (a copied label): never deleted.
    NotOwned,
    /// A custom resource whose CustomResourceDefinition left git too and is kept: the
    /// definition's data stays with it.
    DefinitionKept,
}

/// Why a whole prune is held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Hold {
    /// The revision renders no object while the set has members.
    EmptyRevision { members: usize },
    /// The prune would delete more than the allowed share of the set.
    TooMany { would_delete: usize, members: usize, max_percent: u32 },
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::EmptyRevision { members } => {
                write!(f, "the revision renders no objects but the set has {members} members; set allowEmpty to prune them all")
            }
            Hold::TooMany { would_delete, members, max_percent } => {
                write!(f, "the revision would delete {would_delete} of {members} members, more than maxPrunePercent {max_percent}%")
            }
        }
    }
}

/// The outcome of prune planning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// To delete, in deletion order (reverse of apply order).
    pub delete: Vec<Member>,
    /// To hand over to the set that claims them (its id), instead of deleting them.
    pub handover: Vec<(Member, String)>,
    /// Left in place, with the reason.
    pub kept: Vec<(ObjectRef, KeepReason)>,
    /// When set, nothing is deleted.
    pub held: Option<Hold>,
}

/// Plans the prune of the members that are not desired any more.
pub fn plan_prune<'a>(live: impl IntoIterator<Item = &'a Member>, desired: &HashSet<&ObjectRef>, policy: &PrunePolicy) -> PrunePlan {
    let live: Vec<&Member> = live.into_iter().collect();
    let members: Vec<&Member> = live.iter().copied().filter(|o| o.part_of.as_deref() == Some(policy.applyset_id.as_str())).collect();
    let mut plan = PrunePlan::default();

    for o in live.iter().copied().filter(|o| !desired.contains(&o.id)) {
        let reason = if o.part_of.as_deref() != Some(policy.applyset_id.as_str()) {
            Some(KeepReason::NotAMember)
        } else if o.id == policy.parent {
            Some(KeepReason::Parent)
        } else if o.id.group.is_empty() && o.id.kind == "Namespace" && o.id.name == policy.agent_namespace {
            Some(KeepReason::AgentNamespace)
        } else if !o.owned {
            Some(KeepReason::NotOwned)
        } else if let Some(claimant) = policy.claims.get(&o.id).filter(|c| **c != policy.applyset_id) {
            plan.handover.push((o.clone(), claimant.clone()));
            continue;
        } else if o.prune_disabled {
            Some(KeepReason::PruneDisabled)
        } else if protected_kinds().contains(&o.id.group_kind()) && !policy.prunable.contains(&o.id.group_kind()) {
            Some(KeepReason::ProtectedKind)
        } else {
            None
        };
        match reason {
            Some(r) => plan.kept.push((o.id.clone(), r)),
            None => plan.delete.push(o.clone()),
        }
    }
    // the custom resources of a kept CRD stay with it
    let kept_crds: HashSet<&str> = plan
        .kept
        .iter()
        .filter(|(id, r)| *r == KeepReason::ProtectedKind && id.kind == "CustomResourceDefinition" && id.group == "apiextensions.k8s.io")
        .map(|(id, _)| id.name.as_str())
        .collect();
    if !kept_crds.is_empty() {
        let (defined, rest): (Vec<Member>, Vec<Member>) =
            std::mem::take(&mut plan.delete).into_iter().partition(|o| kept_crds.contains(format!("{}.{}", o.plural, o.id.group).as_str()));
        plan.delete = rest;
        let defined: Vec<(ObjectRef, KeepReason)> = defined.into_iter().map(|o| (o.id, KeepReason::DefinitionKept)).collect();
        plan.kept.extend(defined);
    }

    if plan.delete.is_empty() {
        return plan;
    }
    if desired.is_empty() && !policy.allow_empty {
        plan.held = Some(Hold::EmptyRevision { members: members.len() });
    } else if plan.delete.len() * 100 > policy.max_prune_percent as usize * members.len() {
        plan.held = Some(Hold::TooMany { would_delete: plan.delete.len(), members: members.len(), max_percent: policy.max_prune_percent });
    }
    if plan.held.is_some() {
        plan.delete.clear();
        return plan;
    }
    // Reverse apply order: webhooks and custom resources first, namespaces and CRDs last.
    plan.delete.sort_by(|a, b| {
        let key = |o: &Member| (order::tier_of(&o.id.group, &o.id.kind), order::rank_in_tier(&o.id.kind));
        key(b).cmp(&key(a)).then_with(|| a.id.cmp(&b.id))
    });
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(group: &str, kind: &str, ns: &str, name: &str) -> ObjectRef {
        ObjectRef::new(group, kind, ns, name)
    }

    fn member(id: ObjectRef) -> Member {
        Member {
            id,
            uid: "u".into(),
            resource_version: "1".into(),
            part_of: Some("set-a".into()),
            prune_disabled: false,
            owned: true,
            plural: String::new(),
        }
    }

    fn policy() -> PrunePolicy {
        PrunePolicy {
            applyset_id: "set-a".into(),
            allow_empty: false,
            max_prune_percent: 50,
            prunable: BTreeSet::new(),
            agent_namespace: "driftless-system".into(),
            parent: id("", "ConfigMap", "driftless-system", "driftless-demo"),
            claims: HashMap::new(),
        }
    }

    fn cms(n: usize) -> Vec<Member> {
        (0..n).map(|i| member(id("", "ConfigMap", "apps", &format!("c{i}")))).collect()
    }

    fn desired(live: &[Member], keep: usize) -> HashSet<&ObjectRef> {
        live.iter().take(keep).map(|o| &o.id).collect()
    }

    #[test]
    fn members_that_left_git_are_deleted() {
        let live = cms(4);
        let plan = plan_prune(&live, &desired(&live, 3), &policy());
        assert_eq!(plan.held, None);
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(plan.delete[0].id.name, "c3");
    }

    #[test]
    fn nothing_to_delete_when_everything_is_desired() {
        let live = cms(3);
        let plan = plan_prune(&live, &desired(&live, 3), &policy());
        assert!(plan.delete.is_empty() && plan.kept.is_empty() && plan.held.is_none());
    }

    #[test]
    fn an_empty_revision_is_refused_unless_allowed() {
        let live = cms(3);
        let plan = plan_prune(&live, &HashSet::new(), &policy());
        assert_eq!(plan.held, Some(Hold::EmptyRevision { members: 3 }));
        assert!(plan.delete.is_empty());

        let allowed = PrunePolicy { allow_empty: true, max_prune_percent: 100, ..policy() };
        assert_eq!(plan_prune(&live, &HashSet::new(), &allowed).delete.len(), 3);
    }

    #[test]
    fn deleting_more_than_max_percent_holds_the_whole_prune() {
        let live = cms(10);
        let plan = plan_prune(&live, &desired(&live, 4), &policy());
        assert_eq!(plan.held, Some(Hold::TooMany { would_delete: 6, members: 10, max_percent: 50 }));
        assert!(plan.delete.is_empty());
        // exactly half is not more than half
        assert_eq!(plan_prune(&live, &desired(&live, 5), &policy()).delete.len(), 5);
    }

    #[test]
    fn protected_kinds_are_kept_unless_listed_as_prunable() {
        let live = vec![
            member(id("", "Namespace", "", "shop")),
            member(id("apiextensions.k8s.io", "CustomResourceDefinition", "", "widgets.example.com")),
            member(id("", "PersistentVolumeClaim", "shop", "data")),
        ];
        let lenient = PrunePolicy { allow_empty: true, max_prune_percent: 100, ..policy() };
        let plan = plan_prune(&live, &HashSet::new(), &lenient);
        assert!(plan.delete.is_empty());
        assert!(plan.kept.iter().all(|(_, r)| *r == KeepReason::ProtectedKind));

        let mut prunable = lenient.clone();
        prunable.prunable.insert(GroupKind::new("", "PersistentVolumeClaim"));
        let plan = plan_prune(&live, &HashSet::new(), &prunable);
        assert_eq!(plan.delete.iter().map(|o| o.id.kind.as_str()).collect::<Vec<_>>(), ["PersistentVolumeClaim"]);
    }

    #[test]
    fn prune_disabled_objects_the_parent_and_the_agent_namespace_are_kept() {
        let mut pinned = member(id("", "ConfigMap", "apps", "pinned"));
        pinned.prune_disabled = true;
        let live = vec![pinned, member(policy().parent.clone()), member(id("", "Namespace", "", "driftless-system"))];
        let mut p = PrunePolicy { allow_empty: true, max_prune_percent: 100, ..policy() };
        p.prunable.insert(GroupKind::new("", "Namespace"));
        let plan = plan_prune(&live, &HashSet::new(), &p);
        assert!(plan.delete.is_empty(), "{:?}", plan.delete);
        let reasons: Vec<_> = plan.kept.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(reasons, [KeepReason::PruneDisabled, KeepReason::Parent, KeepReason::AgentNamespace]);
    }

    #[test]
    fn objects_of_another_set_or_unlabelled_are_never_deleted() {
        let mut foreign = member(id("", "Secret", "apps", "pgpassword"));
        foreign.part_of = None;
        let mut other_set = member(id("", "ConfigMap", "apps", "theirs"));
        other_set.part_of = Some("set-b".into());
        let live = vec![foreign, other_set, member(id("", "ConfigMap", "apps", "ours"))];
        let p = PrunePolicy { allow_empty: true, max_prune_percent: 100, ..policy() };
        let plan = plan_prune(&live, &HashSet::new(), &p);
        assert_eq!(plan.delete.iter().map(|o| o.id.name.as_str()).collect::<Vec<_>>(), ["ours"]);
        assert_eq!(plan.kept.len(), 2);
        assert!(plan.kept.iter().all(|(_, r)| *r == KeepReason::NotAMember));
    }

    #[test]
    fn deletion_runs_in_reverse_apply_order() {
        let live = vec![
            member(id("", "ConfigMap", "apps", "cfg")),
            member(id("apps", "Deployment", "apps", "web")),
            member(id("", "Service", "apps", "web")),
            member(id("example.com", "Widget", "apps", "w")),
            member(id("", "ServiceAccount", "apps", "sa")),
        ];
        let p = PrunePolicy { allow_empty: true, max_prune_percent: 100, ..policy() };
        let plan = plan_prune(&live, &HashSet::new(), &p);
        let kinds: Vec<_> = plan.delete.iter().map(|o| o.id.kind.as_str()).collect();
        // Helm's order reversed: custom resources, workloads, then the Services before them
        assert_eq!(kinds, ["Widget", "Deployment", "Service", "ConfigMap", "ServiceAccount"]);
    }

    #[test]
    fn a_member_with_a_copied_label_that_driftless_never_applied_is_kept() {
        let mut copied = member(id("", "ConfigMap", "apps", "copied"));
        copied.owned = false;
        let live = vec![copied, member(id("", "ConfigMap", "apps", "ours"))];
        let p = PrunePolicy { allow_empty: true, max_prune_percent: 100, ..policy() };
        let plan = plan_prune(&live, &HashSet::new(), &p);
        assert_eq!(plan.delete.iter().map(|o| o.id.name.as_str()).collect::<Vec<_>>(), ["ours"]);
        assert_eq!(plan.kept, [(id("", "ConfigMap", "apps", "copied"), KeepReason::NotOwned)]);
    }

    #[test]
    fn a_member_another_set_claims_is_handed_over_not_deleted() {
        let live = cms(4);
        let mut p = policy();
        p.claims.insert(live[3].id.clone(), "set-b".into());
        // a claim by this very set changes nothing
        p.claims.insert(live[2].id.clone(), "set-a".into());
        let plan = plan_prune(&live, &desired(&live, 2), &p);
        assert_eq!(plan.handover, [(live[3].clone(), "set-b".to_string())]);
        assert_eq!(plan.delete.iter().map(|o| o.id.name.as_str()).collect::<Vec<_>>(), ["c2"], "a handover is not a deletion");
        assert_eq!(plan.held, None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Over random live sets (labels of this set, another or none; owned or not; pinned;
        /// claimed) and random desired sets: each live object that left git gets exactly one fate,
        /// and nothing is deleted that this set does not own, that is protected, or while held.
        #[test]
        fn every_member_that_left_git_gets_one_fate_and_only_owned_members_are_deleted(
            objects in proptest::collection::vec((0u8..4, 0u8..3, proptest::bool::ANY, proptest::bool::ANY, 0u8..3, proptest::bool::ANY), 0..40),
            allow_empty in proptest::bool::ANY,
            max_percent in 0u32..=100,
        ) {
            let kinds = [("", "ConfigMap"), ("", "Namespace"), ("apps", "Deployment"), ("", "PersistentVolumeClaim")];
            let mut live = Vec::new();
            let mut p = PrunePolicy { allow_empty, max_prune_percent: max_percent, ..policy() };
            let mut desired_ids = Vec::new();
            for (i, (kind, label, owned, pinned, claim, desired)) in objects.iter().enumerate() {
                let (group, kind) = kinds[*kind as usize];
                let o = Member {
                    id: id(group, kind, if kind == "Namespace" { "" } else { "apps" }, &format!("o{i}")),
                    uid: format!("u{i}"),
                    resource_version: "1".into(),
                    part_of: [Some("set-a"), Some("set-b"), None][*label as usize].map(String::from),
                    prune_disabled: *pinned,
                    owned: *owned,
                    plural: kind.to_lowercase(),
                };
                match claim {
                    1 => { p.claims.insert(o.id.clone(), "set-b".into()); }
                    2 => { p.claims.insert(o.id.clone(), "set-a".into()); }
                    _ => {}
                }
                if *desired {
                    desired_ids.push(o.id.clone());
                }
                live.push(o);
            }
            let desired: HashSet<&ObjectRef> = desired_ids.iter().collect();
            let plan = plan_prune(&live, &desired, &p);
            for o in live.iter().filter(|o| !desired.contains(&o.id)) {
                let fates = plan.delete.iter().filter(|d| d.id == o.id).count()
                    + plan.handover.iter().filter(|(h, _)| h.id == o.id).count()
                    + plan.kept.iter().filter(|(k, _)| *k == o.id).count();
                // a held prune clears the deletions: those objects then have no fate at all
                proptest::prop_assert!(fates == 1 || (plan.held.is_some() && fates == 0), "{} has {fates} fates", o.id);
            }
            for d in &plan.delete {
                proptest::prop_assert!(!desired.contains(&d.id));
                proptest::prop_assert_eq!(d.part_of.as_deref(), Some("set-a"));
                proptest::prop_assert!(d.owned && !d.prune_disabled);
                proptest::prop_assert!(d.id.kind != "Namespace" && d.id.kind != "PersistentVolumeClaim");
                proptest::prop_assert!(p.claims.get(&d.id).is_none_or(|c| c != "set-b"), "a claimed member is handed over, never deleted");
            }
            if plan.held.is_some() {
                proptest::prop_assert!(plan.delete.is_empty());
            }
            let members = live.iter().filter(|o| o.part_of.as_deref() == Some("set-a")).count();
            proptest::prop_assert!(plan.delete.len() * 100 <= max_percent as usize * members.max(1) || plan.delete.is_empty());
        }
    }

    #[test]
    fn the_custom_resources_of_a_kept_crd_stay_with_it() {
        let crd = member(id("apiextensions.k8s.io", "CustomResourceDefinition", "", "gadgets.example.com"));
        let gadget = Member { plural: "gadgets".into(), ..member(id("example.com", "Gadget", "apps", "g")) };
        let other = Member { plural: "widgets".into(), ..member(id("example.com", "Widget", "apps", "w")) };
        let live = vec![crd.clone(), gadget.clone(), other];
        let lenient = PrunePolicy { allow_empty: true, max_prune_percent: 100, ..policy() };
        let plan = plan_prune(&live, &HashSet::new(), &lenient);
        assert_eq!(plan.delete.iter().map(|o| o.id.name.as_str()).collect::<Vec<_>>(), ["w"], "a CR of a CRD not in the set is pruned");
        assert!(plan.kept.contains(&(gadget.id.clone(), KeepReason::DefinitionKept)));
        assert!(plan.kept.contains(&(crd.id.clone(), KeepReason::ProtectedKind)));

        // prunable: the CRD goes, and its custom resources before it
        let mut prunable = lenient.clone();
        prunable.prunable.insert(GroupKind::new("apiextensions.k8s.io", "CustomResourceDefinition"));
        let plan = plan_prune(&live, &HashSet::new(), &prunable);
        let names: Vec<&str> = plan.delete.iter().map(|o| o.id.name.as_str()).collect();
        assert_eq!(names.len(), 3);
        assert_eq!(names.last(), Some(&"gadgets.example.com"), "the CRD last: {names:?}");
    }
}
