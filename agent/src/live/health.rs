//! Health of live objects, following the kstatus conventions
//! (`sigs.k8s.io/cli-utils/pkg/kstatus/status`).
//!
//! [`evaluate`] is pure: it reads one live object (as JSON, with its full `status`) and returns
//! a [`Status`]: a [`Health`] and a short human reason. It never panics: a missing number counts
//! as 0 and a missing string as empty, and a field of the wrong type (or an object that is not a
//! JSON object) yields [`Health::Unknown`] with a reason naming the field.
//!
//! kstatus maps onto [`Health`] as: Current → Healthy, InProgress and Terminating → Progressing,
//! Failed → Degraded, Unknown → Unknown.
//!
//! Two generic checks run first, for every kind:
//!
//! | check                                                       | health      | reason                                            |
//! |-------------------------------------------------------------|-------------|---------------------------------------------------|
//! | `metadata.deletionTimestamp` set                            | Progressing | being deleted                                     |
//! | `status.observedGeneration` present and < `metadata.generation` | Progressing | waiting for the controller to observe generation N |
//!
//! Then the rules of the kind (core kinds have group `""`; `extensions` is accepted as the legacy
//! group of Deployment, DaemonSet, ReplicaSet and Ingress). The first matching row wins.
//!
//! | kind                               | rule (in order)                                                                                  |
//! |------------------------------------|--------------------------------------------------------------------------------------------------|
//! | apps Deployment                    | `spec.paused`: Progressing while fewer than `spec.replicas` (default 1) are available, else Healthy "rollout paused"; condition Progressing with reason ProgressDeadlineExceeded → Degraded; condition ReplicaFailure True → Degraded; updated < desired → Progressing "k/n replicas updated"; `status.replicas` > updated → Progressing "N old replicas pending termination"; available < desired → Progressing "k/n replicas available"; else Healthy (0 desired and 0 everywhere is Healthy "scaled to zero") |
//! | apps StatefulSet                   | ready < desired → Progressing; `status.availableReplicas` (when reported) < desired → Progressing; `status.replicas` > desired → Progressing; OnDelete strategy → Healthy; RollingUpdate with `partition` p > 0: updated < desired − p → Progressing, else Healthy; otherwise updated < desired or `currentRevision` ≠ `updateRevision` → Progressing; else Healthy |
//! | apps DaemonSet                     | no `status.observedGeneration` yet → Progressing; updated < `desiredNumberScheduled` → Progressing (skipped for OnDelete); `numberAvailable` < desired → Progressing; else Healthy (`numberMisscheduled` is ignored) |
//! | apps ReplicaSet                    | condition ReplicaFailure True → Degraded; available < desired → Progressing; `status.replicas` > desired → Progressing; else Healthy |
//! | core Pod                           | phase Succeeded → Healthy; phase Failed → Degraded (`status.reason`/`message`); phase Unknown → Unknown; condition Ready True → Healthy; a container (or init container) waiting with CrashLoopBackOff, ImagePullBackOff, ErrImagePull, InvalidImageName, CreateContainerConfigError or CreateContainerError → Degraded; else Progressing (phase, "not ready", unschedulable message) |
//! | batch Job                          | condition Complete True → Healthy; condition Failed or FailureTarget True → Degraded; `spec.suspend` or condition Suspended True → Healthy "suspended"; else Progressing "k active, n succeeded" |
//! | batch CronJob                      | Healthy (a schedule, not a workload); the reason notes `spec.suspend`                            |
//! | core PersistentVolumeClaim         | phase Bound → Healthy; Lost → Degraded; else Progressing (the phase, "Pending" when unset)       |
//! | core PersistentVolume              | phase Bound, Available or Released → Healthy; Failed → Degraded; else Progressing               |
//! | core Service                       | type LoadBalancer: Healthy once `status.loadBalancer.ingress` is a non-empty list, else Progressing "waiting for a load balancer address"; other types → Healthy |
//! | networking.k8s.io Ingress          | Healthy: the address is not waited for, since many ingress controllers never publish one        |
//! | apiextensions.k8s.io CustomResourceDefinition | condition NamesAccepted False → Degraded; condition Established True → Healthy; else Progressing |
//! | core Namespace                     | phase Active → Healthy; Terminating (or not reported yet) → Progressing                         |
//! | autoscaling HorizontalPodAutoscaler | Healthy: its conditions describe metrics (often briefly unavailable after a rollout), not the health of the workload, which is evaluated on its own |
//! | policy PodDisruptionBudget         | Healthy (once the generic generation check passes)                                               |
//! | any other kind                     | condition Stalled True → Degraded; Reconciling True → Progressing; Ready True → Healthy; Ready False or Unknown → Progressing; no such conditions → Healthy |
//!
//! Choices where kstatus is silent or where Driftless departs from it:
//!
//! - A paused Deployment is Healthy once it has its desired number of available replicas, like a
//!   suspended Job: pausing is a deliberate act and its rollout will not progress until resumed,
//!   so waiting on it would only time out. kstatus has no rule for it.
//! - A Job that is running is Progressing (kstatus calls a started Job Current), so that waiting
//!   on a revision's health waits for its Jobs to finish.
//! - A Pod in CrashLoopBackOff is Degraded in any phase, and the image and configuration errors
//!   above are Degraded too (kstatus only flags CrashLoopBackOff). A failed Pod is Degraded
//!   (kstatus calls it Current). An unschedulable Pod stays Progressing, since a cluster
//!   autoscaler may yet add a node (kstatus fails it after 15 s, which needs a clock).
//! - A LoadBalancer Service waits for an address in `status.loadBalancer.ingress` (kstatus only
//!   waits for a cluster IP).
//! - For other kinds, the Flux-style Ready condition is read as well as kstatus' Stalled and
//!   Reconciling. Reconciling True wins over Ready True, as in kstatus.
//! - ReplicaFailure True (e.g. a quota that forbids creating pods) is Degraded on Deployments and
//!   ReplicaSets (kstatus calls it InProgress on ReplicaSets).

use std::fmt;

use serde_json::Value;

/// How healthy a live object is.
///
/// The variants are ordered from best to worst, so `Ord` ranks them
/// `Healthy < Progressing < Unknown < Degraded` and `max()` of several healths is the worst one:
/// a source's health is its worst member's (see [`worst`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Health {
    /// The object has reached its desired state.
    Healthy,
    /// The object is on its way to its desired state (rolling out, starting, being deleted).
    Progressing,
    /// The health cannot be determined (malformed status, a node that stopped reporting).
    Unknown,
    /// The object failed and will not get better without a change (a failed rollout or Job, a
    /// crash-looping Pod, a lost volume).
    Degraded,
}

impl Health {
    /// The name of the health: `"Healthy"`, `"Progressing"`, `"Unknown"` or `"Degraded"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Healthy => "Healthy",
            Health::Progressing => "Progressing",
            Health::Unknown => "Unknown",
            Health::Degraded => "Degraded",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The health of one object and why, e.g. `Progressing`, `"2/3 replicas available"`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// The health.
    pub health: Health,
    /// A short human explanation, e.g. `"Bound"` or `"waiting for a load balancer address"`.
    pub reason: String,
}

impl Status {
    /// A status with the given health and reason.
    pub fn new(health: Health, reason: impl Into<String>) -> Self {
        Status { health, reason: reason.into() }
    }
}

/// The worst of several healths ([`Health::Healthy`] when there are none).
pub fn worst<'a>(statuses: impl IntoIterator<Item = &'a Health>) -> Health {
    statuses.into_iter().copied().max().unwrap_or(Health::Healthy)
}

/// The health of a live object of the given API group (`""` for core) and kind.
///
/// `object` is the object as returned by the API server, status included. See the
/// [module documentation](self) for the rules.
pub fn evaluate(group: &str, kind: &str, object: &Value) -> Status {
    if !object.is_object() {
        return unknown("malformed object: not a JSON object");
    }
    let fields = Fields::new(object);
    evaluate_fields(group, kind, &fields).unwrap_or_else(|Malformed(what)| unknown(format!("malformed object: {what}")))
}

/// A field of the object that does not have the expected JSON type (its dotted path and the
/// expected type).
#[derive(Debug)]
struct Malformed(String);

type Outcome = Result<Status, Malformed>;

fn healthy(reason: impl Into<String>) -> Status {
    Status::new(Health::Healthy, reason)
}

fn progressing(reason: impl Into<String>) -> Status {
    Status::new(Health::Progressing, reason)
}

fn degraded(reason: impl Into<String>) -> Status {
    Status::new(Health::Degraded, reason)
}

fn unknown(reason: impl Into<String>) -> Status {
    Status::new(Health::Unknown, reason)
}

fn evaluate_fields(group: &str, kind: &str, o: &Fields<'_>) -> Outcome {
    if let Some(generic) = generic(o)? {
        return Ok(generic);
    }
    let is = |groups: &[&str]| groups.contains(&group);
    match kind {
        "Deployment" if is(&["apps", "extensions"]) => deployment(o),
        "StatefulSet" if is(&["apps"]) => stateful_set(o),
        "DaemonSet" if is(&["apps", "extensions"]) => daemon_set(o),
        "ReplicaSet" if is(&["apps", "extensions"]) => replica_set(o),
        "Pod" if is(&[""]) => pod(o),
        "Job" if is(&["batch"]) => job(o),
        "CronJob" if is(&["batch"]) => cron_job(o),
        "PersistentVolumeClaim" if is(&[""]) => persistent_volume_claim(o),
        "PersistentVolume" if is(&[""]) => persistent_volume(o),
        "Service" if is(&[""]) => service(o),
        "Ingress" if is(&["networking.k8s.io", "extensions"]) => ingress(o),
        "CustomResourceDefinition" if is(&["apiextensions.k8s.io"]) => custom_resource_definition(o),
        "Namespace" if is(&[""]) => namespace(o),
        "HorizontalPodAutoscaler" if is(&["autoscaling"]) => horizontal_pod_autoscaler(o),
        "PodDisruptionBudget" if is(&["policy"]) => pod_disruption_budget(o),
        _ => conditions_only(o),
    }
}

/// The checks that apply to every kind: deletion, then the observed generation.
fn generic(o: &Fields<'_>) -> Result<Option<Status>, Malformed> {
    if !o.str("metadata.deletionTimestamp")?.is_empty() {
        return Ok(Some(progressing("being deleted")));
    }
    if let (Some(observed), Some(generation)) = (o.int("status.observedGeneration")?, o.int("metadata.generation")?) {
        if observed < generation {
            return Ok(Some(progressing(format!("waiting for the controller to observe generation {generation}"))));
        }
    }
    Ok(None)
}

/// `spec.replicas`, which the workload controllers default to 1.
fn desired_replicas(o: &Fields<'_>) -> Result<i64, Malformed> {
    Ok(o.int("spec.replicas")?.unwrap_or(1))
}

fn deployment(o: &Fields<'_>) -> Outcome {
    let desired = desired_replicas(o)?;
    let total = o.count("status.replicas")?;
    let updated = o.count("status.updatedReplicas")?;
    let available = o.count("status.availableReplicas")?;

    if o.flag("spec.paused")? {
        // While paused the controller still scales, but does not roll out: only availability
        // can change, so only availability is waited for.
        return Ok(if available < desired {
            progressing(format!("rollout paused, {available}/{desired} replicas available"))
        } else {
            healthy(format!("rollout paused, {updated}/{desired} replicas updated"))
        });
    }

    let conditions = o.conditions()?;
    if let Some(c) = find(&conditions, "Progressing").filter(|c| c.reason == "ProgressDeadlineExceeded") {
        return Ok(degraded(match c.message {
            "" => "rollout failed: progress deadline exceeded".to_owned(),
            message => format!("rollout failed: progress deadline exceeded: {message}"),
        }));
    }
    if let Some(c) = find_with(&conditions, "ReplicaFailure", "True") {
        return Ok(degraded(format!("ReplicaFailure: {}", c.describe("cannot create pods"))));
    }
    if updated < desired {
        return Ok(progressing(format!("{updated}/{desired} replicas updated")));
    }
    if total > updated {
        return Ok(progressing(format!("{} old replicas pending termination", total - updated)));
    }
    if available < desired {
        return Ok(progressing(format!("{available}/{desired} replicas available")));
    }
    Ok(if desired == 0 { healthy("scaled to zero") } else { healthy(format!("{available}/{desired} replicas available")) })
}

fn stateful_set(o: &Fields<'_>) -> Outcome {
    let desired = desired_replicas(o)?;
    let total = o.count("status.replicas")?;
    let ready = o.count("status.readyReplicas")?;
    let updated = o.count("status.updatedReplicas")?;

    if ready < desired {
        return Ok(progressing(format!("{ready}/{desired} replicas ready")));
    }
    // `availableReplicas` (ready for minReadySeconds) is only reported by recent API servers.
    if let Some(available) = o.int("status.availableReplicas")? {
        if available < desired {
            return Ok(progressing(format!("{available}/{desired} replicas available")));
        }
    }
    if total > desired {
        return Ok(progressing(format!("{} extra replicas pending termination", total - desired)));
    }
    if o.str("spec.updateStrategy.type")? == "OnDelete" {
        // Pods are only replaced when someone deletes them: there is no rollout to wait for.
        return Ok(healthy(format!("{ready}/{desired} replicas ready (OnDelete update strategy)")));
    }
    let partition = o.count("spec.updateStrategy.rollingUpdate.partition")?;
    if partition > 0 {
        // Only the ordinals at or above the partition are updated; the current revision stays.
        let expected = (desired - partition).max(0);
        return Ok(if updated < expected {
            progressing(format!("{updated}/{expected} replicas updated (partition {partition})"))
        } else {
            healthy(format!("{ready}/{desired} replicas ready, partitioned rollout complete"))
        });
    }
    if updated < desired {
        return Ok(progressing(format!("{updated}/{desired} replicas updated")));
    }
    let current = o.str("status.currentRevision")?;
    let update = o.str("status.updateRevision")?;
    if current != update {
        return Ok(progressing(format!("waiting for revision {update} to replace {current}")));
    }
    Ok(if desired == 0 { healthy("scaled to zero") } else { healthy(format!("{ready}/{desired} replicas ready")) })
}

fn daemon_set(o: &Fields<'_>) -> Outcome {
    // Before the controller has written a status every count is 0, which would look done.
    if o.int("status.observedGeneration")?.is_none() {
        return Ok(progressing("waiting for the controller to report status"));
    }
    let desired = o.count("status.desiredNumberScheduled")?;
    let updated = o.count("status.updatedNumberScheduled")?;
    let available = o.count("status.numberAvailable")?;

    if updated < desired && o.str("spec.updateStrategy.type")? != "OnDelete" {
        return Ok(progressing(format!("{updated}/{desired} pods updated")));
    }
    if available < desired {
        return Ok(progressing(format!("{available}/{desired} pods available")));
    }
    Ok(healthy(format!("{available}/{desired} pods available")))
}

fn replica_set(o: &Fields<'_>) -> Outcome {
    let desired = desired_replicas(o)?;
    let total = o.count("status.replicas")?;
    let available = o.count("status.availableReplicas")?;

    if let Some(c) = find_with(&o.conditions()?, "ReplicaFailure", "True") {
        return Ok(degraded(format!("ReplicaFailure: {}", c.describe("cannot create pods"))));
    }
    if available < desired {
        return Ok(progressing(format!("{available}/{desired} replicas available")));
    }
    if total > desired {
        return Ok(progressing(format!("{} extra replicas pending termination", total - desired)));
    }
    Ok(healthy(format!("{available}/{desired} replicas available")))
}

/// Container waiting reasons that do not resolve without a change to the Pod, its image or its
/// configuration.
const FAILING_WAIT_REASONS: [&str; 6] =
    ["CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"];

fn pod(o: &Fields<'_>) -> Outcome {
    let phase = o.str("status.phase")?;
    match phase {
        "Succeeded" => return Ok(healthy("Succeeded")),
        "Failed" => {
            let mut reason = String::from("Failed");
            for part in [o.str("status.reason")?, o.str("status.message")?] {
                if !part.is_empty() {
                    reason.push_str(": ");
                    reason.push_str(part.trim());
                }
            }
            return Ok(degraded(reason));
        }
        "Unknown" => return Ok(unknown("phase Unknown: the node stopped reporting")),
        _ => {}
    }
    let conditions = o.conditions()?;
    if find_with(&conditions, "Ready", "True").is_some() {
        return Ok(healthy("Ready"));
    }
    for list in ["status.initContainerStatuses", "status.containerStatuses"] {
        for (index, entry) in o.list(list)?.iter().enumerate() {
            let container = o.nested(entry, format!("{list}[{index}]"))?;
            let reason = container.str("state.waiting.reason")?;
            if FAILING_WAIT_REASONS.contains(&reason) {
                let name = container.str("name")?;
                let message = container.str("state.waiting.message")?.trim();
                return Ok(degraded(if message.is_empty() {
                    format!("{reason} in container {name}")
                } else {
                    format!("{reason} in container {name}: {message}")
                }));
            }
        }
    }
    Ok(progressing(match phase {
        "" => "phase not reported yet".to_owned(),
        "Pending" => match find_with(&conditions, "PodScheduled", "False") {
            Some(c) => format!("Pending: {}", c.describe("not scheduled")),
            None => "Pending".to_owned(),
        },
        phase => match find(&conditions, "Ready").map(|c| c.message.trim()) {
            Some(message) if !message.is_empty() => format!("{phase}, not ready: {message}"),
            _ => format!("{phase}, not ready"),
        },
    }))
}

fn job(o: &Fields<'_>) -> Outcome {
    let conditions = o.conditions()?;
    let succeeded = o.count("status.succeeded")?;
    if find_with(&conditions, "Complete", "True").is_some() {
        return Ok(healthy(format!("Complete, {succeeded} succeeded")));
    }
    // FailureTarget comes first: the outcome is decided, Failed follows once pods terminate.
    for failure in ["Failed", "FailureTarget"] {
        if let Some(c) = find_with(&conditions, failure, "True") {
            return Ok(degraded(format!("Failed: {}", c.describe("the job failed"))));
        }
    }
    if o.flag("spec.suspend")? || find_with(&conditions, "Suspended", "True").is_some() {
        return Ok(healthy("suspended"));
    }
    let active = o.count("status.active")?;
    let failed = o.count("status.failed")?;
    Ok(progressing(if failed > 0 {
        format!("{active} active, {succeeded} succeeded, {failed} failed")
    } else {
        format!("{active} active, {succeeded} succeeded")
    }))
}

fn cron_job(o: &Fields<'_>) -> Outcome {
    if o.flag("spec.suspend")? {
        return Ok(healthy("suspended"));
    }
    Ok(match o.str("spec.schedule")? {
        "" => healthy("scheduled"),
        schedule => healthy(format!("schedule {schedule}")),
    })
}

fn persistent_volume_claim(o: &Fields<'_>) -> Outcome {
    Ok(match o.str("status.phase")? {
        "Bound" => healthy("Bound"),
        "Lost" => degraded("Lost: the bound volume no longer exists"),
        "" => progressing("Pending"),
        phase => progressing(phase),
    })
}

fn persistent_volume(o: &Fields<'_>) -> Outcome {
    Ok(match o.str("status.phase")? {
        phase @ ("Bound" | "Available" | "Released") => healthy(phase),
        "Failed" => {
            let message = o.str("status.message")?.trim();
            let reason = o.str("status.reason")?.trim();
            degraded(match (reason, message) {
                ("", "") => "Failed".to_owned(),
                ("", text) | (text, "") => format!("Failed: {text}"),
                (reason, message) => format!("Failed: {reason}: {message}"),
            })
        }
        "" => progressing("phase not reported yet"),
        phase => progressing(phase),
    })
}

fn service(o: &Fields<'_>) -> Outcome {
    let kind = match o.str("spec.type")? {
        "" => "ClusterIP",
        kind => kind,
    };
    if kind != "LoadBalancer" {
        return Ok(healthy(format!("{kind} service")));
    }
    match address(o)? {
        Some("") => Ok(healthy("load balancer address assigned")),
        Some(address) => Ok(healthy(format!("load balancer at {address}"))),
        None => Ok(progressing("waiting for a load balancer address")),
    }
}

/// The first `status.loadBalancer.ingress` entry's IP or hostname (empty when it has neither),
/// or `None` when the list is empty.
fn address<'a>(o: &Fields<'a>) -> Result<Option<&'a str>, Malformed> {
    let Some(first) = o.list("status.loadBalancer.ingress")?.first() else {
        return Ok(None);
    };
    let entry = o.nested(first, "status.loadBalancer.ingress[0]".to_owned())?;
    Ok(Some(match entry.str("ip")? {
        "" => entry.str("hostname")?,
        ip => ip,
    }))
}

fn ingress(o: &Fields<'_>) -> Outcome {
    // Many ingress controllers never publish an address, so none is waited for.
    Ok(match address(o)? {
        Some(address) if !address.is_empty() => healthy(format!("address {address}")),
        _ => healthy("ready (an address is not waited for)"),
    })
}

fn custom_resource_definition(o: &Fields<'_>) -> Outcome {
    let conditions = o.conditions()?;
    if let Some(c) = find_with(&conditions, "NamesAccepted", "False") {
        return Ok(degraded(format!("names not accepted: {}", c.describe("conflict"))));
    }
    if find_with(&conditions, "Established", "True").is_some() {
        return Ok(healthy("Established"));
    }
    Ok(progressing("waiting for the definition to be established"))
}

fn namespace(o: &Fields<'_>) -> Outcome {
    Ok(match o.str("status.phase")? {
        "Active" => healthy("Active"),
        "" => progressing("phase not reported yet"),
        phase => progressing(phase),
    })
}

fn horizontal_pod_autoscaler(o: &Fields<'_>) -> Outcome {
    let current = o.count("status.currentReplicas")?;
    let desired = o.count("status.desiredReplicas")?;
    Ok(healthy(format!("{current} current, {desired} desired replicas")))
}

fn pod_disruption_budget(o: &Fields<'_>) -> Outcome {
    let allowed = o.count("status.disruptionsAllowed")?;
    Ok(healthy(format!("{allowed} disruptions allowed")))
}

/// Custom resources and every other kind: the kstatus conditions, and the Ready condition.
fn conditions_only(o: &Fields<'_>) -> Outcome {
    let conditions = o.conditions()?;
    if let Some(c) = find_with(&conditions, "Stalled", "True") {
        return Ok(degraded(c.describe("stalled")));
    }
    if let Some(c) = find_with(&conditions, "Reconciling", "True") {
        return Ok(progressing(c.describe("reconciling")));
    }
    if let Some(c) = find(&conditions, "Ready") {
        return Ok(match c.status {
            "True" => healthy(c.describe("Ready")),
            "False" => progressing(c.describe("not ready")),
            _ => progressing(c.describe("readiness unknown")),
        });
    }
    Ok(healthy(if conditions.is_empty() { "no status conditions" } else { "no readiness conditions" }))
}

/// One entry of `status.conditions`; missing fields are empty.
#[derive(Clone, Copy, Debug)]
struct Condition<'a> {
    kind: &'a str,
    status: &'a str,
    reason: &'a str,
    message: &'a str,
}

impl Condition<'_> {
    /// `"reason: message"`, or whichever of the two is set, or `fallback`.
    fn describe(&self, fallback: &str) -> String {
        match (self.reason.trim(), self.message.trim()) {
            ("", "") => fallback.to_owned(),
            ("", text) | (text, "") => text.to_owned(),
            (reason, message) => format!("{reason}: {message}"),
        }
    }
}

/// The first condition of the type.
fn find<'c, 'a>(conditions: &'c [Condition<'a>], kind: &str) -> Option<&'c Condition<'a>> {
    conditions.iter().find(|c| c.kind == kind)
}

/// The first condition of the type, if it has the status.
fn find_with<'c, 'a>(conditions: &'c [Condition<'a>], kind: &str, status: &str) -> Option<&'c Condition<'a>> {
    find(conditions, kind).filter(|c| c.status == status)
}

/// Typed, non-panicking reads of dotted paths in a JSON value. A missing field or a `null` is
/// absent; a field (or an intermediate object) of the wrong type is [`Malformed`].
struct Fields<'a> {
    root: &'a Value,
    /// The path of `root` in the whole object, for messages (empty for the object itself).
    at: String,
}

impl<'a> Fields<'a> {
    fn new(root: &'a Value) -> Self {
        Fields { root, at: String::new() }
    }

    /// The fields of a value nested at `at` (e.g. a list entry), which must be an object.
    fn nested(&self, value: &'a Value, at: String) -> Result<Fields<'a>, Malformed> {
        if value.is_object() {
            Ok(Fields { root: value, at })
        } else {
            Err(Malformed(format!("{at} is not an object")))
        }
    }

    /// The full path of `path`, for messages.
    fn full(&self, path: &str) -> String {
        if self.at.is_empty() {
            path.to_owned()
        } else {
            format!("{}.{path}", self.at)
        }
    }

    fn get(&self, path: &str) -> Result<Option<&'a Value>, Malformed> {
        let mut current = self.root;
        let mut walked = 0;
        for key in path.split('.') {
            let Value::Object(map) = current else {
                let parent = match walked {
                    0 if self.at.is_empty() => "the object".to_owned(),
                    0 => self.at.clone(),
                    _ => self.full(&path[..walked - 1]),
                };
                return Err(Malformed(format!("{parent} is not an object")));
            };
            match map.get(key) {
                None | Some(Value::Null) => return Ok(None),
                Some(value) => current = value,
            }
            walked += key.len() + 1;
        }
        Ok(Some(current))
    }

    fn int(&self, path: &str) -> Result<Option<i64>, Malformed> {
        match self.get(path)? {
            None => Ok(None),
            Some(value) => value.as_i64().map(Some).ok_or_else(|| Malformed(format!("{} is not an integer", self.full(path)))),
        }
    }

    /// An integer that counts as 0 when missing.
    fn count(&self, path: &str) -> Result<i64, Malformed> {
        Ok(self.int(path)?.unwrap_or(0))
    }

    /// A string that counts as empty when missing.
    fn str(&self, path: &str) -> Result<&'a str, Malformed> {
        match self.get(path)? {
            None => Ok(""),
            Some(value) => value.as_str().ok_or_else(|| Malformed(format!("{} is not a string", self.full(path)))),
        }
    }

    /// A boolean that counts as false when missing.
    fn flag(&self, path: &str) -> Result<bool, Malformed> {
        match self.get(path)? {
            None => Ok(false),
            Some(value) => value.as_bool().ok_or_else(|| Malformed(format!("{} is not a boolean", self.full(path)))),
        }
    }

    /// A list that counts as empty when missing.
    fn list(&self, path: &str) -> Result<&'a [Value], Malformed> {
        match self.get(path)? {
            None => Ok(&[]),
            Some(value) => value.as_array().map(Vec::as_slice).ok_or_else(|| Malformed(format!("{} is not a list", self.full(path)))),
        }
    }

    /// `status.conditions`.
    fn conditions(&self) -> Result<Vec<Condition<'a>>, Malformed> {
        const PATH: &str = "status.conditions";
        self.list(PATH)?
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let c = self.nested(entry, self.full(&format!("{PATH}[{index}]")))?;
                Ok(Condition { kind: c.str("type")?, status: c.str("status")?, reason: c.str("reason")?, message: c.str("message")? })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(group: &str, kind: &str, object: Value, health: Health, reason: &str) {
        let status = evaluate(group, kind, &object);
        assert_eq!(status.health, health, "{kind}: {status:?}");
        assert!(status.reason.contains(reason), "{kind}: reason {:?} lacks {reason:?}", status.reason);
    }

    fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
        json!({"type": kind, "status": status, "reason": reason, "message": message})
    }

    // Health and worst

    #[test]
    fn worst_orders_degraded_over_unknown_over_progressing_over_healthy() {
        use Health::*;
        assert!(Healthy < Progressing && Progressing < Unknown && Unknown < Degraded);
        assert_eq!(worst(&[]), Healthy);
        assert_eq!(worst(&[Healthy, Healthy]), Healthy);
        assert_eq!(worst(&[Healthy, Progressing, Healthy]), Progressing);
        assert_eq!(worst(&[Progressing, Unknown]), Unknown);
        assert_eq!(worst(&[Unknown, Degraded, Healthy]), Degraded);
        assert_eq!(worst(std::collections::HashSet::from([Degraded, Progressing]).iter()), Degraded);
    }

    #[test]
    fn names_and_serialization() {
        assert_eq!(Health::Healthy.as_str(), "Healthy");
        assert_eq!(Health::Progressing.as_str(), "Progressing");
        assert_eq!(Health::Degraded.as_str(), "Degraded");
        assert_eq!(Health::Unknown.as_str(), "Unknown");
        assert_eq!(Health::Degraded.to_string(), "Degraded");
        let status = Status::new(Health::Progressing, "1/2 replicas available");
        assert_eq!(serde_json::to_value(&status).unwrap(), json!({"health": "Progressing", "reason": "1/2 replicas available"}));
    }

    // Generic checks

    #[test]
    fn an_object_being_deleted_is_progressing() {
        let object = json!({
            "metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z", "generation": 1},
            "spec": {"replicas": 1},
            "status": {"replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
        });
        check("apps", "Deployment", object, Health::Progressing, "being deleted");
        let object = json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}});
        check("", "ConfigMap", object, Health::Progressing, "being deleted");
    }

    #[test]
    fn a_stale_observed_generation_is_progressing() {
        let object = json!({
            "metadata": {"generation": 3},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
        });
        check("apps", "Deployment", object, Health::Progressing, "observe generation 3");
    }

    #[test]
    fn a_custom_resource_with_a_stale_observed_generation_is_progressing() {
        let object = json!({
            "metadata": {"generation": 5},
            "status": {"observedGeneration": 4, "conditions": [condition("Ready", "True", "Succeeded", "")]},
        });
        check("example.com", "Widget", object, Health::Progressing, "observe generation 5");
    }

    #[test]
    fn garbage_input_is_unknown_and_never_panics() {
        for object in [json!(null), json!(42), json!("Deployment"), json!([1, 2])] {
            check("apps", "Deployment", object, Health::Unknown, "not a JSON object");
        }
        check("apps", "Deployment", json!({"status": "fine"}), Health::Unknown, "status is not an object");
        check("apps", "Deployment", json!({"status": {"replicas": "three"}}), Health::Unknown, "status.replicas is not an integer");
        check(
            "example.com",
            "Widget",
            json!({"status": {"conditions": {"Ready": true}}}),
            Health::Unknown,
            "status.conditions is not a list",
        );
        check(
            "example.com",
            "Widget",
            json!({"status": {"conditions": ["Ready"]}}),
            Health::Unknown,
            "status.conditions[0] is not an object",
        );
        check("", "Pod", json!({"metadata": 7}), Health::Unknown, "metadata is not an object");
        check(
            "",
            "Pod",
            json!({"status": {"phase": "Running", "containerStatuses": [{"name": "app", "state": "waiting"}]}}),
            Health::Unknown,
            "status.containerStatuses[0].state is not an object",
        );
        // Every kind survives an empty object.
        for (group, kind) in [
            ("apps", "Deployment"),
            ("apps", "StatefulSet"),
            ("apps", "DaemonSet"),
            ("apps", "ReplicaSet"),
            ("", "Pod"),
            ("batch", "Job"),
            ("batch", "CronJob"),
            ("", "PersistentVolumeClaim"),
            ("", "PersistentVolume"),
            ("", "Service"),
            ("networking.k8s.io", "Ingress"),
            ("apiextensions.k8s.io", "CustomResourceDefinition"),
            ("", "Namespace"),
            ("autoscaling", "HorizontalPodAutoscaler"),
            ("policy", "PodDisruptionBudget"),
            ("example.com", "Widget"),
        ] {
            let status = evaluate(group, kind, &json!({}));
            assert!(!status.reason.is_empty(), "{kind}: {status:?}");
            assert_ne!(status.health, Health::Unknown, "{kind}: {status:?}");
        }
    }

    #[test]
    fn nulls_count_as_missing() {
        let object = json!({"metadata": {"deletionTimestamp": null}, "spec": {"replicas": null}, "status": null});
        check("apps", "Deployment", object, Health::Progressing, "0/1 replicas updated");
    }

    // Deployment

    fn deployment(replicas: i64, total: i64, updated: i64, available: i64) -> Value {
        json!({
            "metadata": {"generation": 2},
            "spec": {"replicas": replicas},
            "status": {
                "observedGeneration": 2,
                "replicas": total,
                "updatedReplicas": updated,
                "availableReplicas": available,
            },
        })
    }

    #[test]
    fn a_rolled_out_deployment_is_healthy() {
        check("apps", "Deployment", deployment(3, 3, 3, 3), Health::Healthy, "3/3 replicas available");
    }

    #[test]
    fn a_deployment_mid_rollout_is_progressing() {
        check("apps", "Deployment", deployment(3, 4, 1, 3), Health::Progressing, "1/3 replicas updated");
    }

    #[test]
    fn a_deployment_with_old_replicas_still_around_is_progressing() {
        check("apps", "Deployment", deployment(3, 5, 3, 3), Health::Progressing, "2 old replicas pending termination");
    }

    #[test]
    fn a_deployment_short_of_available_replicas_is_progressing() {
        check("apps", "Deployment", deployment(3, 3, 3, 2), Health::Progressing, "2/3 replicas available");
    }

    #[test]
    fn a_deployment_scaled_to_zero_is_healthy() {
        check("apps", "Deployment", deployment(0, 0, 0, 0), Health::Healthy, "scaled to zero");
    }

    #[test]
    fn a_deployment_defaults_to_one_replica() {
        let object = json!({"status": {"replicas": 1, "updatedReplicas": 1}});
        check("apps", "Deployment", object, Health::Progressing, "0/1 replicas available");
    }

    #[test]
    fn a_deployment_past_its_progress_deadline_is_degraded() {
        let mut object = deployment(3, 4, 1, 3);
        object["status"]["conditions"] = json!([
            condition("Available", "True", "MinimumReplicasAvailable", ""),
            condition("Progressing", "False", "ProgressDeadlineExceeded", "ReplicaSet \"web-7d9\" has timed out progressing."),
        ]);
        check("apps", "Deployment", object, Health::Degraded, "progress deadline exceeded: ReplicaSet \"web-7d9\"");
    }

    #[test]
    fn a_deployment_with_a_replica_failure_is_degraded() {
        let mut object = deployment(2, 0, 0, 0);
        object["status"]["conditions"] =
            json!([condition("ReplicaFailure", "True", "FailedCreate", "pods \"web-1\" is forbidden: exceeded quota")]);
        check("apps", "Deployment", object, Health::Degraded, "FailedCreate: pods \"web-1\" is forbidden");
    }

    #[test]
    fn a_paused_deployment_is_healthy_once_available() {
        let mut object = deployment(3, 4, 1, 3);
        object["spec"]["paused"] = json!(true);
        check("apps", "Deployment", object.clone(), Health::Healthy, "rollout paused, 1/3 replicas updated");
        object["status"]["availableReplicas"] = json!(2);
        check("apps", "Deployment", object, Health::Progressing, "rollout paused, 2/3 replicas available");
    }

    #[test]
    fn a_custom_resource_named_deployment_follows_its_conditions() {
        let object = json!({"status": {"conditions": [condition("Ready", "True", "", "")]}});
        check("example.com", "Deployment", object, Health::Healthy, "Ready");
    }

    // StatefulSet

    fn stateful_set(replicas: i64, ready: i64, updated: i64, current: &str, update: &str) -> Value {
        json!({
            "metadata": {"generation": 1},
            "spec": {"replicas": replicas},
            "status": {
                "observedGeneration": 1,
                "replicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": updated,
                "currentRevision": current,
                "updateRevision": update,
            },
        })
    }

    #[test]
    fn a_rolled_out_stateful_set_is_healthy() {
        check("apps", "StatefulSet", stateful_set(3, 3, 3, "db-1", "db-1"), Health::Healthy, "3/3 replicas ready");
    }

    #[test]
    fn a_stateful_set_short_of_ready_replicas_is_progressing() {
        check("apps", "StatefulSet", stateful_set(3, 1, 3, "db-1", "db-1"), Health::Progressing, "1/3 replicas ready");
    }

    #[test]
    fn a_stateful_set_with_a_revision_mismatch_is_progressing() {
        check("apps", "StatefulSet", stateful_set(3, 3, 3, "db-1", "db-2"), Health::Progressing, "revision db-2");
        check("apps", "StatefulSet", stateful_set(3, 3, 1, "db-1", "db-2"), Health::Progressing, "1/3 replicas updated");
    }

    #[test]
    fn an_on_delete_stateful_set_skips_the_revision_check() {
        let mut object = stateful_set(3, 3, 1, "db-1", "db-2");
        object["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        check("apps", "StatefulSet", object.clone(), Health::Healthy, "OnDelete");
        object["status"]["readyReplicas"] = json!(2);
        check("apps", "StatefulSet", object, Health::Progressing, "2/3 replicas ready");
    }

    #[test]
    fn a_partitioned_stateful_set_waits_for_the_ordinals_above_the_partition() {
        let mut object = stateful_set(4, 4, 1, "db-1", "db-2");
        object["spec"]["updateStrategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}});
        check("apps", "StatefulSet", object.clone(), Health::Progressing, "1/2 replicas updated (partition 2)");
        object["status"]["updatedReplicas"] = json!(2);
        check("apps", "StatefulSet", object, Health::Healthy, "partitioned rollout complete");
    }

    #[test]
    fn a_stateful_set_with_extra_replicas_is_progressing() {
        let mut object = stateful_set(2, 3, 3, "db-1", "db-1");
        object["status"]["replicas"] = json!(3);
        check("apps", "StatefulSet", object, Health::Progressing, "1 extra replicas pending termination");
    }

    #[test]
    fn a_stateful_set_scaled_to_zero_is_healthy() {
        check("apps", "StatefulSet", stateful_set(0, 0, 0, "db-1", "db-1"), Health::Healthy, "scaled to zero");
    }

    // DaemonSet

    fn daemon_set(desired: i64, updated: i64, available: Option<i64>) -> Value {
        let mut object = json!({
            "metadata": {"generation": 4},
            "status": {
                "observedGeneration": 4,
                "desiredNumberScheduled": desired,
                "updatedNumberScheduled": updated,
                "numberMisscheduled": 1,
            },
        });
        if let Some(available) = available {
            object["status"]["numberAvailable"] = json!(available);
        }
        object
    }

    #[test]
    fn a_rolled_out_daemon_set_is_healthy_despite_misscheduled_pods() {
        check("apps", "DaemonSet", daemon_set(3, 3, Some(3)), Health::Healthy, "3/3 pods available");
    }

    #[test]
    fn a_daemon_set_mid_rollout_is_progressing() {
        check("apps", "DaemonSet", daemon_set(3, 2, Some(3)), Health::Progressing, "2/3 pods updated");
    }

    #[test]
    fn a_daemon_set_without_number_available_is_progressing() {
        check("apps", "DaemonSet", daemon_set(3, 3, None), Health::Progressing, "0/3 pods available");
    }

    #[test]
    fn a_daemon_set_without_status_is_progressing() {
        check("apps", "DaemonSet", json!({"metadata": {"generation": 1}}), Health::Progressing, "report status");
    }

    // ReplicaSet

    #[test]
    fn a_replica_set_compares_available_to_desired() {
        let object = json!({"spec": {"replicas": 2}, "status": {"replicas": 2, "availableReplicas": 2}});
        check("apps", "ReplicaSet", object, Health::Healthy, "2/2 replicas available");
        let object = json!({"spec": {"replicas": 2}, "status": {"replicas": 2, "availableReplicas": 1}});
        check("apps", "ReplicaSet", object, Health::Progressing, "1/2 replicas available");
    }

    // Pod

    #[test]
    fn a_ready_pod_is_healthy() {
        let object = json!({"status": {"phase": "Running", "conditions": [condition("Ready", "True", "", "")]}});
        check("", "Pod", object, Health::Healthy, "Ready");
    }

    #[test]
    fn a_succeeded_pod_is_healthy() {
        check("", "Pod", json!({"status": {"phase": "Succeeded"}}), Health::Healthy, "Succeeded");
    }

    #[test]
    fn a_failed_pod_is_degraded_with_its_reason() {
        let object = json!({"status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}});
        check("", "Pod", object, Health::Degraded, "Failed: Evicted: The node was low on resource: memory.");
        check("", "Pod", json!({"status": {"phase": "Failed"}}), Health::Degraded, "Failed");
    }

    #[test]
    fn a_crash_looping_pod_is_degraded() {
        let object = json!({"status": {
            "phase": "Running",
            "conditions": [condition("Ready", "False", "ContainersNotReady", "containers with unready status: [app]")],
            "containerStatuses": [
                {"name": "sidecar", "ready": true, "state": {"running": {}}},
                {"name": "app", "ready": false, "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}},
            ],
        }});
        check("", "Pod", object, Health::Degraded, "CrashLoopBackOff in container app");
    }

    #[test]
    fn a_pod_that_cannot_pull_its_image_is_degraded() {
        let object = json!({"status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {"name": "migrate", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"db:nope\""}}},
            ],
        }});
        check("", "Pod", object, Health::Degraded, "ImagePullBackOff in container migrate: Back-off pulling image");
    }

    #[test]
    fn a_pod_with_a_missing_config_map_is_degraded() {
        let object = json!({"status": {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "app", "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "configmap \"app\" not found"}}},
            ],
        }});
        check("", "Pod", object, Health::Degraded, "CreateContainerConfigError");
    }

    #[test]
    fn a_starting_pod_is_progressing() {
        let object = json!({"status": {
            "phase": "Running",
            "conditions": [condition("Ready", "False", "ContainersNotReady", "containers with unready status: [app]")],
            "containerStatuses": [{"name": "app", "state": {"running": {}}}],
        }});
        check("", "Pod", object, Health::Progressing, "Running, not ready: containers with unready status: [app]");
        let object = json!({"status": {
            "phase": "Pending",
            "containerStatuses": [{"name": "app", "state": {"waiting": {"reason": "ContainerCreating"}}}],
        }});
        check("", "Pod", object, Health::Progressing, "Pending");
        check("", "Pod", json!({"metadata": {"name": "new"}}), Health::Progressing, "phase not reported yet");
    }

    #[test]
    fn an_unschedulable_pod_is_progressing_with_the_scheduler_message() {
        let object = json!({"status": {
            "phase": "Pending",
            "conditions": [condition("PodScheduled", "False", "Unschedulable", "0/3 nodes are available: 3 Insufficient cpu.")],
        }});
        check("", "Pod", object, Health::Progressing, "Pending: Unschedulable: 0/3 nodes are available");
    }

    #[test]
    fn a_pod_on_a_lost_node_is_unknown() {
        check("", "Pod", json!({"status": {"phase": "Unknown"}}), Health::Unknown, "phase Unknown");
    }

    // Job and CronJob

    #[test]
    fn a_complete_job_is_healthy() {
        let object = json!({"status": {"succeeded": 1, "conditions": [condition("Complete", "True", "", "")]}});
        check("batch", "Job", object, Health::Healthy, "Complete, 1 succeeded");
    }

    #[test]
    fn a_failed_job_is_degraded_with_its_reason() {
        let object = json!({"status": {"failed": 7, "conditions": [
            condition("FailureTarget", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            condition("Failed", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
        ]}});
        check("batch", "Job", object, Health::Degraded, "BackoffLimitExceeded: Job has reached the specified backoff limit");
    }

    #[test]
    fn a_job_about_to_fail_is_degraded() {
        let object = json!({"status": {"active": 1, "conditions": [
            condition("FailureTarget", "True", "DeadlineExceeded", "Job was active longer than specified deadline"),
        ]}});
        check("batch", "Job", object, Health::Degraded, "DeadlineExceeded");
    }

    #[test]
    fn an_active_job_is_progressing() {
        let object = json!({"status": {"startTime": "2024-01-01T00:00:00Z", "active": 2, "succeeded": 3}});
        check("batch", "Job", object, Health::Progressing, "2 active, 3 succeeded");
        let object = json!({"status": {"active": 1, "failed": 2}});
        check("batch", "Job", object, Health::Progressing, "1 active, 0 succeeded, 2 failed");
    }

    #[test]
    fn a_suspended_job_is_healthy() {
        check("batch", "Job", json!({"spec": {"suspend": true}}), Health::Healthy, "suspended");
        let object = json!({"status": {"conditions": [condition("Suspended", "True", "JobSuspended", "")]}});
        check("batch", "Job", object, Health::Healthy, "suspended");
    }

    #[test]
    fn a_cron_job_is_healthy_and_notes_suspension() {
        check("batch", "CronJob", json!({"spec": {"schedule": "*/5 * * * *"}}), Health::Healthy, "schedule */5 * * * *");
        check("batch", "CronJob", json!({"spec": {"schedule": "@daily", "suspend": true}}), Health::Healthy, "suspended");
    }

    // Volumes

    #[test]
    fn a_bound_claim_is_healthy() {
        check("", "PersistentVolumeClaim", json!({"status": {"phase": "Bound"}}), Health::Healthy, "Bound");
    }

    #[test]
    fn a_pending_claim_is_progressing() {
        check("", "PersistentVolumeClaim", json!({"status": {"phase": "Pending"}}), Health::Progressing, "Pending");
        check("", "PersistentVolumeClaim", json!({"spec": {}}), Health::Progressing, "Pending");
    }

    #[test]
    fn a_lost_claim_is_degraded() {
        check("", "PersistentVolumeClaim", json!({"status": {"phase": "Lost"}}), Health::Degraded, "Lost");
    }

    #[test]
    fn persistent_volume_phases() {
        check("", "PersistentVolume", json!({"status": {"phase": "Available"}}), Health::Healthy, "Available");
        check("", "PersistentVolume", json!({"status": {"phase": "Bound"}}), Health::Healthy, "Bound");
        check("", "PersistentVolume", json!({"status": {"phase": "Released"}}), Health::Healthy, "Released");
        let failed = json!({"status": {"phase": "Failed", "message": "recycler failed"}});
        check("", "PersistentVolume", failed, Health::Degraded, "Failed: recycler failed");
        check("", "PersistentVolume", json!({"status": {"phase": "Pending"}}), Health::Progressing, "Pending");
    }

    // Service and Ingress

    #[test]
    fn a_load_balancer_with_an_address_is_healthy() {
        let object = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}});
        check("", "Service", object, Health::Healthy, "load balancer at 203.0.113.7");
        let object = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}]}}});
        check("", "Service", object, Health::Healthy, "lb.example.com");
    }

    #[test]
    fn a_load_balancer_without_an_address_is_progressing() {
        let object = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}});
        check("", "Service", object, Health::Progressing, "waiting for a load balancer address");
        let object = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": []}}});
        check("", "Service", object, Health::Progressing, "waiting for a load balancer address");
    }

    #[test]
    fn other_services_are_healthy() {
        check("", "Service", json!({"spec": {"type": "NodePort"}}), Health::Healthy, "NodePort service");
        check("", "Service", json!({"spec": {}}), Health::Healthy, "ClusterIP service");
    }

    #[test]
    fn an_ingress_is_healthy_without_an_address() {
        check("networking.k8s.io", "Ingress", json!({"status": {"loadBalancer": {}}}), Health::Healthy, "not waited for");
        let object = json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.2"}]}}});
        check("networking.k8s.io", "Ingress", object, Health::Healthy, "address 198.51.100.2");
    }

    // CustomResourceDefinition and Namespace

    #[test]
    fn an_established_definition_is_healthy() {
        let object = json!({"status": {"conditions": [
            condition("NamesAccepted", "True", "NoConflicts", "no conflicts found"),
            condition("Established", "True", "InitialNamesAccepted", "the initial names have been accepted"),
        ]}});
        check("apiextensions.k8s.io", "CustomResourceDefinition", object, Health::Healthy, "Established");
    }

    #[test]
    fn a_definition_whose_names_are_not_accepted_is_degraded() {
        let object = json!({"status": {"conditions": [
            condition("NamesAccepted", "False", "PluralConflict", "\"widgets\" is already in use"),
            condition("Established", "False", "NotAccepted", "not all names are accepted"),
        ]}});
        check(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            object,
            Health::Degraded,
            "PluralConflict: \"widgets\" is already in use",
        );
    }

    #[test]
    fn a_definition_being_installed_is_progressing() {
        let object = json!({"status": {"conditions": [condition("Established", "False", "Installing", "")]}});
        check("apiextensions.k8s.io", "CustomResourceDefinition", object, Health::Progressing, "established");
    }

    #[test]
    fn namespace_phases() {
        check("", "Namespace", json!({"status": {"phase": "Active"}}), Health::Healthy, "Active");
        check("", "Namespace", json!({"status": {"phase": "Terminating"}}), Health::Progressing, "Terminating");
    }

    // Autoscaling and disruption budgets

    #[test]
    fn an_autoscaler_is_healthy_even_without_metrics() {
        let object = json!({"status": {"currentReplicas": 2, "desiredReplicas": 3, "conditions": [
            condition("ScalingActive", "False", "FailedGetResourceMetric", "unable to get metrics"),
        ]}});
        check("autoscaling", "HorizontalPodAutoscaler", object, Health::Healthy, "2 current, 3 desired replicas");
    }

    #[test]
    fn a_disruption_budget_is_healthy_once_observed() {
        let object = json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "disruptionsAllowed": 1}});
        check("policy", "PodDisruptionBudget", object, Health::Healthy, "1 disruptions allowed");
        let object = json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 1}});
        check("policy", "PodDisruptionBudget", object, Health::Progressing, "observe generation 2");
    }

    // Custom resources and other kinds

    #[test]
    fn a_ready_custom_resource_is_healthy() {
        let object = json!({
            "metadata": {"generation": 2},
            "status": {"observedGeneration": 2, "conditions": [
                condition("Ready", "True", "ReconciliationSucceeded", "Applied revision: main@sha1:abc"),
            ]},
        });
        check("kustomize.toolkit.fluxcd.io", "Kustomization", object, Health::Healthy, "Applied revision: main@sha1:abc");
    }

    #[test]
    fn a_custom_resource_not_ready_is_progressing() {
        let object =
            json!({"status": {"conditions": [condition("Ready", "False", "Issuing", "Issuing certificate as Secret does not exist")]}});
        check("cert-manager.io", "Certificate", object, Health::Progressing, "Issuing: Issuing certificate");
        let object = json!({"status": {"conditions": [condition("Ready", "Unknown", "", "")]}});
        check("cert-manager.io", "Certificate", object, Health::Progressing, "readiness unknown");
    }

    #[test]
    fn a_stalled_custom_resource_is_degraded() {
        let object = json!({"status": {"conditions": [
            condition("Ready", "False", "BuildFailed", "kustomize build failed"),
            condition("Stalled", "True", "BuildFailed", "kustomize build failed"),
        ]}});
        check("kustomize.toolkit.fluxcd.io", "Kustomization", object, Health::Degraded, "BuildFailed: kustomize build failed");
    }

    #[test]
    fn a_reconciling_custom_resource_is_progressing_even_if_ready() {
        let object = json!({"status": {"conditions": [
            condition("Ready", "True", "Succeeded", ""),
            condition("Reconciling", "True", "Progressing", "fetching revision main@sha1:def"),
        ]}});
        check("source.toolkit.fluxcd.io", "GitRepository", object, Health::Progressing, "fetching revision");
    }

    #[test]
    fn a_resource_without_conditions_is_healthy() {
        check("", "ConfigMap", json!({"data": {"a": "b"}}), Health::Healthy, "no status conditions");
        let object = json!({"status": {"conditions": [condition("Available", "True", "", "")]}});
        check("apiregistration.k8s.io", "APIService", object, Health::Healthy, "no readiness conditions");
    }
}
