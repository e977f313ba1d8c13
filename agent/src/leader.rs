//! Leader election over a `coordination.k8s.io` Lease in the agent's namespace, with client-go's
//! timing: a lease lasts 15 s, the leader renews every 2 s and gives up leading when it has not
//! renewed for 10 s, before anyone else may take over. Only the leader fetches, applies and
//! prunes; a standby serves health and metrics. On shutdown the leader releases the lease so a
//! standby takes over in seconds rather than a full lease duration.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tracing::{debug, info, warn};

use crate::cluster::fence::Fence;

/// How long a lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a leader keeps leading without a successful renewal.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a leader renews and a standby retries.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// What to do with the lease as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (or the holder let it expire): take it.
    Acquire,
    /// It is ours: renew it.
    Renew,
    /// Somebody else holds it and it is valid.
    Standby,
}

/// Decides from a lease's spec, who we are, and how long this replica has seen the lease's
/// record unchanged (by its own clock). As client-go does, a standby judges another holder's
/// lease by when it *observed* the last change, never by the holder's timestamps: a holder whose
/// clock runs behind (or ahead) can neither lose a valid lease nor keep a dead one.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = spec else { return Decision::Acquire };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(h) if h == me => Decision::Renew,
        Some(_) => {
            let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
            if unchanged_for < duration {
                Decision::Standby
            } else {
                Decision::Acquire
            }
        }
    }
}

/// Competes for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// The lease record last seen (holder, renewal, resourceVersion) and when it was first seen.
    observed: std::sync::Mutex<Option<(String, Instant)>>,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Elector { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), observed: Default::default() }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt to take or renew the lease; true when this replica holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let unchanged_for = self.observe(current.as_ref());
        let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.identity, unchanged_for);
        if decision == Decision::Standby {
            return Ok(false);
        }
        let previous = current.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
        let transitions = previous.lease_transitions.unwrap_or(0) + i32::from(decision == Decision::Acquire);
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: if decision == Decision::Acquire { Some(MicroTime(now)) } else { previous.acquire_time },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let result = match current {
            None => {
                let lease = Lease { metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() }, spec: Some(spec) };
                self.api.create(&PostParams::default(), &lease).await.map(|_| ())
            }
            Some(mut lease) => {
                // replace with the resourceVersion read above: a concurrent writer makes this a 409
                lease.spec = Some(spec);
                self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => {
                if decision == Decision::Acquire {
                    info!(identity = %self.identity, lease = %self.name, "acquired the lease: leading");
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// How long the lease's record has looked as it does now, by this replica's clock (zero when
    /// it just changed or was never seen).
    fn observe(&self, lease: Option<&Lease>) -> Duration {
        let record = lease.map(|l| {
            let spec = l.spec.as_ref();
            format!(
                "{:?}/{:?}/{:?}",
                spec.and_then(|s| s.holder_identity.as_deref()),
                spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.as_millisecond()),
                l.metadata.resource_version
            )
        });
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match (&*observed, record) {
            (Some((seen, at)), Some(now)) if *seen == now => at.elapsed(),
            (_, Some(now)) => {
                *observed = Some((now, Instant::now()));
                Duration::ZERO
            }
            (_, None) => {
                *observed = None;
                Duration::ZERO
            }
        }
    }

    /// Waits until this replica holds the lease, then opens `fence` until the renew deadline.
    pub async fn acquire(&self, fence: &Fence) {
        loop {
            let started = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    fence.lead_until(started + RENEW_DEADLINE);
                    return;
                }
                Ok(false) => debug!(identity = %self.identity, "standing by: another replica leads"),
                Err(e) => warn!(error = %e, "cannot reach the lease; standing by"),
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews until the lease is lost: another holder took it, or no renewal succeeded within
    /// the renew deadline. Returns then, so the caller stops writing at once.
    /// Each renewal is cut off at the renew deadline, so a hung API server cannot keep a leader
    /// leading past it. `fence` is told, after each renewal, until when this replica may write.
    pub async fn hold(&self, fence: &Fence) {
        // the fence was opened by the acquisition, at most a renew deadline from now
        let mut last_renewed = Instant::now();
        loop {
            let left = RENEW_DEADLINE.saturating_sub(last_renewed.elapsed());
            tokio::time::sleep(RETRY_PERIOD.min(left)).await;
            let left = RENEW_DEADLINE.saturating_sub(last_renewed.elapsed());
            let started = Instant::now();
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    // valid from when the renewal was sent, not from when its answer came
                    last_renewed = started;
                    fence.lead_until(started + RENEW_DEADLINE);
                }
                Ok(Ok(false)) => {
                    fence.stop();
                    warn!(identity = %self.identity, "another replica holds the lease");
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "lease renewal failed"),
                Err(_) => warn!(identity = %self.identity, "lease renewal timed out"),
            }
            if last_renewed.elapsed() >= RENEW_DEADLINE {
                fence.stop();
                warn!(identity = %self.identity, "no renewal within the deadline");
                return;
            }
        }
    }

    /// Gives the lease up (if still held), so a standby takes over at its next retry.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let ours = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.identity.as_str());
        if !ours {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(identity = %self.identity, "released the lease"),
            Err(e) => warn!(error = %e, "could not release the lease; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_ms: i64, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(Timestamp::from_millisecond(renewed_ms).unwrap())),
            ..LeaseSpec::default()
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        assert_eq!(decide(None, "a", S(0)), Decision::Acquire);
        assert_eq!(decide(Some(&spec(None, 1_000, 15)), "a", S(0)), Decision::Acquire);
        assert_eq!(decide(Some(&spec(Some(""), 1_000, 15)), "a", S(0)), Decision::Acquire);
    }

    #[test]
    fn our_lease_is_renewed_even_when_late() {
        assert_eq!(decide(Some(&spec(Some("a"), 1_000, 15)), "a", S(0)), Decision::Renew);
        assert_eq!(decide(Some(&spec(Some("a"), 1_000, 15)), "a", S(100)), Decision::Renew);
    }

    #[test]
    fn another_holder_is_respected_until_its_record_stood_still_for_the_lease_duration() {
        let held = spec(Some("b"), 1_000_000, 15);
        assert_eq!(decide(Some(&held), "a", S(14)), Decision::Standby);
        assert_eq!(decide(Some(&held), "a", S(15)), Decision::Acquire);
    }

    #[test]
    fn the_holders_clock_does_not_matter() {
        // renewed "an hour ago" by a clock that runs behind, but just seen to change: still valid
        let skewed = spec(Some("b"), 0, 15);
        assert_eq!(decide(Some(&skewed), "a", S(0)), Decision::Standby);
        // renewed "in the future" by a clock that runs ahead, and not renewed since: expired
        let ahead = spec(Some("b"), 200_000_000_000_000, 15);
        assert_eq!(decide(Some(&ahead), "a", S(16)), Decision::Acquire);
    }

    #[test]
    fn a_released_lease_expires_within_a_second() {
        let released = spec(Some("b"), 1_000_000, 1);
        assert_eq!(decide(Some(&released), "a", S(1)), Decision::Acquire);
    }

    #[test]
    fn timing_lets_a_leader_stop_before_anyone_may_take_over() {
        assert!(RENEW_DEADLINE + RETRY_PERIOD <= LEASE_DURATION);
    }
}
