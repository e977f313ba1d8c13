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
    if let Some(map) = o.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in VOLATILE_METADATA {
                meta.remove(key);
            }
        }
    }
    o
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
    fn a_spec_label_or_data_change_is_a_difference() {
        let live = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let label = json!({"metadata": {"name": "a", "labels": {"x": "2"}}, "data": {"k": "v"}});
        let data = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "w"}});
        assert!(differs(&live, &label));
        assert!(differs(&live, &data));
    }

    #[test]
    fn immutable_errors_are_recognised() {
        assert!(is_immutable_field_error(r#"Job.batch "m" is invalid: spec.template: Invalid value: ...: field is immutable"#));
        assert!(is_immutable_field_error("spec.clusterIP: Invalid value: \"\": field is immutable"));
        assert!(!is_immutable_field_error("spec.replicas: Invalid value: -1: must be greater than or equal to 0"));
    }
}
