//! The kind order of an apply. Stages run in increasing order; deletion runs in reverse.
//!
//! | stage | kinds                                                                                   |
//! |-------|-----------------------------------------------------------------------------------------|
//! | 0     | CustomResourceDefinition, Namespace (CRDs are waited on until Established)               |
//! | 1     | ClusterRole, ClusterRoleBinding, StorageClass, PriorityClass, IngressClass, PersistentVolume, RuntimeClass |
//! | 2     | ServiceAccount, Role, RoleBinding, ResourceQuota, LimitRange, Secret, ConfigMap, PersistentVolumeClaim |
//! | 3     | Deployment, StatefulSet, DaemonSet, ReplicaSet, Pod, Job, CronJob                        |
//! | 4     | Service, Ingress, HorizontalPodAutoscaler, PodDisruptionBudget, NetworkPolicy, Endpoints/EndpointSlice |
//! | 5     | custom resources and every other kind                                                    |
//! | 6     | MutatingWebhookConfiguration, ValidatingWebhookConfiguration, ValidatingAdmissionPolicy(Binding) |
//!
//! Webhook configurations come last so a webhook whose backing Service is in the same revision
//! cannot block the apply of everything before it.

/// Every stage, in apply order, with its name for reports.
pub const STAGES: [&str; 7] =
    ["definitions", "cluster-rbac-and-classes", "config", "workloads", "networking", "other", "webhooks"];

/// The stage of a kind (group-insensitive for built-ins, which is how kubectl and Flux sort too;
/// a custom resource that reuses a built-in kind name in its own group sorts to "other").
pub fn stage_of(group: &str, kind: &str) -> usize {
    let builtin = |groups: &[&str]| groups.contains(&group);
    match kind {
        "CustomResourceDefinition" if builtin(&["apiextensions.k8s.io"]) => 0,
        "Namespace" if builtin(&[""]) => 0,
        "ClusterRole" | "ClusterRoleBinding" if builtin(&["rbac.authorization.k8s.io"]) => 1,
        "StorageClass" if builtin(&["storage.k8s.io"]) => 1,
        "PriorityClass" if builtin(&["scheduling.k8s.io"]) => 1,
        "IngressClass" if builtin(&["networking.k8s.io"]) => 1,
        "RuntimeClass" if builtin(&["node.k8s.io"]) => 1,
        "PersistentVolume" if builtin(&[""]) => 1,
        "ServiceAccount" | "ResourceQuota" | "LimitRange" | "Secret" | "ConfigMap"
        | "PersistentVolumeClaim"
            if builtin(&[""]) =>
        {
            2
        }
        "Role" | "RoleBinding" if builtin(&["rbac.authorization.k8s.io"]) => 2,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" if builtin(&["apps"]) => 3,
        "Pod" if builtin(&[""]) => 3,
        "Job" | "CronJob" if builtin(&["batch"]) => 3,
        "Service" | "Endpoints" if builtin(&[""]) => 4,
        "EndpointSlice" if builtin(&["discovery.k8s.io"]) => 4,
        "Ingress" | "NetworkPolicy" if builtin(&["networking.k8s.io"]) => 4,
        "HorizontalPodAutoscaler" if builtin(&["autoscaling"]) => 4,
        "PodDisruptionBudget" if builtin(&["policy"]) => 4,
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration"
            if builtin(&["admissionregistration.k8s.io"]) =>
        {
            6
        }
        "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding"
        | "MutatingAdmissionPolicy" | "MutatingAdmissionPolicyBinding"
            if builtin(&["admissionregistration.k8s.io"]) =>
        {
            6
        }
        _ => 5,
    }
}

/// Rank of a kind inside its stage, so that e.g. a ServiceAccount precedes the RoleBinding that
/// names it and a Secret precedes the Deployment that mounts it (the table's reading order).
pub fn rank_in_stage(kind: &str) -> usize {
    const ORDER: &[&str] = &[
        "CustomResourceDefinition", "Namespace",
        "ClusterRole", "ClusterRoleBinding", "StorageClass", "PriorityClass", "IngressClass",
        "RuntimeClass", "PersistentVolume",
        "ServiceAccount", "Role", "RoleBinding", "ResourceQuota", "LimitRange", "Secret",
        "ConfigMap", "PersistentVolumeClaim",
        "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod", "Job", "CronJob",
        "Service", "Endpoints", "EndpointSlice", "Ingress", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "NetworkPolicy",
    ];
    ORDER.iter().position(|k| *k == kind).unwrap_or(ORDER.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_come_first_and_webhooks_last() {
        assert_eq!(stage_of("apiextensions.k8s.io", "CustomResourceDefinition"), 0);
        assert_eq!(stage_of("", "Namespace"), 0);
        assert_eq!(stage_of("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"), 6);
        assert_eq!(stage_of("admissionregistration.k8s.io", "MutatingWebhookConfiguration"), 6);
    }

    #[test]
    fn the_documented_table_holds() {
        let expect = [
            (("rbac.authorization.k8s.io", "ClusterRole"), 1),
            (("storage.k8s.io", "StorageClass"), 1),
            (("", "ServiceAccount"), 2),
            (("rbac.authorization.k8s.io", "RoleBinding"), 2),
            (("", "Secret"), 2),
            (("", "PersistentVolumeClaim"), 2),
            (("apps", "Deployment"), 3),
            (("batch", "CronJob"), 3),
            (("", "Service"), 4),
            (("networking.k8s.io", "Ingress"), 4),
            (("autoscaling", "HorizontalPodAutoscaler"), 4),
            (("example.com", "Widget"), 5),
        ];
        for ((g, k), stage) in expect {
            assert_eq!(stage_of(g, k), stage, "{k}.{g}");
        }
    }

    #[test]
    fn a_custom_kind_named_like_a_builtin_is_a_custom_resource() {
        assert_eq!(stage_of("example.com", "Deployment"), 5);
        assert_eq!(stage_of("example.com", "Namespace"), 5);
    }

    #[test]
    fn within_a_stage_service_accounts_precede_bindings_and_secrets_precede_claims() {
        assert!(rank_in_stage("ServiceAccount") < rank_in_stage("RoleBinding"));
        assert!(rank_in_stage("Secret") < rank_in_stage("PersistentVolumeClaim"));
        assert!(rank_in_stage("Namespace") > rank_in_stage("CustomResourceDefinition"));
        assert_eq!(rank_in_stage("Widget"), rank_in_stage("Gadget"));
    }
}
