//! Deletes: in the background, and only of the object that was read (preconditions).

use std::time::Duration;

use kube::api::{DeleteParams, Preconditions, PropagationPolicy};

use super::{api_message, status_code, wait, Cluster};
use crate::manifest::{ObjectRef, ResourceType};

/// How often [`Cluster::wait_gone`] looks.
const GONE_POLL: Duration = Duration::from_millis(200);

impl Cluster {
    /// Deletes an object in the background, only if it is still the object that was listed
    /// (same uid and resourceVersion, when `preconditions` say so). `Ok(false)` when it is already gone.
    pub async fn delete(&self, rt: &ResourceType, id: &ObjectRef, preconditions: Option<Preconditions>) -> Result<bool, kube::Error> {
        let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), preconditions, ..DeleteParams::default() };
        match self.api(rt, &id.namespace).delete(&id.name, &params).await {
            Ok(_) => Ok(true),
            Err(e) if status_code(&e) == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until an object is gone (after a delete), up to `timeout`.
    pub async fn wait_gone(&self, rt: &ResourceType, id: &ObjectRef, timeout: Duration) -> Result<(), String> {
        let outcome = wait::until(timeout, GONE_POLL, || async {
            match self.get_metadata(rt, id).await {
                Ok(None) => wait::Poll::Done(()),
                Ok(Some(_)) => wait::Poll::Pending(()),
                Err(e) => wait::Poll::Failed(api_message(&e)),
            }
        })
        .await;
        match outcome {
            wait::Outcome::Done(()) => Ok(()),
            wait::Outcome::Failed(message) => Err(message),
            wait::Outcome::TimedOut(()) => Err(format!("{id} still exists {}s after its deletion", timeout.as_secs())),
        }
    }
}
