//! The differ: does a server-side dry-run result differ from the live object? Pure.

use serde_json::Value;

/// Metadata the server changes on every write, or that a dry-run fills in differently; not a
/// difference in desired state.
const VOLATILE_METADATA: [&str; 4] = ["managedFields", "resourceVersion", "generation", "creationTimestamp"];

/// Whether applying would change the live object: compares the dry-run result with the live
/// object, ignoring volatile metadata and status.
pub fn differs(live: &Value, dry_run: &Value) -> bool {
    strip(live) != strip(dry_run)
}

fn strip(object: &Value) -> Value {
    let mut o = object.clone();
    strip_in_place(&mut o);
    o
}

/// Removes from an object what [`differs`] ignores.
pub fn strip_in_place(o: &mut Value) {
    if let Some(map) = o.as_object_mut() {
        // Identity is known from the plan; list items come without apiVersion and kind, and a
        // dry-run through another served version describes the same object.
        map.remove("apiVersion");
        map.remove("kind");
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in VOLATILE_METADATA {
                meta.remove(key);
            }
        }
    }
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

    #[test]
    fn immutable_errors_are_recognised() {
        assert!(is_immutable_field_error(r#"Job.batch "m" is invalid: spec.template: Invalid value: ...: field is immutable"#));
        assert!(is_immutable_field_error("spec.clusterIP: Invalid value: \"\": field is immutable"));
        assert!(!is_immutable_field_error("spec.replicas: Invalid value: -1: must be greater than or equal to 0"));
    }
}
