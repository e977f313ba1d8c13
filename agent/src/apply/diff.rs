//! The differ: does a server-side dry-run result differ from the live object? Pure.
//!
//! Only what Driftless applies is compared: the fields its field manager owns in the dry-run
//! result ([`owned_differs`]). A controller that writes status, its own annotations or fields
//! Driftless never set between the listing and the dry-run (a Deployment being rolled out) is
//! not a difference, so such an object is not written again.

use serde_json::{Map, Value};

use crate::live::drift::Expected;
use crate::live::object;
use crate::FIELD_MANAGER;

/// Whether applying would change the live object: compares the dry-run result with the live
/// object, ignoring volatile metadata and status.
pub fn differs(live: &Value, dry_run: &Value) -> bool {
    strip(live) != strip(dry_run)
}

fn strip(object: &Value) -> Value {
    let mut o = object.clone();
    object::strip(&mut o);
    o
}

/// Whether applying would change what Driftless owns of the live object: the set of fields its
/// field manager owns (`live_owned`, from the live object's managedFields) differs from the
/// dry-run's, or a value at one of those fields differs. Without an entry of Driftless in the
/// dry-run result, the whole objects are compared.
pub fn owned_differs(live: &Value, live_owned: &Expected, dry_run: &Value) -> bool {
    let Some(fields) = owned_fields(dry_run) else { return differs(live, dry_run) };
    if Expected::from_object(dry_run) != *live_owned {
        return true;
    }
    project(live, fields) != project(dry_run, fields)
}

/// The `fieldsV1` of Driftless's apply (not of a subresource), if the object has one.
pub(crate) fn owned_fields(object: &Value) -> Option<&Value> {
    object.get("metadata")?.get("managedFields")?.as_array()?.iter().find_map(|m| {
        let ours = m.get("manager")?.as_str()? == FIELD_MANAGER
            && m.get("operation")?.as_str()? == "Apply"
            && m.get("subresource").and_then(Value::as_str).unwrap_or("").is_empty();
        ours.then(|| m.get("fieldsV1")).flatten()
    })
}

/// The part of `value` that a `fieldsV1` set names: `f:` fields, `k:` list items by key, `v:`
/// set members, `i:` items by index; an empty set is a whole (leaf or atomic) value. A field the
/// set names that `value` lacks projects to null.
fn project(value: &Value, fields: &Value) -> Value {
    let Some(fields) = fields.as_object().filter(|f| !f.is_empty()) else { return value.clone() };
    let items = value.as_array();
    let mut out = Map::new();
    for (key, sub) in fields {
        let projected = if let Some(name) = key.strip_prefix("f:") {
            value.get(name).map(|v| project(v, sub))
        } else if let Some(k) = key.strip_prefix("k:") {
            let wanted: Option<Map<String, Value>> = serde_json::from_str(k).ok();
            wanted.and_then(|w| items?.iter().find(|item| w.iter().all(|(f, v)| item.get(f) == Some(v)))).map(|item| project(item, sub))
        } else if let Some(v) = key.strip_prefix("v:") {
            let member: Option<Value> = serde_json::from_str(v).ok();
            Some(Value::Bool(member.is_some_and(|m| items.is_some_and(|a| a.contains(&m)))))
        } else if let Some(i) = key.strip_prefix("i:") {
            i.parse::<usize>().ok().and_then(|i| items?.get(i)).map(|item| project(item, sub))
        } else {
            // "." marks the item itself as owned: its presence is what matters
            continue;
        };
        out.insert(key.clone(), projected.unwrap_or(Value::Null));
    }
    Value::Object(out)
}

/// The paths (like `spec.replicas` or `data.key`) where the dry-run result differs from the live
/// object, at most `limit` of them. Only paths: values never appear, so Secrets stay secret.
pub fn changed_paths(live: &Value, dry_run: &Value, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    walk(&strip(live), &strip(dry_run), String::new(), &mut out, limit);
    out
}

fn walk(a: &Value, b: &Value, path: String, out: &mut Vec<String>, limit: usize) {
    if out.len() >= limit || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), p, out, limit);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                walk(u, v, format!("{path}[{i}]"), out, limit);
            }
        }
        _ => out.push(if path.is_empty() { "(object)".into() } else { path }),
    }
}

/// Whether an API error is the server refusing to change an immutable field.
pub fn is_immutable_field_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("field is immutable") || m.contains("may not change once set") || m.contains("is immutable")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_a_live_object_drops_when_read_is_what_the_differ_ignores() {
        let full = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "7", "generation": 2,
                "managedFields": [{"manager": "driftless", "operation": "Apply", "apiVersion": "apps/v1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
            "spec": {"replicas": 3}, "status": {"availableReplicas": 3}});
        let read = crate::live::object::LiveObject::read(serde_json::from_value(full.clone()).unwrap());
        let body = read.body.unwrap();
        assert!(!differs(&body, &full), "what is dropped is what the differ ignores");
        let mut changed = full.clone();
        changed["spec"]["replicas"] = json!(4);
        assert!(differs(&body, &changed));
    }

    #[test]
    fn only_volatile_metadata_and_status_changed_is_no_difference() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "1", "generation": 1,
            "managedFields": [{"manager": "driftless", "time": "t1"}]}, "spec": {"x": 1}, "status": {"r": 1}});
        let dry = json!({"metadata": {"name": "a", "resourceVersion": "1", "generation": 2,
            "managedFields": [{"manager": "driftless", "time": "t2"}]}, "spec": {"x": 1}, "status": {"r": 2}});
        assert!(!differs(&live, &dry));
    }

    #[test]
    fn a_list_item_without_type_fields_equals_its_dry_run() {
        let listed = json!({"metadata": {"name": "a"}, "data": {"k": "v"}});
        let dry = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}});
        assert!(!differs(&listed, &dry));
    }

    #[test]
    fn a_spec_label_or_data_change_is_a_difference() {
        let live = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let label = json!({"metadata": {"name": "a", "labels": {"x": "2"}}, "data": {"k": "v"}});
        let data = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "w"}});
        assert!(differs(&live, &label));
        assert!(differs(&live, &data));
    }

    #[test]
    fn changed_paths_name_fields_not_values() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "1"}, "data": {"k": "secret-1", "same": "x"},
            "spec": {"ports": [{"port": 80}, {"port": 81}]}});
        let dry = json!({"metadata": {"name": "a", "resourceVersion": "2"}, "data": {"k": "secret-2", "same": "x", "new": "y"},
            "spec": {"ports": [{"port": 80}, {"port": 82}]}});
        let paths = changed_paths(&live, &dry, 10);
        assert_eq!(paths, ["data.k", "data.new", "spec.ports[1].port"]);
        assert!(paths.iter().all(|p| !p.contains("secret")));
        assert_eq!(changed_paths(&live, &dry, 1).len(), 1);
        assert!(changed_paths(&live, &live, 10).is_empty());
    }

    fn applied(fields: Value, body: Value) -> Value {
        let mut o = body;
        o["metadata"]["managedFields"] = json!([
            {"manager": "driftless", "operation": "Apply", "apiVersion": "apps/v1", "fieldsV1": fields},
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1", "fieldsV1": {"f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}}}},
        ]);
        o
    }

    fn deployment_fields() -> Value {
        json!({"f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
    }

    fn deployment(image: &str, replicas: u64, revision: &str) -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {"deployment.kubernetes.io/revision": revision}},
            "spec": {"replicas": replicas, "progressDeadlineSeconds": 600,
                "template": {"spec": {"containers": [{"name": "web", "image": image, "imagePullPolicy": "Always"}]}}},
            "status": {"replicas": 1}})
    }

    #[test]
    fn what_a_controller_writes_between_listing_and_dry_run_is_no_difference() {
        let dry = applied(deployment_fields(), deployment("nginx:1", 2, "2"));
        let live_owned = Expected::from_object(&dry);
        // listed before the controller set its revision annotation and status
        let mut listed = deployment("nginx:1", 2, "1");
        object::strip(&mut listed);
        assert!(differs(&listed, &dry), "the whole objects differ");
        assert!(!owned_differs(&listed, &live_owned, &dry), "what Driftless owns does not");
    }

    #[test]
    fn an_owned_value_or_the_owned_set_changed_is_a_difference() {
        let dry = applied(deployment_fields(), deployment("nginx:2", 2, "1"));
        let owned = Expected::from_object(&dry);
        assert!(owned_differs(&deployment("nginx:1", 2, "1"), &owned, &dry), "an owned list item's field");
        assert!(owned_differs(&deployment("nginx:2", 3, "1"), &owned, &dry), "an owned scalar");
        assert!(!owned_differs(&deployment("nginx:2", 2, "1"), &owned, &dry));
        // another manager took a field: Driftless's set in the live object is smaller
        let taken = Expected::from_object(&applied(json!({"f:spec": {"f:replicas": {}}}), deployment("nginx:2", 2, "1")));
        assert!(owned_differs(&deployment("nginx:2", 2, "1"), &taken, &dry));
        // a dry-run result without Driftless's entry: whole objects compared
        let bare = deployment("nginx:2", 2, "1");
        assert!(!owned_differs(&bare, &owned, &bare));
    }

    #[test]
    fn projection_reads_set_members_and_indices() {
        let fields = json!({"f:finalizers": {"v:\"a\"": {}}, "f:args": {"i:1": {}}});
        let one = json!({"finalizers": ["a", "b"], "args": ["x", "y"]});
        let other = json!({"finalizers": ["b"], "args": ["x", "z"]});
        assert_eq!(project(&one, &fields), json!({"f:finalizers": {"v:\"a\"": true}, "f:args": {"i:1": "y"}}));
        assert_eq!(project(&other, &fields), json!({"f:finalizers": {"v:\"a\"": false}, "f:args": {"i:1": "z"}}));
    }

    #[test]
    fn immutable_errors_are_recognised() {
        assert!(is_immutable_field_error(r#"Job.batch "m" is invalid: spec.template: Invalid value: ...: field is immutable"#));
        assert!(is_immutable_field_error("spec.clusterIP: Invalid value: \"\": field is immutable"));
        assert!(!is_immutable_field_error("spec.replicas: Invalid value: -1: must be greater than or equal to 0"));
    }
}
