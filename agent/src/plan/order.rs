//! The kind order of an apply. Tiers run in increasing order, the objects of one tier
//! concurrently; deletion runs in reverse. The order is Helm's install order (`InstallOrder` in
//! Helm's `kind_sorter.go`) cut into tiers, so that whatever must exist before another kind is
//! in an earlier tier:
//!
//! | tier  | name                | kinds                                                                          |
//! |-------|---------------------|--------------------------------------------------------------------------------|
//! | 0     | definitions         | CustomResourceDefinition, Namespace (CRDs are waited on until Established)     |
//! | 1     | policies            | PriorityClass, NetworkPolicy, ResourceQuota, LimitRange, PodSecurityPolicy, PodDisruptionBudget |
//! | 2     | config-and-classes  | ServiceAccount, Secret, ConfigMap, StorageClass, PersistentVolume, IngressClass, RuntimeClass |
//! | 3     | claims-and-rbac     | PersistentVolumeClaim, ClusterRole, ClusterRoleBinding, Role, RoleBinding      |
//! | 4     | services            | Service, Endpoints, EndpointSlice                                              |
//! | 5     | workloads           | DaemonSet, Pod, ReplicationController, ReplicaSet, Deployment, StatefulSet, Job, CronJob |
//! | 6     | scaling-and-ingress | HorizontalPodAutoscaler, Ingress, APIService                                   |
//! | 7     | other               | custom resources and every other kind                                          |
//! | 8     | webhooks            | MutatingWebhookConfiguration, ValidatingWebhookConfiguration, (Validating/Mutating)AdmissionPolicy(Binding) |
//!
//! Services, NetworkPolicies and PodDisruptionBudgets exist before any workload (a pod started
//! first misses its Services' `*_SERVICE_HOST` variables and runs unfenced); quotas, limit ranges,
//! priority and runtime classes before the pods and claims they admit; a StorageClass before the
//! claims it may default. Where this differs from Helm's list: CRDs go with Namespaces in tier 0
//! (everything else is checked against them); an IngressClass precedes every Ingress (the API
//! server gives an Ingress the default class only if it exists when the Ingress is created); an
//! HPA follows every workload, not only Deployments. A binding to a Role of the same revision is
//! safe within its tier: new roles that bindings name are applied first (see `plan::schedule`).
//!
//! Webhook configurations come last so a webhook whose backing Service is in the same revision
//! cannot block the apply of everything before it.

/// Every tier, in apply order, with its name for reports.
pub const TIERS: [&str; 9] = [
    "definitions",
    "policies",
    "config-and-classes",
    "claims-and-rbac",
    "services",
    "workloads",
    "scaling-and-ingress",
    "other",
    "webhooks",
];

/// The tier of custom resources and of every kind the table does not name.
pub const OTHER: usize = 7;

/// The tier of a kind (group-insensitive for built-ins, which is how kubectl and Flux sort too;
/// a custom resource that reuses a built-in kind name in its own group sorts to "other").
pub fn tier_of(group: &str, kind: &str) -> usize {
    let builtin = |groups: &[&str]| groups.contains(&group);
    match kind {
        "CustomResourceDefinition" if builtin(&["apiextensions.k8s.io"]) => 0,
        "Namespace" if builtin(&[""]) => 0,
        "PriorityClass" if builtin(&["scheduling.k8s.io"]) => 1,
        "NetworkPolicy" if builtin(&["networking.k8s.io"]) => 1,
        "ResourceQuota" | "LimitRange" if builtin(&[""]) => 1,
        "PodSecurityPolicy" | "PodDisruptionBudget" if builtin(&["policy"]) => 1,
        "ServiceAccount" | "Secret" | "ConfigMap" | "PersistentVolume" if builtin(&[""]) => 2,
        "StorageClass" if builtin(&["storage.k8s.io"]) => 2,
        "IngressClass" if builtin(&["networking.k8s.io"]) => 2,
        "RuntimeClass" if builtin(&["node.k8s.io"]) => 2,
        "PersistentVolumeClaim" if builtin(&[""]) => 3,
        "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding" if builtin(&["rbac.authorization.k8s.io"]) => 3,
        "Service" | "Endpoints" if builtin(&[""]) => 4,
        "EndpointSlice" if builtin(&["discovery.k8s.io"]) => 4,
        "DaemonSet" | "ReplicaSet" | "Deployment" | "StatefulSet" if builtin(&["apps"]) => 5,
        "Pod" | "ReplicationController" if builtin(&[""]) => 5,
        "Job" | "CronJob" if builtin(&["batch"]) => 5,
        "HorizontalPodAutoscaler" if builtin(&["autoscaling"]) => 6,
        "Ingress" if builtin(&["networking.k8s.io"]) => 6,
        "APIService" if builtin(&["apiregistration.k8s.io"]) => 6,
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" if builtin(&["admissionregistration.k8s.io"]) => 8,
        "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding" | "MutatingAdmissionPolicy" | "MutatingAdmissionPolicyBinding"
            if builtin(&["admissionregistration.k8s.io"]) =>
        {
            8
        }
        _ => OTHER,
    }
}

/// Rank of a kind inside its tier (the table's reading order, which is Helm's), so that e.g. a
/// ClusterRole precedes its binding in plans and reports. Objects of one tier are applied
/// concurrently: an order that must hold needs a tier, not a rank.
pub fn rank_in_tier(kind: &str) -> usize {
    const ORDER: &[&str] = &[
        "CustomResourceDefinition",
        "Namespace",
        "PriorityClass",
        "NetworkPolicy",
        "ResourceQuota",
        "LimitRange",
        "PodSecurityPolicy",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "StorageClass",
        "PersistentVolume",
        "IngressClass",
        "RuntimeClass",
        "PersistentVolumeClaim",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Endpoints",
        "EndpointSlice",
        "DaemonSet",
        "Pod",
        "ReplicationController",
        "ReplicaSet",
        "Deployment",
        "StatefulSet",
        "Job",
        "CronJob",
        "HorizontalPodAutoscaler",
        "Ingress",
        "APIService",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
    ];
    ORDER.iter().position(|k| *k == kind).unwrap_or(ORDER.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The apply key of a built-in kind, as the plan sorts (wave aside).
    fn key(group: &str, kind: &str) -> (usize, usize) {
        (tier_of(group, kind), rank_in_tier(kind))
    }

    const WORKLOADS: [(&str, &str); 8] = [
        ("apps", "Deployment"),
        ("apps", "StatefulSet"),
        ("apps", "DaemonSet"),
        ("apps", "ReplicaSet"),
        ("", "Pod"),
        ("", "ReplicationController"),
        ("batch", "Job"),
        ("batch", "CronJob"),
    ];

    /// Every kind of the table, with its group and tier, in the table's reading order.
    const TABLE: [(&str, &str, usize); 40] = [
        ("apiextensions.k8s.io", "CustomResourceDefinition", 0),
        ("", "Namespace", 0),
        ("scheduling.k8s.io", "PriorityClass", 1),
        ("networking.k8s.io", "NetworkPolicy", 1),
        ("", "ResourceQuota", 1),
        ("", "LimitRange", 1),
        ("policy", "PodSecurityPolicy", 1),
        ("policy", "PodDisruptionBudget", 1),
        ("", "ServiceAccount", 2),
        ("", "Secret", 2),
        ("", "ConfigMap", 2),
        ("storage.k8s.io", "StorageClass", 2),
        ("", "PersistentVolume", 2),
        ("networking.k8s.io", "IngressClass", 2),
        ("node.k8s.io", "RuntimeClass", 2),
        ("", "PersistentVolumeClaim", 3),
        ("rbac.authorization.k8s.io", "ClusterRole", 3),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding", 3),
        ("rbac.authorization.k8s.io", "Role", 3),
        ("rbac.authorization.k8s.io", "RoleBinding", 3),
        ("", "Service", 4),
        ("", "Endpoints", 4),
        ("discovery.k8s.io", "EndpointSlice", 4),
        ("apps", "DaemonSet", 5),
        ("", "Pod", 5),
        ("", "ReplicationController", 5),
        ("apps", "ReplicaSet", 5),
        ("apps", "Deployment", 5),
        ("apps", "StatefulSet", 5),
        ("batch", "Job", 5),
        ("batch", "CronJob", 5),
        ("autoscaling", "HorizontalPodAutoscaler", 6),
        ("networking.k8s.io", "Ingress", 6),
        ("apiregistration.k8s.io", "APIService", 6),
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration", 8),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration", 8),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy", 8),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding", 8),
        ("admissionregistration.k8s.io", "MutatingAdmissionPolicy", 8),
        ("admissionregistration.k8s.io", "MutatingAdmissionPolicyBinding", 8),
    ];

    #[test]
    fn the_documented_table_holds_in_reading_order() {
        for (g, k, tier) in TABLE {
            assert_eq!(tier_of(g, k), tier, "{k}.{g}");
            assert!(tier < TIERS.len(), "{k}: tier {tier} has no name");
        }
        let keys: Vec<(usize, usize)> = TABLE.iter().map(|(g, k, _)| key(g, k)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "the table is not in apply order: {keys:?}");
        assert_eq!(tier_of("example.com", "Widget"), OTHER);
        assert_eq!(TIERS[OTHER], "other");
        assert_eq!(TIERS[0], "definitions");
        assert_eq!(TIERS[TIERS.len() - 1], "webhooks");
    }

    #[test]
    fn definitions_come_first() {
        let firsts: Vec<&str> = TABLE.iter().filter(|(g, k, _)| tier_of(g, k) == 0).map(|(_, k, _)| *k).collect();
        assert_eq!(firsts, ["CustomResourceDefinition", "Namespace"], "tier 0 is exactly the definitions");
        let crd = key("apiextensions.k8s.io", "CustomResourceDefinition");
        let ns = key("", "Namespace");
        for (g, k, _) in TABLE.iter().skip(2) {
            assert!(crd < key(g, k) && ns < key(g, k), "{k} before the definitions");
        }
        assert!(crd < key("example.com", "Widget") && ns < key("example.com", "Widget"));
    }

    #[test]
    fn webhooks_and_admission_policies_come_last() {
        let last = TIERS.len() - 1;
        for k in [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "MutatingAdmissionPolicy",
            "MutatingAdmissionPolicyBinding",
        ] {
            assert_eq!(tier_of("admissionregistration.k8s.io", k), last, "{k}");
        }
        // custom resources go after every other built-in and before the webhooks
        assert!(OTHER < last);
        for (g, k, tier) in TABLE.iter().filter(|(_, _, s)| *s < last) {
            assert!(*tier < OTHER, "{k}.{g} sorts with the custom resources");
        }
    }

    #[test]
    fn services_network_policies_and_disruption_budgets_precede_every_workload() {
        for (g, k) in [("", "Service"), ("networking.k8s.io", "NetworkPolicy"), ("policy", "PodDisruptionBudget")] {
            for (wg, wk) in WORKLOADS {
                // a strictly earlier tier: the objects of one tier are applied concurrently
                assert!(tier_of(g, k) < tier_of(wg, wk), "{k} is not in a tier before {wk}");
            }
        }
        // and what pods need at admission: their ServiceAccount, config, claims, classes, quotas
        for (g, k) in [
            ("", "ServiceAccount"),
            ("", "Secret"),
            ("", "ConfigMap"),
            ("", "PersistentVolumeClaim"),
            ("", "ResourceQuota"),
            ("", "LimitRange"),
            ("scheduling.k8s.io", "PriorityClass"),
            ("node.k8s.io", "RuntimeClass"),
            ("rbac.authorization.k8s.io", "RoleBinding"),
        ] {
            assert!(tier_of(g, k) < tier_of("", "Pod"), "{k}");
        }
    }

    #[test]
    fn autoscalers_and_ingresses_follow_every_workload() {
        for (g, k) in [("autoscaling", "HorizontalPodAutoscaler"), ("networking.k8s.io", "Ingress")] {
            for (wg, wk) in WORKLOADS {
                assert!(tier_of(g, k) > tier_of(wg, wk), "{k} is not after {wk}");
            }
        }
        assert!(tier_of("networking.k8s.io", "IngressClass") < tier_of("networking.k8s.io", "Ingress"));
        assert!(tier_of("storage.k8s.io", "StorageClass") < tier_of("", "PersistentVolumeClaim"));
        assert!(tier_of("", "LimitRange") < tier_of("", "PersistentVolumeClaim"));
    }

    /// Helm's `InstallOrder` (pkg/release/util/kind_sorter.go), without its `*List` kinds
    /// (Lists are expanded when rendering).
    const HELM_INSTALL_ORDER: [(&str, &str); 32] = [
        ("", "Namespace"),
        ("networking.k8s.io", "NetworkPolicy"),
        ("", "ResourceQuota"),
        ("", "LimitRange"),
        ("policy", "PodSecurityPolicy"),
        ("policy", "PodDisruptionBudget"),
        ("", "ServiceAccount"),
        ("", "Secret"),
        ("", "ConfigMap"),
        ("storage.k8s.io", "StorageClass"),
        ("", "PersistentVolume"),
        ("", "PersistentVolumeClaim"),
        ("apiextensions.k8s.io", "CustomResourceDefinition"),
        ("rbac.authorization.k8s.io", "ClusterRole"),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
        ("rbac.authorization.k8s.io", "Role"),
        ("rbac.authorization.k8s.io", "RoleBinding"),
        ("", "Service"),
        ("apps", "DaemonSet"),
        ("", "Pod"),
        ("", "ReplicationController"),
        ("apps", "ReplicaSet"),
        ("apps", "Deployment"),
        ("autoscaling", "HorizontalPodAutoscaler"),
        ("apps", "StatefulSet"),
        ("batch", "Job"),
        ("batch", "CronJob"),
        ("networking.k8s.io", "IngressClass"),
        ("networking.k8s.io", "Ingress"),
        ("apiregistration.k8s.io", "APIService"),
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
    ];

    #[test]
    fn the_order_is_helms_install_order_but_for_the_documented_differences() {
        // CRDs are definitions; an IngressClass must exist before an Ingress defaults to it; an
        // HPA follows every workload
        let differs = ["CustomResourceDefinition", "IngressClass", "HorizontalPodAutoscaler"];
        let helm: Vec<(&str, (usize, usize))> =
            HELM_INSTALL_ORDER.iter().filter(|(_, k)| !differs.contains(k)).map(|(g, k)| (*k, key(g, k))).collect();
        for w in helm.windows(2) {
            assert!(w[0].1 < w[1].1, "{} sorts after {}, unlike Helm", w[0].0, w[1].0);
        }
    }

    #[test]
    fn a_custom_kind_named_like_a_builtin_is_a_custom_resource() {
        for (g, k, _) in TABLE {
            assert_eq!(tier_of("example.com", k), OTHER, "{k}.example.com sorts as a {k}.{g}");
        }
        assert!(key("example.com", "Service") > key("apps", "Deployment"));
        assert!(key("example.com", "Deployment") < key("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"));
        assert!(key("example.com", "Namespace") > key("", "Namespace"));
    }

    #[test]
    fn within_a_stage_the_table_order_ranks_and_unknown_kinds_tie() {
        assert!(rank_in_tier("ClusterRole") < rank_in_tier("ClusterRoleBinding"));
        assert!(rank_in_tier("Role") < rank_in_tier("RoleBinding"));
        assert!(rank_in_tier("Secret") < rank_in_tier("ConfigMap"));
        assert!(rank_in_tier("Namespace") > rank_in_tier("CustomResourceDefinition"));
        assert_eq!(rank_in_tier("Widget"), rank_in_tier("Gadget"));
    }
}
