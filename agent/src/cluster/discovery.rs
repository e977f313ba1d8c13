//! Discovery: which kinds the server serves, and waiting for new CRDs to be served.

use std::time::Duration;

use kube::discovery::{Discovery, Scope};
use serde_json::Value;

use super::{api_message, wait, Cluster};
use crate::manifest::{ObjectRef, ResourceType};

/// How often [`Cluster::wait_crds_established`] looks.
const ESTABLISHED_POLL: Duration = Duration::from_millis(100);

impl Cluster {
    /// Every served group, version and kind (aggregated discovery: two requests).
    pub async fn discover(&self) -> Result<Vec<ResourceType>, kube::Error> {
        let discovery = Discovery::new(self.client().clone()).run_aggregated().await?;
        let mut types = Vec::new();
        for group in discovery.groups() {
            for version in group.versions() {
                for (ar, caps) in group.versioned_resources(version) {
                    types.push(ResourceType {
                        group: ar.group.clone(),
                        version: ar.version.clone(),
                        kind: ar.kind.clone(),
                        plural: ar.plural.clone(),
                        namespaced: caps.scope == Scope::Namespaced,
                    });
                }
            }
        }
        Ok(types)
    }

    /// The server's version, e.g. `v1.35.4`.
    pub async fn server_version(&self) -> Result<String, kube::Error> {
        Ok(self.client().apiserver_version().await?.git_version)
    }

    /// Waits until each named CRD reports the Established condition, all within `timeout`.
    pub async fn wait_crds_established(&self, names: &[String], timeout: Duration) -> Result<(), String> {
        let crd = ResourceType::custom_resource_definitions();
        let deadline = tokio::time::Instant::now() + timeout;
        for name in names {
            let id = ObjectRef::new(&crd.group, &crd.kind, "", name);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let outcome = wait::until(left, ESTABLISHED_POLL, || async {
                match self.get(&crd, &id).await {
                    Ok(Some(o)) if is_established(&o) => wait::Poll::Done(()),
                    Ok(_) => wait::Poll::Pending(()),
                    Err(e) => wait::Poll::Failed(format!("CustomResourceDefinition {name}: {}", api_message(&e))),
                }
            })
            .await;
            match outcome {
                wait::Outcome::Done(()) => {}
                wait::Outcome::Failed(message) => return Err(message),
                wait::Outcome::TimedOut(()) => {
                    return Err(format!("CustomResourceDefinition {name} was not Established within {}s", timeout.as_secs()))
                }
            }
        }
        Ok(())
    }
}

fn is_established(crd: &Value) -> bool {
    crd["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Established" && c["status"] == "True")
}
