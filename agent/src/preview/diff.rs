//! The diff of one object, live to git, as `kubectl diff` shows it. Pure.
//!
//! Only what Driftless would own is shown: the fields its field manager owns in the dry-run
//! result, on both sides, so what a controller or another manager writes is no difference (as
//! [`crate::apply::diff`] decides). A Secret's values never appear, nor any hash of them: each
//! becomes a word that says only whether it changed.

use serde_json::{Map, Value};
use similar::TextDiff;

use crate::apply::diff::owned_fields;
use crate::keys;
use crate::live::object;
use crate::manifest::ObjectRef;

/// The largest diff of one object shown, in bytes; the lines beyond are counted, not shown.
pub const MAX_DIFF_BYTES: usize = 64 * 1024;

/// Metadata beyond [`object::strip`]'s that is not desired state: set by the server, or written
/// by Driftless and kubectl for themselves.
const VOLATILE_METADATA: [&str; 2] = ["uid", "selfLink"];
const VOLATILE_ANNOTATIONS: [&str; 2] = ["kubectl.kubernetes.io/last-applied-configuration", keys::DESIRED_HASH];

/// What a Secret's values are shown as.
const UNCHANGED: &str = "(unchanged)";
const VALUE: &str = "(value)";
const CHANGED: &str = "(changed value)";

/// The unified diff from the live object (`None`: it would be created) to the dry-run result,
/// of what Driftless would own; `None` when they do not differ there.
///
/// What Driftless owns is its apply's `fieldsV1` in the dry-run result, together with the one in
/// the live object when `live` carries its managedFields (as the API returns it): then a field
/// git no longer declares, which the apply would remove, shows as removed. Without Driftless's
/// entry in the dry-run result the whole objects are compared.
pub fn object_diff(id: &ObjectRef, live: Option<&Value>, dry_run: &Value) -> Option<String> {
    diff_within(id, live, dry_run, MAX_DIFF_BYTES)
}

fn diff_within(id: &ObjectRef, live: Option<&Value>, dry_run: &Value, max_bytes: usize) -> Option<String> {
    // the fields Driftless would own and owns now, read before managedFields are stripped
    let owned = owned_fields(dry_run).map(|fields| match live.and_then(owned_fields) {
        Some(now) => union(fields, now),
        None => fields.clone(),
    });
    // both sides without status and volatile metadata, reduced to what Driftless would own
    let reduce = |o: &Value| {
        let mut o = o.clone();
        clean(&mut o);
        match &owned {
            Some(fields) => retain(&o, fields).unwrap_or_else(|| Value::Object(Map::new())),
            None => o,
        }
    };
    let mut git = reduce(dry_run);
    let mut live = live.map(reduce);
    if live.as_ref() == Some(&git) {
        return None;
    }
    // a Secret's values replaced by what they are, on both sides
    if id.group.is_empty() && id.kind == "Secret" {
        redact(live.as_mut(), &mut git);
    }
    // both sides as YAML (keys sorted: serde_json's maps are ordered), then the line diff
    let before = live.as_ref().map(yaml).unwrap_or_default();
    let after = yaml(&git);
    if before == after {
        return None;
    }
    let text = TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live {id}"), &format!("git {id}"))
        .to_string();
    Some(cap(text, max_bytes))
}

/// Drops status, volatile metadata and the annotations that are not desired state.
fn clean(o: &mut Value) {
    object::strip(o);
    let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    for key in VOLATILE_METADATA {
        meta.remove(key);
    }
    let empty = meta.get_mut("annotations").and_then(Value::as_object_mut).is_some_and(|a| {
        for key in VOLATILE_ANNOTATIONS {
            a.remove(key);
        }
        a.is_empty()
    });
    if empty {
        meta.remove("annotations");
    }
}

/// The part of `value` that a `fieldsV1` set names, in the value's own shape (unlike
/// [`crate::apply::diff`]'s projection, which is keyed by the set): `f:` fields of a mapping,
/// `k:` items of a list by key, `i:` by index, `v:` set members; an empty set is the whole
/// value. `None` when nothing named is there.
fn retain(value: &Value, fields: &Value) -> Option<Value> {
    let Some(fields) = fields.as_object().filter(|f| !f.is_empty()) else { return Some(value.clone()) };
    match value {
        // the named fields that are present, each reduced to what its set names
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, sub) in fields {
                let Some(name) = key.strip_prefix("f:") else { continue };
                if let Some(kept) = map.get(name).and_then(|v| retain(v, sub)) {
                    out.insert(name.to_string(), kept);
                }
            }
            // a mapping owned only as itself ("."), or whose named fields are all absent
            (!out.is_empty() || fields.contains_key(".")).then_some(Value::Object(out))
        }
        // the named items, in the list's order
        Value::Array(items) => {
            let kept: Vec<Value> = items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let sub = fields.iter().find_map(|(key, sub)| item_named(key, i, item).then_some(sub))?;
                    retain(item, sub)
                })
                .collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        // a scalar where the set names parts: owned as a whole
        _ => Some(value.clone()),
    }
}

/// Two `fieldsV1` sets as one: what either names. A whole value (an empty set) on either side is
/// the whole value.
fn union(a: &Value, b: &Value) -> Value {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) if !x.is_empty() && !y.is_empty() => {
            let mut out = x.clone();
            for (key, sub) in y {
                let merged = match x.get(key) {
                    Some(mine) => union(mine, sub),
                    None => sub.clone(),
                };
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        _ => Value::Object(Map::new()),
    }
}

/// Whether a `fieldsV1` key names the list item at index `i`.
fn item_named(key: &str, i: usize, item: &Value) -> bool {
    if let Some(k) = key.strip_prefix("k:") {
        let wanted: Option<Map<String, Value>> = serde_json::from_str(k).ok();
        wanted.is_some_and(|w| w.iter().all(|(f, v)| item.get(f) == Some(v)))
    } else if let Some(v) = key.strip_prefix("v:") {
        serde_json::from_str::<Value>(v).is_ok_and(|m| m == *item)
    } else if let Some(n) = key.strip_prefix("i:") {
        n.parse::<usize>().is_ok_and(|n| n == i)
    } else {
        false
    }
}

/// Replaces each value of a Secret's `data` and `stringData`, on both sides: equal on both is
/// unchanged, different is a changed value, on one side only is a value. Nothing else of a
/// value survives, not even its length.
fn redact(live: Option<&mut Value>, git: &mut Value) {
    let mut live = live;
    for field in ["data", "stringData"] {
        let before = live.as_deref_mut().and_then(|o| o.get_mut(field));
        let after = git.get_mut(field);
        match (before, after) {
            (Some(Value::Object(b)), Some(Value::Object(a))) => {
                for (key, value) in b.iter_mut() {
                    let word = match a.get_mut(key) {
                        Some(other) if other == value => {
                            *other = Value::from(UNCHANGED);
                            UNCHANGED
                        }
                        Some(other) => {
                            *other = Value::from(CHANGED);
                            VALUE
                        }
                        None => VALUE,
                    };
                    *value = Value::from(word);
                }
                // what only git has
                for (key, value) in a.iter_mut() {
                    if !b.contains_key(key) {
                        *value = Value::from(VALUE);
                    }
                }
            }
            (before, after) => {
                for side in [before, after].into_iter().flatten() {
                    redact_all(side);
                }
            }
        }
    }
}

/// Every value of a mapping as a value; anything else as one value.
fn redact_all(v: &mut Value) {
    match v {
        Value::Object(m) => m.values_mut().for_each(|x| *x = Value::from(VALUE)),
        other => *other = Value::from(VALUE),
    }
}

/// A value as YAML; as indented JSON if YAML cannot be written (JSON is YAML too).
fn yaml(v: &Value) -> String {
    let text = serde_saphyr::to_string(v).or_else(|_| serde_json::to_string_pretty(v)).unwrap_or_default();
    if text.is_empty() || text.ends_with('\n') {
        text
    } else {
        text + "\n"
    }
}

/// The diff, cut at a line once it exceeds `max_bytes`, with how many lines were cut.
fn cap(text: String, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text;
    }
    let mut out = String::new();
    let mut lines = text.split_inclusive('\n');
    for line in lines.by_ref() {
        if out.len() + line.len() > max_bytes {
            let cut = 1 + lines.count();
            out.push_str(&format!("... diff truncated ({cut} lines)\n"));
            return out;
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn deployment_id() -> ObjectRef {
        ObjectRef::new("apps", "Deployment", "shop", "web")
    }

    fn deployment(image: &str, replicas: u64, managed: bool) -> Value {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "7", "generation": 3,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": "web"},
                "annotations": {"deployment.kubernetes.io/revision": "4", keys::DESIRED_HASH: "sha256:aaaa"}},
            "spec": {"replicas": replicas, "progressDeadlineSeconds": 600,
                "template": {"spec": {"containers": [
                    {"name": "web", "image": image, "imagePullPolicy": "Always"},
                    {"name": "sidecar", "image": "envoy:1"}]}}},
            "status": {"replicas": replicas}});
        if managed {
            d["metadata"]["managedFields"] = json!([
                {"manager": "driftless", "operation": "Apply", "apiVersion": "apps/v1", "fieldsV1": {
                    "f:metadata": {"f:labels": {"f:app": {}}, "f:annotations": {"f:driftless.dev/desired-hash": {}}},
                    "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                        "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1", "fieldsV1": {
                    "f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}}}},
            ]);
        }
        d
    }

    #[test]
    fn a_create_is_the_whole_object_from_nothing() {
        let id = ObjectRef::new("", "ConfigMap", "shop", "settings");
        let git = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "shop", "uid": "x"},
            "data": {"colour": "blue"}});
        let d = object_diff(&id, None, &git).unwrap();
        assert!(d.starts_with("--- live ConfigMap shop/settings\n+++ git ConfigMap shop/settings\n"), "{d}");
        assert!(d.contains("+data:\n+  colour: blue\n"), "{d}");
        assert!(d.contains("+  name: settings\n"), "{d}");
        assert!(!d.lines().any(|l| l.starts_with('-') && !l.starts_with("---")), "nothing removed: {d}");
        assert!(!d.contains("uid"), "{d}");
    }

    #[test]
    fn an_update_shows_what_driftless_owns_and_not_what_others_do() {
        let live = deployment("nginx:1", 2, true);
        let mut dry = deployment("nginx:2", 2, true);
        // another manager's fields changed too: not shown
        dry["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("5");
        dry["spec"]["progressDeadlineSeconds"] = json!(900);
        dry["metadata"]["annotations"][keys::DESIRED_HASH] = json!("sha256:bbbb");
        dry["metadata"]["resourceVersion"] = json!("8");
        let d = object_diff(&deployment_id(), Some(&live), &dry).unwrap();
        assert!(d.contains("-      - image: nginx:1\n+      - image: nginx:2\n         name: web\n"), "{d}");
        let changed: Vec<&str> =
            d.lines().filter(|l| (l.starts_with('-') || l.starts_with('+')) && !l.starts_with("---") && !l.starts_with("+++")).collect();
        assert_eq!(changed.len(), 2, "only the image: {d}");
        for hidden in
            ["progressDeadlineSeconds", "revision", "envoy", "imagePullPolicy", "sha256", "resourceVersion", "status", "managedFields"]
        {
            assert!(!d.contains(hidden), "{hidden} is not Driftless's: {d}");
        }
        // an owned scalar
        let d = object_diff(&deployment_id(), Some(&live), &deployment("nginx:1", 3, true)).unwrap();
        assert!(d.contains("-  replicas: 2\n+  replicas: 3\n"), "{d}");
    }

    #[test]
    fn a_field_git_no_longer_declares_shows_as_removed() {
        let mut live = deployment("nginx:1", 2, true);
        live["metadata"]["labels"]["team"] = json!("blue");
        live["metadata"]["managedFields"][0]["fieldsV1"]["f:metadata"]["f:labels"]["f:team"] = json!({});
        let dry = deployment("nginx:1", 2, true);
        let d = object_diff(&deployment_id(), Some(&live), &dry).unwrap();
        assert!(d.contains("-    team: blue\n"), "{d}");
        // another manager owns it too: it stays, and is no difference
        let mut kept = dry.clone();
        kept["metadata"]["labels"]["team"] = json!("blue");
        assert_eq!(object_diff(&deployment_id(), Some(&live), &kept), None);
        // a live body without managedFields: only the dry-run's set
        let mut body = live.clone();
        object::strip(&mut body);
        assert_eq!(object_diff(&deployment_id(), Some(&body), &dry), None);
    }

    #[test]
    fn union_of_field_sets() {
        let a = json!({"f:a": {}, "f:b": {"f:x": {}}});
        let b = json!({"f:b": {"f:y": {}}, "f:c": {"f:z": {}}, "f:a": {"f:deep": {}}});
        assert_eq!(union(&a, &b), json!({"f:a": {}, "f:b": {"f:x": {}, "f:y": {}}, "f:c": {"f:z": {}}}));
    }

    #[test]
    fn no_difference_in_what_driftless_owns_is_no_diff() {
        let live = deployment("nginx:1", 2, true);
        let mut dry = live.clone();
        dry["spec"]["progressDeadlineSeconds"] = json!(900);
        dry["status"]["replicas"] = json!(5);
        dry["metadata"]["generation"] = json!(4);
        assert_eq!(object_diff(&deployment_id(), Some(&live), &dry), None);
        assert_eq!(object_diff(&deployment_id(), Some(&live), &live), None);
    }

    #[test]
    fn without_driftless_fields_the_whole_objects_are_compared() {
        let live = deployment("nginx:1", 2, false);
        let mut dry = live.clone();
        dry["spec"]["progressDeadlineSeconds"] = json!(900);
        dry["metadata"]["uid"] = json!("other");
        dry["metadata"]["annotations"][keys::DESIRED_HASH] = json!("sha256:bbbb");
        let d = object_diff(&deployment_id(), Some(&live), &dry).unwrap();
        assert!(d.contains("-  progressDeadlineSeconds: 600\n+  progressDeadlineSeconds: 900\n"), "{d}");
        assert!(!d.contains("uid") && !d.contains("sha256"), "{d}");
        assert_eq!(object_diff(&deployment_id(), Some(&live), &live), None);
    }

    fn secret(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "db", "namespace": "shop",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"stringData\":{\"password\":\"hunter2\"}}",
                    keys::DESIRED_HASH: "sha256:0123"}},
            "data": data})
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn a_secret_shows_which_keys_changed_and_never_a_value() {
        let id = ObjectRef::new("", "Secret", "shop", "db");
        let live = secret(json!({"password": b64("hunter2"), "user": b64("admin"), "old": b64("gone-value")}));
        let git = secret(json!({"password": b64("correct-horse"), "user": b64("admin"), "new": b64("fresh-value")}));
        let d = object_diff(&id, Some(&live), &git).unwrap();
        for secret in ["hunter2", "correct-horse", "admin", "gone-value", "fresh-value"] {
            assert!(!d.contains(secret) && !d.contains(&b64(secret)), "{secret} leaked: {d}");
        }
        assert!(!d.contains("last-applied") && !d.contains("sha256"), "{d}");
        assert!(d.contains("-  password: (value)\n") && d.contains("+  password: (changed value)\n"), "{d}");
        assert!(d.contains("   user: (unchanged)\n"), "{d}");
        assert!(d.contains("-  old: (value)\n"), "{d}");
        assert!(d.contains("+  new: (value)\n"), "{d}");
        // a create and a stringData on one side only
        let mut created = secret(json!({"token": b64("s3cr3t")}));
        created["stringData"] = json!({"plain": "s3cr3t-plain"});
        let d = object_diff(&id, None, &created).unwrap();
        assert!(!d.contains("s3cr3t") && !d.contains(&b64("s3cr3t")), "{d}");
        assert!(d.contains("+  token: (value)\n") && d.contains("+  plain: (value)\n"), "{d}");
        // the same values: no diff
        assert_eq!(object_diff(&id, Some(&live), &live), None);
    }

    #[test]
    fn a_secret_with_driftless_fields_is_redacted_after_projection() {
        let id = ObjectRef::new("", "Secret", "shop", "db");
        let mut live = secret(json!({"password": b64("hunter2"), "other": b64("theirs")}));
        live["metadata"]["managedFields"] =
            json!([{"manager": "driftless", "operation": "Apply", "fieldsV1": {"f:data": {"f:password": {}}}}]);
        let mut git = live.clone();
        git["data"]["password"] = json!(b64("hunter3"));
        let d = object_diff(&id, Some(&live), &git).unwrap();
        assert!(!d.contains("hunter") && !d.contains(&b64("hunter2")) && !d.contains(&b64("hunter3")), "{d}");
        assert!(!d.contains("other"), "not Driftless's: {d}");
        assert!(d.contains("+  password: (changed value)\n"), "{d}");
    }

    #[test]
    fn a_long_diff_is_cut_at_a_line_and_counted() {
        let id = ObjectRef::new("", "ConfigMap", "shop", "big");
        let data: Map<String, Value> = (0..200).map(|i| (format!("key{i:03}"), Value::from(format!("value {i}")))).collect();
        let git = json!({"metadata": {"name": "big"}, "data": data});
        let full = diff_within(&id, None, &git, usize::MAX).unwrap();
        let cut = diff_within(&id, None, &git, 1000).unwrap();
        assert!(cut.len() < 1100, "{}", cut.len());
        let shown = cut.lines().count() - 1;
        let last = cut.lines().last().unwrap();
        assert_eq!(last, format!("... diff truncated ({} lines)", full.lines().count() - shown));
        assert!(full.starts_with(&cut[..cut.len() - last.len() - 1]));
        assert_eq!(object_diff(&id, None, &git).unwrap(), full, "a small diff is whole");
    }

    #[test]
    fn retain_keeps_the_shape_of_what_a_field_set_names() {
        let fields = json!({"f:finalizers": {"v:\"a\"": {}}, "f:args": {"i:1": {}}, "f:missing": {}, "f:ports": {"k:{\"port\":80}": {".": {}, "f:port": {}}}});
        let value =
            json!({"finalizers": ["a", "b"], "args": ["x", "y"], "other": 1, "ports": [{"port": 80, "name": "http"}, {"port": 81}]});
        assert_eq!(retain(&value, &fields), Some(json!({"finalizers": ["a"], "args": ["y"], "ports": [{"port": 80}]})));
        assert_eq!(retain(&json!({"other": 1}), &fields), None);
        assert_eq!(retain(&json!(5), &json!({})), Some(json!(5)));
    }

    proptest! {
        #[test]
        fn no_secret_value_ever_appears(
            before in proptest::collection::btree_map("[a-z]{1,6}", "[A-Z0-9]{8,24}", 0..6),
            after in proptest::collection::btree_map("[a-z]{1,6}", "[A-Z0-9]{8,24}", 0..6),
            create in any::<bool>(),
        ) {
            let id = ObjectRef::new("", "Secret", "shop", "db");
            let encode = |m: &BTreeMap<String, String>| -> Map<String, Value> { m.iter().map(|(k, v)| (k.clone(), Value::from(b64(v)))).collect() };
            let mut live = secret(Value::Object(encode(&before)));
            live["stringData"] = json!(before);
            let mut git = secret(Value::Object(encode(&after)));
            git["stringData"] = json!(after);
            let d = object_diff(&id, (!create).then_some(&live), &git).unwrap_or_default();
            // upper-case letters and digits, eight or more: no word of the output's own
            for v in before.values().chain(after.values()) {
                prop_assert!(!d.contains(v.as_str()), "{v:?} leaked: {d}");
                prop_assert!(!d.contains(&b64(v)), "{v:?} leaked in base64: {d}");
            }
        }
    }
}
