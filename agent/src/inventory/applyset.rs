//! The ApplySet (KEP-3659) of a source: a parent ConfigMap in the agent's namespace whose id
//! label, tooling and contains-group-kinds annotations let `kubectl` recognise the set, and whose
//! members are labelled `applyset.kubernetes.io/part-of: <id>`.

use std::collections::BTreeSet;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::keys;
use crate::manifest::{GroupKind, ObjectRef};

/// The ApplySet id as KEP-3659 specifies it:
/// `applyset-` + base64url(sha256(`<name>.<namespace>.<kind>.<group>`)) without padding + `-v1`.
pub fn applyset_id(parent: &ObjectRef) -> String {
    let key = format!("{}.{}.{}.{}", parent.name, parent.namespace, parent.kind, parent.group);
    let digest = Sha256::digest(key.as_bytes());
    format!("applyset-{}-v1", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest))
}

/// The parent object of a source's set: ConfigMap `driftless-<source>` in the agent's namespace.
pub fn parent_ref(source: &str, agent_namespace: &str) -> ObjectRef {
    ObjectRef::new("", "ConfigMap", agent_namespace, format!("driftless-{source}"))
}

/// What the parent records: the group-kinds and namespaces members may be found in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub group_kinds: BTreeSet<GroupKind>,
    /// Every namespace holding members. Recorded as `additional-namespaces`; the parent's own
    /// namespace is included when it holds members (harmless to kubectl, and it spares listing
    /// the agent's namespace for every kind).
    pub namespaces: BTreeSet<String>,
}

impl Inventory {
    /// Reads the annotations of a live parent.
    pub fn from_annotations(annotations: &serde_json::Value) -> Self {
        let list = |key: &str| -> Vec<String> {
            annotations[key].as_str().unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
        };
        Self {
            // an entry without a kind (`.`, `.apps`) names nothing: dropped, so a written and
            // re-read inventory is the same
            group_kinds: list(keys::APPLYSET_GROUP_KINDS)
                .iter()
                .map(|s| GroupKind::parse(s))
                .map(|gk| GroupKind::new(gk.group.trim(), gk.kind.trim()))
                .filter(|gk| !gk.kind.is_empty())
                .collect(),
            namespaces: list(keys::APPLYSET_NAMESPACES).into_iter().collect(),
        }
    }

    /// The union of two inventories (recorded before applying, so an interrupted apply leaves
    /// every possible member findable).
    pub fn union(&self, other: &Inventory) -> Inventory {
        Inventory {
            group_kinds: self.group_kinds.union(&other.group_kinds).cloned().collect(),
            namespaces: self.namespaces.union(&other.namespaces).cloned().collect(),
        }
    }

    /// The parent's annotations for this inventory.
    pub fn annotations(&self) -> serde_json::Value {
        let gks: Vec<String> = self.group_kinds.iter().map(ToString::to_string).collect();
        let nss: Vec<&str> = self.namespaces.iter().map(String::as_str).collect();
        serde_json::json!({
            keys::APPLYSET_TOOLING: format!("driftless/v{}", crate::VERSION),
            keys::APPLYSET_GROUP_KINDS: gks.join(","),
            keys::APPLYSET_NAMESPACES: nss.join(","),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn id_follows_the_kep_formula() {
        // echo -n 'driftless-demo.driftless-system.ConfigMap.' | sha256sum | xxd -r -p | base64 | tr '+/' '-_' | tr -d '='
        let id = applyset_id(&parent_ref("demo", "driftless-system"));
        let digest = Sha256::digest(b"driftless-demo.driftless-system.ConfigMap.");
        let expect = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        assert_eq!(id, format!("applyset-{expect}-v1"));
        assert!(!id.contains('=') && !id.contains('+') && !id.contains('/'));
        // a label value: at most 63 characters
        assert!(id.len() <= 63, "{id}");
    }

    #[test]
    fn ids_differ_per_source_and_namespace() {
        let a = applyset_id(&parent_ref("a", "ns"));
        assert_ne!(a, applyset_id(&parent_ref("b", "ns")));
        assert_ne!(a, applyset_id(&parent_ref("a", "other")));
    }

    #[test]
    fn inventory_round_trips_through_annotations() {
        let inv = Inventory {
            group_kinds: [GroupKind::new("apps", "Deployment"), GroupKind::new("", "ConfigMap")].into_iter().collect(),
            namespaces: ["shop".to_string(), "web".to_string()].into_iter().collect(),
        };
        let ann = inv.annotations();
        assert_eq!(ann[keys::APPLYSET_GROUP_KINDS], "ConfigMap,Deployment.apps");
        assert_eq!(ann[keys::APPLYSET_NAMESPACES], "shop,web");
        assert_eq!(Inventory::from_annotations(&ann), inv);
        assert_eq!(Inventory::from_annotations(&json!({})), Inventory::default());
    }

    #[test]
    fn union_keeps_old_and_new() {
        let old = Inventory { group_kinds: [GroupKind::new("", "Secret")].into(), namespaces: ["a".into()].into() };
        let new = Inventory { group_kinds: [GroupKind::new("", "ConfigMap")].into(), namespaces: ["b".into()].into() };
        let u = old.union(&new);
        assert_eq!(u.group_kinds.len(), 2);
        assert_eq!(u.namespaces.len(), 2);
    }

    #[test]
    fn entries_without_a_kind_name_nothing_and_blanks_are_trimmed() {
        let inv = Inventory::from_annotations(&serde_json::json!({keys::APPLYSET_GROUP_KINDS: "., .apps,Kind ., Deployment.apps"}));
        let names: Vec<String> = inv.group_kinds.iter().map(|gk| gk.to_string()).collect();
        assert_eq!(names, ["Kind", "Deployment.apps"], "sorted by group, then kind");
        assert_eq!(Inventory::from_annotations(&inv.annotations()), inv, "stable once written");
    }
}
