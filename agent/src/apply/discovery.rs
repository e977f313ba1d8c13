//! Discovery: which kinds the server serves, and waiting for new CRDs to be served.

use std::time::Duration;

use kube::discovery::{Discovery, Scope};
use serde_json::Value;

use super::{api_message, Cluster};
use crate::manifest::ResourceType;
use crate::plan::Catalog;

impl Cluster {
    /// Every served group, version and kind (aggregated discovery: two requests).
    pub async fn discover(&self) -> Result<Catalog, kube::Error> {
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
        Ok(Catalog::new(types))
    }

    /// Waits until each named CRD reports the Established condition.
    pub async fn wait_crds_established(&self, names: &[String], timeout: Duration) -> Result<(), String> {
        let crd = ResourceType {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
            namespaced: false,
        };
        let api = self.api(&crd, "");
        let deadline = tokio::time::Instant::now() + timeout;
        for name in names {
            loop {
                let established = match api.get_opt(name).await {
                    Ok(Some(o)) => is_established(&serde_json::to_value(o).unwrap_or_default()),
                    Ok(None) => false,
                    Err(e) => return Err(format!("CustomResourceDefinition {name}: {}", api_message(&e))),
                };
                if established {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("CustomResourceDefinition {name} was not Established within {}s", timeout.as_secs()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

fn is_established(crd: &Value) -> bool {
    crd["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Established" && c["status"] == "True")
}
