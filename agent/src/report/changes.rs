//! What a reconcile did to each object. Every verb reports its entries here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::manifest::ObjectRef;

/// What happened to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    /// Deleted and created again because an immutable field changed (`driftless.dev/recreate`).
    Recreated,
    Deleted,
    /// Left in place on purpose (a prune safeguard, or a stage not reached).
    Skipped,
    Failed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Recreated => "recreated",
            Action::Deleted => "deleted",
            Action::Skipped => "skipped",
            Action::Failed => "failed",
        }
    }
    /// Whether the action wrote to the cluster.
    pub fn is_write(self) -> bool {
        matches!(self, Action::Created | Action::Configured | Action::Recreated | Action::Deleted)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    #[serde(flatten)]
    pub id: ObjectRef,
    pub action: Action,
    /// Why it failed or was skipped; empty otherwise. Never contains Secret data.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Every entry of one reconcile, in the order they happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChangeSet {
    pub entries: Vec<Change>,
}

impl ChangeSet {
    pub fn push(&mut self, id: ObjectRef, action: Action, message: impl Into<String>) {
        self.entries.push(Change { id, action, message: message.into() });
    }
    pub fn count(&self, action: Action) -> usize {
        self.entries.iter().filter(|c| c.action == action).count()
    }
    pub fn failed(&self) -> bool {
        self.count(Action::Failed) > 0
    }
    /// Counts per action, in a fixed order, skipping zeros: `2 created, 5 unchanged`.
    pub fn summary(&self) -> String {
        use Action::*;
        let parts: Vec<String> = [Created, Configured, Recreated, Unchanged, Deleted, Skipped, Failed]
            .into_iter()
            .filter_map(|a| match self.count(a) {
                0 => None,
                n => Some(format!("{n} {a}")),
            })
            .collect();
        if parts.is_empty() {
            "no objects".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ObjectRef {
        ObjectRef::new("", "ConfigMap", "a", name)
    }

    #[test]
    fn summary_counts_each_action_in_a_fixed_order() {
        let mut cs = ChangeSet::default();
        cs.push(id("a"), Action::Unchanged, "");
        cs.push(id("b"), Action::Created, "");
        cs.push(id("c"), Action::Unchanged, "");
        assert_eq!(cs.summary(), "1 created, 2 unchanged");
        assert!(!cs.failed());
        cs.push(id("d"), Action::Failed, "boom");
        assert!(cs.failed());
        assert_eq!(ChangeSet::default().summary(), "no objects");
    }

    #[test]
    fn only_writing_actions_are_writes() {
        assert!(Action::Created.is_write() && Action::Deleted.is_write());
        assert!(!Action::Unchanged.is_write() && !Action::Skipped.is_write() && !Action::Failed.is_write());
    }
}
