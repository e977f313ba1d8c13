//! The schedule of one reconcile, decided without I/O: when each object of a plan is checked
//! against the server (dry-run) and when it is applied.
//!
//! Every object is decided exactly once, and before it is applied:
//! - unchanged: its recorded desired hash matches git (incremental reconciles only); no dry-run;
//! - validated: dry-run in place before anything is written;
//! - checked before its definition group: an object that is itself a definition but needs an
//!   earlier one (a Role in a new Namespace) is dry-run right before its group is applied;
//! - deferred: dry-run once every definition is applied (a custom resource of a new CRD, a
//!   binding to a new Role, an object in a new Namespace).
//!
//! Definitions are what other objects of the revision cannot be dry-run without: new Namespaces
//! and CRDs, and new (Cluster)Roles that bindings of the revision name (the API server checks a
//! binding against its role). They are applied first, whatever their wave.
//!
//! An object that can only be dry-run after a definition exists is also *prechecked* before
//! anything is written, where that is possible: an object in a new Namespace is dry-run as a
//! create in a namespace that exists (the agent's own), which catches what the object itself gets
//! wrong (unknown fields, invalid values); whatever depends on the namespace is judged by the
//! deferred dry-run in place.

use std::collections::HashSet;

use super::{Plan, Planned};
use crate::manifest::ObjectRef;

/// When each object of a plan is decided and applied. Every list holds indices into
/// [`Plan::objects`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Unchanged since the last apply: decided without a dry-run.
    pub unchanged: Vec<usize>,
    /// Dry-run in place before any write.
    pub validate: Vec<usize>,
    /// Dry-run as a create in an existing namespace before any write (objects in new namespaces);
    /// each is also decided later, in place.
    pub precheck: Vec<usize>,
    /// Applied first, group by group (wave, then tier, as in the plan).
    pub definitions: Vec<Group>,
    /// Dry-run once every definition is applied.
    pub deferred: Vec<usize>,
    /// Applied after the definitions, group by group (wave, then tier).
    pub rest: Vec<Group>,
}

/// Objects applied together: one wave and tier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    pub wave: i64,
    /// Dry-run right before this group is applied (members that needed an earlier definition).
    pub check_first: Vec<usize>,
    pub objects: Vec<usize>,
}

/// What a planned object needs to exist before it can be dry-run in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Its namespace, when this revision creates it.
    pub namespace: Option<ObjectRef>,
    /// Its kind is defined by a CRD of this revision that the server does not serve yet.
    pub crd: bool,
    /// The (Cluster)Role it binds, when this revision creates it.
    pub role: Option<ObjectRef>,
}

impl Needs {
    pub fn any(&self) -> bool {
        self.namespace.is_some() || self.crd || self.role.is_some()
    }
}

const RBAC: &str = "rbac.authorization.k8s.io";

/// The (Cluster)Role a (Cluster)RoleBinding names, if it is one.
pub fn role_of(binding: &Planned) -> Option<ObjectRef> {
    if binding.id.group != RBAC || !matches!(binding.id.kind.as_str(), "RoleBinding" | "ClusterRoleBinding") {
        return None;
    }
    let object = binding.value();
    let role_ref = object.get("roleRef")?;
    let kind = role_ref.get("kind")?.as_str()?;
    let name = role_ref.get("name")?.as_str()?;
    let namespace = match kind {
        // a RoleBinding may name a Role of its own namespace or a ClusterRole
        "Role" if binding.id.kind == "RoleBinding" => binding.id.namespace.clone(),
        "ClusterRole" => String::new(),
        _ => return None,
    };
    Some(ObjectRef::new(RBAC, kind, namespace, name))
}

/// What `p` needs before its dry-run, given which objects exist (`exists`).
pub fn needs(plan: &Plan, p: &Planned, exists: &dyn Fn(&ObjectRef) -> bool) -> Needs {
    let created = |id: &ObjectRef| plan.get(id).is_some() && !exists(id);
    let namespace =
        (!p.id.namespace.is_empty()).then(|| ObjectRef::new("", "Namespace", "", p.id.namespace.as_str())).filter(|ns| created(ns));
    let role = role_of(p).filter(|r| created(r));
    Needs { namespace, crd: p.needs_crd, role }
}

/// Builds the schedule of a plan. `exists` tells whether an object exists in the cluster now;
/// `unchanged` whether an object needs no dry-run (its recorded hash matches git).
pub fn build(plan: &Plan, exists: &dyn Fn(&ObjectRef) -> bool, unchanged: &dyn Fn(&Planned) -> bool) -> Schedule {
    let objects = plan.objects();
    let needs: Vec<Needs> = objects.iter().map(|p| needs(plan, p, exists)).collect();

    // definitions: new namespaces and CRDs, and the new roles bindings name
    let mut definition: HashSet<usize> = objects.iter().enumerate().filter(|(_, p)| p.tier == 0).map(|(i, _)| i).collect();
    for n in &needs {
        if let Some(i) = n.role.as_ref().and_then(|r| plan.index.get(r)) {
            definition.insert(*i);
        }
    }

    let mut s = Schedule::default();
    let mut checked_in_group: HashSet<usize> = HashSet::new();
    for (i, p) in objects.iter().enumerate() {
        let n = &needs[i];
        if unchanged(p) {
            s.unchanged.push(i);
        } else if !n.any() {
            s.validate.push(i);
        } else {
            if n.namespace.is_some() && !n.crd {
                s.precheck.push(i);
            }
            if definition.contains(&i) {
                checked_in_group.insert(i);
            } else {
                s.deferred.push(i);
            }
        }
    }

    // definitions by tier first: a Role of wave 0 still needs its Namespace of wave 1
    let mut in_order: Vec<usize> = definition.iter().copied().collect();
    in_order.sort_unstable_by_key(|&i| objects.get(i).map(|p| (p.tier, p.wave, i)));
    s.definitions = groups(objects, in_order, &checked_in_group);
    s.rest = groups(objects, (0..objects.len()).filter(|i| !definition.contains(i)).collect(), &HashSet::new());
    s
}

/// Consecutive objects (by plan order) of the same wave and tier.
fn groups(objects: &[Planned], indices: Vec<usize>, check_first: &HashSet<usize>) -> Vec<Group> {
    let mut out: Vec<(usize, Group)> = Vec::new();
    for i in indices {
        let Some(p) = objects.get(i) else { continue };
        let same = out.last().is_some_and(|(tier, g)| g.wave == p.wave && *tier == p.tier);
        if !same {
            out.push((p.tier, Group { wave: p.wave, ..Group::default() }));
        }
        if let Some((_, g)) = out.last_mut() {
            g.objects.push(i);
            if check_first.contains(&i) {
                g.check_first.push(i);
            }
        }
    }
    out.into_iter().map(|(_, g)| g).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{manifest, opts, rt};
    use crate::plan::{self, Catalog};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn catalog() -> Catalog {
        Catalog::new([
            rt("", "v1", "Namespace", "namespaces", false),
            rt("", "v1", "ConfigMap", "configmaps", true),
            rt("", "v1", "Service", "services", true),
            rt("apps", "v1", "Deployment", "deployments", true),
            rt("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false),
            rt(RBAC, "v1", "Role", "roles", true),
            rt(RBAC, "v1", "RoleBinding", "rolebindings", true),
            rt(RBAC, "v1", "ClusterRole", "clusterroles", false),
            rt(RBAC, "v1", "ClusterRoleBinding", "clusterrolebindings", false),
        ])
    }

    fn crd(plural: &str) -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.example.com")},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": plural, "kind": format!("K{plural}"), "singular": plural},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}]}})
    }

    fn object(kind: &str, ns: &str, name: &str, wave: i64) -> Value {
        let api = match kind {
            "Deployment" => "apps/v1",
            "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding" => "rbac.authorization.k8s.io/v1",
            k if k.starts_with('K') => "example.com/v1",
            _ => "v1",
        };
        let mut o = json!({"apiVersion": api, "kind": kind, "metadata": {"name": name,
            "annotations": {"driftless.dev/wave": wave.to_string()}}});
        if !ns.is_empty() {
            o["metadata"]["namespace"] = json!(ns);
        }
        o
    }

    fn binding(kind: &str, ns: &str, name: &str, role_kind: &str, role: &str, wave: i64) -> Value {
        let mut o = object(kind, ns, name, wave);
        o["roleRef"] = json!({"apiGroup": RBAC, "kind": role_kind, "name": role});
        o["subjects"] = json!([]);
        o
    }

    /// Walks a schedule as the reconcile does and checks its promises: every object is decided
    /// once and before it is applied, and never dry-run in place before what it needs exists.
    fn check(plan: &Plan, s: &Schedule, exists: &dyn Fn(&ObjectRef) -> bool) -> Result<(), String> {
        let objects = plan.objects();
        let mut decided = vec![0u32; objects.len()];
        let mut applied: HashSet<ObjectRef> = HashSet::new();
        let present = |id: &ObjectRef, applied: &HashSet<ObjectRef>| exists(id) || applied.contains(id);
        let dry_run = |i: usize, applied: &HashSet<ObjectRef>, decided: &mut Vec<u32>| -> Result<(), String> {
            let p = objects.get(i).ok_or("index out of the plan")?;
            let n = needs(plan, p, exists);
            if n.namespace.as_ref().is_some_and(|ns| !present(ns, applied)) || n.role.as_ref().is_some_and(|r| !present(r, applied)) {
                return Err(format!("{} dry-run before what it needs exists", p.id));
            }
            if n.crd && !applied.iter().any(|a| a.kind == "CustomResourceDefinition") {
                return Err(format!("{} dry-run before its CRD", p.id));
            }
            decided[i] += 1;
            Ok(())
        };
        for &i in &s.unchanged {
            decided[i] += 1;
        }
        for &i in &s.validate {
            dry_run(i, &applied, &mut decided)?;
        }
        for &i in &s.precheck {
            let p = &objects[i];
            if p.needs_crd || p.id.namespace.is_empty() {
                return Err(format!("{} prechecked but a surrogate cannot judge it", p.id));
            }
        }
        let apply = |g: &Group, applied: &mut HashSet<ObjectRef>, decided: &[u32]| -> Result<(), String> {
            for &i in &g.objects {
                if decided[i] != 1 {
                    return Err(format!("{} applied after {} decisions", objects[i].id, decided[i]));
                }
                if !applied.insert(objects[i].id.clone()) {
                    return Err(format!("{} applied twice", objects[i].id));
                }
            }
            Ok(())
        };
        for g in &s.definitions {
            for &i in &g.check_first {
                dry_run(i, &applied, &mut decided)?;
            }
            apply(g, &mut applied, &decided)?;
        }
        for &i in &s.deferred {
            dry_run(i, &applied, &mut decided)?;
        }
        for g in &s.rest {
            if !g.check_first.is_empty() {
                return Err("a group after the definitions checks its members late".into());
            }
            apply(g, &mut applied, &decided)?;
        }
        if applied.len() != objects.len() {
            return Err(format!("{} of {} objects applied", applied.len(), objects.len()));
        }
        // waves never run backwards after the definitions
        let waves: Vec<i64> = s.rest.iter().map(|g| g.wave).collect();
        if waves.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("waves out of order: {waves:?}"));
        }
        Ok(())
    }

    #[test]
    fn a_role_and_binding_in_a_new_namespace_are_each_decided_once_in_order() {
        // the revision that panicked: Namespace + Role in it + RoleBinding to it
        let plan = plan::build(
            vec![
                manifest("ns.yaml", object("Namespace", "", "app", 0)),
                manifest("role.yaml", object("Role", "app", "reader", 0)),
                manifest("rb.yaml", binding("RoleBinding", "app", "reader", "Role", "reader", 0)),
                manifest("cm.yaml", object("ConfigMap", "app", "c", 0)),
            ],
            &catalog(),
            &opts(),
        )
        .unwrap();
        let s = build(&plan, &|_| false, &|_| false);
        check(&plan, &s, &|_| false).unwrap();
        let kinds = |indices: &mut dyn Iterator<Item = &usize>| {
            let mut k: Vec<String> = indices.map(|i| plan.objects()[*i].id.kind.clone()).collect();
            k.sort();
            k
        };
        assert_eq!(kinds(&mut s.validate.iter()), ["Namespace"]);
        assert_eq!(kinds(&mut s.definitions.iter().flat_map(|g| &g.check_first)), ["Role"]);
        assert_eq!(kinds(&mut s.deferred.iter()), ["ConfigMap", "RoleBinding"]);
        assert_eq!(kinds(&mut s.precheck.iter()), ["ConfigMap", "Role", "RoleBinding"]);

        // second commit: everything exists, nothing waits
        let s = build(&plan, &|_| true, &|_| false);
        check(&plan, &s, &|_| true).unwrap();
        assert_eq!(s.validate.len(), 4);
        assert!(s.deferred.is_empty() && s.precheck.is_empty());
    }

    #[test]
    fn a_cluster_role_binding_to_a_role_that_is_not_in_git_is_validated_at_once() {
        let plan =
            plan::build(vec![manifest("b.yaml", binding("ClusterRoleBinding", "", "view", "ClusterRole", "view", 0))], &catalog(), &opts())
                .unwrap();
        let s = build(&plan, &|_| false, &|_| false);
        assert_eq!(s.validate, [0]);
        assert_eq!(s.definitions, []);
    }

    /// One generated object: kind, namespace choice, name, wave, role choice.
    fn arb_object() -> impl Strategy<Value = (u8, u8, u8, i64, u8)> {
        (0u8..9, 0u8..3, 0u8..3, -1i64..2, 0u8..3)
    }

    fn revision(spec: &[(u8, u8, u8, i64, u8)]) -> Vec<crate::manifest::Manifest> {
        let ns = |n: u8| format!("ns{n}");
        let mut docs = Vec::new();
        for (k, (kind, n, name, wave, role)) in spec.iter().enumerate() {
            let name = format!("o{name}");
            let doc = match kind {
                0 => object("Namespace", "", &ns(*n), *wave),
                1 => object("ConfigMap", &ns(*n), &name, *wave),
                2 => object("Deployment", &ns(*n), &name, *wave),
                3 => object("Role", &ns(*n), &format!("r{role}"), *wave),
                4 => binding("RoleBinding", &ns(*n), &name, if role % 2 == 0 { "Role" } else { "ClusterRole" }, &format!("r{role}"), *wave),
                5 => object("ClusterRole", "", &format!("r{role}"), *wave),
                6 => binding("ClusterRoleBinding", "", &name, "ClusterRole", &format!("r{role}"), *wave),
                7 => crd(&format!("w{n}")),
                _ => object(&format!("Kw{n}"), &ns(*n), &name, *wave),
            };
            docs.push(manifest(&format!("f{k}.yaml"), doc));
        }
        docs
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn every_object_is_decided_once_before_it_is_applied_and_never_too_early(
            spec in proptest::collection::vec(arb_object(), 0..24),
            live_mask in any::<u64>(),
            unchanged_mask in any::<u64>(),
            incremental in any::<bool>(),
        ) {
            // duplicates are a plan error, not a schedule question: keep the first of each
            let Ok(plan) = plan::build(revision(&spec), &catalog(), &opts()) else { return Ok(()) };
            let ids: Vec<ObjectRef> = plan.objects().iter().map(|p| p.id.clone()).collect();
            let bit = |mask: u64, id: &ObjectRef| ids.iter().position(|x| x == id).is_some_and(|i| mask & (1 << (i % 64)) != 0);
            // a custom resource of a CRD the server does not serve cannot exist yet
            let exists = |id: &ObjectRef| bit(live_mask, id) && !plan.get(id).is_some_and(|p| p.needs_crd);
            let unchanged = |p: &Planned| incremental && exists(&p.id) && bit(unchanged_mask, &p.id);
            let s = build(&plan, &exists, &unchanged);
            prop_assert_eq!(check(&plan, &s, &exists), Ok(()));
        }
    }
}
