//! Plan: decisions without I/O. Given the rendered objects and what discovery knows about the
//! server's kinds, decide each object's resource and namespace, its apply order (wave, tier,
//! kind), its desired hash, and the labels that make it a member of the source's ApplySet.
//! [`prune`] decides, from the live members, what may be deleted.

pub mod hash;
pub mod order;
pub mod ownership;
pub mod prune;
pub mod schedule;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::keys;
use crate::manifest::{GroupKind, Manifest, ObjectRef, Origin, ResourceType};

/// What the API server serves, as discovery found it: one entry per group, version and kind.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    types: HashMap<(String, String, String), Arc<ResourceType>>,
}

impl Catalog {
    pub fn new(types: impl IntoIterator<Item = ResourceType>) -> Self {
        let types = types.into_iter().map(|t| ((t.group.clone(), t.version.clone(), t.kind.clone()), Arc::new(t))).collect();
        Self { types }
    }

    pub fn resolve(&self, group: &str, version: &str, kind: &str) -> Option<&Arc<ResourceType>> {
        self.types.get(&(group.to_string(), version.to_string(), kind.to_string()))
    }

    /// Whether any version of the group and kind is served.
    pub fn knows_kind(&self, group: &str, kind: &str) -> bool {
        self.types.values().any(|t| t.group == group && t.kind == kind)
    }

    /// The most stable served version of a group-kind (for reading live objects of an
    /// inventory): GA before beta before alpha, higher numbers first, as Kubernetes orders them.
    pub fn preferred(&self, gk: &GroupKind) -> Option<&Arc<ResourceType>> {
        self.types.values().filter(|t| t.group == gk.group && t.kind == gk.kind).max_by_key(|t| version_priority(&t.version))
    }

    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

/// Kubernetes version priority: `v2` > `v1` > `v2beta1` > `v1beta2` > `v1alpha1` > anything else.
pub fn version_priority(version: &str) -> (u8, u32, u32) {
    let Some(rest) = version.strip_prefix('v') else { return (0, 0, 0) };
    fn digits(s: &str) -> Option<(u32, &str)> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok().map(|n| (n, &s[end..]))
    }
    let Some((major, tail)) = digits(rest) else { return (0, 0, 0) };
    let (stability, tail) = match tail {
        "" => return (3, major, 0),
        t if t.starts_with("beta") => (2, &t[4..]),
        t if t.starts_with("alpha") => (1, &t[5..]),
        _ => return (0, 0, 0),
    };
    match digits(tail) {
        Some((minor, "")) => (stability, major, minor),
        _ => (0, 0, 0),
    }
}

/// Settings of one plan.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Given to namespaced objects that have none.
    pub default_namespace: String,
    /// The ApplySet id every member is labelled with.
    pub applyset_id: String,
    /// The source's name, recorded on each object.
    pub source: String,
}

/// One object as it will be applied.
#[derive(Clone, Debug)]
pub struct Planned {
    pub id: ObjectRef,
    /// Shared with every object of its kind.
    pub resource: Arc<ResourceType>,
    /// The object to apply (namespace set, ApplySet label and desired hash added), kept as
    /// compact JSON text: a plan lives as long as its source, and a parsed object takes several
    /// times the memory of its text.
    pub object: Box<RawValue>,
    pub hash: String,
    pub origin: Origin,
    pub wave: i64,
    pub tier: usize,
    /// Annotated `driftless.dev/recreate: "true"`.
    pub recreate: bool,
    /// Its kind is defined by a CRD of this same revision that the server does not serve yet.
    pub needs_crd: bool,
}

impl Planned {
    /// The object to apply, parsed.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.object.get()).unwrap_or(Value::Null)
    }
}

/// All objects of a revision in apply order: by wave, then tier, then kind, namespace and name.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    objects: Vec<Planned>,
    /// Where each object is in `objects` (a plan is never changed once built).
    index: HashMap<ObjectRef, usize>,
}

impl Plan {
    fn new(objects: Vec<Planned>) -> Self {
        let index = objects.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect();
        Plan { objects, index }
    }
    /// The objects in apply order.
    pub fn objects(&self) -> &[Planned] {
        &self.objects
    }
    pub fn group_kinds(&self) -> BTreeSet<GroupKind> {
        self.objects.iter().map(|p| p.id.group_kind()).collect()
    }
    /// Namespaces the members live in.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.objects.iter().filter(|p| !p.id.namespace.is_empty()).map(|p| p.id.namespace.clone()).collect()
    }
    pub fn get(&self, id: &ObjectRef) -> Option<&Planned> {
        self.index.get(id).map(|&i| &self.objects[i])
    }
}

/// Every reason a revision could not be planned; each names the file, line and object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PlanError {
    pub problems: Vec<String>,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&first_problems(&self.problems))
    }
}

/// How many problems one message names (the rest are counted): a message stays one readable
/// line, and fits an annotation, however broken a revision is.
pub const MESSAGE_PROBLEMS: usize = 10;

/// The first [`MESSAGE_PROBLEMS`] problems, and how many more there are.
pub fn first_problems(problems: &[String]) -> String {
    let mut text = problems.iter().take(MESSAGE_PROBLEMS).cloned().collect::<Vec<_>>().join("; ");
    if problems.len() > MESSAGE_PROBLEMS {
        text.push_str(&format!("; and {} more", problems.len() - MESSAGE_PROBLEMS));
    }
    text
}

/// Builds the plan of one revision.
pub fn build(manifests: Vec<Manifest>, catalog: &Catalog, opts: &PlanOptions) -> Result<Plan, PlanError> {
    let revision_crds: Vec<Arc<ResourceType>> = crd_types(&manifests).into_iter().map(Arc::new).collect();
    let mut problems = Vec::new();
    let mut seen: HashMap<ObjectRef, Origin> = HashMap::new();
    let mut objects = Vec::with_capacity(manifests.len());

    for m in manifests {
        let (group, version) = m.group_version();
        let (group, version, kind) = (group.to_string(), version.to_string(), m.kind().to_string());
        let name = m.name().to_string();
        let label = format!("{}: {kind} {}", m.origin, m.name());
        let (resource, needs_crd) = match catalog.resolve(&group, &version, &kind) {
            Some(t) => (t.clone(), false),
            None => match revision_crds.iter().find(|t| t.group == group && t.version == version && t.kind == kind) {
                Some(t) => (t.clone(), true),
                None => {
                    problems.push(format!("{label}: {}", unserved(catalog, &revision_crds, m.api_version(), &group, &kind)));
                    continue;
                }
            },
        };

        let wave = match m.annotation(keys::WAVE) {
            None => 0,
            Some(w) => match w.trim().parse::<i64>() {
                Ok(w) => w,
                Err(_) => {
                    problems.push(format!("{label}: annotation {} must be an integer, got {w:?}", keys::WAVE));
                    continue;
                }
            },
        };
        let recreate = m.annotation(keys::RECREATE) == Some("true");

        let namespace = if resource.namespaced { m.namespace().unwrap_or(&opts.default_namespace).to_string() } else { String::new() };
        let mut object = m.value();
        let origin = m.origin;
        if resource.namespaced {
            object["metadata"]["namespace"] = json!(namespace);
        } else if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("namespace");
        }
        if group.is_empty() && kind == "Secret" {
            string_data_to_data(&mut object);
        }
        let id = ObjectRef::new(group.clone(), kind.clone(), namespace, name);

        if let Some(first) = seen.get(&id) {
            problems.push(format!("{origin}: {id} is defined twice: in {first} and in {origin}"));
            continue;
        }
        seen.insert(id.clone(), origin.clone());

        let hash = hash::desired_hash(&object);
        decorate(&mut object, opts, &hash);
        let object = match serde_json::value::to_raw_value(&object) {
            Ok(raw) => raw,
            Err(e) => {
                problems.push(format!("{label}: cannot be written as JSON: {e}"));
                continue;
            }
        };
        objects.push(Planned { tier: order::tier_of(&group, &kind), id, resource, object, hash, origin, wave, recreate, needs_crd });
    }

    if !problems.is_empty() {
        return Err(PlanError { problems });
    }
    objects.sort_by(|a, b| {
        (a.wave, a.tier, order::rank_in_tier(&a.id.kind), &a.id.kind, &a.id.group, &a.id.namespace, &a.id.name).cmp(&(
            b.wave,
            b.tier,
            order::rank_in_tier(&b.id.kind),
            &b.id.kind,
            &b.id.group,
            &b.id.namespace,
            &b.id.name,
        ))
    });
    Ok(Plan::new(objects))
}

/// Why an object's apiVersion and kind cannot be planned: the versions the cluster (or a CRD of
/// the revision) serves for the kind in its group, or else in other groups (`extensions/v1beta1`
/// Ingress is `networking.k8s.io/v1` now), or that the kind is unknown.
fn unserved(catalog: &Catalog, revision_crds: &[Arc<ResourceType>], api_version: &str, group: &str, kind: &str) -> String {
    let served = |same_group: bool| {
        let mut types: Vec<&ResourceType> = catalog
            .types
            .values()
            .map(|t| t.as_ref())
            .chain(revision_crds.iter().map(|t| t.as_ref()))
            .filter(|t| t.kind == kind && (t.group == group) == same_group)
            .collect();
        types.sort_by(|a, b| {
            (&a.group, std::cmp::Reverse(version_priority(&a.version)), &a.version).cmp(&(
                &b.group,
                std::cmp::Reverse(version_priority(&b.version)),
                &b.version,
            ))
        });
        let mut versions: Vec<String> = types.iter().map(|t| t.api_version()).collect();
        versions.dedup();
        versions
    };
    let in_group = served(true);
    if !in_group.is_empty() {
        return format!("{api_version} is not served for {kind}; the cluster serves {}", in_group.join(", "));
    }
    let elsewhere = served(false);
    if !elsewhere.is_empty() {
        return format!("{api_version} is not served for {kind}; the cluster serves {kind} as {}", elsewhere.join(", "));
    }
    format!(
        "unknown kind {api_version} {kind}: the API server does not serve it and no CustomResourceDefinition in this revision defines it"
    )
}

/// Moves a Secret's `stringData` into `data` (base64), as the API server stores it. Applied as
/// `stringData`, Driftless would own fields the server never keeps, and a change to the stored
/// `data` key by someone else would not be seen as drift.
fn string_data_to_data(secret: &mut Value) {
    use base64::Engine;
    let Some(string_data) = secret.as_object_mut().and_then(|o| o.remove("stringData")) else { return };
    let Value::Object(entries) = string_data else { return };
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    for (key, value) in entries {
        if let Some(text) = value.as_str() {
            secret["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

/// Adds the ApplySet membership label, the desired hash and the source name.
fn decorate(object: &mut Value, opts: &PlanOptions, hash: &str) {
    let meta = &mut object["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"][keys::APPLYSET_PART_OF] = json!(opts.applyset_id);
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][keys::DESIRED_HASH] = json!(hash);
    meta["annotations"][keys::SOURCE] = json!(opts.source);
}

/// The kinds defined by CRDs of the revision (served versions only).
pub fn crd_types(manifests: &[Manifest]) -> Vec<ResourceType> {
    let mut out = Vec::new();
    for m in manifests.iter().filter(|m| m.kind() == "CustomResourceDefinition" && m.group_version().0 == "apiextensions.k8s.io") {
        let object = m.value();
        let spec = &object["spec"];
        let (Some(group), Some(kind), Some(plural)) =
            (spec["group"].as_str(), spec["names"]["kind"].as_str(), spec["names"]["plural"].as_str())
        else {
            continue;
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            if let Some(version) = v["name"].as_str() {
                out.push(ResourceType {
                    group: group.into(),
                    version: version.into(),
                    kind: kind.into(),
                    plural: plural.into(),
                    namespaced,
                });
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Builders for plan tests: a catalog of common kinds and manifests from JSON.
    use super::*;

    pub fn rt(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> ResourceType {
        ResourceType { group: group.into(), version: version.into(), kind: kind.into(), plural: plural.into(), namespaced }
    }

    pub fn catalog() -> Catalog {
        Catalog::new([
            rt("", "v1", "Namespace", "namespaces", false),
            rt("", "v1", "ConfigMap", "configmaps", true),
            rt("", "v1", "Secret", "secrets", true),
            rt("", "v1", "Service", "services", true),
            rt("", "v1", "ServiceAccount", "serviceaccounts", true),
            rt("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
            rt("apps", "v1", "Deployment", "deployments", true),
            rt("batch", "v1", "Job", "jobs", true),
            rt("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false),
            rt("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false),
            rt("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", false),
        ])
    }

    pub fn manifest(file: &str, object: Value) -> Manifest {
        Manifest::new(&object, Origin { file: file.into(), line: 1, doc: 0 })
    }

    pub fn opts() -> PlanOptions {
        PlanOptions { default_namespace: "apps".into(), applyset_id: "applyset-test-v1".into(), source: "demo".into() }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn cm(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
    }

    #[test]
    fn objects_are_ordered_by_stage_then_kind_then_name() {
        let ms = vec![
            manifest("web.yaml", json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}})),
            manifest("svc.yaml", json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}})),
            manifest("cm.yaml", cm("b")),
            manifest("cm.yaml", cm("a")),
            manifest("ns.yaml", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}})),
            manifest(
                "hook.yaml",
                json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "h"}}),
            ),
            manifest("sa.yaml", json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}})),
        ];
        let plan = build(ms, &catalog(), &opts()).unwrap();
        let order: Vec<String> = plan.objects().iter().map(|p| format!("{}/{}", p.id.kind, p.id.name)).collect();
        assert_eq!(
            order,
            [
                "Namespace/apps",
                "ServiceAccount/sa",
                "ConfigMap/a",
                "ConfigMap/b",
                "Service/web",
                "Deployment/web",
                "ValidatingWebhookConfiguration/h"
            ]
        );
    }

    #[test]
    fn waves_come_before_stages() {
        let mut late_ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "late"}});
        late_ns["metadata"]["annotations"] = json!({keys::WAVE: "1"});
        let ms = vec![manifest("a.yaml", late_ns), manifest("b.yaml", cm("early"))];
        let plan = build(ms, &catalog(), &opts()).unwrap();
        assert_eq!(plan.objects()[0].id.name, "early");
        assert_eq!(plan.objects()[1].wave, 1);
    }

    #[test]
    fn a_bad_wave_is_an_error_naming_the_file() {
        let mut o = cm("a");
        o["metadata"]["annotations"] = json!({keys::WAVE: "soon"});
        let err = build(vec![manifest("w.yaml", o)], &catalog(), &opts()).unwrap_err();
        assert!(err.problems[0].contains("w.yaml:1") && err.problems[0].contains("integer"), "{err}");
    }

    #[test]
    fn namespaces_are_defaulted_for_namespaced_kinds_and_dropped_for_cluster_kinds() {
        let cr = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r", "namespace": "x"}});
        let plan = build(vec![manifest("a.yaml", cm("a")), manifest("r.yaml", cr)], &catalog(), &opts()).unwrap();
        let cm = plan.objects().iter().find(|p| p.id.kind == "ConfigMap").unwrap();
        assert_eq!(cm.id.namespace, "apps");
        assert_eq!(cm.value()["metadata"]["namespace"], "apps");
        let role = plan.objects().iter().find(|p| p.id.kind == "ClusterRole").unwrap();
        assert_eq!(role.id.namespace, "");
        assert!(role.value()["metadata"].get("namespace").is_none());
    }

    #[test]
    fn members_carry_the_applyset_label_and_hash() {
        let plan = build(vec![manifest("a.yaml", cm("a"))], &catalog(), &opts()).unwrap();
        let p = &plan.objects()[0];
        assert_eq!(p.value()["metadata"]["labels"][keys::APPLYSET_PART_OF], "applyset-test-v1");
        assert_eq!(p.value()["metadata"]["annotations"][keys::DESIRED_HASH], p.hash.as_str());
        assert_eq!(hash::desired_hash(&p.value()), p.hash, "decorating must not change the hash");
    }

    #[test]
    fn the_same_object_twice_names_both_files() {
        let mut explicit = cm("a");
        explicit["metadata"]["namespace"] = json!("apps");
        let err = build(vec![manifest("one.yaml", cm("a")), manifest("two.yaml", explicit)], &catalog(), &opts()).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems, ["two.yaml:1: ConfigMap apps/a is defined twice: in one.yaml:1 and in two.yaml:1"]);
    }

    #[test]
    fn same_name_in_different_namespaces_is_fine() {
        let mut other = cm("a");
        other["metadata"]["namespace"] = json!("other");
        let plan = build(vec![manifest("one.yaml", cm("a")), manifest("two.yaml", other)], &catalog(), &opts()).unwrap();
        assert_eq!(plan.objects().len(), 2);
        assert_eq!(plan.namespaces().into_iter().collect::<Vec<_>>(), ["apps", "other"]);
    }

    #[test]
    fn an_unknown_kind_fails_naming_the_object() {
        let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
        let err = build(vec![manifest("w.yaml", w)], &catalog(), &opts()).unwrap_err();
        assert_eq!(
            err.problems,
            ["w.yaml:1: Widget w: unknown kind example.com/v1 Widget: the API server does not serve it and no \
              CustomResourceDefinition in this revision defines it"]
        );
    }

    #[test]
    fn an_unserved_version_is_reported_as_such() {
        let d = json!({"apiVersion": "apps/v1beta1", "kind": "Deployment", "metadata": {"name": "d"}});
        let err = build(vec![manifest("d.yaml", d)], &catalog(), &opts()).unwrap_err();
        assert_eq!(err.problems, ["d.yaml:1: Deployment d: apps/v1beta1 is not served for Deployment; the cluster serves apps/v1"]);
    }

    /// Seed 004's rbac-config.yaml: Tiller's ServiceAccount and a ClusterRoleBinding of the
    /// removed rbac.authorization.k8s.io/v1beta1.
    const TILLER_RBAC: &str = "apiVersion: v1
kind: ServiceAccount
metadata:
  name: tiller
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1beta1
kind: ClusterRoleBinding
metadata:
  name: tiller
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
  - kind: ServiceAccount
    name: tiller
    namespace: kube-system
";

    #[test]
    fn a_removed_api_version_names_the_file_line_object_and_the_served_version() {
        let files = [crate::manifest::SourceFile { path: "rbac-config.yaml".into(), content: TILLER_RBAC.into() }];
        let manifests = crate::render::render(&files, &crate::render::Limits::default()).unwrap();
        let cat = Catalog::new([
            rt("", "v1", "ServiceAccount", "serviceaccounts", true),
            rt("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false),
            rt("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false),
        ]);
        let err = build(manifests, &cat, &opts()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rbac-config.yaml:7: ClusterRoleBinding tiller: rbac.authorization.k8s.io/v1beta1 is not served for \
             ClusterRoleBinding; the cluster serves rbac.authorization.k8s.io/v1"
        );
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn every_served_version_is_listed_most_stable_first() {
        let cat = Catalog::new([
            rt("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true),
            rt("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true),
        ]);
        let hpa = json!({"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"}});
        let err = build(vec![manifest("hpa.yaml", hpa)], &cat, &opts()).unwrap_err();
        assert_eq!(
            err.problems,
            ["hpa.yaml:1: HorizontalPodAutoscaler web: autoscaling/v2beta2 is not served for HorizontalPodAutoscaler; \
              the cluster serves autoscaling/v2, autoscaling/v1"]
        );
    }

    #[test]
    fn a_kind_that_moved_group_names_where_it_is_served_now() {
        let cat = Catalog::new([
            rt("networking.k8s.io", "v1", "Ingress", "ingresses", true),
            rt("apps", "v1", "Deployment", "deployments", true),
        ]);
        let ingress = json!({"apiVersion": "extensions/v1beta1", "kind": "Ingress", "metadata": {"name": "web"}});
        let err = build(vec![manifest("ingress.yaml", ingress)], &cat, &opts()).unwrap_err();
        assert_eq!(
            err.problems,
            ["ingress.yaml:1: Ingress web: extensions/v1beta1 is not served for Ingress; the cluster serves Ingress as networking.k8s.io/v1"]
        );
    }

    #[test]
    fn a_version_a_crd_of_the_revision_does_not_serve_names_the_ones_it_does() {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced", "names": {"kind": "Widget", "plural": "widgets"},
                     "versions": [{"name": "v1", "served": true, "storage": true}, {"name": "v1alpha1", "served": false}]}});
        let w = json!({"apiVersion": "example.com/v1alpha1", "kind": "Widget", "metadata": {"name": "w"}});
        let err = build(vec![manifest("crd.yaml", crd), manifest("w.yaml", w)], &catalog(), &opts()).unwrap_err();
        assert_eq!(err.problems, ["w.yaml:1: Widget w: example.com/v1alpha1 is not served for Widget; the cluster serves example.com/v1"]);
    }

    #[test]
    fn a_kind_defined_by_a_crd_in_the_revision_is_planned_after_it() {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced", "names": {"kind": "Widget", "plural": "widgets"},
                     "versions": [{"name": "v1", "served": true, "storage": true}]}});
        let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
        let plan = build(vec![manifest("w.yaml", w), manifest("crd.yaml", crd)], &catalog(), &opts()).unwrap();
        assert_eq!(plan.objects()[0].id.kind, "CustomResourceDefinition");
        let widget = &plan.objects()[1];
        assert!(widget.needs_crd);
        assert_eq!(widget.resource.plural, "widgets");
        assert_eq!(widget.id.namespace, "apps");
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let a = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
        let b = json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}});
        let err = build(vec![manifest("a.yaml", a), manifest("b.yaml", b)], &catalog(), &opts()).unwrap_err();
        assert_eq!(err.problems.len(), 2);
    }

    #[test]
    fn versions_are_ordered_as_kubernetes_orders_them() {
        let mut v = vec!["v1alpha1", "v1", "foo", "v2beta1", "v1beta2", "v2", "v11alpha2", "v10"];
        v.sort_by_key(|s| std::cmp::Reverse(version_priority(s)));
        assert_eq!(v, ["v10", "v2", "v1", "v2beta1", "v1beta2", "v11alpha2", "v1alpha1", "foo"]);
        let cat = Catalog::new([
            rt("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true),
            rt("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true),
        ]);
        assert_eq!(cat.preferred(&GroupKind::new("autoscaling", "HorizontalPodAutoscaler")).unwrap().version, "v2");
    }

    #[test]
    fn secret_string_data_is_applied_as_data() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"kept": "a2VwdA=="}, "stringData": {"password": "hunter2", "kept": "override"}});
        let plan = build(vec![manifest("s.yaml", secret)], &catalog(), &opts()).unwrap();
        let o = plan.objects()[0].value();
        assert!(o.get("stringData").is_none());
        assert_eq!(o["data"]["password"], "aHVudGVyMg==");
        assert_eq!(o["data"]["kept"], "b3ZlcnJpZGU=", "stringData wins over data, as on the server");
        let same = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"kept": "b3ZlcnJpZGU=", "password": "aHVudGVyMg=="}});
        let plan2 = build(vec![manifest("s.yaml", same)], &catalog(), &opts()).unwrap();
        assert_eq!(plan.objects()[0].hash, plan2.objects()[0].hash, "the same stored Secret has the same hash");
    }

    #[test]
    fn recreate_is_read_from_the_annotation() {
        let mut job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"}});
        job["metadata"]["annotations"] = json!({keys::RECREATE: "true"});
        let plan = build(vec![manifest("j.yaml", job), manifest("c.yaml", cm("c"))], &catalog(), &opts()).unwrap();
        assert!(plan.objects().iter().find(|p| p.id.kind == "Job").unwrap().recreate);
        assert!(!plan.objects().iter().find(|p| p.id.kind == "ConfigMap").unwrap().recreate);
    }

    #[test]
    fn a_message_names_the_first_problems_and_counts_the_rest() {
        let many: Vec<String> = (0..25).map(|i| format!("p{i}")).collect();
        let text = first_problems(&many);
        assert!(text.starts_with("p0; p1") && text.contains("p9; and 15 more") && !text.contains("p10"), "{text}");
        assert_eq!(first_problems(&many[..2]), "p0; p1");
    }
}
