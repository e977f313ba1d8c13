//! What the agent may do, asked of the server (SelfSubjectAccessReview: every authenticated user
//! may ask about itself).

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

use super::Cluster;
use crate::manifest::ResourceType;

impl Cluster {
    /// Whether the agent may list and watch a resource type in every namespace (what one watch of
    /// all namespaces needs).
    pub async fn may_watch_everywhere(&self, rt: &ResourceType) -> Result<bool, kube::Error> {
        for verb in ["list", "watch"] {
            if !self.may(rt, verb).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn may(&self, rt: &ResourceType, verb: &str) -> Result<bool, kube::Error> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(rt.group.clone()),
                    resource: Some(rt.plural.clone()),
                    verb: Some(verb.to_string()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client().clone());
        let answer = api.create(&PostParams::default(), &review).await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}
