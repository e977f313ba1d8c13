//! What a sync of one revision would do, written nowhere (`driftless plan`): for each desired
//! object the action and the diff of what Driftless would own, the prune set, the wave order and
//! the revision's problems. [`compare`] finds them with reads and server-side dry-runs only; the
//! rest is pure: the result ([`Preview`]), the diff of one object ([`diff::object_diff`], Secret
//! values redacted) and the result as a table or a pull-request comment ([`output`]); JSON is
//! the serialized [`Preview`].

use serde::Serialize;

use crate::manifest::ObjectRef;

pub mod compare;
pub mod diff;
pub mod output;

/// What a sync of one revision would do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    pub source: String,
    pub commit: String,
    /// What rendered the revision: `plain`, `kustomize v5.8.2`, `helm v3.22.0`.
    pub renderer: String,
    /// Every desired object, in apply order.
    pub objects: Vec<ObjectPlan>,
    pub prunes: Vec<PrunePlan>,
    /// Why the whole prune would be held (a safeguard tripped), if it would: then no prune of
    /// [`Preview::prunes`] happens.
    pub held: Option<String>,
    pub waves: Vec<Wave>,
    /// Revision-level failures (a render error, a rejected plan): non-empty, the revision fails.
    pub problems: Vec<String>,
}

/// What a sync would do to one desired object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectPlan {
    pub object: ObjectRef,
    pub wave: i64,
    pub action: PlanAction,
    /// The unified diff of what Driftless would own, live to git (see [`diff::object_diff`]).
    pub diff: Option<String>,
    /// Why (the dry-run's error of an invalid object, an immutable field of a recreate), or empty.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanAction {
    Create,
    Update,
    /// Deleted and created again: an immutable field changed and the object allows it.
    Recreate,
    Unchanged,
    /// The dry-run rejected it: the revision would fail.
    Invalid,
}

impl PlanAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanAction::Create => "create",
            PlanAction::Update => "update",
            PlanAction::Recreate => "recreate",
            PlanAction::Unchanged => "unchanged",
            PlanAction::Invalid => "invalid",
        }
    }
}

/// A live member of the set that the revision no longer declares.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrunePlan {
    pub object: ObjectRef,
    pub action: PruneAction,
    /// Why it is deleted or kept (`driftless.dev/prune: disabled`, not created by Driftless).
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneAction {
    Delete,
    Held,
}

impl PruneAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PruneAction::Delete => "delete",
            PruneAction::Held => "held",
        }
    }
}

/// One step of the apply order: the definitions (Namespaces, CRDs) first, then each wave.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Wave {
    pub wave: i64,
    pub definitions: bool,
    pub objects: Vec<ObjectRef>,
}

/// How many objects each action would touch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub create: usize,
    /// Updates and recreates.
    pub update: usize,
    pub unchanged: usize,
    pub invalid: usize,
    /// Deletes that would happen (none while the prune is held).
    pub prune: usize,
    /// Prunes that would not happen: each held entry, or every prune while the prune is held.
    pub held: usize,
}

impl Preview {
    /// How many objects each action would touch.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        // the desired objects, by action
        for o in &self.objects {
            match o.action {
                PlanAction::Create => c.create += 1,
                PlanAction::Update | PlanAction::Recreate => c.update += 1,
                PlanAction::Unchanged => c.unchanged += 1,
                PlanAction::Invalid => c.invalid += 1,
            }
        }
        // the prunes: all held when the prune is held as a whole
        for p in &self.prunes {
            match (p.action, self.held.is_some()) {
                (PruneAction::Delete, false) => c.prune += 1,
                _ => c.held += 1,
            }
        }
        c
    }

    /// The exit code of `driftless plan`: 3 when the revision would fail (a problem, an invalid
    /// object), 1 when a sync would change something or a prune is held, 0 when nothing would.
    pub fn exit_code(&self) -> u8 {
        let c = self.counts();
        if !self.problems.is_empty() || c.invalid > 0 {
            3
        } else if c.create + c.update + c.prune + c.held > 0 {
            1
        } else {
            0
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn object(kind: &str, namespace: &str, name: &str, action: PlanAction) -> ObjectPlan {
        let group = if kind == "Deployment" { "apps" } else { "" };
        ObjectPlan { object: ObjectRef::new(group, kind, namespace, name), wave: 0, action, diff: None, message: String::new() }
    }

    pub(crate) fn prune(name: &str, action: PruneAction) -> PrunePlan {
        PrunePlan { object: ObjectRef::new("", "ConfigMap", "shop", name), action, reason: "no longer in git".into() }
    }

    pub(crate) fn preview(objects: Vec<ObjectPlan>, prunes: Vec<PrunePlan>) -> Preview {
        Preview {
            source: "shop".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            renderer: "plain".into(),
            objects,
            prunes,
            held: None,
            waves: Vec::new(),
            problems: Vec::new(),
        }
    }

    #[test]
    fn counts_group_actions_and_a_held_prune_holds_every_delete() {
        let mut p = preview(
            vec![
                object("ConfigMap", "shop", "a", PlanAction::Create),
                object("Deployment", "shop", "b", PlanAction::Update),
                object("Job", "shop", "c", PlanAction::Recreate),
                object("Service", "shop", "d", PlanAction::Unchanged),
            ],
            vec![prune("old", PruneAction::Delete), prune("kept", PruneAction::Held)],
        );
        assert_eq!(p.counts(), Counts { create: 1, update: 2, unchanged: 1, invalid: 0, prune: 1, held: 1 });
        p.held = Some("would delete 2 of 3 objects".into());
        assert_eq!(p.counts(), Counts { create: 1, update: 2, unchanged: 1, invalid: 0, prune: 0, held: 2 });
    }

    #[test]
    fn exit_codes_fail_change_and_nothing() {
        let unchanged = preview(vec![object("Service", "shop", "d", PlanAction::Unchanged)], vec![]);
        assert_eq!(unchanged.exit_code(), 0);
        assert_eq!(preview(vec![], vec![]).exit_code(), 0);
        assert_eq!(preview(vec![object("ConfigMap", "shop", "a", PlanAction::Create)], vec![]).exit_code(), 1);
        assert_eq!(preview(vec![object("Job", "shop", "a", PlanAction::Recreate)], vec![]).exit_code(), 1);
        assert_eq!(preview(vec![], vec![prune("old", PruneAction::Delete)]).exit_code(), 1);
        assert_eq!(preview(vec![], vec![prune("kept", PruneAction::Held)]).exit_code(), 1);
        let invalid =
            preview(vec![object("ConfigMap", "shop", "a", PlanAction::Create), object("Job", "shop", "b", PlanAction::Invalid)], vec![]);
        assert_eq!(invalid.exit_code(), 3);
        let mut failed = unchanged.clone();
        failed.problems.push("render failed".into());
        assert_eq!(failed.exit_code(), 3);
    }

    #[test]
    fn json_is_camel_case_with_lowercase_actions() {
        let mut p = preview(vec![object("Deployment", "shop", "web", PlanAction::Update)], vec![prune("old", PruneAction::Held)]);
        p.waves.push(Wave { wave: 0, definitions: true, objects: vec![ObjectRef::new("", "Namespace", "", "shop")] });
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["objects"][0]["action"], "update");
        assert_eq!(
            v["objects"][0]["object"],
            serde_json::json!({"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "web"})
        );
        assert_eq!(v["prunes"][0]["action"], "held");
        assert_eq!(v["waves"][0]["definitions"], true);
        assert!(v.get("held").is_some() && v.get("problems").is_some());
    }
}
