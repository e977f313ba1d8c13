//! The desired-state hash: sha256 over a canonical JSON form of the object as Driftless will
//! apply it, minus server-owned and Driftless-owned metadata. Equal hashes mean nothing to write.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::keys;

/// Hex sha256 of the normalized object.
pub fn desired_hash(object: &Value) -> String {
    let mut normalized = object.clone();
    normalize(&mut normalized);
    let mut canonical = String::new();
    write_canonical(&normalized, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes what does not describe desired state: status, server-set metadata, the keys Driftless
/// adds itself, and empty label/annotation maps.
fn normalize(object: &mut Value) {
    let Some(map) = object.as_object_mut() else { return };
    map.remove("status");
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["creationTimestamp", "resourceVersion", "uid", "generation", "managedFields", "selfLink"] {
            meta.remove(key);
        }
        for (field, ours) in [("labels", &[keys::APPLYSET_PART_OF][..]), ("annotations", &[keys::DESIRED_HASH, keys::SOURCE][..])] {
            let empty = match meta.get_mut(field).and_then(Value::as_object_mut) {
                Some(m) => {
                    for k in ours {
                        m.remove(*k);
                    }
                    m.is_empty()
                }
                None => meta.get(field).is_some_and(Value::is_null),
            };
            if empty {
                meta.remove(field);
            }
        }
    }
}

/// JSON with object keys sorted, independent of the map type's iteration order.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"x": "1", "y": "2"}});
        let b = json!({"data": {"y": "2", "x": "1"}, "metadata": {"name": "a"}, "kind": "ConfigMap", "apiVersion": "v1"});
        assert_eq!(desired_hash(&a), desired_hash(&b));
        assert_eq!(desired_hash(&a).len(), 64);
    }

    #[test]
    fn a_changed_value_changes_the_hash() {
        let a = json!({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"x": "1"}});
        let b = json!({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"x": "2"}});
        assert_ne!(desired_hash(&a), desired_hash(&b));
    }

    #[test]
    fn driftless_keys_and_server_fields_are_ignored() {
        let plain = json!({"kind": "ConfigMap", "metadata": {"name": "a"}});
        let decorated = json!({"kind": "ConfigMap", "status": {"x": 1}, "metadata": {
            "name": "a", "resourceVersion": "7", "uid": "u",
            "labels": {keys::APPLYSET_PART_OF: "applyset-x-v1"},
            "annotations": {keys::DESIRED_HASH: "abc"}}});
        assert_eq!(desired_hash(&plain), desired_hash(&decorated));
    }

    #[test]
    fn user_labels_count() {
        let a = json!({"kind": "ConfigMap", "metadata": {"name": "a"}});
        let b = json!({"kind": "ConfigMap", "metadata": {"name": "a", "labels": {"app": "x"}}});
        assert_ne!(desired_hash(&a), desired_hash(&b));
    }
}
