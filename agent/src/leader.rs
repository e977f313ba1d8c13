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

/// Decides from a lease's spec, who we are, and the time (milliseconds since the epoch).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now_ms: i64) -> Decision {
    let Some(spec) = spec else { return Decision::Acquire };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(h) if h == me => Decision::Renew,
        Some(_) => {
            let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0.as_millisecond());
            let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(0)) * 1000;
            match renewed {
                Some(r) if r + duration_ms > now_ms => Decision::Standby,
                _ => Decision::Acquire,
            }
        }
    }
}

/// Competes for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Elector { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into() }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt to take or renew the lease; true when this replica holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.identity, now.as_millisecond());
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
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    spec: Some(spec),
                };
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

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => debug!(identity = %self.identity, "standing by: another replica leads"),
                Err(e) => warn!(error = %e, "cannot reach the lease; standing by"),
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews until the lease is lost: another holder took it, or no renewal succeeded within
    /// the renew deadline. Returns then, so the caller stops writing at once.
    pub async fn hold(&self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(RETRY_PERIOD).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    warn!(identity = %self.identity, "another replica holds the lease");
                    return;
                }
                Err(e) => warn!(error = %e, "lease renewal failed"),
            }
            if last_renewed.elapsed() >= RENEW_DEADLINE {
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

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        assert_eq!(decide(None, "a", 0), Decision::Acquire);
        assert_eq!(decide(Some(&spec(None, 1_000, 15)), "a", 2_000), Decision::Acquire);
        assert_eq!(decide(Some(&spec(Some(""), 1_000, 15)), "a", 2_000), Decision::Acquire);
    }

    #[test]
    fn our_lease_is_renewed_even_when_late() {
        assert_eq!(decide(Some(&spec(Some("a"), 1_000, 15)), "a", 2_000), Decision::Renew);
        assert_eq!(decide(Some(&spec(Some("a"), 1_000, 15)), "a", 100_000), Decision::Renew);
    }

    #[test]
    fn another_holder_is_respected_until_the_lease_expires() {
        let held = spec(Some("b"), 1_000_000, 15);
        assert_eq!(decide(Some(&held), "a", 1_014_999), Decision::Standby);
        assert_eq!(decide(Some(&held), "a", 1_015_000), Decision::Acquire);
    }

    #[test]
    fn a_released_lease_expires_within_a_second() {
        let released = spec(Some("b"), 1_000_000, 1);
        assert_eq!(decide(Some(&released), "a", 1_001_000), Decision::Acquire);
    }

    #[test]
    fn timing_lets_a_leader_stop_before_anyone_may_take_over() {
        assert!(RENEW_DEADLINE + RETRY_PERIOD <= LEASE_DURATION);
    }
}
